"""How many live streams one host sustains, and how soon text comes back.

    python -m bench.streams [--models embedded:base,embedded:base+embedded:tiny.en] [--levels 1,2,3,4,6,8]
                            [--device cpu|cuda]

A model `A+B` serves A with B as its draft model for partials (ASR_STREAM_PARTIAL_MODEL, both
preloaded).

Each stream is a Realtime WebSocket transcription session (server VAD, 500 ms silence) that sends
espeak-ng speech (six sentences, each followed by a 1.5 s pause) as 24 kHz PCM16 in 100 ms frames
paced in real time, the streams staggered over one turn. Per level of concurrency, measured by the
clients:
- finalisation: from the moment the last frame holding a turn's speech was sent to its
  `...transcription.completed` event (what the server's asr_stream_finalisation_seconds measures,
  including the VAD's silence window); the SLO is p95 under 2 s;
- first partial: from the first frame of a turn's speech to its first delta;
- partials before the final: of the turns with at least 2 s of speech, how many got a delta before
  their completed event;
- revisions per turn: turns whose deltas (sent before the final) are not the first words of the
  final transcript, as asr_stream_partial_revisions_total counts them, over turns completed;
- turns lost: turns that never completed, or failed.
A level passes when every turn completed and finalisation p95 < 2 s; capacity is the largest level
that passes (levels stop after the first failure). Then, for SSE, one ~100 s file with
`stream=true`: time to the first `transcript.text.delta` against the whole answer. Writes
bench/results/streams.{json,md}.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import numpy as np
from websockets.asyncio.client import connect

from bench import inputs
from bench.common import RESULTS, markdown_table, write_report
from bench.run_all import server

RATE = 24_000
FRAME = RATE // 10  # samples per 100 ms frame
PAUSE_SECONDS = 1.5
SLO_SECONDS = 2.0
SENTENCES = [*inputs.SENTENCES, *inputs.STORY[:3]]


def talk(folder: Path) -> tuple[bytes, list[tuple[float, float]]]:
    """The six sentences with pauses as 24 kHz PCM16, and each sentence's (start, end) in seconds."""
    folder.mkdir(parents=True, exist_ok=True)
    pieces, spans, at = [], [], 0.5
    pieces.append(np.zeros(int(0.5 * RATE), dtype=np.int16))
    for i, text in enumerate(SENTENCES):
        wav = folder / f"turn{i}.raw"
        speech = folder / f"turn{i}.wav"
        subprocess.run(["espeak-ng", "-v", "en-us", "-s", "140", "-w", str(speech), text], check=True)
        subprocess.run(
            ["sox", str(speech), "-r", str(RATE), "-b", "16", "-e", "signed", "-t", "raw", str(wav)], check=True
        )
        samples = np.frombuffer(wav.read_bytes(), dtype=np.int16)
        spans.append((at, at + len(samples) / RATE))
        pieces += [samples, np.zeros(int(PAUSE_SECONDS * RATE), dtype=np.int16)]
        at += len(samples) / RATE + PAUSE_SECONDS
    return np.concatenate(pieces).tobytes(), spans


async def one_stream(url: str, audio: bytes, delay: float, deadline: float) -> dict[str, Any]:
    """One live session: events with their arrival times, and when the stream started sending."""
    await asyncio.sleep(delay)
    events: list[tuple[float, dict[str, Any]]] = []
    session = {
        "type": "transcription",
        "audio": {
            "input": {
                "format": {"type": "audio/pcm", "rate": RATE},
                "transcription": {"language": "en"},
                "turn_detection": {"type": "server_vad", "silence_duration_ms": 500},
            }
        },
    }
    async with connect(url.replace("http", "ws") + "/v1/realtime?intent=transcription", max_size=2**24) as ws:
        await ws.send(json.dumps({"type": "session.update", "session": session}))
        started = time.monotonic()

        async def send() -> None:
            for k, i in enumerate(range(0, len(audio), FRAME * 2)):
                await asyncio.sleep(max(0.0, started + k * 0.1 - time.monotonic()))
                chunk = base64.b64encode(audio[i : i + FRAME * 2]).decode()
                await ws.send(json.dumps({"type": "input_audio_buffer.append", "audio": chunk}))

        sender = asyncio.create_task(send())
        turns = len(SENTENCES)
        try:
            while (
                sum(e["type"].endswith(("transcription.completed", "transcription.failed")) for _, e in events) < turns
            ):
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    break
                try:
                    raw = await asyncio.wait_for(ws.recv(), remaining)
                except TimeoutError:
                    break
                events.append((time.monotonic() - started, json.loads(raw)))
        finally:
            sender.cancel()
    return {"events": events}


