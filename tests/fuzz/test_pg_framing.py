"""Property tests of the PostgreSQL codec's framing and parsers.

Profiles: `ci` (the default, a few examples per property) and `deep`
(`HYPOTHESIS_PROFILE=deep pytest tests/fuzz`), which runs thousands.
"""

from __future__ import annotations

import itertools
import os
import re
import struct
from collections.abc import Callable
from typing import Any

import pytest
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
    lambda b: m.execute_portal(b, 0, len(b)),
    lambda b: m.bind_texts(b, 0, len(b)),
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


# --- the compiled framing kernel against its Python reference ---------------------------

compiled = pytest.mark.skipif(
    m.SPLIT_COMPILED is None, reason="the framing kernel is not compiled here (no C compiler)"
)


def _split_py(buf: bytes | bytearray, start: int, limit: int) -> Any:
    try:
        return m.split_messages_py(buf, start, limit)
    except m.ProtocolViolation as exc:
        return ("raised", exc.message)


def _split_c(buf: bytes | bytearray, start: int, limit: int) -> Any:
    try:
        return m.split_messages(buf, start, limit)
    except m.ProtocolViolation as exc:
        return ("raised", exc.message)


@compiled
@given(
    frames,
    st.binary(max_size=12),
    st.integers(min_value=0, max_value=40),
    st.sampled_from([m.DEFAULT_MAX_MESSAGE, 4, 50, 200]),
)
def test_compiled_split_agrees_with_python(
    msgs: list[tuple[bytes, bytes]], tail: bytes, start: int, limit: int
) -> None:
    buf = b"".join(m.message(t, p) for t, p in msgs) + tail
    assert _split_c(buf, start, limit) == _split_py(buf, start, limit)
    assert _split_c(bytearray(buf), start, limit) == _split_py(buf, start, limit)


@compiled
@given(st.binary(max_size=300), st.integers(min_value=0, max_value=8))
def test_compiled_split_agrees_on_random_bytes(data: bytes, start: int) -> None:
    assert _split_c(data, start, 100) == _split_py(data, start, 100)


def _bind_both(buf: bytes | bytearray, start: int, end: int, limit: int, texts: bool) -> Any:
    got = []
    for read in (m.bind_texts_py, m.bind_texts):
        try:
            got.append(read(buf, start, end, limit, texts))
        except m.ProtocolViolation as exc:
            got.append(("raised", exc.message))
    return got


@st.composite
def bind_bodies(draw: st.DrawFn) -> bytes:
    """Bind bodies as clients send them, now and then with a field cut short or lying."""
    names = st.text(max_size=6).map(lambda t: t.encode() + b"\x00")
    fmts = draw(st.lists(st.integers(min_value=-1, max_value=3), max_size=4))
    values = draw(
        st.lists(
            st.one_of(
                st.none(),
                st.binary(max_size=40),
                st.text(max_size=30).map(str.encode),
                st.binary(min_size=1, max_size=4).map(lambda b: b"\xe2\x82" + b),  # cut UTF-8
            ),
            max_size=5,
        )
    )
    body = draw(names) + draw(names) + struct.pack("!h", len(fmts))
    body += b"".join(struct.pack("!h", f) for f in fmts) + struct.pack("!h", len(values))
    for v in values:
        body += struct.pack("!i", -1) if v is None else struct.pack("!i", len(v)) + v
    body += draw(st.sampled_from([b"", b"\x00\x00", b"\x00\x01\x00\x01"]))  # result formats
    cut = draw(st.one_of(st.none(), st.integers(min_value=0, max_value=len(body))))
    return body if cut is None else body[:cut]


@compiled
@given(
    bind_bodies(),
    st.binary(max_size=6),
    st.binary(max_size=6),
    st.sampled_from([1024, 0, 1, 3, 8]),
    st.booleans(),
)
def test_compiled_bind_agrees_with_python(
    body: bytes, before: bytes, after: bytes, limit: int, texts: bool
) -> None:
    buf = before + body + after
    py, c = _bind_both(buf, len(before), len(before) + len(body), limit, texts)
    assert c == py
    assert _bind_both(bytearray(buf), len(before), len(before) + len(body), limit, texts)[1] == py


