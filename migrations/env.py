"""Alembic environment: one metadata for every domain (service.tables)."""

from __future__ import annotations

from alembic import context

from service.db import make_engine
from service.tables import metadata

config = context.config


def run_migrations() -> None:
    url = config.get_main_option("sqlalchemy.url")
    assert url, "sqlalchemy.url must be set (service.db.migrate does this)"
    engine = make_engine(url)
    with engine.connect() as connection:
        context.configure(
            connection=connection,
            target_metadata=metadata,
            render_as_batch=url.startswith("sqlite"),  # SQLite needs batch mode for ALTER
            compare_type=True,
        )
        with context.begin_transaction():
            context.run_migrations()
    engine.dispose()


run_migrations()
