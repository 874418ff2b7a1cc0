import { useEffect, useRef, useState } from "preact/hooks";
import { get, type Session } from "../api";
import { BASE, navigate } from "../router";
import type { Identity } from "../session";
import { Badge, Card, ErrorBox, useLoad } from "../ui";

interface Line {
  id: string;
  type: string;
  text: string;
}

type Conn = "connecting" | "live" | "reconnecting" | "closed" | "ended";

const EVENTS = ["message", "mode", "chunk", "complete", "reset", "end"] as const;

/**
 * Watch follows a session with EventSource on its watch endpoint. The browser
 * reconnects by itself and sends Last-Event-ID, so the server resumes exactly
 * after the last event seen. Two kinds of "error" arrive: the server's
 * `error` event (a MessageEvent with JSON data) and EventSource's own
 * connection error (a plain Event without data).
 */
export function Watch({ identity, sessionId }: { identity: Identity; sessionId: string }) {
  const sessions = useLoad(() => get<{ sessions: Session[] }>("/v1/kgent/sessions?limit=50"), []);
  const [lines, setLines] = useState<Line[]>([]);
  const [live, setLive] = useState("");
  const [conn, setConn] = useState<Conn>("closed");
  const [lastId, setLastId] = useState("");
  const esRef = useRef<EventSource | null>(null);

  useEffect(() => {
    setLines([]);
    setLive("");
    setLastId("");
    if (!sessionId) {
      setConn("closed");
      return;
    }
    const url = `/v1/kgent/sessions/${encodeURIComponent(sessionId)}/events?api_key=${encodeURIComponent(identity.key)}`;
    const es = new EventSource(url);
    esRef.current = es;
    setConn("connecting");
    let partial = "";
    const add = (l: Line) => setLines((ls) => [...ls.slice(-499), l]);
    es.addEventListener("open", () => setConn("live"));
    for (const t of EVENTS) {
      es.addEventListener(t, (e) => {
        const ev = e as MessageEvent<string>;
        setLastId(ev.lastEventId);
        const data = JSON.parse(ev.data) as Record<string, unknown>;
        switch (t) {
          case "message":
            add({ id: ev.lastEventId, type: "user", text: String(data.content ?? "") });
            break;
          case "mode":
            add({ id: ev.lastEventId, type: "mode", text: `mode → ${data.mode}` });
            break;
          case "chunk":
            partial += String(data.text ?? "");
            setLive(partial);
            break;
          case "complete":
            add({ id: ev.lastEventId, type: "assistant", text: String(data.text ?? partial) + `  (${data.tokens_used} tokens)` });
            partial = "";
            setLive("");
            break;
          case "reset":
            setLines([{ id: ev.lastEventId, type: "note", text: "History restarted from the oldest retained event." }]);
            partial = "";
            setLive("");
            break;
          case "end":
            add({ id: ev.lastEventId, type: "note", text: `Stream ended: ${data.reason}` });
            if (data.reason === "session_closed") {
              es.close();
              setConn("ended");
            }
            break;
        }
      });
    }
    es.addEventListener("error", (e) => {
      const ev = e as MessageEvent<unknown>;
      if (typeof ev.data === "string") {
        // The server's error event: a turn failed.
        const data = JSON.parse(ev.data) as Record<string, unknown>;
        add({ id: ev.lastEventId, type: "error", text: `${data.type}: ${data.error}` });
        partial = "";
        setLive("");
      } else if (es.readyState === EventSource.CLOSED) {
        setConn("closed"); // it gave up (e.g. 401, 404, 429)
      } else {
        setConn("reconnecting"); // it retries by itself with Last-Event-ID
      }
    });
    return () => {
      es.close();
      esRef.current = null;
    };
  }, [sessionId, identity.key]);

  const list = sessions.value?.sessions ?? [];
  const tone = conn === "live" ? "good" : conn === "closed" ? "bad" : "warn";

  return (
    <>
      <div class="page-head">
        <h1 tabIndex={-1}>Watch</h1>
        <p class="muted">Follow a session live from any replica. After a drop the browser reconnects and resumes after the last event.</p>
      </div>
      <Card
        title="Live events"
        actions={
          sessionId ? (
            <span data-testid="watch-state">
              <Badge tone={tone}>{conn}</Badge> {lastId && <span class="muted small">last event {lastId}</span>}
            </span>
          ) : null
        }
      >
        <label for="watch-session">Session</label>
        <select
          id="watch-session"
          data-testid="watch-session"
          value={sessionId}
          onChange={(e) => {
            const id = (e.target as HTMLSelectElement).value;
            navigate(id ? `${BASE}watch?session=${id}` : `${BASE}watch`, true);
          }}
        >
          <option value="">Choose a session…</option>
          {list.map((s) => (
            <option key={s.id} value={s.id}>
              {(s.title || "Untitled") + " · " + s.status + " · " + s.message_count + " msgs"}
            </option>
          ))}
        </select>
        <ErrorBox error={sessions.error} />
        {conn === "closed" && sessionId && (
          <p class="error" role="alert">
            The watch was refused or gave up (unknown session, bad key, or too many watchers). Choose the session again to retry.
          </p>
        )}
        <ol class="transcript" aria-label="Session events" data-testid="watch-events">
          {lines.map((l, i) => (
            <li key={l.id + ":" + i} class={`msg ${l.type}`}>
              <span class="role">{l.type === "assistant" ? "K-gent" : l.type === "user" ? "User" : l.type}</span>
              <p>{l.text}</p>
            </li>
          ))}
          {live && (
            <li class="msg assistant live streaming">
              <span class="role">K-gent is replying…</span>
              <p data-testid="watch-live" aria-live="polite">
                {live}
              </p>
            </li>
          )}
        </ol>
        {sessionId && lines.length === 0 && !live && <p class="muted">No events yet. Send a message in the Playground to see it here.</p>}
      </Card>
    </>
  );
}
