// Building DOM nodes: text always goes in as text nodes (never markup), so a transcript that
// reads "<img src=x onerror=...>" is shown as those characters. The page's CSP enforces it too:
// Trusted Types with no policy make every innerHTML assignment throw.

/** An element with attributes, `on*` listeners and children (strings become text nodes). */
export function h(tag, attrs = {}, ...children) {
  const el = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs)) {
    if (value === null || value === undefined || value === false) continue;
    if (key === "class") el.className = value;
    else if (key === "text") el.textContent = value;
    else if (key.startsWith("on")) el.addEventListener(key.slice(2), value);
    else el.setAttribute(key, value === true ? "" : String(value));
  }
  append(el, children);
  return el;
}

function append(el, children) {
  for (const child of children.flat(Infinity)) {
    if (child !== null && child !== undefined && child !== false) el.append(child);
  }
}

/** Replace an element's children with `children` (strings as text). */
export function fill(el, ...children) {
  el.replaceChildren();
  append(el, children);
  return el;
}

export const $ = (selector, root = document) => root.querySelector(selector);

/** Show `message` in an alert box (hidden when empty). */
export function alertBox(el, message) {
  el.hidden = !message;
  const text = el.querySelector("p");
  if (text) text.textContent = message || "";
  else el.textContent = message || "";
}

/** 83.456 -> "1:23.5" (minutes:seconds). */
export function clock(seconds, decimals = 1) {
  const m = Math.floor(seconds / 60);
  const s = (seconds - m * 60).toFixed(decimals).padStart(decimals ? 3 + decimals : 2, "0");
  return `${m}:${s}`;
}

/** A ratio as the CLI prints it: 0.1234 -> "12.34%", null -> "n/a". */
export function percent(value) {
  return value === null || value === undefined ? "n/a" : `${(value * 100).toFixed(2)}%`;
}

/** Offer `text` as a file download named `name`. */
export function download(name, text, type) {
  const url = URL.createObjectURL(new Blob([text], { type }));
  const link = h("a", { href: url, download: name, class: "visually-hidden" });
  document.body.append(link);
  link.click();
  link.remove();
  setTimeout(() => URL.revokeObjectURL(url), 10_000);
}
