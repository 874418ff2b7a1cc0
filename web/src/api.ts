// The kgentsd REST client: JSON calls, errors carrying the server's `detail`,
// and POST Server-Sent Events read from a fetch body (EventSource cannot POST).

const KEY_STORAGE = "kgents.apiKey";

/** The API key lives in sessionStorage only: it goes away with the tab. */
export const apiKey = {
  get(): string {
    try {
      return sessionStorage.getItem(KEY_STORAGE) ?? "";
    } catch {
      return "";
    }
  },
  set(k: string) {
    sessionStorage.setItem(KEY_STORAGE, k);
  },
  clear() {
    sessionStorage.removeItem(KEY_STORAGE);
  },
};

/** An error answer of the API: `detail` is its human message. */
export class ApiError extends Error {
  constructor(
    readonly status: number,
    readonly detail: string,
    readonly code: string,
    readonly retryAfter?: string,
  ) {
    super(detail);
    this.name = "ApiError";
  }
}

async function errorFrom(res: Response): Promise<ApiError> {
  let detail = `${res.status} ${res.statusText}`.trim();
  let code = "";
  try {
    const body = (await res.json()) as { detail?: unknown; code?: unknown; message?: unknown };
    if (typeof body.detail === "string" && body.detail) detail = body.detail;
    else if (typeof body.message === "string" && body.message) detail = body.message;
    if (typeof body.code === "string") code = body.code;
  } catch {
    // not JSON: keep the status line
  }
  return new ApiError(res.status, detail, code, res.headers.get("Retry-After") ?? undefined);
}

function headers(key: string | undefined, extra?: Record<string, string>): Headers {
  const h = new Headers(extra);
  const k = key ?? apiKey.get();
  if (k) h.set("X-API-Key", k);
  return h;
}

export interface CallOptions {
  key?: string;
  signal?: AbortSignal;
  anonymous?: boolean;
}

/** call sends one JSON request and returns the parsed answer, or throws ApiError. */
export async function call<T>(method: string, path: string, body?: unknown, opts: CallOptions = {}): Promise<T> {
  const h = opts.anonymous ? new Headers() : headers(opts.key);
  if (body !== undefined) h.set("Content-Type", "application/json");
  h.set("Accept", "application/json");
  const res = await fetch(path, {
    method,
    headers: h,
    body: body === undefined ? undefined : JSON.stringify(body),
    signal: opts.signal,
  });
  if (!res.ok) throw await errorFrom(res);
  const text = await res.text();
  return (text ? JSON.parse(text) : {}) as T;
}

export const get = <T>(path: string, opts?: CallOptions) => call<T>("GET", path, undefined, opts);
export const post = <T>(path: string, body: unknown, opts?: CallOptions) => call<T>("POST", path, body, opts);

export interface SSEEvent {
  id: string;
  event: string;
  data: string;
}

/**
 * parseSSE splits a text/event-stream into events as bytes arrive. It keeps
 * the partial frame between reads and ignores comments (`: ping`).
 */
export class SSEParser {
  private buf = "";
  private ev: SSEEvent = { id: "", event: "message", data: "" };
  private hasData = false;

  push(chunk: string): SSEEvent[] {
    this.buf += chunk;
    const out: SSEEvent[] = [];
    for (;;) {
      const nl = this.buf.search(/\r\n|\r|\n/);
      if (nl < 0) break;
      const line = this.buf.slice(0, nl);
      this.buf = this.buf.slice(nl + (this.buf.startsWith("\r\n", nl) ? 2 : 1));
      if (line === "") {
        if (this.hasData) out.push({ ...this.ev, data: this.ev.data.replace(/\n$/, "") });
        this.ev = { id: this.ev.id, event: "message", data: "" };
        this.hasData = false;
        continue;
      }
      if (line.startsWith(":")) continue;
      const colon = line.indexOf(":");
      const field = colon < 0 ? line : line.slice(0, colon);
      let value = colon < 0 ? "" : line.slice(colon + 1);
      if (value.startsWith(" ")) value = value.slice(1);
      if (field === "data") {
        this.ev.data += value + "\n";
        this.hasData = true;
      } else if (field === "event") this.ev.event = value;
      else if (field === "id") this.ev.id = value;
    }
    return out;
  }
}

