// Real-browser tests of the console: headless Chromium against a real
// kgentsd. Run with `make test-web` (it builds bin/kgentsd, installs
// Chromium when missing and runs `npm test` here). With
// KGENTS_SCREENSHOTS=<dir> the tests also save a PNG of every page there
// (`make console-screenshots` writes docs/console/).
import assert from "node:assert/strict";
import { mkdir } from "node:fs/promises";
import { join } from "node:path";
import { after, before, describe, test } from "node:test";
import { startBrowser, startServer, startStripeMock, watchConsole } from "./harness.mjs";

const T = { timeout: 30_000 };
const shots = process.env.KGENTS_SCREENSHOTS ?? "";

let server;
let browser;

before(async () => {
  if (shots) await mkdir(shots, { recursive: true });
  server = await startServer();
  browser = await startBrowser();
});

after(async () => {
  await browser?.stop();
  await server?.stop();
});

/** open gives a fresh page (its own sessionStorage) that records console errors. */
async function open(path = "/console/", base = server.url) {
  const page = await browser.context.newPage();
  page.setDefaultTimeout(10_000);
  const errors = watchConsole(page);
  page.on("dialog", (d) => void d.accept());
  await page.goto(base + path);
  await page.bringToFront();
  return { page, errors };
}

async function signIn(page, key) {
  await page.getByTestId("api-key-input").fill(key);
  await page.getByTestId("sign-in").click();
  await page.getByTestId("nav-playground").waitFor();
}

async function shot(page, name, fullPage = true) {
  if (!shots) return;
  await page.evaluate(() => document.activeElement instanceof HTMLElement && document.activeElement.blur());
  await page.screenshot({ path: join(shots, `${name}.png`), fullPage });
}

async function signUp(page, name, base = server.url) {
  await page.goto(base + "/console/signup");
  const email = `${name.toLowerCase().replace(/\W+/g, "-")}-${Date.now()}@example.com`;
  await page.getByTestId("signup-name").fill(name);
  await page.getByTestId("signup-email").fill(email);
  await page.getByTestId("sign-up").click();
  const secret = (await page.getByTestId("key-secret").textContent())?.trim() ?? "";
  return { email, secret };
}

/** recordReplyLengths notes every length the streamed reply goes through. */
async function recordReplyLengths(page) {
  await page.evaluate(() => {
    const w = window;
    w.__lengths = [];
    new MutationObserver(() => {
      const el = document.querySelector("[data-testid=reply]");
      const n = el ? el.textContent.length : -1;
      if (n >= 0 && w.__lengths[w.__lengths.length - 1] !== n) w.__lengths.push(n);
    }).observe(document.body, { subtree: true, childList: true, characterData: true });
  });
}

/**
 * assertStreamed checks the reply grew to its final length through lengths
 * in between: it was streamed, not shown at once. A busy browser renders the
 * chunks that reach it together in one update (a 20-character reply of four
 * chunks showed 9, 14 and 20 on a loaded CI machine), so one length in
 * between is the proof, not one per word.
 */
async function assertStreamed(page) {
  const lengths = await page.evaluate(() => window.__lengths);
  const final = ((await page.getByTestId("reply").textContent()) ?? "").length;
  const intermediate = lengths.filter((n) => n > 0 && n < final);
  assert.ok(final > 0, "a reply");
  assert.ok(intermediate.length >= 1, `reply shown at once, not streamed: lengths ${lengths}, final ${final}`);
  assert.ok(lengths.every((n, i) => i === 0 || n >= lengths[i - 1]), `reply only grows: ${lengths}`);
}

const api = (path, key, init = {}) =>
  fetch(server.url + path, { ...init, headers: { "X-API-Key": key, "Content-Type": "application/json", ...(init.headers ?? {}) } });

