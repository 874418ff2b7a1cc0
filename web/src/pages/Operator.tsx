import { useState } from "preact/hooks";
import { call, get, STATUSES, TIERS, type AuditEntry, type Tenant } from "../api";
import { fmtTime } from "../format";
import { Badge, Card, ErrorBox, statusTone, useLoad } from "../ui";

const PAGE = 50;

export function Operator() {
  return (
    <>
      <div class="page-head">
        <h1 tabIndex={-1}>Operator</h1>
        <p class="muted">Every tenant, the audit log and the health of the system. Changes here are audited and take effect on every replica within seconds.</p>
      </div>
      <Tenants />
      <div class="grid two">
        <Audit />
        <Health />
      </div>
    </>
  );
}

function Tenants() {
  const [q, setQ] = useState("");
  const [tier, setTier] = useState("");
  const [status, setStatus] = useState("");
  const [offset, setOffset] = useState(0);
  const [applied, setApplied] = useState({ q: "", tier: "", status: "" });
  const [error, setError] = useState<unknown>(null);
  const tenants = useLoad(() => {
    const p = new URLSearchParams({ limit: String(PAGE), offset: String(offset) });
    if (applied.q) p.set("q", applied.q);
    if (applied.tier) p.set("tier", applied.tier);
    if (applied.status) p.set("status", applied.status);
    return get<{ tenants: Tenant[]; total: number }>(`/v1/admin/tenants?${p}`);
  }, [applied, offset]);

  const patch = async (t: Tenant, change: Partial<Pick<Tenant, "tier" | "status">>) => {
    setError(null);
    try {
      const updated = await call<Tenant>("PATCH", `/v1/admin/tenants/${t.id}`, change);
      const cur = tenants.value;
      if (cur) tenants.setValue({ ...cur, tenants: cur.tenants.map((x) => (x.id === t.id ? updated : x)) });
    } catch (err) {
      setError(err);
      tenants.reload();
    }
  };

  const list = tenants.value?.tenants ?? [];
  const total = tenants.value?.total ?? 0;
  return (
    <Card title="Tenants">
      <form
        class="row wrap end"
        role="search"
        onSubmit={(e) => {
          e.preventDefault();
          setOffset(0);
          setApplied({ q: q.trim(), tier, status });
        }}
      >
        <div class="field grow">
          <label for="op-q">Search name or email</label>
          <input id="op-q" data-testid="tenant-search" type="search" value={q} onInput={(e) => setQ((e.target as HTMLInputElement).value)} />
        </div>
        <div class="field">
          <label for="op-tier">Tier</label>
          <select id="op-tier" value={tier} onChange={(e) => setTier((e.target as HTMLSelectElement).value)}>
            <option value="">any</option>
            {TIERS.map((t) => (
              <option key={t}>{t}</option>
            ))}
          </select>
        </div>
        <div class="field">
          <label for="op-status">Status</label>
          <select id="op-status" value={status} onChange={(e) => setStatus((e.target as HTMLSelectElement).value)}>
            <option value="">any</option>
            {STATUSES.map((s) => (
              <option key={s}>{s}</option>
            ))}
          </select>
        </div>
        <button type="submit" class="secondary" data-testid="tenant-filter">
          Filter
        </button>
      </form>
      <ErrorBox error={tenants.error || error} />
      <div class="table-wrap">
        <table>
          <thead>
            <tr>
              <th scope="col">Name</th>
              <th scope="col">Email</th>
              <th scope="col">Tier</th>
              <th scope="col">Status</th>
              <th scope="col">Created</th>
              <th scope="col">Id</th>
            </tr>
          </thead>
          <tbody>
            {list.map((t) => (
              <tr key={t.id} data-testid="tenant-row" data-tenant-id={t.id}>
                <td>{t.name}</td>
                <td>{t.email || "—"}</td>
                <td>
                  {t.read_only ? (
                    t.tier
                  ) : (
                    <select data-testid="tenant-tier" aria-label={`Tier of ${t.name}`} value={t.tier} onChange={(e) => void patch(t, { tier: (e.target as HTMLSelectElement).value })}>
                      {TIERS.map((x) => (
                        <option key={x}>{x}</option>
                      ))}
                    </select>
                  )}
                </td>
                <td>
                  {t.read_only ? (
                    <Badge tone={statusTone(t.status)}>{t.status}</Badge>
                  ) : (
                    <select
                      data-testid="tenant-status"
                      aria-label={`Status of ${t.name}`}
                      value={t.status}
                      onChange={(e) => void patch(t, { status: (e.target as HTMLSelectElement).value })}
                    >
                      {STATUSES.map((x) => (
                        <option key={x}>{x}</option>
                      ))}
                    </select>
                  )}
                  {t.grace_until && <span class="muted small"> grace until {fmtTime(t.grace_until)}</span>}
                </td>
                <td>{fmtTime(t.created_at)}</td>
                <td>
                  <code class="small" title={t.read_only ? "bootstrap tenant (read-only)" : undefined}>
                    {t.id.slice(0, 8)}
                  </code>
                  {t.read_only && <span class="muted small"> read-only</span>}
                </td>
              </tr>
            ))}
          </tbody>
        </table>
      </div>
      <div class="row between">
        <span class="muted small">
          {total === 0 ? "No tenants match." : `${offset + 1}–${offset + list.length} of ${total}`}
        </span>
        <span class="row">
          <button type="button" class="secondary small" disabled={offset === 0} onClick={() => setOffset(Math.max(0, offset - PAGE))}>
            Previous
          </button>
          <button type="button" class="secondary small" disabled={offset + PAGE >= total} onClick={() => setOffset(offset + PAGE)}>
            Next
          </button>
        </span>
      </div>
    </Card>
  );
}

