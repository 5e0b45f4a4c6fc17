// The review queue: held statements and access requests, live from /api/events.
import { useState } from "preact/hooks";
import { get, type Me, messageOf, post, type Review } from "../api";
import { Badge, ErrorNote } from "../components/Badge";
import { Sql } from "../components/Sql";
import { formatCount, formatDuration, formatTime } from "../format";
import { useEvents, useLoad, useNow } from "../hooks";
import { canReview } from "../roles";

function upsert(list: Review[], r: Review): Review[] {
  const i = list.findIndex((x) => x.id === r.id);
  if (i < 0) return [r, ...list];
  const copy = list.slice();
  copy[i] = r;
  return copy;
}

export function ReviewsPage({ me }: { me: Me }) {
  const [items, setItems] = useState<Review[] | null>(null);
  const [receivedAt, setReceivedAt] = useState<Record<string, number>>({});
  const [announce, setAnnounce] = useState("");
  const stamp = (rs: Review[]) =>
    setReceivedAt((m) => ({ ...m, ...Object.fromEntries(rs.map((r) => [r.id, Date.now()])) }));

  const { error, loading, reload } = useLoad(async () => {
    const data = await get<{ items: Review[] }>("/api/reviews?status=all");
    setItems(data.items);
    stamp(data.items);
    return data;
  }, []);

  const live = useEvents({
    review: (data) => {
      const r = data as Review;
      setItems((list) => {
        const had = list?.some((x) => x.id === r.id) ?? false;
        if (!had && r.status === "pending")
          setAnnounce(
            `New ${r.kind === "grant" ? "access request" : "statement review"} from ${r.requester.subject} on ${r.resource}`,
          );
        else if (had && r.status !== "pending")
          setAnnounce(`Request from ${r.requester.subject} ${r.status}`);
        return upsert(list ?? [], r);
      });
      stamp([r]);
    },
  });

  const pending = (items ?? []).filter((r) => r.status === "pending");
  const decided = (items ?? []).filter((r) => r.status !== "pending").slice(0, 20);

  return (
    <>
      <div class="page-head">
        <h1>Review queue</h1>
        <p class="live-state" data-state={live}>
          <span aria-hidden="true" class="dot" />
          {live === "live"
            ? "Live: new requests appear here"
            : live === "connecting"
              ? "Connecting…"
              : "Reconnecting…"}
        </p>
        <button type="button" onClick={reload}>
          Refresh
        </button>
      </div>
      <div class="visually-hidden" aria-live="polite" role="status">
        {announce}
      </div>
      {!canReview(me) && (
        <p class="note">You can read this queue; only reviewers and admins decide requests.</p>
      )}
      <ErrorNote error={error ? messageOf(error) : null} />
      <section aria-labelledby="pending-heading">
        <h2 id="pending-heading">
          Waiting for a decision <span class="count">({pending.length})</span>
        </h2>
        {loading && items === null && <p>Loading…</p>}
        {items !== null && pending.length === 0 && (
          <p class="empty">Nothing is waiting for review.</p>
        )}
        <ul class="cards">
          {pending.map((r) => (
            <li key={r.id}>
              <ReviewCard
                review={r}
                me={me}
                receivedAt={receivedAt[r.id] ?? Date.now()}
                onChange={(n) => setItems((l) => upsert(l ?? [], n))}
              />
            </li>
          ))}
        </ul>
      </section>
      <section aria-labelledby="decided-heading">
        <h2 id="decided-heading">Recently decided</h2>
        {decided.length === 0 ? (
          <p class="empty">No decisions yet.</p>
        ) : (
          <table class="data">
            <caption class="visually-hidden">Recently decided requests</caption>
            <thead>
              <tr>
                <th scope="col">Requested</th>
                <th scope="col">Requester</th>
                <th scope="col">Resource</th>
                <th scope="col">What</th>
                <th scope="col">Outcome</th>
                <th scope="col">Decided by</th>
              </tr>
            </thead>
            <tbody>
              {decided.map((r) => (
                <tr key={r.id}>
                  <td>{formatTime(r.created_at)}</td>
                  <td>{r.requester.subject}</td>
                  <td>{r.resource}</td>
                  <td class="clip">
                    {r.kind === "grant"
                      ? `access for ${formatDuration(r.duration_seconds ?? 0)}`
                      : r.statement}
                  </td>
                  <td>
                    <Badge value={r.status} />
                  </td>
                  <td>{r.decisions.map((d) => `${d.reviewer}: ${d.reason}`).join("; ") || "—"}</td>
                </tr>
              ))}
            </tbody>
          </table>
        )}
      </section>
    </>
  );
}

