// The console's pages share one shell (index.html); this shows the one the path names and loads
// its module on first view. Links are real URLs (ui/try, ui/live, ...), followed here without a
// reload so that the token typed on one page is still in memory on the next.

import { getJson } from "./api.js";

const PAGES = {
  try: { title: "Try it", load: () => import("./try.js") },
  live: { title: "Live", load: () => import("./live.js") },
  review: { title: "Review", load: () => import("./review.js") },
  quality: { title: "Quality", load: () => import("./quality.js") },
};
const mounted = new Set();

function pageOf(path) {
  const last = path.replace(/\/+$/, "").split("/").pop();
  return last in PAGES ? last : "try";
}

async function show(page, { focus = false } = {}) {
  for (const section of document.querySelectorAll("section.page")) section.hidden = section.dataset.page !== page;
  for (const link of document.querySelectorAll("nav a[data-page]")) {
    if (link.dataset.page === page) link.setAttribute("aria-current", "page");
    else link.removeAttribute("aria-current");
  }
  document.title = `${PAGES[page].title} · ASR console`;
  const section = document.getElementById(`page-${page}`);
  if (focus) section.querySelector("h1").focus();
  const module = await PAGES[page].load();
  if (!mounted.has(page)) {
    mounted.add(page);
    await module.mount(section);
  } else if (module.shown) {
    await module.shown();
  }
  document.body.dataset.ready = page; // for tests and scripts: the page's first load is done
}

document.querySelector("nav").addEventListener("click", (event) => {
  const link = event.target.closest("a[data-page]");
  if (!link || event.button !== 0 || event.metaKey || event.ctrlKey || event.shiftKey || event.altKey) return;
  event.preventDefault();
  if (link.href !== location.href) history.pushState(null, "", link.href);
  show(link.dataset.page, { focus: true });
});
window.addEventListener("popstate", () => show(pageOf(location.pathname), { focus: true }));

async function served() {
  // /readyz is public: which model answers, without a key.
  const line = document.getElementById("served");
  try {
    const ready = await getJson("readyz");
    line.textContent = `${ready.model} on ${ready.device}`;
  } catch (error) {
    line.textContent = error.status === 503 ? "model loading…" : "service unreachable";
  }
}

served();
show(pageOf(location.pathname));
