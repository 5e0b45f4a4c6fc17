import { useEffect, useRef, useState } from "preact/hooks";

/** The current time, refreshed every `ms` so waiting times tick on screen. */
export function useNow(ms = 1000): number {
  const [now, setNow] = useState(() => Date.now());
  useEffect(() => {
    const t = window.setInterval(() => setNow(Date.now()), ms);
    return () => window.clearInterval(t);
  }, [ms]);
  return now;
}

export type LiveState = "connecting" | "live" | "reconnecting";

/**
 * Subscribe to the server-sent events of /api/events. EventSource reconnects by itself;
 * `state` tells the page whether what it shows is live.
 */
export function useEvents(handlers: Record<string, (data: unknown) => void>): LiveState {
  const [state, setState] = useState<LiveState>("connecting");
  const ref = useRef(handlers);
  ref.current = handlers;
  const names = Object.keys(handlers).sort().join(",");
  useEffect(() => {
    const source = new EventSource("/api/events", { withCredentials: true });
    source.onopen = () => setState("live");
    source.onerror = () => setState("reconnecting");
    for (const name of names.split(",").filter(Boolean)) {
      source.addEventListener(name, (ev) => {
        try {
          ref.current[name]?.(JSON.parse((ev as MessageEvent<string>).data));
        } catch {
          // A malformed event must not break the page; the next reload shows the truth.
        }
      });
    }
    return () => source.close();
  }, [names]);
  return state;
}

/** Load `fn` when `deps` change; returns data, error and a reload function. */
export function useLoad<T>(
  fn: () => Promise<T>,
  deps: unknown[],
): { data: T | undefined; error: unknown; loading: boolean; reload: () => void } {
  const [data, setData] = useState<T | undefined>(undefined);
  const [error, setError] = useState<unknown>(undefined);
  const [loading, setLoading] = useState(true);
  const [tick, setTick] = useState(0);
  useEffect(() => {
    let cancelled = false;
    setLoading(true);
    fn().then(
      (d) => {
        if (!cancelled) {
          setData(d);
          setError(undefined);
          setLoading(false);
        }
      },
      (e: unknown) => {
        if (!cancelled) {
          setError(e);
          setLoading(false);
        }
      },
    );
    return () => {
      cancelled = true;
    };
  }, [...deps, tick]); // `fn` changes every render; `deps` say when it means something new

  return { data, error, loading, reload: () => setTick((t) => t + 1) };
}
