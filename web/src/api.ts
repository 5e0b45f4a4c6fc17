// The admin HTTP API (docs/admin-api.md): typed fetch helpers. Cookie sessions need the
// X-CSRF-Token header (the value of the lockgate_csrf cookie) on every state-changing request.

export interface Identity {
  subject: string;
  issuer: string;
  groups: string[];
}

export interface Me extends Identity {
  roles: string[];
}

export interface Decision {
  reviewer: string;
  groups: string[];
  verdict: "approve" | "deny";
  reason: string;
  at: string;
}

export interface Review {
  id: string;
  kind: "statement" | "grant";
  status: "pending" | "approved" | "denied" | "expired" | "withdrawn";
  requester: Identity;
  resource: string;
  statement: string | null;
  rule: string | null;
  reason: string;
  estimated_rows: number | null;
  duration_seconds: number | null;
  session_id: string | null;
  created_at: string;
  expires_at: string;
  waited_seconds: number;
  quorum: number;
  reviewer_groups: string[];
  decisions: Decision[];
  can_decide: boolean;
  approval_rule?: string | null;
}

export interface Grant {
  id: string;
  subject: string;
  resource: string;
  granted_at: string;
  expires_at: string;
  revoked_at: string | null;
  revoked_by: string | null;
  reason: string;
}

export interface Session {
  id: string;
  subject: string;
  issuer: string;
  groups: string[];
  resource: string;
  protocol: string;
  client_addr: string;
  started_at: string;
  ended_at: string | null;
  end_reason: string | null;
  live: boolean;
  statements: number;
  denied: number;
  held: number;
  masked_cells: number;
  has_recording: boolean;
}

export interface TimelineEntry {
  seq: number;
  at: string;
  kind: string;
  text: string;
  decision: string;
  rule: string | null;
  reason: string | null;
  rows: number | null;
  masked_cells: number | null;
  duration_ms: number | null;
  error: string | null;
  approval_id: string | null;
}

export interface SessionDetail {
  session: Session;
  timeline: TimelineEntry[];
}

export interface TokenInfo {
  jti: string;
  subject: string;
  groups: string[];
  issued_at: string;
  expires_at: string;
  revoked: boolean;
  revoked_at: string | null;
}

export interface AuthConfig {
  oidc: boolean;
  provider: string | null;
}

/** Dispatched on window when the API says the browser is no longer signed in. */
export const SIGNED_OUT = "lockgate:signed-out";

export class ApiError extends Error {
  constructor(
    readonly status: number,
    readonly detail: string,
  ) {
    super(detail);
  }
}

export function csrfToken(): string {
  for (const part of document.cookie.split(";")) {
    const [name, ...rest] = part.trim().split("=");
    if (name === "lockgate_csrf") return decodeURIComponent(rest.join("="));
  }
  return "";
}

function detailOf(body: unknown, fallback: string): string {
  if (body && typeof body === "object" && "detail" in body) {
    const d = (body as { detail: unknown }).detail;
    if (typeof d === "string") return d;
    // FastAPI's validation errors: a list of {loc, msg}.
    if (Array.isArray(d))
      return d
        .map((e) => (e && typeof e === "object" && "msg" in e ? String(e.msg) : ""))
        .join("; ");
  }
  return fallback;
}

export async function request<T>(method: string, path: string, body?: unknown): Promise<T> {
  const headers: Record<string, string> = { Accept: "application/json" };
  if (body !== undefined) headers["Content-Type"] = "application/json";
  if (method !== "GET" && method !== "HEAD") headers["X-CSRF-Token"] = csrfToken();
  const resp = await fetch(path, {
    method,
    headers,
    credentials: "same-origin",
    body: body === undefined ? undefined : JSON.stringify(body),
  });
  const text = await resp.text();
  let parsed: unknown = undefined;
  if (text) {
    try {
      parsed = JSON.parse(text);
    } catch {
      parsed = undefined;
    }
  }
  if (resp.status === 401 && path !== "/api/me" && path !== "/api/auth/token")
    // The session ended (expired, signed out elsewhere, token revoked): back to sign-in.
    window.dispatchEvent(new Event(SIGNED_OUT));
  if (!resp.ok)
    throw new ApiError(resp.status, detailOf(parsed, `${resp.status} ${resp.statusText}`));
  return parsed as T;
}

export const get = <T>(path: string) => request<T>("GET", path);
export const post = <T>(path: string, body: unknown = {}) => request<T>("POST", path, body);

export function query(params: Record<string, string | undefined | null>): string {
  const q = new URLSearchParams();
  for (const [k, v] of Object.entries(params)) if (v) q.set(k, v);
  const s = q.toString();
  return s ? `?${s}` : "";
}

export function messageOf(err: unknown): string {
  if (err instanceof ApiError) {
    if (err.status === 403) return `Not allowed: ${err.detail}`;
    return err.detail;
  }
  return err instanceof Error ? err.message : String(err);
}
