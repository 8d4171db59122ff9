"""Our live streams side by side with WhisperLive's, on the same audio sent in real time.

    python -m bench.whisperlive [--levels 1,3,5] [--wl-python /tmp/wl/venv/bin/python]

WhisperLive (PyPI `whisper-live` 0.10.0) runs from its own virtualenv (`--wl-python`) as
`TranscriptionServer().run(..., backend="faster_whisper", faster_whisper_custom_model_path=<our
embedded:base directory>)`, so both servers decode with the same weights (int8 on CPU for both).
It has no setting for threads or beam: it decodes every pass at faster-whisper's beam 5 and loads
one model per connection (its default), and OMP_NUM_THREADS=1 gives each of those one thread, as
each of our two workers has. Ours runs with its defaults (partials at beam 1, finals at beam 5).

Each stream sends the six sentences of bench.streams (its audio, 1.5 s pauses) in 100 ms frames
paced in real time, the streams staggered over one turn: to us as 24 kHz PCM16 on the Realtime
WebSocket (bench.streams's client, server VAD with 500 ms of silence), to WhisperLive as the same
audio resampled by sox to 16 kHz float32 on its WebSocket protocol (a JSON options message, then
raw frames; it answers `segments`, each with a `completed` flag, and decodes with its Silero VAD
filter on). WhisperLive has no end of turn: a segment is completed when Whisper starts the next one
or repeats the same text enough times, so its client keeps sending silence, as a live microphone
would, for up to TAIL_SECONDS after the audio. Per server and level, measured by the clients:
- first text: first speech frame of a sentence -> the first text shown for it (our first delta or
  its completed event, whichever came first; WhisperLive's first segment reaching into it);
- finalisation: last speech frame of a sentence -> its completed text (our completed event;
  WhisperLive's last completed segment overlapping the sentence);
- WER of each stream's completed text joined, against the sentences (our scorer), mean over streams;
- CPU seconds per audio second: utime+stime of the server's process group over the level, over the
  audio seconds sent;
- held: the level passes when every sentence was finalised and finalisation p95 < 2 s.
Writes bench/results/whisperlive.{json,md}.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
from websockets.asyncio.client import connect

from bench import streams
from bench.common import RESULTS, markdown_table, write_report
from bench.run_all import server
from service.config import DEFAULT_CACHE_DIR
from service.embedded_model import embedded_model_path
from service.quality.scoring import score

MODEL = "embedded:base"
WL_RATE = 16_000
WL_FRAME = WL_RATE // 10  # samples per 100 ms frame, as our client sends
TAIL_SECONDS = 20.0
WL_LAUNCH = (
    "import sys\n"
    "from whisper_live.server import TranscriptionServer\n"
    "TranscriptionServer().run('127.0.0.1', int(sys.argv[1]), backend='faster_whisper',\n"
    "    faster_whisper_custom_model_path=sys.argv[2], max_clients=int(sys.argv[3]), max_connection_time=600)\n"
)

Span = tuple[float, float]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextlib.contextmanager
def whisperlive(python: str, model_dir: Path, max_clients: int) -> Iterator[tuple[subprocess.Popen[bytes], str]]:
    """WhisperLive's server on a free port; yields (process, ws url) once it accepts connections."""
    port = _free_port()
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    process = subprocess.Popen(
        [python, "-c", WL_LAUNCH, str(port), str(model_dir), str(max_clients)],
        env=env,
        start_new_session=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 120
        while True:
            if process.poll() is not None:
                raise RuntimeError("WhisperLive exited during startup")
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=1):
                break
            if time.monotonic() > deadline:
                raise RuntimeError("WhisperLive did not listen within 120 s")
            time.sleep(0.1)
        yield process, f"ws://127.0.0.1:{port}"
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGTERM)
        process.wait(timeout=60)


def cpu_seconds(pgid: int) -> float:
    """utime+stime of every live process in the group (the server and any children it started)."""
    tick = os.sysconf("SC_CLK_TCK")
    total = 0
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError):
            fields = stat.read_text().rsplit(")", 1)[1].split()
            # After the command: state ppid pgrp ... utime (12th) stime (13th).
            if int(fields[2]) == pgid:
                total += int(fields[11]) + int(fields[12])
    return total / tick


