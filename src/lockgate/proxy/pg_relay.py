"""The PostgreSQL relay: moves bytes between client and upstream, admitting every command.

Theory of operation
-------------------
Client → upstream. Each chunk the client sends is split into whole messages (a partial
tail waits for the next chunk). Messages that carry a command (`Query`, `Execute`) are
admitted through the gate, which records them write-ahead; the chunk is held (client
reading paused) until every record in it is durable, then forwarded with ONE write. A
command that is refused is dropped and answered locally with an ErrorResponse.

Upstream → client. Chunks are forwarded whole. To know which command a response belongs
to, the relay keeps `_pending`, a FIFO of what the client asked, in order: `Q` (simple
query), `P`/`B`/`D`/`C`/`E` (extended-protocol steps), `S` (Sync) and `L` (a local answer
the gateway must deliver in turn). Response messages pop it: `1` `2` `3` `n`/`T` finish
`P` `B` `C` `D`; `C`/`s`/`I`/`E` finish an `E`xecute; after an error in the extended
protocol the server skips to the next Sync, and so does the FIFO; `Z` finishes `Q` or `S`.
When an `L` reaches the head, its bytes are written at exactly that point of the stream,
so a refusal reaches the client in the order it expects.

Guardrail refusals go through the server instead. A refused `Query`/fastpath call is
replaced by a fixed statement that fails to parse (`_FAIL_SQL`), and a refused `Parse` or
`Execute` by a `Parse` of it; the server answers with an error, which the relay swaps for
the refusal (the op's `local`). Why not answer locally: inside a transaction block the
client must see PostgreSQL's failed-transaction semantics (`25P02` until ROLLBACK), and
only the server can put its transaction in that state; outside one, the failing statement
has no effect. The refused text itself never reaches the server, and extended-protocol
messages after the refusal are skipped up to `Sync`, as the server would skip them.

Held for review. When the gate says a command needs a reviewer (`HeldForReview`), the
plan stops just before it: what precedes it in the chunk goes upstream as usual, and the
rest of the chunk (the held command first) waits at the head of `_held` while the
approval request is stored, announced to the client with a NoticeResponse, and waited
for (the broker polls the store; nothing runs per row). Then the rest is planned again
with the outcome: approved, the command goes upstream once; otherwise it is refused like
any guardrail refusal and the session goes on. Client reading stays on while waiting
(bytes queue in `_held`, bounded), so a client that disconnects is noticed and its
request withdrawn. A `rows_over` guardrail holds a command the same way, first, while the
planner's row estimate is fetched (`pg_estimate`); then it is judged again with it.

Row gate. A read let through on that estimate carries a `pg_rowgate.RowGate` on its op.
Only then are its DataRows counted: at message boundaries the loop already visits (the
start of a chunk, after a non-DataRow message) a watched head op takes the run of rows
that follows (`_watched_rows`); past its limit the relay pauses upstream reading and the
rest waits for a reviewer, then flows on or is dropped after an upstream cancel.
"""

from __future__ import annotations

import asyncio
import logging
import time
from bisect import bisect_left
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from lockgate.approvals.broker import ApprovalOutcome
from lockgate.errors import LockgateError
from lockgate.gate import Admission, Gate, HeldForReview, NeedsEstimate
from lockgate.model import ResultSummary, Session
from lockgate.protocols.postgres import messages as m
from lockgate.protocols.postgres import sqlstate
from lockgate.proxy import pg_capture, pg_masking, pg_rowgate
from lockgate.proxy.endpoint import Endpoint
from lockgate.tasks import spawn

log = logging.getLogger("lockgate.postgres")

# Frontend message types (client → server).
_Q, _P, _B, _D, _C, _E, _S, _X, _F = b"QPBDCESXF"
# Backend message types (server → client); 'C', 'D', 'E' share letters with the above.
_ONE, _TWO, _THREE, _T, _NODATA, _SUSPENDED, _I, _Z = b"123TnsIZ"
# Pseudo-type of a local answer waiting its turn in the response queue.
_L = ord("L")
_STEPS = frozenset((_P, _B, _C, _D))
_TRACKED = frozenset((_P, _B, _C, _D, _S))

# What replaces a refused command upstream: a syntax error, so it fails in every state
# (and, inside a transaction block, fails the transaction) without touching anything.
_FAIL_SQL = b"LOCKGATE REFUSED THIS STATEMENT"
_FAIL_QUERY = m.message(b"Q", _FAIL_SQL + b"\x00")
# A named statement: failing to parse it leaves the client's unnamed statement alone.
_FAIL_PARSE = m.message(b"P", b"lockgate_refused\x00" + _FAIL_SQL + b"\x00\x00\x00")

