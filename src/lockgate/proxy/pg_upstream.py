"""Open an authenticated connection to an upstream PostgreSQL server with the stored credential."""

from __future__ import annotations

import asyncio
import logging
import os
import ssl
from dataclasses import dataclass, field

from lockgate.config.model import Manifest, Resource
from lockgate.errors import UpstreamError
from lockgate.protocols.postgres import messages as m
from lockgate.protocols.postgres import sqlstate
from lockgate.protocols.postgres.auth import SCRAM_SHA_256, ScramClient, md5_password
from lockgate.proxy.endpoint import Endpoint
from lockgate.proxy.tls import upstream_context

log = logging.getLogger("lockgate.upstream")

# Startup parameters a client may not pass through: identity and routing are the gateway's,
# `options` could switch settings (e.g. read-only) off, `_pq_` are protocol extensions;
# `role`/`session_authorization` would switch roles and the read-only settings would turn a
# read-only session writable, all before any statement could be judged.
_BLOCKED_PARAMS = frozenset(
    {
        "user", "database", "replication", "options", "role", "session_authorization",
        "default_transaction_read_only", "transaction_read_only",
    }
)  # fmt: skip


@dataclass
class UpstreamConnection:
    endpoint: Endpoint
    backend_pid: int = 0
    backend_secret: int = 0
    # ParameterStatus messages, raw, to replay to the client.
    parameter_statuses: list[bytes] = field(default_factory=list)
    notices: list[bytes] = field(default_factory=list)
    tls: bool = False


@dataclass(frozen=True, slots=True)
class UpstreamTarget:
    """Where to send a CancelRequest for a session."""

    host: str
    port: int
    ssl_context: ssl.SSLContext | None


def forwardable_parameters(params: dict[str, str]) -> dict[str, str]:
    """The client's startup parameters that go on to the upstream server."""
    return {
        k: v for k, v in params.items() if k not in _BLOCKED_PARAMS and not k.startswith("_pq_")
    }


async def open_transport(host: str, port: int, connect_timeout: float) -> Endpoint:
    """A TCP (or, for a host that is a folder, unix socket) connection to the server."""
    loop = asyncio.get_running_loop()
    ep = Endpoint()
    async with asyncio.timeout(connect_timeout):
        if host.startswith("/"):
            path = os.path.join(host, f".s.PGSQL.{port}")
            await loop.create_unix_connection(lambda: ep, path)
        else:
            await loop.create_connection(lambda: ep, host, port)
    return ep


async def _read(ep: Endpoint) -> tuple[bytes, bytes]:
    while True:
        got = m.read_message(ep.buffer)
        if got is not None:
            type_, payload, used = got
            del ep.buffer[:used]
            return type_, payload
        await ep.wait_data()


def _error_from_upstream(resource: Resource, payload: bytes) -> UpstreamError:
    fields = m.parse_error_fields(payload)
    code = fields.get("C", "")
    log.warning(
        "upstream of resource %s refused the gateway: %s %s", resource.name, code, fields.get("M")
    )
    if code.startswith("28"):
        err = UpstreamError(
            f"the upstream server of resource '{resource.name}' rejected the gateway's stored "
            "credential",
            hint="an administrator must update the resource's credential (`lockgate secret set`)",
        )
        err.rule = sqlstate.SQLSERVER_REJECTED_ESTABLISHMENT_OF_SQLCONNECTION
        return err
    if code == sqlstate.INVALID_CATALOG_NAME:
        err = UpstreamError(
            f"the upstream database of resource '{resource.name}' does not exist",
            hint="an administrator must fix the resource's upstream database in the manifest",
        )
        err.rule = sqlstate.CONNECTION_FAILURE
        return err
    err = UpstreamError(
        f"the upstream server of resource '{resource.name}' refused the connection ({code})",
        hint="try again shortly; if it persists, tell an administrator",
    )
    err.rule = code if code.startswith(("53", "57")) else sqlstate.CONNECTION_FAILURE
    return err


async def connect_upstream(
    resource: Resource,
    manifest: Manifest,
    password: str | None,
    client_params: dict[str, str],
    *,
    read_only: bool = False,
) -> UpstreamConnection:
    """Connect and authenticate to `resource`'s server; raise UpstreamError (safe message).

    `read_only`: the session starts with `default_transaction_read_only=on` (a startup
    parameter, so `RESET`/`DISCARD ALL` return to it).
    """
    up = resource.upstream
    try:
        ep = await open_transport(up.host, up.port, up.connect_timeout)
    except (OSError, TimeoutError) as exc:
        log.warning(
            "cannot reach upstream of resource %s at %s:%s: %s",
            resource.name,
            up.host,
            up.port,
            exc,
        )
        err = UpstreamError(
            f"the upstream server of resource '{resource.name}' is unreachable",
            hint="try again shortly; if it persists, tell an administrator",
        )
        err.rule = sqlstate.CONNECTION_FAILURE
        raise err from None
    try:
        return await asyncio.wait_for(
            _handshake(ep, resource, manifest, password, client_params, read_only),
            up.connect_timeout,
        )
    except UpstreamError:
        ep.abort()
        raise
    except (OSError, TimeoutError, ssl.SSLError, m.ProtocolViolation, ConnectionError) as exc:
        ep.abort()
        log.warning("handshake with upstream of resource %s failed: %r", resource.name, exc)
        err = UpstreamError(
            f"the gateway could not establish a session with the upstream server of resource "
            f"'{resource.name}'",
            hint="tell an administrator: the upstream TLS or authentication settings may be wrong",
        )
        err.rule = sqlstate.CONNECTION_FAILURE
        raise err from None


