// Review: the pending samples, most useful first (GET /v1/quality/queue says why), one at a
// time: its audio, what the model heard pre-filled in an editor, then submit the reference,
// skip it or delete it, and on to the next. Everything works from the keyboard, in the editor:
//   Esc play/pause · Alt+J back 5 s · Alt+S slower · Ctrl+Enter submit · Alt+N skip · Alt+X twice delete

import { ApiError, getJson, request } from "./api.js";
import { signIn } from "./auth.js";
import { $, clock, fill, h } from "./dom.js";

const SPEEDS = [1, 0.75, 0.5];
const DISARM_MS = 5000;

let section;
let queue = []; // the server's order, skipped samples moved to the end
let pending = 0;
let current = null;
let audioUrl = null;
let speed = 0;
let deleteArmed = 0; // time of the first Alt+X, 0 when not armed
const skipped = new Set();

export async function mount(root) {
  section = root;
  $("#review-play", section).addEventListener("click", playPause);
  $("#review-back", section).addEventListener("click", back);
  $("#review-slower", section).addEventListener("click", slower);
  $("#review-submit", section).addEventListener("click", submit);
  $("#review-skip", section).addEventListener("click", skip);
  $("#review-delete", section).addEventListener("click", remove);
  const audio = $("#review-audio", section);
  audio.addEventListener("play", () => ($("#review-play", section).firstChild.textContent = "Pause "));
  audio.addEventListener("pause", () => ($("#review-play", section).firstChild.textContent = "Play "));
  document.addEventListener("keydown", keys);
  await refresh();
}

export async function shown() {
  if (!$("#review-body", section).hidden || !$("#review-empty", section).hidden) await refresh();
}

function say(text) {
  $("#review-status", section).textContent = text;
}

async function refresh() {
  let answer;
  try {
    answer = await getJson("v1/quality/queue?limit=100", { kind: "admin" });
  } catch (error) {
    return refused(error);
  }
  pending = answer.pending;
  queue = [...answer.items.filter((i) => !skipped.has(i.id)), ...answer.items.filter((i) => skipped.has(i.id))];
  renderQueue();
  $("#review-empty", section).hidden = queue.length > 0;
  $("#review-body", section).hidden = queue.length === 0;
  if (queue.length) await open(queue[0]);
  else current = null;
}

function refused(error) {
  $("#review-body", section).hidden = true;
  if (error instanceof ApiError && error.status === 401) {
    signIn($(".signin-slot", section), "admin", async () => {
      try {
        await getJson("v1/quality/queue?limit=1", { kind: "admin" });
      } catch (e) {
        if (e.status === 401) return false;
      }
      await refresh();
      return true;
    });
    return;
  }
  const empty = $("#review-empty", section);
  empty.hidden = false;
  empty.textContent = error.status === 403 ? `${error.message}.` : `Could not load the queue: ${error.message}`;
}

function renderQueue() {
  $("#review-count", section).textContent = `(${pending} waiting)`;
  fill(
    $("#review-queue", section),
    queue.map((item) =>
      h(
        "li",
        { "data-id": item.id },
        h(
          "button",
          { type: "button", class: "queue-item", onclick: () => open(item), "aria-current": item === current ? "true" : null },
          h("span", { class: "queue-text", text: item.hypothesis || "(no words heard)" }),
          h("span", { class: "queue-meta", text: `${item.duration.toFixed(1)} s · ${item.language} · ${item.reasons.length ? item.reasons[0] : "no special reason"}` }),
        ),
      ),
    ),
  );
}

async function open(item) {
  current = item;
  deleteArmed = 0;
  for (const button of section.querySelectorAll(".queue-item")) {
    if (button.parentElement.dataset.id === item.id) button.setAttribute("aria-current", "true");
    else button.removeAttribute("aria-current");
  }
  const position = queue.indexOf(item) + 1;
  $("#review-sample-title", section).textContent =
    `Sample ${position} of ${queue.length} · ${clock(item.duration)} · ${item.language}, ${item.stratum}`;
  fill($("#review-why", section), item.reasons.map((r) => h("li", { text: r })));
  $("#review-hypothesis", section).textContent = item.hypothesis || "(no words heard)";
  const editor = $("#review-editor", section);
  editor.value = item.hypothesis;
  editor.focus();
  editor.setSelectionRange(editor.value.length, editor.value.length);
  const audio = $("#review-audio", section);
  try {
    const blob = await (await request(`v1/samples/${item.id}/audio`, { kind: "admin" })).blob();
    if (current !== item) return;
    if (audioUrl) URL.revokeObjectURL(audioUrl);
    audioUrl = URL.createObjectURL(blob);
    audio.src = audioUrl;
    audio.playbackRate = SPEEDS[speed];
    // After a key or click on this page the browser lets it play: the next sample starts by itself.
    if (navigator.userActivation && navigator.userActivation.hasBeenActive) audio.play().catch(() => {});
    section.dataset.loaded = item.id; // for tests and scripts: this sample is ready to review
  } catch (error) {
    say(`Its audio could not be loaded: ${error.message}`);
  }
}

function playPause() {
  const audio = $("#review-audio", section);
  if (audio.paused) audio.play().catch(() => {});
  else audio.pause();
}

function back() {
  const audio = $("#review-audio", section);
  audio.currentTime = Math.max(0, audio.currentTime - 5);
}

function slower() {
  speed = (speed + 1) % SPEEDS.length;
  $("#review-audio", section).playbackRate = SPEEDS[speed];
  $("#review-speed", section).textContent = `${SPEEDS[speed]}×`;
  say(`Playback at ${SPEEDS[speed]}× speed.`);
}

async function submit() {
  if (!current) return;
  const text = $("#review-editor", section).value.trim();
  if (!text) {
    say("Type what was said first (or skip it, or delete it).");
    return;
  }
  const item = current;
  try {
    await request(`v1/samples/${item.id}/reference`, { kind: "admin", method: "PUT", json: { text } });
  } catch (error) {
    say(`Not saved: ${error.message}`);
    return;
  }
  skipped.delete(item.id);
  say("Saved: the scoring job scores it at its next run.");
  await refresh();
}

async function skip() {
  if (!current) return;
  skipped.add(current.id);
  say("Skipped: it stays in the queue, after the others.");
  await refresh();
}

async function remove() {
  if (!current) return;
  const now = performance.now();
  if (!deleteArmed || now - deleteArmed > DISARM_MS) {
    deleteArmed = now;
    say("Delete this sample's audio and text? Press Delete (Alt+X) again to confirm.");
    return;
  }
  deleteArmed = 0;
  try {
    await request(`v1/samples/${current.id}`, { kind: "admin", method: "DELETE" });
  } catch (error) {
    say(`Not deleted: ${error.message}`);
    return;
  }
  skipped.delete(current.id);
  say("Deleted.");
  await refresh();
}

function keys(event) {
  if (section.hidden || $("#review-body", section).hidden) return;
  const alt = event.altKey && !event.ctrlKey && !event.metaKey; // AltGr (Ctrl+Alt) still types characters
  let action = null;
  if (event.key === "Escape") action = playPause;
  else if ((event.ctrlKey || event.metaKey) && event.key === "Enter") action = submit;
  else if (alt && event.code === "KeyJ") action = back;
  else if (alt && event.code === "KeyS") action = slower;
  else if (alt && event.code === "KeyN") action = skip;
  else if (alt && event.code === "KeyX") action = remove;
  if (!action) return;
  event.preventDefault();
  action();
}