describe("console", () => {
  test("/console redirects and serves the app with its headers", T, async () => {
    const r = await fetch(server.url + "/console", { redirect: "manual" });
    assert.equal(r.status, 301);
    assert.equal(r.headers.get("location"), "/console/");
    const idx = await fetch(server.url + "/console/usage");
    assert.equal(idx.status, 200);
    assert.match(idx.headers.get("content-type") ?? "", /^text\/html/);
    assert.equal(idx.headers.get("cache-control"), "no-cache");
    assert.match(idx.headers.get("content-security-policy") ?? "", /default-src 'self'/);
    const html = await idx.text();
    const js = html.match(/src="(\/console\/assets\/[^"]+\.js)"/)?.[1];
    assert.ok(js, "index.html names its script");
    const a = await fetch(server.url + js);
    assert.equal(a.status, 200);
    assert.match(a.headers.get("content-type") ?? "", /javascript/);
    assert.match(a.headers.get("cache-control") ?? "", /immutable/);
    assert.equal((await fetch(server.url + "/console/assets/missing.js")).status, 404);
  });

  test("sign in with a key, a wrong key is refused with the API's detail", T, async () => {
    const { page, errors } = await open();
    await shot(page, "sign-in");
    await page.getByTestId("api-key-input").fill("kg_wrong_key");
    await page.getByTestId("sign-in").click();
    await page.getByTestId("error").waitFor();
    assert.match((await page.getByTestId("error").textContent()) ?? "", /key/i);
    errors.length = 0; // the 401 above is the point of this step
    await signIn(page, "kg_dev_bob");
    assert.equal(await page.getByTestId("nav-operator").count(), 0, "no operator page for a non-operator key");
    assert.equal(await page.evaluate(() => sessionStorage.getItem("kgents.apiKey")), "kg_dev_bob");
    assert.equal(await page.evaluate(() => localStorage.length), 0, "nothing in localStorage");
    assert.deepEqual(errors, []);
    await page.close();
  });

  test("the Playground streams a reply word by word and shows the tokens used", T, async () => {
    const { page, errors } = await open();
    await signIn(page, "kg_dev_bob");
    await recordReplyLengths(page);
    await page.getByTestId("mode-select").selectOption("challenge");
    await page.getByTestId("message-input").fill("I want to rewrite everything in Rust and design the perfect architecture first");
    await page.getByTestId("send").click();
    await page.getByTestId("tokens-used").waitFor({ timeout: 20_000 });
    await assertStreamed(page);
    assert.ok(Number(await page.getByTestId("tokens-used").textContent()) > 0, "tokens used shown");
    // The history lists the turn once it is stored.
    await page.locator(".transcript .msg.user").first().waitFor(); // the stored user message, in the history
    await page.getByTestId("governance-action").fill("rm -rf /production/database");
    await page.getByTestId("governance-check").click();
    assert.match((await page.getByTestId("governance-verdict").textContent()) ?? "", /escalate/);
    await shot(page, "playground");
    assert.deepEqual(errors, []);
    await page.close();
  });

  test("Watch follows a session live", T, async () => {
    const { page, errors } = await open();
    await signIn(page, "kg_dev_bob");
    const r = await fetch(server.url + "/v1/kgent/sessions", {
      method: "POST",
      headers: { "X-API-Key": "kg_dev_bob", "Content-Type": "application/json" },
      body: JSON.stringify({ title: "Watched", mode: "advise" }),
    });
    const s = await r.json();
    await page.goto(`${server.url}/console/watch?session=${s.id}`);
    await page.getByTestId("watch-state").getByText("live").waitFor();
    const turn = await fetch(`${server.url}/v1/kgent/sessions/${s.id}/messages`, {
      method: "POST",
      headers: { "X-API-Key": "kg_dev_bob", "Content-Type": "application/json" },
      body: JSON.stringify({ message: "What should I focus on this week?", stream: false }),
    });
    assert.equal(turn.status, 200);
    await page.locator("[data-testid=watch-events] .msg.assistant").waitFor({ timeout: 15_000 });
    await shot(page, "watch");
    assert.deepEqual(errors, []);
    await page.close();
  });

  test("sign up, then create a key (secret shown once) and revoke it", T, async () => {
    const { page, errors } = await open();
    const { secret } = await signUp(page, "Browser Test Co");
    assert.match(secret, /^kg_live_[0-9A-Za-z]{32}$/);
    await shot(page, "sign-up");
    await page.getByTestId("signup-continue").click();
    await page.getByTestId("nav-keys").click();
    await page.getByTestId("key-row").first().waitFor();
    const before = await page.getByTestId("key-row").count();
    await page.getByTestId("key-name").fill("ci-deploy");
    await page.getByTestId("new-key").click();
    const fresh = ((await page.getByTestId("key-secret").textContent()) ?? "").trim();
    assert.match(fresh, /^kg_live_[0-9A-Za-z]{32}$/);
    await page.waitForFunction((n) => document.querySelectorAll("[data-testid=key-row]").length === n + 1, before);
    await shot(page, "keys");
    // The new key works against the API.
    const use = await fetch(server.url + "/v1/usage", { headers: { "X-API-Key": fresh } });
    assert.equal(use.status, 200);
    await page.getByTestId("dismiss-secret").click();
    assert.equal(await page.getByTestId("key-secret").count(), 0, "the secret is gone once dismissed");
    assert.equal(await page.content().then((h) => h.includes(fresh)), false, "and not anywhere in the page");
    const row = page.locator("[data-testid=key-row]", { hasText: "ci-deploy" });
    await row.getByTestId("revoke-key").click();
    await page.locator("[data-testid=key-row][data-revoked=true]", { hasText: "ci-deploy" }).waitFor();
    // Revocation is enforced (within 2 s on every replica, SPEC §4.13).
    let status = 0;
    for (let i = 0; i < 30 && status !== 401; i++) {
      status = (await fetch(server.url + "/v1/usage", { headers: { "X-API-Key": fresh } })).status;
      if (status !== 401) await new Promise((r) => setTimeout(r, 100));
    }
    assert.equal(status, 401, "a revoked key is refused");
    assert.deepEqual(errors, []);
    await page.close();
  });

  test("Usage shows the chart and the limits", T, async () => {
    const { page, errors } = await open();
    await signIn(page, "kg_dev_bob");
    await page.getByTestId("nav-usage").click();
    const chart = page.getByTestId("usage-chart");
    await chart.locator("canvas").waitFor();
    const box = await chart.boundingBox();
    assert.ok(box && box.width > 300 && box.height > 200, `chart is drawn (${JSON.stringify(box)})`);
    assert.match((await page.getByTestId("usage-requests-today").textContent()) ?? "", /\/\s*1,000/);
    await shot(page, "usage");
    assert.deepEqual(errors, []);
    await page.close();
  });

  test("Billing shows the plan; without Stripe configured the upgrade is disabled and says why", T, async () => {
    const { page, errors } = await open();
    await signIn(page, "kg_dev_bob");
    await page.getByTestId("nav-billing").click();
    await page.getByTestId("plan").waitFor();
    assert.match((await page.getByTestId("plan").textContent()) ?? "", /pro/i);
    // make run has no STRIPE_API_KEY: the button is there, disabled, and the page says why.
    const upgrade = page.getByTestId("upgrade-enterprise");
    await upgrade.waitFor();
    assert.equal(await upgrade.isDisabled(), true, "upgrade disabled without Stripe");
    assert.match((await page.getByTestId("billing-unavailable").textContent()) ?? "", /not configured.*STRIPE_API_KEY/);
    assert.equal(await upgrade.getAttribute("aria-describedby"), "billing-unavailable", "the reason is tied to the button");
    assert.deepEqual(errors, []);
    await page.close();
  });

  test("a new user signs up, chats with K-gent (streamed) and sees today's usage on the chart, equal to the API's", T, async () => {
    const { page, errors } = await open();
    const { secret } = await signUp(page, "Streaming Newcomer");
    await page.getByTestId("signup-continue").click();
    await page.getByTestId("nav-playground").click();
    await recordReplyLengths(page);
    await page.getByTestId("message-input").fill("Hello K-gent, I am new here. What should I work on first?");
    await page.getByTestId("send").click();
    await page.getByTestId("tokens-used").waitFor({ timeout: 20_000 });
    await assertStreamed(page);
    const tokens = Number(await page.getByTestId("tokens-used").textContent());

    const tenant = await (await api("/v1/tenant", secret)).json();
    const today = new Date().toISOString().slice(0, 10);
    // The operator's read of this tenant's history is not one of its calls.
    const apiToday = async () => {
      const r = await api(`/v1/admin/tenants/${tenant.id}/usage/history?from=${today}&to=${today}`, "kg_dev_ops");
      assert.equal(r.status, 200);
      return (await r.json()).points[0];
    };
    await page.getByTestId("nav-usage").click();
    await page.getByTestId("usage-chart").locator("canvas").waitFor();
    // Poll: read the API, refresh the page (its own reads are metered after
    // its history read), until the chart shows what the API said.
    let want;
    let shown = "";
    const deadline = Date.now() + 20_000;
    for (;;) {
      want = await apiToday();
      if (want.dialogue_turns < 1) {
        // The chat's events are not in the history yet (the rollup lags
        // its calls by a fraction of a second). A new tenant's default
        // budget is whisper, a template reply of 0 tokens, so the tokens
        // alone cannot tell.
        assert.ok(Date.now() < deadline, `the chat is not in today's history: ${JSON.stringify(want)}`);
        await new Promise((resolve) => setTimeout(resolve, 100));
        continue;
      }
      const reloaded = page.waitForResponse((r) => new URL(r.url()).pathname === "/v1/usage");
      await page.getByRole("button", { name: "Refresh" }).click();
      await reloaded;
      try {
        await page.waitForFunction(
          ([day, requests, tokens]) => {
            const c = document.querySelector("[data-testid=usage-chart]");
            const row = document.querySelector(`[data-testid=usage-day][data-day="${day}"]`);
            const cell = (f) => row?.querySelector(`[data-field=${f}]`)?.textContent?.replace(/,/g, "");
            return (
              c?.dataset.lastDay === day &&
              c.dataset.lastRequests === String(requests) &&
              c.dataset.lastTokens === String(tokens) &&
              cell("requests") === String(requests) &&
              cell("tokens") === String(tokens)
            );
          },
          [today, want.requests, want.tokens],
          { timeout: 2_000 },
        );
        break;
      } catch {
        const c = page.getByTestId("usage-chart");
        shown = `${await c.getAttribute("data-last-requests")} requests, ${await c.getAttribute("data-last-tokens")} tokens`;
        assert.ok(Date.now() < deadline, `the chart shows ${shown} today; the API says ${JSON.stringify(want)}`);
      }
    }
    assert.ok(want.requests >= 3, `today's requests include the sign-up and the chat: ${JSON.stringify(want)}`);
    assert.equal(want.tokens, tokens, `today's tokens are the chat's (the Playground showed ${tokens})`);
    assert.equal(want.dialogue_turns, 1, `one dialogue turn: ${JSON.stringify(want)} (the Playground showed ${tokens} tokens)`);
    assert.deepEqual(errors, []);
    await page.close();
  });

  test("rotate a key: the new secret is shown once and works, the old one keeps working for its grace", T, async () => {
    const { page, errors } = await open();
    const { secret } = await signUp(page, "Rotation Co");
    await page.getByTestId("signup-continue").click();
    await page.getByTestId("nav-keys").click();
    await page.getByTestId("key-row").first().waitFor();
    const rows = await page.getByTestId("key-row").count();
    await page.getByTestId("key-row").first().getByTestId("rotate-key").click();
    const fresh = ((await page.getByTestId("key-secret").textContent()) ?? "").trim();
    assert.match(fresh, /^kg_live_[0-9A-Za-z]{32}$/);
    assert.notEqual(fresh, secret);
    await page.waitForFunction((n) => document.querySelectorAll("[data-testid=key-row]").length === n + 1, rows);
    assert.equal((await api("/v1/usage", fresh)).status, 200, "the rotated secret works");
    assert.equal((await api("/v1/usage", secret)).status, 200, "the old secret works during its grace");
    await page.getByTestId("dismiss-secret").click();
    assert.equal(await page.content().then((h) => h.includes(fresh)), false, "the secret is gone once dismissed");
    assert.deepEqual(errors, []);
    await page.close();
  });

  test("the operator sees every tenant, the audit log and system health", T, async () => {
    const { page, errors } = await open();
    await signIn(page, "kg_dev_ops");
    await page.getByTestId("nav-operator").click();
    await page.getByTestId("tenant-row").first().waitFor();
    assert.ok((await page.getByTestId("tenant-row").count()) >= 4, "the dev tenants are listed");
    await page.getByTestId("system-health").waitFor();
    await page.getByTestId("audit-log").waitFor();
    // Search narrows the table.
    await page.getByTestId("tenant-search").fill("Development (pro)");
    await page.getByTestId("tenant-filter").click();
    await page.waitForFunction(() => document.querySelectorAll("[data-testid=tenant-row]").length === 1);
    await page.getByTestId("tenant-search").fill("");
    await page.getByTestId("tenant-filter").click();
    await page.waitForFunction(() => document.querySelectorAll("[data-testid=tenant-row]").length >= 4);
    await shot(page, "operator");
    assert.deepEqual(errors, []);
    await page.close();
  });

  test("the operator changes a tenant's tier and status", T, async () => {
    const email = `tier-${Date.now()}@example.com`;
    const created = await api("/v1/admin/tenants", "kg_dev_ops", { method: "POST", body: JSON.stringify({ name: "Tier Change Co", email }) });
    assert.equal(created.status, 200);
    const t = await created.json();
    const { page, errors } = await open();
    await signIn(page, "kg_dev_ops");
    await page.getByTestId("nav-operator").click();
    await page.getByTestId("tenant-search").fill(email);
    await page.getByTestId("tenant-filter").click();
    await page.waitForFunction(() => document.querySelectorAll("[data-testid=tenant-row]").length === 1);
    const row = page.locator(`[data-testid=tenant-row][data-tenant-id="${t.id}"]`);
    assert.equal(await row.getByTestId("tenant-tier").inputValue(), "free");
    for (const [field, value] of [
      ["tier", "enterprise"],
      ["status", "suspended"],
    ]) {
      const patched = page.waitForResponse((r) => r.request().method() === "PATCH" && r.url().endsWith(`/v1/admin/tenants/${t.id}`));
      await row.getByTestId(`tenant-${field}`).selectOption(value);
      assert.equal((await patched).status(), 200);
      const now = await (await api(`/v1/admin/tenants/${t.id}`, "kg_dev_ops")).json();
      assert.equal(now[field], value, `the tenant's ${field} is ${value}`);
      assert.equal(await row.getByTestId(`tenant-${field}`).inputValue(), value);
    }
    // It takes effect: the tenant's calls are refused while it is suspended.
    const key = await (
      await api(`/v1/admin/tenants/${t.id}/keys`, "kg_dev_ops", { method: "POST", body: JSON.stringify({ name: "probe", scopes: ["read"] }) })
    ).json();
    let status = 0;
    for (let i = 0; i < 30 && status !== 402; i++) {
      status = (await api("/v1/agentese/invoke", key.secret, { method: "POST", body: JSON.stringify({ path: "world.house.manifest" }) })).status;
      if (status !== 402) await new Promise((r) => setTimeout(r, 100));
    }
    assert.equal(status, 402, "a suspended tenant's calls are refused");
    assert.deepEqual(errors, []);
    await page.close();
  });

  test("/docs renders the API reference with no console errors", T, async () => {
    const { page, errors } = await open("/docs");
    await page.locator(".swagger-ui .info .title").getByText("kgents API").waitFor({ timeout: 20_000 });
    await page.locator(".opblock-summary-path", { hasText: "/v1/usage/history" }).first().waitFor();
    assert.ok((await page.locator(".opblock").count()) > 30, "every operation is listed");
    // The Idempotency-Key parameter is shown where it is honoured.
    const checkout = page.locator(".opblock", { has: page.locator(".opblock-summary-path", { hasText: /^\/v1\/billing\/checkout$/ }) });
    await checkout.locator(".opblock-summary").click();
    await checkout.getByText("Idempotency-Key").first().waitFor();
    await shot(page, "docs", false); // the top of a long page
    assert.deepEqual(errors, []);
    await page.close();
  });

  test("keyboard only: sign in, move through the nav, send with Enter", T, async () => {
    const { page, errors } = await open();
    // The key field is the first stop in the tab order.
    await page.getByTestId("api-key-input").waitFor();
    await page.keyboard.press("Tab");
    assert.equal(
      await page.evaluate(() => document.activeElement?.getAttribute("data-testid")),
      "api-key-input",
      await page.evaluate(() => document.activeElement?.outerHTML.slice(0, 200)),
    );
    await page.keyboard.type("kg_dev_bob");
    await page.keyboard.press("Enter");
    await page.getByTestId("nav-playground").waitFor();
    // Tab goes through the page and on round to the nav links, in order; Enter follows one.
    const seen = [];
    for (let i = 0; i < 30 && !seen.includes("nav-usage"); i++) {
      await page.keyboard.press("Tab");
      seen.push(await page.evaluate(() => document.activeElement?.getAttribute("data-testid") ?? document.activeElement?.tagName));
    }
    const navs = seen.filter((s) => s?.startsWith("nav-"));
    assert.deepEqual(navs.slice(0, 4), ["nav-playground", "nav-watch", "nav-keys", "nav-usage"], `tab order: ${seen}`);
    const outline = await page.evaluate(() => getComputedStyle(document.activeElement).outlineStyle);
    assert.notEqual(outline, "none", "focus is visible");
    // After a page change the console moves focus to the page's heading (an effect
    // after render): wait for that before moving focus on, or it takes focus back
    // in the middle of what is typed next.
    const headingFocused = () => page.waitForFunction(() => document.activeElement === document.querySelector("main h1"));
    await page.keyboard.press("Enter");
    await page.getByTestId("usage-chart").waitFor();
    await headingFocused();
    await page.getByTestId("nav-playground").focus();
    await page.keyboard.press("Enter");
    await page.getByTestId("message-input").waitFor();
    await headingFocused();
    await page.getByTestId("message-input").focus();
    await page.keyboard.type("hello there");
    // Enter sends what the page holds: wait until it holds all of it.
    await page.waitForFunction(() => document.querySelector("[data-testid=message-input]")?.value === "hello there");
    await page.keyboard.press("Enter");
    await page.getByTestId("tokens-used").waitFor({ timeout: 20_000 });
    assert.ok(((await page.getByTestId("reply").textContent()) ?? "").length > 0);
    assert.deepEqual(errors, []);
    await page.close();
  });

  test("no console errors on any page, for every kind of key", T, async () => {
    for (const key of ["kg_dev_alice", "kg_dev_carol", "kg_dev_ops"]) {
      const { page, errors } = await open();
      await signIn(page, key);
      const navs = ["playground", "watch", "keys", "usage", "billing"];
      if (key === "kg_dev_ops") navs.push("operator");
      for (const n of navs) {
        await page.getByTestId(`nav-${n}`).click();
        await page.waitForLoadState("networkidle").catch(() => {});
        await page.waitForTimeout(150);
      }
      assert.deepEqual(errors, [], `console errors with ${key}`);
      await page.close();
    }
  });
});