# ReadyForQuery's transaction status, by byte.
_STATUS = {s: bytes((s,)) for s in b"ITE"}
# The compiled framing kernel's whole-answer test (None without a C compiler), and which
# request each message before an answer's rows settles (see `_answered`).
_ANSWER = m.ANSWER_COMPILED
_ANSWERS = {_ONE: _P, _TWO: _B, _T: _D, _NODATA: _D}

# Frontend message types that may appear after startup.
_FRONTEND_TYPES = frozenset(b"QPBDCESHXFdcfp")

# While a command waits for a reviewer, the client's later bytes queue up to this much;
# beyond it, reading pauses (and a disconnect is noticed only when the wait ends).
_HELD_LIMIT = 1 << 20


@dataclass(slots=True)
class _Op:
    """One thing the client asked for whose answer is still due."""

    kind: int
    seq: int = 0
    started: float = 0.0
    rows: int | None = None
    status: str = ""
    error_code: str | None = None
    error_message: str | None = None
    bytes_out: int = 0
    # For `L`: the error to deliver; for `S`: an error that replaces upstream's answer.
    # Either is followed by ReadyForQuery with the transaction status current at delivery.
    local: bytes = b""
    done: bool = False
    # Masked sessions: what masking needs to know about this request's answer.
    mask: pg_masking.Track | None = None
    # Reads let through on their row estimate: the count of their rows (`pg_rowgate`).
    gate: pg_rowgate.RowGate | None = None
    # Result capture: a statement's `pg_capture.Taken`, or a Describe's statement name.
    capture: Any = None


@dataclass(slots=True)
class _Plan:
    """What to do with one client chunk."""

    out: list[tuple[bytes | memoryview, _Op | None]] = field(default_factory=list)
    admissions: list[Admission] = field(default_factory=list)
    # A command held for review (or for its row estimate): the plan stops before it, at
    # `hold_at` in the chunk.
    hold: HeldForReview | NeedsEstimate | None = None
    hold_at: int = -1


