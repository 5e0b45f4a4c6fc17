"""One SSH session channel (shell, exec or subsystem), relayed to the target and recorded.

Theory of operation
-------------------
The client's channel request (`exec`, `shell`, `subsystem`) is accepted at once, then
`session_started` runs `_start`: the request becomes a command that policy decides on and the
audit journal records *before* the gateway opens the same kind of channel on the target. A
denied or unrecordable command never reaches the target: the client reads why on stderr and
gets exit status 126 (denied) or 1 (not recorded).

An exec command a `review` rule matches is held first (`_review`): an approval request is
stored through the gate's broker, the client is told on stderr which request it waits for
and how a reviewer approves it, and the command runs (once) on approval or is refused with
the outcome; a client that goes away withdraws the request.

While the target's channel opens, client bytes are held (and the client paused). Then bytes
flow both ways as they come; each side's full send window pauses the other side's reading.
Shell output goes to an asciicast recording; exec and subsystem streams to raw logs. An SFTP
subsystem is parsed packet by packet (`ssh_sftp.SftpGuard`): every file operation is decided
on and audited, and refused ones are answered by the gateway with a permission error.

For shells with deny or review rules on commands, typed lines are followed (best effort:
editing keys, history and completion are invisible). A line a deny rule matches ends the
channel before its Enter key reaches the target. A line a review rule matches is held at the
prompt (`_hold_line`): its Enter key is kept back, the terminal says which approval request
waits and how a reviewer approves it, and on approval the Enter key is sent; on denial,
expiry or Ctrl-C (which withdraws the request) a Ctrl-C is sent instead, which clears the
line. Other keys typed while a line waits are dropped, not queued: they were typed before
anyone knew whether the line would run. The session goes on either way.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any

import asyncssh

from lockgate.approvals.broker import ApprovalOutcome
from lockgate.config.ssh import SshResource
from lockgate.errors import AuditUnavailable
from lockgate.gate import Admission, Gate, HeldForReview
from lockgate.model import Decision, DecisionKind, ResultSummary, Session
from lockgate.policy.guardrails import Verdict
from lockgate.policy.ssh import SshRequest, runs_sftp_server
from lockgate.proxy import ssh_recording as rec
from lockgate.proxy.busypoll import BusyPoll
from lockgate.proxy.ssh_sftp import SftpGuard
from lockgate.proxy.ssh_transport import skip_packet_logs
from lockgate.tasks import spawn

if TYPE_CHECKING:
    from lockgate.proxy.ssh_agent_x11 import X11Grant
    from lockgate.proxy.ssh_forward import ForwardedConnection

log = logging.getLogger("lockgate.ssh")

EXIT_DENIED = 126
EXIT_NOT_RECORDED = 1
EXIT_UPSTREAM = 255


@dataclass
class SshContext:
    """What every channel of one gateway SSH connection shares."""

    gate: Gate
    session: Session
    resource: SshResource
    upstream: asyncssh.SSHClientConnection
    bytes_in: int = 0
    bytes_out: int = 0
    transferred: int = 0
    _seq: int = 0
    channels: set[ChannelRelay] = field(default_factory=set)
    forwards: set[ForwardedConnection] = field(default_factory=set)
    # Refusals the client's SSH would not show (agent, X11): told on the next channel.
    notices: list[str] = field(default_factory=list)
    # Allowed agent and X11 forwarding (`ssh_agent_x11`): session channels to the target ask
    # for agent forwarding, and those of the client channels in `x11_channels` for X11.
    agent_forwarding: bool = False
    x11: X11Grant | None = None
    x11_channels: set[object] = field(default_factory=set)
    # The listener's busy polling (`busypoll`), told of every chunk a session channel gets.
    poll: BusyPoll | None = None

    def next_seq(self) -> int:
        self._seq += 1
        return self._seq

    async def record(self, admission: Admission) -> None:
        """Make a command durable before it runs; raises AuditUnavailable."""
        pending = self.gate.record([admission])
        if pending is not None:
            await pending

    def finish(self, seq: int, summary: ResultSummary) -> None:
        self.gate.command_finished(self.session, seq, summary)


class _Upstream(asyncssh.SSHClientSession[bytes]):
    """The target's side of a relayed channel."""

    def __init__(self, relay: ChannelRelay) -> None:
        self.relay = relay

    def data_received(self, data: bytes, datatype: asyncssh.DataType) -> None:
        poll = self.relay.ctx.poll
        if poll is not None:
            poll.kick()
        self.relay.from_target(data, datatype)

    def eof_received(self) -> bool:
        self.relay.target_eof()
        return True

    def connection_lost(self, exc: Exception | None) -> None:
        self.relay.target_closed(exc)

    def pause_writing(self) -> None:
        self.relay.chan.pause_reading()

    def resume_writing(self) -> None:
        self.relay.chan.resume_reading()


