"""clients.token_hash goes: tokens live in their own table, and a client is
tied to its token by name, never by this column (it was never written)

Revision ID: 0003
Revises: 0002
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


# Plain ALTER TABLE on both backends (SQLite since 3.35): batch mode would copy
# and drop ``clients``, which the rows of other tables refer to.


def upgrade() -> None:
    op.drop_column("clients", "token_hash")


def downgrade() -> None:
    op.add_column("clients", sa.Column("token_hash", sa.LargeBinary(length=64), nullable=True))
