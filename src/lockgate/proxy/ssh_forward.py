"""Port forwarding through the gateway: `-L` and `-R` channels relayed via the target.

Theory of operation
-------------------
The gateway never connects anywhere from its own network for a client: a forwarded
connection is always made *by the target*, over the gateway's SSH connection to it.

- `-L` (and `-W`): the client opens a `direct-tcpip` channel to HOST:PORT. `open_local`
  decides on it (`ssh.rules` with `forwarding: [local]` and `destinations`), records it, then
  asks the target to open the same `direct-tcpip` channel; bytes are relayed between the two.
- `-R`: the client asks the gateway to listen on HOST:PORT. `listen_remote` decides and
  records, then asks the *target* to listen (`tcpip-forward`); each connection the target
  accepts arrives as a `forwarded-tcpip` channel, is recorded, and is relayed to a
  `forwarded-tcpip` channel the gateway opens to the client.

Each relayed channel is one command in the audit trail; when it closes its record gets the
bytes each way and the duration. A full send window on one side pauses reading on the
other, so a slow reader slows the writer instead of filling the gateway's memory.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable
from typing import NoReturn

import asyncssh
from asyncssh.channel import SSHChannel

from lockgate.errors import AuditUnavailable
from lockgate.model import ResultSummary
from lockgate.policy.ssh import SshRequest
from lockgate.proxy.ssh_channel import SshContext

log = logging.getLogger("lockgate.ssh")

_PROHIBITED = asyncssh.OPEN_ADMINISTRATIVELY_PROHIBITED
_FAILED = asyncssh.OPEN_CONNECT_FAILED


class _Side(asyncssh.SSHTCPSession[bytes], asyncssh.SSHUNIXSession[bytes]):
    """One end of a forwarded connection (the client's channel or the target's)."""

    def __init__(self, pair: ForwardedConnection) -> None:
        self.pair = pair
        self.chan: SSHChannel[bytes] | None = None
        self.peer: _Side | None = None
        self.received = 0
        # Rewrites what this side receives before it is passed on (X11's cookie);
        # raises ValueError to end the connection.
        self.rewrite: Callable[[bytes], bytes] | None = None
        self._held: list[bytes] = []
        self._held_eof = False

    def connection_made(self, chan: SSHChannel[bytes]) -> None:
        self.chan = chan
        self.pair.attached()

    def data_received(self, data: bytes, datatype: asyncssh.DataType) -> None:
        self.received += len(data)
        if self.rewrite is not None:
            try:
                data = self.rewrite(data)
            except ValueError as exc:
                self.pair.refused(str(exc))
                return
            if not data:
                return
        peer = self.peer
        if peer is None or peer.chan is None:
            # The other side is still opening: hold the bytes, stop reading.
            self._held.append(data)
            if self.chan is not None:
                self.chan.pause_reading()
            return
        peer.chan.write(data)

    def eof_received(self) -> bool:
        peer = self.peer
        if peer is None or peer.chan is None:
            self._held_eof = True
        else:
            peer.chan.write_eof()
        return True

    def flush_to(self, peer: _Side) -> None:
        """The other side is open: pass on what was held and read again."""
        assert peer.chan is not None
        held, self._held = self._held, []
        for data in held:
            peer.chan.write(data)
        if self._held_eof:
            peer.chan.write_eof()
        if self.chan is not None:
            self.chan.resume_reading()

    def pause_writing(self) -> None:
        if self.peer is not None and self.peer.chan is not None:
            self.peer.chan.pause_reading()

    def resume_writing(self) -> None:
        if self.peer is not None and self.peer.chan is not None:
            self.peer.chan.resume_reading()

    def connection_lost(self, exc: Exception | None) -> None:
        if self.peer is not None and self.peer.chan is not None:
            self.peer.chan.close()
        self.pair.closed()


class ForwardedConnection:
    """One forwarded TCP connection: two channels joined, recorded as one command."""

    def __init__(self, ctx: SshContext, seq: int, what: str, *, from_target: bool = False) -> None:
        self.ctx = ctx
        self.seq = seq
        self.what = what
        # Who opened it (the destination is the other side): the client (-L) or the target
        # (-R, agent, X11).
        self.from_target = from_target
        self.client = _Side(self)
        self.target = _Side(self)
        self.client.peer, self.target.peer = self.target, self.client
        self.started = time.monotonic()
        self._done = False
        self._error = ""

    def attached(self) -> None:
        """Once both channels are open, relay what either side sent meanwhile."""
        if self.client.chan is not None and self.target.chan is not None:
            self.client.flush_to(self.target)
            self.target.flush_to(self.client)

    def closed(self) -> None:
        """Either side closed: record the bytes each way and the duration, once."""
        if self._done:
            return
        self._done = True
        sent, got = self.client.received, self.target.received
        self.ctx.bytes_in += sent
        self.ctx.bytes_out += got
        self.ctx.forwards.discard(self)
        there, back = (got, sent) if self.from_target else (sent, got)
        status = f"closed; {there} bytes to the destination, {back} bytes back"
        self.ctx.finish(
            self.seq,
            ResultSummary(
                status=f"refused; {status}" if self._error else status,
                error_message=self._error or None,
                bytes_out=got,
                duration_ms=(time.monotonic() - self.started) * 1000,
            ),
        )

    def refused(self, reason: str) -> None:
        """End the connection because of what one side sent; the record says why."""
        log.info("ssh %s: %s ended: %s", self.ctx.session.id, self.what, reason)
        self._error = reason[:1000]
        self.close()

    def close(self) -> None:
        for side in (self.client, self.target):
            if side.chan is not None:
                side.chan.close()


async def admit_forward(
    ctx: SshContext, kind: str, text: str, request: SshRequest
) -> tuple[int, str]:
    """Decide on and record a forwarding request; returns its seq and why it is refused."""
    seq = ctx.next_seq()
    admission = ctx.gate.admit_ssh(ctx.session, seq, request, kind)
    decision = admission.command.decision
    try:
        await ctx.record(admission)
    except AuditUnavailable as exc:
        if decision.allowed:
            return seq, f"not opened: {exc.message}"
        log.error("ssh %s: a refused forwarding request was not recorded", ctx.session.id)
    if not decision.allowed:
        ctx.finish(seq, ResultSummary(status="denied", error_message=decision.reason[:1000]))
        log.info("ssh %s: %s refused: %s", ctx.session.id, text, decision.reason)
        return seq, decision.reason
    return seq, ""


async def admit_channel(
    ctx: SshContext, kind: str, text: str, request: SshRequest, *, from_target: bool = False
) -> ForwardedConnection:
    """Decide on and record a forwarded channel: the pair to relay it, or ChannelOpenError."""
    seq, refused = await admit_forward(ctx, kind, text, request)
    if refused:
        raise asyncssh.ChannelOpenError(_PROHIBITED, f"lockgate: {refused}")
    return ForwardedConnection(ctx, seq, text, from_target=from_target)


async def connect_channel(
    pair: ForwardedConnection, opening: Awaitable[object], failure: str
) -> None:
    """Wait for the far side's channel to open; a failure ends the record and the channel."""
    try:
        await opening
    except (asyncssh.Error, OSError) as exc:
        open_failed(pair.ctx, pair.seq, failure, exc)
    pair.ctx.forwards.add(pair)


