"""Every domain's tables, imported once so Alembic and tests see one metadata."""

from service.datasets import models as _datasets  # noqa: F401
from service.db import Base
from service.heads import models as _heads  # noqa: F401
from service.jobs import models as _jobs  # noqa: F401
from service.tenants import models as _tenants  # noqa: F401

metadata = Base.metadata
