"""Less work per SSH packet for asyncssh connections on the relay's hot path.

asyncssh writes every SSH packet to its transport on its own, and sends an empty
`SSH_MSG_IGNORE` packet before each one once encryption is on: relaying one 32 KiB channel
packet costs two `send()` calls on each side. It keeps what it received in a `bytes`
object and drops each parsed packet by slicing off the rest, copying everything after the
packet once per packet: a 256 KiB socket read of eight 32 KiB packets is copied about
eight times over. Thin layers cut that down:

- `coalesce_writes` puts a layer between an asyncssh connection and its asyncio transport
  that hands what one turn of the event loop wrote to the transport at the end of the turn,
  in one `writelines` (one `writev` under uvloop, without joining the buffers). Order is
  kept; `close` and `abort` write out what is pending first, so a disconnect message (and
  the stderr line before it saying why) is never dropped.
- `InputBuffer` (installed by `buffer_input`) stands in for that `bytes` object: slicing off
  the parsed part moves an offset, and the unparsed rest is moved to the front only when
  more bytes arrive.
- `skip_packet_logs` stops asyncssh from formatting a log line for every packet a
  connection or channel sends or receives, which it does before it checks whether packet
  logging (`asyncssh.set_debug_level(3)`) is on; with it on, nothing is skipped.
- `drop_empty_ignores` stops the empty `SSH_MSG_IGNORE` before each packet. It guards
  CBC-mode ciphers against chosen-plaintext attacks on their predictable IV; the gateway
  negotiates no CBC cipher on either side (asyncssh's defaults towards clients, AES-GCM,
  ChaCha20-Poly1305 or AES-CTR towards targets), where it only costs a packet's
  padding, encryption and MAC, and half the packets on the wire. The same hook sends
  channel data under an AEAD cipher itself (`_send_data`): one join, one encryption.
- `decrypt_lean` swaps in leaner AES-GCM and ChaCha20-Poly1305 packet decryption after
  each key exchange: one cipher context per ChaCha20 packet instead of two, the AES key
  schedule kept, one join instead of two concatenations.

They reach into asyncssh's connection: its `_transport` and `_inpbuf` attributes (set
before the connection's owner hears of it), its `send_packet` method, which sends the
empty ignore packet through `self.send_packet`, and the sending state `_send_data` reads
and advances (sequence number, rekey byte count, the AEAD cipher's key and IV), and
`send_newkeys` with the `_next_recv_encryption` it sets;
`tests/unit/proxy/test_ssh_transport.py` fails if an asyncssh upgrade changes them.
"""

from __future__ import annotations

import asyncio
import os
import time
from typing import Any

from asyncssh.encryption import ChachaEncryption, GCMEncryption
from asyncssh.logging import SSHLogger
from cryptography.exceptions import InvalidSignature, InvalidTag
from cryptography.hazmat.primitives.ciphers import Cipher
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.ciphers.algorithms import ChaCha20
from cryptography.hazmat.primitives.poly1305 import Poly1305

# The asyncssh attributes that hold a connection's transport, its received bytes and the
# decryption it takes up at the peer's next NEWKEYS.
_ATTRIBUTE = "_transport"
_INPUT = "_inpbuf"
_NEXT_RECEIVE = "_next_recv_encryption"
# SSH_MSG_IGNORE and the empty string asyncssh sends in it before every packet.
MSG_IGNORE = 2
EMPTY_STRING = b"\0\0\0\0"
MSG_CHANNEL_DATA = 94
# Random padding is taken from a pool this large, refilled from the OS when used up.
_PADDING_POOL = 4096
# ChaCha20's 16-byte nonce in `cryptography`: the block counter (0), then OpenSSH's nonce.
_CHACHA_BLOCK_0 = bytes(8)
_CHACHA_ZEROS = bytes(64)

# Channel windows and packets the gateway offers its peers (asyncssh: 2 MiB and 32 KiB).
# A window as large as scp's 64 outstanding 32 KiB SFTP writes, and room for several of
# them in one packet, halve the packets (and the per-packet Python work) on the way in.
WINDOW = 8 << 20
MAX_PACKET = 128 << 10


class CoalescingTransport:
    """Stands in for an asyncio transport; joins the writes of one loop turn."""

    __slots__ = ("_loop", "_pending", "_real", "_scheduled")

    def __init__(self, real: asyncio.Transport, loop: asyncio.AbstractEventLoop) -> None:
        self._real = real
        self._loop = loop
        self._pending: list[bytes] = []
        self._scheduled = False

    def write(self, data: bytes) -> None:
        self._pending.append(data)
        if not self._scheduled:
            self._scheduled = True
            self._loop.call_soon(self.flush)

    def flush(self) -> None:
        """Write out what is pending, as one write."""
        self._scheduled = False
        pending = self._pending
        if not pending:
            return
        self._pending = []
        if len(pending) == 1:
            self._real.write(pending[0])
        else:
            self._real.writelines(pending)

    def close(self) -> None:
        self.flush()
        self._real.close()

    def abort(self) -> None:
        if not self._pending:
            self._real.abort()
            return
        # A disconnect message is pending: write it, and abort one turn later, as asyncssh
        # does itself (uvloop sends queued writes at the end of a turn; abort drops them).
        self.flush()
        self._loop.call_soon(self._real.abort)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._real, name)


