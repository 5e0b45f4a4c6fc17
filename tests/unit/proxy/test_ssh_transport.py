"""Joined socket writes under asyncssh connections: same bytes, same order, fewer writes."""

from __future__ import annotations

import asyncio
import hashlib
import inspect
import random

import asyncssh
import pytest
from asyncssh.encryption import GCMEncryption

from lockgate.proxy.ssh_transport import (
    MSG_CHANNEL_DATA,
    CoalescingTransport,
    InputBuffer,
    _Padding,
    _send_data,
    buffer_input,
    coalesce_writes,
    decrypt_lean,
    drop_empty_ignores,
    skip_packet_logs,
)


class _Recorder(asyncio.Protocol):
    def __init__(self) -> None:
        self.data = bytearray()
        self.closed = asyncio.get_running_loop().create_future()

    def data_received(self, data: bytes) -> None:
        self.data += data

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.closed.done():
            self.closed.set_result(None)


async def test_writes_of_one_loop_turn_become_one_and_close_flushes_them() -> None:
    loop = asyncio.get_running_loop()
    received: list[_Recorder] = []

    def factory() -> _Recorder:
        received.append(_Recorder())
        return received[-1]

    server = await loop.create_server(factory, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    transport, _ = await loop.create_connection(asyncio.Protocol, "127.0.0.1", port)
    writes: list[bytes] = []
    real_write = transport.write

    def counting_write(data: bytes | bytearray | memoryview) -> None:
        writes.append(bytes(data))
        real_write(data)

    transport.write = counting_write  # type: ignore[method-assign]
    joined = CoalescingTransport(transport, loop)
    for i in range(5):
        joined.write(b"packet-%d;" % i)
    assert writes == []  # nothing yet: the turn is not over
    await asyncio.sleep(0)
    await asyncio.sleep(0)
    assert writes == [b"packet-0;packet-1;packet-2;packet-3;packet-4;"]
    joined.write(b"last words")
    joined.close()  # pending bytes go out before the close
    await asyncio.wait_for(received[0].closed, 5)
    assert bytes(received[0].data) == b"packet-0;packet-1;packet-2;packet-3;packet-4;last words"
    assert joined.is_closing()  # everything else reaches the real transport
    server.close()
    await server.wait_closed()


async def test_asyncssh_connections_still_hold_their_transport_where_we_look() -> None:
    key = asyncssh.generate_private_key("ssh-ed25519")
    seen: list[bool] = []

    class Server(asyncssh.SSHServer):
        def connection_made(self, conn: asyncssh.SSHServerConnection) -> None:
            seen.append(coalesce_writes(conn))

        def begin_auth(self, username: str) -> bool:
            return False  # no authentication needed

    class Client(asyncssh.SSHClient):
        def connection_made(self, conn: asyncssh.SSHClientConnection) -> None:
            seen.append(coalesce_writes(conn))

    server = await asyncssh.create_server(
        Server, "127.0.0.1", 0, server_host_keys=[key], process_factory=_echo
    )
    port = server.sockets[0].getsockname()[1]
    async with asyncssh.connect(
        "127.0.0.1", port, known_hosts=None, client_factory=Client, username="u"
    ) as conn:
        done = await conn.run("hello", input="through joined writes\n", check=True)
    assert done.stdout == "hello: through joined writes\n"
    assert seen == [True, True]
    server.close()
    await server.wait_closed()


async def _echo(process: asyncssh.SSHServerProcess[str]) -> None:
    line = await process.stdin.readline()
    process.stdout.write(f"{process.command}: {line}")
    process.exit(0)


async def test_abort_still_sends_what_was_written_before_it() -> None:
    loop = asyncio.get_running_loop()
    received: list[_Recorder] = []

    def factory() -> _Recorder:
        received.append(_Recorder())
        return received[-1]

    server = await loop.create_server(factory, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    transport, _ = await loop.create_connection(asyncio.Protocol, "127.0.0.1", port)
    joined = CoalescingTransport(transport, loop)
    joined.write(b"lockgate: session ended: why\n")
    joined.write(b"disconnect")
    joined.abort()  # what asyncssh does right after its disconnect message
    await asyncio.wait_for(received[0].closed, 5)
    assert bytes(received[0].data) == b"lockgate: session ended: why\ndisconnect"
    server.close()
    await server.wait_closed()


def test_asyncssh_still_has_the_steps_agent_and_x11_forwarding_replace() -> None:
    from asyncssh.connection import SSHClientConnection

    from lockgate.proxy import ssh_agent_x11

    for name in (ssh_agent_x11.AGENT_OPEN, ssh_agent_x11.X11_OPEN, ssh_agent_x11.X11_ATTACH):
        assert callable(getattr(SSHClientConnection, name, None)), name
    for name in ("create_agent_listener", "attach_x11_listener"):
        assert callable(getattr(asyncssh.SSHServerConnection, name, None)), name
    # Set in __init__; read by create_session to send auth-agent-req@openssh.com.
    source = inspect.getsource(SSHClientConnection.create_session)
    assert f"self.{ssh_agent_x11.AGENT_PATH}" in source


async def test_dropping_empty_ignores_halves_the_packets_a_connection_sends() -> None:
    key = asyncssh.generate_private_key("ssh-ed25519")

    class Server(asyncssh.SSHServer):
        def begin_auth(self, username: str) -> bool:
            return False

    async def packets_sent(drop: bool) -> int:
        class Client(asyncssh.SSHClient):
            def connection_made(self, conn: asyncssh.SSHClientConnection) -> None:
                if drop:
                    assert drop_empty_ignores(conn)

        async with asyncssh.connect(
            "127.0.0.1", port, known_hosts=None, client_factory=Client, username="u"
        ) as conn:
            before = getattr(conn, "_send_seq")  # noqa: B009
            for _ in range(20):
                await conn.run("x", input="data\n", check=True)
            return int(getattr(conn, "_send_seq")) - before  # noqa: B009

    server = await asyncssh.create_server(
        Server, "127.0.0.1", 0, server_host_keys=[key], process_factory=_echo
    )
    port = server.sockets[0].getsockname()[1]
    try:
        with_ignores = await packets_sent(False)
        without = await packets_sent(True)
    finally:
        server.close()
        await server.wait_closed()
    # asyncssh sends an empty SSH_MSG_IGNORE before every packet once encrypted.
    assert without * 2 == with_ignores


def test_the_input_buffer_answers_as_asyncssh_s_bytes_buffer_would() -> None:
    rng = random.Random(7)
    mine, theirs = InputBuffer(), b""
    for _ in range(2000):
        op = rng.randrange(4)
        if op == 0:
            data = rng.randbytes(rng.randrange(0, 300))
            mine += data
            theirs += data
        elif op == 1 and theirs:
            n = rng.randrange(0, len(theirs) + 5)
            mine = mine[n:]
            theirs = theirs[n:]
        elif op == 2:
            a = rng.randrange(0, len(theirs) + 3)
            b = rng.randrange(a, len(theirs) + 6)
            assert mine[a:b] == theirs[a:b]
            assert mine[:b] == theirs[:b]
        else:
            sub = bytes([rng.randrange(256)])
            assert mine.find(sub, 0, 50) == theirs.find(sub, 0, 50)
        assert len(mine) == len(theirs)
        assert bool(mine) == bool(theirs)
        assert bytes(mine) == theirs


@pytest.mark.parametrize("alg", ["aes128-gcm@openssh.com", "chacha20-poly1305@openssh.com"])
async def test_a_tuned_asyncssh_connection_carries_megabytes_intact(
    alg: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    from lockgate.proxy import ssh_transport

    key = asyncssh.generate_private_key("ssh-ed25519")
    tuned: list[bool] = []
    short_way: list[bool] = []

    def counting(conn: object, args: tuple[bytes, ...], padding: _Padding) -> bool:
        short_way.append(_send_data(conn, args, padding))
        return short_way[-1]

    monkeypatch.setattr(ssh_transport, "_send_data", counting)

    conns: list[object] = []

    def tune(conn: object) -> None:
        hooks = (coalesce_writes, drop_empty_ignores, decrypt_lean, buffer_input)
        tuned.extend(hook(conn) for hook in hooks)
        skip_packet_logs(conn)
        conns.append(conn)

    class Server(asyncssh.SSHServer):
        def connection_made(self, conn: asyncssh.SSHServerConnection) -> None:
            tune(conn)

        def begin_auth(self, username: str) -> bool:
            return False

    class Client(asyncssh.SSHClient):
        def connection_made(self, conn: asyncssh.SSHClientConnection) -> None:
            tune(conn)

    async def echo_bytes(process: asyncssh.SSHServerProcess[bytes]) -> None:
        data = await process.stdin.read()
        process.stdout.write(hashlib.sha256(data).digest() + data[::-1])
        process.exit(0)

    server = await asyncssh.create_server(
        Server,
        "127.0.0.1",
        0,
        server_host_keys=[key],
        process_factory=echo_bytes,
        encoding=None,
        window=8 << 20,
        max_pktsize=128 << 10,
        encryption_algs=[alg],
        rekey_bytes=1 << 20,  # several key exchanges mid-stream: new keys on both paths
    )
    port = server.sockets[0].getsockname()[1]
    payload = random.Random(3).randbytes(6 << 20)
    try:
        async with asyncssh.connect(
            "127.0.0.1", port, known_hosts=None, client_factory=Client, username="u"
        ) as conn:
            done = await conn.run("x", input=payload, encoding=None, check=True)
    finally:
        server.close()
        await server.wait_closed()
    assert tuned == [True] * 8
    # Both sides received with the lean decryption (after the key exchange's NEWKEYS).
    assert {type(getattr(c, "_recv_encryption")).__name__ for c in conns} == {  # noqa: B009
        "_LeanGCM" if "gcm" in alg else "_LeanChacha"
    }
    assert done.stdout == hashlib.sha256(payload).digest() + payload[::-1]
    # 6 MiB went each way, yet each connection's count since its last key exchange is small:
    # the keys changed mid-stream, and the short ways went on with the new ones.
    assert all(getattr(c, "_rekey_bytes_sent") < 2 << 20 for c in conns)  # noqa: B009
    # Both sides sent their data the short way (6 MiB in 32-128 KiB packets, each way).
    assert short_way.count(True) >= 2 * 48


def test_packet_logs_are_skipped_only_while_asyncssh_packet_logging_is_off() -> None:
    from asyncssh.logging import SSHLogger
    from asyncssh.packet import SSHPacketLogger

    # The methods asyncssh calls for every packet, on connections and channels alike.
    for name in ("log_sent_packet", "log_received_packet"):
        assert callable(getattr(SSHPacketLogger, name, None)), name

    class Target:
        pass

    quiet, loud = Target(), Target()
    skip_packet_logs(quiet)
    assert hasattr(quiet, "log_sent_packet") and hasattr(quiet, "log_received_packet")
    level = SSHLogger._debug_level
    asyncssh.set_debug_level(3)
    try:
        skip_packet_logs(loud)
    finally:
        asyncssh.set_debug_level(level)
    assert not hasattr(loud, "log_sent_packet")


class _Collect:
    def __init__(self) -> None:
        self.parts: list[bytes] = []

    def write(self, data: bytes) -> None:
        self.parts.append(data)


def _sending_conn(enc: object, seq: int) -> object:
    """The attributes of an asyncssh connection that the short way of sending reads."""
    from types import SimpleNamespace

    return SimpleNamespace(
        _send_encryption=enc,
        _transport=_Collect(),
        _compressor=None,
        _kex_complete=True,
        _auth_complete=True,
        _rekey_bytes_sent=0,
        _rekey_bytes=1 << 30,
        _rekey_seconds=0,
        _rekey_time=0.0,
        _send_blocksize=16 if isinstance(enc, GCMEncryption) else 8,
        _send_enchdrlen=1,
        _send_seq=seq,
    )


@pytest.mark.parametrize("alg", ["aes128-gcm@openssh.com", "chacha20-poly1305@openssh.com"])
def test_channel_data_sent_the_short_way_is_what_asyncssh_s_receiver_decrypts(alg: str) -> None:
    from asyncssh.encryption import get_encryption, get_encryption_params

    key_size, iv_size, *_ = get_encryption_params(alg.encode())
    rng = random.Random(alg)
    key, iv = rng.randbytes(key_size), rng.randbytes(iv_size)

    def encryption() -> object:
        return get_encryption(alg.encode(), key, iv)

    sending, receiving = encryption(), encryption()
    conn = _sending_conn(sending, seq=41)
    padding = _Padding()
    sent = 0
    for n in (0, 1, 15, 16, 1000, 32768, 131072):
        data = rng.randbytes(n)
        args = ((7).to_bytes(4, "big"), len(data).to_bytes(4, "big") + data)
        seq = conn._send_seq  # type: ignore[attr-defined]
        assert _send_data(conn, args, padding)
        wire = b"".join(conn._transport.parts)  # type: ignore[attr-defined]
        conn._transport.parts.clear()  # type: ignore[attr-defined]
        # What asyncssh's _recv_pkthdr and _recv_packet do with it.
        first, length = receiving.decrypt_header(seq, wire[:8], 4)
        pktlen = int.from_bytes(length, "big")
        assert len(wire) == 4 + pktlen + 16
        packet = receiving.decrypt_packet(seq, first, wire[8 : 4 + pktlen], 4, wire[4 + pktlen :])
        assert packet is not None, n
        padlen = packet[0]
        block = conn._send_blocksize  # type: ignore[attr-defined]
        assert 4 <= padlen < 4 + block and pktlen % block == 0
        sent += pktlen
        assert packet[1:-padlen] == bytes([MSG_CHANNEL_DATA]) + b"".join(args)
        assert conn._send_seq == seq + 1  # type: ignore[attr-defined]
    assert conn._rekey_bytes_sent == sent  # type: ignore[attr-defined]  # counts towards rekeying


def test_the_short_way_leaves_anything_unusual_to_asyncssh() -> None:
    from asyncssh.encryption import get_encryption

    gcm = get_encryption(b"aes128-gcm@openssh.com", bytes(16), bytes(12))
    args = (bytes(4), b"\0\0\0\1x")
    assert not _send_data(_sending_conn(None, 0), args, _Padding())  # before encryption
    for name, value in (
        ("_compressor", object()),
        ("_kex_complete", False),
        ("_auth_complete", False),
        ("_rekey_bytes_sent", 1 << 30),  # a key exchange is due: asyncssh starts it
        ("_transport", None),
    ):
        conn = _sending_conn(gcm, 0)
        setattr(conn, name, value)
        assert not _send_data(conn, args, _Padding()), name
        assert conn._send_seq == 0  # type: ignore[attr-defined]


@pytest.mark.parametrize("alg", ["aes256-gcm@openssh.com", "chacha20-poly1305@openssh.com"])
def test_lean_decryption_reads_what_asyncssh_encrypts_and_rejects_a_bad_mac(alg: str) -> None:
    from asyncssh.encryption import get_encryption, get_encryption_params

    from lockgate.proxy.ssh_transport import _LEAN_RECEIVERS

    key_size, iv_size, *_ = get_encryption_params(alg.encode())
    rng = random.Random(alg)
    key, iv = rng.randbytes(key_size), rng.randbytes(iv_size)
    sending = get_encryption(alg.encode(), key, iv)
    plain_receiver = get_encryption(alg.encode(), key, iv)
    cipher = get_encryption(alg.encode(), key, iv)._cipher  # type: ignore[attr-defined]
    lean = _LEAN_RECEIVERS[type(plain_receiver)](cipher)
    assert type(lean).__name__.startswith("_Lean")
    for seq, n in enumerate((1, 100, 32768, 70000, 5)):
        payload = rng.randbytes(n + 7)
        header = len(payload).to_bytes(4, "big")
        body, mac = sending.encrypt_packet(seq, header, payload)
        for receiver in (plain_receiver, lean):
            first, _ = receiver.decrypt_header(seq, body[:16], 4)
            assert receiver.decrypt_packet(seq, first, body[16:], 4, mac) == payload
    body, mac = sending.encrypt_packet(9, b"\0\0\0\x08", b"12345678")
    first, _ = lean.decrypt_header(9, body[:16], 4)
    assert lean.decrypt_packet(9, first, body[16:], 4, bytes([mac[0] ^ 1]) + mac[1:]) is None
