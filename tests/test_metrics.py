"""The metric catalogue: values after real requests, bounded labels, exposition formats."""

from __future__ import annotations

import random
import string
import subprocess
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from deploy.local_stack import free_port
from service.audio import load_file
from service.metrics import LATENCY_BUCKETS, QUEUE_WAIT_BUCKETS, RTF_BUCKETS
from tests.conftest import make_settings, running_app, until
from tests.fakes import FakeBackend, factory

pytestmark = pytest.mark.anyio

CATALOGUE = [
    "asr_http_requests_total",
    "asr_http_request_duration_seconds",
    "asr_http_requests_in_flight",
    "asr_requests_rejected_total",
    "asr_queue_depth",
    "asr_queue_capacity",
    "asr_queue_wait_seconds",
    "asr_audio_duration_seconds",
    "asr_audio_processed_seconds_total",
    "asr_inference_duration_seconds",
    "asr_inference_seconds_total",
    "asr_realtime_factor",
    "asr_model_info",
    "asr_model_load_seconds",
    "asr_gpu_available",
    "asr_segment_avg_logprob",
    "asr_segment_no_speech_prob",
    "asr_segment_compression_ratio",
    "asr_suspected_hallucinations_total",
    "asr_segments_dropped_total",
]


def _series(text: str) -> set[tuple[str, tuple[tuple[str, str], ...]]]:
    return {
        (s.name, tuple(sorted(s.labels.items())))
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


@pytest.mark.slow
async def test_values_after_real_requests_add_up(tmp_path: Path, speech_dir: Path) -> None:
    files = [speech_dir / "fox.wav", speech_dir / "weather.mp3", speech_dir / "numbers.ogg"]
    async with running_app(make_settings(tmp_path)) as h:
        for path in files:
            r = await h.client.post("/transcribe", files={"file": (path.name, path.read_bytes())})
            assert r.status_code == 200
        bad = await h.client.post("/transcribe", files={"file": ("x.flac", b"fLaC" + b"\0" * 2000)})
        assert bad.status_code == 422
        text = (await h.client.get("/metrics")).text
    labels = {"backend": "faster-whisper", "model": "whisper-tiny.en", "language": "en"}
    families = {f.name: f for f in text_string_to_metric_families(text)}
    for name in CATALOGUE:
        assert name.removesuffix("_total") in families, name

    def value(name: str, **want: str) -> float:
        return sum(
            s.value for f in families.values() for s in f.samples if s.name == name and want.items() <= s.labels.items()
        )

    expected_audio = sum(load_file(p).duration for p in files)
    assert value("asr_audio_processed_seconds_total", **labels) == pytest.approx(expected_audio, abs=0.01)
    assert value("asr_audio_duration_seconds_sum", **labels) == pytest.approx(expected_audio, abs=0.01)
    assert value("asr_realtime_factor_count") == len(files)
    assert value("asr_inference_duration_seconds_count", **labels) == len(files)
    # The aggregate RTF is the ratio of the two counters, and is what the per-request mean says.
    rtf = value("asr_inference_seconds_total", **labels) / value("asr_audio_processed_seconds_total", **labels)
    assert 0 < rtf < 1
    assert value("asr_http_requests_total", route="/transcribe", status="200") == len(files)
    assert value("asr_http_requests_total", route="/transcribe", status="422") == 1
    assert value("asr_requests_rejected_total", reason="decode_error") == 1
    assert value("asr_http_request_duration_seconds_count", route="/transcribe") == len(files) + 1
    assert value("asr_queue_wait_seconds_count") == len(files)
    assert value("asr_model_info", backend="faster-whisper", model="whisper-tiny.en", device="cpu") == 1
    assert value("asr_model_load_seconds") > 0
    assert value("asr_queue_capacity") == 16
    assert value("asr_http_requests_in_flight") == 0
    assert value("asr_segment_avg_logprob_count") >= len(files)
    # Scrapes and probes are not traffic.
    assert value("asr_http_requests_total", route="/metrics") == 0
    assert value("process_resident_memory_bytes") > 10_000_000


async def test_random_unknown_paths_add_no_series(tmp_path: Path) -> None:
    rng = random.Random(7)
    async with running_app(make_settings(tmp_path), factory(FakeBackend())) as h:
        await h.client.get("/definitely/not/here")
        before = _series((await h.client.get("/metrics")).text)
        for _ in range(50):
            path = "/" + "/".join("".join(rng.choices(string.ascii_letters, k=8)) for _ in range(rng.randint(1, 3)))
            method = rng.choice(["GET", "POST", "PUT", "BREW"])
            assert (await h.client.request(method, path)).status_code in (404, 405)
        after = _series((await h.client.get("/metrics")).text)
    new = {name for name, labels in after - before if not name.startswith(("process_", "python_"))}
    assert new == set(), new
    assert h.sample("asr_http_requests_total", {"method": "other", "route": "<unmatched>", "status": "404"}) == 51


async def test_queue_full_lands_in_its_reason(tmp_path: Path, speech_dir: Path) -> None:
    import asyncio
    import threading

    gate = threading.Event()
    settings = make_settings(tmp_path, scheduler={"workers": 1, "queue_size": 0})
    async with running_app(settings, factory(FakeBackend(gate=gate))) as h:
        upload = {"file": ("fox.wav", (speech_dir / "fox.wav").read_bytes())}
        first = asyncio.create_task(h.client.post("/transcribe", files=upload))
        await until(lambda: h.sample("asr_workers_busy"), what="the first request runs")
        r = await h.client.post("/transcribe", files=upload)
        gate.set()
        assert (await first).status_code == 200
    assert r.status_code == 429
    assert h.sample("asr_requests_rejected_total", {"reason": "queue_full"}) == 1


async def test_openmetrics_carries_the_request_id_as_exemplar(tmp_path: Path, speech_dir: Path) -> None:
    async with running_app(make_settings(tmp_path), factory(FakeBackend())) as h:
        r = await h.client.post("/transcribe", files={"file": ("fox.wav", (speech_dir / "fox.wav").read_bytes())})
        rid = r.headers["x-request-id"]
        plain = await h.client.get("/metrics")
        om = await h.client.get("/metrics", headers={"Accept": "application/openmetrics-text; version=1.0.0"})
    assert plain.headers["content-type"].startswith("text/plain")
    assert "# {" not in plain.text
    assert om.headers["content-type"].startswith("application/openmetrics-text")
    assert f'# {{request_id="{rid}"}}' in om.text
    assert om.text.rstrip().endswith("# EOF")


def test_promtool_finds_nothing_to_complain_about(tmp_path: Path, speech_dir: Path) -> None:
    import asyncio

    async def scrape() -> str:
        async with running_app(make_settings(tmp_path), factory(FakeBackend())) as h:
            await h.client.post("/transcribe", files={"file": ("fox.wav", (speech_dir / "fox.wav").read_bytes())})
            await h.client.post("/transcribe", files={"file": ("x.txt", b"not audio" * 100)})
            return (await h.client.get("/metrics")).text

    text = asyncio.run(scrape())
    check = subprocess.run(["promtool", "check", "metrics"], input=text, capture_output=True, text=True)
    assert check.returncode == 0, check.stdout + check.stderr
    assert check.stdout.strip() == "" and check.stderr.strip() == ""


def test_buckets_span_speech_work() -> None:
    assert LATENCY_BUCKETS[-1] == 600  # ten minutes
    assert (RTF_BUCKETS[0], RTF_BUCKETS[-1]) == (0.01, 4.0)
    assert list(QUEUE_WAIT_BUCKETS) == sorted(set(QUEUE_WAIT_BUCKETS))


async def test_metrics_can_live_on_their_own_port(tmp_path: Path, speech_dir: Path) -> None:
    from service.cli import start_metrics_server
    from service.config import ServerSettings

    port = free_port()
    settings = make_settings(tmp_path, server={"metrics_port": port})
    async with running_app(settings, factory(FakeBackend())) as h:
        assert (await h.client.get("/metrics")).status_code == 404  # off the public listener
        await h.client.post("/transcribe", files={"file": ("fox.wav", (speech_dir / "fox.wav").read_bytes())})
        start_metrics_server(h.metrics, ServerSettings(host="127.0.0.1", metrics_port=port))
        async with httpx.AsyncClient() as client:
            r = await client.get(f"http://127.0.0.1:{port}/metrics")
    assert r.status_code == 200
    assert 'asr_http_requests_total{method="POST",route="/transcribe",status="200"} 1.0' in r.text
