"""The SSH engine: authenticate with a token, log in to the target, relay channels.

Theory of operation
-------------------
Clients connect with plain OpenSSH as `ssh -p PORT NAME#RESOURCE@GATEWAY` or
`ssh -p PORT RESOURCE@GATEWAY` (scp refuses '#' in a remote user name). NAME is only
recorded (the token says who the user is); RESOURCE names a `type: ssh` resource. The token
is the password, or the answer to the keyboard-interactive prompt; or the client offers a
certificate from `lockgate ssh-cert`, signed by the gateway's SSH CA.

1. Authentication (`_login`): the gate verifies the token, checks access to the resource,
   loads the target's credential, and records the session before the gateway logs in to
   the target (`ssh_upstream.connect_target`: stored key or password, pinned host key, no
   agent). For a certificate, asyncssh checks the CA signature and the validity window
   (the CA is trusted for any principal: the user name names the resource, not the user);
   `_check_certificate` then re-verifies the identity behind it (`ssh_ca`) once the client
   proved it holds the key. Any refusal is shown to the client as an SSH banner naming the
   reason, recorded, and ends the connection (`Received disconnect ...: lockgate: ...`).
2. Channels: each session channel is a `ChannelRelay` (shell, exec, subsystem). Port
   forwarding is refused unless an `ssh.rules` entry allows it; an allowed `-L` channel is
   opened by the *target* and a `-R` listener is opened on the target (`ssh_forward`),
   never from the gateway's network; each forwarded connection is recorded. Agent and X11
   forwarding are refused unless a rule allows them; then the agent and X11 channels the
   target opens are relayed back to the client and recorded (`ssh_agent_x11`).
3. The end: when the client or the target goes away, the other side is closed and the
   session record is completed with the bytes each way. Every `check_interval` (at once
   on a revocation or end-session notification, wakeups.py), `SshEngine.watch_sessions`
   asks the gate which live sessions must end (token expired or revoked, grant ended,
   `max_session`); `end_live` tells each channel why on its stderr, closes it, and
   disconnects a moment later.

Every refusal goes through `_refuse`, the one place that maps an error to its code, banner
and audit record.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path

import asyncssh

from lockgate.config.model import Manifest
from lockgate.config.ssh import SshListener
from lockgate.errors import (
    AccessDenied,
    AuditUnavailable,
    AuthFailed,
    LockgateError,
    SecretError,
    UnknownResource,
    UpstreamError,
)
from lockgate.gate import Gate
from lockgate.identity.session_limits import SessionVerdict
from lockgate.identity.ssh_ca import (
    certificate_facts,
    decode_user_certificate,
    load_or_create_ca,
    principal_for_certificate,
    rejection_reason,
)
from lockgate.identity.verifier import shown
from lockgate.keyfiles import create_private_file
from lockgate.model import ClientInfo, Principal, ResultSummary, SessionEnd
from lockgate.policy.ssh import SshRequest
from lockgate.proxy import busypoll
from lockgate.proxy.busypoll import BusyPoll
from lockgate.proxy.ssh_agent_x11 import DISPLAY as X11_DISPLAY
from lockgate.proxy.ssh_agent_x11 import allow_agent, allow_x11, install
from lockgate.proxy.ssh_channel import ChannelRelay, SshContext
from lockgate.proxy.ssh_forward import listen_remote, open_local
from lockgate.proxy.ssh_transport import MAX_PACKET, WINDOW, tune_connection
from lockgate.proxy.ssh_upstream import connect_target, load_credentials
from lockgate.tasks import spawn
from lockgate.wakeups import LIVE_SESSIONS

log = logging.getLogger("lockgate.ssh")

LOGIN_FORM = "NAME#RESOURCE"

# How long a client whose session the gateway ends gets to close it itself.
_END_GRACE_SECONDS = 1.0

# What to do next, told with the reason a live session was ended.
_END_HINTS = {
    SessionEnd.TOKEN_EXPIRED: "get a new token (or certificate) and reconnect",
    SessionEnd.MAX_SESSION: "reconnect to start a new session",
    SessionEnd.REVOKED: "ask an administrator to restore access",
    SessionEnd.GRANT_ENDED: "ask for access again: lockgate request RESOURCE --for 30m "
    "--reason TEXT",
}

# Refusal codes in the audit trail, by error kind (the SSH counterpart of SQLSTATEs).
_CODES: tuple[tuple[type[LockgateError], str], ...] = (
    (AuthFailed, "auth_failed"),
    (UnknownResource, "unknown_resource"),
    (AccessDenied, "access_denied"),
    (AuditUnavailable, "audit_unavailable"),
    (UpstreamError, "upstream_error"),
    (SecretError, "credential_error"),
)


def refusal_code(error: LockgateError) -> str:
    for kind, code in _CODES:
        if isinstance(error, kind):
            return code
    return "refused"


def host_key_path(listener: SshListener, manifest: Manifest) -> Path:
    """The listener's host key file: the configured one, or a generated one in the state dir."""
    if listener.host_key is not None:
        return manifest.path(listener.host_key)
    return manifest.state_dir / f"ssh-host-key-{listener.name}"


