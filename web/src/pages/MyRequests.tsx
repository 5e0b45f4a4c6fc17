// The signed-in person's own access requests and grants, and the form to ask for access.
import { useState } from "preact/hooks";
import { type Grant, get, type Me, messageOf, post, type Review } from "../api";
import { Badge, ErrorNote, ValidityBadge } from "../components/Badge";
import { formatDuration, formatTime } from "../format";
import { useEvents, useLoad } from "../hooks";

export function MyRequestsPage({ me }: { me: Me }) {
  const reviews = useLoad(() => get<{ items: Review[] }>("/api/reviews?status=all&kind=grant"), []);
  const grants = useLoad(() => get<{ items: Grant[] }>("/api/grants?all=false"), []);
  const [resource, setResource] = useState("");
  const [duration, setDuration] = useState("1h");
  const [reason, setReason] = useState("");
  const [busy, setBusy] = useState(false);
  const [error, setError] = useState<string | null>(null);
  const [done, setDone] = useState<string | null>(null);
  useEvents({
    review: (r) => {
      if ((r as Review).requester?.subject === me.subject) {
        reviews.reload();
        grants.reload();
      }
    },
  });
  const mine = (reviews.data?.items ?? []).filter(
    (r) => r.requester.subject === me.subject && r.requester.issuer === me.issuer,
  );

  const submit = async (ev: Event) => {
    ev.preventDefault();
    setBusy(true);
    setError(null);
    setDone(null);
    try {
      const r = await post<Review>("/api/requests", {
        resource: resource.trim(),
        duration,
        reason: reason.trim(),
      });
      setDone(
        `Request sent: access to ${r.resource}, waiting for ${r.reviewer_groups.join(", ") || "a reviewer"}.`,
      );
      setReason("");
      reviews.reload();
    } catch (e) {
      setError(messageOf(e));
    } finally {
      setBusy(false);
    }
  };

  return (
    <>
      <h1>My requests</h1>
      <section aria-labelledby="ask-heading" class="card">
        <h2 id="ask-heading">Request access</h2>
        <form class="request-form" onSubmit={(e) => void submit(e)}>
          <div class="field">
            <label for="r-resource">Resource</label>
            <input
              id="r-resource"
              required
              value={resource}
              onInput={(e) => setResource((e.target as HTMLInputElement).value)}
            />
          </div>
          <div class="field">
            <label for="r-duration">For how long</label>
            <select
              id="r-duration"
              value={duration}
              onChange={(e) => setDuration((e.target as HTMLSelectElement).value)}
            >
              {["15m", "30m", "1h", "2h", "4h", "8h"].map((d) => (
                <option value={d}>{d}</option>
              ))}
            </select>
          </div>
          <div class="field wide">
            <label for="r-reason">Reason</label>
            <input
              id="r-reason"
              required
              value={reason}
              onInput={(e) => setReason((e.target as HTMLInputElement).value)}
              placeholder="e.g. incident INC-42: check the stuck payments"
            />
          </div>
          <div class="actions">
            <button type="submit" class="primary" disabled={busy}>
              Send request
            </button>
          </div>
        </form>
        <ErrorNote error={error} />
        {done && (
          <p class="ok-note" role="status">
            {done}
          </p>
        )}
      </section>
      <section aria-labelledby="mine-heading">
        <h2 id="mine-heading">Requests</h2>
        <ErrorNote error={reviews.error ? messageOf(reviews.error) : null} />
        {reviews.data && mine.length === 0 && (
          <p class="empty">You have not asked for access yet.</p>
        )}
        {mine.length > 0 && (
          <table class="data">
            <caption class="visually-hidden">My access requests</caption>
            <thead>
              <tr>
                <th scope="col">Asked</th>
                <th scope="col">Resource</th>
                <th scope="col">For</th>
                <th scope="col">Reason</th>
                <th scope="col">State</th>
                <th scope="col">Reviewers said</th>
              </tr>
            </thead>
            <tbody>
              {mine.map((r) => (
                <tr key={r.id}>
                  <td>{formatTime(r.created_at)}</td>
                  <td>{r.resource}</td>
                  <td>{r.duration_seconds !== null ? formatDuration(r.duration_seconds) : "—"}</td>
                  <td>{r.reason}</td>
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
      <section aria-labelledby="grants-heading">
        <h2 id="grants-heading">Grants</h2>
        <ErrorNote error={grants.error ? messageOf(grants.error) : null} />
        {grants.data && grants.data.items.length === 0 && <p class="empty">No grants.</p>}
        {grants.data && grants.data.items.length > 0 && (
          <table class="data">
            <caption class="visually-hidden">My grants</caption>
            <thead>
              <tr>
                <th scope="col">Resource</th>
                <th scope="col">Granted</th>
                <th scope="col">Expires</th>
                <th scope="col">State</th>
              </tr>
            </thead>
            <tbody>
              {grants.data.items.map((g) => (
                <tr key={g.id}>
                  <td>{g.resource}</td>
                  <td>{formatTime(g.granted_at)}</td>
                  <td>{formatTime(g.expires_at)}</td>
                  <td>
                    <ValidityBadge
                      revokedLabel={g.revoked_at ? `revoked by ${g.revoked_by ?? "?"}` : null}
                      expiresAt={g.expires_at}
                      now={Date.now()}
                      validLabel="active"
                    />
                  </td>
                </tr>
              ))}
            </tbody>
          </table>
        )}
      </section>
    </>
  );
}