def coalesce_writes(conn: object) -> bool:
    """Put a `CoalescingTransport` under an asyncssh connection; False if it has none."""
    real = getattr(conn, _ATTRIBUTE, None)
    # uvloop's transports are not asyncio.Transport subclasses: check what is used.
    if real is None or not all(hasattr(real, m) for m in ("write", "close", "abort")):
        return False
    setattr(conn, _ATTRIBUTE, CoalescingTransport(real, asyncio.get_running_loop()))
    return True


def drop_empty_ignores(conn: object) -> bool:
    """Stop an asyncssh connection's empty ignore packets; False if it sends none this way.

    Also sends its channel data the short way (`_send_data`) when it can.
    """
    send = getattr(conn, "send_packet", None)
    if send is None:
        return False
    padding = _Padding()

    def send_packet(pkttype: int, *args: bytes, handler: Any = None) -> None:
        if pkttype == MSG_CHANNEL_DATA and _send_data(conn, args, padding):
            return
        if pkttype == MSG_IGNORE and args == (EMPTY_STRING,):
            return
        send(pkttype, *args, handler=handler)

    setattr(conn, "send_packet", send_packet)  # noqa: B010
    return True


class _Padding:
    """Random padding for packets, drawn from the OS a few KiB at a time, not per packet."""

    __slots__ = ("_pool", "_pos")

    def __init__(self) -> None:
        self._pool = b""
        self._pos = 0

    def take(self, n: int) -> bytes:
        pos = self._pos
        if pos + n > len(self._pool):
            self._pool, pos = os.urandom(_PADDING_POOL), 0
        self._pos = pos + n
        return self._pool[pos : pos + n]


def _send_data(conn: Any, args: tuple[bytes, ...], padding: _Padding) -> bool:
    """Send one SSH_MSG_CHANNEL_DATA packet with an AEAD cipher; False to leave it to asyncssh.

    The same packet asyncssh would send, built with one join and one encryption instead of
    about eight copies of the data, no `getrandom` call per packet for its padding, and
    written as separate buffers (header, ciphertext, tag) to the coalescing transport.
    Anything out of the ordinary (no AEAD cipher yet, compression, a key exchange due,
    packet logging on, no transport) goes asyncssh's own way.
    """
    enc = conn._send_encryption
    kind = type(enc)  # not isinstance: asyncssh's Encryption is an ABC, slow to ask per packet
    gcm = kind in _GCM
    if not gcm and kind not in _CHACHA:
        return False
    transport = conn._transport
    if (
        transport is None
        or conn._compressor is not None
        or not (conn._kex_complete and conn._auth_complete)
        or conn._rekey_bytes_sent >= conn._rekey_bytes
        or (conn._rekey_seconds and time.monotonic() >= conn._rekey_time)
        or SSHLogger._debug_level >= 3
    ):
        return False
    size = 1 + sum(map(len, args))
    block = conn._send_blocksize
    padlen = -(conn._send_enchdrlen + size) % block
    if padlen < 4:
        padlen += block
    plain = b"".join((bytes((padlen, MSG_CHANNEL_DATA)), *args, padding.take(padlen)))
    pktlen = len(plain)
    header = pktlen.to_bytes(4, "big")
    seq = conn._send_seq
    cipher = enc._cipher
    if gcm:
        # AES-GCM with the length as associated data: ciphertext and tag, as asyncssh.
        body = _aesgcm(cipher).encrypt(cipher._iv, plain, header)
        cipher._update_iv()
        parts: tuple[bytes, ...] = (header, body)
    else:
        # chacha20-poly1305@openssh.com: the length under the second key, the packet under
        # the first from block 1, its block 0 keying Poly1305 over both.
        nonce, stream, poly = _chacha_packet(cipher, seq)
        header = _chacha(cipher._adkey, nonce).update(header)
        body = stream.update(plain)
        poly.update(header)
        poly.update(body)
        parts = (header, body, poly.finalize())
    try:
        for part in parts:
            transport.write(part)
    except ConnectionError:  # as asyncssh's own `_send`
        pass
    conn._send_seq = (seq + 1) & 0xFFFFFFFF
    conn._rekey_bytes_sent += pktlen
    return True


def _chacha(key: bytes, nonce: bytes) -> Any:
    return Cipher(ChaCha20(key, nonce), mode=None).encryptor()


def _chacha_packet(cipher: Any, seq: int) -> tuple[bytes, Any, Poly1305]:
    """Packet `seq`'s nonce, its ChaCha20 stream from block 1, and Poly1305 keyed by block 0."""
    nonce = _CHACHA_BLOCK_0 + seq.to_bytes(8, "big")
    stream = _chacha(cipher._key, nonce)
    return nonce, stream, Poly1305(stream.update(_CHACHA_ZEROS)[:32])


