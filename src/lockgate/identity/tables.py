"""The `issued_tokens` table: one row per gateway-issued token, never the token itself.

The row is what revocation and listing need. A verifier looks a token's `jti` up here on
every connection, so a revocation written by any process is seen by every gateway at once.
"""

from __future__ import annotations

from sqlalchemy import Column, DateTime, Index, String, Table, Text

from lockgate.store import metadata

issued_tokens = Table(
    "issued_tokens",
    metadata,
    Column("jti", String(64), primary_key=True),
    Column("subject", String(255), nullable=False),
    # JSON list of group names.
    Column("groups", Text, nullable=False),
    # JSON list of resource names the token is limited to; NULL means no scope limit.
    Column("scopes", Text, nullable=True),
    Column("kind", String(16), nullable=False),
    # Stored as UTC; SQLite hands them back naive, so readers re-attach UTC.
    Column("issued_at", DateTime(timezone=True), nullable=False),
    Column("expires_at", DateTime(timezone=True), nullable=False),
    Column("revoked_at", DateTime(timezone=True), nullable=True),
    Column("revoked_reason", Text, nullable=True),
    Index("ix_issued_tokens_expires_at", "expires_at"),
)

# Revoked identities of outside issuers (OIDC): a subject, or a single token by its `jti`.
# Gateway tokens are revoked in `issued_tokens`; this list covers what no row there names.
revoked_identities = Table(
    "revoked_identities",
    metadata,
    Column("id", String(64), primary_key=True),
    # The issuer URL, or "*" for a subject revoked at every issuer.
    Column("issuer", String(255), nullable=False),
    Column("subject", String(255), nullable=True),
    Column("jti", String(255), nullable=True),
    Column("revoked_at", DateTime(timezone=True), nullable=False),
    Column("reason", Text, nullable=True),
    Index("ix_revoked_identities_subject", "subject"),
    Index("ix_revoked_identities_jti", "jti"),
)

# SSH certificates issued for identities of outside issuers (OIDC): what the gateway re-checks
# when a client logs in with one (gateway tokens have their `issued_tokens` row instead).
ssh_certificates = Table(
    "ssh_certificates",
    metadata,
    Column("id", String(64), primary_key=True),
    Column("issuer", String(255), nullable=False),
    Column("subject", String(255), nullable=False),
    # The OIDC token's own `jti`, when it had one (revoking it ends the certificate too).
    Column("token_jti", String(255), nullable=True),
    Column("groups", Text, nullable=False),
    Column("scopes", Text, nullable=True),
    Column("kind", String(16), nullable=False),
    Column("issued_at", DateTime(timezone=True), nullable=False),
    Column("expires_at", DateTime(timezone=True), nullable=False),
    Index("ix_ssh_certificates_expires_at", "expires_at"),
)

# Live sessions an administrator asked to end. Whichever gateway process holds the session
# sees the row at its next live-session check and ends it with `ended_by_admin`.
session_terminations = Table(
    "session_terminations",
    metadata,
    Column("session_id", String(64), primary_key=True),
    Column("requested_by", String(255), nullable=False),
    Column("reason", Text, nullable=False),
    Column("requested_at", DateTime(timezone=True), nullable=False),
)
