"""The scheduler's dynamic batcher on and off: throughput, latency and WER in one run.

    python -m bench.batcher [--quick] [--model embedded:base] [--rounds 3]

Two services run side by side on the same host, the same model and the service's defaults, one with
ASR_BATCH_MAX_SIZE=8 (the default: batching on) and one with ASR_BATCH_MAX_SIZE=1 (off); only one
is loaded at a time. Each level (requests in flight) is measured `--rounds` times, alternating
which service goes first, on the benchmark's 11.7 s espeak-ng clip; figures are medians of the
rounds (throughput) and of every request (latency). WER: the clip's answers against its text, and
the 16 story sentences sent as separate requests at concurrency 8, so that clips of different
lengths and texts share calls. Goals (issue 22): at concurrency 8 throughput on / off >= 1.3,
p50 latency at concurrency 1 not worse, WER within +0.01. Writes bench/results/batcher.{json,md}.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx

from bench import inputs
from bench.common import RESULTS, markdown_table, write_report
from bench.load import Run, load
from bench.run_all import server
from service.quality.scoring import score

GOAL_THROUGHPUT = 1.3
WER_PARITY = 0.01
MODES = {"on": "8", "off": "1"}


def sentences(folder: Path) -> list[tuple[Path, str]]:
    """The story's sentences, one WAV each."""
    out = []
    for i, text in enumerate(inputs.STORY):
        path = folder / f"story-sentence{i}.wav"
        if not path.exists():
            subprocess.run(["espeak-ng", "-v", "en-us", "-s", "140", "-w", str(path), text], check=True)
        out.append((path, text))
    return out


async def transcribe_all(url: str, files: list[tuple[Path, str]], concurrency: int) -> list[str]:
    gate = asyncio.Semaphore(concurrency)
    payloads = [(path.name, path.read_bytes()) for path, _ in files]
    async with httpx.AsyncClient(timeout=600) as client:

        async def one(payload: tuple[str, bytes]) -> str:
            async with gate:
                r = await client.post(url + "/transcribe", files={"file": payload})
                r.raise_for_status()
                return str(r.json()["text"])

        return await asyncio.gather(*(one(p) for p in payloads))


def batch_sizes(url: str) -> tuple[float, float]:
    """(engine calls, clips in them) from the service's asr_batch_size histogram."""
    calls = clips = 0.0
    for line in httpx.get(url + "/metrics", timeout=10).text.splitlines():
        if line.startswith("asr_batch_size_count"):
            calls += float(line.rsplit(" ", 1)[1])
        elif line.startswith("asr_batch_size_sum"):
            clips += float(line.rsplit(" ", 1)[1])
    return calls, clips


def corpus_wer(references: list[str], hypotheses: list[str]) -> float:
    errors = words = 0
    for reference, hypothesis in zip(references, hypotheses, strict=True):
        result = score(reference, hypothesis, "en", "basic")
        errors += result.errors
        words += result.reference_units
    return errors / words


