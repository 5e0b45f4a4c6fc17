"""Adaptive busy polling: for a moment after traffic, the event loop polls instead of sleeping.

Theory of operation
-------------------
At low concurrency most of a round trip through a relay is spent waking processes up: the
client's bytes wake the gateway, the gateway's write wakes the server, the answer wakes the
gateway again, its write wakes the client. On a virtual machine waking an idle vCPU costs
tens of microseconds (an interrupt sent to it, its exit from halt). Yet after a chunk
arrives, the next one (the server's answer, the client's next request) usually follows
within microseconds. So for a short window after each chunk an endpoint receives, the
loop keeps a callback queued that queues itself again: with a callback ready, the loop
polls its sockets with a zero timeout instead of sleeping in `epoll_wait`, and the next
chunk is read the moment it arrives, with no wake-up on the gateway's side (and its
sender's write is cheaper too: nobody sleeps on the socket).

Measured with bench/pg_throughput (pgbench -S, one client, the code before it served in the
same run): the latency the gateway adds per round trip fell from +142 to +43 µs. The price
is CPU while traffic flows: a worker whose sessions exchange a chunk at least once per
window keeps one core busy; an idle gateway sleeps as before, and one under steady load
seldom sleeps anyway (at 16 clients the CPU per transaction and the TPS were the same with
and without it). A process woken on the polling core (the database server, the client)
preempts the poller as it would any busy task; yielding the processor on every pass
(`sched_yield`) was measured too, and only made the round trip slower. The window is the
listener's `busy_poll_us`; 0 turns this off.
"""

from __future__ import annotations

import asyncio
from time import perf_counter


class BusyPoll:
    """Keeps one event loop polling for `window_us` microseconds after each `kick`."""

    __slots__ = ("_loop", "_on", "_until", "_window", "polls")

    def __init__(self, loop: asyncio.AbstractEventLoop, window_us: int) -> None:
        self._loop = loop
        self._window = window_us / 1e6
        self._until = 0.0
        self._on = False
        # Passes made, for tests and diagnostics.
        self.polls = 0

    def kick(self) -> None:
        """Traffic: poll until `window_us` from now (a chunk arrived)."""
        self._until = perf_counter() + self._window
        if not self._on:
            self._on = True
            self._loop.call_soon(self._poll)

    def _poll(self) -> None:
        self.polls += 1
        if perf_counter() < self._until:
            self._loop.call_soon(self._poll)
        else:
            self._on = False
