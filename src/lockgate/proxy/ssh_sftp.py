"""SFTP through the gateway: every request relayed to the target or refused, files audited.

Theory of operation
-------------------
The gateway never serves SFTP itself: it relays the client's packets to the target's own
`sftp` subsystem, parsing them on the way (`protocols.ssh.sftp`). Each request that names a
path is decided on by policy (`SshRequest(kind="file")` with a direction: `download`,
`upload`, `modify` or `list`). A refused request is answered by the gateway with
SSH_FXP_STATUS "permission denied" and never reaches the target; every other one is
forwarded unchanged. Unknown packet types and unknown extensions are refused.

Each opened file is one audited command (`sftp.download` / `sftp.upload`), recorded before
the OPEN is forwarded; its outcome, when the client closes it, holds the bytes moved and
their SHA-256 (marked `non-sequential` when the client did not move the file in order, as
resumed or parallel transfers do). Changes (`remove`, `rename`, `mkdir`, `rmdir`, `setstat`,
`symlink`) are commands too, finished by the target's status reply.

Relative paths are resolved against the directory the target reported for `REALPATH "."`
(OpenSSH's clients ask for it first). Symbolic links on the target are not resolved, so
path rules are best effort against a user who can create links.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import posixpath
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from lockgate.errors import AuditUnavailable
from lockgate.model import ResultSummary
from lockgate.policy.ssh import SshRequest
from lockgate.protocols.ssh import sftp as p
from lockgate.proxy.ssh_recording import OrderedFeed, after_pending, joined

if TYPE_CHECKING:
    from lockgate.proxy.ssh_channel import SshContext

log = logging.getLogger("lockgate.ssh")

_WRITE_FLAGS = p.FXF_WRITE | p.FXF_APPEND | p.FXF_CREAT | p.FXF_TRUNC
_MODIFY = {
    p.REMOVE: "remove",
    p.RMDIR: "rmdir",
    p.MKDIR: "mkdir",
    p.SETSTAT: "setstat",
    p.RENAME: "rename",
    p.SYMLINK: "symlink",
}
_LIST = {
    p.OPENDIR: "opendir",
    p.STAT: "stat",
    p.LSTAT: "lstat",
    p.REALPATH: "realpath",
    p.READLINK: "readlink",
}
_HANDLE_ONLY = frozenset({p.READDIR, p.FSTAT, p.FSETSTAT})
_EXTENSIONS_BY_HANDLE = frozenset(
    {
        "fstatvfs@openssh.com",
        "fsync@openssh.com",
        "copy-data",
        "limits@openssh.com",
        "users-groups-by-id@openssh.com",
    }
)
_EXTENSIONS_MODIFY = {
    "posix-rename@openssh.com": 2,
    "hardlink@openssh.com": 2,
    "lsetstat@openssh.com": 1,
}
_EXTENSIONS_LIST = {"statvfs@openssh.com", "expand-path@openssh.com", "home-directory"}


@dataclass
class _File:
    seq: int
    path: str
    direction: str
    started: float
    bytes: int = 0
    next_offset: int = 0
    sequential: bool = True
    sha: hashlib._Hash = field(default_factory=hashlib.sha256)
    feed: OrderedFeed = field(init=False)

    def __post_init__(self) -> None:
        sha = self.sha

        def consume(batch: list[bytes]) -> None:
            sha.update(joined(batch))

        self.feed = OrderedFeed(consume)

    def add(self, offset: int, data: memoryview) -> None:
        self.bytes += len(data)
        if offset == self.next_offset and self.sequential:
            # A copy (far cheaper than the hash) to hash on the recording thread.
            self.feed.add(bytes(data))
            self.next_offset += len(data)
        else:
            self.sequential = False

    def digest(self) -> str:
        """The file's SHA-256 once every byte handed over is hashed."""
        self.feed.flush()
        return after_pending(self.sha.hexdigest)