def _new_host_key() -> tuple[asyncssh.SSHKey, bytes]:
    key = asyncssh.generate_private_key("ssh-ed25519", comment="lockgate")
    return key, key.export_private_key("openssh")


def ensure_host_key(listener: SshListener, manifest: Manifest) -> asyncssh.SSHKey:
    """Load the listener's host key, generating (and keeping) an Ed25519 key when absent."""
    path = host_key_path(listener, manifest)
    if listener.host_key is None:
        created = create_private_file(path, _new_host_key)
        if created is not None:
            created.write_public_key(str(path) + ".pub")
    try:
        return asyncssh.read_private_key(str(path))
    except (OSError, asyncssh.KeyImportError) as exc:
        raise LockgateError(
            f"cannot load the SSH host key of listener '{listener.name}' from {path}",
            hint="point listeners[].host_key at an OpenSSH private key, or remove it to "
            "let the gateway generate one",
        ) from exc


class SshEngine:
    """Serves SSH clients on one listener."""

    def __init__(self, gate: Gate, listener: SshListener) -> None:
        self.gate = gate
        self.listener = listener
        self.host_key = ensure_host_key(listener, gate.manifest)
        self.user_ca = load_or_create_ca(gate.manifest).convert_to_public()
        self.acceptor: asyncssh.SSHAcceptor | None = None
        self.connections: set[_GatewayServer] = set()
        self.poll: BusyPoll | None = None

    @property
    def fingerprint(self) -> str:
        return str(self.host_key.get_fingerprint("sha256"))

    async def start(self, *, reuse_port: bool = False) -> None:
        self.poll = busypoll.for_listener(self.listener.busy_poll_us)
        self.acceptor = await asyncssh.create_server(
            lambda: _GatewayServer(self),
            self.listener.host,
            self.listener.port,
            server_host_keys=[self.host_key],
            server_version="Lockgate",
            login_timeout=self.listener.startup_timeout_seconds,
            agent_forwarding=False,
            x11_forwarding=False,
            allow_scp=False,
            password_auth=True,
            kbdint_auth=True,
            public_key_auth=True,
            authorized_client_keys=asyncssh.import_authorized_keys(
                'cert-authority,principals="*" '
                + self.user_ca.export_public_key("openssh").decode()
            ),
            encoding=None,
            line_editor=False,
            window=WINDOW,
            max_pktsize=MAX_PACKET,
            reuse_port=reuse_port or None,
            backlog=1024,
        )

    @property
    def bound_addresses(self) -> list[tuple[str, int]]:
        if self.acceptor is None:
            return []
        return [(str(a[0]), int(a[1])) for a in self.acceptor.get_addresses()]

    async def watch_sessions(self) -> None:
        """End live sessions whose token or grant ended, or that ran too long (each interval)."""
        interval = self.gate.live_sessions.check_interval
        watch = self.gate.wakeups.watch(*LIVE_SESSIONS)  # at once on a notification
        while True:
            await watch.wait(interval)
            live = {
                server.ctx.session.id: (server, server.ctx.session)
                for server in list(self.connections)
                if server.ctx is not None and server.ending is None
            }
            if not live:
                continue
            try:
                verdicts = await self.gate.sessions_to_end([s for _, s in live.values()])
            except Exception:  # a failed check must not stop the next one
                log.exception("live ssh session check failed")
                continue
            for verdict in verdicts:
                entry = live.get(verdict.session.id)
                if entry is not None:
                    entry[0].end_live(verdict)

    async def stop(self) -> None:
        if self.acceptor is not None:
            self.acceptor.close()
        live = list(self.connections)
        for server in live:
            server.shutdown()
        for server in live:
            if server.conn is not None:
                try:
                    await asyncio.wait_for(server.conn.wait_closed(), 5)
                except TimeoutError:
                    server.conn.abort()


