"""Busy polling keeps the loop polling for its window after each chunk, then lets it sleep."""

from __future__ import annotations

import asyncio

import pytest
from pydantic import ValidationError

from lockgate.config.model import Listener
from lockgate.config.ssh import SshListener
from lockgate.proxy import busypoll
from lockgate.proxy.busypoll import BusyPoll
from lockgate.proxy.endpoint import Endpoint


class _Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> _Clock:
    c = _Clock()
    monkeypatch.setattr(busypoll, "perf_counter", c)
    return c


async def _turns(n: int) -> None:
    for _ in range(n):
        await asyncio.sleep(0)


async def test_polls_until_the_window_ends_then_stops(clock: _Clock) -> None:
    poll = BusyPoll(asyncio.get_running_loop(), 200)
    poll.kick()
    await _turns(5)
    busy = poll.polls
    assert busy >= 4  # a pass on every turn of the loop while inside the window
    clock.now += 150e-6
    await _turns(3)
    assert poll.polls > busy  # still inside the window
    clock.now += 60e-6  # 210 µs after the kick: past it
    await _turns(3)
    stopped = poll.polls
    await _turns(5)
    assert poll.polls == stopped  # nothing queued any more: the loop may sleep


async def test_each_kick_extends_the_window_and_one_pass_runs_at_a_time(clock: _Clock) -> None:
    poll = BusyPoll(asyncio.get_running_loop(), 200)
    poll.kick()
    clock.now += 150e-6
    poll.kick()  # a second chunk: 200 µs from now, not from the first
    poll.kick()  # and kicking again queues no second pass
    clock.now += 150e-6
    before = poll.polls
    await _turns(4)
    assert poll.polls - before == 4  # one pass per turn, not two
    clock.now += 60e-6
    await _turns(2)
    stopped = poll.polls
    await _turns(3)
    assert poll.polls == stopped
    poll.kick()  # traffic again after a quiet spell: polling resumes
    await _turns(2)
    assert poll.polls > stopped


def test_an_endpoint_kicks_its_poll_on_every_chunk_it_receives() -> None:
    kicks: list[int] = []

    class _Counting:
        def kick(self) -> None:
            kicks.append(1)

    ep = Endpoint()
    got: list[bytes] = []
    ep.set_sink(got.append)
    ep.data_received(b"a")  # no poll set: nothing to tell
    ep.poll = _Counting()  # type: ignore[assignment]
    ep.data_received(b"b")
    ep.data_received(b"c")
    assert got == [b"a", b"b", b"c"] and len(kicks) == 2


@pytest.mark.parametrize("kind", [Listener, SshListener])
def test_the_window_is_a_listener_setting_bounded_and_off_at_zero(kind: type[Listener]) -> None:
    extra = {"protocol": "ssh"} if kind is SshListener else {}
    assert kind(**extra).busy_poll_us == 200
    assert kind(busy_poll_us=0, **extra).busy_poll_us == 0
    for bad in (-1, 10_001):
        with pytest.raises(ValidationError):
            kind(busy_poll_us=bad, **extra)
