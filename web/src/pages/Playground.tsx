import { useEffect, useRef, useState } from "preact/hooks";
import {
  BUDGETS,
  get,
  MODES,
  post,
  streamPost,
  type Governance,
  type Message,
  type Mode,
  type Session,
} from "../api";
import { BASE, onLink } from "../router";
import type { Identity } from "../session";
import { Badge, Card, ErrorBox, useLoad } from "../ui";

interface Turn {
  text: string;
  tokens: number | null;
  state: "streaming" | "done" | "error";
  /** The stored reply's id (from `complete`): the history does not list it twice. */
  messageId?: string;
  error?: string;
}

export function Playground(_: { identity: Identity }) {
  const sessions = useLoad(() => get<{ sessions: Session[]; total: number }>("/v1/kgent/sessions?limit=50"), []);
  const [sessionId, setSessionId] = useState("");
  const [mode, setMode] = useState<Mode>("reflect");
  const [budget, setBudget] = useState("");
  const [title, setTitle] = useState("");
  const [message, setMessage] = useState("");
  const [turn, setTurn] = useState<Turn | null>(null);
  const [error, setError] = useState<unknown>(null);
  const abort = useRef<AbortController | null>(null);
  const history = useLoad(
    () =>
      sessionId
        ? get<{ messages: Message[]; total: number }>(`/v1/kgent/sessions/${sessionId}/messages?limit=100`)
        : Promise.resolve({ messages: [] as Message[], total: 0 }),
    [sessionId],
  );

  useEffect(() => () => abort.current?.abort(), []);

  const list = sessions.value?.sessions ?? [];
  const selected = list.find((s) => s.id === sessionId);

  const createSession = async (): Promise<Session> => {
    const s = await post<Session>("/v1/kgent/sessions", { title: title.trim() || "Playground", mode });
    sessions.setValue({ sessions: [s, ...list], total: (sessions.value?.total ?? 0) + 1 });
    setSessionId(s.id);
    setTitle("");
    return s;
  };

  const send = async () => {
    const text = message.trim();
    if (!text || turn?.state === "streaming") return;
    setError(null);
    try {
      const id = sessionId || (await createSession()).id;
      const body: Record<string, unknown> = { message: text, mode };
      if (budget) body.budget = budget;
      setMessage("");
      let reply = "";
      setTurn({ text: "", tokens: null, state: "streaming" });
      abort.current = new AbortController();
      await streamPost(
        `/v1/kgent/sessions/${id}/messages`,
        body,
        (ev) => {
          const data = JSON.parse(ev.data) as Record<string, unknown>;
          if (ev.event === "chunk") {
            reply += String(data.text ?? "");
            setTurn({ text: reply, tokens: null, state: "streaming" });
          } else if (ev.event === "complete") {
            reply = String(data.text ?? reply);
            setTurn({ text: reply, tokens: Number(data.tokens_used ?? 0), state: "done", messageId: String(data.message_id ?? "") });
          } else if (ev.event === "error") {
            setTurn({ text: reply, tokens: null, state: "error", error: `${data.type}: ${data.error}` });
          }
        },
        { signal: abort.current.signal },
      );
      history.reload();
      sessions.reload();
    } catch (err) {
      setTurn(null);
      setError(err);
    }
  };

  return (
    <>
      <div class="page-head">
        <h1 tabIndex={-1}>Playground</h1>
        <p class="muted">Talk to K-gent. Replies stream in word by word over Server-Sent Events.</p>
      </div>
      <div class="grid two">
        <Card title="Conversation">
          <div class="row wrap">
            <div class="field">
              <label for="pg-session">Session</label>
              <select
                id="pg-session"
                data-testid="session-select"
                value={sessionId}
                onChange={(e) => {
                  const id = (e.target as HTMLSelectElement).value;
                  setSessionId(id);
                  setTurn(null);
                  const s = list.find((x) => x.id === id);
                  if (s) setMode(s.mode);
                }}
              >
                <option value="">New session…</option>
                {list.map((s) => (
                  <option value={s.id} key={s.id}>
                    {(s.title || "Untitled") + " · " + s.mode + " · " + s.message_count + " msgs"}
                  </option>
                ))}
              </select>
            </div>
            {!sessionId && (
              <div class="field">
                <label for="pg-title">Title of the new session</label>
                <input
                  id="pg-title"
                  data-testid="session-title"
                  maxLength={200}
                  placeholder="Playground"
                  value={title}
                  onInput={(e) => setTitle((e.target as HTMLInputElement).value)}
                />
              </div>
            )}
            <div class="field">
              <label for="pg-mode">Mode</label>
              <select id="pg-mode" data-testid="mode-select" value={mode} onChange={(e) => setMode((e.target as HTMLSelectElement).value as Mode)}>
                {MODES.map((m) => (
                  <option key={m}>{m}</option>
                ))}
              </select>
            </div>
            <div class="field">
              <label for="pg-budget">Budget</label>
              <select id="pg-budget" data-testid="budget-select" value={budget} onChange={(e) => setBudget((e.target as HTMLSelectElement).value)}>
                <option value="">tier default</option>
                {BUDGETS.map((b) => (
                  <option key={b}>{b}</option>
                ))}
              </select>
            </div>
          </div>
          {selected && (
            <p class="muted small">
              {selected.status === "closed" ? <Badge tone="warn">closed</Badge> : <Badge tone="good">{selected.status}</Badge>}{" "}
              {selected.message_count} messages · {selected.tokens_used} tokens ·{" "}
              <a href={`${BASE}watch?session=${selected.id}`} onClick={onLink}>
                watch live
              </a>
            </p>
          )}
          <ol class="transcript" aria-label="Session history" aria-live="off">
            {(history.value?.messages ?? []).filter((m) => m.id !== turn?.messageId).map((m) => (
              <li key={m.id} class={`msg ${m.role}`}>
                <span class="role">{m.role === "assistant" ? "K-gent" : "You"}</span>
                <p>{m.content}</p>
              </li>
            ))}
          </ol>
          <ErrorBox error={history.error} />
          {turn && (
            <div class={`msg assistant live ${turn.state}`}>
              <span class="role">K-gent {turn.state === "streaming" ? "is replying…" : ""}</span>
              <p data-testid="reply" aria-live="polite" aria-busy={turn.state === "streaming"}>
                {turn.text}
              </p>
              {turn.tokens !== null && (
                <p class="muted small">
                  Tokens used: <strong data-testid="tokens-used">{turn.tokens}</strong>
                </p>
              )}
              {turn.error && (
                <p class="error" role="alert">
                  The reply stopped: {turn.error}
                </p>
              )}
            </div>
          )}
          <ErrorBox error={error} />
          <form
            class="composer"
            onSubmit={(e) => {
              e.preventDefault();
              void send();
            }}
          >
            <label for="pg-message">Message</label>
            <textarea
              id="pg-message"
              data-testid="message-input"
              rows={3}
              maxLength={32768}
              placeholder="What should I focus on this week?  (Enter sends, Shift+Enter for a new line)"
              value={message}
              onInput={(e) => setMessage((e.target as HTMLTextAreaElement).value)}
              onKeyDown={(e) => {
                if (e.key === "Enter" && !e.shiftKey && !e.isComposing) {
                  e.preventDefault();
                  void send();
                }
              }}
            />
            <div class="row">
              <button type="submit" data-testid="send" disabled={turn?.state === "streaming" || !message.trim()}>
                {turn?.state === "streaming" ? "Streaming…" : "Send"}
              </button>
              {turn?.state === "streaming" && (
                <button type="button" class="secondary" onClick={() => abort.current?.abort()}>
                  Stop watching
                </button>
              )}
            </div>
          </form>
        </Card>
        <GovernanceCheck />
      </div>
    </>
  );
}

