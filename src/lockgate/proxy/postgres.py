"""The PostgreSQL engine: initialise a client connection, handle it, refuse it natively.

Theory of operation
-------------------
1. Startup: answer SSLRequest (TLS with the listener's certificate) and GSSENCRequest
   ('N'), route CancelRequest to the session it names, read the StartupMessage. Clients
   that stall or send garbage here are cut off with an ErrorResponse within a deadline.
2. Authentication: ask for a cleartext password (only inside TLS unless TLS is disabled)
   and treat it as a token; the gate verifies it, checks access to the resource named by
   `dbname`, and records the session before anything reaches the upstream.
3. Upstream: connect with the stored credential, replay the server's parameters, give the
   client a cancel key of our own (mapped to the upstream's), then hand over to `PgRelay`.
Every refusal is a FATAL ErrorResponse with the SQLSTATE from `pg_errors`, and is recorded.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import ssl
from collections.abc import Callable

from lockgate.config.model import Listener
from lockgate.errors import AuditUnavailable, AuthFailed, LockgateError, SecretError
from lockgate.gate import Gate
from lockgate.identity.session_limits import SessionVerdict
from lockgate.model import ClientInfo, Session, SessionEnd
from lockgate.protocols.postgres import messages as m
from lockgate.protocols.postgres import sqlstate
from lockgate.proxy import busypoll
from lockgate.proxy.endpoint import Endpoint
from lockgate.proxy.pg_errors import error_for
from lockgate.proxy.pg_relay import PgRelay
from lockgate.proxy.pg_upstream import UpstreamTarget, connect_upstream, upstream_target
from lockgate.wakeups import LIVE_SESSIONS

log = logging.getLogger("lockgate.postgres")

# Default startup deadline; each listener sets its own (`startup_timeout`).
STARTUP_TIMEOUT = 30.0
SERVER_VERSION_FALLBACK = "16.0"


class CancelRegistry:
    """Maps the cancel keys Lockgate hands to clients onto the upstream sessions' keys."""

    def __init__(self, key_prefix: int = 0) -> None:
        # The top bits of every process id we hand out name this worker, so another worker
        # receiving a CancelRequest knows where to forward it.
        self.key_prefix = key_prefix
        self._keys: dict[tuple[int, int], tuple[UpstreamTarget, int, int]] = {}
        # Sessions that want to hear about a cancel first (a statement held for review).
        self._listeners: dict[tuple[int, int], Callable[[], object]] = {}

    def register(
        self, target: UpstreamTarget, upstream_pid: int, upstream_secret: int
    ) -> tuple[int, int]:
        while True:
            pid = (self.key_prefix << 22) | secrets.randbits(22)
            key = secrets.randbits(31)
            if (pid, key) not in self._keys:
                break
        self._keys[(pid, key)] = (target, upstream_pid, upstream_secret)
        return pid, key

    def unregister(self, pid: int, key: int) -> None:
        self._keys.pop((pid, key), None)
        self._listeners.pop((pid, key), None)

    def listen(self, pid: int, key: int, on_cancel: Callable[[], object]) -> None:
        """Call `on_cancel` when the client cancels (before the upstream is told)."""
        self._listeners[(pid, key)] = on_cancel

    async def cancel(self, pid: int, key: int) -> bool:
        """Send the upstream CancelRequest for a client's key; False if the key is unknown."""
        found = self._keys.get((pid, key))
        if found is None:
            return False
        target, upid, ukey = found
        listener = self._listeners.get((pid, key))
        if listener is not None:
            listener()
        try:
            await _send_cancel(target, upid, ukey)
        except (OSError, TimeoutError, ssl.SSLError) as exc:
            log.warning("cancel request to upstream failed: %s", exc)
        return True


async def _send_cancel(target: UpstreamTarget, pid: int, key: int) -> None:
    from lockgate.proxy.pg_upstream import open_transport

    ep = await open_transport(target.host, target.port, 5.0)
    try:
        if target.ssl_context is not None:
            ep.write(m.ssl_request())
            while not ep.buffer:
                await asyncio.wait_for(ep.wait_data(), 5.0)
            if bytes(ep.buffer[:1]) == b"S":
                ep.buffer.clear()
                await ep.start_tls(
                    target.ssl_context, server_side=False, server_hostname=target.host
                )
            else:
                ep.buffer.clear()
        ep.write(m.cancel_request(pid, key))
        # The server closes the connection once it has read the request.
        while not ep.closed:
            await asyncio.wait_for(ep.wait_data(), 5.0)
    except ConnectionError:
        pass
    finally:
        ep.close()


