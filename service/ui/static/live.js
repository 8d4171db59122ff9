// Live: the microphone through an AudioWorklet (pcm-worklet.js) as 24 kHz PCM16 to the Realtime
// WebSocket (/v1/realtime?intent=transcription, OpenAI's protocol). Partial text (deltas) is shown
// apart from a turn's final text (completed). Denied microphones, a full stream limit and lost
// connections each get a message; a lost connection is retried, then offered as a button.

import { ApiError, request, url } from "./api.js";
import { signIn, token } from "./auth.js";
import { $, h } from "./dom.js";

const RATE = 24_000;
const RETRIES = [1000, 2000, 4000]; // ms before each automatic reconnect
const TRY_AGAIN_LATER = 1013;
const POLICY = 1008;

let section;
let mic = null; // { stream, context, node }
let socket = null;
let stopping = false;
let attempt = 0;
let refusal = null; // the error event that came before a close, if any
const turns = new Map(); // item_id -> { li, final, partial }

export function mount(root) {
  section = root;
  $("#live-start", section).addEventListener("click", start);
  $("#live-stop", section).addEventListener("click", stop);
  $("#live-retry", section).addEventListener("click", () => {
    attempt = 0;
    connect();
  });
}

function status(text) {
  $("#live-status", section).textContent = text;
}

function problem(text, { retry = false } = {}) {
  const box = $("#live-error", section);
  box.hidden = !text;
  $("#live-error-text", section).textContent = text || "";
  $("#live-retry", section).hidden = !retry;
}

async function start() {
  problem("");
  $("#live-start", section).disabled = true;
  try {
    mic = await openMicrophone();
  } catch (error) {
    $("#live-start", section).disabled = false;
    const denied = error.name === "NotAllowedError" || error.name === "SecurityError";
    problem(
      denied
        ? "Microphone access was denied. Allow the microphone for this site in the browser's site settings, then press Start again."
        : error.name === "NotFoundError"
          ? "No microphone was found. Connect one, then press Start again."
          : `The microphone could not be opened: ${error.message}`,
    );
    status("Not listening.");
    return;
  }
  $("#live-stop", section).disabled = false;
  stopping = false;
  attempt = 0;
  connect();
}

async function openMicrophone() {
  if (!navigator.mediaDevices || !navigator.mediaDevices.getUserMedia) {
    const error = new Error("this page is not a secure context (use https, or localhost)");
    error.name = "SecurityError";
    throw error;
  }
  const stream = await navigator.mediaDevices.getUserMedia({
    audio: { channelCount: 1, echoCancellation: true, noiseSuppression: true },
  });
  const context = new AudioContext({ sampleRate: RATE });
  await context.audioWorklet.addModule(new URL("pcm-worklet.js", import.meta.url));
  const source = context.createMediaStreamSource(stream);
  const node = new AudioWorkletNode(context, "pcm16-capture");
  const mute = context.createGain();
  mute.gain.value = 0; // pulled by the graph, never heard
  source.connect(node).connect(mute).connect(context.destination);
  node.port.onmessage = ({ data }) => {
    // -60 dBFS .. 0 dBFS on the meter
    const db = 20 * Math.log10(Math.max(data.rms, 1e-6));
    $("#live-level", section).value = Math.max(0, 1 + db / 60);
    if (socket && socket.readyState === WebSocket.OPEN) {
      socket.send(JSON.stringify({ type: "input_audio_buffer.append", audio: base64(data.pcm) }));
    }
  };
  return { stream, context, node };
}

function base64(buffer) {
  const bytes = new Uint8Array(buffer);
  let binary = "";
  for (let i = 0; i < bytes.length; i += 0x8000) binary += String.fromCharCode.apply(null, bytes.subarray(i, i + 0x8000));
  return btoa(binary);
}

async function protocols() {
  // Browsers cannot set headers on a WebSocket: with a key, ask for a short-lived client
  // secret (OpenAI's POST /v1/realtime/client_secrets) and offer it as a subprotocol.
  if (!token("api")) return [];
  const answer = await (
    await request("v1/realtime/client_secrets", {
      method: "POST",
      json: { expires_after: { anchor: "created_at", seconds: 60 }, session: session() },
    })
  ).json();
  return ["realtime", `openai-insecure-api-key.${answer.value}`];
}

function session() {
  const language = $("#live-language", section).value || null;
  return {
    type: "transcription",
    audio: {
      input: {
        format: { type: "audio/pcm", rate: RATE },
        transcription: { model: "whisper-1", language },
        turn_detection: { type: "server_vad", silence_duration_ms: 500 },
      },
    },
  };
}