def open_failed(ctx: SshContext, seq: int, message: str, exc: Exception) -> NoReturn:
    """Record a channel the far side would not open and refuse the one asking for it."""
    reason = getattr(exc, "reason", "") or type(exc).__name__
    message = f"{message} ({reason})"
    ctx.finish(seq, ResultSummary(status="error", error_message=message[:1000]))
    raise asyncssh.ChannelOpenError(_FAILED, f"lockgate: {message}") from None


async def open_local(
    ctx: SshContext, dest_host: str, dest_port: int, orig_host: str, orig_port: int
) -> asyncssh.SSHTCPSession[bytes]:
    """A `direct-tcpip` channel (`-L`, `-W`): decided, recorded, opened by the target."""
    destination = f"{dest_host}:{dest_port}"
    text = f"forward local {destination}"
    request = SshRequest("forward", text=text, forwarding="local", destination=destination)
    pair = await admit_channel(ctx, "ssh.forward-local", text, request)
    opening = ctx.upstream.create_connection(
        lambda: pair.target, dest_host, dest_port, orig_host, orig_port, encoding=None
    )
    await connect_channel(pair, opening, f"the target could not connect to {destination}")
    return pair.client


async def listen_remote(
    ctx: SshContext, client: asyncssh.SSHServerConnection, listen_host: str, listen_port: int
) -> asyncssh.SSHListener | bool:
    """A `tcpip-forward` request (`-R`): the target listens, connections come to the client."""
    where = f"{listen_host}:{listen_port}"
    text = f"forward remote {where}"
    request = SshRequest("forward", text=text, forwarding="remote", destination=where)
    seq, refused = await admit_forward(ctx, "ssh.forward-remote", text, request)
    if refused:
        return False
    listener: asyncssh.SSHListener | None = None

    def accepted(orig_host: str, orig_port: int) -> Awaitable[asyncssh.SSHTCPSession[bytes]]:
        port = listener.get_port() if listener is not None else listen_port
        return _remote_connection(ctx, client, listen_host, port, orig_host, orig_port)

    try:
        listener = await ctx.upstream.create_server(
            accepted, listen_host, listen_port, encoding=None
        )
    except (asyncssh.Error, OSError) as exc:
        reason = getattr(exc, "reason", "") or str(exc) or type(exc).__name__
        message = f"the target could not listen on {where} ({reason})"
        ctx.finish(seq, ResultSummary(status="error", error_message=message[:1000]))
        log.info("ssh %s: %s", ctx.session.id, message)
        return False
    ctx.finish(seq, ResultSummary(status=f"listening on {listen_host}:{listener.get_port()}"))
    return listener


async def _remote_connection(
    ctx: SshContext,
    client: asyncssh.SSHServerConnection,
    listen_host: str,
    listen_port: int,
    orig_host: str,
    orig_port: int,
) -> asyncssh.SSHTCPSession[bytes]:
    """A connection the target accepted for `-R`: recorded, then opened to the client."""
    where = f"{listen_host}:{listen_port}"
    text = f"forward remote {where} from {orig_host}:{orig_port}"
    request = SshRequest("forward", text=text, forwarding="remote", destination=where)
    pair = await admit_channel(
        ctx, "ssh.forward-remote-connection", text, request, from_target=True
    )
    opening = client.create_connection(
        lambda: pair.client, listen_host, listen_port, orig_host, orig_port, encoding=None
    )
    await connect_channel(pair, opening, "the client did not accept the forwarded connection")
    return pair.target