class PgRelay:
    """Relays one admitted session between `client` and `upstream`."""

    def __init__(
        self,
        gate: Gate,
        session: Session,
        client: Endpoint,
        upstream: Endpoint,
        on_finished: Callable[[str | None], None],
    ) -> None:
        self.gate = gate
        self.session = session
        self.client = client
        self.upstream = upstream
        self._on_finished = on_finished
        self._seq = 0
        self._pending: deque[_Op] = deque()
        self._cbuf = bytearray()
        self._ubuf = bytearray()
        self._held: list[bytes] = []
        self._holding = False
        self._statements: dict[str, str] = {}
        self._portals: dict[str, tuple[str, tuple[str | None, ...] | None]] = {}
        self._tx_status = b"I"
        # Set while the rest of an extended-protocol batch is skipped: the error for its Sync.
        self._skip_error = b""
        # Set while skipping after a refusal the server was made to fail (Sync goes as is).
        self._skipping = False
        self._terminated = False
        self._record_params = gate.manifest.audit.record_parameters
        # None unless a masking rule applies to this session: then the relay masks results.
        self._masker = pg_masking.masker_for(gate, session)
        self._mask_wait = False
        # None unless the resource keeps result rows for replay (see pg_capture).
        self._capture = pg_capture.for_session(gate, session.resource)
        self._scrub = self._masker.policy.scrub if self._masker is not None else None
        # Review of a held command: its outcome (for the command's text) once known,
        # the request being waited for, and whether the session is gone.
        self._approval: tuple[str, ApprovalOutcome] | None = None
        # The planner's row estimate for a command waiting on it (kept through its review).
        self._estimate: tuple[str, int] | None = None
        self._request_id: str | None = None
        self._review_paused = False
        self._abandoned = False
        # Commands in flight whose rows are counted (`pg_rowgate`), the one paused for a
        # reviewer, and how to cancel the upstream's running query (set by the engine).
        self._watching = 0
        self._paused: _Op | None = None
        self.cancel_upstream: Callable[[], Awaitable[None]] | None = None

    def start(self) -> None:
        self.client.peer = self.upstream
        self.upstream.peer = self.client
        self.upstream.set_sink(self._from_upstream)
        ready = self._masker.ready() if self._masker is not None else None
        if ready is None:
            self.client.set_sink(self._from_client)
        else:
            # Masking needs the catalog first; the client's bytes wait in its buffer.
            ready.add_done_callback(lambda _f: self.client.set_sink(self._from_client))

    @property
    def terminated(self) -> bool:
        return self._terminated

    # ================================================================ client → upstream
    def _from_client(self, data: bytes) -> None:
        if self._holding:
            self._held.append(data)
            if (
                self._request_id is not None
                and not self._review_paused
                and sum(len(c) for c in self._held) > _HELD_LIMIT
            ):
                self._review_paused = True
                self.client.pause_reading()
            return
        if self._cbuf:
            self._cbuf += data
            buf: bytes | bytearray = self._cbuf
        else:
            buf = data
        try:
            spans, consumed = m.split_messages(buf)
        except m.ProtocolViolation as exc:
            self._fail(exc.message)
            return
        self._cbuf = _tail(self._cbuf, buf, consumed)
        if not spans:
            return
        try:
            plan = self._plan(buf, spans)
        except m.ProtocolViolation as exc:
            self._fail(exc.message)
            return
        if plan.hold is not None:
            # The held command and all after it wait (at the head of the queue).
            self._held.insert(0, bytes(buf[plan.hold_at :]))
            self._cbuf = bytearray()
            self._holding = True
        if not plan.admissions:
            self._apply(plan)
            self._review(plan)
            return
        try:
            durable = self.gate.record(plan.admissions)
        except LockgateError as exc:
            self._apply(self._refused(plan, exc))
            self._review(plan)
            return
        if durable is None:
            self._apply(plan)
            self._review(plan)
            return
        # Hold the chunk (and what follows) until its records are durable.
        self._holding = True
        self.client.pause_reading()
        durable.add_done_callback(lambda f: self._release(plan, f))

    def _refused(self, plan: _Plan, exc: BaseException) -> _Plan:
        error = exc if isinstance(exc, LockgateError) else LockgateError(str(exc))
        log.error("session %s: refusing commands: %s", self.session.id, error.message)
        return self._refuse_plan(plan, _error_bytes(error))

    def _release(self, plan: _Plan, durable: asyncio.Future[None]) -> None:
        exc = durable.exception()
        if exc is not None:
            plan = self._refused(plan, exc)
        if not self.upstream.closed:
            self._apply(plan)
        if plan.hold is not None:
            self.client.resume_reading()
            self._review(plan)
            return
        self._drain()
        self.client.resume_reading()

    def _drain(self) -> None:
        """Process the chunks that waited, in order, until one is held in turn."""
        self._holding = False
        held, self._held = self._held, []
        for i, chunk in enumerate(held):
            self._from_client(chunk)
            if self._holding:
                # That chunk is held in turn (what it held back is first): the rest waits.
                self._held = self._held + held[i + 1 :]
                break

    # ================================================================ review
    def _review(self, plan: _Plan) -> None:
        if isinstance(plan.hold, NeedsEstimate):
            spawn(self._await_estimate(plan.hold), name="pg-estimate")
        elif plan.hold is not None:
            spawn(self._await_review(plan.hold), name="pg-review")

    async def _await_estimate(self, held: NeedsEstimate) -> None:
        """Ask the planner how many rows the held command returns, then judge it again."""
        from lockgate.proxy.pg_estimate import NO_ESTIMATE, estimate_rows

        text = held.command.text
        rows = NO_ESTIMATE
        if held.explainable:
            rows = await estimate_rows(self.gate, self.session.resource, text)
        if self._abandoned or self.client.closed:
            return
        self._estimate = (text, rows)
        self._drain()

    async def _await_review(self, held: HeldForReview) -> None:
        """Open the approval request, tell the client, wait, then let the held rest go on."""
        text = held.command.text
        try:
            request = await self.gate.hold(self.session, held)
        except Exception:
            log.exception("session %s: could not store an approval request", self.session.id)
            outcome = ApprovalOutcome("-", "failed", "the approval request could not be stored")
        else:
            if self._abandoned:
                await self.gate.broker.withdraw(request.id, "the client disconnected")
                return
            self._request_id = request.id
            log.info(
                "session %s: statement held for review as request %s", self.session.id, request.id
            )
            self.client.write(
                m.notice_response(
                    f"lockgate: this statement is held for review (rule: "
                    f"{held.verdict.decision.rule}); waiting for approval request {request.id}",
                    hint=f"a reviewer approves it with: lockgate reviews approve {request.id} "
                    "--reason TEXT (or denies it with: lockgate reviews deny ...); it expires "
                    f"at {request.expires_at:%Y-%m-%d %H:%M:%S} UTC",
                )
            )
            outcome = await self.gate.broker.wait(request)
            self._request_id = None
        if self._abandoned or self.client.closed:
            return
        self._approval = (text, outcome)
        if self._review_paused:
            self._review_paused = False
            self.client.resume_reading()
        self._drain()

    def cancel_review(self) -> None:
        """The client cancelled: a statement waiting for a reviewer is withdrawn (and refused)."""
        why = "the client cancelled the statement"
        for rid in (self._request_id, self._paused_request()):
            if rid is not None:
                spawn(self.gate.broker.withdraw(rid, why), name="pg-withdraw")

    def _paused_request(self) -> str | None:
        gate = self._paused.gate if self._paused is not None else None
        return gate.request_id if gate is not None else None

    def abandon(self) -> str | None:
        """The session is over: the id of a request still waiting, for the caller to withdraw.

        A request still being stored is withdrawn by the review task itself.
        """
        self._abandoned = True
        rid, self._request_id = self._request_id, None
        paused = self._paused_request()
        if rid is None:
            return paused
        if paused is not None:  # both at once (a pipelining client): rare, not awaited
            spawn(self.gate.broker.withdraw(paused, "the client disconnected"), name="pg-withdraw")
        return rid

    def _plan(self, buf: bytes | bytearray, spans: list[tuple[int, int]]) -> _Plan:
        plan = _Plan()
        out = plan.out
        mv = memoryview(buf)
        run_start = spans[0][0]
        now = time.perf_counter()
        for off, end in spans:
            t = buf[off]
            if self._skip_error or self._skipping:
                # An earlier message of this extended-protocol batch was refused: like
                # PostgreSQL, skip everything up to Sync, which is answered with the error
                # (or, after a refusal the server failed, by the server).
                if off > run_start:
                    out.append((mv[run_start:off], None))
                run_start = end
                if t == _S:
                    out.append((m.SYNC, _Op(_S, local=self._skip_error)))
                    self._skip_error = b""
                    self._skipping = False
                continue
            if t == _Q or t == _E or t == _F:
                if off > run_start:
                    out.append((mv[run_start:off], None))
                run_start = end
                portal = ""
                params = None
                if t == _Q:
                    text = m.read_cstring(buf, off + 5, end)[0]
                elif t == _F:
                    # The fastpath function call (libpq's large-object calls): a command too.
                    oid = int.from_bytes(buf[off + 5 : off + 9], "big") if end - off >= 9 else 0
                    text = f"-- fastpath function call (function oid {oid})"
                else:
                    portal = m.execute_portal(buf, off + 5, end)
                    text, params = self._portals.get(portal, ("", None))
                    text = text or f"-- execute of unknown portal '{portal}'"
                op = _Op(t, 0, now)  # positional: by keyword it costs about twice as much
                if t != _F:
                    if self._masker is not None:
                        op.mask = self._masker.command(t, text, portal)
                    if self._capture is not None:
                        op.capture = self._capture.statement(t, portal)
                adm = self._admit(text, params, op, opaque=t == _F)
                if isinstance(adm, HeldForReview | NeedsEstimate):
                    # Stop here: this message and the rest of the chunk wait (estimate, review).
                    plan.hold, plan.hold_at = adm, off
                    return plan
                if isinstance(adm, Admission):
                    plan.admissions.append(adm)
                    if adm.watch is not None:
                        op.gate = pg_rowgate.RowGate(adm)
                    out.append((mv[off:end], op))
                elif t == _E:
                    out.append((_FAIL_PARSE, _Op(_P, local=adm)))
                    self._skipping = True
                else:
                    out.append((_FAIL_QUERY, _Op(_Q, local=adm)))
                continue
            if t == _P:
                parsed = m.parse_parse(bytes(buf[off + 5 : end]))
                self._statements[parsed.statement] = parsed.query
                if self._capture is not None:
                    self._capture.parsed(parsed.statement)
                refusal = self._screen(parsed.query)
                if refusal is not None:
                    # Not even prepared: the server fails a stand-in Parse instead.
                    if off > run_start:
                        out.append((mv[run_start:off], None))
                    run_start = end
                    out.append((_FAIL_PARSE, _Op(_P, local=refusal)))
                    self._skipping = True
                    continue
            elif t == _B:
                portal, name, params = m.bind_texts(buf, off + 5, end, texts=self._record_params)
                params = pg_capture.scrub_params(params, self._scrub)
                if self._capture is not None:
                    self._capture.bound(portal, name)
                self._portals[portal] = (self._statements.get(name, ""), params)
            elif t == _C:
                kind, name = m.parse_close_or_describe(bytes(buf[off + 5 : end]))
                if kind == b"S":
                    self._statements.pop(name, None)
                else:
                    self._portals.pop(name, None)
            elif t == _X:
                self._terminated = True
            elif t not in _FRONTEND_TYPES:
                raise m.ProtocolViolation(f"unexpected frontend message type {chr(t)!r}")
            if t in _TRACKED:
                step = _Op(t, 0, now)
                if self._masker is not None and t != _S and t != _C:
                    step.mask = self._masker.step(t, bytes(buf[off + 5 : end]))
                if t == _D and self._capture is not None:
                    step.capture = self._capture.describing(bytes(buf[off + 5 : end]))
                out.append((mv[run_start:end], step))
                run_start = end
        last_end = spans[-1][1]
        if last_end > run_start:
            out.append((mv[run_start:last_end], None))
        return plan

    def _admit(
        self, text: str, params: tuple[str | None, ...] | None, op: _Op, *, opaque: bool = False
    ) -> Admission | bytes | HeldForReview | NeedsEstimate:
        """Admit a command, or return the ErrorResponse that refuses it (already recorded).

        Or the hold, when it must wait for a reviewer (nothing recorded yet).
        """
        self._seq += 1
        op.seq = self._seq
        approval = None
        if self._approval is not None:
            held_text, outcome = self._approval
            self._approval = None
            if held_text == text:
                approval = outcome
        estimate = None
        if self._estimate is not None:
            if self._estimate[0] == text:
                estimate = self._estimate[1]
            else:
                self._estimate = None
        try:
            if self._masker is not None and not opaque:
                refusal = self._masker.refusal(text)
                if refusal is not None:
                    # Recorded like a guardrail refusal (deny, rule, reason), then refused.
                    self.gate.refused(self.session, self._seq, text, refusal)
                    raise refusal
            admitted = self.gate.admit(
                self.session,
                self._seq,
                text,
                params,
                opaque=opaque,
                approval=approval,
                estimate=estimate,
            )
            self._estimate = None
            return admitted
        except (HeldForReview, NeedsEstimate) as held:
            # Not admitted yet: the estimate stays for the same command's next admission.
            self._seq -= 1
            op.seq = 0
            return held
        except LockgateError as exc:
            self._estimate = None
            op.seq = 0
            return _error_bytes(exc)

    def _screen(self, text: str) -> bytes | None:
        """None if a statement may be prepared, else the ErrorResponse refusing it."""
        try:
            self.gate.screen(self.session, self._seq + 1, text)
        except LockgateError as exc:
            self._seq += 1
            return _error_bytes(exc)
        return None

    def _refuse_plan(self, plan: _Plan, error: bytes) -> _Plan:
        """Rewrite a plan whose commands could not be recorded: none of them may run."""
        refused = _Plan()
        skipping = False
        for data, op in plan.out:
            if op is None:
                if not skipping:
                    refused.out.append((data, None))
            elif op.kind == _Q or op.kind == _F:
                refused.out.append((b"", _Op(_L, local=error)))
            elif op.kind == _E:
                skipping = True
            elif op.kind == _S and skipping:
                skipping = False
                refused.out.append((m.SYNC, _Op(_S, local=error)))
            elif not skipping:
                refused.out.append((data, op))
        if skipping:
            self._skip_error = error
        return refused

    def _apply(self, plan: _Plan) -> None:
        """Write the planned bytes upstream (one write) and queue what answers are due."""
        chunks: list[bytes | memoryview] = []
        pending = self._pending
        for data, op in plan.out:
            if data:
                chunks.append(data)
            if op is None:
                continue
            if op.kind == _L and not pending:
                self.client.write(op.local + m.ready_for_query(self._tx_status))
                continue
            if op.gate is not None:
                self._watching += 1
            pending.append(op)
        if chunks:
            self.upstream.write(chunks[0] if len(chunks) == 1 else b"".join(chunks))

    # ================================================================ upstream → client
    def _from_upstream(self, data: bytes) -> None:
        if self._mask_wait:
            self._ubuf += data
            return
        if self._ubuf:
            self._ubuf += data
            buf: bytes | bytearray = self._ubuf
        else:
            buf = data
            if _ANSWER is not None and self._masker is None and not self._watching:
                # The usual chunk: one statement's whole answer (compiled framing only).
                shape = _ANSWER(data, m.DEFAULT_MAX_MESSAGE)
                if shape is not None and self._answered(data, shape):
                    return
        try:
            spans, consumed = m.split_messages(buf)
        except m.ProtocolViolation as exc:
            log.error("session %s: upstream sent invalid data: %s", self.session.id, exc)
            self._fail("the upstream server sent invalid data")
            return
        self._ubuf = _tail(self._ubuf, buf, consumed)
        if not spans:
            return
        pending = self._pending
        watching = self._watching
        if watching and buf[0] == _D and pending:
            gate = pending[0].gate
            if gate is not None and gate.watching:
                self._watched_rows(buf, spans, 0, 0)
                return
        write = self.client.write
        flushed = 0
        masker = self._masker
        data_rows = -1  # masked sessions: start of a run of DataRows
        masked_error: bytes | None = None
        masked_t: bytes | None = None
        cap = self._capture
        run = -1  # capture in unmasked sessions: start of a run of DataRows
        for off, end in spans:
            if masker is not None:
                t = buf[off]
                if t == _D:
                    if data_rows < 0:
                        data_rows = off
                    if pending:
                        pending[0].bytes_out += end - off
                    continue
                if data_rows >= 0:
                    flushed = self._mask_rows(buf, data_rows, off, flushed)
                    data_rows = -1
                masked_error = masked_t = None
                # A stand-in for a refused command failed: that error is replaced, not masked.
                stand_in = t == _E and bool(pending) and bool(pending[0].local)
                if t in pg_masking.UPSTREAM_TYPES and not stand_in:
                    track = pending[0].mask if pending else None
                    got = masker.upstream(t, bytes(buf[off + 5 : end]), track)
                    if isinstance(got, asyncio.Future):
                        self._mask_hold(buf, off, flushed, got)
                        return
                    if got is not None:
                        if off > flushed:
                            write(buf[flushed:off])
                        write(got)
                        flushed = end
                        masked_error = got[5:] if t == _E else None
                        masked_t = got if t == _T else None
            if not pending:
                continue
            t = buf[off]
            head = pending[0]
            # Every response byte counts towards the command it answers (rows included).
            head.bytes_out += end - off
            if t == _D:
                if run < 0 and cap is not None:
                    run = off
                continue
            if run >= 0:
                assert cap is not None
                cap.rows(head.capture, buf, run, off)
                run = -1
            if t == _Z:
                status = bytes(buf[off + 5 : off + 6])
                self._tx_status = status
                op = pending.popleft()
                if op.kind == _S and op.local:
                    # A refused batch: our error and Ready go out instead of upstream's Ready.
                    if off > flushed:
                        write(buf[flushed:off])
                    write(op.local + m.ready_for_query(status))
                    flushed = end
                else:
                    self._finish(op)
                if pending and pending[0].kind == _L:
                    if end > flushed:
                        write(buf[flushed:end])
                    flushed = end
                    while pending and pending[0].kind == _L:
                        write(pending.popleft().local + m.ready_for_query(status))
            elif t == _C:
                if head.local:
                    # A read stopped mid-way (`pg_rowgate`) completed anyway: still refused.
                    if off > flushed:
                        write(buf[flushed:off])
                    write(head.local)
                    flushed = end
                tag = m.read_cstring(buf, off + 5, end)[0]
                rows = m.command_tag_rows(tag)
                if cap is not None:
                    cap.completed(head.capture, buf[off:end], rows)
                if head.kind == _E:
                    head.status, head.rows = tag, rows
                    self._finish(pending.popleft())
                elif head.kind == _Q:
                    head.status = tag
                    if rows is not None:
                        head.rows = (head.rows or 0) + rows
            elif t == _ONE or t == _TWO or t == _THREE or t == _NODATA:
                if head.kind in _STEPS:
                    pending.popleft()
            elif t == _T:
                if cap is not None:
                    cap.description(head.capture, masked_t or buf[off:end])
                if head.kind == _D:
                    pending.popleft()
            elif t == _SUSPENDED or t == _I:
                if head.local:
                    if off > flushed:
                        write(buf[flushed:off])
                    write(head.local)
                    flushed = end
                if head.kind == _E:
                    head.status = "suspended" if t == _SUSPENDED else "empty"
                    self._finish(pending.popleft())
                elif head.kind == _Q and t == _I:
                    head.status = "empty"
            elif t == _E:
                if head.local and head.kind != _S:
                    # The stand-in for a refused command failed: the client gets the refusal.
                    if off > flushed:
                        write(buf[flushed:off])
                    write(head.local)
                    flushed = end
                fields = m.parse_error_fields(masked_error or bytes(buf[off + 5 : end]))
                head.error_code = fields.get("C")
                head.error_message = fields.get("M")
                if head.kind not in (_Q, _S, _F):
                    # Extended protocol: the server skips everything up to the next Sync.
                    # An error at Parse/Bind/Describe (a syntax error, 1/$1 folded at Bind)
                    # is the failure of the Execute that follows it, not a skip.
                    owner = head
                    while pending and pending[0].kind != _S:
                        op = pending.popleft()
                        if op.kind == _E and op is not head:
                            if owner.kind != _E:
                                op.error_code = head.error_code
                                op.error_message = head.error_message
                                op.bytes_out += head.bytes_out
                                owner = op
                            else:
                                op.status = "skipped after an earlier error"
                        self._finish(op)
            if watching and end < consumed and buf[end] == _D and pending:
                gate = pending[0].gate
                if gate is not None and gate.watching:
                    self._watched_rows(buf, spans, bisect_left(spans, (end,)), flushed)
                    return
        if data_rows >= 0:
            flushed = self._mask_rows(buf, data_rows, consumed, flushed)
        if run >= 0 and cap is not None and pending:
            cap.rows(pending[0].capture, buf, run, consumed)
        if consumed > flushed:
            write(buf[flushed:consumed] if flushed or consumed < len(buf) else buf)

    def _answered(
        self, buf: bytes, shape: tuple[bytes, tuple[int, ...], int, int, str, int | None, int]
    ) -> bool:
        """Settle `buf`, one statement's whole answer (`m.answer_shape_py`), in one step.

        Does what the message-by-message loop of `_from_upstream` does with the same bytes,
        in its usual cases: a simple Query alone in flight, or one extended-protocol
        statement ([Parse] [Bind] [Describe] Execute Sync, as drivers send it). Returns
        False, having done nothing, in any other case.
        """
        heads, ends, c_off, c_end, tag, rows, status = shape
        pending = self._pending
        n = len(pending)
        rows_at = ends[-1] if ends else 0
        if n == 1:
            done = pending[0]
            if done.kind != _Q or done.local or heads not in (b"", b"T"):
                return False
            pending.clear()
            done.bytes_out += len(buf)
            described = done if heads else None
        else:
            if n != len(heads) + 2:
                return False
            ops = tuple(pending)
            done, sync = ops[-2], ops[-1]
            if done.kind != _E or sync.kind != _S or done.local or sync.local:
                return False
            for op, kind in zip(ops, heads, strict=False):
                if op.kind != _ANSWERS[kind] or op.local:
                    return False
            pending.clear()
            # The rows and the tag count towards the Execute (what the steps before it and
            # the Sync received is recorded nowhere).
            done.bytes_out += c_end - rows_at
            described = ops[len(heads) - 1] if heads[-1:] == b"T" else None
        # The client gets its answer first: the bookkeeping below is not on its wait.
        ended = time.perf_counter()
        self.client.write(buf)
        cap = self._capture
        if cap is not None:
            if described is not None:  # the RowDescription: a Query's, or a Describe's
                start = ends[-2] if len(ends) > 1 else 0
                cap.description(described.capture, buf[start:rows_at])
            taken = done.capture
            if c_off > rows_at:
                cap.rows(taken, buf, rows_at, c_off)
            cap.completed(taken, buf[c_off:c_end], rows)
        done.status = tag
        if done.kind == _E:
            done.rows = rows
        elif rows is not None:  # a Query's result sets add up (a chunk may hold the last)
            done.rows = (done.rows or 0) + rows
        self._tx_status = _STATUS.get(status) or bytes((status,))
        self._finish(done, ended)
        return True

    # ================================================================ row gate
    def _watched_rows(
        self, buf: bytes | bytearray, spans: list[tuple[int, int]], i: int, flushed: int
    ) -> None:
        """The DataRows at `spans[i]` answer a watched read: relay them up to its limit.

        Then the rest of the chunk goes on through `_from_upstream`, or waits (upstream
        reading paused) while the rows past the limit are reviewed.
        """
        op = self._pending[0]
        gate = op.gate
        assert gate is not None
        start = spans[i][0]
        j = gate.take(buf, spans, i)
        stop = spans[j][0] if j < len(spans) else spans[-1][1]
        if start > flushed:
            self.client.write(buf[flushed:start])
        if gate.state != pg_rowgate.DISCARDING and stop > start:
            if self._masker is None or self._mask_rows(buf, start, stop, start) == start:
                self.client.write(buf[start:stop])
                if self._capture is not None and self._masker is None:
                    self._capture.rows(op.capture, buf, start, stop)
        op.bytes_out += stop - start
        rest = bytes(buf[stop:])
        self._ubuf = bytearray()
        if gate.state == pg_rowgate.PAUSED:
            self._ubuf = bytearray(rest)
            self._mask_wait = True
            self.upstream.pause_reading()
            spawn(self._await_rows(op, gate), name="pg-rowgate")
        elif rest:
            self._from_upstream(rest)

    async def _await_rows(self, op: _Op, gate: pg_rowgate.RowGate) -> None:
        """A watched read passed its limit: ask, then let it go on or stop it upstream."""
        self._paused = op
        try:
            await gate.review(self.gate, self.session, self.client.write, lambda: self._abandoned)
        finally:
            self._paused = None
        if self._abandoned or self.client.closed or self.upstream.closed:
            return
        if gate.state == pg_rowgate.DISCARDING:
            op.local = gate.error
            if self.cancel_upstream is not None and not pg_rowgate.finished_upstream(self._ubuf):
                log.info("session %s: cancelling a read stopped mid-way", self.session.id)
                await self.cancel_upstream()
        self._mask_release()

    def _mask_rows(self, buf: bytes | bytearray, start: int, stop: int, flushed: int) -> int:
        """Write DataRows `buf[start:stop]` masked (if the plan changes them); new `flushed`."""
        assert self._masker is not None
        track = self._pending[0].mask if self._pending else None
        new = self._masker.rewrite_rows(track, buf, start, stop)
        if self._capture is not None and self._pending:
            # What the client receives: the rewritten rows, or these as they are.
            taken = self._pending[0].capture
            if new is None:
                self._capture.rows(taken, buf, start, stop)
            else:
                self._capture.rows(taken, new, 0, len(new))
        if new is None:
            return flushed
        if start > flushed:
            self.client.write(buf[flushed:start])
        self.client.write(new)
        return stop

    def _mask_hold(
        self, buf: bytes | bytearray, off: int, flushed: int, ready: asyncio.Future[Any]
    ) -> None:
        """Stop at `off` until masking is ready (catalog refreshed); upstream waits."""
        if off > flushed:
            self.client.write(buf[flushed:off])
        self._ubuf = bytearray(buf[off:])
        self._mask_wait = True
        self.upstream.pause_reading()
        ready.add_done_callback(lambda _f: self._mask_release())

    def _mask_release(self) -> None:
        self._mask_wait = False
        data, self._ubuf = bytes(self._ubuf), bytearray()
        self.upstream.resume_reading()
        if data and not self.client.closed:
            self._from_upstream(data)

    def _finish(self, op: _Op, ended: float = 0.0) -> None:
        """Record `op`'s outcome; `ended`: when its answer came (`perf_counter`), if not now."""
        if op.seq == 0 or op.done:
            return
        op.done = True
        note = masked = None
        if self._masker is not None and op.mask is not None and op.mask.counts:
            note = self._masker.summary(op.mask)
            masked = dict(op.mask.counts)
        # Positional (rows, status, error_code, error_message, bytes_out, duration_ms,
        # result, masked): by keyword, this frozen dataclass costs about twice as much.
        summary = ResultSummary(
            op.rows,
            op.status + note if note else op.status,
            op.error_code,
            op.error_message,
            op.bytes_out,
            ((ended or time.perf_counter()) - op.started) * 1000.0,
            self._capture.result(op.capture) if self._capture is not None else None,
            masked,
        )
        if op.gate is not None:
            self._watching -= 1
            summary = op.gate.summary(summary)
        self.gate.command_finished(self.session, op.seq, summary)

    # ================================================================ failure
    def _fail(self, reason: str, *, to_client: bool = True) -> None:
        log.warning("session %s: closing: %s", self.session.id, reason)
        if to_client:
            self.client.write(
                m.error_response(sqlstate.PROTOCOL_VIOLATION, reason, severity="FATAL")
            )
        self._on_finished(reason)

    def finish_all(self, reason: str) -> None:
        """Record every command still in flight as ended by `reason`."""
        while self._pending:
            op = self._pending.popleft()
            if op.seq and not op.done:
                op.error_message = op.error_message or reason
                self._finish(op)


def _tail(pending: bytearray, buf: bytes | bytearray, consumed: int) -> bytearray:
    """The partial message left after `consumed` bytes of `buf`, to complete with the next chunk.

    While one large message arrives in many chunks, `buf` is `pending` itself and nothing was
    consumed: keep it rather than copy it again, or a 50 MB value costs quadratic copying.
    """
    if consumed >= len(buf):
        return bytearray()
    if consumed == 0 and buf is pending:
        return pending
    return bytearray(buf[consumed:])


def _error_bytes(exc: LockgateError) -> bytes:
    from lockgate.proxy.pg_errors import error_for

    code, message, hint = error_for(exc)
    return m.error_response(code, message, hint=hint)
