// Test harness: a real kgentsd (bin/kgentsd, built by `make build`) on free
// ports with embedded NATS and a temporary data directory, and headless
// Debian Chromium driven by playwright-core.
import { spawn, spawnSync } from "node:child_process";
import { mkdtemp, rm } from "node:fs/promises";
import { createServer } from "node:net";
import { tmpdir } from "node:os";
import { dirname, join, resolve } from "node:path";
import { fileURLToPath } from "node:url";
import { chromium } from "playwright-core";

const here = dirname(fileURLToPath(import.meta.url));
export const repoRoot = resolve(here, "..", "..");

function freePort() {
  return new Promise((res, rej) => {
    const s = createServer();
    s.unref();
    s.on("error", rej);
    s.listen(0, "127.0.0.1", () => {
      const { port } = s.address();
      s.close(() => res(port));
    });
  });
}

/** startServer runs kgentsd (env adds or overrides variables) and resolves once /readyz answers 200. */
export async function startServer(extraEnv = {}) {
  const bin = process.env.KGENTSD ?? join(repoRoot, "bin", "kgentsd");
  const dataDir = await mkdtemp(join(tmpdir(), "kgents-console-"));
  const [httpPort, grpcPort] = [await freePort(), await freePort()];
  const env = {
    PATH: process.env.PATH ?? "/usr/bin:/bin",
    HOME: process.env.HOME ?? dataDir,
    LISTEN_HOST: "127.0.0.1",
    HTTP_PORT: String(httpPort),
    GRPC_PORT: String(grpcPort),
    NATS_EMBEDDED_PORT: "-1",
    KGENTS_DATA_DIR: dataDir,
    KGENTS_DEV_KEYS: "true",
    KGENTS_SIGNUP: "open",
    SIGNUP_RATE: "1000",
    // Slow the offline engine down so a streamed reply visibly grows word by word.
    SOUL_CHUNK_DELAY: "40ms",
    SHUTDOWN_DRAIN: "0",
    SHUTDOWN_TIMEOUT: "5s",
    LOG_LEVEL: "warn",
    ...extraEnv,
  };
  const proc = spawn(bin, [], { env, stdio: ["ignore", "pipe", "pipe"] });
  let logs = "";
  proc.stdout.on("data", (d) => (logs += d));
  proc.stderr.on("data", (d) => (logs += d));
  const url = `http://127.0.0.1:${httpPort}`;
  const deadline = Date.now() + 30_000;
  for (;;) {
    if (proc.exitCode !== null) throw new Error(`kgentsd exited (${proc.exitCode}):\n${logs}`);
    try {
      const r = await fetch(url + "/readyz");
      if (r.ok) break;
    } catch {
      // not listening yet
    }
    if (Date.now() > deadline) {
      proc.kill("SIGKILL");
      throw new Error(`kgentsd not ready after 30 s:\n${logs}`);
    }
    await new Promise((r) => setTimeout(r, 100));
  }
  return {
    url,
    logs: () => logs,
    async stop() {
      if (proc.exitCode === null) {
        const exited = new Promise((r) => proc.once("exit", r));
        proc.kill("SIGTERM");
        const t = setTimeout(() => proc.kill("SIGKILL"), 10_000);
        await exited;
        clearTimeout(t);
      }
      await rm(dataDir, { recursive: true, force: true });
    },
  };
}

/**
 * startStripeMock runs the official Stripe mock (stripe-mock, pinned in
 * tools/stripemock/go.mod): the binary STRIPE_MOCK names (`make test-web`
 * builds it), else one built here with Go. Resolves with its base URL.
 */
export async function startStripeMock() {
  let bin = process.env.STRIPE_MOCK ?? "";
  let buildDir = "";
  if (!bin) {
    buildDir = await mkdtemp(join(tmpdir(), "stripe-mock-"));
    bin = join(buildDir, "stripe-mock");
    const b = spawnSync("go", ["build", "-o", bin, "github.com/stripe/stripe-mock"], {
      cwd: join(repoRoot, "tools", "stripemock"),
      encoding: "utf8",
    });
    if (b.status !== 0) throw new Error(`building stripe-mock: ${b.stderr}`);
  }
  const port = await freePort();
  // Its HTTPS listener on a free port too (the default 12112 may be taken).
  const proc = spawn(bin, ["-http-addr", `127.0.0.1:${port}`, "-https-addr", "127.0.0.1:0"], { stdio: ["ignore", "pipe", "pipe"] });
  let logs = "";
  proc.stdout.on("data", (d) => (logs += d));
  proc.stderr.on("data", (d) => (logs += d));
  const url = `http://127.0.0.1:${port}`;
  const deadline = Date.now() + 20_000;
  for (;;) {
    if (proc.exitCode !== null) throw new Error(`stripe-mock exited (${proc.exitCode}):\n${logs}`);
    try {
      await fetch(url + "/v1/customers");
      break; // it answers (401 without a key is an answer)
    } catch {
      // not listening yet
    }
    if (Date.now() > deadline) {
      proc.kill("SIGKILL");
      throw new Error(`stripe-mock not up after 20 s:\n${logs}`);
    }
    await new Promise((r) => setTimeout(r, 100));
  }
  return {
    url,
    async stop() {
      if (proc.exitCode === null) {
        const exited = new Promise((r) => proc.once("exit", r));
        proc.kill("SIGKILL");
        await exited;
      }
      if (buildDir) await rm(buildDir, { recursive: true, force: true });
    },
  };
}

/** startBrowser launches Debian's Chromium headless with a fresh profile. */
export async function startBrowser() {
  const userDataDir = await mkdtemp(join(tmpdir(), "kgents-chromium-"));
  const context = await chromium.launchPersistentContext(userDataDir, {
    executablePath: process.env.CHROMIUM ?? "/usr/bin/chromium",
    headless: true,
    viewport: { width: 1280, height: 860 },
    args: [
      "--headless",
      "--no-sandbox",
      "--disable-gpu",
      "--disable-quic",
      "--no-first-run",
      "--disable-background-networking",
      "--disable-component-update",
      "--disable-sync",
    ],
    timeout: 30_000,
  });
  return {
    context,
    async stop() {
      await context.close();
      await rm(userDataDir, { recursive: true, force: true });
    },
  };
}

/**
 * Requests the app makes on purpose that the API may refuse, and handles:
 * the scope probes (403 for a key without admin or operator). Chromium logs
 * each refused fetch as a console error; these are the only ones a test
 * tolerates.
 */
const EXPECTED_REFUSALS = [
  { path: /^\/v1\/keys$/, status: [403] },
  { path: /^\/v1\/admin\/tenants$/, status: [403] },
];

/** watchConsole records a page's console errors and uncaught exceptions. */
export function watchConsole(page) {
  const errors = [];
  const refused = new Map(); // url → status of API answers the app expects may fail
  page.on("response", (r) => {
    const u = new URL(r.url());
    const rule = EXPECTED_REFUSALS.find((x) => x.path.test(u.pathname));
    if (rule && rule.status.includes(r.status())) refused.set(r.url(), r.status());
  });
  page.on("console", (m) => {
    if (m.type() !== "error") return;
    const loc = m.location()?.url ?? "";
    if (/Failed to load resource/.test(m.text()) && refused.has(loc)) return;
    errors.push(`${m.text()} (${loc})`);
  });
  page.on("pageerror", (e) => errors.push(`uncaught: ${e.message}`));
  return errors;
}
