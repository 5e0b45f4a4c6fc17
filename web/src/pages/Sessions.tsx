// Live and past sessions with filters kept in the URL (so a filtered view can be shared),
// export of the filtered set, and the admin's "end session".
import { useEffect, useRef, useState } from "preact/hooks";
import { get, type Me, messageOf, post, query, type Session } from "../api";
import { Badge, ErrorNote } from "../components/Badge";
import { formatCount, formatTime, fromLocalInput, toLocalInput } from "../format";
import { useEvents } from "../hooks";
import { isAdmin } from "../roles";
import { navigate, useLocation } from "../router";

const FILTERS = [
  "live",
  "subject",
  "group",
  "resource",
  "protocol",
  "since",
  "until",
  "decision",
  "q",
] as const;
type Filters = Partial<Record<(typeof FILTERS)[number], string>>;

function readFilters(search: URLSearchParams): Filters {
  const f: Filters = {};
  for (const k of FILTERS) {
    const v = search.get(k);
    if (v) f[k] = v;
  }
  return f;
}

export function SessionsPage({ me }: { me: Me }) {
  const { search } = useLocation();
  const filters = readFilters(search);
  const key = query(filters);
  const [draft, setDraft] = useState<Filters>(filters);
  const [items, setItems] = useState<Session[]>([]);
  const [next, setNext] = useState<string | null>(null);
  const [loading, setLoading] = useState(true);
  const [error, setError] = useState<string | null>(null);
  const [ending, setEnding] = useState<string | null>(null);
  const [notice, setNotice] = useState<string | null>(null);

  const load = async (cursor: string | null) => {
    setLoading(true);
    setError(null);
    try {
      const data = await get<{ items: Session[]; next: string | null }>(
        `/api/sessions${query({ ...filters, limit: "50", cursor })}`,
      );
      setItems((old) => (cursor ? [...old, ...data.items] : data.items));
      setNext(data.next);
    } catch (e) {
      setError(messageOf(e));
    } finally {
      setLoading(false);
    }
  };

  // Reload when the filters in the URL change (`key` is their query string).
  useEffect(() => {
    setDraft(filters);
    void load(null);
  }, [key]);

  // A session that starts or ends elsewhere updates its row; new ones appear on the live view.
  useEvents({
    session: (data) => {
      const s = data as Session;
      setItems((list) => {
        const i = list.findIndex((x) => x.id === s.id);
        if (i >= 0) {
          const copy = list.slice();
          copy[i] = s;
          return copy;
        }
        return filters.live === "true" && s.live && Object.keys(filters).length === 1
          ? [s, ...list]
          : list;
      });
    },
  });

  const apply = (ev: Event) => {
    ev.preventDefault();
    navigate(`/sessions${query(draft)}`);
  };
  const set = (k: keyof Filters) => (e: Event) =>
    setDraft((d) => ({ ...d, [k]: (e.target as HTMLInputElement | HTMLSelectElement).value }));
  const exportHref = (format: string) => `/api/sessions/export${query({ ...filters, format })}`;

  return (
    <>
      <div class="page-head">
        <h1>Sessions</h1>
      </div>
      <form class="filters" role="search" aria-label="Filter sessions" onSubmit={apply}>
        <div class="field wide">
          <label for="f-q">Statement text</label>
          <input
            id="f-q"
            type="search"
            value={draft.q ?? ""}
            onInput={set("q")}
            placeholder="e.g. DELETE FROM payments"
          />
        </div>
        <div class="field">
          <label for="f-live">State</label>
          <select id="f-live" value={draft.live ?? ""} onChange={set("live")}>
            <option value="">Live and past</option>
            <option value="true">Live</option>
            <option value="false">Ended</option>
          </select>
        </div>
        <div class="field">
          <label for="f-subject">Identity</label>
          <input id="f-subject" value={draft.subject ?? ""} onInput={set("subject")} />
        </div>
        <div class="field">
          <label for="f-group">Group</label>
          <input id="f-group" value={draft.group ?? ""} onInput={set("group")} />
        </div>
        <div class="field">
          <label for="f-resource">Resource</label>
          <input id="f-resource" value={draft.resource ?? ""} onInput={set("resource")} />
        </div>
        <div class="field">
          <label for="f-protocol">Protocol</label>
          <select id="f-protocol" value={draft.protocol ?? ""} onChange={set("protocol")}>
            <option value="">Any</option>
            <option value="postgres">PostgreSQL</option>
            <option value="ssh">SSH</option>
          </select>
        </div>
        <div class="field">
          <label for="f-decision">Decision</label>
          <select id="f-decision" value={draft.decision ?? ""} onChange={set("decision")}>
            <option value="">Any</option>
            <option value="denied">Had a denial</option>
            <option value="held">Had a held statement</option>
            <option value="masked">Had masked cells</option>
          </select>
        </div>
        <div class="field">
          <label for="f-since">From</label>
          <input
            id="f-since"
            type="datetime-local"
            value={draft.since ? toLocalInput(draft.since) : ""}
            onInput={(e) =>
              setDraft((d) => ({
                ...d,
                since: fromLocalInput((e.target as HTMLInputElement).value),
              }))
            }
          />
        </div>
        <div class="field">
          <label for="f-until">To</label>
          <input
            id="f-until"
            type="datetime-local"
            value={draft.until ? toLocalInput(draft.until) : ""}
            onInput={(e) =>
              setDraft((d) => ({
                ...d,
                until: fromLocalInput((e.target as HTMLInputElement).value),
              }))
            }
          />
        </div>
        <div class="actions">
          <button type="submit" class="primary">
            Search
          </button>
          <button type="button" onClick={() => navigate("/sessions")}>
            Clear
          </button>
        </div>
      </form>
      <div class="toolbar">
        <p role="status" aria-live="polite">
          {loading
            ? "Loading…"
            : `${items.length}${next ? "+" : ""} session${items.length === 1 ? "" : "s"}`}
        </p>
        <span>
          Export these sessions:{" "}
          <a href={exportHref("jsonl")} download>
            JSON lines
          </a>{" "}
          ·{" "}
          <a href={exportHref("csv")} download>
            CSV
          </a>
        </span>
      </div>
      <ErrorNote error={error} />
      {notice && (
        <p class="ok-note" role="status">
          {notice}
        </p>
      )}
      <table class="data sessions">
        <caption class="visually-hidden">Sessions matching the filters</caption>
        <thead>
          <tr>
            <th scope="col">Started</th>
            <th scope="col">Identity</th>
            <th scope="col">Resource</th>
            <th scope="col">Protocol</th>
            <th scope="col">State</th>
            <th scope="col" class="num">
              Statements
            </th>
            <th scope="col" class="num">
              Denied
            </th>
            <th scope="col" class="num">
              Held
            </th>
            <th scope="col" class="num">
              Masked cells
            </th>
            <th scope="col">
              <span class="visually-hidden">Actions</span>
            </th>
          </tr>
        </thead>
        <tbody>
          {items.map((s) => (
            <tr key={s.id}>
              <td>
                <a
                  href={`/sessions/${encodeURIComponent(s.id)}`}
                  aria-label={`Session of ${s.subject} on ${s.resource}, started ${formatTime(s.started_at)}`}
                >
                  {formatTime(s.started_at)}
                </a>
              </td>
              <td>
                {s.subject}
                {s.groups.length > 0 && <span class="muted"> ({s.groups.join(", ")})</span>}
              </td>
              <td>{s.resource}</td>
              <td>{s.protocol}</td>
              <td>
                {s.live ? (
                  <Badge value="live" />
                ) : (
                  <Badge value="ended" label={s.end_reason ? `ended: ${s.end_reason}` : "ended"} />
                )}
                {s.has_recording && <span class="muted"> · recorded</span>}
              </td>
              <td class="num">{formatCount(s.statements)}</td>
              <td class="num">{formatCount(s.denied)}</td>
              <td class="num">{formatCount(s.held)}</td>
              <td class="num">{formatCount(s.masked_cells)}</td>
              <td>
                {s.live && isAdmin(me) && (
                  <button
                    type="button"
                    class="danger small"
                    onClick={() => setEnding(s.id)}
                    aria-label={`End session of ${s.subject} on ${s.resource}`}
                  >
                    End session
                  </button>
                )}
              </td>
            </tr>
          ))}
        </tbody>
      </table>
      {!loading && items.length === 0 && <p class="empty">No session matches these filters.</p>}
      {next && (
        <button type="button" onClick={() => void load(next)} disabled={loading}>
          Load more
        </button>
      )}
      {ending && (
        <EndSessionDialog
          session={items.find((s) => s.id === ending)!}
          onClose={(ended) => {
            const s = items.find((x) => x.id === ending);
            setEnding(null);
            if (ended && s) {
              setNotice(
                `Ending the session of ${s.subject} on ${s.resource}: the gateway disconnects it at its next check.`,
              );
              void load(null);
            }
          }}
        />
      )}
    </>
  );
}

