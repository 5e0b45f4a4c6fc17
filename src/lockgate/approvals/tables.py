"""The approval tables: requests, the decisions reviewers took on them, and grants.

Every process (gateway workers, the CLI) reads and writes them through the state store,
so a decision taken anywhere is seen by the worker holding the client at its next poll.
"""

from __future__ import annotations

from sqlalchemy import Column, DateTime, ForeignKey, Index, Integer, String, Table, Text

from lockgate.store import metadata

approval_requests = Table(
    "approval_requests",
    metadata,
    Column("id", String(32), primary_key=True),
    # `statement` (a held command) or `grant` (an access request).
    Column("kind", String(16), nullable=False),
    # pending → approved | denied | expired | withdrawn
    Column("status", String(16), nullable=False),
    Column("requester", String(255), nullable=False),
    Column("requester_issuer", String(255), nullable=False),
    # JSON list of the requester's groups.
    Column("requester_groups", Text, nullable=False),
    Column("resource", String(255), nullable=False),
    # The held statement's text (statements), or None (grants).
    Column("statement", Text, nullable=True),
    # The guardrail rule that held it (statements).
    Column("guardrail", String(255), nullable=True),
    # Why it was held (the guardrail's reason), or the requester's reason (grants).
    Column("reason", Text, nullable=False),
    Column("session_id", String(32), nullable=True),
    # The `approvals.rules` entry that governs it, and what it demanded at creation.
    Column("rule", String(255), nullable=False),
    Column("quorum", Integer, nullable=False),
    Column("distinct_groups", Integer, nullable=False),
    # JSON list of reviewer groups.
    Column("reviewers", Text, nullable=False),
    # Grants: how long the access lasts once approved, in seconds.
    Column("grant_seconds", Integer, nullable=True),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("expires_at", DateTime(timezone=True), nullable=False),
    Column("closed_at", DateTime(timezone=True), nullable=True),
    # Why it closed: the deciding reviewer's reason, "expired", "client disconnected"...
    Column("outcome", Text, nullable=True),
    Index("ix_approval_requests_status", "status", "id"),
)

approval_decisions = Table(
    "approval_decisions",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("request_id", String(32), ForeignKey("approval_requests.id"), nullable=False),
    Column("reviewer", String(255), nullable=False),
    Column("reviewer_issuer", String(255), nullable=False),
    # JSON list of the reviewer's groups when deciding.
    Column("reviewer_groups", Text, nullable=False),
    # The reviewer group the approval counts for (quorum from distinct groups).
    Column("counted_group", String(255), nullable=True),
    # `approve` or `deny`.
    Column("verdict", String(16), nullable=False),
    Column("reason", Text, nullable=False),
    Column("decided_at", DateTime(timezone=True), nullable=False),
    Index("ix_approval_decisions_request", "request_id"),
)

grants = Table(
    "access_grants",
    metadata,
    Column("id", String(32), primary_key=True),
    Column("request_id", String(32), ForeignKey("approval_requests.id"), nullable=False),
    Column("subject", String(255), nullable=False),
    Column("issuer", String(255), nullable=False),
    Column("resource", String(255), nullable=False),
    Column("reason", Text, nullable=False),
    Column("starts_at", DateTime(timezone=True), nullable=False),
    Column("expires_at", DateTime(timezone=True), nullable=False),
    Column("revoked_at", DateTime(timezone=True), nullable=True),
    Column("revoked_reason", Text, nullable=True),
    Index("ix_access_grants_subject", "subject", "resource"),
)
