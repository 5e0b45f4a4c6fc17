import { render } from "preact";
import { useEffect, useRef, useState } from "preact/hooks";
import { ApiError, get, type Me, post, SIGNED_OUT } from "./api";
import { ErrorNote } from "./components/Badge";
import { ConfigPage } from "./pages/Config";
import { MyRequestsPage } from "./pages/MyRequests";
import { ReviewsPage } from "./pages/Reviews";
import { SessionPage } from "./pages/SessionPage";
import { SessionsPage } from "./pages/Sessions";
import { SignIn } from "./pages/SignIn";
import { canAudit, canReview } from "./roles";
import { navigate, onLinkClick, useLocation } from "./router";
import "./styles.css";

interface NavItem {
  href: string;
  label: string;
  show: (me: Me) => boolean;
}

const NAV: NavItem[] = [
  { href: "/reviews", label: "Review queue", show: (me) => canReview(me) || canAudit(me) },
  { href: "/sessions", label: "Sessions", show: () => true },
  { href: "/requests", label: "My requests", show: () => true },
  { href: "/config", label: "Configuration", show: canAudit },
];

function Page({ me, path }: { me: Me; path: string }) {
  const session = path.match(/^\/sessions\/([^/]+)$/);
  if (session) return <SessionPage me={me} id={decodeURIComponent(session[1])} />;
  switch (path) {
    case "/reviews":
      return <ReviewsPage me={me} />;
    case "/sessions":
      return <SessionsPage me={me} />;
    case "/requests":
      return <MyRequestsPage me={me} />;
    case "/config":
      return <ConfigPage me={me} />;
    default:
      return (
        <>
          <h1>Page not found</h1>
          <p>
            There is no page at <code>{path}</code>. <a href="/">Go to the start page</a>.
          </p>
        </>
      );
  }
}

function home(me: Me): string {
  return canReview(me) || canAudit(me) ? "/reviews" : "/sessions";
}

function App() {
  const [me, setMe] = useState<Me | null | undefined>(undefined);
  const [error, setError] = useState<string | null>(null);
  const { path } = useLocation();
  const main = useRef<HTMLElement>(null);

  const loadMe = () =>
    get<Me>("/api/me").then(setMe, (e: unknown) => {
      if (e instanceof ApiError && e.status === 401) setMe(null);
      else setError(e instanceof Error ? e.message : String(e));
    });

  useEffect(() => {
    void loadMe();
    const signedOut = () => setMe(null);
    window.addEventListener(SIGNED_OUT, signedOut);
    return () => window.removeEventListener(SIGNED_OUT, signedOut);
  }, []);

  useEffect(() => {
    if (me && (path === "/" || path === "/signin")) navigate(home(me), true);
  }, [me, path]);

  // After a client-side navigation, move focus to the new page's heading so keyboard and
  // screen-reader users land on the content. Not on the first page shown: a fresh load
  // starts at the top, where "Skip to content" is the first Tab stop.
  const shownPath = useRef<string | null>(null);
  useEffect(() => {
    if (!me) return;
    const h1 = main.current?.querySelector("h1");
    document.title = `${h1?.textContent ?? "Lockgate"} · Lockgate console`;
    if (shownPath.current !== null && shownPath.current !== path && h1) {
      h1.setAttribute("tabindex", "-1");
      h1.focus();
    }
    shownPath.current = path;
  }, [path, me]);

  if (me === undefined)
    return (
      <main id="main" ref={main}>
        {error ? (
          <ErrorNote error={`The console could not reach the gateway: ${error}`} />
        ) : (
          <p>Loading…</p>
        )}
      </main>
    );
  if (me === null)
    return (
      <main id="main" ref={main} class="signin-main">
        <SignIn onSignedIn={() => void loadMe()} />
      </main>
    );

  const signOut = async () => {
    try {
      await post("/api/auth/logout");
    } finally {
      setMe(null);
      navigate("/signin", true);
    }
  };

  return (
    <div class="shell" onClick={(e) => onLinkClick(e as unknown as MouseEvent)}>
      <a
        class="skip-link"
        href="#main"
        onClick={(e) => {
          e.preventDefault();
          main.current?.focus();
        }}
      >
        Skip to content
      </a>
      <header class="topbar">
        <a href={home(me)} class="brand">
          Lockgate
        </a>
        <nav aria-label="Main">
          <ul>
            {NAV.filter((n) => n.show(me)).map((n) => (
              <li>
                <a
                  href={n.href}
                  aria-current={
                    path === n.href || path.startsWith(`${n.href}/`) ? "page" : undefined
                  }
                >
                  {n.label}
                </a>
              </li>
            ))}
          </ul>
        </nav>
        <div class="whoami">
          <span>
            Signed in as <strong data-testid="whoami">{me.subject}</strong>
            {me.roles.length > 0 && <span class="roles"> ({me.roles.join(", ")})</span>}
          </span>
          <button type="button" class="link-button" onClick={() => void signOut()}>
            Sign out
          </button>
        </div>
      </header>
      <main id="main" ref={main} tabIndex={-1}>
        <Page me={me} path={path} />
      </main>
    </div>
  );
}

render(<App />, document.getElementById("app")!);
