import type { ComponentChildren } from "preact";
import { useCallback, useEffect, useState } from "preact/hooks";
import { errorText } from "./api";

/** ErrorBox shows an API error's detail, announced to screen readers. */
export function ErrorBox({ error }: { error: unknown }) {
  if (!error) return null;
  return (
    <p class="error" role="alert" data-testid="error">
      {errorText(error)}
    </p>
  );
}

export function Card({ title, children, actions }: { title: string; children: ComponentChildren; actions?: ComponentChildren }) {
  return (
    <section class="card" aria-label={title}>
      <header class="card-head">
        <h2>{title}</h2>
        {actions}
      </header>
      {children}
    </section>
  );
}

/** useLoad runs an async load on mount (and on reload()), keeping its value, error and state. */
export function useLoad<T>(load: () => Promise<T>, deps: unknown[] = []) {
  const [value, setValue] = useState<T | undefined>(undefined);
  const [error, setError] = useState<unknown>(null);
  const [loading, setLoading] = useState(true);
  const [tick, setTick] = useState(0);
  useEffect(() => {
    let live = true;
    setLoading(true);
    load().then(
      (v) => {
        if (!live) return;
        setValue(v);
        setError(null);
        setLoading(false);
      },
      (e) => {
        if (!live) return;
        setError(e);
        setLoading(false);
      },
    );
    return () => {
      live = false;
    };
    // eslint-disable-next-line react-hooks/exhaustive-deps
  }, [...deps, tick]);
  const reload = useCallback(() => setTick((t) => t + 1), []);
  return { value, error, loading, reload, setValue };
}

export function CopyButton({ text, label = "Copy" }: { text: string; label?: string }) {
  const [done, setDone] = useState(false);
  return (
    <button
      type="button"
      class="secondary"
      onClick={async () => {
        try {
          await navigator.clipboard.writeText(text);
          setDone(true);
        } catch {
          // No clipboard permission (plain http on another host): select the text instead.
          const el = document.querySelector<HTMLElement>("[data-testid=key-secret]");
          if (el) window.getSelection()?.selectAllChildren(el);
        }
      }}
    >
      {done ? "Copied" : label}
    </button>
  );
}

export function Badge({ children, tone = "neutral" }: { children: ComponentChildren; tone?: "neutral" | "good" | "warn" | "bad" }) {
  return <span class={`badge ${tone}`}>{children}</span>;
}

export function statusTone(status: string): "good" | "warn" | "bad" | "neutral" {
  switch (status) {
    case "active":
    case "healthy":
    case "ok":
    case "closed":
      return "good";
    case "past_due":
    case "degraded":
    case "half_open":
    case "disabled":
      return "warn";
    case "suspended":
    case "canceled":
    case "unhealthy":
    case "disconnected":
    case "circuit_open":
    case "open":
    case "error":
      return "bad";
  }
  return "neutral";
}
