"""SFTP (version 3, draft-ietf-secsh-filexfer-02, as OpenSSH speaks it) framing and fields.

Sans-IO: `split_packets` cuts a byte buffer into whole packets without copying; `Fields`
reads the typed fields of one packet; `status` builds the one reply the gateway ever sends
by itself (SSH_FXP_STATUS, to refuse a request). Nothing here knows about policy or asyncio.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

# Packet types.
INIT, VERSION = 1, 2
OPEN, CLOSE, READ, WRITE, LSTAT, FSTAT, SETSTAT, FSETSTAT = 3, 4, 5, 6, 7, 8, 9, 10
OPENDIR, READDIR, REMOVE, MKDIR, RMDIR, REALPATH, STAT, RENAME = 11, 12, 13, 14, 15, 16, 17, 18
READLINK, SYMLINK = 19, 20
STATUS, HANDLE, DATA, NAME, ATTRS = 101, 102, 103, 104, 105
EXTENDED, EXTENDED_REPLY = 200, 201

# Open flags.
FXF_READ, FXF_WRITE, FXF_APPEND, FXF_CREAT, FXF_TRUNC, FXF_EXCL = 1, 2, 4, 8, 16, 32

# Status codes.
FX_OK, FX_EOF, FX_NO_SUCH_FILE, FX_PERMISSION_DENIED, FX_FAILURE = 0, 1, 2, 3, 4
FX_BAD_MESSAGE, FX_OP_UNSUPPORTED = 5, 8

# OpenSSH allows 256 KiB of data per packet; leave room for the header and a long path.
MAX_PACKET = 256 * 1024 + 1024

_U32 = struct.Struct(">I")
_U64 = struct.Struct(">Q")


class SftpProtocolError(ValueError):
    """The peer sent something that is not SFTP (or a packet larger than allowed)."""


@dataclass(frozen=True, slots=True)
class Packet:
    """One whole packet: `type`, `request_id` (0 for INIT/VERSION), `start`/`end` in the buffer."""

    type: int
    request_id: int
    start: int
    end: int


def split_packets(buf: bytes | bytearray | memoryview, start: int = 0) -> tuple[list[Packet], int]:
    """The whole packets in `buf[start:]` and the offset where an incomplete one begins."""
    out: list[Packet] = []
    pos = start
    n = len(buf)
    while n - pos >= 5:
        (length,) = _U32.unpack_from(buf, pos)
        if length < 1 or length > MAX_PACKET:
            raise SftpProtocolError(f"packet length {length} out of range")
        end = pos + 4 + length
        if end > n:
            break
        ptype = buf[pos + 4]
        rid = 0
        if ptype not in (INIT, VERSION):
            if length < 5:
                raise SftpProtocolError("packet too short for a request id")
            (rid,) = _U32.unpack_from(buf, pos + 5)
        out.append(Packet(ptype, rid, pos, end))
        pos = end
    return out, pos


class Fields:
    """Reads the fields of one packet after its type and request id."""

    __slots__ = ("_buf", "_end", "_pos")

    def __init__(self, buf: bytes | bytearray | memoryview, packet: Packet) -> None:
        self._buf = buf
        self._pos = packet.start + 9
        self._end = packet.end

    def _need(self, n: int) -> None:
        if self._pos + n > self._end:
            raise SftpProtocolError("packet ends inside a field")

    def u32(self) -> int:
        self._need(4)
        (v,) = _U32.unpack_from(self._buf, self._pos)
        self._pos += 4
        return int(v)

    def u64(self) -> int:
        self._need(8)
        (v,) = _U64.unpack_from(self._buf, self._pos)
        self._pos += 8
        return int(v)

    def string(self) -> bytes:
        n = self.u32()
        self._need(n)
        v = bytes(self._buf[self._pos : self._pos + n])
        self._pos += n
        return v

    def data_view(self) -> memoryview:
        """A string field as a view (no copy), for file data."""
        n = self.u32()
        self._need(n)
        v = memoryview(self._buf)[self._pos : self._pos + n]
        self._pos += n
        return v

    def text(self) -> str:
        return self.string().decode("utf-8", "surrogateescape")


def status(request_id: int, code: int, message: str) -> bytes:
    """An SSH_FXP_STATUS packet."""
    msg = message.encode("utf-8")
    body = (
        bytes([STATUS])
        + _U32.pack(request_id)
        + _U32.pack(code)
        + _U32.pack(len(msg))
        + msg
        + _U32.pack(2)
        + b"en"
    )
    return _U32.pack(len(body)) + body
