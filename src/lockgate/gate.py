"""The one protocol-neutral pipeline every protocol handler calls.

authenticate → authorize → open_session → admit(command) … → command_finished → end_session.
Handlers translate bytes into these calls and the raised `LockgateError`s into native
errors; nothing here knows about bytes.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import secrets
from dataclasses import dataclass, replace
from typing import NoReturn

from sqlalchemy.engine import Engine

from lockgate.approvals.broker import ApprovalBroker, ApprovalOutcome
from lockgate.approvals.rules import ApprovalRules
from lockgate.approvals.store import STATEMENT, ApprovalRequest, ApprovalStore
from lockgate.approvals.webhook import WebhookNotifier, console_address
from lockgate.audit.recorder import AuditRecorder
from lockgate.config.model import ApprovalRule, Manifest, Resource
from lockgate.config.ssh import SshResource
from lockgate.errors import (
    AccessDenied,
    ApprovalRejected,
    CommandDenied,
    LockgateError,
    UnknownResource,
)
from lockgate.identity.oidc import OIDCVerifier
from lockgate.identity.session_limits import LiveSessionPolicy, SessionVerdict
from lockgate.identity.tokens import GatewayTokenAuthority
from lockgate.identity.verifier import GatewayTokenVerifier, IdentityVerifier, TokenVerifier
from lockgate.model import (
    ClientInfo,
    Command,
    Decision,
    DecisionKind,
    Principal,
    ResultSummary,
    Session,
    SessionEnd,
)
from lockgate.policy.access import AccessPolicy
from lockgate.policy.guardrails import Guardrails, RowWatch, Verdict
from lockgate.policy.ssh import SshPolicy, SshRequest
from lockgate.secrets.refs import resolve_secret
from lockgate.secrets.store import SecretStore
from lockgate.sql.analyze import Analysis, Analyzer
from lockgate.store import open_engine
from lockgate.wakeups import Wakeups

log = logging.getLogger("lockgate.gate")

ALLOWED = Decision(DecisionKind.ALLOW)
_NO_SQL = Analysis(statements=())


@dataclass(frozen=True, slots=True)
class Admission:
    """A command policy lets through; it runs once `Gate.record` made it durable."""

    command: Command
    analysis: Analysis
    # Let through on the planner's estimate by a `rows_over` rule: the handler counts the
    # rows and acts when they pass the threshold; `reviewers` governs the review (None: the
    # rule's action is applied as is, a refusal).
    watch: RowWatch | None = None
    reviewers: ApprovalRule | None = None


class NeedsEstimate(Exception):
    """A `rows_over` rule matched: admit the command again with the planner's estimate.

    `explainable`: one statement that only reads, so `EXPLAIN` of it is safe; otherwise
    pass -1 (no estimate), which the rule treats as over its threshold.
    """

    def __init__(self, command: Command, explainable: bool) -> None:
        super().__init__("a row estimate is needed")
        self.command = command
        self.explainable = explainable


class HeldForReview(Exception):
    """A guardrail said `review` and an approval rule covers it: hold the command.

    Not a `LockgateError`: the handler must hold the command, not refuse it. Open the
    request with `Gate.hold`, wait, then call `admit` again with the outcome.
    """

    def __init__(self, command: Command, verdict: Verdict, rule: ApprovalRule) -> None:
        super().__init__(verdict.message)
        self.command = command
        self.verdict = verdict
        self.rule = rule


class Gate:
    """Identity, access, secrets, analysis and audit behind one small API."""

    def __init__(self, manifest: Manifest, engine: Engine, *, ingest: bool = True) -> None:
        self.manifest = manifest
        self.engine = engine
        self.authority = GatewayTokenAuthority(manifest, engine)
        verifiers: list[TokenVerifier] = [GatewayTokenVerifier(self.authority)]
        verifiers += [OIDCVerifier(issuer, engine) for issuer in manifest.identity.oidc]
        self.verifier = IdentityVerifier(verifiers)
        self.live_sessions = LiveSessionPolicy(manifest, engine)
        self.access = AccessPolicy(manifest)
        self.guardrails = Guardrails(manifest)
        self.ssh_policy = SshPolicy(manifest)
        self.secrets = SecretStore.for_manifest(manifest, engine)
        self.analyzer = Analyzer()
        self.approval_rules = ApprovalRules(manifest)
        self.approvals = ApprovalStore(engine)
        # One listener per process for every loop that polls the store (wakeups.py).
        self.wakeups = Wakeups(engine)
        hooks = manifest.approvals.webhooks
        self.broker = ApprovalBroker(
            self.approvals,
            manifest.approvals.poll_interval,
            notify=WebhookNotifier(hooks, console_address(manifest)) if hooks else None,
            wakeups=self.wakeups,
        )
        self._grant_rules = frozenset(r.name for r in manifest.access if r.requires_grant)
        self.audit = AuditRecorder(
            engine, manifest.state_dir / "journal", fsync=manifest.audit.fsync, ingest=ingest
        )

    @classmethod
    def from_manifest(cls, manifest: Manifest, *, ingest: bool = True) -> Gate:
        """A gate on the manifest's store; `ingest=False` when another process ingests."""
        return cls(manifest, open_engine(manifest.state_url), ingest=ingest)

    async def start(self) -> None:
        await self.audit.start()

    async def close(self) -> None:
        await self.wakeups.close()
        await self.audit.close()

    # -- connection ---------------------------------------------------------------------
    async def authenticate(self, token: str) -> Principal:
        """Verify a token (any trusted issuer) into a Principal; raises AuthFailed."""
        return await self.verifier.verify(token)

    def authorize(self, principal: Principal, resource_name: str) -> tuple[Resource, Decision]:
        """The resource and the access rule that allows it; raises UnknownResource/AccessDenied."""
        resource = self.manifest.resource(resource_name)
        if resource is None:
            if isinstance(self.manifest.target(resource_name), SshResource):
                raise UnknownResource(
                    f"resource '{resource_name}' is an SSH host, not a database",
                    hint=f"reach it with: ssh -p PORT NAME#{resource_name}@GATEWAY",
                )
            raise UnknownResource(
                f"resource '{resource_name}' does not exist on this gateway",
                hint="set dbname to the name of a resource you were given access to",
            )
        return resource, self._access(principal, resource_name)

    def authorize_ssh(
        self, principal: Principal, resource_name: str
    ) -> tuple[SshResource, Decision]:
        """The SSH resource and the access rule that allows it (see `authorize`)."""
        resource = self.manifest.target(resource_name)
        if not isinstance(resource, SshResource):
            what = "is a database, not an SSH host" if resource else "does not exist here"
            raise UnknownResource(
                f"resource '{resource_name}' {what}",
                hint="log in as NAME#RESOURCE with the name of an SSH resource you may reach",
            )
        return resource, self._access(principal, resource_name)

    def _access(self, principal: Principal, resource_name: str) -> Decision:
        now = dt.datetime.now(dt.UTC)
        decision = self.access.check(principal, resource_name, now)
        if not decision.allowed:
            window = self.access.window(decision.rule)
            raise AccessDenied(
                decision.reason
                or f"identity '{principal.subject}' may not reach '{resource_name}'",
                hint=f"connect again inside the window ({window.describe()})"
                if window is not None
                else "ask an administrator for an access rule, or for a grant",
                rule=decision.rule,
            )
        if decision.rule in self._grant_rules:
            # One indexed query on the state store, at connection time only.
            grant = self.approvals.active_grant(principal, resource_name)
            if grant is None:
                raise AccessDenied(
                    f"access rule '{decision.rule}' admits '{principal.subject}' to "
                    f"'{resource_name}' only with an active grant, and there is none",
                    hint=f"ask for one: lockgate request {resource_name} --for 30m "
                    "--reason TEXT, then reconnect once a reviewer approved it",
                    rule=decision.rule,
                )
            rule = self.approval_rules.for_grant(resource_name)
            closed = self.outside_window(rule, now)
            if closed is not None and rule is not None and rule.window is not None:
                raise AccessDenied(
                    f"grant {grant.id} for '{resource_name}' may be used only inside the "
                    f"execution window of approval rule '{rule.name}': {closed}",
                    hint=f"connect again inside the window ({rule.window.describe()})",
                    rule=decision.rule,
                )
        return decision

    def outside_window(
        self, rule: ApprovalRule | None, now: dt.datetime | None = None
    ) -> str | None:
        """None inside `rule`'s execution window (or without one), else why it is closed."""
        if rule is None or rule.window is None:
            return None
        now = now or dt.datetime.now(dt.UTC)
        return None if rule.window.contains(now) else rule.window.closed_message(now)

    async def _grant_id(self, principal: Principal, resource_name: str) -> str | None:
        decision = self.access.check(principal, resource_name)
        if decision.rule not in self._grant_rules:
            return None
        grant = await asyncio.to_thread(self.approvals.active_grant, principal, resource_name)
        return grant.id if grant is not None else ""

    def credential(self, resource: Resource) -> str | None:
        """The upstream secret for `resource` (None when it has none); raises SecretError."""
        ref = resource.upstream.password
        if ref is None:
            return None
        return resolve_secret(ref, self.manifest, self.secrets)

    async def open_session(
        self, principal: Principal, resource: Resource | SshResource, client: ClientInfo
    ) -> Session:
        """Record the start of a session (durably) and return it; raises AuditUnavailable."""
        session = Session(
            id=secrets.token_hex(8),
            principal=principal,
            resource=resource.name,
            client=client,
            started_at=dt.datetime.now(dt.UTC),
            read_only=self.access.read_only(principal, resource.name),
            grant_id=await self._grant_id(principal, resource.name),
        )
        await self.audit.session_started(session)
        return session

    async def refuse(
        self,
        client: ClientInfo,
        resource: str,
        subject: str | None,
        code: str,
        error: LockgateError,
    ) -> None:
        """Record a refused connection; a failure to record is logged, never raised."""
        reason = f"{error.message} [{error.detail}]" if error.detail else error.message
        try:
            await self.audit.connection_refused(client, resource, subject, code, reason)
        except Exception:  # the client is being refused anyway
            log.exception("could not record a refused connection")

    async def sessions_to_end(self, sessions: list[Session]) -> list[SessionVerdict]:
        """Live sessions whose token or grant expired or was revoked, or open too long."""
        verdicts = await self.live_sessions.verdicts(sessions)
        ending = {v.session.id for v in verdicts}
        if self.access.windowed:
            verdicts += self._windows_closed([s for s in sessions if s.id not in ending])
            ending = {v.session.id for v in verdicts}
        granted = [s for s in sessions if s.grant_id is not None and s.id not in ending]
        if granted:
            verdicts += await asyncio.to_thread(self._grants_ended, granted)
        return verdicts

    def _windows_closed(self, sessions: list[Session]) -> list[SessionVerdict]:
        """Live sessions whose access rule's time window closed (no other rule admits them)."""
        now = dt.datetime.now(dt.UTC)
        out = []
        for s in sessions:
            try:
                decision = self.access.check(s.principal, s.resource, now)
            except UnknownResource:
                continue
            window = self.access.window(decision.rule)
            if not decision.allowed and window is not None:
                why = (
                    f"the time window of access rule '{decision.rule}' closed "
                    f"({window.closed_message(now)})"
                )
                out.append(SessionVerdict(s, SessionEnd.WINDOW_CLOSED, why))
        return out

    def _grants_ended(self, sessions: list[Session]) -> list[SessionVerdict]:
        now = dt.datetime.now(dt.UTC)
        found = self.approvals.grants_by_id(s.grant_id for s in sessions if s.grant_id)
        out = []
        for s in sessions:
            grant = found.get(s.grant_id or "")
            if grant is not None and grant.active(now):
                closed = self.outside_window(self.approval_rules.for_grant(s.resource), now)
                if closed is not None:
                    why = (
                        f"its access grant {grant.id} may be used only inside its window: {closed}"
                    )
                    out.append(SessionVerdict(s, SessionEnd.WINDOW_CLOSED, why))
                continue
            if grant is None:
                why = "the session's access grant had ended"
            elif grant.revoked_at is not None:
                why = f"its access grant {grant.id} was revoked ({grant.revoked_reason})"
            else:
                why = f"its access grant {grant.id} expired at {grant.expires_at:%H:%M:%S} UTC"
            out.append(SessionVerdict(s, SessionEnd.GRANT_ENDED, why))
        return out

    def end_session(
        self, session: Session, end: SessionEnd, bytes_in: int, bytes_out: int, error: str | None
    ) -> None:
        self.audit.session_ended(session.id, end, bytes_in, bytes_out, error)

    # -- commands -----------------------------------------------------------------------
    def analyze(self, sql: str) -> Analysis:
        return self.analyzer.analyze(sql)

    def admit(
        self,
        session: Session,
        seq: int,
        text: str,
        params: tuple[str | None, ...] | None = None,
        *,
        opaque: bool = False,
        approval: ApprovalOutcome | None = None,
        estimate: int | None = None,
    ) -> Admission:
        """Analyse and decide on a command; raises `CommandDenied` when a rule refuses it.

        A refused command is recorded here (decision, rule, the facts that matched); an
        admitted one must then be recorded with `record` before it is forwarded. `opaque`:
        the text only describes the command (a fastpath call), it cannot be analysed.
        A `review` covered by an approval rule raises `HeldForReview`; `approval` is the
        outcome of that review when the held command comes back. A `rows_over` rule raises
        `NeedsEstimate` first; `estimate` is the planner's row estimate when it comes back.
        """
        analysis = self.analyzer.analyze(text)
        verdict = self.guardrails.judge(
            session.principal,
            session.resource,
            analysis,
            opaque=opaque,
            read_only=session.read_only,
            estimate=estimate,
        )
        if verdict.needs_estimate:
            facts = analysis.statements
            explainable = len(facts) == 1 and facts[0].kind == "select" and not facts[0].writes
            raise NeedsEstimate(
                Command(session_id=session.id, seq=seq, text=text), explainable and not opaque
            )
        watch = verdict.watch if verdict.decision.allowed else None
        if estimate is not None and verdict.decision.allowed and not verdict.decision.reason:
            note = f"estimated rows: {estimate}"
            if watch is not None:
                note += f"; actual rows watched by '{watch.rule}' (over {watch.threshold})"
            verdict = Verdict(Decision(DecisionKind.ALLOW, "", note), watch=watch)
        if not self.manifest.audit.record_parameters:
            params = None
        # Positional: a frozen dataclass costs about twice as much built by keyword, and
        # this runs once per statement.
        command = Command(
            session.id, seq, text, analysis.kind, analysis.tables, params, verdict.decision
        )
        if verdict.decision.kind is DecisionKind.REVIEW:
            rule = self.approval_rules.for_statement(session.resource, verdict.decision.rule)
            if rule is not None:
                closed = self.outside_window(rule)
                if closed is not None and (approval is None or approval.approved):
                    self._outside_window(command, verdict, rule, closed, approval)
                if approval is None:
                    raise HeldForReview(command, verdict, rule)
                return self._reviewed(command, verdict, approval, analysis)
        if verdict.refused:
            self._refuse_command(command, verdict)
        if watch is None:
            return Admission(command, analysis)
        reviewers = None
        if watch.action is DecisionKind.REVIEW:
            reviewers = self.approval_rules.for_statement(session.resource, watch.rule)
        return Admission(command, analysis, watch, reviewers)

    def _outside_window(
        self,
        command: Command,
        verdict: Verdict,
        rule: ApprovalRule,
        closed: str,
        approval: ApprovalOutcome | None,
    ) -> NoReturn:
        """Refuse a statement whose approval rule's execution window is closed (recorded)."""
        assert rule.window is not None
        if approval is None:
            what = "so it is not held for review now"
        else:
            what = f"request {approval.request_id} was approved after it closed"
        message = (
            f"statements reviewed under approval rule '{rule.name}' may run only inside its "
            f"execution window ({closed}); {what}"
        )
        decision = Decision(
            DecisionKind.DENY, verdict.decision.rule, f"{verdict.decision.reason} [{message}]"
        )
        self.audit.command_refused(
            replace(command, decision=decision),
            ResultSummary(status="outside the execution window", error_message=message),
        )
        raise ApprovalRejected(
            message,
            hint=f"run it again inside the window ({rule.window.describe()})",
            rule=verdict.decision.rule,
        )

    def _reviewed(
        self, command: Command, verdict: Verdict, outcome: ApprovalOutcome, analysis: Analysis
    ) -> Admission:
        rule = verdict.decision.rule
        note = f"request {outcome.request_id} {outcome.status}: {outcome.reason}"
        if outcome.approved:
            decision = Decision(DecisionKind.ALLOW, rule, f"{verdict.decision.reason} [{note}]")
            return Admission(replace(command, decision=decision), analysis)
        decision = Decision(DecisionKind.DENY, rule, f"{verdict.decision.reason} [{note}]")
        self.audit.command_refused(
            replace(command, decision=decision),
            ResultSummary(status=f"review {outcome.status}", error_message=outcome.reason),
        )
        raise ApprovalRejected(
            f"the statement was not run: approval request {outcome.request_id} "
            f"{outcome.status} ({outcome.reason})",
            hint="the session goes on; ask a reviewer, or change the statement",
            rule=rule,
        )

    async def hold(self, session: Session, held: HeldForReview) -> ApprovalRequest:
        """Store (and announce) the approval request for a held command."""
        cmd = held.command
        return await self.broker.open(
            lambda: self.approvals.create(
                STATEMENT,
                session.principal,
                session.resource,
                held.rule,
                held.verdict.decision.reason,
                statement=cmd.text,
                guardrail=held.verdict.decision.rule,
                session_id=session.id,
            )
        )

    async def hold_rows(self, session: Session, admission: Admission) -> ApprovalRequest:
        """Store (and announce) the request to let a watched read return more rows."""
        watch, rule = admission.watch, admission.reviewers
        assert watch is not None and rule is not None
        reason = (
            f"{watch.message}; it returned more rows than the planner estimated and needs a "
            f"reviewer's approval to go on [matched: {watch.matched}; actual rows passed "
            f"{watch.threshold}, estimated rows={watch.estimate}]"
        )
        return await self.broker.open(
            lambda: self.approvals.create(
                STATEMENT,
                session.principal,
                session.resource,
                rule,
                reason,
                statement=admission.command.text,
                guardrail=watch.rule,
                session_id=session.id,
            )
        )

    def screen(self, session: Session, seq: int, text: str) -> None:
        """Judge a statement being prepared (it must not even be prepared if refused).

        Nothing is recorded when it passes (its executions are); raises `CommandDenied`
        after recording the refusal under `seq` otherwise.
        """
        analysis = self.analyzer.analyze(text)
        verdict = self.guardrails.judge(
            session.principal, session.resource, analysis, read_only=session.read_only
        )
        if verdict.decision.kind is DecisionKind.REVIEW and self.approval_rules.for_statement(
            session.resource, verdict.decision.rule
        ):
            return  # prepared freely: each execution is held for review
        if verdict.refused:
            command = Command(
                session_id=session.id,
                seq=seq,
                text=text,
                kind=analysis.kind,
                tables=analysis.tables,
                decision=verdict.decision,
            )
            self._refuse_command(command, verdict)

    def refused(self, session: Session, seq: int, text: str, error: LockgateError) -> None:
        """Record a command refused outside the guardrails (masking: it would leak masked data).

        Recorded like a guardrail refusal (decision deny, rule, reason); it never runs.
        """
        analysis = self.analyzer.analyze(text)
        reason = f"{error.message} [{error.detail}]" if error.detail else error.message
        command = Command(
            session_id=session.id,
            seq=seq,
            text=text,
            kind=analysis.kind,
            tables=analysis.tables,
            decision=Decision(DecisionKind.DENY, error.rule, reason),
        )
        self.audit.command_refused(
            command, ResultSummary(status="refused", error_message=error.message)
        )

    def _refuse_command(self, command: Command, verdict: Verdict) -> NoReturn:
        review = verdict.decision.kind is DecisionKind.REVIEW
        self.audit.command_refused(
            command,
            ResultSummary(
                status="held for review" if review else "refused",
                error_message=verdict.message,
            ),
        )
        raise CommandDenied(
            verdict.message,
            hint=(
                "ask a reviewer or an administrator to run it, or to change the rule"
                if review
                else "the statement was not run; if you need it, ask an administrator "
                "about this rule"
            ),
            rule=verdict.decision.rule,
        )

    def admit_ssh(self, session: Session, seq: int, request: SshRequest, kind: str) -> Admission:
        """Decide on an SSH request (exec, shell line, subsystem, file, forward).

        Never raises: the command carries the decision. Record it with `record` either way;
        forward it only when `command.decision.allowed`, else refuse it natively.
        """
        decision = self.ssh_policy.decide(session.principal, session.resource, request)
        command = Command(
            session_id=session.id, seq=seq, text=request.text, kind=kind, decision=decision
        )
        return Admission(command, _NO_SQL)

    def record(self, admissions: list[Admission]) -> asyncio.Future[None] | None:
        """Write admitted commands to the audit trail before they are forwarded.

        Returns None when they are already durable, or a future that completes when they
        are; raises (or the future fails with) `AuditUnavailable`: then nothing may run.
        """
        return self.audit.commands_started([a.command for a in admissions])

    def command_finished(self, session: Session, seq: int, summary: ResultSummary) -> None:
        self.audit.command_finished(session.id, seq, summary)
