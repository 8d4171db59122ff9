"""What a model costs to hold and to load: memory and load time per model, cold and warm requests.

    python -m bench.models

One `serve` process with three ASR_MODELS entries: tiny.en preloaded (readiness needs one), and
base and tiny.en again under another id, both loaded on demand. For each on-demand entry, ROUNDS
times: a request that finds it unloaded (it waits for the load), a request that finds it loaded,
then the admin's unload and load (DELETE / POST /v1/models/{id}). Memory is what the registry
measured at the load (the C heap it kept, service/models.py) beside the process's RSS growth,
which depends on what earlier unloads left behind. All in one run on one machine.
Writes bench/results/models.{json,md}.
"""

from __future__ import annotations

import json
import os
import statistics
import time
from pathlib import Path
from typing import Any

import httpx

from bench import inputs
from bench.common import RESULTS, markdown_table, write_report
from bench.hardening import service

ROUNDS = 3
ADMIN = "bench-admin-token"
ENTRIES: list[dict[str, Any]] = [
    {"id": "anchor", "model": "embedded:tiny.en", "preload": True},
    {"id": "base", "model": "embedded:base"},
    {"id": "tiny", "model": "embedded:tiny.en"},
]


def _rss(url: str) -> int:
    """The server's resident memory, from its own process metric."""
    text = httpx.get(url + "/metrics", timeout=10).text
    for line in text.splitlines():
        if line.startswith("process_resident_memory_bytes "):
            return int(float(line.split()[1]))
    raise RuntimeError("no process_resident_memory_bytes on /metrics")


def _status(client: httpx.Client, model: str) -> dict[str, Any]:
    listed = client.get("/v1/models").json()["data"]
    return next(m for m in listed if m["id"] == model)


def _transcribe(client: httpx.Client, model: str, clip: bytes) -> float:
    started = time.perf_counter()
    r = client.post("/v1/audio/transcriptions", data={"model": model}, files={"file": ("clip.wav", clip)})
    r.raise_for_status()
    return time.perf_counter() - started


def measure(url: str, clip: bytes) -> list[dict[str, Any]]:
    headers = {"Authorization": f"Bearer {ADMIN}"}
    rows = []
    with httpx.Client(base_url=url, headers=headers, timeout=600) as client:
        for model in ("base", "tiny"):
            cold, warm, admin_load, memory, rss = [], [], [], [], []
            for _ in range(ROUNDS):
                before = _rss(url)
                cold.append(_transcribe(client, model, clip))
                rss.append(_rss(url) - before)
                memory.append(_status(client, model)["memory_bytes"])
                warm.append(_transcribe(client, model, clip))
                client.delete(f"/v1/models/{model}").raise_for_status()
                started = time.perf_counter()
                client.post(f"/v1/models/{model}").raise_for_status()
                admin_load.append(time.perf_counter() - started)
                client.delete(f"/v1/models/{model}").raise_for_status()
            rows.append(
                {
                    "model": next(e["model"] for e in ENTRIES if e["id"] == model),
                    "load_s_p50": statistics.median(admin_load),
                    "cold_request_s_p50": statistics.median(cold),
                    "warm_request_s_p50": statistics.median(warm),
                    "cold_over_warm": statistics.median(cold) / statistics.median(warm),
                    "memory_mb_min": min(memory) / 2**20,
                    "memory_mb_max": max(memory) / 2**20,
                    "rss_growth_mb_min": min(rss) / 2**20,
                    "rss_growth_mb_max": max(rss) / 2**20,
                }
            )
    return rows


def main() -> None:
    folder = RESULTS / "tmp"
    clip = inputs.clip(folder).read_bytes()
    env = {"ASR_MODELS": json.dumps(ENTRIES), "ASR_ADMIN_TOKEN": ADMIN, "ASR_MODEL_LOAD_WAIT_SECONDS": "120"}
    with service(Path(__file__).resolve().parent.parent, env) as url:
        rows = measure(url, clip)
    columns = list(rows[0])
    markdown = (
        "# Models: memory and load time\n\n"
        f"One service on {os.cpu_count()} cores, tiny.en preloaded; base and tiny.en as on-demand entries, "
        f"{ROUNDS} rounds each: a request that waits for the load (`cold_request`), one on the loaded model "
        "(`warm_request`), then the admin's unload and load (`load`). Request audio: the benchmark's 11.7 s clip. "
        "`memory`: what the registry measured at each load (the C heap kept); `rss_growth`: the process's RSS "
        "across the cold request, for comparison.\n\n" + markdown_table(rows, columns)
    )
    print(write_report("models", {"rounds": ROUNDS, "entries": ENTRIES, "rows": rows}, markdown))


if __name__ == "__main__":
    main()
