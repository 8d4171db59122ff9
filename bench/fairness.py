"""What a short request waits behind long ones: first come first served against the fair order.

    python -m bench.fairness

Both workers busy with long uploads and one more long upload waiting, a 1 s clip arrives. With
ASR_INTERACTIVE_ORDER=arrival it waits for a worker and then for the long upload ahead of it;
with `fair` (highest response ratio next, the default) it takes the first worker that frees.
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
LONG_UPLOADS = 3
SHORT_TEXT = "Yes, please."


def short_clip(folder: Path) -> Path:
    out = folder / "short.wav"
    if not out.exists():
        folder.mkdir(parents=True, exist_ok=True)
        subprocess.run(["espeak-ng", "-v", "en-us", "-s", "160", "-w", str(out), SHORT_TEXT], check=True)
    return out


def _gauge(text: str, name: str) -> float:
    found = re.search(rf"^{name} ([0-9.e+-]+)$", text, re.M)
    return float(found.group(1)) if found else 0.0


async def _round(url: str, long: bytes, short: bytes) -> dict[str, float]:
    async with httpx.AsyncClient(base_url=url, timeout=900) as client:

        async def post(name: str, payload: bytes) -> float:
            started = time.perf_counter()
            r = await client.post("/transcribe", files={"file": (name, payload)})
            assert r.status_code == 200, r.text
            return time.perf_counter() - started

        longs = [asyncio.ensure_future(post(f"long{i}.mp3", long)) for i in range(LONG_UPLOADS)]
        # The short clip arrives once both workers are busy and a long upload waits for one.
        while True:
            metrics = (await client.get("/metrics")).text
            if _gauge(metrics, "asr_workers_busy") >= 2 and _gauge(metrics, "asr_queue_depth") >= 1:
                break
            await asyncio.sleep(0.05)
        short_seconds = await post("short.wav", short)
        long_seconds = await asyncio.gather(*longs)
    return {"short_s": short_seconds, "long_max_s": max(long_seconds)}


def measure(order: str, long: bytes, short: bytes) -> dict[str, Any]:
    here = Path(__file__).resolve().parent.parent
    with service(here, {"ASR_INTERACTIVE_ORDER": order, "ASR_WORKERS": "2"}) as url:
        with httpx.Client(base_url=url, timeout=120) as client:
            client.post("/transcribe", files={"file": ("short.wav", short)})  # warm-up
            alone = []
            for _ in range(ROUNDS):
                started = time.perf_counter()
                client.post("/transcribe", files={"file": ("short.wav", short)}).raise_for_status()
                alone.append(time.perf_counter() - started)
        rounds = [asyncio.run(_round(url, long, short)) for _ in range(ROUNDS)]
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
    long = inputs.story(folder).read_bytes()
    short = short_clip(folder).read_bytes()
    rows = []
    for order in ("arrival", "fair"):
        rows.append(measure(order, long, short))
        print(rows[-1], file=sys.stderr, flush=True)
    columns = ["order", "short_alone_s", "short_behind_longs_s", "slowdown", "longs_done_s"]
    md = (
        "# A short request behind long uploads\n"
        f"Whisper base (the default model), 2 workers; {LONG_UPLOADS} uploads of ~1.5 min of speech at once (two "
        f"run, one waits), then a ~1 s clip ('{SHORT_TEXT}'); median of {ROUNDS} rounds. `slowdown` = the clip's "
        "latency behind the long uploads / alone; `longs_done_s` = when the last long upload was answered.\n\n"
        + markdown_table(rows, columns)
    )
    print(write_report("fairness", {"rows": rows}, md).read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
