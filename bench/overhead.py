"""What the metrics cost: requests/s with instrumentation on vs off, and one scrape's time.

The app runs in-process with an engine that answers at once, and requests are driven
straight through ASGI (no sockets, no client library), so that what is measured is the
service's own work per request: form parsing, decoding a 1 s WAV, the scheduler, and, when
on, the middleware and every metric update. On and off runs are interleaved and the median
taken, so drift in the machine's speed hits both alike.

    python -m bench.overhead
"""

from __future__ import annotations

import asyncio
import io
import statistics
import threading
import time
import wave
from typing import Any

import numpy as np
from prometheus_client import CollectorRegistry

from bench.common import markdown_table, write_report
from service.app import create_app
from service.backends.base import Capabilities, Segment, TranscribeOptions, Transcript
from service.config import ModelSettings, QualitySettings, SchedulerSettings, Settings
from service.languages import LANGUAGE_NAMES
from service.metrics import Metrics
from service.middleware import ObserverMiddleware

REQUESTS = 60
CONCURRENCY = 4
ROUNDS = 60
BOUNDARY = "benchboundary"


class InstantBackend:
    """An engine that returns at once: what remains is the service's own cost."""

    name, model, device, compute_type = "instant", "instant", "cpu", "none"
    capabilities = Capabilities(languages=frozenset(LANGUAGE_NAMES), translate=True, word_timestamps=True)

    def transcribe(
        self,
        audio: Any,
        options: TranscribeOptions,
        cancel: threading.Event | None = None,
        on_segment: Any = None,
    ) -> Transcript:
        d = len(audio) / 16_000
        seg = Segment(0, 0.0, d, "hello", avg_logprob=-0.2, no_speech_prob=0.01, compression_ratio=1.1)
        return Transcript("hello", "en", 1.0, d, [seg])

    def detect_language(self, audio: Any) -> tuple[str, float]:
        return "en", 1.0

    def close(self) -> None:
        pass


class _Null:
    """Stands in for every metric when instrumentation is off."""

    def labels(self, *args: Any, **kwargs: Any) -> _Null:
        return self

    def __getattr__(self, name: str) -> Any:
        return lambda *args, **kwargs: None


def _body() -> bytes:
    buf = io.BytesIO()
    with wave.open(buf, "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(16_000)
        w.writeframes((np.sin(np.arange(16_000) / 8) * 8000).astype("<i2").tobytes())
    return (
        f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="file"; filename="a.wav"\r\n'
        f"Content-Type: audio/wav\r\n\r\n".encode()
        + buf.getvalue()
        + f"\r\n--{BOUNDARY}--\r\n".encode()
    )


def _app(instrumented: bool) -> Any:
    settings = Settings(
        model=ModelSettings(model="instant"),
        scheduler=SchedulerSettings(workers=2, queue_size=64),
        quality=QualitySettings(sample_rate=0.0),
    )
    app = create_app(settings, backend_factory=lambda s: InstantBackend(), metrics=Metrics(CollectorRegistry()))
    if not instrumented:
        metrics = app.state.metrics
        for name, value in vars(metrics).items():
            if hasattr(value, "labels") or hasattr(value, "inc"):
                setattr(metrics, name, _Null())
    return app


async def _one(app: Any, body: bytes) -> int:
    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "POST",
        "scheme": "http",
        "path": "/transcribe",
        "raw_path": b"/transcribe",
        "query_string": b"",
        "root_path": "",
        "headers": [
            (b"content-type", f"multipart/form-data; boundary={BOUNDARY}".encode()),
            (b"content-length", str(len(body)).encode()),
        ],
        "client": ("127.0.0.1", 1),
        "server": ("127.0.0.1", 80),
    }
    sent = False
    status = 0

    async def receive() -> dict[str, Any]:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        await asyncio.sleep(3600)
        return {"type": "http.disconnect"}

    async def send(message: dict[str, Any]) -> None:
        nonlocal status
        if message["type"] == "http.response.start":
            status = message["status"]

    await app(scope, receive, send)
    return status