/**
 * streamPost POSTs a JSON body to an SSE route and calls onEvent for every
 * event as it arrives. A failure before the stream opens is an ordinary JSON
 * error (ApiError).
 */
export async function streamPost(
  path: string,
  body: unknown,
  onEvent: (e: SSEEvent) => void,
  opts: CallOptions = {},
): Promise<void> {
  const h = headers(opts.key, { "Content-Type": "application/json", Accept: "text/event-stream" });
  const res = await fetch(path, { method: "POST", headers: h, body: JSON.stringify(body), signal: opts.signal });
  if (!res.ok) throw await errorFrom(res);
  if (!res.body) throw new ApiError(0, "the browser gave no response body to stream", "");
  const reader = res.body.pipeThrough(new TextDecoderStream()).getReader();
  const parser = new SSEParser();
  for (;;) {
    const { value, done } = await reader.read();
    if (done) break;
    for (const ev of parser.push(value)) onEvent(ev);
  }
}

export function errorText(err: unknown): string {
  if (err instanceof ApiError) {
    const retry = err.retryAfter ? ` (retry after ${err.retryAfter}s)` : "";
    return `${err.detail}${retry}`;
  }
  if (err instanceof DOMException && err.name === "AbortError") return "cancelled";
  if (err instanceof Error) return err.message;
  return String(err);
}

// ---- API shapes (SPEC §4.3, §4.11, §4.13, §4.14) ----

export type Mode = "reflect" | "advise" | "challenge" | "explore";
export const MODES: Mode[] = ["reflect", "advise", "challenge", "explore"];
export const BUDGETS = ["dormant", "whisper", "dialogue", "deep"] as const;
export const TIERS = ["free", "pro", "enterprise"] as const;
export const STATUSES = ["active", "past_due", "suspended", "canceled"] as const;

export interface Session {
  id: string;
  tenant_id: string;
  title: string | null;
  agent_type: string;
  status: string;
  mode: Mode;
  message_count: number;
  tokens_used: number;
  created_at: string;
  last_message_at: string | null;
}

export interface Message {
  id: string;
  session_id: string;
  role: "user" | "assistant" | string;
  content: string;
  tokens_used: number;
  created_at: string;
}

export interface Limits {
  requests_per_minute: number | null;
  requests_per_day: number | null;
  tokens_per_month: number | null;
}

export interface Usage {
  tenant_id: string;
  tier: string;
  period: string;
  requests_today: number;
  tokens_today: number;
  tokens_month: number;
  limits: Limits;
}

export interface UsagePoint {
  start: string;
  requests: number;
  errors: number;
  tokens: number;
  dialogue_turns: number;
  agentese_invocations: number;
  sessions_created: number;
}

export interface UsageHistory {
  tenant_id: string;
  granularity: string;
  points: UsagePoint[];
}

export interface Tenant {
  id: string;
  name: string;
  email: string;
  tier: string;
  status: string;
  limits?: Limits;
  stripe_customer_id?: string;
  stripe_subscription_id?: string;
  grace_until: string | null;
  created_at: string | null;
  updated_at: string | null;
  read_only?: boolean;
}

export interface Key {
  id: string;
  tenant_id: string;
  name: string;
  prefix: string;
  scopes: string[];
  archetypes: string[];
  expires_at: string | null;
  created_at: string | null;
  last_used_at: string | null;
  revoked_at: string | null;
  read_only?: boolean;
}

export interface KeyWithSecret {
  key: Key;
  secret: string;
}

export interface Billing {
  tier: string;
  status: string;
  customer_id: string;
  subscription: {
    id: string;
    status: string;
    price_id: string;
    interval: string;
    current_period_end: string | null;
    cancel_at_period_end: boolean;
  } | null;
  grace_until: string | null;
  /** Whether this server can start a checkout or open the portal (STRIPE_API_KEY is set). */
  configured: boolean;
}

export interface AuditEntry {
  id: string;
  time: string;
  actor: string;
  tenant_id: string;
  action: string;
  detail: unknown;
}

export interface Governance {
  approved: boolean;
  reasoning: string;
  alternatives: string[];
  confidence: number;
  tokens_used: number;
  recommendation: string;
  principles: string[];
}