@compiled
@given(st.binary(max_size=200), st.sampled_from([1024, 2]))
def test_compiled_bind_agrees_on_random_bytes(body: bytes, limit: int) -> None:
    py, c = _bind_both(body, 0, len(body), limit, True)
    assert c == py


tags = st.one_of(
    st.sampled_from(["SELECT 1", "SELECT 0", "INSERT 0 12", "BEGIN", "COPY 99", "UPDATE ", ""]),
    st.text(max_size=12),
    st.text(alphabet="0123456789 ", max_size=30),
)
answer_types = st.sampled_from([b"T", b"2", b"D", b"C", b"Z", b"E", b"1", b"n", b"t", b"s"])


@st.composite
def answers(draw: st.DrawFn) -> bytes:
    """Mostly well-formed answers ([T|2] D* C Z), sometimes bent: other types, bad tags."""
    parts = []
    for kinds in ([b"1"], [b"2"], [b"T", b"n"]):
        if draw(st.booleans()):
            parts.append(m.message(draw(st.sampled_from(kinds)), draw(payloads)))
    parts += [m.message(b"D", draw(payloads)) for _ in range(draw(st.integers(0, 4)))]
    tag = draw(tags).encode() + draw(st.sampled_from([b"\x00", b"", b"\x00x", b"\xff\x00"]))
    parts.append(m.message(b"C", tag))
    parts.append(m.message(b"Z", draw(st.sampled_from([b"I", b"T", b"E", b"", b"II"]))))
    for _ in range(draw(st.integers(0, 1))):
        at = draw(st.integers(0, len(parts)))
        parts.insert(at, m.message(draw(answer_types), draw(payloads)))
    data = b"".join(parts)
    cut = draw(st.integers(0, 3))
    return data[: len(data) - cut] if cut < len(data) else data


@compiled
@given(answers(), st.sampled_from([m.DEFAULT_MAX_MESSAGE, 40]))
def test_compiled_answer_shape_agrees_with_python(data: bytes, limit: int) -> None:
    assert m.ANSWER_COMPILED is not None
    got = m.ANSWER_COMPILED(data, limit)
    assert got == m.answer_shape_py(data, limit)
    assert m.ANSWER_COMPILED(bytearray(data), limit) == got


@given(answers())
def test_answer_shape_is_what_the_message_loop_reads(data: bytes) -> None:
    """A shape exactly when the messages are 1? 2? [Tn]? D* C Z with a readable tag."""
    shape = m.answer_shape_py(data)
    try:
        spans, used = m.split_messages_py(data)
    except m.ProtocolViolation:
        assert shape is None
        return
    kinds = b"".join(data[a : a + 1] for a, _ in spans).decode("latin-1")
    usual = used == len(data) and re.fullmatch("1?2?[Tn]?D*CZ", kinds) is not None
    if usual:
        c_off, c_end = spans[-2]
        try:
            m.read_cstring(data, c_off + 5, c_end)
        except m.ProtocolViolation:
            usual = False
        usual = usual and spans[-1][1] - spans[-1][0] == 6
    assert (shape is not None) == usual
    if shape is None:
        return
    heads, ends, c_off, c_end, tag, rows, status = shape
    assert heads.decode() == kinds[: len(heads)] and heads.strip(b"12Tn") == b""
    assert ends == tuple(end for _, end in spans[: len(heads)])
    assert "D" * (len(spans) - len(heads) - 2) == kinds[len(heads) : -2]
    assert (c_off, c_end) == spans[-2]
    assert tag == m.read_cstring(data, c_off + 5, c_end)[0]
    assert rows == m.command_tag_rows(tag)
    assert status == data[-1]