def _turn_figures(events: list[tuple[float, dict[str, Any]]], spans: list[tuple[float, float]]) -> dict[str, Any]:
    """Per turn, matched in order: finalisation and first-partial latency (client clock)."""
    order = [e["item_id"] for _, e in events if e["type"] == "input_audio_buffer.committed"]
    completed = {e["item_id"]: t for t, e in events if e["type"].endswith("transcription.completed")}
    first_delta: dict[str, float] = {}
    for t, e in events:
        if e["type"].endswith("transcription.delta"):
            first_delta.setdefault(e["item_id"], t)
    final, first, texts = [], [], []
    long_turns = long_with_partial = 0
    for item, (start, end) in zip(order, spans, strict=False):
        if item in completed:
            # The frame holding the last speech sample left at ceil(end / 0.1) * 0.1.
            final.append(completed[item] - np.ceil(end * 10) / 10)
        early = item in first_delta and first_delta[item] < completed.get(item, float("inf"))
        if early:
            first.append(first_delta[item] - np.floor(start * 10) / 10)
        if end - start >= 2.0:
            long_turns += 1
            long_with_partial += early
    texts = [e["transcript"] for _, e in events if e["type"].endswith("transcription.completed")]
    errors = [e for _, e in events if e["type"] in ("error", "conversation.item.input_audio_transcription.failed")]
    return {
        "final": final,
        "first": first,
        "texts": texts,
        "errors": len(errors),
        "completed": len(completed),
        "revised": _revised(events),
        "long_turns": long_turns,
        "long_with_partial": long_with_partial,
    }


def _words(text: str) -> list[str]:
    return "".join(ch if ch.isalnum() or ch in "' " else " " for ch in text.lower()).split()


def _revised(events: list[tuple[float, dict[str, Any]]]) -> int:
    """Completed turns whose deltas sent before the final are not the final's first words."""
    early: dict[str, str] = {}
    revised = 0
    for _, e in events:
        if e["type"].endswith("transcription.delta"):
            early[e["item_id"]] = early.get(e["item_id"], "") + e["delta"]
        elif e["type"].endswith("transcription.completed"):
            # The final's own rest came as the last delta just before: only a revision sends none,
            # so the joined deltas spell the final unless it was revised.
            sent, final = _words(early.get(e["item_id"], "")), _words(e["transcript"])
            revised += bool(sent) and sent != final
    return revised


def _p95(values: list[float]) -> float | None:
    return float(np.percentile(values, 95)) if values else None


async def level(url: str, audio: bytes, spans: list[tuple[float, float]], streams: int) -> dict[str, Any]:
    period = spans[1][0] - spans[0][0]  # one turn: stagger the streams over it
    duration = len(audio) / 2 / RATE
    deadline = time.monotonic() + duration + period + 60
    results = await asyncio.gather(*(one_stream(url, audio, i * period / streams, deadline) for i in range(streams)))
    figures = [_turn_figures(r["events"], spans) for r in results]
    final = [x for f in figures for x in f["final"]]
    first = [x for f in figures for x in f["first"]]
    expected = streams * len(SENTENCES)
    completed = sum(f["completed"] for f in figures)
    from service.quality.scoring import score

    reference = " ".join(SENTENCES)
    wer = statistics.mean(score(reference, " ".join(f["texts"]), "en", "basic").rate for f in figures)
    row = {
        "streams": streams,
        "turns": expected,
        "completed": completed,
        "errors": sum(f["errors"] for f in figures),
        "final_p50_s": statistics.median(final) if final else None,
        "final_p95_s": _p95(final),
        "first_partial_p50_s": statistics.median(first) if first else None,
        "first_partial_p95_s": _p95(first),
        "turns_with_partials": len(first),
        "long_turns_with_partial": f"{sum(f['long_with_partial'] for f in figures)}/"
        f"{sum(f['long_turns'] for f in figures)}",
        "revisions_per_turn": sum(f["revised"] for f in figures) / completed if completed else None,
        "wer": wer,
    }
    p95 = row["final_p95_s"]
    row["passes"] = completed == expected and row["errors"] == 0 and p95 is not None and p95 < SLO_SECONDS
    return row


def sse(url: str, path: Path) -> dict[str, float]:
    """One upload with stream=true: first delta and the end; and the same file without streaming."""
    payload = path.read_bytes()
    started = time.monotonic()
    first = None
    with httpx.stream(
        "POST",
        url + "/v1/audio/transcriptions",
        files={"file": (path.name, payload)},
        data={"model": "whisper-1", "stream": "true", "language": "en"},
        timeout=600,
    ) as r:
        for line in r.iter_lines():
            if first is None and "transcript.text.delta" in line:
                first = time.monotonic() - started
    done = time.monotonic() - started
    started = time.monotonic()
    plain = httpx.post(
        url + "/v1/audio/transcriptions",
        files={"file": (path.name, payload)},
        data={"model": "whisper-1", "language": "en"},
        timeout=600,
    )
    plain.raise_for_status()
    return {"first_delta_s": first or done, "done_s": done, "without_stream_s": time.monotonic() - started}


