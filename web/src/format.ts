export function fmtTime(t: string | null | undefined): string {
  if (!t) return "—";
  const d = new Date(t);
  if (Number.isNaN(d.getTime())) return t;
  return d.toLocaleString(undefined, { dateStyle: "medium", timeStyle: "short" });
}

export function fmtNum(n: number | null | undefined): string {
  if (n === null || n === undefined) return "—";
  return n.toLocaleString("en-US");
}

/** limit renders a limit: 0 or null means unlimited. */
export function fmtLimit(n: number | null | undefined): string {
  return !n ? "unlimited" : fmtNum(n);
}

/** nextUTCMidnight and nextUTCMonth are when the daily and monthly quotas reset. */
export function nextUTCMidnight(now = new Date()): Date {
  return new Date(Date.UTC(now.getUTCFullYear(), now.getUTCMonth(), now.getUTCDate() + 1));
}

export function nextUTCMonth(now = new Date()): Date {
  return new Date(Date.UTC(now.getUTCFullYear(), now.getUTCMonth() + 1, 1));
}

export function fmtIn(d: Date, now = new Date()): string {
  const ms = d.getTime() - now.getTime();
  const h = Math.floor(ms / 3_600_000);
  const m = Math.floor((ms % 3_600_000) / 60_000);
  if (h >= 48) return `in ${Math.round(h / 24)} days`;
  return `in ${h} h ${m} min`;
}