def upstream_target(resource: Resource, manifest: Manifest) -> UpstreamTarget:
    up = resource.upstream
    ctx = None if up.host.startswith("/") else upstream_context(up.tls, manifest)
    return UpstreamTarget(up.host, up.port, ctx)


async def _negotiate_tls(ep: Endpoint, resource: Resource, manifest: Manifest) -> bool:
    up = resource.upstream
    if up.host.startswith("/") or up.tls.mode == "disable":
        return False
    ctx = upstream_context(up.tls, manifest)
    assert ctx is not None
    ep.write(m.ssl_request())
    while not ep.buffer:
        await ep.wait_data()
    answer = bytes(ep.buffer[:1])
    del ep.buffer[:1]
    if answer == b"S":
        await ep.start_tls(ctx, server_side=False, server_hostname=up.tls.server_name or up.host)
        return True
    if answer == b"N":
        if up.tls.mode != "prefer":
            err = UpstreamError(
                f"the upstream server of resource '{resource.name}' does not offer TLS, "
                f"but the resource requires it (mode {up.tls.mode})",
                hint="tell an administrator: enable TLS on the server "
                "or change the resource's tls.mode",
            )
            err.rule = sqlstate.CONNECTION_FAILURE
            raise err
        return False
    raise m.ProtocolViolation(f"unexpected answer {answer!r} to SSLRequest")


async def _handshake(
    ep: Endpoint,
    resource: Resource,
    manifest: Manifest,
    password: str | None,
    client_params: dict[str, str],
    read_only: bool = False,
) -> UpstreamConnection:
    up = resource.upstream
    conn = UpstreamConnection(ep)
    conn.tls = await _negotiate_tls(ep, resource, manifest)
    params = {"user": up.user, "database": up.database, **forwardable_parameters(client_params)}
    if read_only:
        params["default_transaction_read_only"] = "on"
    ep.write(m.startup_message(params))
    scram: ScramClient | None = None
    while True:
        type_, payload = await _read(ep)
        if type_ == b"E":
            raise _error_from_upstream(resource, payload)
        if type_ == b"v":  # NegotiateProtocolVersion: fine, we speak 3.0
            continue
        if type_ != b"R":
            raise m.ProtocolViolation(f"unexpected message {type_!r} during authentication")
        code, rest = m.auth_request(payload)
        if code == 0:
            break
        if password is None:
            err = UpstreamError(
                f"the upstream server of resource '{resource.name}' asks for a password, but "
                "the resource has no credential configured",
                hint="an administrator must set `upstream.password` (e.g. store:NAME)",
            )
            err.rule = sqlstate.SQLSERVER_REJECTED_ESTABLISHMENT_OF_SQLCONNECTION
            raise err
        if code == 3:
            ep.write(m.password_message(password.encode()))
        elif code == 5:
            ep.write(m.password_message(md5_password(up.user, password, rest[:4])))
        elif code == 10:
            mechanisms = [x.decode() for x in rest.split(b"\x00") if x]
            if SCRAM_SHA_256 not in mechanisms:
                raise m.ProtocolViolation(f"no supported SASL mechanism in {mechanisms}")
            scram = ScramClient(password)
            ep.write(m.sasl_initial_response(SCRAM_SHA_256, scram.client_first()))
        elif code == 11 and scram is not None:
            ep.write(m.sasl_response(scram.client_final(rest)))
        elif code == 12 and scram is not None:
            scram.verify_server_final(rest)
        else:
            raise m.ProtocolViolation(f"unsupported upstream authentication method {code}")
    if scram is not None and not scram.done:
        raise m.ProtocolViolation("upstream completed SCRAM without proving the server key")
    while True:
        type_, payload = await _read(ep)
        if type_ == b"S":
            conn.parameter_statuses.append(m.message(b"S", payload))
        elif type_ == b"K":
            conn.backend_pid, conn.backend_secret = m.parse_backend_key_data(payload)
        elif type_ == b"N":
            conn.notices.append(m.message(b"N", payload))
        elif type_ == b"Z":
            return conn
        elif type_ == b"E":
            raise _error_from_upstream(resource, payload)
        else:
            raise m.ProtocolViolation(f"unexpected message {type_!r} after authentication")