async function connect() {
  problem("");
  refusal = null;
  status(attempt ? `Reconnecting (try ${attempt} of ${RETRIES.length})…` : "Connecting…");
  let offered;
  try {
    offered = await protocols();
  } catch (error) {
    return connectionRefused(error);
  }
  const address = url("v1/realtime?intent=transcription");
  address.protocol = address.protocol === "https:" ? "wss:" : "ws:";
  const ws = new WebSocket(address, offered);
  socket = ws;
  ws.onopen = () => {
    attempt = 0;
    ws.send(JSON.stringify({ type: "session.update", session: session() }));
    status("Listening: speak now.");
  };
  ws.onmessage = (message) => handle(JSON.parse(message.data));
  ws.onclose = (event) => {
    if (socket === ws) socket = null;
    closed(event);
  };
}

function connectionRefused(error) {
  if (error instanceof ApiError && error.status === 401) {
    signIn($(".signin-slot", section), "api", async () => {
      connect();
      return true;
    }, { refused: Boolean(token("api")) });
    status("Sign in to stream.");
    return;
  }
  if (error instanceof ApiError && error.status === 404) {
    problem("This service cannot give the browser a token for live audio (no POST /v1/realtime/client_secrets): " +
      "live audio from the console needs a newer service, or one without ASR_API_KEY.");
  } else {
    problem(`Could not connect: ${error.message}`, { retry: true });
  }
  status("Not listening.");
}

function closed(event) {
  if (stopping) return;
  const code = refusal && refusal.code;
  if (code === "too_many_streams" || event.code === TRY_AGAIN_LATER) {
    problem(
      "All live streams of this service are taken (its stream limit). Try again in a moment.",
      { retry: true },
    );
    status("Not listening: the service is full.");
    return;
  }
  if (code === "unauthorized") {
    connectionRefused(new ApiError(401, code, refusal.message));
    return;
  }
  if (event.code === POLICY) {
    problem(refusal ? refusal.message : `The service closed the stream (${event.reason || event.code}).`, { retry: true });
    status("Not listening.");
    return;
  }
  if (attempt < RETRIES.length) {
    const wait = RETRIES[attempt++];
    problem(`The connection was lost (${event.reason || `code ${event.code}`}). Reconnecting in ${wait / 1000} s; audio meanwhile is not transcribed.`);
    setTimeout(() => {
      if (!stopping && !socket) connect();
    }, wait);
    return;
  }
  problem("The connection was lost and could not be re-established.", { retry: true });
  status("Not listening.");
}

function turn(itemId) {
  let entry = turns.get(itemId);
  if (!entry) {
    const final = h("span", { class: "final" });
    const partial = h("span", { class: "partial" });
    const li = h("li", { class: "turn speaking", "data-item": itemId }, final, partial);
    $("#live-turns", section).append(li);
    entry = { li, final, partial };
    turns.set(itemId, entry);
  }
  return entry;
}

function handle(event) {
  switch (event.type) {
    case "input_audio_buffer.speech_started":
      turn(event.item_id);
      break;
    case "conversation.item.input_audio_transcription.delta":
      turn(event.item_id).partial.textContent += event.delta;
      break;
    case "conversation.item.input_audio_transcription.completed": {
      const entry = turn(event.item_id);
      entry.final.textContent = event.transcript.trim();
      entry.partial.textContent = "";
      entry.li.classList.replace("speaking", "done");
      $("#live-announce", section).textContent = event.transcript;
      break;
    }
    case "conversation.item.input_audio_transcription.failed": {
      const entry = turn(event.item_id);
      entry.li.classList.replace("speaking", "failed");
      entry.final.textContent = `(this turn could not be transcribed: ${event.error ? event.error.message : "unknown error"})`;
      break;
    }
    case "error":
      refusal = event.error;
      if (!["too_many_streams", "unauthorized", "shutting_down"].includes(event.error.code)) problem(event.error.message);
      break;
    default:
      break;
  }
}

function stop() {
  stopping = true;
  if (socket) socket.close(1000, "stopped");
  socket = null;
  if (mic) {
    mic.stream.getTracks().forEach((t) => t.stop());
    mic.context.close();
    mic = null;
  }
  $("#live-level", section).value = 0;
  $("#live-start", section).disabled = false;
  $("#live-stop", section).disabled = true;
  status("Not listening.");
}
