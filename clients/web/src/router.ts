// The app's routes live in the URL path (the server answers index.html for them):
// /login, /register, /channels/@me, /channels/{guildId}/{channelId}, /invite/{code}.
import { useSyncExternalStore } from "react";

const EVENT = "paracord:navigate";

export function navigate(path: string, replace = false) {
  if (path === window.location.pathname) return;
  if (replace) window.history.replaceState(null, "", path);
  else window.history.pushState(null, "", path);
  window.dispatchEvent(new Event(EVENT));
}

function subscribe(cb: () => void) {
  window.addEventListener("popstate", cb);
  window.addEventListener(EVENT, cb);
  return () => {
    window.removeEventListener("popstate", cb);
    window.removeEventListener(EVENT, cb);
  };
}

export function usePath(): string {
  return useSyncExternalStore(subscribe, () => window.location.pathname);
}

export type Route =
  | { name: "login" }
  | { name: "register" }
  | { name: "home" }
  | { name: "guild"; guildId: string; channelId?: string }
  | { name: "invite"; code: string };

export function parseRoute(path: string): Route {
  const parts = path.split("/").filter(Boolean).map(decodeURIComponent);
  if (parts[0] === "login") return { name: "login" };
  if (parts[0] === "register") return { name: "register" };
  if (parts[0] === "invite" && parts[1]) return { name: "invite", code: parts[1] };
  if (parts[0] === "channels" && parts[1] && parts[1] !== "@me") {
    return { name: "guild", guildId: parts[1], channelId: parts[2] };
  }
  return { name: "home" };
}

export function channelPath(guildId: string, channelId?: string): string {
  const g = `/channels/${encodeURIComponent(guildId)}`;
  return channelId ? `${g}/${encodeURIComponent(channelId)}` : g;
}