export function EndSessionDialog({
  session,
  onClose,
}: {
  session: Session;
  onClose: (ended: boolean) => void;
}) {
  const [reason, setReason] = useState("");
  const [busy, setBusy] = useState(false);
  const [error, setError] = useState<string | null>(null);
  const dialog = useRef<HTMLDialogElement>(null);
  // A modal dialog keeps keyboard focus inside it and gives it back when it closes.
  useEffect(() => {
    const el = dialog.current;
    if (el && !el.open) el.showModal();
    return () => el?.close();
  }, []);
  const submit = async (ev: Event) => {
    ev.preventDefault();
    setBusy(true);
    setError(null);
    try {
      await post(`/api/sessions/${encodeURIComponent(session.id)}/end`, { reason: reason.trim() });
      onClose(true);
    } catch (e) {
      setError(messageOf(e));
      setBusy(false);
    }
  };
  return (
    <dialog
      class="modal"
      aria-labelledby="end-heading"
      ref={dialog}
      onCancel={(e) => {
        e.preventDefault();
        onClose(false);
      }}
    >
      <form onSubmit={(e) => void submit(e)}>
        <h2 id="end-heading">
          End the session of {session.subject} on {session.resource}?
        </h2>
        <p>
          The client is disconnected with your reason; the audit records the session as ended by an
          admin.
        </p>
        <label for="end-reason">Reason</label>
        <input
          id="end-reason"
          required
          value={reason}
          onInput={(e) => setReason((e.target as HTMLInputElement).value)}
        />
        <ErrorNote error={error} />
        <div class="actions">
          <button type="submit" class="danger" disabled={busy || !reason.trim()}>
            End session
          </button>
          <button type="button" onClick={() => onClose(false)}>
            Cancel
          </button>
        </div>
      </form>
    </dialog>
  );
}
