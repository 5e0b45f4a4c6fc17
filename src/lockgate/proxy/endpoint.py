"""One side of a relayed connection as an asyncio Protocol.

Theory of operation
-------------------
An `Endpoint` starts in *buffered* mode: received bytes collect in `buffer` and coroutines
await them with `wait_data()` (used while the gateway runs startup and authentication).
The relay then switches it to *sink* mode with `set_sink(callback)`: every chunk goes
straight to the callback, so a chunk the kernel handed over is handled (and usually
forwarded) in one piece, with one `write` on the other side.

Flow control pairs two endpoints: when one side's transport buffer fills up
(`pause_writing`), the peer stops reading until it drains, so memory stays bounded however
large a result is.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import TYPE_CHECKING, cast

if TYPE_CHECKING:
    from lockgate.proxy.busypoll import BusyPoll


class Endpoint(asyncio.Protocol):
    """A connection whose bytes are either buffered for a coroutine or passed to a sink."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.buffer = bytearray()
        self.peer: Endpoint | None = None
        self.closed = False
        self.bytes_received = 0
        self._sink: Callable[[bytes], None] | None = None
        self._waiter: asyncio.Future[None] | None = None
        self._can_write = asyncio.Event()
        self._can_write.set()
        self._reading_paused = 0
        self.on_lost: Callable[[Exception | None], None] | None = None
        # Set while relaying on a listener with busy polling: told of every chunk.
        self.poll: BusyPoll | None = None

    # -- asyncio.Protocol -------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        self.bytes_received += len(data)
        poll = self.poll
        if poll is not None:
            poll.kick()
        sink = self._sink
        if sink is not None:
            sink(data)
            return
        self.buffer += data
        self._wake()

    def eof_received(self) -> bool | None:
        return None

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self._can_write.set()
        self._wake()
        if self.on_lost is not None:
            self.on_lost(exc)

    def pause_writing(self) -> None:
        self._can_write.clear()
        if self.peer is not None:
            self.peer.pause_reading()

    def resume_writing(self) -> None:
        self._can_write.set()
        if self.peer is not None:
            self.peer.resume_reading()

    # -- used by handlers ---------------------------------------------------------------
    def _wake(self) -> None:
        w = self._waiter
        if w is not None and not w.done():
            w.set_result(None)

    async def wait_data(self) -> None:
        """Wait until more bytes arrive (or the connection closes)."""
        if self.closed:
            raise ConnectionResetError("connection closed")
        self._waiter = asyncio.get_running_loop().create_future()
        try:
            await self._waiter
        finally:
            self._waiter = None
        if self.closed and not self.buffer:
            raise ConnectionResetError("connection closed")

    def set_sink(self, sink: Callable[[bytes], None] | None) -> None:
        """Hand every future chunk to `sink`; bytes already buffered go first."""
        self._sink = sink
        if sink is not None and self.buffer:
            pending = bytes(self.buffer)
            self.buffer.clear()
            sink(pending)

    def write(self, data: bytes | bytearray | memoryview) -> None:
        t = self.transport
        if t is not None and not self.closed:
            t.write(data)

    async def drain(self) -> None:
        await self._can_write.wait()

    def pause_reading(self) -> None:
        self._reading_paused += 1
        if self._reading_paused == 1 and self.transport is not None and not self.closed:
            self.transport.pause_reading()

    def resume_reading(self) -> None:
        if self._reading_paused == 0:
            return
        self._reading_paused -= 1
        if self._reading_paused == 0 and self.transport is not None and not self.closed:
            self.transport.resume_reading()

    def close(self) -> None:
        t = self.transport
        if t is not None and not t.is_closing():
            t.close()

    def abort(self) -> None:
        t = self.transport
        if t is not None:
            t.abort()

    def peer_address(self) -> str:
        t = self.transport
        if t is None:
            return ""
        peer = t.get_extra_info("peername")
        if isinstance(peer, tuple) and len(peer) >= 2:
            host, port = peer[0], peer[1]
            return f"[{host}]:{port}" if ":" in str(host) else f"{host}:{port}"
        return str(peer or "local")

    async def start_tls(
        self, context: object, *, server_side: bool, server_hostname: str | None = None
    ) -> None:
        """Upgrade this connection to TLS in place (after SSLRequest was answered)."""
        import ssl

        assert isinstance(context, ssl.SSLContext)
        loop = asyncio.get_running_loop()
        assert self.transport is not None
        if self.buffer:
            raise ConnectionError("peer sent data before the TLS handshake")
        new = await loop.start_tls(
            self.transport,
            self,
            context,
            server_side=server_side,
            server_hostname=server_hostname,
            ssl_handshake_timeout=15.0,
        )
        if new is None:
            raise ConnectionResetError("connection closed during TLS handshake")
        self.transport = new
