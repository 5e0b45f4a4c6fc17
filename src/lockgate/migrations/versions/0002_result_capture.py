"""Result capture: the rows a client received per statement, and their hash in the chain.

Revision ID: 0002
Revises: 0001
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None

_COLUMNS = (
    ("result_sha256", sa.String(length=64)),
    ("result_rows", sa.BigInteger()),
    ("result_rows_dropped", sa.BigInteger()),
    ("result_bytes_dropped", sa.BigInteger()),
)


def upgrade() -> None:
    # Idempotent: a gateway of this version creates missing tables on its own (create_all),
    # so `command_results` may already be there when an older store is migrated.
    inspector = sa.inspect(op.get_bind())
    have = {c["name"] for c in inspector.get_columns("commands")}
    for name, type_ in _COLUMNS:
        if name not in have:
            op.add_column("commands", sa.Column(name, type_, nullable=True))
    if not inspector.has_table("command_results"):
        op.create_table(
            "command_results",
            sa.Column("session_id", sa.String(length=64), nullable=False),
            sa.Column("seq", sa.Integer(), autoincrement=False, nullable=False),
            sa.Column("format", sa.String(length=16), nullable=False),
            sa.Column("codec", sa.String(length=16), nullable=False),
            sa.Column("data", sa.LargeBinary(), nullable=False),
            sa.ForeignKeyConstraint(
                ["session_id", "seq"],
                ["commands.session_id", "commands.seq"],
                ondelete="CASCADE",
            ),
            sa.PrimaryKeyConstraint("session_id", "seq"),
        )


def downgrade() -> None:
    raise NotImplementedError("the audit trail is never downgraded")
