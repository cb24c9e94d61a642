"""submissions.examples: the training examples a client claimed with its report,
so that a task weighted by examples is recomputed from its stored submissions

Revision ID: 0005
Revises: 0004
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # Reports stored before this revision belong to tasks weighted equally, which ignore the claim.
    op.add_column("submissions", sa.Column("examples", sa.Integer(), nullable=False, server_default=sa.text("0")))


def downgrade() -> None:
    op.drop_column("submissions", "examples")
