// One session: its facts, its SSH recording (if any) and its statement timeline.
import { useState } from "preact/hooks";
import {
  get,
  type Me,
  messageOf,
  type Review,
  type SessionDetail,
  type TimelineEntry,
} from "../api";
import { Badge, ErrorNote } from "../components/Badge";
import { Player } from "../components/Player";
import { Command, Sql } from "../components/Sql";
import { formatCount, formatMs, formatTime } from "../format";
import { useEvents, useLoad } from "../hooks";
import { isAdmin } from "../roles";
import { EndSessionDialog } from "./Sessions";

export function SessionPage({ me, id }: { me: Me; id: string }) {
  const { data, error, loading, reload } = useLoad(
    () => get<SessionDetail>(`/api/sessions/${encodeURIComponent(id)}`),
    [id],
  );
  const [ending, setEnding] = useState(false);
  const [endAsked, setEndAsked] = useState(false);
  // Statements of this session waiting for a reviewer are not in the timeline until they
  // run; show them apart. (People who may not read the queue simply do not see this part.)
  const held = useLoad(
    () =>
      get<{ items: Review[] }>("/api/reviews?status=pending&kind=statement").then((r) =>
        r.items.filter((x) => x.session_id === id),
      ),
    [id],
  );
  useEvents({
    session: (s) => {
      if ((s as { id?: string }).id === id) reload();
    },
    review: (r) => {
      if ((r as Review).session_id === id) held.reload();
    },
  });

  if (loading && !data) return <h1>Session</h1>;
  if (error || !data)
    return (
      <>
        <h1>Session</h1>
        <ErrorNote error={messageOf(error)} />
        <p>
          <a href="/sessions">Back to sessions</a>
        </p>
      </>
    );
  const s = data.session;
  const recording = `/api/sessions/${encodeURIComponent(s.id)}/recording`;
  return (
    <>
      <nav aria-label="Breadcrumb" class="breadcrumb">
        <a href="/sessions">Sessions</a> › <span aria-current="page">{s.id}</span>
      </nav>
      <div class="page-head">
        <h1>
          {s.subject} on {s.resource}
        </h1>
        {s.live ? (
          <Badge value="live" />
        ) : (
          <Badge value="ended" label={s.end_reason ? `ended: ${s.end_reason}` : "ended"} />
        )}
        {s.live && isAdmin(me) && !endAsked && (
          <button type="button" class="danger" onClick={() => setEnding(true)}>
            End session
          </button>
        )}
      </div>
      <dl class="facts session-facts">
        <div>
          <dt>Identity</dt>
          <dd>
            {s.subject} <span class="muted">({s.issuer})</span>
          </dd>
        </div>
        <div>
          <dt>Groups</dt>
          <dd>{s.groups.join(", ") || "—"}</dd>
        </div>
        <div>
          <dt>Protocol</dt>
          <dd>{s.protocol}</dd>
        </div>
        <div>
          <dt>Client</dt>
          <dd>{s.client_addr}</dd>
        </div>
        <div>
          <dt>Started</dt>
          <dd>{formatTime(s.started_at)}</dd>
        </div>
        <div>
          <dt>Ended</dt>
          <dd>{s.ended_at ? formatTime(s.ended_at) : "still connected"}</dd>
        </div>
        <div>
          <dt>{s.protocol === "ssh" ? "Commands" : "Statements"}</dt>
          <dd>
            {formatCount(s.statements)} ({formatCount(s.denied)} denied, {formatCount(s.held)} held
            {s.masked_cells > 0 ? `, ${formatCount(s.masked_cells)} masked cells` : ""})
          </dd>
        </div>
      </dl>
      {s.has_recording && (
        <Player src={recording} title={`Terminal recording of ${s.subject} on ${s.resource}`} />
      )}
      {held.data && held.data.length > 0 && (
        <section aria-labelledby="held-heading">
          <h2 id="held-heading">Waiting for review</h2>
          <ul class="cards">
            {held.data.map((r) => (
              <li key={r.id} class="card">
                <p>
                  Held by rule <code>{r.rule}</code> since {formatTime(r.created_at)};{" "}
                  <a href="/reviews">decide in the review queue</a>.
                </p>
                {r.statement && <Sql text={r.statement} />}
              </li>
            ))}
          </ul>
        </section>
      )}
      <Timeline entries={data.timeline} protocol={s.protocol} />
      {endAsked && s.live && (
        <p class="ok-note" role="status">
          Ending this session: the gateway disconnects it at its next check.
        </p>
      )}
      {ending && (
        <EndSessionDialog
          session={s}
          onClose={(ended) => {
            setEnding(false);
            if (ended) {
              setEndAsked(true);
              reload();
            }
          }}
        />
      )}
    </>
  );
}

function Timeline({ entries, protocol }: { entries: TimelineEntry[]; protocol: string }) {
  return (
    <section aria-labelledby="timeline-heading">
      <h2 id="timeline-heading">Timeline</h2>
      {entries.length === 0 ? (
        <p class="empty">No statements in this session.</p>
      ) : (
        <ol class="timeline">
          {entries.map((e) => (
            <li key={e.seq} class={`entry decision-${e.decision}`} data-testid="timeline-entry">
              <div class="entry-head">
                <span class="seq" aria-label={`Statement ${e.seq}`}>
                  #{e.seq}
                </span>
                <time dateTime={e.at}>{formatTime(e.at)}</time>
                <span class="kind">{e.kind}</span>
                <Badge value={e.decision} />
                {e.rule && (
                  <span>
                    rule <code>{e.rule}</code>
                  </span>
                )}
              </div>
              <Command text={e.text} protocol={protocol} />
              <dl class="entry-facts">
                {e.rows !== null && (
                  <div>
                    <dt>Rows</dt>
                    <dd>{formatCount(e.rows)}</dd>
                  </div>
                )}
                {e.masked_cells !== null && (
                  <div>
                    <dt>Masked cells</dt>
                    <dd>{formatCount(e.masked_cells)}</dd>
                  </div>
                )}
                {e.duration_ms !== null && (
                  <div>
                    <dt>Duration</dt>
                    <dd>{formatMs(e.duration_ms)}</dd>
                  </div>
                )}
                {e.reason && (
                  <div>
                    <dt>Reason</dt>
                    <dd>{e.reason}</dd>
                  </div>
                )}
                {e.approval_id && (
                  <div>
                    <dt>Review</dt>
                    <dd>
                      <code>{e.approval_id}</code>
                    </dd>
                  </div>
                )}
              </dl>
              {e.error && (
                <p class="entry-error">
                  <strong>Error:</strong> {e.error}
                </p>
              )}
            </li>
          ))}
        </ol>
      )}
    </section>
  );
}
