"""Masked cells per statement: the total and the count per masking rule, in the chain.

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

_COLUMNS = (
    ("masked_cells", sa.BigInteger()),
    ("masked_by_rule", sa.Text()),
)


def upgrade() -> None:
    # Idempotent, as 0002: the columns may already be there when create_all made the table.
    have = {c["name"] for c in sa.inspect(op.get_bind()).get_columns("commands")}
    for name, type_ in _COLUMNS:
        if name not in have:
            op.add_column("commands", sa.Column(name, type_, nullable=True))


def downgrade() -> None:
    raise NotImplementedError("the audit trail is never downgraded")