async def _throughput(app: Any, body: bytes) -> tuple[float, float]:
    """Requests/s and CPU milliseconds per request (all threads of this process)."""
    queue: asyncio.Queue[int] = asyncio.Queue()
    for i in range(REQUESTS):
        queue.put_nowait(i)

    async def worker() -> None:
        while not queue.empty():
            queue.get_nowait()
            assert await _one(app, body) == 200

    started, cpu = time.perf_counter(), time.process_time()
    await asyncio.gather(*(worker() for _ in range(CONCURRENCY)))
    return REQUESTS / (time.perf_counter() - started), (time.process_time() - cpu) / REQUESTS * 1000


async def _rates() -> dict[str, dict[str, list[float]]]:
    body = _body()
    # "on-again" is an A/A control: identical to "on", so its difference shows the noise floor.
    apps = {"on": _app(True), "off": _app(False), "on-again": _app(True)}
    rates: dict[str, dict[str, list[float]]] = {mode: {"rps": [], "cpu_ms": []} for mode in apps}
    contexts = [app.router.lifespan_context(app) for app in apps.values()]
    for ctx in contexts:
        await ctx.__aenter__()
    try:
        for app in apps.values():
            await app.state.pipeline.loaded()
            await _throughput(app, body)  # warm up: imports, first allocations
        modes = list(apps)
        for i in range(ROUNDS):
            # Rotate the order, so no mode always runs on a warmer (or hotter) machine.
            for mode in modes[i % 3 :] + modes[: i % 3]:
                rps, cpu_ms = await _throughput(apps[mode], body)
                rates[mode]["rps"].append(rps)
                rates[mode]["cpu_ms"].append(cpu_ms)
    finally:
        for ctx in contexts:
            await ctx.__aexit__(None, None, None)
    return rates


def direct_cost(n: int = 20_000) -> dict[str, float]:
    """Microseconds per request spent in the instrumentation code itself: the middleware
    (around a no-op app) and the pipeline's metric updates for one typical result."""
    import logging

    from service.formats import Result
    from service.pipeline import build_pipeline

    metrics = Metrics(CollectorRegistry())

    async def noop(scope: Any, receive: Any, send: Any) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"{}"})

    async def send(message: Any) -> None:
        pass

    null_metrics = Metrics(CollectorRegistry())
    for name, value in vars(null_metrics).items():
        if hasattr(value, "labels") or hasattr(value, "inc"):
            setattr(null_metrics, name, _Null())
    logging.getLogger("service.access").disabled = True  # the log line is in both; time the metrics
    scope = {"type": "http", "method": "POST", "path": "/transcribe", "headers": []}

    async def loop(app: Any) -> float:
        started = time.perf_counter()
        for _ in range(n):
            await app(dict(scope), None, send)
        return (time.perf_counter() - started) / n * 1e6

    middleware_us = asyncio.run(loop(ObserverMiddleware(noop, metrics))) - asyncio.run(
        loop(ObserverMiddleware(noop, null_metrics))
    )
    logging.getLogger("service.access").disabled = False
    pipeline = build_pipeline(Settings(), metrics)
    backend = InstantBackend()
    result = Result(
        backend.transcribe(np.zeros(16_000 * 5, np.float32), TranscribeOptions()), "instant", "instant", 0.5
    )
    started = time.perf_counter()
    for _ in range(n):
        pipeline._observe(backend, result, [], [], 0.5)
    pipeline_us = (time.perf_counter() - started) / n * 1e6
    return {"middleware_us": middleware_us, "pipeline_us": pipeline_us, "total_us": middleware_us + pipeline_us}