def _wait_loaded(url: str, timeout: float = 300.0) -> None:
    """Until every model entry is loaded (readiness waits for the default one)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        states = {m["state"] for m in httpx.get(url + "/v1/models", timeout=10).json()["data"]}
        if states == {"ready"}:
            return
        time.sleep(0.5)
    raise RuntimeError(f"models not loaded after {timeout:.0f} s")


def run_model(
    model: str, device: str, levels: list[int], audio: bytes, spans: list[tuple[float, float]]
) -> dict[str, Any]:
    served, _, draft = model.partition("+")
    env = {
        "ASR_MODEL": served,
        "ASR_DEVICE": device,
        "ASR_MAX_STREAMS": str(max(levels)),
        "ASR_QUALITY_SAMPLE_RATE": "0",
    }
    if draft:
        entries = [
            {"id": "served", "model": served, "aliases": ["whisper-1"], "preload": True},
            {"id": "draft", "model": draft, "preload": True},
        ]
        env |= {"ASR_MODELS": json.dumps(entries), "ASR_STREAM_PARTIAL_MODEL": "draft"}
    rows = []
    with server(env) as (_, url, _started):
        _wait_loaded(url)
        sse_row = sse(url, inputs.story(RESULTS / "tmp"))
        for streams in levels:
            row = {"model": model, **asyncio.run(level(url, audio, spans, streams))}
            print(row, file=sys.stderr, flush=True)
            rows.append(row)
            if not row["passes"]:
                break
    capacity = max((r["streams"] for r in rows if r["passes"]), default=0)
    return {"model": model, "device": device, "rows": rows, "capacity": capacity, "sse": sse_row}


def _at_levels(run: dict[str, Any]) -> dict[str, Any]:
    """The partial figures at one stream and at the sustained level."""
    by_level = {r["streams"]: r for r in run["rows"]}
    one, top = by_level.get(1, {}), by_level.get(run["capacity"], {})
    return {
        "first_partial_p50_1_s": one.get("first_partial_p50_s"),
        "first_partial_p50_sustained_s": top.get("first_partial_p50_s"),
        "long_turns_with_partial_sustained": top.get("long_turns_with_partial"),
        "revisions_per_turn_sustained": top.get("revisions_per_turn"),
        "wer_sustained": top.get("wer"),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", default="embedded:base,embedded:base+embedded:tiny.en")
    parser.add_argument("--levels", default="1,2,3,4,6,8")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--name", default="streams", help="report name under bench/results/")
    args = parser.parse_args()
    audio, spans = talk(RESULTS / "tmp" / "talk")
    levels = [int(x) for x in args.levels.split(",")]
    runs = [run_model(m, args.device, levels, audio, spans) for m in args.models.split(",")]
    columns = [
        "model", "streams", "completed", "turns", "errors", "final_p50_s", "final_p95_s",
        "first_partial_p50_s", "first_partial_p95_s", "turns_with_partials", "long_turns_with_partial",
        "revisions_per_turn", "wer", "passes",
    ]  # fmt: skip
    rows = [row for run in runs for row in run["rows"]]
    summary = [
        {
            "model": run["model"],
            "streams_sustained": run["capacity"],
            **_at_levels(run),
            "sse_first_delta_s": run["sse"]["first_delta_s"],
            "sse_done_s": run["sse"]["done_s"],
            "first_delta_share": run["sse"]["first_delta_s"] / run["sse"]["done_s"],
            "without_stream_s": run["sse"]["without_stream_s"],
        }
        for run in runs
    ]
    md = (
        "# Live streams and SSE\n"
        f"Device {args.device}. Each stream: {len(SENTENCES)} espeak-ng sentences with {PAUSE_SECONDS} s pauses, "
        f"{len(audio) / 2 / RATE:.0f} s of 24 kHz PCM16 sent in real time (100 ms frames), streams staggered over "
        "one turn; server VAD with 500 ms of silence. `final`: last speech frame sent -> completed event "
        f"(SLO p95 < {SLO_SECONDS:g} s, VAD silence window included); `first_partial`: first speech frame sent -> "
        "first delta; `long_turns_with_partial`: turns of >= 2 s of speech with a delta before their final; "
        "`revisions_per_turn`: turns whose early deltas the final took back, over turns completed; `wer`: the "
        "joined turns of each stream against the text, mean over streams. `A+B`: A serves, B drafts the "
        "partials (ASR_STREAM_PARTIAL_MODEL).\n\n"
        "## Capacity and SSE\n"
        "`streams_sustained`: most concurrent streams with every turn completed and finalisation p95 under "
        "the SLO. SSE: the ~100 s story file with `stream=true`, first `transcript.text.delta` vs "
        "`transcript.text.done`, and the same file without streaming.\n\n"
        + markdown_table(summary, list(summary[0]))
        + "\n## By level\n"
        + markdown_table(rows, columns)
    )
    print(write_report(args.name, {"runs": runs}, md).read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
