// Dark by default, as Discord; light on request, remembered in localStorage.
export type Theme = "dark" | "light";
const KEY = "paracord.theme";

export function storedTheme(): Theme {
  return localStorage.getItem(KEY) === "light" ? "light" : "dark";
}

export function applyTheme(t: Theme) {
  document.documentElement.dataset.theme = t;
}

export function setTheme(t: Theme) {
  localStorage.setItem(KEY, t);
  applyTheme(t);
}