def scrape_cost(target_series: int = 1000, scrapes: int = 50) -> dict[str, float]:
    """Time one /metrics render with at least `target_series` series in the registry."""
    metrics = Metrics(CollectorRegistry())
    languages = sorted(LANGUAGE_NAMES)
    i = 0
    while True:
        lang = languages[i % len(languages)]
        model = f"model-{i // len(languages)}"
        metrics.audio_processed.labels("faster-whisper", model, lang).inc(3)
        metrics.inference_seconds.labels("faster-whisper", model, lang).inc(1)
        metrics.audio_duration.labels("faster-whisper", model, lang).observe(3)
        i += 1
        body, _ = metrics.render(None)
        series = sum(1 for line in body.decode().splitlines() if line and not line.startswith("#"))
        if series >= target_series:
            break
    times = []
    for _ in range(scrapes):
        started = time.perf_counter()
        metrics.render(None)
        times.append(time.perf_counter() - started)
    return {
        "series": series,
        "bytes": len(body),
        "median_ms": statistics.median(times) * 1000,
        "p95_ms": sorted(times)[int(0.95 * len(times)) - 1] * 1000,
    }


def _paired(rates: dict[str, dict[str, list[float]]], key: str, a: str, b: str) -> tuple[float, float, float]:
    """Median and quartiles of the per-round ratio a/b: rounds of the two modes run back to back,
    so each ratio compares them on the same state of a shared machine, and slow drift cancels."""
    ratios = sorted(x / y for x, y in zip(rates[a][key], rates[b][key], strict=True))
    q = statistics.quantiles(ratios, n=4)
    return statistics.median(ratios), q[0], q[2]


def main() -> None:
    rates = asyncio.run(_rates())
    med = {mode: {k: statistics.median(v) for k, v in r.items()} for mode, r in rates.items()}
    cpu, cpu_lo, cpu_hi = _paired(rates, "cpu_ms", "on", "off")
    rps, _, _ = _paired(rates, "rps", "on", "off")
    aa, aa_lo, aa_hi = _paired(rates, "cpu_ms", "on-again", "on")
    scrape = scrape_cost()
    direct = direct_cost()
    direct_ratio = direct["total_us"] / 1000 / med["on"]["cpu_ms"]
    rows = [
        {"instrumentation": mode, "median req/s": med[mode]["rps"], "median CPU ms/request": med[mode]["cpu_ms"]}
        for mode in ("off", "on", "on-again")
    ]
    md = (
        "# Metrics overhead\n"
        f"{REQUESTS} requests (1 s WAV, instant engine) x {ROUNDS} rounds, the three apps back to back in "
        f"rotating order, concurrency {CONCURRENCY}, driven through ASGI in-process. `off` turns every metric "
        "into a no-op; all keep the middleware's request id and access log line; `on-again` is a second "
        "instrumented app, an A/A control.\n\n"
        + markdown_table(rows, ["instrumentation", "median req/s", "median CPU ms/request"])
        + f"\n**Overhead: {(cpu - 1) * 100:+.2f}% CPU per request** (median of per-round on/off ratios; "
        f"quartiles {(cpu_lo - 1) * 100:+.2f}% to {(cpu_hi - 1) * 100:+.2f}%), {(1 - rps) * 100:+.2f}% throughput "
        f"(goal: under 2%). The A/A control reads {(aa - 1) * 100:+.2f}% (quartiles {(aa_lo - 1) * 100:+.2f}% to "
        f"{(aa_hi - 1) * 100:+.2f}%): that is the resolution of an end-to-end measurement on this shared VM. "
        "Timed directly, the instrumentation code costs "
        f"{direct['middleware_us']:.1f} µs in the middleware's metric updates and "
        f"{direct['pipeline_us']:.1f} µs in the pipeline's metric updates per request: "
        f"**{direct_ratio * 100:.2f}%** of the {med['on']['cpu_ms']:.2f} ms of CPU a request takes here.\n\n"
        f"One scrape of {scrape['series']:.0f} series ({scrape['bytes'] / 1024:.0f} KiB): median "
        f"{scrape['median_ms']:.2f} ms, p95 {scrape['p95_ms']:.2f} ms.\n"
    )
    data = {
        "rates": rates,
        "cpu_overhead_ratio_paired_median": cpu - 1,
        "throughput_overhead_ratio_paired_median": 1 - rps,
        "aa_ratio_paired_median": aa - 1,
        "direct_cost": direct,
        "direct_overhead_ratio": direct_ratio,
        "scrape": scrape,
    }
    path = write_report("overhead", data, md)
    print(path.read_text())


if __name__ == "__main__":
    main()
