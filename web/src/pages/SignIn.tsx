import { useEffect, useState } from "preact/hooks";
import { type AuthConfig, get, messageOf, post } from "../api";
import { ErrorNote } from "../components/Badge";

export function SignIn({ onSignedIn }: { onSignedIn: () => void }) {
  const [config, setConfig] = useState<AuthConfig | null>(null);
  const [token, setToken] = useState("");
  const [busy, setBusy] = useState(false);
  const [error, setError] = useState<string | null>(null);
  const next =
    location.pathname === "/signin" || location.pathname === "/"
      ? "/"
      : location.pathname + location.search;

  useEffect(() => {
    get<AuthConfig>("/api/auth/config").then(setConfig, (e: unknown) => setError(messageOf(e)));
    const failed = new URLSearchParams(location.search).get("error");
    if (failed) setError(`Sign-in failed: ${failed}`);
  }, []);

  const submit = async (ev: Event) => {
    ev.preventDefault();
    setBusy(true);
    setError(null);
    try {
      await post("/api/auth/token", { token: token.trim() });
      setToken("");
      onSignedIn();
    } catch (e) {
      setError(messageOf(e));
    } finally {
      setBusy(false);
    }
  };

  return (
    <div class="signin">
      <h1>Sign in to Lockgate</h1>
      <ErrorNote error={error} />
      {config?.oidc && (
        <section aria-labelledby="sso-heading">
          <h2 id="sso-heading">Single sign-on</h2>
          <a class="button primary" href={`/auth/login?next=${encodeURIComponent(next)}`}>
            Sign in with {config.provider ?? "your identity provider"}
          </a>
        </section>
      )}
      <section aria-labelledby="token-heading">
        <h2 id="token-heading">{config?.oidc ? "Or use a gateway token" : "Gateway token"}</h2>
        <form onSubmit={(e) => void submit(e)}>
          <label for="token">Token</label>
          <p class="hint" id="token-hint">
            From <code>lockgate token issue</code> or the line <code>lockgate demo</code> printed.
          </p>
          <input
            id="token"
            name="token"
            type="password"
            autoComplete="off"
            required
            aria-describedby="token-hint"
            value={token}
            onInput={(e) => setToken((e.target as HTMLInputElement).value)}
          />
          <button type="submit" disabled={busy || !token.trim()}>
            {busy ? "Signing in…" : "Sign in with a token"}
          </button>
        </form>
      </section>
    </div>
  );
}
