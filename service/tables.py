"""Every domain's tables, imported once so Alembic and tests see one metadata."""

from service.datasets import tables as _datasets  # noqa: F401
from service.db import Base
from service.extractors import tables as _extractors  # noqa: F401
from service.heads import tables as _heads  # noqa: F401
from service.jobs import tables as _jobs  # noqa: F401
from service.tenants import tables as _tenants  # noqa: F401

metadata = Base.metadata
