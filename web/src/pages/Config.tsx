// Configuration at a glance: the manifest as the gateway loaded it (secrets are never in the
// API's answer, only references) and the tokens it issued. Read-only.
import { get, type Me, messageOf, type TokenInfo } from "../api";
import { ErrorNote, ValidityBadge } from "../components/Badge";
import { formatTime } from "../format";
import { useLoad, useNow } from "../hooks";

type Json = null | boolean | number | string | Json[] | { [k: string]: Json };

const TITLES: Record<string, string> = {
  resources: "Resources",
  access: "Access rules",
  access_rules: "Access rules",
  guardrails: "Guardrails",
  masking: "Masking rules",
  masking_rules: "Masking rules",
  approvals: "Approval rules",
  listeners: "Listeners",
};

const title = (key: string) =>
  TITLES[key] ?? key.replace(/_/g, " ").replace(/^./, (c) => c.toUpperCase());

function Value({ v }: { v: Json }) {
  if (v === null || v === undefined) return <span class="muted">—</span>;
  if (typeof v === "boolean") return <>{v ? "yes" : "no"}</>;
  if (typeof v === "number" || typeof v === "string") return <>{String(v)}</>;
  if (Array.isArray(v)) {
    if (v.every((x) => x === null || typeof x !== "object"))
      return <>{v.map(String).join(", ") || "—"}</>;
    return (
      <ul class="nested">
        {v.map((x) => (
          <li>
            <Value v={x} />
          </li>
        ))}
      </ul>
    );
  }
  const entries = Object.entries(v);
  if (entries.length === 0) return <span class="muted">—</span>;
  return (
    <dl class="inline-dl">
      {entries.map(([k, x]) => (
        <div>
          <dt>{k}</dt>
          <dd>
            <Value v={x} />
          </dd>
        </div>
      ))}
    </dl>
  );
}

function Rows({ name, rows }: { name: string; rows: { [k: string]: Json }[] }) {
  const columns = [...new Set(rows.flatMap((r) => Object.keys(r)))];
  return (
    <div class="table-scroll" tabIndex={0} role="region" aria-label={title(name)}>
      <table class="data">
        <caption class="visually-hidden">{title(name)}</caption>
        <thead>
          <tr>
            {columns.map((c) => (
              <th scope="col">{c}</th>
            ))}
          </tr>
        </thead>
        <tbody>
          {rows.map((r) => (
            <tr>
              {columns.map((c) => (
                <td>
                  <Value v={r[c] ?? null} />
                </td>
              ))}
            </tr>
          ))}
        </tbody>
      </table>
    </div>
  );
}

function Part({ name, value }: { name: string; value: Json }) {
  const isRows = (x: Json): x is { [k: string]: Json }[] =>
    Array.isArray(x) &&
    x.length > 0 &&
    x.every((r) => r !== null && typeof r === "object" && !Array.isArray(r));
  let body;
  if (isRows(value)) body = <Rows name={name} rows={value} />;
  else if (value && typeof value === "object" && !Array.isArray(value)) {
    // A section such as guardrails: {rules: [...], ...}: its lists of rules as tables.
    const entries = Object.entries(value);
    body = entries.map(([k, v]) =>
      isRows(v) ? (
        <div key={k}>
          <h3>{title(k)}</h3>
          <Rows name={`${name} ${k}`} rows={v} />
        </div>
      ) : (
        <p key={k}>
          <strong>{k}:</strong> <Value v={v} />
        </p>
      ),
    );
  } else body = <Value v={value} />;
  return (
    <section aria-labelledby={`cfg-${name}`} class="config-part">
      <h2 id={`cfg-${name}`}>{title(name)}</h2>
      {Array.isArray(value) && value.length === 0 ? <p class="empty">None configured.</p> : body}
    </section>
  );
}

export function ConfigPage(_: { me: Me }) {
  const config = useLoad(() => get<Record<string, Json>>("/api/config"), []);
  const tokens = useLoad(() => get<{ items: TokenInfo[] }>("/api/tokens"), []);
  const now = useNow(30000);
  const order = [
    "resources",
    "access",
    "access_rules",
    "guardrails",
    "masking",
    "masking_rules",
    "approvals",
  ];
  const keys = config.data
    ? [
        ...order.filter((k) => k in config.data!),
        ...Object.keys(config.data).filter((k) => !order.includes(k)),
      ]
    : [];
  return (
    <>
      <h1>Configuration</h1>
      <p class="note">
        As the gateway loaded it. Read-only: change the manifest and reload the gateway.
      </p>
      <ErrorNote error={config.error ? messageOf(config.error) : null} />
      {config.data && keys.map((k) => <Part key={k} name={k} value={config.data![k]} />)}
      <section aria-labelledby="tokens-heading">
        <h2 id="tokens-heading">Tokens issued</h2>
        <ErrorNote error={tokens.error ? messageOf(tokens.error) : null} />
        {tokens.data && tokens.data.items.length === 0 && (
          <p class="empty">No gateway tokens issued.</p>
        )}
        {tokens.data && tokens.data.items.length > 0 && (
          <table class="data">
            <caption class="visually-hidden">Gateway tokens</caption>
            <thead>
              <tr>
                <th scope="col">Token id</th>
                <th scope="col">Subject</th>
                <th scope="col">Groups</th>
                <th scope="col">Issued</th>
                <th scope="col">Expires</th>
                <th scope="col">State</th>
              </tr>
            </thead>
            <tbody>
              {tokens.data.items.map((t) => (
                <tr key={t.jti}>
                  <td>
                    <code>{t.jti}</code>
                  </td>
                  <td>{t.subject}</td>
                  <td>{t.groups.join(", ")}</td>
                  <td>{formatTime(t.issued_at)}</td>
                  <td>{formatTime(t.expires_at)}</td>
                  <td>
                    <ValidityBadge
                      revokedLabel={t.revoked ? `revoked ${formatTime(t.revoked_at)}` : null}
                      expiresAt={t.expires_at}
                      now={now}
                      validLabel="valid"
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