class ChannelRelay(asyncssh.SSHServerSession[bytes]):
    """The client's side of a relayed session channel."""

    def __init__(self, ctx: SshContext) -> None:
        self.ctx = ctx
        self.chan: asyncssh.SSHServerChannel[bytes] = None  # type: ignore[assignment]
        self.kind = "shell"
        self.command: str | None = None
        self.subsystem: str | None = None
        self.pty: tuple[str, tuple[int, int, int, int]] | None = None
        self.up: asyncssh.SSHClientChannel[bytes] | None = None
        self.seq = 0
        self.started = 0.0
        self._held: list[bytes] = []
        self._held_eof = False
        self._closed = False
        self._cast: rec.CastRecorder | None = None
        self._raw: rec.RawLog | None = None
        self._sftp: SftpGuard | None = None
        self._line: _LineTracker | None = None
        self._out = 0
        self._ended_by: str | None = None
        self._end_status = "ended by rule"
        self._request_id: str | None = None
        self._holding = False
        # A typed line held for review: its seq while it waits (keys typed meanwhile are
        # dropped), and its Enter key.
        self._line_seq = 0
        self._held_enter = b""

    # -- asyncssh callbacks ---------------------------------------------------------------
    def connection_made(self, chan: asyncssh.SSHServerChannel[bytes]) -> None:
        self.chan = chan
        skip_packet_logs(chan)
        self.ctx.channels.add(self)

    def pty_requested(
        self, term_type: str, term_size: tuple[int, int, int, int], term_modes: Any
    ) -> bool:
        self.pty = (term_type, term_size)
        return True

    def shell_requested(self) -> bool:
        self.kind = "shell"
        return True

    def exec_requested(self, command: str) -> bool:
        self.kind = "exec"
        self.command = command
        return True

    def subsystem_requested(self, subsystem: str) -> bool:
        self.kind = "subsystem"
        self.subsystem = subsystem
        return True

    def session_started(self) -> None:
        spawn(self._start(), name="ssh-channel")

    def data_received(self, data: bytes, datatype: asyncssh.DataType) -> None:
        poll = self.ctx.poll
        if poll is not None:
            poll.kick()
        self.ctx.bytes_in += len(data)
        if self.up is None:
            self._held.append(data)
            self.chan.pause_reading()
            return
        self._to_target(data)

    def eof_received(self) -> bool:
        if self.up is None:
            self._held_eof = True
        else:
            self.up.write_eof()
        return True

    def terminal_size_changed(self, width: int, height: int, pixwidth: int, pixheight: int) -> None:
        if self._cast is not None:
            self._cast.resize(width, height)
        if self.up is not None:
            self.up.change_terminal_size(width, height, pixwidth, pixheight)

    def signal_received(self, signal: str) -> None:
        if self.up is not None:
            self.up.send_signal(signal)

    def break_received(self, msec: int) -> bool:
        if self.up is not None:
            self.up.send_break(msec)
        return True

    def pause_writing(self) -> None:
        if self.up is not None:
            self.up.pause_reading()

    def resume_writing(self) -> None:
        if self.up is not None:
            self.up.resume_reading()

    def connection_lost(self, exc: Exception | None) -> None:
        self.ctx.channels.discard(self)
        self.ctx.x11_channels.discard(self.chan)
        self._closed = True
        rid, self._request_id = self._request_id, None
        if rid is not None:
            why = self._ended_by or "the client closed the channel"
            spawn(self.ctx.gate.broker.withdraw(rid, why), name="ssh-withdraw")
        if self.up is not None:
            self.up.close()
        if not self._holding:
            self._finish(None)

    # -- starting ----------------------------------------------------------------------------
    def _request(self) -> tuple[SshRequest, str]:
        if self.kind == "exec":
            assert self.command is not None
            return SshRequest("exec", text=self.command), "ssh.exec"
        if self.kind == "subsystem":
            name = self.subsystem or ""
            return SshRequest(
                "subsystem", text=f"subsystem {name}", subsystem=name
            ), "ssh.subsystem"
        what = (
            f"shell (pty {self.pty[0]} {self.pty[1][0]}x{self.pty[1][1]})" if self.pty else "shell"
        )
        return SshRequest("shell", text=what), "ssh.shell"

    async def _start(self) -> None:
        ctx = self.ctx
        request, kind = self._request()
        self.seq = ctx.next_seq()
        self.started = time.monotonic()
        notices, ctx.notices[:] = list(ctx.notices), []
        for notice in notices:
            self._tell(f"lockgate: {notice}")
        admission = ctx.gate.admit_ssh(ctx.session, self.seq, request, kind)
        status = "denied"
        if admission.command.decision.kind is DecisionKind.REVIEW:
            self._holding = True
            try:
                admission, status = await self._review(
                    admission, "shell" if self.kind == "shell" else "command"
                )
            finally:
                self._holding = False
        try:
            await ctx.record(admission)
        except AuditUnavailable as exc:
            self._refuse(f"not run: {exc.message}", EXIT_NOT_RECORDED, record=False)
            return
        decision = admission.command.decision
        if not decision.allowed:
            log.info("ssh %s: %s denied: %s", ctx.session.id, kind, decision.reason)
            self._refuse(f"refused: {decision.reason}", EXIT_DENIED, status=status)
            return
        if self._closed:
            self._finish(None)
            return
        try:
            await self._open_target()
        except (OSError, asyncssh.Error) as exc:
            reason = getattr(exc, "reason", "") or type(exc).__name__
            self._refuse(
                f"the target did not open the channel ({reason})", EXIT_UPSTREAM, status="error"
            )
            return
        held, self._held = self._held, []
        for data in held:
            self._to_target(data)
        if self._held_eof and self.up is not None:
            self.up.write_eof()
        self.chan.resume_reading()

    def _tell(self, line: str) -> None:
        """One line on the client's stderr (CR LF on a terminal), and in the recording."""
        end = "\r\n" if self.pty else "\n"
        data = f"{line}{end}".encode()
        if self._cast is not None:
            self._cast.output(data)
        self.chan.write_stderr(data)

    async def _review(self, admission: Admission, what: str = "command") -> tuple[Admission, str]:
        """Hold a command (or typed `line`) for a reviewer: the admission to go on with, a status.

        `what` names it in the lines the client reads.
        """
        ctx = self.ctx
        gate = ctx.gate
        command = admission.command
        decision = command.decision
        rule = gate.approval_rules.for_statement(ctx.session.resource, decision.rule)
        if rule is None:
            why = (
                f"{decision.reason}, but no approval rule reviews rule '{decision.rule}' on "
                f"'{ctx.session.resource}'"
            )
            return _decided(admission, DecisionKind.DENY, why), "denied"
        held = HeldForReview(command, Verdict(decision, decision.reason), rule)
        try:
            request = await gate.hold(ctx.session, held)
        except Exception:
            log.exception("ssh %s: could not store an approval request", ctx.session.id)
            outcome = ApprovalOutcome("-", "failed", "the approval request could not be stored")
        else:
            if self._closed:
                why = self._ended_by or "the client closed the channel"
                await gate.broker.withdraw(request.id, why)
                note = f"approval request {request.id} withdrawn: {why}"
                return _decided(admission, DecisionKind.DENY, f"{decision.reason} [{note}]"), (
                    "review withdrawn"
                )
            self._request_id = request.id
            log.info("ssh %s: %s held for review as request %s", ctx.session.id, what, request.id)
            self._tell(
                f"lockgate: this {what} is held for review (rule: {decision.rule}); "
                f"waiting for approval request {request.id}"
            )
            self._tell(
                f"lockgate: a reviewer approves it with: lockgate reviews approve {request.id} "
                f"--reason TEXT (or denies it with: lockgate reviews deny {request.id} --reason "
                f"TEXT); it expires at {request.expires_at:%Y-%m-%d %H:%M:%S} UTC"
            )
            if what == "line":
                self._tell("lockgate: Ctrl-C withdraws it; other keys are ignored until then")
            outcome = await gate.broker.wait(request)
            self._request_id = None
        note = f"approval request {outcome.request_id} {outcome.status}: {outcome.reason}"
        if outcome.approved and not self._closed:
            return _decided(admission, DecisionKind.ALLOW, f"{decision.reason} [{note}]"), ""
        status = f"review {outcome.status}"
        return _decided(admission, DecisionKind.DENY, f"{decision.reason} [{note}]"), status

    def end_by_gateway(self, message: str, hint: str | None, status: str) -> None:
        """The session is being ended (token, grant, revocation, max_session): say why, close."""
        self._ended_by = message
        self._end_status = f"ended: {status}"
        if self._closed:
            return
        lines = [message] + ([f"hint: {hint}"] if hint else [])
        for line in lines:
            if self._cast is not None:
                self._cast.output(f"\r\n{line}\r\n".encode())
        try:
            for line in lines:
                self._tell(line)
            self._closed = True
            if self.up is not None:
                self.up.close()
            # Closing the channel first lets the client print those lines before it goes.
            self.chan.exit(EXIT_UPSTREAM)
        except (OSError, asyncssh.Error):
            pass

    async def _open_target(self) -> None:
        ctx = self.ctx
        folder = rec.session_dir(ctx.gate.manifest.state_dir, ctx.session.id)
        settings = ctx.gate.manifest.ssh
        env = dict(self.chan.get_environment())
        kwargs: dict[str, Any] = {"env": env, "encoding": None}
        if self.pty is not None:
            term, size = self.pty
            kwargs.update(term_type=term, term_size=size, request_pty="force")
        else:
            kwargs["request_pty"] = False
        if ctx.x11 is not None and self.chan in ctx.x11_channels:
            # A target without X11 forwarding still runs the command, as with OpenSSH.
            # (asyncssh hands the gateway no single-connection flag: any number may open.)
            kwargs.update(x11_forwarding="ignore_failure", x11_display="lockgate")
        if self.kind == "exec":
            kwargs["command"] = self.command
        elif self.kind == "subsystem":
            kwargs["subsystem"] = self.subsystem
        if self.kind == "shell":
            width, height = (self.pty[1][0], self.pty[1][1]) if self.pty else (80, 24)
            self._cast = rec.CastRecorder(
                folder / f"{self.seq}.cast.gz",
                width,
                height,
                self.pty[0] if self.pty else "",
                record_input=settings.record_input,
                title=f"{ctx.session.principal.subject} on {ctx.resource.name}",
            )
            if ctx.gate.ssh_policy.has_command_rules(ctx.session.principal, ctx.resource.name):
                self._line = _LineTracker()
        else:
            # `sftp -s /usr/lib/openssh/sftp-server` asks for SFTP as an exec command.
            sftp = self.subsystem == "sftp" or runs_sftp_server(self.command or "")
            self._raw = rec.RawLog(folder / str(self.seq), settings.log_cap_bytes, whole=not sftp)
            if sftp:
                self._sftp = SftpGuard(ctx, self._reply_to_client)
        chan, _ = await ctx.upstream.create_session(lambda: _Upstream(self), **kwargs)
        skip_packet_logs(chan)
        self.up = chan
        if self._sftp is not None:
            self._sftp.send = chan.write

    def _refuse(self, message: str, code: int, *, status: str = "", record: bool = True) -> None:
        if not self._closed:
            self._tell(f"lockgate: {message}")
            self.chan.exit(code)
        if record:
            self.ctx.finish(self.seq, ResultSummary(status=status, error_message=message[:1000]))
            self.seq = 0

    # -- relaying ----------------------------------------------------------------------------
    def _to_target(self, data: bytes) -> None:
        up = self.up
        assert up is not None
        if self._line_seq:
            self._while_line_waits(data)
            return
        if self._raw is not None:
            self._raw.input.add(data)
        if self._cast is not None:
            self._cast.input(data)
        if self._line is not None:
            cut = self._line.feed(data, self._check_line)
            if cut is not None:
                if cut:
                    up.write(data[:cut])
                if self._line_seq:
                    # Held for review: the Enter key waits; what came with it is dropped.
                    self._held_enter = data[cut : cut + 1]
                    return
                self._end_by_rule()
                return
        if self._sftp is not None:
            data = self._sftp.from_client(data)
            if not data:
                return
        up.write(data)

    def _reply_to_client(self, data: bytes) -> None:
        self.chan.write(data)

    def from_target(self, data: bytes, datatype: asyncssh.DataType) -> None:
        self.ctx.bytes_out += len(data)
        self._out += len(data)
        if self._cast is not None:
            self._cast.output(data)
        if datatype == asyncssh.EXTENDED_DATA_STDERR:
            if self._raw is not None:
                self._raw.stderr.add(data)
            self.chan.write_stderr(data)
            return
        if self._raw is not None:
            self._raw.output.add(data)
        if self._sftp is not None:
            self._sftp.from_server(data)
        self.chan.write(data)

    def target_eof(self) -> None:
        if not self._closed:
            self.chan.write_eof()

    def target_closed(self, exc: Exception | None) -> None:
        up = self.up
        if up is not None and not self._closed:
            signal = up.get_exit_signal()
            status = up.get_exit_status()
            if signal is not None:
                name, core, msg, lang = signal
                self.chan.exit_with_signal(name, core, msg, lang)
            elif status is not None and status >= 0:
                self.chan.exit(status)
            else:
                self.chan.close()
        self._finish(exc)

    # -- shell lines ------------------------------------------------------------------------
    def _check_line(self, line: str) -> bool:
        """True when the typed line may run now (False: it is refused, or held for review)."""
        ctx = self.ctx
        request = SshRequest("shell-line", text=line)
        decision = ctx.gate.ssh_policy.decide(ctx.session.principal, ctx.resource.name, request)
        if decision.allowed:
            return True
        seq = ctx.next_seq()
        admission = ctx.gate.admit_ssh(ctx.session, seq, request, "ssh.shell-line")
        if admission.command.decision.kind is DecisionKind.REVIEW:
            self._line_seq = seq
            spawn(self._hold_line(admission), name="ssh-line-review")
            return False
        self._ended_by = decision.reason
        try:
            pending = ctx.gate.record([admission])
            if pending is not None:
                pending.add_done_callback(lambda f: f.exception())
        except AuditUnavailable:
            log.error("ssh %s: a denied shell line could not be recorded", ctx.session.id)
        ctx.finish(seq, ResultSummary(status="denied", error_message=decision.reason[:1000]))
        return False

    async def _hold_line(self, admission: Admission) -> None:
        """Wait for a reviewer, then send the held Enter key, or clear the line with Ctrl-C."""
        ctx = self.ctx
        seq = admission.command.seq
        self._tell("")
        admission, status = await self._review(admission, "line")
        decision = admission.command.decision
        try:
            await ctx.record(admission)
        except AuditUnavailable as exc:
            decision = Decision(DecisionKind.DENY, decision.rule, f"not run: {exc.message}")
            status = "not recorded"
        enter, self._held_enter = self._held_enter, b""
        self._line_seq = 0
        up = self.up
        if self._closed or up is None:
            ctx.finish(seq, ResultSummary(status="closed", error_message=decision.reason[:1000]))
            return
        if decision.allowed:
            self._tell("lockgate: approved; the line runs now")
            up.write(enter or b"\r")
            ctx.finish(seq, ResultSummary(status="approved"))
            return
        self._tell(f"lockgate: not run: {decision.reason}")
        up.write(b"\x03")  # clears the typed line at a shell prompt (and in most REPLs)
        ctx.finish(seq, ResultSummary(status=status, error_message=decision.reason[:1000]))

    def _while_line_waits(self, data: bytes) -> None:
        """Keys typed while a line waits for review: Ctrl-C withdraws it, the rest is dropped."""
        rid = self._request_id
        if b"\x03" in data and rid is not None:
            self._request_id = None
            why = "withdrawn at the prompt with Ctrl-C"
            spawn(self.ctx.gate.broker.withdraw(rid, why), name="ssh-withdraw")

    def _end_by_rule(self) -> None:
        message = f"\r\nlockgate: session ended: {self._ended_by}\r\n"
        self.chan.write(message.encode())
        if self._cast is not None:
            self._cast.output(message.encode())
        self._closed = True
        if self.up is not None:
            self.up.close()
        self.chan.exit(EXIT_DENIED)

    # -- the end -----------------------------------------------------------------------------
    def _finish(self, exc: Exception | None) -> None:
        if not self.seq:
            return
        seq, self.seq = self.seq, 0
        up = self.up
        status_code = up.get_exit_status() if up is not None else None
        signal = up.get_exit_signal() if up is not None else None
        if self._ended_by is not None:
            status = self._end_status
        elif signal is not None:
            status = f"signal {signal[0]}"
        elif status_code is not None and status_code >= 0:
            status = f"exit {status_code}"
        else:
            status = "closed"
        extra = {
            "session": self.ctx.session.id,
            "seq": seq,
            "kind": self.kind,
            "status": status,
        }
        digest = ""
        try:
            if self._cast is not None:
                digest = self._cast.close(extra)
            elif self._raw is not None:
                if self._sftp is not None:
                    self._sftp.close()
                digest = self._raw.close(extra)
        except OSError as exc2:
            log.error("ssh %s: could not finish recording %d: %s", self.ctx.session.id, seq, exc2)
        if digest:
            status += f"; recording sha256:{digest}"
        self.ctx.finish(
            seq,
            ResultSummary(
                status=status,
                error_message=self._ended_by,
                bytes_out=self._out,
                duration_ms=(time.monotonic() - self.started) * 1000,
            ),
        )


