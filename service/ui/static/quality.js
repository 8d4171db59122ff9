// Quality: per language, the weighted error rate with its 95% interval and sample count (the
// figures of `python -m service samples report`, from GET /v1/quality/report), and the samples
// scored last, reference against hypothesis word by word, as the score counted them.

import { ApiError, getJson } from "./api.js";
import { signIn } from "./auth.js";
import { $, fill, h, percent } from "./dom.js";

let section;

export async function mount(root) {
  section = root;
  $("#quality-refresh", section).addEventListener("click", load);
  await load();
}

export async function shown() {
  if (!$("#quality-body", section).hidden) await load();
}

async function load() {
  let report;
  try {
    report = await getJson("v1/quality/report?recent=20", { kind: "admin" });
  } catch (error) {
    $("#quality-body", section).hidden = true;
    if (error instanceof ApiError && error.status === 401) {
      signIn($(".signin-slot", section), "admin", async () => {
        try {
          await getJson("v1/quality/report?recent=0", { kind: "admin" });
        } catch (e) {
          if (e.status === 401) return false;
        }
        await load();
        return true;
      });
    } else {
      fill($(".signin-slot", section), h("p", { class: "alert", role: "alert", text: error.message }));
    }
    return;
  }
  renderTable(report.languages);
  renderRecent(report.recent);
  $("#quality-body", section).hidden = false;
}

function renderTable(rows) {
  $("#quality-none", section).hidden = rows.length > 0;
  $("#quality-leaning", section).hidden = !rows.some((r) => r.pending > 0);
  fill(
    $("#quality-rows", section),
    rows.map((r) =>
      h(
        "tr",
        { "data-language": r.language },
        h("th", { scope: "row", text: r.language }),
        h("td", { text: r.metric }),
        h("td", { class: "num", text: String(r.samples) }),
        h("td", { class: "num rate", "data-rate": r.rate, text: percent(r.rate) }),
        h("td", { class: "num", text: `${percent(r.ci95[0])} – ${percent(r.ci95[1])}` }),
        h("td", { class: "num", text: percent(r.unweighted) }),
        h("td", { class: "num", text: String(r.shadowed) }),
        h("td", { class: "num", text: r.shadowed ? `${percent(r.true_on_shadowed)} / ${percent(r.shadow_on_shadowed)}` : "–" }),
        h("td", { class: "num", text: String(r.pending) }),
      ),
    ),
  );
}

function diff(alignment, unit) {
  const out = [];
  const sep = unit === "char" ? "" : " ";
  const words = (units) => units.join(sep);
  for (const chunk of alignment) {
    if (chunk.op === "equal") out.push(h("span", { class: "diff-equal", text: words(chunk.reference) }));
    else if (chunk.op === "delete") out.push(missed(words(chunk.reference)));
    else if (chunk.op === "insert") out.push(added(words(chunk.hypothesis)));
    else out.push(missed(words(chunk.reference)), added(words(chunk.hypothesis)));
    out.push(sep);
  }
  return out;
}

// <del>/<ins> carry the meaning; the hidden words say it to screen readers, which skip the styling.
function missed(text) {
  return h("del", { class: "diff-missed" }, h("span", { class: "visually-hidden", text: "[said, not heard: " }), text,
    h("span", { class: "visually-hidden", text: "]" }));
}

function added(text) {
  return h("ins", { class: "diff-added" }, h("span", { class: "visually-hidden", text: "[heard, not said: " }), text,
    h("span", { class: "visually-hidden", text: "]" }));
}

function renderRecent(samples) {
  fill(
    $("#quality-recent", section),
    samples.map((s) => {
      const unit = s.unit === "char" ? "characters" : "words";
      const rate = s.reference_units ? s.errors / s.reference_units : null;
      return h(
        "li",
        { class: "card", "data-id": s.id },
        h("p", { class: "recent-head" },
          h("strong", { text: `${s.errors} ${s.errors === 1 ? "error" : "errors"} in ${s.reference_units} ${unit} (${percent(rate)})` }),
          ` · ${s.language} · scored ${new Date(s.scored_at * 1000).toLocaleString()} · `,
          h("code", { text: s.id.slice(0, 8) })),
        h("p", { class: "diff" }, diff(s.alignment, s.unit)),
        h("details", {},
          h("summary", { text: "Texts as written" }),
          h("p", {}, h("span", { class: "label", text: "Reference: " }), s.reference),
          h("p", {}, h("span", { class: "label", text: "Hypothesis: " }), s.hypothesis)),
      );
    }),
  );
}
