"""The sans-IO PostgreSQL codec against byte fixtures written out by hand from the v3 spec.

Readers are fed the whole buffer, byte by byte, and with trailing data; malformed input must
raise `ProtocolViolation` with the SQLSTATE the gateway reports to the client.
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from typing import Any

import pytest

from lockgate.protocols.postgres import messages as m
from lockgate.protocols.postgres import sqlstate

# ------------------------------------------------------------------------ byte fixtures

SSL_REQUEST = b"\x00\x00\x00\x08\x04\xd2\x16\x2f"
GSSENC_REQUEST = b"\x00\x00\x00\x08\x04\xd2\x16\x30"
CANCEL_REQUEST = b"\x00\x00\x00\x10\x04\xd2\x16\x2e\x00\x00\x30\x39\x7f\xff\xff\xfe"
STARTUP = (
    b"\x00\x00\x00\x22"  # length 34
    b"\x00\x03\x00\x00"  # protocol 3.0
    b"user\x00alice\x00database\x00itdb\x00\x00"
)
TRAILING = b"Q\x00\x00\x00\x0dselect 1\x00"


def _startup(code: int, body: bytes = b"\x00") -> bytes:
    return struct.pack("!ii", len(body) + 8, code) + body


# ------------------------------------------------------------------------ startup packets


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        (SSL_REQUEST, m.SSLRequest()),
        (GSSENC_REQUEST, m.GSSENCRequest()),
        (CANCEL_REQUEST, m.CancelRequest(12345, 0x7FFFFFFE)),
        (STARTUP, m.StartupMessage(196608, {"user": "alice", "database": "itdb"})),
    ],
    ids=["ssl", "gssenc", "cancel", "startup"],
)
def test_read_startup_packet_whole_bytewise_and_with_trailing_data(
    data: bytes, expected: m.StartupPacket
) -> None:
    assert m.read_startup_packet(data) == (expected, len(data))
    for i in range(len(data)):
        assert m.read_startup_packet(data[:i]) is None, f"complete after {i} bytes"
    assert m.read_startup_packet(bytearray(data + TRAILING)) == (expected, len(data))


def test_startup_builders_match_the_fixtures() -> None:
    assert m.ssl_request() == SSL_REQUEST
    assert m.cancel_request(12345, 0x7FFFFFFE) == CANCEL_REQUEST
    assert m.startup_message({"user": "alice", "database": "itdb"}) == STARTUP
    assert m.startup_message({}) == b"\x00\x00\x00\x09\x00\x03\x00\x00\x00"


def test_startup_builder_round_trips_unicode_parameters() -> None:
    params = {"user": "zoë", "application_name": "日本語", "options": ""}
    packet, used = m.read_startup_packet(m.startup_message(params)) or (None, 0)
    assert packet == m.StartupMessage(m.PROTOCOL_3_0, params)
    assert used == len(m.startup_message(params))


def test_startup_minor_versions_of_protocol_3_are_accepted() -> None:
    got = m.read_startup_packet(_startup(0x00030002, b"user\x00a\x00\x00"))
    assert got is not None
    assert got[0] == m.StartupMessage(0x00030002, {"user": "a"})


@pytest.mark.parametrize(
    ("data", "code", "words"),
    [
        (b"\x7f\xff\xff\xff", sqlstate.PROTOCOL_VIOLATION, "length 2147483647"),
        (b"\xff\xff\xff\xff", sqlstate.PROTOCOL_VIOLATION, "length -1"),
        (b"\x00\x00\x00\x00", sqlstate.PROTOCOL_VIOLATION, "length 0"),
        (b"\x00\x00\x00\x07", sqlstate.PROTOCOL_VIOLATION, "length 7"),
        (struct.pack("!i", m.MAX_STARTUP_LENGTH + 1), sqlstate.PROTOCOL_VIOLATION, "length"),
        (_startup(0x00020000), sqlstate.FEATURE_NOT_SUPPORTED, "protocol 2.0"),
        (_startup(0x00040000), sqlstate.FEATURE_NOT_SUPPORTED, "protocol 4.0"),
        (_startup(m.SSL_REQUEST_CODE, b"\x00\x00\x00\x00"), sqlstate.FEATURE_NOT_SUPPORTED, ""),
        (_startup(m.CANCEL_REQUEST_CODE, b"\x00" * 4), sqlstate.FEATURE_NOT_SUPPORTED, ""),
        (_startup(m.PROTOCOL_3_0, b"user\x00alice"), sqlstate.PROTOCOL_VIOLATION, "null"),
        (_startup(m.PROTOCOL_3_0, b"user\x00\x00\x00x\x00\x00"), sqlstate.PROTOCOL_VIOLATION, ""),
        (_startup(m.PROTOCOL_3_0, b"user\x00alice\x00"), sqlstate.PROTOCOL_VIOLATION, "terminat"),
        (
            _startup(m.PROTOCOL_3_0, b"user\x00a\x00db\x00\x00"),
            sqlstate.PROTOCOL_VIOLATION,
            "without a value",
        ),
        (
            _startup(m.PROTOCOL_3_0, b"user\x00\xff\xfe\x00\x00"),
            sqlstate.PROTOCOL_VIOLATION,
            "UTF-8",
        ),
        (b"GET / HTTP/1.1\r\n\r\n", sqlstate.PROTOCOL_VIOLATION, "length"),
    ],
    ids=[
        "oversized",
        "negative",
        "zero",
        "short",
        "just-over-limit",
        "protocol-2",
        "protocol-4",
        "ssl-code-wrong-length",
        "cancel-code-wrong-length",
        "unterminated",
        "empty-name-then-more",
        "no-final-terminator",
        "name-without-value",
        "bad-utf8",
        "http",
    ],
)
def test_malformed_startup_packets_are_protocol_violations(
    data: bytes, code: str, words: str
) -> None:
    with pytest.raises(m.ProtocolViolation) as info:
        m.read_startup_packet(data)
    assert info.value.code == code
    assert words in info.value.message


def test_oversized_startup_length_is_refused_before_the_body_arrives() -> None:
    # The gateway must not wait for (or buffer) 2 GB: four bytes are enough to refuse.
    with pytest.raises(m.ProtocolViolation):
        m.read_startup_packet(b"\x7f\xff\xff\xff\x00")


# ------------------------------------------------------------------------ framing


MESSAGES = [
    b"Q\x00\x00\x00\x0dselect 1\x00",
    b"S\x00\x00\x00\x04",
    b"X\x00\x00\x00\x04",
    b"p\x00\x00\x00\x07pw\x00",
]


@pytest.mark.parametrize("data", MESSAGES)
def test_read_message_whole_bytewise_and_with_trailing_data(data: bytes) -> None:
    expected = (data[:1], data[5:], len(data))
    assert m.read_message(data) == expected
    for i in range(len(data)):
        assert m.read_message(data[:i]) is None
    assert m.read_message(bytearray(data + TRAILING)) == expected
    assert m.read_message(memoryview(data + TRAILING)) == expected


def test_message_builder_frames_payloads() -> None:
    assert m.message(b"Q", b"select 1\x00") == MESSAGES[0]
    assert m.message(b"S") == m.SYNC == MESSAGES[1]
    assert m.TERMINATE == MESSAGES[2]
    assert m.password_message(b"pw") == MESSAGES[3]
    assert m.query("select 1") == MESSAGES[0]
    assert m.query("sélect") == b"Q\x00\x00\x00\x0cs\xc3\xa9lect\x00"


@pytest.mark.parametrize(
    "header",
    [b"Q\x00\x00\x00\x03", b"Q\x00\x00\x00\x00", b"Q\xff\xff\xff\xff", b"Q\x80\x00\x00\x00"],
    ids=["three", "zero", "minus-one", "min-int"],
)
def test_read_message_rejects_impossible_lengths(header: bytes) -> None:
    with pytest.raises(m.ProtocolViolation) as info:
        m.read_message(header)
    assert info.value.code == sqlstate.PROTOCOL_VIOLATION
    assert "'Q'" in info.value.message
    with pytest.raises(m.ProtocolViolation):
        m.split_messages(header + b"rest")


def test_read_message_enforces_the_caller_limit() -> None:
    data = m.message(b"p", b"x" * 100)
    assert m.read_message(data, max_length=104) is not None
    with pytest.raises(m.ProtocolViolation) as info:
        m.read_message(data, max_length=103)
    assert "length 104" in info.value.message
    with pytest.raises(m.ProtocolViolation):
        m.split_messages(data, max_length=103)
    # The limit is checked from the header alone: a 1 GB claim is refused with 5 bytes.
    with pytest.raises(m.ProtocolViolation):
        m.read_message(b"Q\x7f\xff\xff\xff", max_length=65536)


def test_split_messages_finds_whole_messages_and_the_partial_tail() -> None:
    stream = b"".join(MESSAGES)
    spans, consumed = m.split_messages(stream)
    assert [stream[a:b] for a, b in spans] == MESSAGES
    assert consumed == len(stream)
    for cut in range(len(stream) + 1):
        spans, consumed = m.split_messages(stream[:cut])
        assert all(b <= cut for _, b in spans)
        assert consumed == (spans[-1][1] if spans else 0)
        rest_spans, rest_end = m.split_messages(stream, start=consumed)
        assert [stream[a:b] for a, b in spans + rest_spans] == MESSAGES
        assert rest_end == len(stream)


def test_split_messages_from_an_offset_and_in_a_bytearray() -> None:
    buf = bytearray(b"junk" + MESSAGES[0] + MESSAGES[1][:3])
    spans, consumed = m.split_messages(buf, start=4)
    assert spans == [(4, 4 + len(MESSAGES[0]))]
    assert consumed == 4 + len(MESSAGES[0])


# ------------------------------------------------------------------------ backend builders


def test_backend_builders_match_the_fixtures() -> None:
    assert m.AUTH_OK == b"R\x00\x00\x00\x08\x00\x00\x00\x00"
    assert m.AUTH_CLEARTEXT == b"R\x00\x00\x00\x08\x00\x00\x00\x03"
    assert m.ready_for_query() == b"Z\x00\x00\x00\x05I"
    assert m.ready_for_query(b"T") == b"Z\x00\x00\x00\x05T"
    assert m.parameter_status("a", "b") == b"S\x00\x00\x00\x08a\x00b\x00"
    assert m.backend_key_data(1, 2) == b"K\x00\x00\x00\x0c\x00\x00\x00\x01\x00\x00\x00\x02"


def test_error_response_fixture_and_round_trip() -> None:
    data = m.error_response("28P01", "bad", severity="FATAL")
    assert data == b"E\x00\x00\x00\x1fSFATAL\x00VFATAL\x00C28P01\x00Mbad\x00\x00"
    full = m.error_response("42501", "no", detail="why", hint="what next")
    type_, payload, used = m.read_message(full) or (b"", b"", 0)
    assert (type_, used) == (b"E", len(full))
    assert m.parse_error_fields(payload) == {
        "S": "ERROR",
        "V": "ERROR",
        "C": "42501",
        "M": "no",
        "D": "why",
        "H": "what next",
    }


def test_error_response_neutralises_nulls_and_keeps_unicode() -> None:
    data = m.error_response("XX000", "a\x00b ✓")
    fields = m.parse_error_fields(data[5:])
    assert fields["M"] == "a b ✓"


def test_notice_response_round_trip() -> None:
    data = m.notice_response("careful", hint="h")
    assert data[:1] == b"N"
    fields = m.parse_error_fields(data[5:])
    assert fields == {"S": "NOTICE", "V": "NOTICE", "C": "00000", "M": "careful", "H": "h"}


def test_parse_error_fields_tolerates_a_missing_final_terminator_but_not_a_cut_field() -> None:
    assert m.parse_error_fields(b"SERROR\x00") == {"S": "ERROR"}
    assert m.parse_error_fields(b"") == {}
    assert m.parse_error_fields(b"\x00ignored") == {}
    with pytest.raises(m.ProtocolViolation) as info:
        m.parse_error_fields(b"SERROR\x00Mcut")
    assert info.value.code == sqlstate.PROTOCOL_VIOLATION


# ------------------------------------------------------------------------ frontend builders


def test_sasl_builders_match_the_fixtures() -> None:
    assert m.sasl_initial_response("SCRAM-SHA-256", b"n,,") == (
        b"p\x00\x00\x00\x19SCRAM-SHA-256\x00\x00\x00\x00\x03n,,"
    )
    assert m.sasl_response(b"xy") == b"p\x00\x00\x00\x06xy"


# ------------------------------------------------------------------------ parsers


def test_read_cstring_and_parse_query() -> None:
    assert m.read_cstring(b"ab\x00cd\x00", 0) == ("ab", 3)
    assert m.read_cstring(b"ab\x00cd\x00", 3) == ("cd", 6)
    assert m.read_cstring(memoryview(b"\x00"), 0) == ("", 1)
    # A body read in place in a larger buffer: the null must come before `end`.
    assert m.read_cstring(bytearray(b"Qab\x00Qcd\x00"), 1, 4) == ("ab", 4)
    with pytest.raises(m.ProtocolViolation):
        m.read_cstring(b"Qab" + b"Qcd\x00", 1, 3)
    assert m.parse_query("select 'é'\x00".encode()) == "select 'é'"
    with pytest.raises(m.ProtocolViolation):
        m.parse_query(b"select 1")
    with pytest.raises(m.ProtocolViolation) as info:
        m.parse_query(b"select \xff\x00")
    assert "UTF-8" in info.value.message


PARSE = b"s1\x00select $1, $2\x00\x00\x02\x00\x00\x00\x17\xff\xff\xff\xff"


def test_parse_parse() -> None:
    assert m.parse_parse(PARSE) == m.Parse("s1", "select $1, $2", (23, 0xFFFFFFFF))
    assert m.parse_parse(b"\x00select 1\x00\x00\x00") == m.Parse("", "select 1", ())
    # Trailing bytes after the declared types are ignored, like PostgreSQL's own reader.
    assert m.parse_parse(PARSE + b"zz").param_types == (23, 0xFFFFFFFF)


@pytest.mark.parametrize(
    "payload",
    [
        b"s1\x00select 1\x00",  # no count
        b"s1\x00select 1\x00\x00",  # half a count
        b"s1\x00select 1\x00\x00\x02\x00\x00\x00\x17",  # two declared, one present
        b"s1\x00select 1\x00\xff\xff",  # negative count
        b"s1\x00select 1",  # unterminated query
        b"s1",  # unterminated name
    ],
)
def test_parse_parse_malformed(payload: bytes) -> None:
    with pytest.raises(m.ProtocolViolation) as info:
        m.parse_parse(payload)
    assert info.value.code == sqlstate.PROTOCOL_VIOLATION


BIND_MIXED = (
    b"p1\x00s1\x00"
    b"\x00\x03\x00\x00\x00\x01\x00\x00"  # formats: text, binary, text
    b"\x00\x03"  # three params
    b"\x00\x00\x00\x02hi"  # 'hi'
    b"\x00\x00\x00\x04\x00\x00\x00\x2a"  # int4 42, binary
    b"\xff\xff\xff\xff"  # NULL
    b"\x00\x00"  # result formats
)


def test_parse_bind_text_binary_and_null() -> None:
    bind = m.parse_bind(BIND_MIXED)
    assert bind == m.Bind("p1", "s1", (0, 1, 0), (b"hi", b"\x00\x00\x00\x2a", None))
    assert m.bind_param_texts(bind) == ("hi", "\\x0000002a", None)


def test_parse_bind_without_formats_or_params() -> None:
    bind = m.parse_bind(b"\x00\x00\x00\x00\x00\x00\x00\x00")
    assert bind == m.Bind("", "", (), ())
    assert m.bind_param_texts(bind) == ()


def test_bind_param_texts_one_format_applies_to_all_and_long_values_are_cut() -> None:
    binary_for_all = m.Bind("", "", (1,), (b"\x01", b"\x02\x03"))
    assert m.bind_param_texts(binary_for_all) == ("\\x01", "\\x0203")
    text_default = m.Bind("", "", (), (b"a", "é".encode()))
    assert m.bind_param_texts(text_default) == ("a", "é")
    cut = m.bind_param_texts(m.Bind("", "", (), (b"x" * 10,)), limit=4)
    assert cut == ("xxxx…",)
    assert m.bind_param_texts(m.Bind("", "", (), (b"\xff",))) == ("\ufffd",)


def test_bind_round_trips_an_empty_string_distinct_from_null() -> None:
    payload = b"\x00\x00\x00\x00\x00\x02\x00\x00\x00\x00\xff\xff\xff\xff\x00\x00"
    assert m.parse_bind(payload).params == (b"", None)


@pytest.mark.parametrize(
    "payload",
    [
        b"p1\x00s1\x00",  # no format count
        b"p1\x00s1\x00\x00\x02\x00\x00",  # two formats, one present
        b"p1\x00s1\x00\xff\xff",  # negative format count
        b"p1\x00s1\x00\x00\x00\xff\xfe",  # negative parameter count
        b"p1\x00s1\x00\x00\x00\x00\x01",  # one parameter, no length
        b"p1\x00s1\x00\x00\x00\x00\x01\x00\x00\x00\x05abc",  # length past the end
        b"p1\x00s1\x00\x00\x00\x00\x01\xff\xff\xff\xfe",  # length -2
        b"p1\x00s1",  # unterminated statement name
    ],
)
def test_parse_bind_malformed(payload: bytes) -> None:
    with pytest.raises(m.ProtocolViolation) as info:
        m.parse_bind(payload)
    assert info.value.code == sqlstate.PROTOCOL_VIOLATION


def _execute_portal(payload: bytes) -> str:
    return m.execute_portal(payload, 0, len(payload))


def test_execute_portal() -> None:
    assert _execute_portal(b"p1\x00\x00\x00\x00\x00") == "p1"
    assert _execute_portal(b"\x00\x00\x00\x00\x64") == ""
    # Read in place: the body's bounds, not the buffer's, decide.
    assert m.execute_portal(b"E....p2\x00\x00\x00\x00\x00S", 5, 12) == "p2"
    for bad in (b"p1\x00\x00\x00", b"p1", b""):
        with pytest.raises(m.ProtocolViolation):
            _execute_portal(bad)
    with pytest.raises(m.ProtocolViolation):  # the terminator lies past the body
        m.execute_portal(b"p1\x00\x00\x00\x00\x00", 0, 2)


def test_parse_close_or_describe() -> None:
    assert m.parse_close_or_describe(b"Ss1\x00") == (b"S", "s1")
    assert m.parse_close_or_describe(b"P\x00") == (b"P", "")
    for bad in (b"", b"Xs1\x00", b"Ss1"):
        with pytest.raises(m.ProtocolViolation) as info:
            m.parse_close_or_describe(bad)
        assert info.value.code == sqlstate.PROTOCOL_VIOLATION


@pytest.mark.parametrize(
    ("tag", "rows"),
    [
        ("SELECT 5", 5),
        ("INSERT 0 3", 3),
        ("UPDATE 0", 0),
        ("DELETE 12", 12),
        ("COPY 10", 10),
        ("MERGE 2", 2),
        ("FETCH 7", 7),
        ("MOVE 1", 1),
        ("CREATE TABLE", None),
        ("BEGIN", None),
        ("", None),
        ("SELECT ²", None),  # a digit to str.isdigit, not to int()
    ],
)
def test_command_tag_rows(tag: str, rows: int | None) -> None:
    assert m.command_tag_rows(tag) == rows


def test_auth_request_and_backend_key_data() -> None:
    assert m.auth_request(b"\x00\x00\x00\x00") == (0, b"")
    assert m.auth_request(b"\x00\x00\x00\x05salt") == (5, b"salt")
    assert m.auth_request(b"\x00\x00\x00\x0aSCRAM-SHA-256\x00\x00") == (
        10,
        b"SCRAM-SHA-256\x00\x00",
    )
    with pytest.raises(m.ProtocolViolation):
        m.auth_request(b"\x00\x00\x00")
    assert m.parse_backend_key_data(b"\x00\x00\x00\x01\xff\xff\xff\xff") == (1, -1)
    for bad in (b"\x00" * 7, b"\x00" * 9):
        with pytest.raises(m.ProtocolViolation):
            m.parse_backend_key_data(bad)


# ------------------------------------------------------------------------ violations


PARSERS: list[tuple[str, Callable[[bytes], Any]]] = [
    ("startup", m.read_startup_packet),
    ("message", m.read_message),
    ("split", m.split_messages),
    ("error-fields", m.parse_error_fields),
    ("query", m.parse_query),
    ("parse", m.parse_parse),
    ("bind", m.parse_bind),
    ("execute", _execute_portal),
    ("bind-texts", lambda b: m.bind_texts(b, 0, len(b))),
    ("close", m.parse_close_or_describe),
    ("auth", m.auth_request),
    ("key-data", m.parse_backend_key_data),
]


@pytest.mark.parametrize(("name", "parser"), PARSERS, ids=[n for n, _ in PARSERS])
def test_every_parser_survives_short_prefixes_of_garbage(
    name: str, parser: Callable[[bytes], Any]
) -> None:
    garbage = b"\xff\x00\x7f\x80\x01" * 4
    for i in range(len(garbage) + 1):
        try:
            parser(garbage[:i])
        except m.ProtocolViolation as exc:
            assert exc.code in (sqlstate.PROTOCOL_VIOLATION, sqlstate.FEATURE_NOT_SUPPORTED)


def test_protocol_violation_defaults_to_08P01() -> None:
    exc = m.ProtocolViolation("x")
    assert exc.code == "08P01"
    assert exc.message == "x"
    assert str(exc) == "x"
