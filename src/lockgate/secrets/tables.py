"""The `secrets` table: one AES-256-GCM ciphertext per credential name."""

from __future__ import annotations

from sqlalchemy import Column, DateTime, LargeBinary, String, Table

from lockgate.store import metadata

secrets = Table(
    "secrets",
    metadata,
    Column("name", String(128), primary_key=True),
    Column("nonce", LargeBinary(12), nullable=False),
    # The encrypted value with its 16-byte GCM tag; the name is the associated data, so a
    # ciphertext copied to another row fails to decrypt.
    Column("ciphertext", LargeBinary, nullable=False),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("updated_at", DateTime(timezone=True), nullable=False),
)
