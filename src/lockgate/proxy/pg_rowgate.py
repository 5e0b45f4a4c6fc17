"""The row gate: a read let through on its row estimate stops where its real rows pass the limit.

Theory of operation
-------------------
A `rows_over` guardrail judges a read on the planner's estimate before it runs. When the
estimate is under the threshold the read runs, but the gate admits it with a `RowWatch`
and the relay gives its response a `RowGate`. Only responses that carry one are counted,
and only their DataRows: the relay hands this module each run of DataRows of the watched
command (found at message boundaries it already walks), never a row of anything else, so
sessions and commands without a watch pay nothing.

States: COUNTING → PAUSED at the first row past the threshold → RESUMED (approved: the
rest flows uncounted) or DISCARDING (denied, expired, withdrawn, or a `deny` rule): the
relay has the upstream query cancelled and drops what upstream still sends for it; its
end (ErrorResponse or CommandComplete) is replaced by this gate's `error`, so the client
gets the rows already sent, then a 42501, and the session goes on.

While PAUSED the relay stops reading from upstream (backpressure: the server blocks on
its socket) and keeps the unread bytes; an approval request (`Gate.hold_rows`) is stored
and announced to the client with a NoticeResponse, and the broker wakes the gate.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace

from lockgate.approvals.broker import ApprovalOutcome
from lockgate.errors import ApprovalRejected, CommandDenied, LockgateError
from lockgate.gate import Admission, Gate
from lockgate.model import ResultSummary, Session
from lockgate.protocols.postgres import messages as m
from lockgate.proxy.pg_errors import error_for

COUNTING, PAUSED, RESUMED, DISCARDING = "counting", "paused", "resumed", "discarding"
_D = ord("D")
# What ends the response to a command: CommandComplete, ErrorResponse, PortalSuspended.
_ENDS = frozenset(b"CEs")


class RowGate:
    """The row count of one watched command's response, and what passing its limit did."""

    __slots__ = ("admission", "dropped", "error", "note", "request_id", "rows", "state")

    def __init__(self, admission: Admission) -> None:
        assert admission.watch is not None
        self.admission = admission
        self.state = COUNTING
        # Rows relayed while counting; rows dropped after a refusal.
        self.rows = 0
        self.dropped = 0
        self.request_id: str | None = None
        # What happened, for the command's audit record.
        self.note = ""
        # The ErrorResponse that replaces the end of a refused response.
        self.error = b""

    @property
    def threshold(self) -> int:
        assert self.admission.watch is not None
        return self.admission.watch.threshold

    @property
    def watching(self) -> bool:
        """Whether this response's DataRows must go through `take`."""
        return self.state == COUNTING or self.state == DISCARDING

    def take(self, buf: bytes | bytearray, spans: list[tuple[int, int]], i: int) -> int:
        """Take the run of DataRows at `spans[i]`: the index after those relayed or dropped.

        Counting stops at the threshold: when a row past it is already here, the gate
        pauses (`state` PAUSED) and that row and the rest wait for the outcome.
        """
        n = len(spans)
        limit = n if self.state == DISCARDING else min(n, i + self.threshold - self.rows)
        j = i
        while j < limit and buf[spans[j][0]] == _D:
            j += 1
        if self.state == DISCARDING:
            self.dropped += j - i
            return j
        self.rows += j - i
        if j < n and buf[spans[j][0]] == _D:
            self.state = PAUSED
            self.note = f"paused at {self.rows} rows for review"
        return j

    async def review(
        self,
        gate: Gate,
        session: Session,
        tell: Callable[[bytes], None],
        gone: Callable[[], bool],
    ) -> None:
        """Ask reviewers whether the read may go on; sets RESUMED or DISCARDING.

        `tell` writes to the client; `gone` says whether the session ended meanwhile.
        """
        adm = self.admission
        watch = adm.watch
        assert watch is not None
        seen = f"it returned more than {watch.threshold} rows (estimated {watch.estimate})"
        if adm.reviewers is None:
            self._refuse(CommandDenied(f"{watch.message}: {seen}", rule=watch.rule))
            self.note = f"stopped at {self.rows} rows (estimated {watch.estimate}) by the rule"
            return
        closed = gate.outside_window(adm.reviewers)
        if closed is not None:
            self._closed(watch.rule, adm.reviewers.name, closed, seen)
            return
        try:
            request = await gate.hold_rows(session, adm)
        except Exception:  # no request stored: nobody can approve, the read stops
            outcome = ApprovalOutcome("-", "failed", "the approval request could not be stored")
        else:
            if gone():
                await gate.broker.withdraw(request.id, "the client disconnected")
                return
            self.request_id = request.id
            tell(
                m.notice_response(
                    f"lockgate: {seen}; the rest is held for review (rule: {watch.rule}); "
                    f"waiting for approval request {request.id}",
                    hint=f"a reviewer lets it go on with: lockgate reviews approve {request.id} "
                    "--reason TEXT (or stops it with: lockgate reviews deny ...); it expires "
                    f"at {request.expires_at:%Y-%m-%d %H:%M:%S} UTC",
                )
            )
            outcome = await gate.broker.wait(request)
            self.request_id = None
        at = f"{self.rows} rows (estimated {watch.estimate}), request {outcome.request_id}"
        closed = gate.outside_window(adm.reviewers) if outcome.approved else None
        if closed is not None:
            approved = f"{seen}; request {outcome.request_id} was approved"
            self._closed(watch.rule, adm.reviewers.name, closed, approved)
            return
        if outcome.approved:
            self.state = RESUMED
            self.note = f"paused at {at} approved"
            return
        self.note = f"stopped at {at} {outcome.status}"
        self._refuse(
            ApprovalRejected(
                f"the statement was stopped after {self.rows} rows: approval request "
                f"{outcome.request_id} {outcome.status} ({outcome.reason})",
                hint="the session goes on; ask a reviewer, or narrow the statement",
                rule=watch.rule,
            )
        )

    def _closed(self, guardrail: str, rule: str, closed: str, seen: str) -> None:
        self.note = f"stopped at {self.rows} rows: outside the execution window"
        self._refuse(
            ApprovalRejected(
                f"the statement was stopped after {self.rows} rows: {seen}, and reads "
                f"reviewed under approval rule '{rule}' may go on only inside its execution "
                f"window ({closed})",
                hint="run it again inside the window, or narrow the statement",
                rule=guardrail,
            )
        )

    def _refuse(self, exc: LockgateError) -> None:
        code, message, hint = error_for(exc)
        self.error = m.error_response(code, message, hint=hint)
        self.state = DISCARDING

    def summary(self, summary: ResultSummary) -> ResultSummary:
        """The command's audit summary with what the gate saw and did."""
        note = self.note or f"rows watched over {self.threshold}"
        if self.state != DISCARDING:
            return replace(summary, status=_short(f"{summary.status}; {note}"))
        upstream = summary.error_code or "completed"
        fields = m.parse_error_fields(self.error[5:])
        return replace(
            summary,
            rows=self.rows,
            status=_short(f"{note}; upstream: {upstream}, {self.dropped} more rows dropped"),
            error_code=fields.get("C"),
            error_message=fields.get("M"),
        )


def _short(status: str) -> str:
    # The audit's status column holds 255 characters; the full reasons are in the store.
    status = status.lstrip("; ")
    return status if len(status) <= 255 else status[:252] + "..."


def finished_upstream(held: bytes | bytearray) -> bool:
    """Whether the unread bytes already hold the end of the paused response (no cancel due)."""
    try:
        spans, _ = m.split_messages(held)
    except m.ProtocolViolation:
        return False
    return any(held[off] in _ENDS for off, _ in spans)
