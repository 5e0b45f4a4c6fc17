// Decisions and statuses as text plus colour (never colour alone, for readers who cannot see it).
const tone: Record<string, string> = {
  allow: "ok",
  approved: "ok",
  approve: "ok",
  live: "ok",
  deny: "bad",
  denied: "bad",
  error: "bad",
  review: "warn",
  held: "warn",
  pending: "warn",
  mask: "info",
  masked: "info",
  expired: "muted",
  withdrawn: "muted",
  ended: "muted",
};

export function Badge({ value, label }: { value: string; label?: string }) {
  return <span class={`badge badge-${tone[value] ?? "muted"}`}>{label ?? value}</span>;
}

// The state of something that can be revoked and expires (a token, a grant): revoked
// (with `revokedLabel`), expired at `now` (epoch ms), or valid (with `validLabel`).
export function ValidityBadge({
  revokedLabel,
  expiresAt,
  now,
  validLabel,
}: {
  revokedLabel: string | null;
  expiresAt: string;
  now: number;
  validLabel: string;
}) {
  if (revokedLabel !== null) return <Badge value="denied" label={revokedLabel} />;
  if (new Date(expiresAt).getTime() < now) return <Badge value="expired" />;
  return <Badge value="allow" label={validLabel} />;
}

export function ErrorNote({ error }: { error: string | null | undefined }) {
  if (!error) return null;
  return (
    <p class="error-note" role="alert">
      {error}
    </p>
  );
}