def _decided(admission: Admission, kind: DecisionKind, reason: str) -> Admission:
    """The admission with the reviewer's (or the missing reviewer's) decision."""
    command = admission.command
    decision = Decision(kind, command.decision.rule, reason)
    return Admission(replace(command, decision=decision), admission.analysis)


class _LineTracker:
    """Follows what is typed at a shell prompt, to check each line before its Enter key."""

    def __init__(self) -> None:
        self.line: list[str] = []
        self._escape = False

    def feed(self, data: bytes, check: Callable[[str], bool]) -> int | None:
        """None if all of `data` may go on; else the offset of the refused Enter key."""
        text = data.decode("utf-8", "replace")
        if len(text) != len(data):
            # Multi-byte characters: map offsets byte by byte instead.
            return self._feed_bytes(data, check)
        for i, ch in enumerate(text):
            if self._step(ch) and not self._enter(check):
                return i
        return None

    def _feed_bytes(self, data: bytes, check: Callable[[str], bool]) -> int | None:
        for i in range(len(data)):
            ch = chr(data[i]) if data[i] < 0x80 else "\ufffd"
            if self._step(ch) and not self._enter(check):
                return i
        return None

    def _enter(self, check: Callable[[str], bool]) -> bool:
        line = "".join(self.line)
        self.line = []
        return not line.strip() or check(line)

    def _step(self, ch: str) -> bool:
        """Apply one character; True when it is Enter."""
        if self._escape:
            if ch.isalpha() or ch == "~":
                self._escape = False
            return False
        if ch in "\r\n":
            return True
        if ch == "\x1b":
            self._escape = True
        elif ch in "\x7f\x08":
            if self.line:
                self.line.pop()
        elif ch in "\x15\x03":  # Ctrl-U, Ctrl-C
            self.line = []
        elif ch == "\x17":  # Ctrl-W
            while self.line and self.line[-1] == " ":
                self.line.pop()
            while self.line and self.line[-1] != " ":
                self.line.pop()
        elif ch >= " " or ch == "\t":
            self.line.append(ch)
        return False
