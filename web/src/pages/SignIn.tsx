import { useState } from "preact/hooks";
import { post, type Key, type Tenant } from "../api";
import { BASE, onLink } from "../router";
import { probe, type Identity } from "../session";
import { CopyButton, ErrorBox } from "../ui";

export function SignIn({ onSignedIn }: { onSignedIn: (id: Identity) => void }) {
  const [key, setKey] = useState("");
  const [error, setError] = useState<unknown>(null);
  const [busy, setBusy] = useState(false);

  const submit = async (e: Event) => {
    e.preventDefault();
    setBusy(true);
    setError(null);
    try {
      onSignedIn(await probe(key.trim()));
    } catch (err) {
      setError(err);
    } finally {
      setBusy(false);
    }
  };

  return (
    <form class="card narrow" onSubmit={submit} aria-labelledby="signin-title">
      <h1 id="signin-title" tabIndex={-1}>
        Sign in to kgents
      </h1>
      <p class="muted">Paste an API key. It is kept in this tab only (sessionStorage) and sent only to this server.</p>
      <label for="api-key">API key</label>
      <input
        id="api-key"
        data-testid="api-key-input"
        type="password"
        autoComplete="off"
        spellcheck={false}
        placeholder="kg_…"
        required
        value={key}
        onInput={(e) => setKey((e.target as HTMLInputElement).value)}
      />
      <ErrorBox error={error} />
      <button type="submit" data-testid="sign-in" disabled={busy || !key.trim()}>
        {busy ? "Signing in…" : "Sign in"}
      </button>
      <p class="muted">
        No key yet?{" "}
        <a href={BASE + "signup"} onClick={onLink} data-testid="nav-signup">
          Sign up
        </a>
      </p>
    </form>
  );
}

interface SignUpAnswer {
  tenant: Tenant;
  key: Key;
  secret: string;
}

export function SignUp({ onSignedIn }: { onSignedIn: (id: Identity) => void }) {
  const [email, setEmail] = useState("");
  const [name, setName] = useState("");
  const [invite, setInvite] = useState("");
  const [error, setError] = useState<unknown>(null);
  const [busy, setBusy] = useState(false);
  const [done, setDone] = useState<SignUpAnswer | null>(null);

  const submit = async (e: Event) => {
    e.preventDefault();
    setBusy(true);
    setError(null);
    try {
      const body: Record<string, string> = { email: email.trim(), name: name.trim() };
      if (invite.trim()) body.invite_code = invite.trim();
      setDone(await post<SignUpAnswer>("/v1/signup", body, { anonymous: true }));
    } catch (err) {
      setError(err);
    } finally {
      setBusy(false);
    }
  };

  const continueIn = async () => {
    if (!done) return;
    setBusy(true);
    try {
      onSignedIn(await probe(done.secret));
    } catch (err) {
      setError(err);
      setBusy(false);
    }
  };

  if (done) {
    return (
      <section class="card narrow" aria-labelledby="signup-done">
        <h1 id="signup-done" tabIndex={-1}>
          Welcome, {done.tenant.name}
        </h1>
        <p>
          Your tenant is on the <strong>{done.tenant.tier}</strong> plan. This is your API key — it is shown{" "}
          <strong>only once</strong>; store it somewhere safe.
        </p>
        <div class="secret">
          <code data-testid="key-secret">{done.secret}</code>
          <CopyButton text={done.secret} />
        </div>
        <ErrorBox error={error} />
        <button type="button" data-testid="signup-continue" onClick={continueIn} disabled={busy}>
          Continue to the console
        </button>
      </section>
    );
  }

  return (
    <form class="card narrow" onSubmit={submit} aria-labelledby="signup-title">
      <h1 id="signup-title" tabIndex={-1}>
        Create a tenant
      </h1>
      <p class="muted">You get the free plan and one API key with read, write and admin scopes.</p>
      <label for="signup-name">Name</label>
      <input
        id="signup-name"
        data-testid="signup-name"
        required
        autoComplete="organization"
        value={name}
        onInput={(e) => setName((e.target as HTMLInputElement).value)}
      />
      <label for="signup-email">Billing email</label>
      <input
        id="signup-email"
        data-testid="signup-email"
        type="email"
        required
        autoComplete="email"
        value={email}
        onInput={(e) => setEmail((e.target as HTMLInputElement).value)}
      />
      <label for="signup-invite">
        Invite code <span class="muted">(if this server requires one)</span>
      </label>
      <input
        id="signup-invite"
        data-testid="signup-invite"
        autoComplete="off"
        value={invite}
        onInput={(e) => setInvite((e.target as HTMLInputElement).value)}
      />
      <ErrorBox error={error} />
      <button type="submit" data-testid="sign-up" disabled={busy}>
        {busy ? "Creating…" : "Sign up"}
      </button>
      <p class="muted">
        Have a key?{" "}
        <a href={BASE + "signin"} onClick={onLink}>
          Sign in
        </a>
      </p>
    </form>
  );
}
