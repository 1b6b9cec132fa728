"""Database engine, declarative base and migrations (SQLite embedded, PostgreSQL in production)."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path

from sqlalchemy import DateTime, Engine, MetaData, create_engine, event
from sqlalchemy.orm import DeclarativeBase, Session, sessionmaker

NAMING_CONVENTION = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)
    type_annotation_map = {datetime: DateTime(timezone=True)}


def utcnow() -> datetime:
    return datetime.now(UTC)


def as_utc(dt: datetime) -> datetime:
    """SQLite hands back naive datetimes; every stored time is UTC."""
    return dt if dt.tzinfo else dt.replace(tzinfo=UTC)


@event.listens_for(Base, "load", propagate=True)
def _utc_on_load(target: object, _context: object) -> None:
    _attach_utc(target)


@event.listens_for(Base, "refresh", propagate=True)
def _utc_on_refresh(target: object, _context: object, _attrs: object) -> None:
    _attach_utc(target)


def _attach_utc(target: object) -> None:
    """Loaded rows carry aware UTC times on every backend, so API bodies are RFC 3339 with an
    offset and comparisons with `utcnow()` never mix naive and aware datetimes."""
    from sqlalchemy.orm.attributes import set_committed_value

    state = target.__dict__
    for key, value in list(state.items()):
        if isinstance(value, datetime) and value.tzinfo is None:
            set_committed_value(target, key, value.replace(tzinfo=UTC))


def new_id() -> str:
    return uuid.uuid4().hex


def make_engine(url: str, *, pool_size: int = 10) -> Engine:
    """An engine tuned per backend: WAL + busy timeout on SQLite, pre-ping on PostgreSQL."""
    if url.startswith("sqlite"):
        path = url.split("///", 1)[-1]
        if path and path != ":memory:":
            Path(path).parent.mkdir(parents=True, exist_ok=True)
        engine = create_engine(url, connect_args={"check_same_thread": False, "timeout": 30})

        @event.listens_for(engine, "connect")
        def _sqlite_pragmas(dbapi_conn, _record):  # type: ignore[no-untyped-def]
            # Let SQLAlchemy, not pysqlite, issue BEGIN, so transactions really start at BEGIN.
            dbapi_conn.isolation_level = None
            cur = dbapi_conn.cursor()
            cur.execute("PRAGMA journal_mode=WAL")
            cur.execute("PRAGMA foreign_keys=ON")
            cur.execute("PRAGMA busy_timeout=30000")
            cur.execute("PRAGMA synchronous=NORMAL")
            cur.close()

        @event.listens_for(engine, "begin")
        def _sqlite_begin(conn):  # type: ignore[no-untyped-def]
            # IMMEDIATE takes the write lock up front: no deadlock-prone read->write upgrades.
            conn.exec_driver_sql("BEGIN IMMEDIATE")

        return engine
    return create_engine(
        url, pool_pre_ping=True, pool_size=pool_size, max_overflow=pool_size, pool_recycle=1800
    )


def make_sessionmaker(engine: Engine) -> sessionmaker[Session]:
    return sessionmaker(engine, expire_on_commit=False)


@contextmanager
def session_scope(factory: sessionmaker[Session]) -> Iterator[Session]:
    """A unit of work: commit when the block ends, roll back on any exception. The one
    transaction boundary of the service: each request (`service.deps.get_session`), each step of
    the worker and of the feature cache."""
    session = factory()
    try:
        yield session
        session.commit()
    except BaseException:
        session.rollback()
        raise
    finally:
        session.close()


def alembic_config(url: str):  # type: ignore[no-untyped-def]
    from alembic.config import Config

    root = Path(__file__).resolve().parent.parent / "migrations"
    cfg = Config()
    cfg.set_main_option("script_location", str(root))
    cfg.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    return cfg


def migrate(url: str) -> None:
    """Bring the database schema to the newest migration (`headhub migrate`)."""
    from alembic import command

    if url.startswith("sqlite"):
        make_engine(url).dispose()  # creates the parent directory
    command.upgrade(alembic_config(url), "head")
