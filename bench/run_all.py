"""`make bench`: the service against its raw engine, long audio in bounded memory, cold start,
and the cost of metrics — measured in one run, reported in bench/results/benchmark.{json,md}.

    python -m bench.run_all [--quick] [--skip-long] [--skip-overhead]

Service and raw engine get the same audio (a ~13 s espeak-ng clip), the same model, device,
compute type, threads, workers and decode options (resolved by the service's own code), at
concurrency 1, 2, 4, 8 and 16. Headline ratios: service p50 latency / raw p50 latency at
concurrency 1 (goal <= 1.05) and best service throughput / best raw throughput (goal >= 0.95).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx

from bench import inputs
from bench.common import RESULTS, markdown_table, write_report
from bench.load import Run, load, peak_rss, reset_peak_rss
from bench.raw_engine import engine_options
from service.config import Settings

LEVELS = (1, 2, 4, 8, 16)
LONG_MINUTES = (1, 10, 60)
SERVICE_ENV = {"ASR_QUALITY_SAMPLE_RATE": "0", "ASR_LOG_LEVEL": "WARNING", "ASR_QUEUE_SIZE": "64"}


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextlib.contextmanager
def server(env: dict[str, str] | None = None) -> Iterator[tuple[subprocess.Popen[bytes], str, float]]:
    """`python -m service serve` on a free port; yields (process, url, seconds until /readyz said ready)."""
    port = _free_port()
    full_env = {**os.environ, **SERVICE_ENV, **(env or {}), "ASR_PORT": str(port), "ASR_HOST": "127.0.0.1"}
    started = time.perf_counter()
    process = subprocess.Popen(
        [sys.executable, "-m", "service", "serve"],
        env=full_env,
        start_new_session=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        while True:
            if process.poll() is not None:
                raise RuntimeError("the service exited during startup")
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(url + "/readyz", timeout=1).status_code == 200:
                    break
            time.sleep(0.05)
        yield process, url, time.perf_counter() - started
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGTERM)
        process.wait(timeout=60)


def _requests(concurrency: int, quick: bool) -> int:
    return max(4 if quick else 6, (2 if quick else 3) * concurrency)


def service_levels(clip: Path, levels: tuple[int, ...], quick: bool) -> tuple[dict[int, Run], float]:
    with server() as (process, url, ready_seconds):
        asyncio.run(load(url + "/transcribe", clip, 1, 2))  # warm the HTTP path and allocators
        runs = {}
        for c in levels:
            reset_peak_rss(process.pid)
            run = asyncio.run(load(url + "/transcribe", clip, c, _requests(c, quick)))
            run.peak_rss_bytes = peak_rss(process.pid)
            runs[c] = run
            print(f"service c={c}: {run.summary()}", file=sys.stderr, flush=True)
    return runs, ready_seconds


def raw_levels(clip: Path, levels: tuple[int, ...], quick: bool) -> dict[int, Run]:
    runs = {}
    for c in levels:
        out = subprocess.run(
            [
                sys.executable,
                "-m",
                "bench.raw_engine",
                "--clip",
                str(clip),
                "--concurrency",
                str(c),
                "--requests",
                str(_requests(c, quick)),
            ],
            capture_output=True,
            text=True,
            check=True,
            env={**os.environ, **SERVICE_ENV},
        )
        d = json.loads(out.stdout)
        runs[c] = Run(
            d["latencies"],
            d["audio_seconds"],
            d["processing_seconds"],
            d["wall_seconds"],
            d["peak_rss_bytes"],
            [200] * len(d["latencies"]),
        )
        print(f"raw c={c}: {runs[c].summary()}", file=sys.stderr, flush=True)
    return runs


def long_audio(folder: Path, minutes: tuple[int, ...]) -> list[dict[str, Any]]:
    """Peak resident memory of a fresh service transcribing one long file."""
    rows = []
    for m in minutes:
        path = inputs.long_audio(folder, m)
        with server() as (process, url, _):
            baseline = peak_rss(process.pid)
            reset_peak_rss(process.pid)
            started = time.perf_counter()
            with httpx.Client(timeout=4 * 3600) as client:
                r = client.post(url + "/transcribe", files={"file": (path.name, path.read_bytes())})
            r.raise_for_status()
            body = r.json()
            rows.append(
                {
                    "audio_minutes": m,
                    "upload_mib": path.stat().st_size / 2**20,
                    "rss_ready_mib": baseline / 2**20,
                    "peak_rss_mib": peak_rss(process.pid) / 2**20,
                    "seconds": time.perf_counter() - started,
                    "rtf": body["rtf"],
                    "segments": len(body["segments"]),
                }
            )
            print(f"long audio: {rows[-1]}", file=sys.stderr, flush=True)
    return rows


def cold_start() -> dict[str, float]:
    """Process start to /readyz 200: with the model cache filled, and with an empty one."""
    with server() as (_, _, warm):
        pass
    with tempfile.TemporaryDirectory() as empty, server({"ASR_CACHE_DIR": empty}) as (_, _, first):
        pass
    return {"ready_seconds_cached_model": warm, "ready_seconds_first_start": first}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="concurrency 1, 2, 4; long audio 1 and 3 minutes")
    parser.add_argument("--skip-long", action="store_true")
    parser.add_argument("--skip-overhead", action="store_true")
    args = parser.parse_args()
    work = RESULTS / "tmp"
    clip = inputs.clip(work)
    levels = (1, 2, 4) if args.quick else LEVELS
    model_args, decode_args = engine_options(Settings())

    starts = cold_start()
    service, _ = service_levels(clip, levels, args.quick)
    raw = raw_levels(clip, levels, args.quick)
    rows = []
    for c in levels:
        for mode, run in (("raw engine", raw[c]), ("service", service[c])):
            rows.append({"concurrency": c, "mode": mode, **run.summary()})
    latency_ratio = service[1].summary()["p50_latency_s"] / raw[1].summary()["p50_latency_s"]
    best_raw = max(r.summary()["throughput_audio_s_per_s"] for r in raw.values())
    best_service = max(r.summary()["throughput_audio_s_per_s"] for r in service.values())
    throughput_ratio = best_service / best_raw
    long_rows = [] if args.skip_long else long_audio(work, (1, 3) if args.quick else LONG_MINUTES)

    columns = [
        "concurrency",
        "mode",
        "requests",
        "throughput_audio_s_per_s",
        "p50_latency_s",
        "p95_latency_s",
        "rtf",
        "peak_rss_mib",
        "errors",
    ]
    md = (
        "# Benchmark: the service against its raw engine\n"
        f"Model {model_args['model_size_or_path']} on {model_args['device']} ({model_args['compute_type']}), "
        f"{model_args['num_workers']} workers x {model_args['cpu_threads']} CPU threads; decode options "
        f"{json.dumps(decode_args)} (faster-whisper's own defaults). Audio: a {raw[1].audio_seconds[0]:.1f} s "
        "espeak-ng MP3, decoded by each side. The service is measured over HTTP from an async httpx client on the "
        "same host; the raw engine is faster-whisper called from as many threads as the concurrency.\n\n"
        + markdown_table(rows, columns)
        + f"\n**Service latency / raw latency at concurrency 1: {latency_ratio:.3f}** (goal <= 1.05).  \n"
        f"**Best service throughput / best raw throughput: {throughput_ratio:.3f}** (goal >= 0.95): "
        f"{best_service:.2f} vs {best_raw:.2f} audio seconds per second.\n\n"
        f"Cold start to ready: {starts['ready_seconds_cached_model']:.1f} s with the model in the cache, "
        f"{starts['ready_seconds_first_start']:.1f} s on a first start (joining and checksumming the embedded model).\n"
    )
    if long_rows:
        md += (
            "\n## Long audio in bounded memory\n\nOne request per fresh service; peak resident memory of the "
            "service process while it decodes (spilling past 5 minutes to disk) and transcribes in 5-minute "
            "windows cut at quiet points.\n\n"
            + markdown_table(
                long_rows,
                ["audio_minutes", "upload_mib", "rss_ready_mib", "peak_rss_mib", "seconds", "rtf", "segments"],
            )
        )
    data = {
        "model_args": model_args,
        "decode_args": decode_args,
        "levels": rows,
        "latency_ratio_c1": latency_ratio,
        "throughput_ratio_best": throughput_ratio,
        "cold_start": starts,
        "long_audio": long_rows,
    }
    path = write_report("benchmark", data, md)
    print(path.read_text())
    if not args.skip_overhead:
        from bench import overhead

        overhead.main()
    return 0


if __name__ == "__main__":
    sys.exit(main())