function Audit() {
  const [tenant, setTenant] = useState("");
  const [applied, setApplied] = useState("");
  const audit = useLoad(() => {
    const p = new URLSearchParams({ limit: "50" });
    if (applied) p.set("tenant_id", applied);
    return get<{ entries: AuditEntry[] }>(`/v1/admin/audit?${p}`);
  }, [applied]);
  const entries = audit.value?.entries ?? [];
  return (
    <Card title="Audit log" actions={<button type="button" class="secondary small" onClick={audit.reload}>Refresh</button>}>
      <form
        class="row end"
        onSubmit={(e) => {
          e.preventDefault();
          setApplied(tenant.trim());
        }}
      >
        <div class="field grow">
          <label for="audit-tenant">Tenant id</label>
          <input id="audit-tenant" value={tenant} placeholder="all tenants" onInput={(e) => setTenant((e.target as HTMLInputElement).value)} />
        </div>
        <button type="submit" class="secondary">
          Show
        </button>
      </form>
      <ErrorBox error={audit.error} />
      <ol class="audit" data-testid="audit-log">
        {entries.map((a) => (
          <li key={a.id} data-testid="audit-entry">
            <div>
              <strong>{a.action}</strong> <span class="muted small">{fmtTime(a.time)}</span>
            </div>
            <div class="muted small">
              by <code>{a.actor}</code> on <code>{a.tenant_id.slice(0, 8)}</code>
            </div>
            {a.detail !== undefined && a.detail !== null && a.detail !== "" && (
              <div class="small">{typeof a.detail === "string" ? a.detail : JSON.stringify(a.detail)}</div>
            )}
          </li>
        ))}
      </ol>
      {!audit.loading && entries.length === 0 && <p class="muted">No entries.</p>}
    </Card>
  );
}

interface SaaSHealth {
  status: string;
  started?: boolean;
  nats?: { status?: string; mode?: string; connection?: string; breaker?: { state?: string }; spool_depth?: number; spool_bytes?: number; watchers?: number; in_flight?: number };
  openmeter?: { status?: string; backlog?: number; last_success?: string | null; last_error?: string | null };
  control_plane?: { status?: string; tenants?: number; keys?: number; last_sync?: string | null };
}

function Health() {
  const h = useLoad(() => get<SaaSHealth>("/health/saas", { anonymous: true }), []);
  const v = h.value;
  return (
    <Card title="System health" actions={<button type="button" class="secondary small" onClick={h.reload}>Refresh</button>}>
      <ErrorBox error={h.error} />
      {v && (
        <dl class="facts" data-testid="system-health">
          <dt>Overall</dt>
          <dd>
            <Badge tone={statusTone(v.status)}>{v.status}</Badge>
          </dd>
          <dt>NATS</dt>
          <dd>
            <Badge tone={statusTone(v.nats?.status ?? "")}>{v.nats?.status ?? "—"}</Badge> {v.nats?.mode} {v.nats?.connection && `· ${v.nats.connection}`}
          </dd>
          <dt>Circuit breaker</dt>
          <dd>
            <Badge tone={statusTone(v.nats?.breaker?.state ?? "")}>{v.nats?.breaker?.state ?? "—"}</Badge>
          </dd>
          <dt>Spool</dt>
          <dd>
            {v.nats?.spool_depth ?? 0} events ({v.nats?.spool_bytes ?? 0} bytes)
          </dd>
          <dt>Watchers · turns in flight</dt>
          <dd>
            {v.nats?.watchers ?? 0} · {v.nats?.in_flight ?? 0}
          </dd>
          <dt>OpenMeter</dt>
          <dd>
            <Badge tone={statusTone(v.openmeter?.status ?? "")}>{v.openmeter?.status ?? "—"}</Badge> backlog {v.openmeter?.backlog ?? 0}
            {v.openmeter?.last_success && <span class="muted small"> · last success {fmtTime(v.openmeter.last_success)}</span>}
          </dd>
          {v.control_plane && (
            <>
              <dt>Control plane</dt>
              <dd>
                <Badge tone={statusTone(v.control_plane.status ?? "")}>{v.control_plane.status ?? "—"}</Badge> {v.control_plane.tenants ?? 0} tenants,{" "}
                {v.control_plane.keys ?? 0} keys
              </dd>
            </>
          )}
        </dl>
      )}
    </Card>
  );
}