function ReviewCard({
  review: r,
  me,
  receivedAt,
  onChange,
}: {
  review: Review;
  me: Me;
  receivedAt: number;
  onChange: (r: Review) => void;
}) {
  const now = useNow();
  const [reason, setReason] = useState("");
  const [busy, setBusy] = useState(false);
  const [error, setError] = useState<string | null>(null);
  const waited = r.waited_seconds + (now - receivedAt) / 1000;
  const expiresIn = (new Date(r.expires_at).getTime() - now) / 1000;
  const headingId = `review-${r.id}`;
  const reasonId = `reason-${r.id}`;
  const showDecide = r.can_decide && canReview(me);

  const decide = async (verdict: "approve" | "deny") => {
    if (!reason.trim()) {
      setError("Give a reason: it is recorded with your decision.");
      document.getElementById(reasonId)?.focus();
      return;
    }
    setBusy(true);
    setError(null);
    try {
      onChange(
        await post<Review>(`/api/reviews/${encodeURIComponent(r.id)}/${verdict}`, {
          reason: reason.trim(),
        }),
      );
    } catch (e) {
      setError(messageOf(e));
    } finally {
      setBusy(false);
    }
  };

  return (
    <article
      class="card review"
      id={`review-${r.id}`}
      aria-labelledby={headingId}
      data-review-id={r.id}
    >
      <header>
        <h3 id={headingId}>
          {r.kind === "grant" ? "Access request" : "Held statement"}:{" "}
          <strong>{r.requester.subject}</strong> on <strong>{r.resource}</strong>
        </h3>
        <p class="waiting" data-testid="waiting">
          Waiting <time>{formatDuration(waited)}</time>
          {expiresIn > 0 ? <> · expires in {formatDuration(expiresIn)}</> : <> · expired</>}
        </p>
      </header>
      <dl class="facts">
        <div>
          <dt>Requester</dt>
          <dd>
            {r.requester.subject}
            {r.requester.groups.length > 0 && (
              <span class="muted"> ({r.requester.groups.join(", ")})</span>
            )}
          </dd>
        </div>
        {r.rule && (
          <div>
            <dt>Rule</dt>
            <dd>
              <code>{r.rule}</code>
            </dd>
          </div>
        )}
        {r.estimated_rows !== null && (
          <div>
            <dt>Estimated rows</dt>
            <dd>{formatCount(r.estimated_rows)}</dd>
          </div>
        )}
        {r.duration_seconds !== null && (
          <div>
            <dt>Duration asked</dt>
            <dd>{formatDuration(r.duration_seconds)}</dd>
          </div>
        )}
        <div>
          <dt>{r.kind === "grant" ? "Reason given" : "Why held"}</dt>
          <dd>{r.reason || "—"}</dd>
        </div>
        {r.approval_rule && (
          <div>
            <dt>Approval rule</dt>
            <dd>
              <code>{r.approval_rule}</code>
            </dd>
          </div>
        )}
        <div>
          <dt>Approvals</dt>
          <dd>
            {r.decisions.filter((d) => d.verdict === "approve").length} of {r.quorum} from{" "}
            {r.reviewer_groups.join(", ") || "reviewers"}
          </dd>
        </div>
        {r.session_id && (
          <div>
            <dt>Session</dt>
            <dd>
              <a href={`/sessions/${encodeURIComponent(r.session_id)}`}>Open the session</a>
            </dd>
          </div>
        )}
      </dl>
      {r.statement && <Sql text={r.statement} label={`Statement from ${r.requester.subject}`} />}
      {r.decisions.length > 0 && (
        <ul class="decisions">
          {r.decisions.map((d) => (
            <li>
              <Badge value={d.verdict} /> {d.reviewer} at {formatTime(d.at)}: {d.reason}
            </li>
          ))}
        </ul>
      )}
      {showDecide && (
        <form
          class="decide"
          onSubmit={(e) => {
            e.preventDefault();
            void decide("approve");
          }}
        >
          <label for={reasonId}>Reason for your decision</label>
          <input
            id={reasonId}
            type="text"
            required
            value={reason}
            onInput={(e) => setReason((e.target as HTMLInputElement).value)}
            placeholder="e.g. ticket OPS-123, checked with the requester"
          />
          <div class="actions">
            <button type="submit" class="primary" disabled={busy} aria-describedby={headingId}>
              Approve
            </button>
            <button
              type="button"
              class="danger"
              disabled={busy}
              aria-describedby={headingId}
              onClick={() => void decide("deny")}
            >
              Deny
            </button>
          </div>
        </form>
      )}
      <ErrorNote error={error} />
    </article>
  );
}
