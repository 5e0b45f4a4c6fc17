"""What every admin API route needs: the manifest, the state store and the gateway's verifier."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from fastapi import Request
from sqlalchemy.engine import Engine

from lockgate.approvals.store import ApprovalStore
from lockgate.config.model import Manifest
from lockgate.identity.login import Provider
from lockgate.identity.tokens import GatewayTokenAuthority
from lockgate.identity.verifier import IdentityVerifier
from lockgate.secrets.store import SecretStore

if TYPE_CHECKING:
    from lockgate.gate import Gate
    from lockgate.wakeups import Wakeups


@dataclass
class AdminContext:
    """Shared by all requests of one admin app (one gateway process serves it)."""

    manifest: Manifest
    engine: Engine
    verifier: IdentityVerifier
    approvals: ApprovalStore
    authority: GatewayTokenAuthority
    secrets: SecretStore | None = None
    # Where browsers reach the console; set once the listener is bound.
    base_url: str = "https://127.0.0.1:8443"
    # Set when the server stops, so long-lived event streams end.
    stopping: asyncio.Event = field(default_factory=asyncio.Event)
    # The OIDC provider's endpoints, read once from its discovery document.
    oidc_provider: Provider | None = None
    # The event hub (admin/hub.py), made on first use.
    events: object | None = None
    # Store change notifications (wakeups.py): the gateway's; None: the hub makes its own.
    wakeups: Wakeups | None = None

    @classmethod
    def for_manifest(cls, manifest: Manifest, engine: Engine) -> AdminContext:
        """A context with its own verifier (the gateway passes its own instead)."""
        from lockgate.identity.oidc import OIDCVerifier
        from lockgate.identity.verifier import GatewayTokenVerifier, TokenVerifier

        authority = GatewayTokenAuthority(manifest, engine)
        verifiers: list[TokenVerifier] = [GatewayTokenVerifier(authority)]
        verifiers += [OIDCVerifier(issuer, engine) for issuer in manifest.identity.oidc]
        return cls(
            manifest=manifest,
            engine=engine,
            verifier=IdentityVerifier(verifiers),
            approvals=ApprovalStore(engine),
            authority=authority,
            secrets=SecretStore.for_manifest(manifest, engine),
        )


def for_gate(gate: Gate) -> AdminContext:
    """A context sharing the gateway's store, verifier and approval store."""
    return AdminContext(
        manifest=gate.manifest,
        engine=gate.engine,
        verifier=gate.verifier,
        approvals=gate.approvals,
        authority=gate.authority,
        secrets=gate.secrets,
        wakeups=gate.wakeups,
    )


def context(request: Request) -> AdminContext:
    """The app's context (a FastAPI dependency)."""
    ctx: AdminContext = request.app.state.ctx
    return ctx
