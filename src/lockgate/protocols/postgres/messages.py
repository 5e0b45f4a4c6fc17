"""PostgreSQL wire protocol v3 messages: framing, builders and the few parsers decisions need.

Theory of operation
-------------------
Every message after startup is `type:1 byte | length:int32 (includes itself) | payload`.
Startup-phase packets from the client have no type byte: `length:int32 | code:int32 | …`.
Nothing here touches a socket: readers take bytes, builders return bytes, so the codec is
tested with byte fixtures and fuzzed. The relay splits a received chunk into message spans
(`split_messages`) without copying; only messages a decision needs are decoded.

The two functions every chunk meets, `split_messages` and the whole-answer test (is this
chunk one statement's whole answer?), have a compiled twin in `_framing.c`, built at
install when a C compiler is there; the `*_py` functions here are the reference it is
tested against. The relay uses the whole-answer test only compiled (`ANSWER_COMPILED`): in
Python it costs about what it saves.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import Any, Final

from lockgate.protocols.postgres import sqlstate

_I32: Final = struct.Struct("!i")
_I16: Final = struct.Struct("!h")
_HDR: Final = struct.Struct("!ci")
_II: Final = struct.Struct("!ii")

PROTOCOL_3_0: Final = 196608
SSL_REQUEST_CODE: Final = 80877103
GSSENC_REQUEST_CODE: Final = 80877104
CANCEL_REQUEST_CODE: Final = 80877102

# Largest startup packet PostgreSQL itself accepts (MAX_STARTUP_PACKET_LENGTH).
MAX_STARTUP_LENGTH: Final = 10_000
# Largest regular message we relay; PostgreSQL's own limit for most messages is 1 GB.
DEFAULT_MAX_MESSAGE: Final = 1 << 30


class ProtocolViolation(Exception):
    """The peer sent bytes that are not valid protocol; `code` is the SQLSTATE to report."""

    def __init__(self, message: str, code: str = sqlstate.PROTOCOL_VIOLATION) -> None:
        super().__init__(message)
        self.message = message
        self.code = code


# ---------------------------------------------------------------------------------------
# Startup phase (client → gateway)


@dataclass(frozen=True, slots=True)
class SSLRequest:
    pass


@dataclass(frozen=True, slots=True)
class GSSENCRequest:
    pass


@dataclass(frozen=True, slots=True)
class CancelRequest:
    process_id: int
    secret_key: int


@dataclass(frozen=True, slots=True)
class StartupMessage:
    protocol: int
    parameters: dict[str, str]


StartupPacket = SSLRequest | GSSENCRequest | CancelRequest | StartupMessage


def read_startup_packet(buf: bytes | bytearray) -> tuple[StartupPacket, int] | None:
    """Parse one startup-phase packet from the front of `buf`: (packet, bytes used) or None."""
    if len(buf) < 4:
        return None
    (length,) = _I32.unpack_from(buf, 0)
    if length < 8 or length > MAX_STARTUP_LENGTH:
        raise ProtocolViolation(f"invalid startup packet length {length}")
    if len(buf) < length:
        return None
    (code,) = _I32.unpack_from(buf, 4)
    packet: StartupPacket
    if code == SSL_REQUEST_CODE and length == 8:
        packet = SSLRequest()
    elif code == GSSENC_REQUEST_CODE and length == 8:
        packet = GSSENCRequest()
    elif code == CANCEL_REQUEST_CODE and length == 16:
        pid, key = _II.unpack_from(buf, 8)
        packet = CancelRequest(pid, key)
    elif code >> 16 == 3:
        packet = StartupMessage(code, _parse_startup_parameters(bytes(buf[8:length])))
    else:
        raise ProtocolViolation(
            f"unsupported frontend protocol {code >> 16}.{code & 0xFFFF}: server supports 3.0",
            sqlstate.FEATURE_NOT_SUPPORTED,
        )
    return packet, length


def _parse_startup_parameters(body: bytes) -> dict[str, str]:
    # Layout: name\0value\0 … \0, the final null alone (like PostgreSQL's check).
    if not body.endswith(b"\x00") or (len(body) > 1 and not body.endswith(b"\x00\x00")):
        raise ProtocolViolation("startup packet does not end with a null terminator")
    parts = body[:-1].split(b"\x00")
    if parts and parts[-1] == b"":
        parts.pop()
    if len(parts) % 2:
        raise ProtocolViolation("startup packet has a parameter name without a value")
    if any(not name for name in parts[::2]):
        raise ProtocolViolation("startup packet has an empty parameter name")
    try:
        texts = [p.decode("utf-8") for p in parts]
    except UnicodeDecodeError as exc:
        raise ProtocolViolation("startup packet is not valid UTF-8") from exc
    return dict(zip(texts[::2], texts[1::2], strict=True))


def startup_message(parameters: dict[str, str], protocol: int = PROTOCOL_3_0) -> bytes:
    """Build a StartupMessage (gateway → upstream)."""
    body = (
        b"".join(k.encode() + b"\x00" + v.encode() + b"\x00" for k, v in parameters.items())
        + b"\x00"
    )
    return _I32.pack(len(body) + 8) + _I32.pack(protocol) + body


def ssl_request() -> bytes:
    return _II.pack(8, SSL_REQUEST_CODE)


def cancel_request(process_id: int, secret_key: int) -> bytes:
    return _I32.pack(16) + _I32.pack(CANCEL_REQUEST_CODE) + _II.pack(process_id, secret_key)


# ---------------------------------------------------------------------------------------
# Regular messages: framing


def message(type_: bytes, payload: bytes = b"") -> bytes:
    """Frame one message."""
    return type_ + _I32.pack(len(payload) + 4) + payload


def read_message(
    buf: bytes | bytearray | memoryview, max_length: int = DEFAULT_MAX_MESSAGE
) -> tuple[bytes, bytes, int] | None:
    """Parse one message from the front of `buf`: (type, payload, bytes used) or None."""
    if len(buf) < 5:
        return None
    type_ = bytes(buf[0:1])
    (length,) = _I32.unpack_from(buf, 1)
    if length < 4 or length > max_length:
        raise ProtocolViolation(f"invalid message length {length} for message type {type_!r}")
    end = 1 + length
    if len(buf) < end:
        return None
    return type_, bytes(buf[5:end]), end


def split_messages_py(
    buf: bytes | bytearray, start: int = 0, max_length: int = DEFAULT_MAX_MESSAGE
) -> tuple[list[tuple[int, int]], int]:
    """Find whole messages in `buf[start:]`: ([(offset, end), …], offset of the first partial).

    Offsets point at the type byte; `end` is one past the message. No bytes are copied.
    The reference for the compiled `_framing.split`, which `split_messages` uses when built.
    """
    n = len(buf)
    unpack = _I32.unpack_from
    if start == 0 and n >= 5:
        # The usual client chunk: exactly one whole message.
        (length,) = unpack(buf, 1)
        if length + 1 == n and 4 <= length <= max_length:
            return [(0, n)], n
    spans: list[tuple[int, int]] = []
    pos = start
    while pos + 5 <= n:
        (length,) = unpack(buf, pos + 1)
        if length < 4 or length > max_length:
            raise ProtocolViolation(
                f"invalid message length {length} for message type {bytes(buf[pos : pos + 1])!r}"
            )
        end = pos + 1 + length
        if end > n:
            break
        spans.append((pos, end))
        pos = end
    return spans, pos


def answer_shape_py(
    buf: bytes | bytearray, max_length: int = DEFAULT_MAX_MESSAGE
) -> tuple[bytes, tuple[int, ...], int, int, str, int | None, int] | None:
    """Whether `buf` is exactly one statement's whole answer: `1? 2? [Tn]? D* C Z`.

    If so: (the types of the messages before the rows, ParseComplete, BindComplete,
    RowDescription or NoData, as bytes; where each of them ends; where the CommandComplete
    starts; where it ends; its tag; the rows the tag reports; the ReadyForQuery's
    transaction status byte); else None, also for anything malformed (the relay's general
    path reads that message by message and reports it). The reference for the compiled
    `_framing.answer`.
    """
    n = len(buf)
    unpack = _I32.unpack_from

    def whole(pos: int, kind: int) -> int:
        if pos + 5 > n or (kind and buf[pos] != kind):
            return -1
        length = unpack(buf, pos + 1)[0]
        end = pos + 1 + length
        return end if 4 <= length <= max_length and end <= n else -1

    pos = 0
    heads = bytearray()
    ends: list[int] = []
    for step in (b"1", b"2", b"Tn"):
        if pos < n and buf[pos] in step:
            if (pos := whole(pos, 0)) < 0:
                return None
            heads.append(buf[ends[-1] if ends else 0])
            ends.append(pos)
    while pos < n and buf[pos] == 0x44:  # D
        if (pos := whole(pos, 0x44)) < 0:
            return None
    c_off = pos
    c_end = whole(pos, 0x43)  # C
    if c_end < 0 or c_end + 6 != n or buf[c_end] != 0x5A or unpack(buf, c_end + 1)[0] != 5:
        return None
    nul = buf.find(b"\x00", c_off + 5, c_end)
    if nul < 0:
        return None
    try:
        tag = buf[c_off + 5 : nul].decode("utf-8")
    except UnicodeDecodeError:
        return None
    rows = command_tag_rows(tag)
    return bytes(heads), tuple(ends), c_off, c_end, tag, rows, buf[c_end + 5]


def _compiled() -> tuple[Any, Any, Any]:
    try:
        from lockgate.protocols.postgres import _framing  # type: ignore[attr-defined]
    except ImportError:
        return None, None, None
    return _framing.split, _framing.answer, _framing.bind


# The framing kernel's functions (`_framing.c`, built at install when a C compiler is
# there), or None.
SPLIT_COMPILED, ANSWER_COMPILED, BIND_COMPILED = _compiled()


def split_messages(
    buf: bytes | bytearray, start: int = 0, max_length: int = DEFAULT_MAX_MESSAGE
) -> tuple[list[tuple[int, int]], int]:
    """Find whole messages in `buf[start:]`: ([(offset, end), …], offset of the first partial).

    Offsets point at the type byte; `end` is one past the message. No bytes are copied.
    Raises ProtocolViolation on a length below 4 or above `max_length`.
    """
    split = SPLIT_COMPILED
    if split is None:
        return split_messages_py(buf, start, max_length)
    try:
        spans: tuple[list[tuple[int, int]], int] = split(buf, start, max_length)
    except ValueError as exc:
        raise ProtocolViolation(str(exc)) from None
    return spans


def bind_texts(
    buf: bytes | bytearray, start: int, end: int, limit: int = 1024, texts: bool = True
) -> tuple[str, str, tuple[str | None, ...] | None]:
    """The portal, statement and, if `texts`, audit view of the parameters of a Bind body.

    The body is `buf[start:end]` (after the type and length). Raises ProtocolViolation when
    it is malformed.
    """
    bind = BIND_COMPILED
    if bind is None:
        return bind_texts_py(buf, start, end, limit, texts)
    try:
        got: tuple[str, str, tuple[str | None, ...] | None] = bind(buf, start, end, limit, texts)
    except ValueError as exc:
        raise ProtocolViolation(str(exc)) from None
    return got


# ---------------------------------------------------------------------------------------
# Backend messages the gateway builds itself

AUTH_OK: Final = message(b"R", _I32.pack(0))
AUTH_CLEARTEXT: Final = message(b"R", _I32.pack(3))


def ready_for_query(status: bytes = b"I") -> bytes:
    return message(b"Z", status)


def parameter_status(name: str, value: str) -> bytes:
    return message(b"S", name.encode() + b"\x00" + value.encode() + b"\x00")


def backend_key_data(process_id: int, secret_key: int) -> bytes:
    return message(b"K", _II.pack(process_id, secret_key))


def _fields(fields: dict[bytes, str]) -> bytes:
    out = bytearray()
    for key, value in fields.items():
        out += key + value.replace("\x00", " ").encode("utf-8", "replace") + b"\x00"
    out += b"\x00"
    return bytes(out)


def error_response(
    code: str,
    message_: str,
    *,
    severity: str = "ERROR",
    detail: str = "",
    hint: str = "",
) -> bytes:
    """Build an ErrorResponse ('E'); `severity` FATAL for errors that end the connection."""
    fields: dict[bytes, str] = {b"S": severity, b"V": severity, b"C": code, b"M": message_}
    if detail:
        fields[b"D"] = detail
    if hint:
        fields[b"H"] = hint
    return message(b"E", _fields(fields))


def notice_response(message_: str, *, severity: str = "NOTICE", hint: str = "") -> bytes:
    fields: dict[bytes, str] = {b"S": severity, b"V": severity, b"C": "00000", b"M": message_}
    if hint:
        fields[b"H"] = hint
    return message(b"N", _fields(fields))


# ---------------------------------------------------------------------------------------
# Frontend messages the gateway builds (to upstream)

TERMINATE: Final = message(b"X")
SYNC: Final = message(b"S")


def password_message(secret: bytes) -> bytes:
    return message(b"p", secret + b"\x00")


def sasl_initial_response(mechanism: str, data: bytes) -> bytes:
    return message(b"p", mechanism.encode() + b"\x00" + _I32.pack(len(data)) + data)


def sasl_response(data: bytes) -> bytes:
    return message(b"p", data)


def query(sql: str) -> bytes:
    return message(b"Q", sql.encode() + b"\x00")


# ---------------------------------------------------------------------------------------
# Parsers for what decisions and the audit need


def parse_error_fields(payload: bytes) -> dict[str, str]:
    """Fields of an ErrorResponse/NoticeResponse payload, keyed by their one-letter code."""
    out: dict[str, str] = {}
    pos = 0
    n = len(payload)
    while pos < n and payload[pos] != 0:
        key = chr(payload[pos])
        end = payload.find(b"\x00", pos + 1)
        if end < 0:
            raise ProtocolViolation("unterminated field in error/notice message")
        out[key] = payload[pos + 1 : end].decode("utf-8", "replace")
        pos = end + 1
    return out


def read_cstring(
    payload: bytes | bytearray | memoryview, pos: int, end: int | None = None
) -> tuple[str, int]:
    """Read a null-terminated UTF-8 string at `pos`: (text, position after the null).

    `end` bounds the search (default: the end of `payload`), so a message body inside a
    larger buffer is read in place, without slicing it out first.
    """
    data = bytes(payload) if isinstance(payload, memoryview) else payload
    nul = data.find(b"\x00", pos, len(data) if end is None else end)
    if nul < 0:
        raise ProtocolViolation("unterminated string in message")
    try:
        return data[pos:nul].decode("utf-8"), nul + 1
    except UnicodeDecodeError as exc:
        raise ProtocolViolation("string in message is not valid UTF-8") from exc


def parse_query(payload: bytes) -> str:
    """SQL text of a Query ('Q') message."""
    return read_cstring(payload, 0)[0]


@dataclass(frozen=True, slots=True)
class Parse:
    statement: str
    query: str
    param_types: tuple[int, ...]


def parse_parse(payload: bytes) -> Parse:
    name, pos = read_cstring(payload, 0)
    sql, pos = read_cstring(payload, pos)
    if pos + 2 > len(payload):
        raise ProtocolViolation("Parse message is truncated")
    (count,) = _I16.unpack_from(payload, pos)
    pos += 2
    if count < 0 or pos + 4 * count > len(payload):
        raise ProtocolViolation("Parse message has an invalid parameter type count")
    types = struct.unpack_from(f"!{count}I", payload, pos)
    return Parse(name, sql, types)


@dataclass(frozen=True, slots=True)
class Bind:
    portal: str
    statement: str
    param_formats: tuple[int, ...]
    params: tuple[bytes | None, ...]


def parse_bind(payload: bytes) -> Bind:
    portal, pos = read_cstring(payload, 0)
    stmt, pos = read_cstring(payload, pos)
    try:
        (nfmt,) = _I16.unpack_from(payload, pos)
        pos += 2
        if nfmt < 0:
            raise ProtocolViolation("Bind message has a negative format count")
        formats = struct.unpack_from(f"!{nfmt}h", payload, pos)
        pos += 2 * nfmt
        (nparams,) = _I16.unpack_from(payload, pos)
        pos += 2
        if nparams < 0:
            raise ProtocolViolation("Bind message has a negative parameter count")
        params: list[bytes | None] = []
        for _ in range(nparams):
            (size,) = _I32.unpack_from(payload, pos)
            pos += 4
            if size == -1:
                params.append(None)
                continue
            if size < 0 or pos + size > len(payload):
                raise ProtocolViolation("Bind message has an invalid parameter length")
            params.append(payload[pos : pos + size])
            pos += size
    except struct.error as exc:
        raise ProtocolViolation("Bind message is truncated") from exc
    return Bind(portal, stmt, tuple(formats), tuple(params))


def bind_param_texts(bind: Bind, limit: int = 1024) -> tuple[str | None, ...]:
    """Readable parameter values for the audit: text format decoded, binary shown as hex."""
    out: list[str | None] = []
    fmts = bind.param_formats
    for i, value in enumerate(bind.params):
        if value is None:
            out.append(None)
            continue
        fmt = fmts[0] if len(fmts) == 1 else (fmts[i] if i < len(fmts) else 0)
        text = value.decode("utf-8", "replace") if fmt == 0 else "\\x" + value.hex()
        out.append(text if len(text) <= limit else text[:limit] + "…")
    return tuple(out)


def bind_texts_py(
    buf: bytes | bytearray, start: int, end: int, limit: int = 1024, texts: bool = True
) -> tuple[str, str, tuple[str | None, ...] | None]:
    """The portal, statement and, if `texts`, audit view of the parameters of a Bind body.

    The body is `buf[start:end]`. The reference for the compiled `_framing.bind`, which
    `bind_texts` uses when built (it reads the body in place, with no `Bind` in between).
    """
    bind = parse_bind(bytes(buf[start:end]))
    return bind.portal, bind.statement, bind_param_texts(bind, limit) if texts else None


def execute_portal(buf: bytes | bytearray, start: int, end: int) -> str:
    """The portal of the Execute message body at `buf[start:end]`, read in place."""
    portal, pos = read_cstring(buf, start, end)
    if pos + 4 > end:
        raise ProtocolViolation("Execute message is truncated")
    return portal


def parse_close_or_describe(payload: bytes) -> tuple[bytes, str]:
    """(b'S' statement or b'P' portal, name) of a Close or Describe message."""
    if not payload:
        raise ProtocolViolation("Close/Describe message is empty")
    kind = payload[0:1]
    if kind not in (b"S", b"P"):
        raise ProtocolViolation(f"Close/Describe target must be 'S' or 'P', got {kind!r}")
    return kind, read_cstring(payload, 1)[0]


def command_tag_rows(tag: str) -> int | None:
    """Rows a CommandComplete tag reports (`SELECT 5`, `INSERT 0 3`, `COPY 10`), else None."""
    _, _, last = tag.rpartition(" ")
    return int(last) if last.isascii() and last.isdigit() else None


def auth_request(payload: bytes) -> tuple[int, bytes]:
    """(auth code, rest) of an Authentication ('R') message."""
    if len(payload) < 4:
        raise ProtocolViolation("Authentication message is truncated")
    return _I32.unpack_from(payload, 0)[0], payload[4:]


def parse_backend_key_data(payload: bytes) -> tuple[int, int]:
    if len(payload) != 8:
        raise ProtocolViolation("BackendKeyData message has the wrong length")
    pid, key = _II.unpack(payload)
    return pid, key
