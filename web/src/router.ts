// A very small client router over the History API: the console's pages are
// /console/<page>; the server answers index.html for every one of them.
import { useEffect, useState } from "preact/hooks";

export const BASE = "/console/";

export type Page = "signin" | "signup" | "playground" | "watch" | "keys" | "usage" | "billing" | "operator";
const PAGES: Page[] = ["signin", "signup", "playground", "watch", "keys", "usage", "billing", "operator"];

export interface Route {
  page: Page | "";
  params: URLSearchParams;
}

function current(): Route {
  const rest = location.pathname.startsWith(BASE) ? location.pathname.slice(BASE.length) : "";
  const name = rest.split("/")[0] as Page;
  return { page: PAGES.includes(name) ? name : "", params: new URLSearchParams(location.search) };
}

const listeners = new Set<() => void>();
window.addEventListener("popstate", () => listeners.forEach((l) => l()));

export function navigate(to: string, replace = false) {
  const url = to.startsWith("/") ? to : BASE + to;
  if (replace) history.replaceState(null, "", url);
  else history.pushState(null, "", url);
  listeners.forEach((l) => l());
}

export function useRoute(): Route {
  const [route, setRoute] = useState(current);
  useEffect(() => {
    const l = () => setRoute(current());
    listeners.add(l);
    return () => listeners.delete(l);
  }, []);
  return route;
}

/** onLink makes a plain <a href> navigate in the app (modifier clicks still open tabs). */
export function onLink(e: MouseEvent) {
  const a = e.currentTarget as HTMLAnchorElement;
  if (e.button !== 0 || e.metaKey || e.ctrlKey || e.shiftKey || e.altKey) return;
  e.preventDefault();
  navigate(a.getAttribute("href") ?? BASE);
}