function GovernanceCheck() {
  const [action, setAction] = useState("");
  const [reason, setReason] = useState("");
  const [verdict, setVerdict] = useState<Governance | null>(null);
  const [error, setError] = useState<unknown>(null);
  const [busy, setBusy] = useState(false);
  return (
    <Card title="Governance check">
      <form
        onSubmit={async (e) => {
          e.preventDefault();
          setBusy(true);
          setError(null);
          try {
            const body: Record<string, unknown> = { action };
            if (reason.trim()) body.context = { reason: reason.trim() };
            setVerdict(await post<Governance>("/v1/soul/governance", body));
          } catch (err) {
            setError(err);
          } finally {
            setBusy(false);
          }
        }}
      >
        <p class="muted small">Ask K-gent whether an action is wise. Dangerous actions are always escalated.</p>
        <label for="gov-action">Action</label>
        <input
          id="gov-action"
          data-testid="governance-action"
          required
          placeholder="rm -rf /production/database"
          value={action}
          onInput={(e) => setAction((e.target as HTMLInputElement).value)}
        />
        <label for="gov-reason">Reason (optional)</label>
        <input id="gov-reason" value={reason} onInput={(e) => setReason((e.target as HTMLInputElement).value)} />
        <button type="submit" class="secondary" data-testid="governance-check" disabled={busy || !action.trim()}>
          Check
        </button>
      </form>
      <ErrorBox error={error} />
      {verdict && (
        <div class="verdict" data-testid="governance-verdict" aria-live="polite">
          <p>
            <Badge tone={verdict.approved ? "good" : verdict.recommendation === "escalate" ? "bad" : "warn"}>
              {verdict.approved ? "approved" : verdict.recommendation}
            </Badge>{" "}
            confidence {verdict.confidence.toFixed(2)}
          </p>
          <p>{verdict.reasoning}</p>
          {verdict.alternatives.length > 0 && (
            <>
              <h3>Alternatives</h3>
              <ul>
                {verdict.alternatives.map((a) => (
                  <li key={a}>{a}</li>
                ))}
              </ul>
            </>
          )}
          {verdict.principles.length > 0 && <p class="muted small">Principles: {verdict.principles.join(", ")}</p>}
        </div>
      )}
    </Card>
  );
}
