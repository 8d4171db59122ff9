// Try it: upload or drop a file, choose the options, see the text, its segments on a timeline
// (click to play from there), the service's warnings, and download SRT, WebVTT or JSON.

import { ApiError, getJson, request } from "./api.js";
import { signIn } from "./auth.js";
import { $, alertBox, clock, download, fill, h } from "./dom.js";
import { toSrt, toVtt } from "./subtitles.js";

let section, result, fileName, audioUrl;

export async function mount(root) {
  section = root;
  const form = $("#try-form", section);
  form.addEventListener("submit", (event) => {
    event.preventDefault();
    transcribe();
  });
  $("#try-format", section).addEventListener("change", renderOutput);
  for (const button of section.querySelectorAll("[data-download]")) {
    button.addEventListener("click", () => save(button.dataset.download));
  }
  dropZone($("#try-drop", section), $("#try-file", section));
  $("#try-audio", section).addEventListener("timeupdate", highlight);
  await loadModels();
}

async function loadModels() {
  const select = $("#try-model", section);
  const slot = $(".signin-slot", section);
  try {
    const models = await getJson("v1/models");
    fill(select, models.data.map((m) => h("option", { value: m.id, text: m.id })));
    if (!models.data.length) fill(select, h("option", { value: "", text: "(model loading)" }));
    $("#try-form", section).hidden = false;
    return true;
  } catch (error) {
    if (!(error instanceof ApiError) || error.status !== 401) {
      alertBox($("#try-error", section), error.message);
      return true;
    }
    $("#try-form", section).hidden = true;
    signIn(slot, "api", async () => {
      try {
        await getJson("v1/models");
      } catch (e) {
        if (e.status === 401) return false;
      }
      await loadModels();
      $("#try-file", section).focus();
      return true;
    });
    return false;
  }
}

function dropZone(zone, input) {
  zone.addEventListener("dragover", (event) => {
    event.preventDefault();
    zone.classList.add("dragging");
  });
  zone.addEventListener("dragleave", () => zone.classList.remove("dragging"));
  zone.addEventListener("drop", (event) => {
    event.preventDefault();
    zone.classList.remove("dragging");
    if (event.dataTransfer.files.length) input.files = event.dataTransfer.files;
  });
}

async function transcribe() {
  const file = $("#try-file", section).files[0];
  const error = $("#try-error", section);
  const status = $("#try-status", section);
  alertBox(error, "");
  if (!file) {
    alertBox(error, "Choose an audio file first (or drop one on the box).");
    $("#try-file", section).focus();
    return;
  }
  const form = new FormData();
  form.append("file", file);
  form.append("language", $("#try-language", section).value);
  form.append("task", $("#try-task", section).value);
  form.append("model", $("#try-model", section).value);
  // verbose_json holds everything the page shows: segments, warnings, timings; the text
  // formats are rendered from it here (subtitles.js), so one decode serves every download.
  form.append("response_format", "verbose_json");
  const button = $("#try-submit", section);
  button.disabled = true;
  const started = performance.now();
  const tick = () => {
    status.textContent = `Transcribing ${file.name} (${(file.size / 1e6).toFixed(1)} MB)… ${((performance.now() - started) / 1000).toFixed(0)} s`;
  };
  tick();
  const timer = setInterval(tick, 1000);
  try {
    result = await (await request("transcribe", { method: "POST", body: form })).json();
    fileName = file.name.replace(/\.[^.]*$/, "") || "transcript";
    if (audioUrl) URL.revokeObjectURL(audioUrl);
    audioUrl = URL.createObjectURL(file);
    $("#try-audio", section).src = audioUrl;
    status.textContent = `Done in ${((performance.now() - started) / 1000).toFixed(1)} s.`;
    render();
  } catch (e) {
    status.textContent = "";
    if (e.status === 401) loadModels();
    alertBox(error, e.message);
  } finally {
    clearInterval(timer);
    button.disabled = false;
  }
}

function render() {
  const duration = Math.max(result.duration, 0.001);
  const play = (start) => () => {
    const audio = $("#try-audio", section);
    audio.currentTime = start;
    audio.play();
  };
  fill(
    $("#try-timeline", section),
    result.segments.map((s) => {
      const block = h("button", {
        type: "button",
        class: "block",
        "data-start": s.start,
        "data-end": s.end,
        "aria-label": `Play from ${clock(s.start)}: ${s.text.trim()}`,
        title: s.text.trim(),
        onclick: play(s.start),
      });
      block.style.left = `${(100 * s.start) / duration}%`;
      block.style.width = `${Math.max((100 * (s.end - s.start)) / duration, 0.5)}%`;
      return block;
    }),
  );
  fill(
    $("#try-segments", section),
    result.segments.map((s) =>
      h(
        "li",
        { "data-start": s.start, "data-end": s.end },
        h("button", { type: "button", class: "time", onclick: play(s.start), "aria-label": `Play from ${clock(s.start)}` },
          `${clock(s.start)} – ${clock(s.end)}`),
        h("span", { class: "segment-text", text: s.text.trim() }),
      ),
    ),
  );
  fill($("#try-warnings", section), result.warnings.map((w) => h("li", { text: w })));
  const rtf = result.rtf === null ? "" : ` (RTF ${result.rtf.toFixed(2)})`;
  $("#try-meta", section).textContent =
    `${result.language} (p ${result.language_probability.toFixed(2)}) · ${result.duration.toFixed(1)} s of audio · ` +
    `${result.processing_seconds.toFixed(2)} s to transcribe${rtf} · ${result.backend} ${result.model}`;
  renderOutput();
  $("#try-result", section).hidden = false;
}

function rendered(format) {
  if (format === "srt") return toSrt(result.segments);
  if (format === "vtt") return toVtt(result.segments);
  if (format === "json") return JSON.stringify(result, null, 2);
  return result.text;
}

function renderOutput() {
  if (result) $("#try-output", section).textContent = rendered($("#try-format", section).value);
}

const TYPES = { srt: "application/x-subrip", vtt: "text/vtt", json: "application/json" };

function save(format) {
  if (result) download(`${fileName}.${format}`, rendered(format) + (format === "json" ? "\n" : ""), TYPES[format]);
}

function highlight() {
  const now = $("#try-audio", section).currentTime;
  for (const el of section.querySelectorAll("#try-segments li, #try-timeline .block")) {
    el.classList.toggle("current", now >= Number(el.dataset.start) && now < Number(el.dataset.end));
  }
}
