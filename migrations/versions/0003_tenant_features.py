"""which tenant's featurizer has seen each image's features (features_ready per tenant)

The feature cache is keyed by content, so it is shared: a tenant's fresh upload of bytes another
tenant had featurized showed as `features_ready` at once, telling it that someone holds the same
image. A row here says that this tenant's own featurizing covered the image; `features_ready`
counts these, and the featurizer computes an image again (costing what it costs for new bytes)
when the tenant has none (docs/threats.md). Existing deployments start with the claims their
cached features imply: every tenant holding an image with cached features.

Revision ID: 0003
Revises: 0002
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "tenant_features",
        sa.Column("tenant_id", sa.String(length=32), nullable=False),
        sa.Column("image_sha256", sa.String(length=64), nullable=False),
        sa.Column("extractor_id", sa.String(length=64), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["tenant_id"],
            ["tenants.id"],
            name=op.f("fk_tenant_features_tenant_id_tenants"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint(
            "tenant_id", "image_sha256", "extractor_id", name=op.f("pk_tenant_features")
        ),
    )
    op.execute(
        "INSERT INTO tenant_features (tenant_id, image_sha256, extractor_id, created_at) "
        "SELECT DISTINCT di.tenant_id, f.image_sha256, f.extractor_id, f.created_at "
        "FROM dataset_images di JOIN features f ON f.image_sha256 = di.sha256"
    )


def downgrade() -> None:
    op.drop_table("tenant_features")
