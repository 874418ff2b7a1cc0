import { useState } from "preact/hooks";
import { call, get, post, type Key, type KeyWithSecret } from "../api";
import { fmtTime } from "../format";
import type { Identity } from "../session";
import { Badge, Card, CopyButton, ErrorBox, useLoad } from "../ui";

const SCOPES = ["read", "write", "admin"] as const;

export function Keys({ identity }: { identity: Identity }) {
  const keys = useLoad(() => get<{ keys: Key[] }>("/v1/keys"), []);
  const [name, setName] = useState("");
  const [scopes, setScopes] = useState<string[]>(["read", "write"]);
  const [fresh, setFresh] = useState<KeyWithSecret | null>(null);
  const [error, setError] = useState<unknown>(null);
  const [busy, setBusy] = useState(false);

  const act = async (fn: () => Promise<void>) => {
    setBusy(true);
    setError(null);
    try {
      await fn();
      keys.reload();
    } catch (err) {
      setError(err);
    } finally {
      setBusy(false);
    }
  };

  const list = keys.value?.keys ?? [];

  return (
    <>
      <div class="page-head">
        <h1 tabIndex={-1}>API keys</h1>
        <p class="muted">Keys of your tenant. A secret is shown once, when the key is created or rotated; the server keeps only its hash.</p>
      </div>
      {!identity.admin && (
        <p class="notice" role="status">
          This key has no <code>admin</code> scope, so it cannot list or manage keys. Sign in with an admin key.
        </p>
      )}
      {fresh && (
        <section class="card highlight" aria-labelledby="fresh-key" data-testid="fresh-key">
          <h2 id="fresh-key">New secret for “{fresh.key.name}”</h2>
          <p>
            Copy it now: it is <strong>not shown again</strong>.
          </p>
          <div class="secret">
            <code data-testid="key-secret">{fresh.secret}</code>
            <CopyButton text={fresh.secret} />
          </div>
          <button type="button" class="secondary" data-testid="dismiss-secret" onClick={() => setFresh(null)}>
            I have stored it
          </button>
        </section>
      )}
      {identity.admin && (
        <Card title="Create a key">
          <form
            class="row wrap end"
            onSubmit={(e) => {
              e.preventDefault();
              void act(async () => {
                setFresh(await post<KeyWithSecret>("/v1/keys", { name: name.trim(), scopes }));
                setName("");
              });
            }}
          >
            <div class="field">
              <label for="key-name">Name</label>
              <input
                id="key-name"
                data-testid="key-name"
                required
                maxLength={100}
                placeholder="ci-deploy"
                value={name}
                onInput={(e) => setName((e.target as HTMLInputElement).value)}
              />
            </div>
            <fieldset class="field">
              <legend>Scopes</legend>
              {SCOPES.map((s) => (
                <label key={s} class="check">
                  <input
                    type="checkbox"
                    checked={scopes.includes(s)}
                    onChange={(e) => {
                      const on = (e.target as HTMLInputElement).checked;
                      setScopes((cur) => (on ? [...cur, s] : cur.filter((x) => x !== s)));
                    }}
                  />
                  {s}
                </label>
              ))}
            </fieldset>
            <button type="submit" data-testid="new-key" disabled={busy || !name.trim() || scopes.length === 0}>
              Create key
            </button>
          </form>
        </Card>
      )}
      <ErrorBox error={error} />
      {identity.admin && (
        <Card title="Keys">
          <ErrorBox error={keys.error} />
          <div class="table-wrap">
            <table>
              <thead>
                <tr>
                  <th scope="col">Name</th>
                  <th scope="col">Prefix</th>
                  <th scope="col">Scopes</th>
                  <th scope="col">Created</th>
                  <th scope="col">Last used</th>
                  <th scope="col">Expires</th>
                  <th scope="col">State</th>
                  <th scope="col">
                    <span class="sr-only">Actions</span>
                  </th>
                </tr>
              </thead>
              <tbody>
                {list.map((k) => (
                  <tr key={k.id} data-testid="key-row" data-key-id={k.id} data-revoked={k.revoked_at ? "true" : "false"}>
                    <td>{k.name}</td>
                    <td>
                      <code>{k.prefix || "—"}</code>
                    </td>
                    <td>{k.scopes.join(", ")}</td>
                    <td>{fmtTime(k.created_at)}</td>
                    <td>{fmtTime(k.last_used_at)}</td>
                    <td>{fmtTime(k.expires_at)}</td>
                    <td>
                      {k.revoked_at ? (
                        <Badge tone="bad">revoked {fmtTime(k.revoked_at)}</Badge>
                      ) : k.read_only ? (
                        <Badge>read-only</Badge>
                      ) : (
                        <Badge tone="good">active</Badge>
                      )}
                    </td>
                    <td class="actions">
                      {!k.revoked_at && !k.read_only && (
                        <>
                          <button
                            type="button"
                            class="secondary small"
                            data-testid="rotate-key"
                            disabled={busy}
                            aria-label={`Rotate ${k.name}`}
                            onClick={() =>
                              void act(async () => {
                                if (!confirm(`Rotate “${k.name}”? The old secret keeps working for one hour.`)) return;
                                setFresh(await post<KeyWithSecret>(`/v1/keys/${k.id}:rotate`, { grace_seconds: 3600 }));
                              })
                            }
                          >
                            Rotate
                          </button>
                          <button
                            type="button"
                            class="danger small"
                            data-testid="revoke-key"
                            disabled={busy}
                            aria-label={`Revoke ${k.name}`}
                            onClick={() =>
                              void act(async () => {
                                if (!confirm(`Revoke “${k.name}”? Calls with it fail at once, on every replica.`)) return;
                                await call<Key>("DELETE", `/v1/keys/${k.id}`);
                              })
                            }
                          >
                            Revoke
                          </button>
                        </>
                      )}
                    </td>
                  </tr>
                ))}
              </tbody>
            </table>
          </div>
          {!keys.loading && list.length === 0 && <p class="muted">No keys.</p>}
        </Card>
      )}
    </>
  );
}
