"""What shadow scoring costs requests: latency of the same clips with and without a shadow model.

    python -m bench.shadow [--served embedded:tiny.en] [--shadow embedded:base] [--requests 20]

Every request is kept as a quality sample (sample rate 1), so with a shadow model configured the
shadow engine has work after each one. Requests arrive one at a time with a 1 s pause between
them (shadow work happens in the pauses, and must give way when the next request comes).
Writes bench/results/shadow.{json,md}.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time

import httpx

from bench import inputs
from bench.common import RESULTS, markdown_table, write_report
from bench.run_all import server


def run(served: str, shadow: str | None, requests: int, clip: bytes) -> dict[str, float]:
    env = {"ASR_MODEL": served, "ASR_QUALITY_SAMPLE_RATE": "1", "ASR_QUALITY_DIR": str(RESULTS / "tmp" / "shadow-q")}
    if shadow:
        env |= {"ASR_SHADOW_MODEL": shadow, "ASR_SHADOW_INTERVAL_SECONDS": "1"}
    latencies = []
    with server(env) as (_, url, _started):
        httpx.post(url + "/transcribe", files={"file": ("clip.mp3", clip)}, timeout=120)  # warm-up
        for _ in range(requests):
            time.sleep(1.0)
            started = time.perf_counter()
            r = httpx.post(url + "/transcribe", files={"file": ("clip.mp3", clip)}, timeout=120)
            latencies.append(time.perf_counter() - started)
            r.raise_for_status()
        text = httpx.get(url + "/metrics").text
    shadowed = sum(
        float(line.split()[-1])
        for line in text.splitlines()
        if line.startswith("asr_quality_shadow_scored_samples_total")
    )
    latencies.sort()
    return {
        "p50_s": statistics.median(latencies),
        "p95_s": latencies[int(0.95 * (len(latencies) - 1))],
        "max_s": latencies[-1],
        "samples_shadowed": shadowed,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--served", default="embedded:tiny.en")
    parser.add_argument("--shadow", default="embedded:base")
    parser.add_argument("--requests", type=int, default=20)
    args = parser.parse_args()
    clip = inputs.clip(RESULTS / "tmp").read_bytes()
    rows: list[dict[str, object]] = []
    p50: list[float] = []
    for name, shadow in (("without shadow", None), (f"with shadow {args.shadow}", args.shadow)):
        figures = run(args.served, shadow, args.requests, clip)
        p50.append(figures["p50_s"])
        row = {"run": name, **figures}
        print(row, file=sys.stderr, flush=True)
        rows.append(row)
    ratio = p50[1] / p50[0]
    md = (
        "# Shadow scoring's cost to requests\n"
        f"Served {args.served}; {args.requests} requests of a ~13 s clip, one at a time, 1 s apart; every "
        f"request sampled. p50 latency with / without shadow: **{ratio:.3f}**.\n\n"
        + markdown_table(rows, ["run", "p50_s", "p95_s", "max_s", "samples_shadowed"])
    )
    print(write_report("shadow", {"rows": rows, "p50_ratio": ratio}, md).read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
