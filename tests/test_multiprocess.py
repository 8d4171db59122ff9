"""Several uvicorn worker processes: metrics add up across them in one scrape."""

from __future__ import annotations

import asyncio
import os
import re
import shutil
import signal
import subprocess
import time
from pathlib import Path

import httpx
import pytest
from prometheus_client import CollectorRegistry
from prometheus_client.multiprocess import MultiProcessCollector

from tests.conftest import Server, serve

pytestmark = pytest.mark.slow


def _value(text: str, name: str, **labels: str) -> float:
    total = 0.0
    for line in text.splitlines():
        if not line.startswith(name + "{") and not line.startswith(name + " "):
            continue
        if all(f'{k}="{v}"' in line for k, v in labels.items()):
            total += float(line.rsplit(" ", 1)[1])
    return total


def _per_process(directory: Path, name: str, tmp: Path, **labels: str) -> dict[int, float]:
    """Each worker's own value of a counter, read from its file alone."""
    out: dict[int, float] = {}
    for f in directory.glob("counter_*.db"):
        pid = int(re.search(r"_(\d+)\.db$", f.name).group(1))
        single = tmp / f"one-{pid}"
        single.mkdir()
        shutil.copy(f, single / f.name)
        registry = CollectorRegistry()
        MultiProcessCollector(registry, path=str(single))
        out[pid] = sum(
            s.value
            for family in registry.collect()
            for s in family.samples
            if s.name == name and labels.items() <= s.labels.items()
        )
    return out


async def _post_many(server: Server, payload: bytes, n: int) -> list[int]:
    async with httpx.AsyncClient(base_url=server.url, timeout=120) as client:
        rs = await asyncio.gather(*(client.post("/transcribe", files={"file": ("a.wav", payload)}) for _ in range(n)))
    return [r.status_code for r in rs]


def test_two_workers_one_scrape_that_sums_them(tmp_path: Path, speech_dir: Path) -> None:
    mp_dir = tmp_path / "mp"
    mp_dir.mkdir()
    (mp_dir / "counter_1.db").write_bytes(b"stale file from an earlier run")  # must be wiped at start
    env = {"ASR_PROCESSES": "2", "PROMETHEUS_MULTIPROC_DIR": str(mp_dir), "ASR_QUEUE_SIZE": "32"}
    payload = (speech_dir / "fox.wav").read_bytes()
    with serve(env, tmp_path, ready_timeout=180) as server:
        _wait_all_ready(server)
        # A fresh connection per request: the kernel hands each accept to one of the workers
        # (concurrent requests on an idle worker's loop may all land on that one). Send until
        # both have served some, in case the kernel favours one for a while.
        sent = 0
        while sent < 64:
            for _ in range(8):
                response = httpx.post(
                    server.url + "/transcribe",
                    files={"file": ("a.wav", payload)},
                    timeout=60,
                    headers={"Connection": "close"},
                )
                assert response.status_code == 200
                sent += 1
            probe = tmp_path / f"probe-{sent}"
            probe.mkdir()
            per_pid = _per_process(mp_dir, "asr_http_requests_total", probe, route="/transcribe", status="200")
            if sum(1 for v in per_pid.values() if v > 0) == 2:
                break
        text = httpx.get(server.url + "/metrics").text
    assert not (mp_dir / "counter_1.db").exists()
    served_by = {pid: v for pid, v in per_pid.items() if v > 0}
    assert len(served_by) == 2, per_pid  # requests reached both workers
    assert sum(served_by.values()) == sent
    assert _value(text, "asr_http_requests_total", route="/transcribe", status="200") == sent
    assert _value(text, "asr_realtime_factor_count") == sent
    assert _value(text, "asr_queue_capacity") == 64  # two workers' queues of 32
    assert _value(text, "asr_http_requests_in_flight") == 0
    assert _value(text, "asr_model_info", model="whisper-tiny.en") == 1  # livemax: one series, not two
    assert _value(text, "process_resident_memory_bytes") > 2 * 50_000_000  # summed over both workers


def test_a_killed_worker_leaves_no_phantom_in_flight_request(tmp_path: Path, speech_dir: Path) -> None:
    mp_dir = tmp_path / "mp"
    env = {"ASR_PROCESSES": "2", "PROMETHEUS_MULTIPROC_DIR": str(mp_dir)}
    long_audio = tmp_path / "long.wav"  # ~50 s of speech: several seconds of work for tiny.en
    listing = tmp_path / "list.txt"
    listing.write_text("".join(f"file '{speech_dir / n}.wav'\n" for n in ["fox", "weather", "meeting", "numbers"] * 3))
    subprocess.run(
        ["ffmpeg", "-loglevel", "error", "-f", "concat", "-safe", "0", "-i", str(listing), str(long_audio)], check=True
    )
    with serve(env, tmp_path, ready_timeout=180) as server:
        _wait_all_ready(server)

        async def hang_one() -> None:
            async with httpx.AsyncClient(base_url=server.url, timeout=120) as client:
                task = asyncio.create_task(
                    client.post("/transcribe", files={"file": ("l.wav", long_audio.read_bytes())})
                )
                busy_pid = None
                for _ in range(200):
                    await asyncio.sleep(0.05)
                    busy_pid = _busy_worker(mp_dir)
                    if busy_pid or task.done():
                        break
                assert busy_pid, f"no worker reported the request in flight ({task.done() and task.result()})"
                os.kill(busy_pid, signal.SIGKILL)
                with pytest.raises(httpx.HTTPError):  # the connection dies with the worker
                    await task

        asyncio.run(hang_one())
        text = httpx.get(server.url + "/metrics").text
        assert _value(text, "asr_http_requests_in_flight") == 0
        # The survivor still serves.
        assert (
            httpx.post(
                server.url + "/transcribe", files={"file": ("a.wav", (speech_dir / "fox.wav").read_bytes())}, timeout=60
            ).status_code
            == 200
        )


def _wait_all_ready(server: Server) -> None:
    """/readyz proves one worker ready; asr_ready (livemin over the workers) proves all."""
    deadline = time.monotonic() + 120
    while _value(httpx.get(server.url + "/metrics").text, "asr_ready") != 1:
        assert time.monotonic() < deadline, "workers not all ready"
        time.sleep(0.3)


def _busy_worker(mp_dir: Path) -> int | None:
    for f in mp_dir.glob("gauge_livesum_*.db"):
        single = mp_dir.parent / f"probe-{f.name}"
        single.mkdir(exist_ok=True)
        shutil.copy(f, single / f.name)
        registry = CollectorRegistry()
        MultiProcessCollector(registry, path=str(single))
        samples = [s for family in registry.collect() for s in family.samples]  # reads the file now
        shutil.rmtree(single)
        if any(s.name == "asr_http_requests_in_flight" and s.value >= 1 for s in samples):
            return int(re.search(r"_(\d+)\.db$", f.name).group(1))
    return None