def host_busy_seconds() -> float:
    """CPU seconds the whole host spent busy (every core), from /proc/stat."""
    fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = fields[3] + fields[4]  # idle, iowait
    return (sum(fields[:8]) - idle) / os.sysconf("SC_CLK_TCK")


def to_whisperlive(audio: bytes) -> bytes:
    """bench.streams's 24 kHz PCM16 as the 16 kHz float32 WhisperLive takes."""
    return subprocess.run(
        ["sox", "-t", "raw", "-r", str(streams.RATE), "-b", "16", "-e", "signed", "-c", "1", "-",
         "-t", "raw", "-r", str(WL_RATE), "-b", "32", "-e", "floating-point", "-"],
        input=audio, capture_output=True, check=True,
    ).stdout  # fmt: skip


async def wl_stream(url: str, audio: bytes, spans: list[Span], delay: float, deadline: float) -> dict[str, Any]:
    """One WhisperLive session: its segment messages with arrival times (from the first frame sent)."""
    await asyncio.sleep(delay)
    messages: list[tuple[float, list[dict[str, Any]]]] = []
    frame_bytes = WL_FRAME * 4
    silence = np.zeros(WL_FRAME, dtype=np.float32).tobytes()
    audio_seconds = len(audio) / 4 / WL_RATE
    async with connect(url, max_size=2**24) as ws:
        options = {"uid": f"bench-{delay:.3f}", "language": "en", "task": "transcribe", "model": "base",
                   "use_vad": True, "send_last_n_segments": 10}  # fmt: skip
        await ws.send(json.dumps(options))
        while (answer := json.loads(await ws.recv())).get("message") != "SERVER_READY":
            if answer.get("status") in ("WAIT", "ERROR"):
                raise RuntimeError(f"WhisperLive refused the stream: {answer}")
        started = time.monotonic()
        stop = min(deadline, started + audio_seconds + TAIL_SECONDS)
        done = asyncio.Event()

        async def send() -> None:
            k = 0
            while not done.is_set() and time.monotonic() < stop:
                await asyncio.sleep(max(0.0, started + k * 0.1 - time.monotonic()))
                chunk = audio[k * frame_bytes : (k + 1) * frame_bytes]
                await ws.send(chunk or silence)  # a live microphone keeps sending after the talk
                k += 1

        sender = asyncio.create_task(send())
        try:
            while time.monotonic() < stop:
                try:
                    raw = await asyncio.wait_for(ws.recv(), stop - time.monotonic())
                except TimeoutError:
                    break
                segments = json.loads(raw).get("segments")
                if segments:
                    messages.append((time.monotonic() - started, segments))
                    if _last_done(messages, spans[-1]):
                        break
        finally:
            done.set()
            sender.cancel()
    return {"messages": messages}


def _last_done(messages: list[tuple[float, list[dict[str, Any]]]], last: Span) -> bool:
    """A completed segment reaches the end of the last sentence (Whisper's ends run a little early)."""
    return any(_overlaps(s, last) and float(s["end"]) >= last[1] - 0.5 for _, s in _completed(messages).values())


def _overlaps(segment: dict[str, Any], span: Span, reach: float = 0.0) -> bool:
    """The segment reaches at least `reach` seconds into the span."""
    start, end = float(segment["start"]), float(segment["end"])
    return min(end, span[1]) - max(start, span[0]) > reach


def _completed(messages: list[tuple[float, list[dict[str, Any]]]]) -> dict[str, tuple[float, dict[str, Any]]]:
    """Completed segments by start, with the time each was first sent completed (they are resent)."""
    seen: dict[str, tuple[float, dict[str, Any]]] = {}
    for t, segments in messages:
        for s in segments:
            if s.get("completed") and s["text"].strip():
                seen.setdefault(s["start"], (t, s))
    return seen


def _finalised(messages: list[tuple[float, list[dict[str, Any]]]], spans: list[Span]) -> list[float | None]:
    """Per sentence, when its last overlapping completed segment was sent; None if none was."""
    completed = list(_completed(messages).values())
    out: list[float | None] = []
    for span in spans:
        times = [t for t, s in completed if _overlaps(s, span)]
        out.append(max(times) if times else None)
    return out


