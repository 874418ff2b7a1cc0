import { useEffect, useRef } from "preact/hooks";
import uPlot from "uplot";
import "uplot/dist/uPlot.min.css";
import { ApiError, get, type Usage, type UsageHistory, type UsagePoint } from "../api";
import { fmtIn, fmtLimit, fmtNum, nextUTCMidnight, nextUTCMonth } from "../format";
import { Card, ErrorBox, useLoad } from "../ui";

interface Loaded {
  usage: Usage;
  history: UsagePoint[];
  /** Why there is no history, when the server keeps none (NATS disabled: 503). */
  historyMissing: string;
}

async function load(): Promise<Loaded> {
  // The history first: read before this page's own calls are metered, so
  // it shows the same numbers as GET /v1/usage/history at that moment.
  let history: UsagePoint[] = [];
  let historyMissing = "";
  try {
    history = (await get<UsageHistory>("/v1/usage/history?granularity=day")).points ?? [];
  } catch (e) {
    // Only "not kept on this server" is a state to explain; anything else
    // (a 404, a refusal) is an error, shown as one.
    if (!(e instanceof ApiError && e.status === 503 && /not kept/.test(e.detail))) throw e;
    historyMissing = e.detail;
  }
  const usage = await get<Usage>("/v1/usage");
  if (historyMissing) {
    // The chart shows the last 30 days with only today known, from /v1/usage.
    const now = new Date();
    const today = Date.UTC(now.getUTCFullYear(), now.getUTCMonth(), now.getUTCDate());
    for (let i = 29; i >= 0; i--) {
      const known = i === 0;
      history.push({
        start: new Date(today - i * 86_400_000).toISOString(),
        requests: known ? usage.requests_today : (null as unknown as number),
        tokens: known ? usage.tokens_today : (null as unknown as number),
        errors: 0,
        dialogue_turns: 0,
        agentese_invocations: 0,
        sessions_created: 0,
      });
    }
  }
  return { usage, history, historyMissing };
}

function Meter({ label, used, limit, resets, testid }: { label: string; used: number; limit: number | null; resets: string; testid: string }) {
  const pct = limit ? Math.min(100, (used / limit) * 100) : 0;
  const tone = pct >= 100 ? "bad" : pct >= 80 ? "warn" : "good";
  return (
    <div class="meter" data-testid={testid}>
      <div class="meter-label">
        <span>{label}</span>
        <span>
          <strong>{fmtNum(used)}</strong> / {fmtLimit(limit)}
        </span>
      </div>
      {limit ? (
        <progress class={tone} max={limit} value={Math.min(used, limit)} aria-label={`${label}: ${fmtNum(used)} of ${fmtNum(limit)}`} />
      ) : (
        <p class="muted small">No limit on this plan.</p>
      )}
      <p class="muted small">Resets {resets} (UTC).</p>
    </div>
  );
}

export function UsagePage() {
  const data = useLoad(load, []);
  const u = data.value?.usage;
  const midnight = nextUTCMidnight();
  const month = nextUTCMonth();
  return (
    <>
      <div class="page-head">
        <h1 tabIndex={-1}>Usage</h1>
        <p class="muted">What your tenant used, against its plan's limits. Counted in UTC, the way billing counts it.</p>
      </div>
      <ErrorBox error={data.error} />
      {u && (
        <div class="grid three">
          <Card title="Today">
            <Meter
              label="Requests today"
              testid="usage-requests-today"
              used={u.requests_today}
              limit={u.limits.requests_per_day}
              resets={`${fmtIn(midnight)}, at ${midnight.toISOString().slice(0, 16).replace("T", " ")}`}
            />
            <p class="muted small">Tokens today: {fmtNum(u.tokens_today)}</p>
          </Card>
          <Card title={`This month (${u.period})`}>
            <Meter
              label="Tokens this month"
              testid="usage-tokens-month"
              used={u.tokens_month}
              limit={u.limits.tokens_per_month}
              resets={`${fmtIn(month)}, on ${month.toISOString().slice(0, 10)}`}
            />
          </Card>
          <Card title="Plan limits">
            <dl class="facts">
              <dt>Tier</dt>
              <dd>{u.tier}</dd>
              <dt>Requests per minute</dt>
              <dd>{fmtLimit(u.limits.requests_per_minute)}</dd>
              <dt>Requests per day</dt>
              <dd>{fmtLimit(u.limits.requests_per_day)}</dd>
              <dt>Tokens per month</dt>
              <dd>{fmtLimit(u.limits.tokens_per_month)}</dd>
            </dl>
          </Card>
        </div>
      )}
      {data.value && (
        <Card title="Last 30 days" actions={<button type="button" class="secondary small" onClick={data.reload}>Refresh</button>}>
          {data.value.historyMissing && (
            <p class="notice" role="status" data-testid="history-unavailable">
              {data.value.historyMissing}: the chart shows today only, from <code>/v1/usage</code>.
            </p>
          )}
          <UsageChart points={data.value.history} />
          <UsageTable points={data.value.history} />
        </Card>
      )}
    </>
  );
}

