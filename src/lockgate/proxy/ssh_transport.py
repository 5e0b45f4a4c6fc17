"""Fewer, larger socket writes for asyncssh connections on the relay's hot path.

asyncssh writes every SSH packet to its transport on its own, and sends an empty
`SSH_MSG_IGNORE` packet before each one once encryption is on: relaying one 32 KiB channel
packet costs two `send()` calls on each side. `coalesce_writes` puts a thin layer between an
asyncssh connection and its asyncio transport that joins what one turn of the event loop
writes into a single write at the end of the turn. Order is kept; `close` and `abort`
write out what is pending first, so a disconnect message (and the stderr line before it
saying why) is never dropped.

It reaches one private attribute of asyncssh's connection (`_transport`, set before the
connection's owner hears of it); `tests/unit/proxy/test_ssh_transport.py` fails if an
asyncssh upgrade renames it.
"""

from __future__ import annotations

import asyncio
from typing import Any

# The asyncssh attribute that holds a connection's transport.
_ATTRIBUTE = "_transport"

# Channel windows and packets the gateway offers its peers (asyncssh: 2 MiB and 32 KiB).
# A window as large as scp's 64 outstanding 32 KiB SFTP writes, and room for several of
# them in one packet, halve the packets (and the per-packet Python work) on the way in.
WINDOW = 8 << 20
MAX_PACKET = 128 << 10


class CoalescingTransport:
    """Stands in for an asyncio transport; joins the writes of one loop turn."""

    __slots__ = ("_loop", "_pending", "_real", "_scheduled")

    def __init__(self, real: asyncio.Transport, loop: asyncio.AbstractEventLoop) -> None:
        self._real = real
        self._loop = loop
        self._pending: list[bytes] = []
        self._scheduled = False

    def write(self, data: bytes) -> None:
        self._pending.append(data)
        if not self._scheduled:
            self._scheduled = True
            self._loop.call_soon(self.flush)

    def flush(self) -> None:
        """Write out what is pending, as one write."""
        self._scheduled = False
        pending = self._pending
        if not pending:
            return
        self._pending = []
        self._real.write(pending[0] if len(pending) == 1 else b"".join(pending))

    def close(self) -> None:
        self.flush()
        self._real.close()

    def abort(self) -> None:
        if not self._pending:
            self._real.abort()
            return
        # A disconnect message is pending: write it, and abort one turn later, as asyncssh
        # does itself (uvloop sends queued writes at the end of a turn; abort drops them).
        self.flush()
        self._loop.call_soon(self._real.abort)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._real, name)


def coalesce_writes(conn: object) -> bool:
    """Put a `CoalescingTransport` under an asyncssh connection; False if it has none."""
    real = getattr(conn, _ATTRIBUTE, None)
    # uvloop's transports are not asyncio.Transport subclasses: check what is used.
    if real is None or not all(hasattr(real, m) for m in ("write", "close", "abort")):
        return False
    setattr(conn, _ATTRIBUTE, CoalescingTransport(real, asyncio.get_running_loop()))
    return True