def wl_figures(messages: list[tuple[float, list[dict[str, Any]]]], spans: list[Span]) -> dict[str, Any]:
    """First text, finalisation (client clock) and the joined completed text of one session."""
    final, first, done = [], [], []
    for i, ((start, end), at) in enumerate(zip(spans, _finalised(messages, spans), strict=True)):
        if at is not None:
            done.append(i)
            # The frame holding the last speech sample left at ceil(end / 0.1) * 0.1, as in bench.streams.
            final.append(at - np.ceil(end * 10) / 10)
        shown = [
            t for t, segments in messages for s in segments if s["text"].strip() and _overlaps(s, (start, end), 0.1)
        ]
        if shown:
            first.append(min(shown) - np.floor(start * 10) / 10)
    texts = [s["text"].strip() for _, s in sorted(_completed(messages).values(), key=lambda x: float(x[1]["start"]))]
    return {"final": final, "first": first, "texts": texts, "completed": len(final), "done": done}


def ours_figures(events: list[tuple[float, dict[str, Any]]], spans: list[Span]) -> dict[str, Any]:
    """bench.streams's figures, with first text = the first delta or the completed event."""
    figures = streams._turn_figures(events, spans)
    order = [e["item_id"] for _, e in events if e["type"] == "input_audio_buffer.committed"]
    shown: dict[str, float] = {}
    for t, e in events:
        if e["type"].endswith(("transcription.delta", "transcription.completed")):
            shown.setdefault(e["item_id"], t)
    completed = {e["item_id"] for _, e in events if e["type"].endswith("transcription.completed")}
    figures["done"] = [i for i, item in enumerate(order[: len(spans)]) if item in completed]
    figures["first"] = [
        shown[item] - np.floor(start * 10) / 10 for item, (start, _) in zip(order, spans, strict=False) if item in shown
    ]
    return figures


def _row(server_name: str, n: int, figures: list[dict[str, Any]], cpu: float, audio_seconds: float) -> dict[str, Any]:
    final = [x for f in figures for x in f["final"]]
    first = [x for f in figures for x in f["first"]]
    turns = n * len(streams.SENTENCES)
    completed = sum(f["completed"] for f in figures)
    reference = " ".join(streams.SENTENCES)
    p95 = streams._p95(final)
    return {
        "server": server_name,
        "streams": n,
        "finalised": f"{completed}/{turns}",
        "first_text_p50_s": statistics.median(first) if first else None,
        "first_text_p95_s": streams._p95(first),
        "final_p50_s": statistics.median(final) if final else None,
        "final_p95_s": p95,
        "wer": statistics.mean(score(reference, " ".join(f["texts"]), "en", "basic").rate for f in figures),
        # Accuracy apart from what never finished: the sentences each stream finalised, against their text.
        "wer_finalised": statistics.mean(
            score(" ".join(streams.SENTENCES[i] for i in f["done"]), " ".join(f["texts"]), "en", "basic").rate
            for f in figures
        ),
        "cpu_s_per_audio_s": cpu / (n * audio_seconds),
        "passes": completed == turns and p95 is not None and p95 < streams.SLO_SECONDS,
    }


async def _ours_level(url: str, audio: bytes, spans: list[Span], n: int) -> list[dict[str, Any]]:
    period = spans[1][0] - spans[0][0]
    deadline = time.monotonic() + len(audio) / 2 / streams.RATE + period + 30
    runs = await asyncio.gather(*(streams.one_stream(url, audio, i * period / n, deadline) for i in range(n)))
    return [ours_figures(r["events"], spans) for r in runs]


