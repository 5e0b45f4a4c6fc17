"""Browser sessions of the admin console and OIDC sign-ins in flight, in the state store.

Both are keyed by the SHA-256 of a random value only the browser holds (the session cookie,
the sign-in `state`), so a copy of the store does not let anyone act as a signed-in person.
Kept in the store rather than in memory so a gateway restart does not sign everyone out.
"""

from __future__ import annotations

from sqlalchemy import Column, Index, String, Table, Text
from sqlalchemy.engine import Engine

from lockgate.audit.tables import JSONText, UTCDateTime
from lockgate.store import metadata

admin_sessions = Table(
    "admin_sessions",
    metadata,
    Column("id_hash", String(64), primary_key=True),
    Column("subject", String(255), nullable=False),
    Column("issuer", String(255), nullable=False),
    Column("groups", JSONText, nullable=False),
    Column("kind", String(16), nullable=False),
    Column("token_id", String(255)),
    Column("csrf", String(64), nullable=False),
    Column("created_at", UTCDateTime, nullable=False),
    Column("expires_at", UTCDateTime, nullable=False),
)
Index("ix_admin_sessions_expires_at", admin_sessions.c.expires_at)

admin_signins = Table(
    "admin_signins",
    metadata,
    Column("state_hash", String(64), primary_key=True),
    Column("nonce", String(128), nullable=False),
    Column("code_verifier", String(128), nullable=False),
    Column("next", Text, nullable=False),
    Column("created_at", UTCDateTime, nullable=False),
)


def ensure_tables(engine: Engine) -> None:
    """Create the console's tables if missing."""
    admin_sessions.create(engine, checkfirst=True)
    admin_signins.create(engine, checkfirst=True)
