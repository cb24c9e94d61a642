"""rounds.scalar_scale: the one-byte scale each attempt announced, so that a
round is recomputed from its stored submissions at the scale they were sent at

Revision ID: 0004
Revises: 0003
"""

from __future__ import annotations

import json

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None

GENESIS_DEFAULT_SCALE = 0.05  # what a genesis without the field meant


def upgrade() -> None:
    # Plain ALTER TABLE (no batch copy: assignments and submissions refer to rounds
    # and cascade). Rounds stored before this revision ran at their genesis scale.
    op.add_column("rounds", sa.Column("scalar_scale", sa.Float(), nullable=False, server_default=sa.text("0")))
    conn = op.get_bind()
    for task_id, genesis in conn.execute(sa.text("SELECT task_id, genesis FROM tasks")).all():
        try:
            scale = float(json.loads(bytes(genesis)).get("scalar_scale", GENESIS_DEFAULT_SCALE))
        except (ValueError, TypeError, AttributeError):
            scale = GENESIS_DEFAULT_SCALE
        conn.execute(sa.text("UPDATE rounds SET scalar_scale = :s WHERE task_id = :t"), {"s": scale, "t": task_id})


def downgrade() -> None:
    op.drop_column("rounds", "scalar_scale")