class _GatewayServer(asyncssh.SSHServer):
    """One client connection: authentication, then the channels it opens."""

    def __init__(self, engine: SshEngine) -> None:
        self.engine = engine
        self.gate = engine.gate
        self.conn: asyncssh.SSHServerConnection | None = None
        self.ctx: SshContext | None = None
        self.info = ClientInfo(address="", protocol="ssh")
        self.ending: SessionEnd | None = None
        self.end_message: str | None = None
        self.cert_refused = False
        self._forward_refusal = ""

    # -- connection -------------------------------------------------------------------------
    def connection_made(self, conn: asyncssh.SSHServerConnection) -> None:
        self.conn = conn
        tune_connection(conn)
        self.engine.connections.add(self)
        peer = conn.get_extra_info("peername")
        address = f"{peer[0]}:{peer[1]}" if isinstance(peer, tuple) else str(peer or "")
        self.info = ClientInfo(address=address, protocol="ssh")
        # asyncssh hands the offered certificate to no server callback, and runs agent and
        # X11 requests without one: wrap the connection's own steps to see them.
        checks = conn.validate_public_key

        async def validate_public_key(
            username: str, key_data: bytes, msg: bytes, signature: bytes
        ) -> bool:
            ok = await checks(username, key_data, msg, signature)
            return await self._check_certificate(username, key_data, ok, bool(msg))

        async def create_agent_listener() -> bool:
            allowed = self._forwarding("agent", "")
            if allowed and self.ctx is not None:
                allow_agent(self.ctx)
            return allowed

        async def attach_x11_listener(
            chan: object, auth_proto: bytes, auth_data: bytes, screen: int
        ) -> str | None:
            ctx = self.ctx
            if not self._forwarding("x11", "") or ctx is None:
                return None
            allow_x11(ctx, chan, auth_proto, auth_data, screen)
            return X11_DISPLAY

        setattr(conn, "validate_public_key", validate_public_key)  # noqa: B010
        setattr(conn, "create_agent_listener", create_agent_listener)  # noqa: B010
        setattr(conn, "attach_x11_listener", attach_x11_listener)  # noqa: B010

    def connection_lost(self, exc: Exception | None) -> None:
        self.engine.connections.discard(self)
        ctx = self.ctx
        if ctx is None:
            return
        self.ctx = None
        ctx.upstream.close()
        end = self.ending or (
            SessionEnd.CLIENT_DISCONNECTED if exc else SessionEnd.CLIENT_TERMINATED
        )
        if end in (SessionEnd.CLIENT_TERMINATED, SessionEnd.CLIENT_DISCONNECTED):
            error = None
        elif end is SessionEnd.UPSTREAM_CLOSED:
            error = "the target closed the connection"
        else:
            error = self.end_message or end.value
        self.gate.end_session(ctx.session, end, ctx.bytes_in, ctx.bytes_out, error)

    def end_live(self, verdict: SessionVerdict) -> None:
        """End a live session from outside (token, grant, revocation, max_session)."""
        ctx, conn = self.ctx, self.conn
        if ctx is None or conn is None or self.ending is not None:
            return
        self.ending = verdict.end
        self.end_message = verdict.message
        text = f"lockgate: session ended: {verdict.message}"
        hint = _END_HINTS.get(verdict.end)
        log.info(
            "ssh session %s of %s ended: %s",
            ctx.session.id,
            ctx.session.principal.subject,
            verdict.message,
        )
        for relay in list(ctx.channels):
            relay.end_by_gateway(text, hint, verdict.end.value)
        for forward in list(ctx.forwards):
            forward.close()
        # A moment later: the client then has read the channels' last lines and closes first;
        # a disconnect in the same write would end it before it prints them.
        asyncio.get_running_loop().call_later(
            _END_GRACE_SECONDS, conn.disconnect, asyncssh.DISC_BY_APPLICATION, text
        )

    def shutdown(self) -> None:
        self.ending = SessionEnd.GATEWAY_SHUTDOWN
        if self.conn is not None:
            self.conn.disconnect(
                asyncssh.DISC_BY_APPLICATION, "lockgate: the gateway is shutting down"
            )

    # -- authentication ---------------------------------------------------------------------
    def begin_auth(self, username: str) -> bool:
        assert self.conn is not None
        version = self.conn.get_extra_info("client_version") or ""
        self.info = ClientInfo(
            address=self.info.address,
            protocol="ssh",
            user_name=username,
            application_name=str(version)[:255],
        )
        return True

    def password_auth_supported(self) -> bool:
        return True

    async def validate_password(self, username: str, password: str) -> bool:
        return await self._login_token(username, password)

    def kbdint_auth_supported(self) -> bool:
        return True

    def get_kbdint_challenge(
        self, username: str, lang: str, submethods: str
    ) -> tuple[str, str, str, list[tuple[str, bool]]]:
        return ("Lockgate", "", "", [(f"Lockgate token for {username}: ", False)])

    async def validate_kbdint_response(self, username: str, responses: Sequence[str]) -> bool:
        if len(responses) != 1:
            return False
        return await self._login_token(username, responses[0])

    async def _check_certificate(
        self, username: str, key_data: bytes, accepted: bool, signed: bool
    ) -> bool:
        """Admit a certificate asyncssh accepted, once signed; record why one was refused."""
        cert = decode_user_certificate(key_data)
        if cert is None:
            return accepted
        if not accepted:
            if not self.cert_refused:
                # Not a disconnect: the client may go on with a token as the password.
                self.cert_refused = True
                subject = certificate_facts(cert).subject
                ours = cert.signing_key.public_data == self.engine.user_ca.public_data
                error = AuthFailed(
                    rejection_reason(cert, self.engine.user_ca),
                    hint="get a new certificate with `lockgate ssh-cert RESOURCE`",
                    # Another CA's certificate names whoever its maker chose: not a subject.
                    detail="" if ours else f"it names {shown(subject)}",
                )
                self._banner(error)
                resource = username.rpartition("#")[2]
                claimed = subject if ours and subject else None
                await self.gate.refuse(self.info, resource, claimed, "auth_failed", error)
            return False
        if not signed:
            return True  # a query: the client proves it holds the key next
        if self.ctx is not None:
            return True
        issuer = self.gate.manifest.identity.gateway_tokens.issuer

        def verify() -> Awaitable[Principal]:
            engine = self.gate.engine
            return asyncio.to_thread(principal_for_certificate, engine, issuer, cert)

        return await self._login(username, verify, certificate_facts(cert).subject or None)

    async def _login_token(self, username: str, token: str) -> bool:
        return await self._login(username, lambda: self.gate.authenticate(token.strip()))

    async def _login(
        self,
        username: str,
        verify: Callable[[], Awaitable[Principal]],
        claimed: str | None = None,
    ) -> bool:
        """Verify, authorize, record and connect; `claimed` names who a refusal concerns."""
        gate = self.gate
        resource_name = username.rpartition("#")[2]
        if not resource_name:
            error: LockgateError = AuthFailed(
                f"log in as {LOGIN_FORM} or RESOURCE, e.g. ssh -p PORT alice#web@GATEWAY",
                hint="the user name names the SSH resource you want to reach",
            )
            await self._refuse(username, None, error)
            return False
        subject = claimed
        try:
            principal = await verify()
            subject = principal.subject
            resource, _ = gate.authorize_ssh(principal, resource_name)
            key, password = load_credentials(resource, gate.manifest, gate.secrets)
            session = await gate.open_session(principal, resource, self.info)
        except SecretError as exc:
            log.error("resource %s: %s", resource_name, exc.message)
            error = UpstreamError(
                f"the gateway cannot load the credential of resource '{resource_name}'",
                hint="tell an administrator: the resource's credential reference is broken",
            )
            await self._refuse(resource_name, subject, error)
            return False
        except LockgateError as exc:
            await self._refuse(resource_name, subject, exc)
            return False
        try:
            upstream = await connect_target(resource, key, password)
        except UpstreamError as exc:
            self._banner(exc)
            gate.end_session(session, SessionEnd.ERROR, 0, 0, exc.message)
            self._disconnect(exc.message)
            return False
        self.ctx = SshContext(gate, session, resource, upstream, poll=self.engine.poll)
        if self.conn is not None:
            install(self.ctx, self.conn)
        spawn(self._watch_target(upstream), name="ssh-target-watch")
        log.info("ssh session %s: %s on %s", session.id, principal.subject, resource.name)
        return True

    async def _watch_target(self, upstream: asyncssh.SSHClientConnection) -> None:
        await upstream.wait_closed()
        if self.ctx is not None and self.conn is not None and self.ending is None:
            self.ending = SessionEnd.UPSTREAM_CLOSED
            self.conn.disconnect(
                asyncssh.DISC_CONNECTION_LOST, "lockgate: the target closed the connection"
            )

    def _banner(self, error: LockgateError) -> None:
        if self.conn is None:
            return
        text = f"lockgate: {error.message}\r\n"
        if error.hint:
            text += f"hint: {error.hint}\r\n"
        try:
            self.conn.send_auth_banner(text)
        except (OSError, asyncssh.Error):
            pass

    def _disconnect(self, message: str) -> None:
        conn = self.conn
        if conn is None:
            return
        # After this auth reply is sent: the client then prints the reason.
        asyncio.get_running_loop().call_soon(
            conn.disconnect, asyncssh.DISC_NO_MORE_AUTH_METHODS_AVAILABLE, f"lockgate: {message}"
        )

    async def _refuse(self, resource: str, subject: str | None, error: LockgateError) -> None:
        code = refusal_code(error)
        log.info(
            "refused ssh %s (%s) on %s: %s %s",
            self.info.address,
            subject or "-",
            resource or "-",
            code,
            error.message,
        )
        self._banner(error)
        self._disconnect(error.message)
        await self.gate.refuse(self.info, resource, subject, code, error)

    # -- channels ---------------------------------------------------------------------------
    def session_requested(self) -> asyncssh.SSHServerSession[bytes] | bool:
        if self.ctx is None:
            return False
        return ChannelRelay(self.ctx)

    def connection_requested(
        self, dest_host: str, dest_port: int, orig_host: str, orig_port: int
    ) -> Awaitable[asyncssh.SSHTCPSession[bytes]]:
        ctx = self.ctx
        if ctx is None:
            raise asyncssh.ChannelOpenError(
                asyncssh.OPEN_ADMINISTRATIVELY_PROHIBITED, "lockgate: not logged in"
            )
        # A coroutine: asyncssh awaits it before it confirms the channel to the client.
        return open_local(ctx, dest_host, dest_port, orig_host, orig_port)

    def server_requested(
        self, listen_host: str, listen_port: int
    ) -> Awaitable[asyncssh.SSHListener | bool] | bool:
        ctx, conn = self.ctx, self.conn
        if ctx is None or conn is None:
            return False
        return listen_remote(ctx, conn, listen_host, listen_port)

    def unix_connection_requested(self, dest_path: str) -> bool:
        self._forwarding("local", f"unix:{dest_path}")
        reason = self._forward_refusal
        raise asyncssh.ChannelOpenError(
            asyncssh.OPEN_ADMINISTRATIVELY_PROHIBITED, f"lockgate: {reason}"
        )

    def unix_server_requested(self, listen_path: str) -> bool:
        self._forwarding("remote", f"unix:{listen_path}")
        return False

    def _forwarding(self, kind: str, destination: str) -> bool:
        """Decide on and record an agent, X11 or UNIX socket forwarding request.

        Agent and X11 forwarding a rule allows are relayed (`ssh_agent_x11`); UNIX socket
        forwarding never is. The reason for a refusal is kept in `_forward_refusal`, and for
        agent and X11 also shown on the stderr of the next session channel, since OpenSSH
        prints nothing when such a request fails.
        """
        ctx = self.ctx
        if ctx is None:
            self._forward_refusal = "not logged in"
            return False
        request = SshRequest(
            "forward",
            text=f"forward {kind} {destination}".rstrip(),
            forwarding=kind,
            destination=destination,
        )
        seq = ctx.next_seq()
        admission = self.gate.admit_ssh(ctx.session, seq, request, f"ssh.forward-{kind}")
        decision = admission.command.decision
        reason = decision.reason
        relayed = decision.allowed and kind in ("agent", "x11")
        if decision.allowed and not relayed:
            reason = (
                f"UNIX socket forwarding is allowed by rule '{decision.rule}', but the "
                "gateway does not relay it"
            )
        try:
            pending = self.gate.record([admission])
            if pending is not None:
                pending.add_done_callback(lambda f: f.exception())
        except AuditUnavailable:
            log.error("ssh %s: a forwarding request could not be recorded", ctx.session.id)
            if relayed:
                relayed, reason = False, "the request could not be recorded"
        if relayed:
            ctx.finish(seq, ResultSummary(status="allowed"))
            log.info("ssh %s: %s forwarding allowed by %s", ctx.session.id, kind, decision.rule)
            return True
        self._forward_refusal = reason
        ctx.finish(seq, ResultSummary(status="denied", error_message=reason))
        if kind in ("agent", "x11"):
            ctx.notices.append(reason)
        log.info(
            "ssh %s: %s forwarding to %s refused: %s", ctx.session.id, kind, destination, reason
        )
        return False