class SftpGuard:
    """Parses one SFTP channel both ways; decides, audits and relays or refuses."""

    def __init__(self, ctx: SshContext, reply: Callable[[bytes], None]) -> None:
        self.ctx = ctx
        self.reply = reply
        self.send: Callable[[bytes], None] = lambda data: None
        self._in = bytearray()
        self._out = bytearray()
        self._held: asyncio.Future[None] | None = None
        self._home: str | None = None
        self._realpath_dot: set[int] = set()
        self._opening: dict[int, tuple[int, str, str]] = {}  # request id -> seq, path, dir
        self._files: dict[bytes, _File] = {}
        self._reads: dict[int, tuple[bytes, int]] = {}  # request id -> handle, offset
        self._changes: dict[int, int] = {}  # request id -> seq
        self.broken = False

    # -- client -> target ----------------------------------------------------------------------
    def from_client(self, data: bytes) -> bytes:
        """Bytes to forward now; refused requests are answered with `reply`."""
        self._in += data
        if self._held is not None or self.broken:
            return b""
        return self._drain()

    def _drain(self) -> bytes:
        buf = self._in
        try:
            packets, used = p.split_packets(buf)
        except p.SftpProtocolError as exc:
            return self._break(str(exc))
        out: list[bytes | memoryview] = []
        view = memoryview(buf)
        run_start = 0
        consumed = used
        for pk in packets:
            try:
                verdict = self._client_packet(buf, pk)
            except p.SftpProtocolError as exc:
                view.release()
                return self._break(str(exc))
            if verdict is True:
                continue
            if run_start < pk.start:
                out.append(bytes(view[run_start : pk.start]))
            run_start = pk.end
            if isinstance(verdict, asyncio.Future):
                # Hold this request and everything after it until its record is durable.
                out_now = b"".join(out)
                rest = bytes(view[pk.start :])
                view.release()
                buf.clear()
                buf += rest
                self._hold(verdict, pk)
                return out_now
        if run_start < consumed:
            out.append(bytes(view[run_start:consumed]))
        view.release()
        del buf[:consumed]
        return b"".join(out)

    def _hold(self, pending: asyncio.Future[None], packet: p.Packet) -> None:
        self._held = pending
        length = packet.end - packet.start

        def resume(f: asyncio.Future[None]) -> None:
            self._held = None
            if f.exception() is not None:
                rid = packet.request_id
                del self._in[:length]
                self._forget(rid)
                self.reply(p.status(rid, p.FX_FAILURE, "lockgate: not run: audit unavailable"))
            else:
                first = bytes(self._in[:length])
                del self._in[:length]
                self.send(first)
            more = self._drain()
            if more:
                self.send(more)

        pending.add_done_callback(resume)

    def _break(self, why: str) -> bytes:
        log.warning("ssh %s: sftp stream is not valid SFTP: %s", self.ctx.session.id, why)
        self.broken = True
        self._in.clear()
        return b""

    def _client_packet(self, buf: bytearray, pk: p.Packet) -> bool | asyncio.Future[None] | None:
        """True: forward; False/None: refused and answered; a future: forward when done."""
        t = pk.type
        if t == p.INIT or t in _HANDLE_ONLY:
            return True
        f = p.Fields(buf, pk)
        rid = pk.request_id
        if t == p.READ:
            handle, offset = f.string(), f.u64()
            if handle in self._files:
                self._reads[rid] = (handle, offset)
            return True
        if t == p.WRITE:
            handle, offset, data = f.string(), f.u64(), f.data_view()
            file = self._files.get(handle)
            if file is not None:
                if not self._within_cap(len(data)):
                    data.release()
                    return self._deny(rid, "the session's transfer limit is reached")
                file.add(offset, data)
            data.release()
            return True
        if t == p.CLOSE:
            handle = f.string()
            file = self._files.pop(handle, None)
            if file is not None:
                self._finish_file(file)
            return True
        if t == p.OPEN:
            path, flags = self._path(f.text()), f.u32()
            direction = "upload" if flags & _WRITE_FLAGS else "download"
            return self._command(rid, f"sftp.{direction}", f"{direction} {path}", path, direction)
        if t in _MODIFY:
            what = _MODIFY[t]
            paths = [self._path(f.text())]
            if t in (p.RENAME, p.SYMLINK):
                paths.append(self._path(f.text()))
            return self._command(
                rid, f"sftp.{what}", f"{what} {' '.join(paths)}", *paths, direction="modify"
            )
        if t in _LIST:
            raw = f.text()
            if t == p.REALPATH and raw in (".", ""):
                self._realpath_dot.add(rid)
            return self._check(rid, self._path(raw), "list")
        if t == p.EXTENDED:
            name = f.text()
            if name in _EXTENSIONS_BY_HANDLE:
                return True
            if name in _EXTENSIONS_LIST:
                return self._check(
                    rid, self._path(f.text()) if name != "home-directory" else "", "list"
                )
            if name in _EXTENSIONS_MODIFY:
                paths = [self._path(f.text()) for _ in range(_EXTENSIONS_MODIFY[name])]
                short = name.split("@")[0]
                return self._command(
                    rid, f"sftp.{short}", f"{short} {' '.join(paths)}", *paths, direction="modify"
                )
            self.reply(p.status(rid, p.FX_OP_UNSUPPORTED, f"lockgate: {name} is not relayed"))
            return False
        self.reply(p.status(rid, p.FX_OP_UNSUPPORTED, "lockgate: unsupported SFTP request"))
        return False

    def _path(self, raw: str) -> str:
        if raw.startswith("/") or self._home is None:
            return raw
        return posixpath.normpath(posixpath.join(self._home, raw or "."))

    def _decide_paths(self, paths: tuple[str, ...], direction: str) -> str | None:
        ctx = self.ctx
        for path in paths:
            request = SshRequest("file", text=f"{direction} {path}", path=path, direction=direction)
            d = ctx.gate.ssh_policy.decide(ctx.session.principal, ctx.resource.name, request)
            if not d.allowed:
                return d.reason
        return None

    def _check(self, rid: int, path: str, direction: str) -> bool:
        reason = self._decide_paths((path,), direction) if path else None
        if reason is None:
            return True
        self._record_denied(f"sftp.{direction}", f"{direction} {path}", (path,), direction)
        return self._deny(rid, reason)

    def _deny(self, rid: int, reason: str) -> bool:
        self._realpath_dot.discard(rid)
        self.reply(p.status(rid, p.FX_PERMISSION_DENIED, f"lockgate: {reason}"))
        return False

    def _record_denied(self, kind: str, text: str, paths: tuple[str, ...], direction: str) -> None:
        ctx = self.ctx
        seq = ctx.next_seq()
        request = SshRequest("file", text=text, path=paths[0], direction=direction)
        admission = ctx.gate.admit_ssh(ctx.session, seq, request, kind)
        # Decide with every path (a rename has two); the command row keeps the first's.
        try:
            pending = ctx.gate.record([admission])
            if pending is not None:
                pending.add_done_callback(lambda f: f.exception())
        except AuditUnavailable:
            log.error("ssh %s: a refused SFTP request could not be recorded", ctx.session.id)
        ctx.finish(seq, ResultSummary(status="denied"))

    def _command(
        self, rid: int, kind: str, text: str, *paths: str, direction: str = ""
    ) -> bool | asyncio.Future[None]:
        direction = direction or kind.split(".")[1]
        reason = self._decide_paths(paths, direction)
        if reason is not None:
            self._record_denied(kind, text, paths, direction)
            return self._deny(rid, reason)
        ctx = self.ctx
        seq = ctx.next_seq()
        request = SshRequest("file", text=text, path=paths[0], direction=direction)
        admission = ctx.gate.admit_ssh(ctx.session, seq, request, kind)
        if direction in ("download", "upload"):
            self._opening[rid] = (seq, paths[0], direction)
        else:
            self._changes[rid] = seq
        try:
            pending = ctx.gate.record([admission])
        except AuditUnavailable:
            self._forget(rid)
            self.reply(p.status(rid, p.FX_FAILURE, "lockgate: not run: audit unavailable"))
            return False
        return True if pending is None else pending

    def _forget(self, rid: int) -> None:
        opening = self._opening.pop(rid, None)
        seq = opening[0] if opening else self._changes.pop(rid, 0)
        if seq:
            self.ctx.finish(seq, ResultSummary(status="not run", error_message="audit unavailable"))

    def _within_cap(self, n: int) -> bool:
        cap = self.ctx.gate.manifest.ssh.max_transfer_bytes
        if cap is not None and self.ctx.transferred + n > cap:
            return False
        self.ctx.transferred += n
        return True

    def _finish_file(self, file: _File) -> None:
        import time

        digest = f"sha256:{file.digest()}" if file.sequential else "non-sequential"
        self.ctx.finish(
            file.seq,
            ResultSummary(
                status=f"{file.direction} {digest}",
                bytes_out=file.bytes,
                duration_ms=(time.monotonic() - file.started) * 1000,
            ),
        )

    # -- target -> client ----------------------------------------------------------------------
    def from_server(self, data: bytes) -> None:
        """Observe the target's replies (they are forwarded unchanged by the caller)."""
        if self.broken:
            return
        buf = self._out
        buf += data
        try:
            packets, used = p.split_packets(buf)
            for pk in packets:
                self._server_packet(buf, pk)
        except p.SftpProtocolError as exc:
            log.warning("ssh %s: target's sftp stream: %s", self.ctx.session.id, exc)
            self.broken = True
            buf.clear()
            return
        del buf[:used]

    def _server_packet(self, buf: bytearray, pk: p.Packet) -> None:
        import time

        t, rid = pk.type, pk.request_id
        if t == p.DATA:
            read = self._reads.pop(rid, None)
            if read is not None:
                file = self._files.get(read[0])
                if file is not None:
                    data = p.Fields(buf, pk).data_view()
                    if self._within_cap(len(data)):
                        file.add(read[1], data)
                    data.release()
            return
        if t == p.HANDLE:
            opening = self._opening.pop(rid, None)
            if opening is not None:
                seq, path, direction = opening
                handle = p.Fields(buf, pk).string()
                self._files[handle] = _File(seq, path, direction, time.monotonic())
            return
        if t == p.STATUS:
            self._reads.pop(rid, None)
            f = p.Fields(buf, pk)
            code = f.u32()
            message = f.text() if code != p.FX_OK else ""
            opening = self._opening.pop(rid, None)
            seq = opening[0] if opening else self._changes.pop(rid, 0)
            if seq:
                self.ctx.finish(
                    seq,
                    ResultSummary(
                        status="ok" if code == p.FX_OK else "failed",
                        error_code=None if code == p.FX_OK else str(code),
                        error_message=message[:1000] or None,
                    ),
                )
            return
        if t == p.NAME and rid in self._realpath_dot:
            self._realpath_dot.discard(rid)
            f = p.Fields(buf, pk)
            if f.u32() >= 1:
                home = f.text()
                if home.startswith("/"):
                    self._home = home

    def close(self) -> None:
        """The channel ended: files still open are finished with what was seen."""
        for file in self._files.values():
            self._finish_file(file)
        self._files.clear()
