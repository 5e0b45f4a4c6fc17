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

Each pass yields the processor (`sched_yield`): a process waiting to run on the polling core
(a database backend the gateway just woke, the client) runs at once instead of waiting for
the poller's time slice to end.

Measured with bench/pg_throughput (pgbench -S; medians of 3 rounds; each comparison in one
run, the other version served beside it): at one client the latency added per round trip
fell from +137 to +72 µs (simple) and from +202 to +82 µs (prepared) with polling that
did not yield; at 16 clients that version cost 3-7% of the TPS. Yielding on every pass
won it back and more (16 clients, simple: 9,080 against 7,335 TPS, 111 against 138 µs of
gateway CPU per transaction; the loop sleeps and wakes less) for 15-30 µs more per round
trip at one client than not yielding. Yielding only on passes after new traffic measured
the same as yielding on all. The price is CPU while traffic flows: a worker whose sessions
exchange a chunk at least once per window keeps one core busy, though it gives way to
anything else that wants to run there; an idle gateway sleeps as before. The window is the
listener's `busy_poll_us`; 0 turns this off.
"""

from __future__ import annotations

import asyncio
import os
from time import perf_counter

_yield = os.sched_yield


def for_listener(window_us: int) -> BusyPoll | None:
    """A poller on the running loop for a listener's `busy_poll_us`; None when it is 0."""
    return BusyPoll(asyncio.get_running_loop(), window_us) if window_us else None


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
            _yield()
            self._loop.call_soon(self._poll)
        else:
            self._on = False
