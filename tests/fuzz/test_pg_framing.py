"""Property tests of the PostgreSQL codec's framing and parsers.

Profiles: `ci` (the default, a few examples per property) and `deep`
(`HYPOTHESIS_PROFILE=deep pytest tests/fuzz`), which runs thousands.
"""

from __future__ import annotations

import itertools
import os
import struct
from collections.abc import Callable
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from lockgate.protocols.postgres import messages as m

settings.register_profile(
    "ci", max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)
settings.register_profile(
    "deep", max_examples=5000, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))

message_types = st.binary(min_size=1, max_size=1)
payloads = st.binary(max_size=300)
frames = st.lists(st.tuples(message_types, payloads), max_size=20)


def _reassemble(stream: bytes, cuts: list[int]) -> list[bytes]:
    """Feed `stream` in chunks cut at `cuts`, as the relay does; the whole messages seen."""
    seen: list[bytes] = []
    pending = bytearray()
    bounds = sorted({0, len(stream), *(c % (len(stream) + 1) for c in cuts)})
    for a, b in itertools.pairwise(bounds):
        pending += stream[a:b]
        spans, consumed = m.split_messages(pending)
        seen += [bytes(pending[x:y]) for x, y in spans]
        assert consumed == (spans[-1][1] if spans else 0)
        del pending[:consumed]
    assert not pending, "bytes left over after the last whole message"
    return seen


@given(frames, st.lists(st.integers(min_value=0), max_size=30))
def test_split_messages_reassembles_exactly_the_messages(
    msgs: list[tuple[bytes, bytes]], cuts: list[int]
) -> None:
    framed = [m.message(t, p) for t, p in msgs]
    assert _reassemble(b"".join(framed), cuts) == framed


@given(frames, st.lists(st.integers(min_value=0), max_size=30))
def test_read_message_agrees_with_split_messages(
    msgs: list[tuple[bytes, bytes]], cuts: list[int]
) -> None:
    stream = b"".join(m.message(t, p) for t, p in msgs)
    got: list[tuple[bytes, bytes]] = []
    buf = bytearray()
    bounds = sorted({0, len(stream), *(c % (len(stream) + 1) for c in cuts)})
    for a, b in itertools.pairwise(bounds):
        buf += stream[a:b]
        while (one := m.read_message(buf)) is not None:
            type_, payload, used = one
            got.append((type_, payload))
            del buf[:used]
    assert got == msgs
    assert not buf


@given(frames, st.binary(min_size=1, max_size=4))
def test_split_messages_stops_at_the_first_impossible_length(
    msgs: list[tuple[bytes, bytes]], tail: bytes
) -> None:
    good = b"".join(m.message(t, p) for t, p in msgs)
    bad = b"Q" + struct.pack("!i", 3) + tail
    try:
        m.split_messages(good + bad)
    except m.ProtocolViolation as exc:
        assert exc.code == "08P01"
    else:
        raise AssertionError("a length of 3 was accepted")


names = st.text(
    alphabet=st.characters(exclude_characters="\x00", exclude_categories=["Cs"]),
    min_size=1,
    max_size=20,
)
values = st.text(
    alphabet=st.characters(exclude_characters="\x00", exclude_categories=["Cs"]),
    max_size=40,
)


@given(st.dictionaries(names, values, max_size=8), st.integers(min_value=1, max_value=40))
def test_startup_messages_round_trip_in_any_chunking(params: dict[str, str], step: int) -> None:
    data = m.startup_message(params)
    if len(data) > m.MAX_STARTUP_LENGTH:
        return
    buf = bytearray()
    result = None
    for i in range(0, len(data), step):
        assert result is None
        buf += data[i : i + step]
        result = m.read_startup_packet(buf)
    assert result == (m.StartupMessage(m.PROTOCOL_3_0, params), len(data))


PARSERS: list[Callable[[bytes], Any]] = [
    m.read_startup_packet,
    m.read_message,
    m.split_messages,
    m.parse_error_fields,
    m.parse_query,
    m.parse_parse,
    m.parse_bind,
    m.parse_execute,
    m.parse_close_or_describe,
    m.auth_request,
    m.parse_backend_key_data,
]


@given(st.sampled_from(PARSERS), st.binary(max_size=200))
def test_random_bytes_raise_nothing_but_protocol_violation(
    parser: Callable[[bytes], Any], data: bytes
) -> None:
    try:
        parser(data)
    except m.ProtocolViolation as exc:
        assert exc.code in ("08P01", "0A000")


@given(st.binary(max_size=64), st.binary(max_size=200))
def test_startup_packets_with_valid_lengths_and_random_bodies(code: bytes, body: bytes) -> None:
    # Steer the fuzzer past the length check, where most random inputs would stop.
    code = (code + b"\x00\x03\x00\x00")[:4]
    data = struct.pack("!i", 8 + len(body)) + code + body
    try:
        got = m.read_startup_packet(data)
    except m.ProtocolViolation as exc:
        assert exc.code in ("08P01", "0A000")
    else:
        assert got is not None and got[1] == len(data)


@given(st.binary(max_size=200))
def test_bind_bodies_decode_or_raise_protocol_violation(body: bytes) -> None:
    payload = b"portal\x00stmt\x00" + body
    try:
        bind = m.parse_bind(payload)
    except m.ProtocolViolation:
        return
    texts = m.bind_param_texts(bind)
    assert len(texts) == len(bind.params)
    assert [t is None for t in texts] == [p is None for p in bind.params]
