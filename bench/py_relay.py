#!/usr/bin/env python3
"""A plain Python byte relay (uvloop, asyncio protocols): the floor for any Python proxy.

`bench/pg_throughput --floor` runs pgbench through it beside Lockgate: it forwards what each
read brings with one write and inspects, decides and records nothing, so the gap between it
and Lockgate is the cost of Lockgate's per-statement work, and the gap between it and direct
the cost of a Python event loop and two more sockets. It polls like a gateway's worker
(`lockgate.proxy.busypoll`, the listener's default window) unless told otherwise, so that at
one client the floor and Lockgate differ by Lockgate's work, not by how each one waits.

Usage: py_relay.py PORT UPSTREAM_PORT [BUSY_POLL_US]
"""

from __future__ import annotations

import asyncio
import sys
from typing import cast

import uvloop

from lockgate.config.model import Listener
from lockgate.proxy.busypoll import BusyPoll

# Set in main() when polling: told of every chunk, like a gateway's endpoints.
_poll: BusyPoll | None = None


class _Upstream(asyncio.Protocol):
    def __init__(self, client: asyncio.Transport) -> None:
        self.client = client

    def data_received(self, data: bytes) -> None:
        if _poll is not None:
            _poll.kick()
        self.client.write(data)

    def connection_lost(self, exc: Exception | None) -> None:
        self.client.close()


class _Client(asyncio.Protocol):
    def __init__(self, upstream_port: int) -> None:
        self.upstream_port = upstream_port
        self.early: list[bytes] = []
        self.up: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports are not asyncio.Transport subclasses, but they are transports.
        self.transport = cast(asyncio.Transport, transport)
        self.task = asyncio.ensure_future(self._connect())

    async def _connect(self) -> None:
        loop = asyncio.get_running_loop()
        try:
            up, _ = await loop.create_connection(
                lambda: _Upstream(self.transport), "127.0.0.1", self.upstream_port
            )
        except OSError:
            self.transport.close()
            return
        for data in self.early:
            up.write(data)
        self.early.clear()
        self.up = up

    def data_received(self, data: bytes) -> None:
        if _poll is not None:
            _poll.kick()
        if self.up is None:
            self.early.append(data)
        else:
            self.up.write(data)

    def connection_lost(self, exc: Exception | None) -> None:
        if self.up is not None:
            self.up.close()


async def main(port: int, upstream_port: int, busy_poll_us: int) -> None:
    global _poll
    loop = asyncio.get_running_loop()
    if busy_poll_us:
        _poll = BusyPoll(loop, busy_poll_us)
    server = await loop.create_server(lambda: _Client(upstream_port), "127.0.0.1", port)
    await server.serve_forever()


if __name__ == "__main__":
    window = int(sys.argv[3]) if len(sys.argv) > 3 else Listener().busy_poll_us
    uvloop.run(main(int(sys.argv[1]), int(sys.argv[2]), window))