/** UsageTable is the chart's numbers as a table (newest first), for screen readers and for reading exact values. */
function UsageTable({ points }: { points: UsagePoint[] }) {
  const rows = [...points].reverse();
  return (
    <details class="usage-table">
      <summary>The numbers, day by day</summary>
      <table data-testid="usage-table">
        <caption class="muted small">Per UTC day, as billed: every call is a request; errors are calls answered with a status of 400 or more.</caption>
        <thead>
          <tr>
            <th scope="col">Day</th>
            <th scope="col">Requests</th>
            <th scope="col">Errors</th>
            <th scope="col">Tokens</th>
            <th scope="col">Dialogue turns</th>
            <th scope="col">AGENTESE</th>
            <th scope="col">Sessions</th>
          </tr>
        </thead>
        <tbody>
          {rows.map((p) => (
            <tr key={p.start} data-testid="usage-day" data-day={p.start.slice(0, 10)}>
              <th scope="row">{p.start.slice(0, 10)}</th>
              <td data-field="requests">{p.requests == null ? "—" : fmtNum(p.requests)}</td>
              <td data-field="errors">{fmtNum(p.errors)}</td>
              <td data-field="tokens">{p.tokens == null ? "—" : fmtNum(p.tokens)}</td>
              <td data-field="dialogue_turns">{fmtNum(p.dialogue_turns)}</td>
              <td data-field="agentese_invocations">{fmtNum(p.agentese_invocations)}</td>
              <td data-field="sessions_created">{fmtNum(p.sessions_created)}</td>
            </tr>
          ))}
        </tbody>
      </table>
    </details>
  );
}

/** UsageChart draws requests and tokens per day with uPlot (bars, two axes). */
function UsageChart({ points }: { points: UsagePoint[] }) {
  const el = useRef<HTMLDivElement>(null);
  useEffect(() => {
    const node = el.current;
    if (!node) return;
    const xs = points.map((p) => Math.floor(new Date(p.start).getTime() / 1000));
    const data: uPlot.AlignedData = [xs, points.map((p) => p.requests), points.map((p) => p.tokens)];
    const bars = uPlot.paths.bars!({ size: [0.6, 48], gap: 2 });
    const day = 86400;
    const width = () => Math.max(320, node.clientWidth);
    const plot = new uPlot(
      {
        width: width(),
        height: 280,
        scales: {
          x: { time: true, range: () => [xs[0] - day * 0.6, xs[xs.length - 1] + day * 0.6] },
          req: { auto: true, range: (_u, _min, max) => [0, Math.max(1, max * 1.15)] },
          tok: { auto: true, range: (_u, _min, max) => [0, Math.max(1, max * 1.15)] },
        },
        axes: [
          {
            stroke: "currentColor",
            grid: { show: false },
            space: 60,
            incrs: [day, 2 * day, 3 * day, 7 * day],
            values: (_u, ticks) => ticks.map((t) => new Date(t * 1000).toISOString().slice(5, 10)),
          },
          { scale: "req", label: "requests", stroke: "currentColor", grid: { stroke: "rgba(128,128,128,.2)" } },
          { scale: "tok", label: "tokens", side: 1, stroke: "currentColor", grid: { show: false } },
        ],
        series: [
          { label: "day", value: (_u, v) => (v == null ? "—" : new Date(v * 1000).toISOString().slice(0, 10)) },
          { label: "requests", scale: "req", stroke: "#4f46e5", fill: "rgba(79,70,229,.55)", paths: bars, points: { show: false } },
          { label: "tokens", scale: "tok", stroke: "#0d9488", width: 2, points: { show: true, size: 6, fill: "#0d9488" } },
        ],
        legend: { show: true },
      },
      data,
      node,
    );
    const ro = new ResizeObserver(() => plot.setSize({ width: width(), height: 280 }));
    ro.observe(node);
    return () => {
      ro.disconnect();
      plot.destroy();
    };
  }, [points]);
  const total = points.reduce((a, p) => ({ r: a.r + (p.requests ?? 0), t: a.t + (p.tokens ?? 0) }), { r: 0, t: 0 });
  const last = points[points.length - 1];
  return (
    <figure class="chart">
      <div
        ref={el}
        data-testid="usage-chart"
        data-last-day={last?.start.slice(0, 10)}
        data-last-requests={last?.requests ?? ""}
        data-last-tokens={last?.tokens ?? ""}
        role="img"
        aria-label={`Requests and tokens per day: ${fmtNum(total.r)} requests and ${fmtNum(total.t)} tokens over the last ${points.length} days`}
      />
      <figcaption class="muted small">
        Bars: requests per day (left axis). Line: tokens per day (right axis). {fmtNum(total.r)} requests, {fmtNum(total.t)} tokens in
        total.
      </figcaption>
    </figure>
  );
}
