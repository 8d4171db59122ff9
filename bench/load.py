"""An async httpx load generator for the service, and what a run of it measured."""

from __future__ import annotations

import asyncio
import statistics
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx


@dataclass
class Run:
    """One concurrency level: per-request figures and the wall time of the whole level."""

    latencies: list[float]
    audio_seconds: list[float]
    processing_seconds: list[float]
    wall_seconds: float
    peak_rss_bytes: int
    statuses: list[int]
    texts: list[str] = field(default_factory=list)

    def summary(self) -> dict[str, Any]:
        lat = sorted(self.latencies)
        return {
            "requests": len(lat),
            "throughput_audio_s_per_s": sum(self.audio_seconds) / self.wall_seconds,
            "p50_latency_s": statistics.median(lat),
            "p95_latency_s": lat[max(0, round(0.95 * len(lat)) - 1)],
            "rtf": sum(self.processing_seconds) / sum(self.audio_seconds),
            "peak_rss_mib": self.peak_rss_bytes / 2**20,
            "errors": sum(1 for s in self.statuses if s != 200),
        }


async def load(url: str, audio: Path, concurrency: int, requests: int, seconds_per_request: float = 7200.0) -> Run:
    """POST `audio` to `url` `requests` times with `concurrency` requests in flight."""
    payload = await asyncio.to_thread(audio.read_bytes)
    queue: asyncio.Queue[int] = asyncio.Queue()
    for i in range(requests):
        queue.put_nowait(i)
    latencies, audio_s, processing, statuses, texts = [], [], [], [], []
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(timeout=seconds_per_request, limits=limits) as client:

        async def worker() -> None:
            while not queue.empty():
                queue.get_nowait()
                started = time.perf_counter()
                r = await client.post(url, files={"file": (audio.name, payload)})
                latencies.append(time.perf_counter() - started)
                statuses.append(r.status_code)
                if r.status_code == 200:
                    body = r.json()
                    audio_s.append(body["duration"])
                    processing.append(body["processing_seconds"])
                    texts.append(body["text"])

        started = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        wall = time.perf_counter() - started
    return Run(latencies, audio_s, processing, wall, 0, statuses, texts)


def peak_rss(pid: int) -> int:
    """A process's peak resident memory (VmHWM) in bytes."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    return 0


def reset_peak_rss(pid: int) -> None:
    """Start a process's VmHWM afresh (Linux: writing 5 to clear_refs), so each level has its own peak."""
    Path(f"/proc/{pid}/clear_refs").write_text("5")