def _aesgcm(cipher: Any) -> AESGCM:
    """The AES-GCM context of an asyncssh GCM cipher, made once per key (asyncssh: per packet)."""
    aead: AESGCM | None = cipher.__dict__.get("_lockgate_aead")
    if aead is None:
        aead = cipher._lockgate_aead = AESGCM(cipher._key)
    return aead


class _LeanGCM(GCMEncryption):
    """asyncssh's AES-GCM decryption with one join and a key schedule kept per key."""

    def decrypt_packet(
        self, seq: int, first: bytes, rest: bytes, header_len: int, mac: bytes
    ) -> bytes | None:
        cipher: Any = self._cipher
        try:
            data: bytes = _aesgcm(cipher).decrypt(
                cipher._iv, b"".join((first[header_len:], rest, mac)), first[:header_len]
            )
        except InvalidTag:
            data = None  # type: ignore[assignment]
        cipher._update_iv()
        return data


class _LeanChacha(ChachaEncryption):
    """asyncssh's ChaCha20-Poly1305 decryption with one cipher context instead of two.

    Block 0 of the packet's key stream keys Poly1305; the same context then decrypts the
    packet from block 1 (asyncssh starts a context for each). The MAC is fed in pieces.
    """

    def decrypt_packet(
        self, seq: int, first: bytes, rest: bytes, header_len: int, mac: bytes
    ) -> bytes | None:
        _, stream, poly = _chacha_packet(self._cipher, seq)
        poly.update(first)
        poly.update(rest)
        try:
            poly.verify(mac)
        except InvalidSignature:
            return None
        plain: bytes = stream.update(first[header_len:] + rest)
        return plain


_LEAN_RECEIVERS: dict[type, type] = {GCMEncryption: _LeanGCM, ChachaEncryption: _LeanChacha}
_GCM = frozenset((GCMEncryption, _LeanGCM))
_CHACHA = frozenset((ChachaEncryption, _LeanChacha))


def decrypt_lean(conn: object) -> bool:
    """Receive with `_LeanGCM` / `_LeanChacha` after each key exchange; False if no hook."""
    newkeys = getattr(conn, "send_newkeys", None)
    if newkeys is None:
        return False

    def send_newkeys(k: bytes, h: bytes) -> None:
        newkeys(k, h)
        # The keys the peer will use from its NEWKEYS on: same cipher, leaner packet steps.
        enc = getattr(conn, _NEXT_RECEIVE, None)
        lean = _LEAN_RECEIVERS.get(type(enc))
        if lean is not None:
            setattr(conn, _NEXT_RECEIVE, lean(enc._cipher))  # type: ignore[union-attr]

    setattr(conn, "send_newkeys", send_newkeys)  # noqa: B010
    return True


class InputBuffer:
    """Received bytes not parsed yet, for asyncssh's parser: `buf[n:]` drops n bytes in place.

    Supports what asyncssh does with its `bytes` buffer: `+=`, `len`, truth, `find` and
    slices. A slice with an end is a `bytes` copy; one without (`buf[n:]`) moves the start
    and returns the buffer itself, which asyncssh always assigns back to its attribute.
    """

    __slots__ = ("_buf", "_pos")

    def __init__(self, data: bytes = b"") -> None:
        self._buf = bytearray(data)
        self._pos = 0

    def __len__(self) -> int:
        return len(self._buf) - self._pos

    def __bool__(self) -> bool:
        return len(self._buf) > self._pos

    def __iadd__(self, data: bytes) -> InputBuffer:
        if self._pos:
            # Move the unparsed rest (usually part of one packet) to the front.
            del self._buf[: self._pos]
            self._pos = 0
        self._buf += data
        return self

    def __getitem__(self, key: slice) -> Any:
        pos = self._pos
        start = pos + (key.start or 0)
        if key.stop is None:
            self._pos = min(start, len(self._buf))
            return self
        with memoryview(self._buf) as view:
            return bytes(view[start : min(pos + key.stop, len(self._buf))])

    def find(self, sub: bytes, start: int = 0, end: int | None = None) -> int:
        pos = self._pos
        found = self._buf.find(sub, pos + start, len(self._buf) if end is None else pos + end)
        return found - pos if found >= 0 else -1

    def __bytes__(self) -> bytes:
        return bytes(self._buf[self._pos :])


def buffer_input(conn: object) -> bool:
    """Put an `InputBuffer` in place of an asyncssh connection's received bytes."""
    current = getattr(conn, _INPUT, None)
    if not isinstance(current, bytes):
        return False
    setattr(conn, _INPUT, InputBuffer(current))
    return True


def _no_log(*_args: object) -> None:
    return None


def skip_packet_logs(obj: object) -> None:
    """Skip the per-packet log formatting of an asyncssh connection or channel (unless on)."""
    if SSHLogger._debug_level < 3:  # asyncssh has no public getter
        setattr(obj, "log_sent_packet", _no_log)  # noqa: B010
        setattr(obj, "log_received_packet", _no_log)  # noqa: B010


def tune_connection(conn: object) -> None:
    """All of the above for a new asyncssh connection (from its owner's `connection_made`)."""
    coalesce_writes(conn)
    drop_empty_ignores(conn)
    decrypt_lean(conn)
    buffer_input(conn)
    skip_packet_logs(conn)
