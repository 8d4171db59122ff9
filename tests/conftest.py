"""Shared fixtures: speech from known text, settings, in-process apps and real servers."""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import os
import resource
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from deploy.local_stack import free_port
from service.app import create_app
from service.config import (
    DatabaseSettings,
    DecodeSettings,
    JobSettings,
    KeyLimitSettings,
    LimitSettings,
    ModelSettings,
    QualitySettings,
    SchedulerSettings,
    ServerSettings,
    Settings,
    ShadowSettings,
    WebhookSettings,
)
from service.database import Database, open_shared
from service.metrics import Metrics
from tests.postgres import PostgresServer, postgres_server

ROOT = Path(__file__).resolve().parent.parent
# Sentences espeak-ng speaks clearly; the references for WER.
SENTENCES = {
    "fox": "The quick brown fox jumps over the lazy dog.",
    "weather": "The weather today is sunny with a light breeze from the west.",
    "meeting": "Please send the report to the team before the meeting on Friday.",
    "numbers": "She bought seven apples and three oranges at the market.",
}
CONTAINERS = ("wav", "mp3", "flac", "ogg", "opus", "m4a", "webm")


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture(scope="session")
def speech_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """espeak-ng speech of SENTENCES as WAV, and each converted by ffmpeg to every container."""
    out = tmp_path_factory.mktemp("speech")
    for name, text in SENTENCES.items():
        wav = out / f"{name}.wav"
        subprocess.run(["espeak-ng", "-v", "en-us", "-s", "140", "-w", str(wav), text], check=True)
        for ext in CONTAINERS[1:]:
            subprocess.run(
                ["ffmpeg", "-loglevel", "error", "-y", "-i", str(wav), str(out / f"{name}.{ext}")], check=True
            )
    return out


