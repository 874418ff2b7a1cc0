import { useState } from "preact/hooks";
import { get, post, type Billing, type Tenant } from "../api";
import { fmtTime } from "../format";
import type { Identity } from "../session";
import { Badge, Card, ErrorBox, statusTone, useLoad } from "../ui";

interface Loaded {
  billing: Billing;
  tenant: Tenant | null;
}

async function load(): Promise<Loaded> {
  const [billing, tenant] = await Promise.all([get<Billing>("/v1/billing"), get<Tenant>("/v1/tenant").catch(() => null)]);
  return { billing, tenant };
}

/** whyNoCheckout says why this tenant cannot change its plan here, or "". */
function whyNoCheckout(d: Loaded, identity: Identity): string {
  if (!d.billing.configured)
    return "Billing is not configured on this server: its operator has not set STRIPE_API_KEY, so plans cannot be bought or changed here.";
  if (d.tenant?.read_only)
    return "This is a development or key-file tenant: it cannot be billed. Sign up for a tenant of your own to choose a plan.";
  if (!identity.admin) return "Changing the plan needs a key with the admin scope.";
  return "";
}

export function BillingPage({ identity }: { identity: Identity }) {
  const data = useLoad(load, []);
  const [interval, setInterval] = useState<"month" | "year">("month");
  const [error, setError] = useState<unknown>(null);
  const [busy, setBusy] = useState(false);
  const b = data.value?.billing;
  const tier = b?.tier ?? identity.usage.tier;
  const status = b?.status ?? "active";
  const grace = b?.grace_until ?? null;
  const unavailable = data.value ? whyNoCheckout(data.value, identity) : "";

  const go = async (path: string, body: unknown) => {
    setBusy(true);
    setError(null);
    try {
      const { url } = await post<{ url: string }>(path, body);
      window.location.assign(url);
    } catch (err) {
      setError(err);
      setBusy(false);
    }
  };
  const here = `${location.origin}/console/billing`;

  return (
    <>
      <div class="page-head">
        <h1 tabIndex={-1}>Billing</h1>
        <p class="muted">Your plan follows your Stripe subscription. Payments happen on Stripe's pages.</p>
      </div>
      <ErrorBox error={data.error} />
      {status === "past_due" && (
        <p class="banner warn" role="alert" data-testid="grace-banner">
          Your last payment failed. The service keeps working until <strong>{fmtTime(grace)}</strong>; update your payment method
          before then to avoid suspension.
        </p>
      )}
      {(status === "suspended" || status === "canceled") && (
        <p class="banner bad" role="alert" data-testid="grace-banner">
          This tenant is {status}: API calls are refused (402) until the subscription is paid. You can still see usage and billing here.
        </p>
      )}
      {data.value && (
        <div class="grid two">
          <Card title="Current plan">
            <p class="plan" data-testid="plan">
              <span class="plan-name">{tier}</span> <Badge tone={statusTone(status)}>{status}</Badge>
            </p>
            {b?.subscription && (
              <dl class="facts">
                <dt>Subscription</dt>
                <dd>
                  {b.subscription.status} · {b.subscription.interval}ly
                </dd>
                <dt>Current period ends</dt>
                <dd>{fmtTime(b.subscription.current_period_end)}</dd>
                {b.subscription.cancel_at_period_end && (
                  <>
                    <dt>Cancels</dt>
                    <dd>at the end of the period</dd>
                  </>
                )}
              </dl>
            )}
          </Card>
          <Card title="Change plan">
            {unavailable && (
              <p class="notice" role="status" id="billing-unavailable" data-testid="billing-unavailable">
                {unavailable}
              </p>
            )}
            <fieldset class="field">
              <legend>Billing interval</legend>
              <label class="check">
                <input type="radio" name="interval" checked={interval === "month"} onChange={() => setInterval("month")} /> monthly
              </label>
              <label class="check">
                <input type="radio" name="interval" checked={interval === "year"} onChange={() => setInterval("year")} /> yearly
              </label>
            </fieldset>
            <div class="row wrap">
              {tier !== "pro" && tier !== "enterprise" && (
                <button
                  type="button"
                  data-testid="upgrade-pro"
                  disabled={busy || !!unavailable}
                  aria-describedby={unavailable ? "billing-unavailable" : undefined}
                  onClick={() => go("/v1/billing/checkout", { tier: "pro", interval, success_url: here, cancel_url: here })}
                >
                  Upgrade to Pro
                </button>
              )}
              {tier !== "enterprise" && (
                <button
                  type="button"
                  class={tier === "pro" ? "" : "secondary"}
                  data-testid="upgrade-enterprise"
                  disabled={busy || !!unavailable}
                  aria-describedby={unavailable ? "billing-unavailable" : undefined}
                  onClick={() => go("/v1/billing/checkout", { tier: "enterprise", interval, success_url: here, cancel_url: here })}
                >
                  Upgrade to Enterprise
                </button>
              )}
              <button
                type="button"
                class="secondary"
                data-testid="manage-billing"
                disabled={busy || !!unavailable}
                  aria-describedby={unavailable ? "billing-unavailable" : undefined}
                onClick={() => go("/v1/billing/portal", { return_url: here })}
              >
                Manage billing
              </button>
            </div>
            <ErrorBox error={error} />
          </Card>
        </div>
      )}
    </>
  );
}