async def _wl_level(url: str, audio: bytes, spans: list[Span], n: int) -> list[dict[str, Any]]:
    period = spans[1][0] - spans[0][0]
    deadline = time.monotonic() + len(audio) / 4 / WL_RATE + period + 30
    runs = await asyncio.gather(*(wl_stream(url, audio, spans, i * period / n, deadline) for i in range(n)))
    return [wl_figures(r["messages"], spans) for r in runs]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--levels", default="1,3,5")
    parser.add_argument("--wl-python", default="/tmp/wl/venv/bin/python")
    args = parser.parse_args()
    levels = [int(x) for x in args.levels.split(",")]
    audio, spans = streams.talk(RESULTS / "tmp" / "talk")
    wl_audio = to_whisperlive(audio)
    audio_seconds = len(audio) / 2 / streams.RATE
    model_dir = embedded_model_path(MODEL, DEFAULT_CACHE_DIR)
    env = {"ASR_MODEL": MODEL, "ASR_MAX_STREAMS": str(max(levels)), "ASR_QUALITY_SAMPLE_RATE": "0"}
    rows = []
    with server(env) as (ours, url, _), whisperlive(args.wl_python, model_dir, max(levels)) as (peer, wl_url):
        streams._wait_loaded(url)
        # Interleaved by level, so that both servers see the same state of the shared host.
        for n in levels:
            for name, process, idle, measure in (
                ("ours", ours, peer, lambda n=n: _ours_level(url, audio, spans, n)),
                ("WhisperLive", peer, ours, lambda n=n: _wl_level(wl_url, wl_audio, spans, n)),
            ):
                before, idle_before, host_before, started = (
                    cpu_seconds(process.pid),
                    cpu_seconds(idle.pid),
                    host_busy_seconds(),
                    time.monotonic(),
                )
                figures = asyncio.run(measure())
                row = _row(name, n, figures, cpu_seconds(process.pid) - before, audio_seconds)
                # What else ran meanwhile (the idle server, this client, other work on the host), in cores: a
                # fair comparison needs it near zero beside the measured server.
                others = host_busy_seconds() - host_before - (cpu_seconds(process.pid) - before)
                row["idle_server_cores"] = (cpu_seconds(idle.pid) - idle_before) / (time.monotonic() - started)
                row["other_cores"] = others / (time.monotonic() - started)
                print(row, file=sys.stderr, flush=True)
                rows.append({**row, "texts": [f["texts"] for f in figures]})
    held = {
        name: max((r["streams"] for r in rows if r["server"] == name and r["passes"]), default=0)
        for name in ("ours", "WhisperLive")
    }
    columns = [
        "server", "streams", "finalised", "first_text_p50_s", "first_text_p95_s", "final_p50_s", "final_p95_s",
        "wer", "wer_finalised", "cpu_s_per_audio_s", "passes", "idle_server_cores", "other_cores",
    ]  # fmt: skip
    md = (
        "# Live streams: ours and WhisperLive side by side\n"
        f"Model {MODEL} (the same CTranslate2 directory for both, int8 on CPU). Each stream: "
        f"{len(streams.SENTENCES)} espeak-ng sentences with {streams.PAUSE_SECONDS} s pauses, {audio_seconds:.0f} s "
        "sent in real time in 100 ms frames, streams staggered over one turn, levels interleaved (ours, then "
        "WhisperLive). Ours: Realtime WebSocket, 24 kHz PCM16, server VAD with 500 ms of silence, defaults "
        "(two 1-thread workers, partials at beam 1, finals at beam 5). WhisperLive 0.10.0: its WebSocket, 16 kHz "
        "float32, `use_vad` on (Silero filter inside each decode), one model per connection with "
        "OMP_NUM_THREADS=1, beam 5 on every pass (not settable); its client keeps sending silence for up to "
        f"{TAIL_SECONDS:g} s after the talk. `first_text`: first speech frame of a sentence -> first text for it; "
        "`final`: last speech frame -> its completed text; `wer`: each stream's completed text joined against all "
        "six sentences, mean over streams; `wer_finalised`: the same against only the sentences it finalised; "
        "`cpu_s_per_audio_s`: the server's process group utime+stime over the audio seconds sent; "
        f"`passes`: every sentence finalised and final p95 < {streams.SLO_SECONDS:g} s; `idle_server_cores`: "
        "the other server's CPU meanwhile; `other_cores`: the rest of the host's busy CPU meanwhile (this client, "
        "the idle server, anything else), both in cores.\n\n"
        + "Streams held (largest passing level of "
        + ", ".join(map(str, levels))
        + "): "
        + ", ".join(f"{name} {n}" for name, n in held.items())
        + ".\n\n"
        + markdown_table(rows, columns)
    )
    print(write_report("whisperlive", {"rows": rows, "held": held, "levels": levels}, md).read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