// A second kgentsd with billing at stripe-mock, as a deployment with Stripe
// configured: the upgrade is enabled and leads to Stripe Checkout.
describe("billing with Stripe configured (stripe-mock)", () => {
  let mock;
  let billed;
  before(async () => {
    mock = await startStripeMock();
    billed = await startServer({
      STRIPE_API_KEY: "sk_test_console",
      STRIPE_API_BASE: mock.url,
      STRIPE_PRICE_PRO_MONTHLY: "price_pro_month",
      STRIPE_PRICE_PRO_YEARLY: "price_pro_year",
      STRIPE_PRICE_ENTERPRISE_MONTHLY: "price_ent_month",
      STRIPE_PRICE_ENTERPRISE_YEARLY: "price_ent_year",
    });
  });
  after(async () => {
    await billed?.stop();
    await mock?.stop();
  });

  test("a new tenant's Upgrade is enabled and goes to Stripe Checkout", T, async () => {
    const { page, errors } = await open("/console/", billed.url);
    await signUp(page, "Upgrade Co", billed.url);
    await page.getByTestId("signup-continue").click();
    await page.getByTestId("nav-billing").click();
    await page.getByTestId("plan").waitFor();
    assert.match((await page.getByTestId("plan").textContent()) ?? "", /free/i);
    const upgrade = page.getByTestId("upgrade-pro");
    assert.equal(await upgrade.isEnabled(), true, "upgrade enabled with Stripe configured");
    assert.equal(await page.getByTestId("billing-unavailable").count(), 0, "no reason to explain");
    await shot(page, "billing");
    // Checkout is Stripe's page: answer it here (the machine is offline).
    let checkoutURL = "";
    await page.route(
      (u) => !u.href.startsWith(billed.url),
      (route) => {
        checkoutURL = route.request().url();
        return route.fulfill({ status: 200, contentType: "text/html", body: "<!doctype html><title>Stripe Checkout</title><p>checkout</p>" });
      },
    );
    // The API's answer, read on its way through (the page navigates away at once).
    let answer = null;
    await page.route("**/v1/billing/checkout", async (route) => {
      const res = await route.fetch();
      answer = { status: res.status(), body: await res.json() };
      await route.fulfill({ response: res });
    });
    await upgrade.click();
    await page.waitForURL((u) => !u.href.startsWith(billed.url));
    assert.equal(answer?.status, 200, `checkout answered ${JSON.stringify(answer)}`);
    const { url } = answer.body;
    assert.equal(page.url(), url, "the browser went to the Checkout URL the API returned");
    assert.ok(checkoutURL, "the Checkout page was requested");
    assert.deepEqual(errors, []);
    await page.close();
  });
});
