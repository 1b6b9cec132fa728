"""Every domain's tables, imported once so Alembic and tests see one metadata."""

from service.db import Base
from service.tenants import models as _tenants  # noqa: F401

metadata = Base.metadata