class PostgresEngine:
    """Serves PostgreSQL clients on one listener."""

    def __init__(
        self,
        gate: Gate,
        listener: Listener,
        tls: ssl.SSLContext | None,
        cancels: CancelRegistry,
        forward_cancel: Callable[[int, int], object] | None = None,
    ) -> None:
        self.gate = gate
        self.listener = listener
        self.tls = tls
        self.cancels = cancels
        self.forward_cancel = forward_cancel
        self.sessions: dict[str, PgRelay] = {}
        self.busy_poll = busypoll.for_listener(listener.busy_poll_us)
        # Live sessions and how to end one from outside (token expiry, revocation).
        self._enders: dict[str, tuple[Session, Callable[[SessionVerdict], None]]] = {}

    async def watch_sessions(self) -> None:
        """End live sessions whose token expired or was revoked, every `check_interval`."""
        interval = self.gate.live_sessions.check_interval
        # Woken at once by a revocation or an end-session request on any host (wakeups.py).
        watch = self.gate.wakeups.watch(*LIVE_SESSIONS)
        while True:
            await watch.wait(interval)
            if not self._enders:
                continue
            try:
                verdicts = await self.gate.sessions_to_end([s for s, _ in self._enders.values()])
            except Exception:  # a failed check must not stop the next one
                log.exception("live session check failed")
                continue
            for verdict in verdicts:
                entry = self._enders.get(verdict.session.id)
                if entry is not None:
                    entry[1](verdict)

    async def handle(self, client: Endpoint) -> None:
        """Serve one client connection from its first byte to its last."""
        info = ClientInfo(address=client.peer_address(), protocol="postgres")
        try:
            async with asyncio.timeout(self.listener.startup_timeout_seconds):
                startup = await self._startup(client)
                if startup is None:
                    return
                info = ClientInfo(
                    address=info.address,
                    protocol="postgres",
                    user_name=startup.parameters.get("user", ""),
                    application_name=startup.parameters.get("application_name", ""),
                )
                token = await self._password(client)
        except TimeoutError:
            await self._refuse(
                client,
                info,
                "",
                None,
                sqlstate.PROTOCOL_VIOLATION,
                LockgateError("startup did not complete in time"),
            )
            return
        except m.ProtocolViolation as exc:
            await self._refuse(client, info, "", None, exc.code, LockgateError(exc.message))
            return
        except (ConnectionError, ssl.SSLError, OSError) as exc:
            log.info("client %s went away during startup: %s", info.address, exc)
            client.abort()
            return
        except _Refusal as r:
            await self._refuse(client, info, "", None, r.code, r.error)
            return
        await self._serve(client, info, startup, token)

    async def _startup(self, client: Endpoint) -> m.StartupMessage | None:
        tls_done = False
        while True:
            got = m.read_startup_packet(client.buffer)
            if got is None:
                await client.wait_data()
                continue
            packet, used = got
            del client.buffer[:used]
            if isinstance(packet, m.SSLRequest):
                if self.tls is not None and not tls_done:
                    client.write(b"S")
                    await client.start_tls(self.tls, server_side=True)
                    tls_done = True
                else:
                    client.write(b"N")
            elif isinstance(packet, m.GSSENCRequest):
                client.write(b"N")
            elif isinstance(packet, m.CancelRequest):
                await self._cancel(packet)
                client.close()
                return None
            else:
                if self.tls is not None and not tls_done:
                    raise _Refusal(
                        sqlstate.INVALID_AUTHORIZATION_SPECIFICATION,
                        AuthFailed(
                            "this gateway requires TLS",
                            hint="connect with sslmode=require "
                            "(or verify-full with the gateway's CA)",
                        ),
                    )
                if "database" not in packet.parameters:
                    raise _Refusal(
                        sqlstate.INVALID_CATALOG_NAME,
                        LockgateError(
                            "no resource named",
                            hint="set dbname to the resource you want to reach",
                        ),
                    )
                if packet.parameters.get("replication", "false").lower() not in (
                    "false",
                    "0",
                    "off",
                    "no",
                ):
                    raise _Refusal(
                        sqlstate.FEATURE_NOT_SUPPORTED,
                        LockgateError("replication connections are not supported by the gateway"),
                    )
                return packet

    async def _password(self, client: Endpoint) -> str:
        client.write(m.AUTH_CLEARTEXT)
        while True:
            got = m.read_message(client.buffer, max_length=65536)
            if got is not None:
                break
            await client.wait_data()
        type_, payload, used = got
        del client.buffer[:used]
        if type_ != b"p":
            raise m.ProtocolViolation(f"expected a password message, got {type_!r}")
        token = payload.rstrip(b"\x00").decode("utf-8", "replace").strip()
        if not token:
            raise _Refusal(
                sqlstate.INVALID_PASSWORD,
                AuthFailed("no token given", hint="pass your Lockgate token as the password"),
            )
        return token

    async def _cancel(self, packet: m.CancelRequest) -> None:
        if await self.cancels.cancel(packet.process_id, packet.secret_key):
            return
        if self.forward_cancel is not None:
            self.forward_cancel(packet.process_id, packet.secret_key)

    async def _refuse(
        self,
        client: Endpoint,
        info: ClientInfo,
        resource: str,
        subject: str | None,
        code: str,
        error: LockgateError,
    ) -> None:
        _, message, hint = error_for(error)
        log.info(
            "refused %s (%s) on %s: %s %s",
            info.address,
            subject or "-",
            resource or "-",
            code,
            error.message,
        )
        client.write(m.error_response(code, message, severity="FATAL", hint=hint))
        client.close()
        await self.gate.refuse(info, resource, subject, code, error)

    async def _serve(
        self, client: Endpoint, info: ClientInfo, startup: m.StartupMessage, token: str
    ) -> None:
        gate = self.gate
        resource_name = startup.parameters["database"]
        subject: str | None = None
        try:
            principal = await gate.authenticate(token)
            subject = principal.subject
            resource, _decision = gate.authorize(principal, resource_name)
            password = gate.credential(resource)
        except SecretError as exc:
            log.error("resource %s: %s", resource_name, exc.message)
            err = LockgateError(
                f"the gateway cannot load the credential of resource '{resource_name}'",
                hint="tell an administrator: the resource's credential reference is broken",
            )
            await self._refuse(
                client, info, resource_name, subject, sqlstate.CONNECTION_FAILURE, err
            )
            return
        except LockgateError as exc:
            code = error_for(exc)[0]
            await self._refuse(client, info, resource_name, subject, code, exc)
            return
        try:
            session = await gate.open_session(principal, resource, info)
        except AuditUnavailable as exc:
            await self._refuse(
                client, info, resource_name, subject, sqlstate.CANNOT_CONNECT_NOW, exc
            )
            return
        try:
            upstream = await connect_upstream(
                resource, gate.manifest, password, startup.parameters, read_only=session.read_only
            )
        except LockgateError as exc:
            code = error_for(exc)[0]
            client.write(m.error_response(code, error_for(exc)[1], severity="FATAL", hint=exc.hint))
            client.close()
            gate.end_session(session, SessionEnd.ERROR, client.bytes_received, 0, exc.message)
            return
        await self._relay(client, upstream.endpoint, session, upstream, resource_name)

    async def _relay(
        self, client: Endpoint, up: Endpoint, session: Session, conn: object, resource_name: str
    ) -> None:
        from lockgate.proxy.pg_upstream import UpstreamConnection

        assert isinstance(conn, UpstreamConnection)
        resource = self.gate.manifest.resource(resource_name)
        assert resource is not None
        target = upstream_target(resource, self.gate.manifest)
        pid, key = self.cancels.register(target, conn.backend_pid, conn.backend_secret)
        hello = [m.AUTH_OK, *conn.parameter_statuses, m.backend_key_data(pid, key), *conn.notices]
        hello.append(m.ready_for_query(b"I"))
        client.write(b"".join(hello))
        done: asyncio.Future[str | None] = asyncio.get_running_loop().create_future()

        def finished(reason: str | None) -> None:
            if not done.done():
                done.set_result(reason)

        ended_by: list[SessionVerdict] = []

        def end_now(verdict: SessionVerdict) -> None:
            ended_by.append(verdict)
            finished(verdict.message)

        relay = PgRelay(self.gate, session, client, up, finished)
        client.poll = up.poll = self.busy_poll

        async def cancel_upstream() -> None:
            # A read the row gate stopped mid-way (`pg_rowgate`): cancel it like a client would.
            try:
                await _send_cancel(target, conn.backend_pid, conn.backend_secret)
            except (OSError, TimeoutError, ssl.SSLError) as exc:
                log.warning("cancel request to upstream failed: %s", exc)

        relay.cancel_upstream = cancel_upstream
        self.cancels.listen(pid, key, relay.cancel_review)
        self._enders[session.id] = (session, end_now)
        client.on_lost = lambda exc: finished(None)
        up.on_lost = lambda exc: finished("upstream closed the connection")
        self.sessions[session.id] = relay
        sent_before = client.bytes_received
        relay.start()
        try:
            reason = await done
        except asyncio.CancelledError:
            reason = "gateway shutting down"
            client.write(
                m.error_response(
                    sqlstate.ADMIN_SHUTDOWN,
                    "lockgate: the gateway is shutting down",
                    severity="FATAL",
                    hint="reconnect in a moment",
                )
            )
        finally:
            held = relay.abandon()
            self.sessions.pop(session.id, None)
            self._enders.pop(session.id, None)
            self.cancels.unregister(pid, key)
        if ended_by:
            verdict = ended_by[0]
            end = verdict.end
            log.info("session %s of %s ended: %s", session.id, session.principal.subject, reason)
            client.write(
                m.error_response(
                    sqlstate.ADMIN_SHUTDOWN,
                    f"lockgate: session ended: {verdict.message}",
                    severity="FATAL",
                    hint=_END_HINTS.get(end, "reconnect with a valid token"),
                )
            )
        elif reason is None or (relay.terminated and reason.startswith("upstream")):
            # After the client's Terminate, the server may well hang up before the client does.
            end = (
                SessionEnd.CLIENT_TERMINATED if relay.terminated else SessionEnd.CLIENT_DISCONNECTED
            )
            reason = None
        elif reason == "gateway shutting down":
            end = SessionEnd.GATEWAY_SHUTDOWN
        elif reason.startswith("upstream"):
            end = SessionEnd.UPSTREAM_CLOSED
        else:
            end = SessionEnd.PROTOCOL_ERROR
        relay.finish_all(reason or "session ended")
        if held is not None:
            # Withdrawn before the session's record closes (and before a shutdown ends).
            why = _WITHDRAWN.get(end, f"the session ended ({reason})")
            await self.gate.broker.withdraw(held, why)
        if not up.closed:
            up.write(m.TERMINATE)
            up.close()
        client.close()
        self.gate.end_session(
            session,
            end,
            client.bytes_received - sent_before,
            up.bytes_received,
            None
            if end in (SessionEnd.CLIENT_TERMINATED, SessionEnd.CLIENT_DISCONNECTED)
            else reason,
        )


# Why a request held by a session that ended is withdrawn.
_WITHDRAWN = {
    SessionEnd.CLIENT_DISCONNECTED: "the client disconnected",
    SessionEnd.CLIENT_TERMINATED: "the client disconnected",
    SessionEnd.GATEWAY_SHUTDOWN: "the gateway shut down",
}
_END_HINTS = {
    SessionEnd.REVOKED: "ask an administrator to restore access",
    SessionEnd.WINDOW_CLOSED: "connect again when the access window opens",
    SessionEnd.GRANT_ENDED: "ask for access again: lockgate request RESOURCE --for 30m "
    "--reason TEXT",
    SessionEnd.ENDED_BY_ADMIN: "ask the administrator why before reconnecting",
}


class _Refusal(Exception):
    def __init__(self, code: str, error: LockgateError) -> None:
        super().__init__(error.message)
        self.code = code
        self.error = error
