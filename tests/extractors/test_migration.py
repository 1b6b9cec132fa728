"""Migration 0002 upgrades a database that already holds tenants, jobs and heads (both backends)."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from alembic import command
from sqlalchemy import text
from sqlalchemy.exc import IntegrityError

from service.db import alembic_config, make_engine
from tests.fixtures.db import PG_BASE, _pg_admin_conn, pg_available


@pytest.fixture(params=["sqlite", "postgresql"])
def empty_db(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'old.db'}"
        return
    if not pg_available():
        pytest.skip("PostgreSQL not reachable: PostgreSQL half skipped")
    name = f"headhub_mig_{uuid.uuid4().hex[:10]}"
    with _pg_admin_conn() as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    yield f"{PG_BASE}/{name}"
    with _pg_admin_conn() as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


OLD_ROWS = [
    "INSERT INTO tenants (id, name, created_at) VALUES ('t1', 'acme', CURRENT_TIMESTAMP)",
    """INSERT INTO jobs (id, tenant_id, dataset_id, head_name, head_type, params,
        validation_fraction, seed, priority, status, attempt, max_attempts, run_after,
        cancel_requested, progress, created_at)
       VALUES ('j1', 't1', 'd1', 'flowers', 'float', '{}', 0.2, 0, 0, 'succeeded', 1, 3,
        CURRENT_TIMESTAMP, false, 1.0, CURRENT_TIMESTAMP)""",
    """INSERT INTO heads (id, tenant_id, name, visibility, description, suspended,
        version_counter, created_at, updated_at)
       VALUES ('h1', 't1', 'flowers', 'private', '', false, 1, CURRENT_TIMESTAMP,
        CURRENT_TIMESTAMP)""",
    """INSERT INTO head_versions (id, head_id, version, head_type, labels, extractor_id,
        feature_dim, metrics, blob_key, size_bytes, sha256, created_at)
       VALUES ('v1', 'h1', 1, 'float', '["a", "b"]', :old, 512, '{}', 'heads/x', 1, 'x',
        CURRENT_TIMESTAMP)""",
]


def test_0002_upgrades_a_database_with_jobs_and_heads_and_downgrades(empty_db: str) -> None:
    cfg = alembic_config(empty_db)
    command.upgrade(cfg, "0001")
    engine = make_engine(empty_db)
    old_extractor = "ab" * 32
    with engine.begin() as conn:
        for sql in OLD_ROWS:
            conn.execute(text(sql), {"old": old_extractor})
    command.upgrade(cfg, "head")
    with engine.begin() as conn:
        row = conn.execute(
            text("SELECT kind, extractor_id, from_version, promote_if_not_worse FROM jobs")
        ).one()
        assert tuple(row) in (("train", None, None, False), ("train", None, None, 0))
        assert conn.execute(text("SELECT count(*) FROM extractors")).scalar() == 0
        pinned = conn.execute(text("SELECT extractor_id FROM head_versions")).scalar()
        assert pinned == old_extractor  # versions keep their pin; the registry starts empty
        insert = text(
            "INSERT INTO extractors (id, architecture, input_size, feature_dim, parameters, "
            "size_bytes, bits_per_weight, preprocessing, provenance, status, is_default, note, "
            "created_at, updated_at) VALUES (:id, 'a', '[3, 8, 8]', 8, 1, 1, 1.0, '{}', '{}', "
            "'active', :d, '', CURRENT_TIMESTAMP, CURRENT_TIMESTAMP)"
        )
        conn.execute(insert, {"id": "1" * 64, "d": True})
        conn.execute(insert, {"id": "2" * 64, "d": False})
    with pytest.raises(IntegrityError, match=r"(?i)unique"), engine.begin() as conn:
        conn.execute(insert, {"id": "3" * 64, "d": True})  # a second default is refused
    command.downgrade(cfg, "0001")
    command.upgrade(cfg, "head")
    engine.dispose()
