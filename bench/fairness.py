"""What a short request waits behind long ones: first come first served against the fair order.

    python -m bench.fairness

Both workers busy with long uploads (45 s and 90 s of speech) and one more (135 s) waiting, a 1 s
clip arrives. With ASR_INTERACTIVE_ORDER=arrival the waiting upload takes the first worker that
frees and the clip waits for the second; with `fair` (highest response ratio next, the default)
the clip takes the first. (Were both workers to free at the same moment, the order could not
matter: running work is not interrupted.)
Both orders are measured in one run on the same machine, each over ROUNDS rounds (median).
Writes bench/results/fairness.{json,md}.
"""

from __future__ import annotations

import asyncio
import re
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx

from bench import inputs
from bench.common import RESULTS, markdown_table, write_report
from bench.hardening import service

ROUNDS = 3
LONG_SECONDS = (45, 90, 135)  # the first two run, the third waits
SHORT_TEXT = "Yes, please."


def cut(folder: Path, seconds: int) -> Path:
    out = folder / f"speech-{seconds}s.mp3"
    if not out.exists():
        source = inputs.long_audio(folder, 3)
        subprocess.run(
            ["ffmpeg", "-loglevel", "error", "-y", "-i", str(source), "-t", str(seconds), "-c", "copy", str(out)],
            check=True,
        )
    return out


def short_clip(folder: Path) -> Path:
    out = folder / "short.wav"
    if not out.exists():
        folder.mkdir(parents=True, exist_ok=True)
        subprocess.run(["espeak-ng", "-v", "en-us", "-s", "160", "-w", str(out), SHORT_TEXT], check=True)
    return out


def _gauge(text: str, name: str) -> float:
    found = re.search(rf"^{name} ([0-9.e+-]+)$", text, re.M)
    return float(found.group(1)) if found else 0.0


async def _round(url: str, longs_audio: list[bytes], short: bytes) -> dict[str, float]:
    async with httpx.AsyncClient(base_url=url, timeout=900) as client:

        async def post(name: str, payload: bytes) -> float:
            started = time.perf_counter()
            r = await client.post("/transcribe", files={"file": (name, payload)})
            assert r.status_code == 200, r.text
            return time.perf_counter() - started

        longs = []
        for i, payload in enumerate(longs_audio):  # in this order, so that the longest one waits
            longs.append(asyncio.ensure_future(post(f"long{i}.mp3", payload)))
            await asyncio.sleep(0.3)
        # The short clip arrives once both workers are busy and a long upload waits for one.
        while True:
            metrics = (await client.get("/metrics")).text
            if _gauge(metrics, "asr_workers_busy") >= 2 and _gauge(metrics, "asr_queue_depth") >= 1:
                break
            await asyncio.sleep(0.05)
        short_seconds = await post("short.wav", short)
        long_seconds = await asyncio.gather(*longs)
    return {"short_s": short_seconds, "long_max_s": max(long_seconds)}


def measure(order: str, longs: list[bytes], short: bytes) -> dict[str, Any]:
    here = Path(__file__).resolve().parent.parent
    with service(here, {"ASR_INTERACTIVE_ORDER": order, "ASR_WORKERS": "2"}) as url:
        with httpx.Client(base_url=url, timeout=120) as client:
            client.post("/transcribe", files={"file": ("short.wav", short)})  # warm-up
            alone = []
            for _ in range(ROUNDS):
                started = time.perf_counter()
                client.post("/transcribe", files={"file": ("short.wav", short)}).raise_for_status()
                alone.append(time.perf_counter() - started)
        rounds = [asyncio.run(_round(url, longs, short)) for _ in range(ROUNDS)]
    short_alone = statistics.median(alone)
    short_behind = statistics.median(r["short_s"] for r in rounds)
    return {
        "order": order,
        "short_alone_s": short_alone,
        "short_behind_longs_s": short_behind,
        "slowdown": short_behind / short_alone,
        "longs_done_s": statistics.median(r["long_max_s"] for r in rounds),
    }


def main() -> int:
    folder = RESULTS / "tmp"
    longs = [cut(folder, seconds).read_bytes() for seconds in LONG_SECONDS]
    short = short_clip(folder).read_bytes()
    rows = []
    for order in ("arrival", "fair"):
        rows.append(measure(order, longs, short))
        print(rows[-1], file=sys.stderr, flush=True)
    columns = ["order", "short_alone_s", "short_behind_longs_s", "slowdown", "longs_done_s"]
    md = (
        "# A short request behind long uploads\n"
        f"Whisper base (the default model), 2 workers; uploads of {', '.join(f'{s} s' for s in LONG_SECONDS)} of "
        f"speech, 0.3 s apart (two run, the last waits), then a ~1 s clip ('{SHORT_TEXT}'); median of {ROUNDS} "
        "rounds. `slowdown` = the clip's "
        "latency behind the long uploads / alone; `longs_done_s` = when the last long upload was answered.\n\n"
        + markdown_table(rows, columns)
    )
    print(write_report("fairness", {"rows": rows}, md).read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
