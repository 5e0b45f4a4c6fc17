"""SFTP framing: whole packets only, any split point, bounded lengths."""

from __future__ import annotations

import struct

import pytest

from lockgate.protocols.ssh import sftp


def _packet(ptype: int, rid: int, body: bytes) -> bytes:
    payload = bytes([ptype]) + struct.pack(">I", rid) + body
    return struct.pack(">I", len(payload)) + payload


def _string(b: bytes) -> bytes:
    return struct.pack(">I", len(b)) + b


OPEN = _packet(
    sftp.OPEN, 7, _string(b"/etc/hostname") + struct.pack(">I", sftp.FXF_READ) + b"\0" * 4
)
WRITE = _packet(sftp.WRITE, 8, _string(b"h1") + struct.pack(">Q", 5) + _string(b"hello"))
INIT = struct.pack(">IBI", 5, sftp.INIT, 3)


def test_split_whole_buffer_and_fields() -> None:
    buf = INIT + OPEN + WRITE
    packets, used = sftp.split_packets(buf)
    assert used == len(buf)
    assert [(p.type, p.request_id) for p in packets] == [
        (sftp.INIT, 0),
        (sftp.OPEN, 7),
        (sftp.WRITE, 8),
    ]
    f = sftp.Fields(buf, packets[1])
    assert (f.text(), f.u32()) == ("/etc/hostname", sftp.FXF_READ)
    f = sftp.Fields(buf, packets[2])
    assert (f.string(), f.u64(), bytes(f.data_view())) == (b"h1", 5, b"hello")


def test_split_at_every_byte_boundary() -> None:
    buf = INIT + OPEN + WRITE
    for cut in range(len(buf) + 1):
        first, used = sftp.split_packets(buf[:cut])
        rest, used2 = sftp.split_packets(buf[used:])
        assert len(first) + len(rest) == 3
        assert used + used2 == len(buf)


def test_bad_lengths_and_truncated_fields_raise() -> None:
    with pytest.raises(sftp.SftpProtocolError):
        sftp.split_packets(struct.pack(">I", sftp.MAX_PACKET + 1) + b"\x03" * 8)
    with pytest.raises(sftp.SftpProtocolError):
        sftp.split_packets(struct.pack(">I", 0) + b"x")
    short = _packet(sftp.OPEN, 1, _string(b"abc")[:-1])
    packets, _ = sftp.split_packets(short)
    with pytest.raises(sftp.SftpProtocolError):
        sftp.Fields(short, packets[0]).string()


def test_status_reply() -> None:
    reply = sftp.status(9, sftp.FX_PERMISSION_DENIED, "lockgate: no")
    (packet,), used = sftp.split_packets(reply)
    assert used == len(reply) and (packet.type, packet.request_id) == (sftp.STATUS, 9)
    f = sftp.Fields(reply, packet)
    assert (f.u32(), f.text(), f.text()) == (sftp.FX_PERMISSION_DENIED, "lockgate: no", "en")
