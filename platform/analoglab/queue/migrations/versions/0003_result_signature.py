"""a result's signature by its lab: jobs.result_signature, jobs.result_key_id

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-04 03:10:00
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("jobs", schema=None) as batch_op:
        batch_op.add_column(sa.Column("result_signature", sa.String(length=200), nullable=True))
        batch_op.add_column(sa.Column("result_key_id", sa.String(length=32), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("jobs", schema=None) as batch_op:
        batch_op.drop_column("result_key_id")
        batch_op.drop_column("result_signature")