@pytest.fixture(scope="session")
def long_speech(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Four minutes of varied espeak-ng speech (MP3): long enough that a transcription runs for a while."""
    from bench.inputs import long_audio

    return long_audio(tmp_path_factory.mktemp("long-speech"), minutes=4)


@pytest.fixture(scope="session")
def silence_bomb(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An hour of Opus silence in about 1.2 MB: small to send, long to decode."""
    out = tmp_path_factory.mktemp("bomb") / "silence.opus"
    source = ["-f", "lavfi", "-i", "anullsrc=r=8000:cl=mono", "-t", "3600"]
    opus = ["-c:a", "libopus", "-b:a", "6k", "-compression_level", "0", "-frame_duration", "60"]
    subprocess.run(["ffmpeg", "-loglevel", "error", *source, *opus, str(out)], check=True)
    return out


def make_settings(tmp_path: Path, **groups: dict[str, Any]) -> Settings:
    """Settings for tests: tiny.en, quality store in tmp_path, sampling off unless asked."""
    model = {"model": "embedded:tiny.en", "cache_dir": tmp_path / "cache", **groups.pop("model", {})}
    quality = {"dir": tmp_path / "quality", "sample_rate": 0.0, **groups.pop("quality", {})}
    jobs = {"dir": tmp_path / "jobs", **groups.pop("jobs", {})}
    return Settings(
        model=ModelSettings(**model),
        decode=DecodeSettings(**groups.pop("decode", {})),
        limits=LimitSettings(**groups.pop("limits", {})),
        scheduler=SchedulerSettings(**groups.pop("scheduler", {})),
        server=ServerSettings(**groups.pop("server", {})),
        keys=KeyLimitSettings(**groups.pop("keys", {})),
        quality=QualitySettings(**quality),
        jobs=JobSettings(**jobs),
        webhook=WebhookSettings(**groups.pop("webhook", {})),
        database=DatabaseSettings(**groups.pop("database", {})),
        shadow=ShadowSettings(**groups.pop("shadow", {})),
    )


@pytest.fixture(scope="session")
def postgres() -> Iterator[PostgresServer]:
    """One real PostgreSQL server for the session (started on first use)."""
    with postgres_server() as server:
        yield server


@pytest.fixture(params=["sqlite", "postgres"])
def database(request: pytest.FixtureRequest) -> dict[str, Any]:
    """The store backends a test runs against, as the `database` settings group: {} keeps the
    embedded SQLite files; "postgres" points at a fresh database on the session's server."""
    if request.param == "sqlite":
        return {}
    server: PostgresServer = request.getfixturevalue("postgres")
    return {"url": server.new_database()}


@pytest.fixture
def shared_database(database: dict[str, Any]) -> Iterator[Database | None]:
    """The shared Database the `database` case names (None for SQLite), as the app opens it."""
    db = open_shared(DatabaseSettings(**database))
    yield db
    if db is not None:
        db.close()


def wait_until(condition: Callable[[], object], timeout: float, what: str, interval: float = 0.05) -> float:
    """Poll `condition` until it is true; return the seconds it took. Raises AssertionError naming
    `what` after `timeout` seconds. For blocking tests (real servers, threads)."""
    started = time.monotonic()
    while not condition():
        if time.monotonic() - started > timeout:
            raise AssertionError(f"{what}: not within {timeout} s")
        time.sleep(interval)
    return time.monotonic() - started


async def until(
    condition: Callable[[], object | Awaitable[object]],
    timeout: float = 10.0,
    what: str = "the condition",
    interval: float = 0.01,
) -> float:
    """Poll `condition` (a function or a coroutine function) until it is true, letting the event
    loop run in between; return the seconds it took. Raises AssertionError naming `what` after
    `timeout` seconds. The async twin of wait_until: a test waits on the state it needs, however
    slow the machine, instead of sleeping for a guess."""
    started = time.monotonic()
    while True:
        value = condition()
        if inspect.isawaitable(value):
            value = await value
        if value:
            return time.monotonic() - started
        if time.monotonic() - started > timeout:
            raise AssertionError(f"{what}: not within {timeout} s")
        await asyncio.sleep(interval)


@dataclass
class AppHandle:
    app: Any
    client: httpx.AsyncClient

    @property
    def metrics(self) -> Metrics:
        metrics: Metrics = self.app.state.metrics
        return metrics

    def sample(self, name: str, labels: dict[str, str] | None = None) -> float:
        """The current value of one sample in this app's registry (0 when absent)."""
        value = self.metrics.registry.get_sample_value(name, labels or {})
        return 0.0 if value is None else value


@contextlib.asynccontextmanager
async def running_app(
    settings: Settings, backend_factory: Any = None, wait_ready: bool = True
) -> AsyncIterator[AppHandle]:
    """The app with its lifespan running, and an httpx client over ASGI."""
    app = create_app(settings, backend_factory=backend_factory, metrics=Metrics())
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://asr.test", timeout=120) as client:
            if wait_ready:
                pipeline = app.state.pipeline
                async with asyncio.timeout(60):
                    assert await pipeline.loaded() == "ready", pipeline.load_error(detailed=True)
            yield AppHandle(app, client)


ADMIN_TOKEN = "test-admin-token"
ADMIN = {"Authorization": f"Bearer {ADMIN_TOKEN}"}


async def settled_readiness(h: AppHandle, headers: dict[str, str] | None = None) -> httpx.Response:
    """Poll /readyz until the model is no longer loading (20 s at most); return the last answer."""
    async with asyncio.timeout(20):
        while (r := await h.client.get("/readyz", headers=headers)).json()["status"] == "loading":
            await asyncio.sleep(0.05)
    return r


def run_cli(env: dict[str, str], *args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    """`python -m service ARGS` in the checkout with exactly `env`, as an operator's shell would run it."""
    return subprocess.run(
        [sys.executable, "-m", "service", *args], env=env, cwd=ROOT, capture_output=True, text=True, timeout=timeout
    )


@dataclass
class Server:
    url: str
    port: int
    process: subprocess.Popen[bytes]
    log_path: Path

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")


@contextlib.contextmanager
def serve(
    env: dict[str, str],
    tmp_path: Path,
    ready_timeout: float = 120.0,
    args: tuple[str, ...] = (),
    port: int | None = None,
    fd_limit: int | None = None,
) -> Iterator[Server]:
    """Run `python -m service serve` on a loopback port (a free one by default) until the block ends;
    `fd_limit` caps its open files (RLIMIT_NOFILE, soft and hard), as a small container would."""
    port = port or free_port()
    log_path = tmp_path / f"server-{port}.log"
    full_env = {
        **os.environ,
        "ASR_MODEL": "embedded:tiny.en",
        "ASR_CACHE_DIR": str(tmp_path / "cache"),
        "ASR_QUALITY_DIR": str(tmp_path / "quality"),
        "ASR_JOBS_DIR": str(tmp_path / "jobs"),
        "ASR_QUALITY_SAMPLE_RATE": "0",
        **env,
        "ASR_HOST": "127.0.0.1",
        "ASR_PORT": str(port),
    }
    with open(log_path, "wb") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "service", "serve", *args],
            env=full_env,
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=ROOT,
            start_new_session=True,
            preexec_fn=(lambda: resource.setrlimit(resource.RLIMIT_NOFILE, (fd_limit, fd_limit))) if fd_limit else None,
        )
    server = Server(f"http://127.0.0.1:{port}", port, process, log_path)
    try:
        deadline = time.monotonic() + ready_timeout
        while True:
            if process.poll() is not None:
                raise RuntimeError(f"server exited early:\n{server.log()}")
            try:
                ready = httpx.get(server.url + "/readyz", timeout=1)
                if ready.status_code == 200:
                    break
                if ready.json().get("status") == "failed":
                    raise RuntimeError(f"model failed to load:\n{server.log()}")
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"server not ready in {ready_timeout} s:\n{server.log()}")
            time.sleep(0.2)
        yield server
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()


@pytest.fixture(scope="module")
def tiny_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """One real tiny.en server shared by a test module."""
    with serve({}, tmp_path_factory.mktemp("tiny-server")) as server:
        yield server


def wer(reference: str, hypothesis: str) -> float:
    from service.quality.scoring import score

    return score(reference, hypothesis, "en", "basic").rate


MakeSettings = Callable[..., Settings]
