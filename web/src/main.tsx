import { render } from "preact";
import { useEffect, useState } from "preact/hooks";
import "./styles.css";
import { apiKey } from "./api";
import { BASE, navigate, onLink, useRoute, type Page } from "./router";
import { probe, signOut, type Identity } from "./session";
import { SignIn, SignUp } from "./pages/SignIn";
import { Playground } from "./pages/Playground";
import { Watch } from "./pages/Watch";
import { Keys } from "./pages/Keys";
import { UsagePage } from "./pages/Usage";
import { BillingPage } from "./pages/Billing";
import { Operator } from "./pages/Operator";
import { ErrorBox } from "./ui";

const NAV: { page: Page; label: string; when?: (id: Identity) => boolean }[] = [
  { page: "playground", label: "Playground" },
  { page: "watch", label: "Watch" },
  { page: "keys", label: "Keys" },
  { page: "usage", label: "Usage" },
  { page: "billing", label: "Billing" },
  { page: "operator", label: "Operator", when: (id) => id.operator },
];

const TITLES: Record<Page, string> = {
  signin: "Sign in",
  signup: "Sign up",
  playground: "Playground",
  watch: "Watch",
  keys: "Keys",
  usage: "Usage",
  billing: "Billing",
  operator: "Operator",
};

function App() {
  const route = useRoute();
  const [identity, setIdentity] = useState<Identity | null>(null);
  const [checking, setChecking] = useState(() => apiKey.get() !== "");
  const [error, setError] = useState<unknown>(null);

  // A key from an earlier visit in this tab: check it again.
  useEffect(() => {
    const k = apiKey.get();
    if (!k) return;
    probe(k).then(
      (id) => {
        setIdentity(id);
        setChecking(false);
      },
      (e) => {
        apiKey.clear();
        setError(e);
        setChecking(false);
      },
    );
  }, []);

  const page: Page = identity ? (route.page === "" || route.page === "signin" ? "playground" : route.page) : route.page === "signup" ? "signup" : "signin";

  useEffect(() => {
    document.title = `${TITLES[page]} · kgents console`;
  }, [page]);

  // Move focus to the page's heading when the page changes (keyboard and screen-reader users).
  useEffect(() => {
    document.querySelector<HTMLElement>("main h1")?.focus({ preventScroll: true });
  }, [page]);

  const signedIn = (id: Identity) => {
    apiKey.set(id.key);
    setIdentity(id);
    setError(null);
    navigate(BASE + "playground", true);
  };

  if (checking) {
    return (
      <main class="center" aria-busy="true">
        <p>Checking your key…</p>
      </main>
    );
  }

  if (!identity) {
    return (
      <main class="center">
        {error ? <ErrorBox error={error} /> : null}
        {page === "signup" ? <SignUp onSignedIn={signedIn} /> : <SignIn onSignedIn={signedIn} />}
      </main>
    );
  }

  return (
    <div class="shell">
      <a class="skip" href="#content">
        Skip to content
      </a>
      <header class="top">
        <a class="brand" href={BASE + "playground"} onClick={onLink}>
          kgents <span>console</span>
        </a>
        <nav aria-label="Console">
          <ul>
            {NAV.filter((n) => !n.when || n.when(identity)).map((n) => (
              <li key={n.page}>
                <a
                  href={BASE + n.page}
                  data-testid={`nav-${n.page}`}
                  aria-current={page === n.page ? "page" : undefined}
                  onClick={onLink}
                >
                  {n.label}
                </a>
              </li>
            ))}
          </ul>
        </nav>
        <div class="who">
          <span title={identity.tenant?.id ?? identity.usage.tenant_id}>
            {identity.tenant?.name || identity.usage.tenant_id} · {identity.usage.tier}
          </span>
          <button
            type="button"
            class="secondary small"
            data-testid="sign-out"
            onClick={() => {
              signOut();
              setIdentity(null);
              navigate(BASE + "signin", true);
            }}
          >
            Sign out
          </button>
        </div>
      </header>
      <main id="content">
        {page === "playground" && <Playground identity={identity} />}
        {page === "watch" && <Watch identity={identity} sessionId={route.params.get("session") ?? ""} />}
        {page === "keys" && <Keys identity={identity} />}
        {page === "usage" && <UsagePage />}
        {page === "billing" && <BillingPage identity={identity} />}
        {page === "operator" && (identity.operator ? <Operator /> : <NotAllowed />)}
      </main>
    </div>
  );
}

function NotAllowed() {
  return (
    <>
      <h1 tabIndex={-1}>Operator</h1>
      <p class="error" role="alert">
        This page is for keys with the operator scope.
      </p>
    </>
  );
}

render(<App />, document.getElementById("app")!);
