"""extractor registry, bulk moves, and jobs that train on a chosen extractor or move a head

The registry starts empty: the first API or worker that reaches the extractor processes
registers the checkpoint they serve by default as the default extractor (service/extractors/
service.py, `ensure_default`), which for an existing deployment is the one its heads were trained
on, so they keep answering unchanged.

Revision ID: 0002
Revises: 0001
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "extractors",
        sa.Column("id", sa.String(length=64), nullable=False),
        sa.Column("architecture", sa.String(length=64), nullable=False),
        sa.Column("input_size", sa.JSON(), nullable=False),
        sa.Column("feature_dim", sa.Integer(), nullable=False),
        sa.Column("parameters", sa.BigInteger(), nullable=False),
        sa.Column("size_bytes", sa.BigInteger(), nullable=False),
        sa.Column("bits_per_weight", sa.Float(), nullable=False),
        sa.Column("preprocessing", sa.JSON(), nullable=False),
        sa.Column("provenance", sa.JSON(), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("is_default", sa.Boolean(), nullable=False),
        sa.Column("note", sa.Text(), nullable=False),
        sa.Column("sunset", sa.DateTime(timezone=True), nullable=True),
        sa.Column("deprecated_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("retired_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("blob_key", sa.String(length=255), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.CheckConstraint(
            "status IN ('active', 'deprecated', 'retired')", name=op.f("ck_extractors_status")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_extractors")),
    )
    with op.batch_alter_table("extractors", schema=None) as batch_op:
        batch_op.create_index(
            "uq_extractors_default",
            ["is_default"],
            unique=True,
            postgresql_where=sa.text("is_default"),
            sqlite_where=sa.text("is_default"),
        )
    op.create_table(
        "extractor_moves",
        sa.Column("id", sa.String(length=32), nullable=False),
        sa.Column("from_extractor_id", sa.String(length=64), nullable=False),
        sa.Column("to_extractor_id", sa.String(length=64), nullable=False),
        sa.Column("promote_if_not_worse", sa.Boolean(), nullable=False),
        sa.Column("total", sa.Integer(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["from_extractor_id"],
            ["extractors.id"],
            name=op.f("fk_extractor_moves_from_extractor_id_extractors"),
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["to_extractor_id"],
            ["extractors.id"],
            name=op.f("fk_extractor_moves_to_extractor_id_extractors"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_extractor_moves")),
    )
    with op.batch_alter_table("extractor_moves", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_extractor_moves_from_extractor_id"), ["from_extractor_id"], unique=False
        )
    with op.batch_alter_table("jobs", schema=None) as batch_op:
        batch_op.add_column(
            sa.Column("kind", sa.String(length=16), server_default="train", nullable=False)
        )
        batch_op.add_column(sa.Column("extractor_id", sa.String(length=64), nullable=True))
        batch_op.add_column(sa.Column("from_version", sa.Integer(), nullable=True))
        batch_op.add_column(
            sa.Column(
                "promote_if_not_worse", sa.Boolean(), server_default=sa.false(), nullable=False
            )
        )
        batch_op.add_column(sa.Column("bulk_move_id", sa.String(length=32), nullable=True))
        batch_op.create_index(batch_op.f("ix_jobs_bulk_move_id"), ["bulk_move_id"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("jobs", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_jobs_bulk_move_id"))
        batch_op.drop_column("bulk_move_id")
        batch_op.drop_column("promote_if_not_worse")
        batch_op.drop_column("from_version")
        batch_op.drop_column("extractor_id")
        batch_op.drop_column("kind")
    with op.batch_alter_table("extractor_moves", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_extractor_moves_from_extractor_id"))
    op.drop_table("extractor_moves")
    with op.batch_alter_table("extractors", schema=None) as batch_op:
        batch_op.drop_index("uq_extractors_default", sqlite_where=sa.text("is_default"))
    op.drop_table("extractors")