def measure(model: str, levels: tuple[int, ...], rounds: int) -> dict[str, Any]:
    work = RESULTS / "tmp"
    clip = inputs.clip(work)
    reference = " ".join(inputs.SENTENCES)
    story = sentences(work)
    runs: dict[tuple[str, int], list[Run]] = {(m, c): [] for m in MODES for c in levels}
    story_texts: dict[str, list[str]] = {}
    sizes: dict[str, tuple[float, float]] = {}
    for r in range(rounds):
        order = list(MODES) if r % 2 == 0 else list(reversed(MODES))
        for mode in order:
            env = {"ASR_MODEL": model, "ASR_BATCH_MAX_SIZE": MODES[mode]}
            with server(env) as (_, url, _):
                asyncio.run(load(url + "/transcribe", clip, 1, 2))  # warm the HTTP path and allocators
                for c in levels:
                    run = asyncio.run(load(url + "/transcribe", clip, c, max(6, 3 * c)))
                    runs[mode, c].append(run)
                    print(f"round {r} {mode} c={c}: {run.summary()}", file=sys.stderr, flush=True)
                if r == 0:
                    story_texts[mode] = asyncio.run(transcribe_all(url, story, 8))
                    sizes[mode] = batch_sizes(url)
    rows = []
    for c in levels:
        for mode in MODES:
            level = runs[mode, c]
            latencies = sorted(x for run in level for x in run.latencies)
            texts = [t for run in level for t in run.texts]
            rows.append(
                {
                    "concurrency": c,
                    "batching": mode,
                    "requests": len(latencies),
                    "throughput_audio_s_per_s": statistics.median(
                        run.summary()["throughput_audio_s_per_s"] for run in level
                    ),
                    "p50_latency_s": statistics.median(latencies),
                    "p95_latency_s": latencies[max(0, round(0.95 * len(latencies)) - 1)],
                    "wer": corpus_wer([reference] * len(texts), texts),
                    "errors": sum(sum(1 for s in run.statuses if s != 200) for run in level),
                }
            )
    by = {(row["batching"], row["concurrency"]): row for row in rows}
    top = max(levels)
    story_refs = [text for _, text in story]
    return {
        "model": model,
        "rounds": rounds,
        "levels": rows,
        "throughput_ratio": by["on", top]["throughput_audio_s_per_s"] / by["off", top]["throughput_audio_s_per_s"],
        "top_level": top,
        "latency_ratio_c1": by["on", 1]["p50_latency_s"] / by["off", 1]["p50_latency_s"],
        "story_wer": {mode: corpus_wer(story_refs, texts) for mode, texts in story_texts.items()},
        "mean_batch_size": {mode: (clips / calls if calls else None) for mode, (calls, clips) in sizes.items()},
    }


def report(data: dict[str, Any]) -> str:
    wer_on = max(row["wer"] for row in data["levels"] if row["batching"] == "on")
    wer_off = min(row["wer"] for row in data["levels"] if row["batching"] == "off")
    story = data["story_wer"]
    top = data["top_level"]
    mean_size = data["mean_batch_size"].get("on")
    shown_size = "n/a" if mean_size is None else f"{mean_size:.2f}"
    return (
        "# The scheduler's batcher: on (ASR_BATCH_MAX_SIZE=8) against off (1)\n"
        f"Model {data['model']}, the service's defaults otherwise (one single-threaded worker per core). "
        f"{data['rounds']} rounds per level, alternating which service goes first; throughput is the median "
        "of the rounds, latency percentiles over every request. Audio: the benchmark's 11.7 s espeak-ng clip "
        "(`wer`: its answers against its text).\n\n"
        + markdown_table(
            data["levels"],
            [
                "concurrency",
                "batching",
                "requests",
                "throughput_audio_s_per_s",
                "p50_latency_s",
                "p95_latency_s",
                "wer",
                "errors",
            ],
        )
        + f"\n- **Throughput at concurrency {top}, on / off: {data['throughput_ratio']:.2f}x** "
        f"(goal >= {GOAL_THROUGHPUT}).\n"
        f"- p50 latency at concurrency 1, on / off: {data['latency_ratio_c1']:.3f} (goal: not worse).\n"
        f"- WER on the clip, worst on minus best off: {wer_on - wer_off:+.3f}; on the 16 story sentences sent at "
        f"concurrency 8: on {story['on']:.3f}, off {story['off']:.3f} ({story['on'] - story['off']:+.3f}; "
        f"goal within +{WER_PARITY}).\n"
        f"- Mean clips per engine call with batching on (asr_batch_size, over the first round): {shown_size}.\n"
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="one round, concurrency 1 and 8")
    parser.add_argument("--model", default="embedded:base")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--levels", help="concurrency levels, comma-separated (default 1,2,4,8,16; must hold 1 and 8)")
    args = parser.parse_args()
    levels: tuple[int, ...] = (1, 8) if args.quick else (1, 2, 4, 8, 16)
    if args.levels:
        levels = tuple(int(level) for level in args.levels.split(","))
    data = measure(args.model, levels, 1 if args.quick else args.rounds)
    path = write_report("batcher", data, report(data))
    print(path.read_text())
    return 0 if data["throughput_ratio"] >= GOAL_THROUGHPUT else 1


if __name__ == "__main__":
    sys.exit(main())
