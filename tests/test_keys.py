"""Named API keys: the keys file (hashes only) and its CLI, per-key limits on work in flight and
audio seconds per hour (429 with Retry-After, counted), and the key's name as a bounded metric
label; through the app on a fake engine, and the CLI as an operator runs it."""

from __future__ import annotations

import asyncio
import base64
import logging
import os
import subprocess
import sys
import threading
from typing import TYPE_CHECKING, Any

import pytest
from prometheus_client import CollectorRegistry
from pydantic import SecretStr
from starlette.testclient import TestClient
from starlette.websockets import WebSocketDisconnect

from service.app import create_app
from service.key_limits import HOUR, KeyUsage
from service.keys import KeyLimits, KeyRing, KeysFileError, hash_key, key_table
from service.metrics import Metrics
from tests.conftest import ROOT, make_settings, running_app, until, wait_until
from tests.fakes import FakeBackend, factory

if TYPE_CHECKING:
    from pathlib import Path

KEYS = {"alice": "asr_alice-0123456789abcdef", "bob": "asr_bob-0123456789abcdef"}
DEFAULT_KEY, ADMIN_TOKEN = "asr_default-0123456789", "admin-token-0123456789"
CONFIGURED = {"alice", "bob", "default", "admin", "anonymous"}


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def write_keys(path: Path, limits: dict[str, dict[str, Any]] | None = None) -> Path:
    path.write_text("\n".join(key_table(n, hash_key(k), (limits or {}).get(n)) for n, k in KEYS.items()))
    return path


def key_settings(tmp_path: Path, limits: dict[str, dict[str, Any]] | None = None, **groups: Any) -> Any:
    keys_file = write_keys(tmp_path / "keys.toml", limits)
    server = {"api_key": DEFAULT_KEY, "api_keys": keys_file, "admin_token": ADMIN_TOKEN, **groups.pop("server", {})}
    return make_settings(tmp_path, server=server, **groups)


# ---- the keys file ------------------------------------------------------------------------


def test_the_keys_file_holds_hashes_and_each_key_is_known_by_its_name(tmp_path: Path) -> None:
    path = write_keys(tmp_path / "keys.toml", {"alice": {"max_in_flight": 3, "audio_seconds_per_hour": 60}})
    ring = KeyRing(SecretStr(DEFAULT_KEY), path, KeyLimits(max_in_flight=1, audio_seconds_per_hour=0))
    text = path.read_text()
    assert all(key not in text for key in KEYS.values())  # hashes only at rest
    alice, bob, default = ring.identify(KEYS["alice"]), ring.identify(KEYS["bob"]), ring.identify(DEFAULT_KEY)
    assert alice is not None and alice.name == "alice" and alice.limits == KeyLimits(3, 60.0)
    assert bob is not None and bob.name == "bob" and bob.limits == KeyLimits(1, 0.0)  # the defaults
    assert default is not None and default.name == "default"
    # Neither a wrong key nor the stored hash itself opens anything.
    assert ring.identify("asr_wrong") is None
    assert ring.identify(hash_key(KEYS["alice"])) is None
    assert ring.names() == ["default", "alice", "bob"]


@pytest.mark.parametrize(
    ("text", "complaint"),
    [
        ("[keys.alice]\nsha256 = 'abc'\n", "64 lowercase hex"),
        (f"[keys.Alice]\nsha256 = '{'0' * 64}'\n", "a name is"),
        (f"[keys.default]\nsha256 = '{'0' * 64}'\n", "reserved"),
        (f"[keys.alice]\nsha256 = '{'0' * 64}'\nmax_in_flihgt = 2\n", "unknown fields"),
        (f"[keys.alice]\nsha256 = '{'0' * 64}'\nmax_in_flight = -1\n", "max_in_flight"),
        (f"[keys.a]\nsha256 = '{'0' * 64}'\n[keys.b]\nsha256 = '{'0' * 64}'\n", "same hash"),
        ("[keys.alice\n", "not valid TOML"),
        (f"sha256 = '{'0' * 64}'\n", "top-level"),
    ],
)
def test_a_bad_keys_file_is_refused_saying_what_is_wrong(tmp_path: Path, text: str, complaint: str) -> None:
    path = tmp_path / "keys.toml"
    path.write_text(text)
    with pytest.raises(KeysFileError, match=complaint):
        KeyRing(None, path, KeyLimits())


@pytest.mark.parametrize("processes", ["1", "2"])
def test_the_service_does_not_start_with_a_missing_keys_file(tmp_path: Path, processes: str) -> None:
    env = {
        **os.environ,
        "ASR_PROCESSES": processes,
        "ASR_API_KEYS": str(tmp_path / "missing.toml"),
        "ASR_JOBS_DIR": str(tmp_path / "jobs"),
        "ASR_QUALITY_SAMPLE_RATE": "0",
    }
    started = subprocess.run(
        [sys.executable, "-m", "service", "serve"], env=env, cwd=ROOT, capture_output=True, text=True, timeout=120
    )
    assert started.returncode == 2
    assert started.stderr.strip().splitlines()[-1].startswith("error: ASR_API_KEYS=")
    assert "Traceback" not in started.stderr and "No such file" in started.stderr


def test_the_keys_file_is_read_again_when_it_changes(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = write_keys(tmp_path / "keys.toml")
    now = [0.0]
    ring = KeyRing(None, path, KeyLimits(), clock=lambda: now[0])
    carol = "asr_carol-0123456789abcdef"

    def rewrite(text: str) -> None:
        path.write_text(text)
        stat = path.stat()
        os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000_000))  # a new mtime, however fast
        now[0] += 1.5  # past the once-a-second check

    rewrite(path.read_text() + "\n" + key_table("carol", hash_key(carol)))
    assert ring.identify(carol) is not None
    # A broken file (half written, a typo) keeps the keys read before, and says so.
    with caplog.at_level(logging.ERROR, logger="service.keys"):
        rewrite("[keys.carol\n")
        assert ring.identify(carol) is not None and ring.identify(KEYS["bob"]) is not None
    assert "not reloaded" in caplog.text
    # Revoking a key: its table removed, it is refused at once.
    rewrite(key_table("alice", hash_key(KEYS["alice"])))
    assert ring.identify(KEYS["bob"]) is None and ring.identify(KEYS["alice"]) is not None


def _cli(env: dict[str, str], *args: str, stdin: str = "") -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "service", *args],
        env={**os.environ, **env},
        cwd=ROOT,
        input=stdin,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_keys_add_prints_a_new_key_once_and_appends_only_its_hash(tmp_path: Path) -> None:
    path = write_keys(tmp_path / "keys.toml")
    env = {"ASR_API_KEYS": str(path)}
    added = _cli(env, "keys", "add", "carol", "--max-in-flight", "2", "--audio-seconds-per-hour", "900")
    assert added.returncode == 0, added.stderr
    key = added.stdout.strip()
    assert key.startswith("asr_") and len(key) > 40 and "only time" in added.stderr
    assert key not in path.read_text() and hash_key(key) in path.read_text()
    assert oct(path.stat().st_mode & 0o777) == "0o600"
    carol = KeyRing(None, path, KeyLimits()).identify(key)
    assert carol is not None and carol.name == "carol" and carol.limits == KeyLimits(2, 900.0)
    # The keys before it are still there; the same name twice is refused.
    assert KeyRing(None, path, KeyLimits()).identify(KEYS["alice"]) is not None
    again = _cli(env, "keys", "add", "carol")
    assert again.returncode == 1 and "already" in again.stderr
    assert _cli(env, "keys", "add", "admin").returncode == 1  # reserved
    # A key made elsewhere: its hash, as the file wants it.
    hashed = _cli(env, "keys", "hash", stdin=key + "\n")
    assert hashed.returncode == 0 and hashed.stdout.strip() == hash_key(key)
    listed = _cli({**env, "ASR_API_KEY": DEFAULT_KEY}, "keys", "list")
    assert [line.split("\t")[0] for line in listed.stdout.splitlines()] == ["default", "alice", "bob", "carol"]
    assert hash_key(key) not in listed.stdout


def test_keys_add_creates_the_file_when_there_is_none(tmp_path: Path) -> None:
    path = tmp_path / "new.toml"
    added = _cli({}, "keys", "add", "first", "--file", str(path))
    assert added.returncode == 0, added.stderr
    first = KeyRing(None, path, KeyLimits()).identify(added.stdout.strip())
    assert first is not None and first.name == "first"


# ---- limits ---------------------------------------------------------------------------------


def test_the_audio_budget_is_a_sliding_hour() -> None:
    now = [10_000.0]
    usage = KeyUsage(Metrics(CollectorRegistry()), ["alice"], clock=lambda: now[0])
    budget = KeyLimits(audio_seconds_per_hour=60)
    usage.admit("alice", budget)()
    usage.charge("alice", 30)
    now[0] += 1800
    usage.charge("alice", 40)  # 70 s in the last hour: spent
    with pytest.raises(Exception, match="used its 60 audio seconds") as refused:
        usage.admit("alice", budget)
    # Room again once the first 30 s have left the hour (their minute ended 1800-1860 s from now).
    retry = int(refused.value.headers["Retry-After"])  # type: ignore[attr-defined]
    assert 1800 <= retry <= 1860
    now[0] += retry - 1
    with pytest.raises(Exception, match="audio seconds"):
        usage.admit("alice", budget)
    now[0] += 1
    usage.admit("alice", budget)()
    assert usage.spent("alice") == 40
    now[0] += HOUR + 60
    assert usage.spent("alice") == 0
    # Another key, and no limit at all, are never refused for alice's use.
    usage.admit("bob", budget)()
    usage.admit("alice", None)()


@pytest.mark.anyio
async def test_a_key_at_its_limit_of_work_in_flight_gets_429_and_others_go_on(tmp_path: Path, speech_dir: Path) -> None:
    gate = threading.Event()
    backend = FakeBackend(gate=gate)
    settings = key_settings(tmp_path, {"alice": {"max_in_flight": 1}}, keys={"max_in_flight": 2})
    audio = (speech_dir / "fox.wav").read_bytes()
    async with running_app(settings, factory(backend)) as h:
        usage = h.app.state.key_usage

        def post(key: str) -> Any:
            return asyncio.ensure_future(h.client.post("/transcribe", files={"file": audio}, headers=bearer(key)))

        first = post(KEYS["alice"])
        await until(lambda: usage.in_flight("alice") == 1, what="alice's first request in flight")
        refused = await h.client.post(
            "/v1/audio/transcriptions",
            files={"file": audio},
            data={"model": "whisper-1"},
            headers=bearer(KEYS["alice"]),
        )
        assert refused.status_code == 429, refused.text
        assert refused.json()["error"]["code"] == "key_concurrency_limit"
        assert refused.headers["retry-after"] == "1"
        # Reading its jobs is not work: a key at its limit still sees them.
        assert (await h.client.get("/v1/jobs", headers=bearer(KEYS["alice"]))).status_code == 200
        # Bob has his own places (the default, 2): both of his are admitted while alice waits.
        bobs = [post(KEYS["bob"]), post(KEYS["bob"])]
        await until(lambda: usage.in_flight("bob") == 2, what="bob's two requests in flight")
        third = await h.client.post("/transcribe", files={"file": audio}, headers=bearer(KEYS["bob"]))
        assert third.status_code == 429
        gate.set()
        assert [(await r).status_code for r in (first, *bobs)] == [200, 200, 200]
        await until(lambda: usage.in_flight("alice") == usage.in_flight("bob") == 0, what="places given back")
        assert h.sample("asr_requests_rejected_total", {"reason": "key_limit"}) == 2
        assert (
            await h.client.post("/transcribe", files={"file": audio}, headers=bearer(KEYS["alice"]))
        ).status_code == 200


@pytest.mark.anyio
async def test_a_key_that_spent_its_hour_of_audio_gets_429_with_retry_after(tmp_path: Path, speech_dir: Path) -> None:
    settings = key_settings(tmp_path, {"alice": {"audio_seconds_per_hour": 2}})
    audio = (speech_dir / "fox.wav").read_bytes()  # about 2.5 s
    async with running_app(settings, factory(FakeBackend())) as h:
        ok = await h.client.post("/transcribe", files={"file": audio}, headers=bearer(KEYS["alice"]))
        assert ok.status_code == 200, ok.text
        duration = ok.json()["duration"]
        assert h.sample("asr_key_audio_seconds_total", {"key": "alice"}) == pytest.approx(duration, abs=0.01)
        for path, data in (("/transcribe", {}), ("/v1/jobs", {}), ("/v1/audio/transcriptions", {"model": "x"})):
            refused = await h.client.post(path, files={"file": audio}, data=data, headers=bearer(KEYS["alice"]))
            assert refused.status_code == 429, (path, refused.text)
            assert refused.json()["error"]["code"] == "key_audio_limit"
            assert 3000 <= int(refused.headers["retry-after"]) <= 3660
        # Bob, and the admin, are not alice.
        assert (
            await h.client.post("/transcribe", files={"file": audio}, headers=bearer(KEYS["bob"]))
        ).status_code == 200
        assert (
            await h.client.post("/transcribe", files={"file": audio}, headers=bearer(ADMIN_TOKEN))
        ).status_code == 200
        assert h.sample("asr_requests_rejected_total", {"reason": "key_limit"}) == 3
        assert h.sample("asr_key_requests_total", {"key": "alice", "status_class": "4xx"}) == 3
        assert h.sample("asr_key_requests_total", {"key": "alice", "status_class": "2xx"}) == 1
        assert h.sample("asr_key_audio_seconds_total", {"key": "admin"}) == pytest.approx(duration, abs=0.01)


@pytest.mark.anyio
async def test_a_jobs_audio_is_charged_to_its_key_once_decoded(tmp_path: Path, speech_dir: Path) -> None:
    settings = key_settings(tmp_path)
    async with running_app(settings, factory(FakeBackend())) as h:
        files = {"file": (speech_dir / "weather.wav").read_bytes()}
        submitted = await h.client.post("/v1/jobs", files=files, headers=bearer(KEYS["bob"]))
        assert submitted.status_code == 202, submitted.text
        job = f"/v1/jobs/{submitted.json()['id']}"

        async def finished() -> bool:
            return (await h.client.get(job, headers=bearer(KEYS["bob"]))).json()["status"] == "succeeded"

        await until(finished, 30, "the job")
        total = (await h.client.get(job, headers=bearer(KEYS["bob"]))).json()["progress"]["audio_seconds_total"]
        assert h.sample("asr_key_audio_seconds_total", {"key": "bob"}) == pytest.approx(total, abs=0.01)
        assert h.app.state.key_usage.spent("bob") == pytest.approx(total, abs=0.01)


@pytest.mark.anyio
async def test_key_labels_come_from_the_configured_set_only(tmp_path: Path) -> None:
    async with running_app(key_settings(tmp_path), factory(FakeBackend())) as h:
        for token in ("made-up-1", "made-up-2", KEYS["alice"], DEFAULT_KEY, ADMIN_TOKEN):
            await h.client.get("/v1/models", headers=bearer(token))
        await h.client.get("/v1/models")
        labels = {
            sample.labels["key"]
            for family in h.metrics.registry.collect()
            if family.name.startswith("asr_key_")
            for sample in family.samples
        }
        assert labels <= CONFIGURED and {"alice", "default", "admin", "anonymous"} <= labels
        assert h.sample("asr_key_requests_total", {"key": "anonymous", "status_class": "4xx"}) == 3
        assert h.sample("asr_key_requests_total", {"key": "default", "status_class": "2xx"}) == 1


def test_a_live_stream_is_charged_by_turn_and_ends_when_the_hour_is_spent(tmp_path: Path) -> None:
    settings = key_settings(tmp_path, {"alice": {"audio_seconds_per_hour": 1}})
    app = create_app(settings, backend_factory=factory(FakeBackend()), metrics=Metrics())
    pcm = base64.b64encode(bytes(2 * 24_000 * 3 // 2)).decode()  # 1.5 s of 24 kHz PCM16 silence
    with TestClient(app, base_url="http://asr.test") as client:
        wait_until(lambda: client.get("/readyz").status_code == 200, 30, "the model loaded")
        usage = app.state.key_usage
        with client.websocket_connect("/v1/realtime?intent=transcription", headers=bearer(KEYS["alice"])) as ws:
            assert ws.receive_json()["type"] == "session.created"
            assert usage.in_flight("alice") == 1  # a stream holds one of its key's places
            ws.send_json({"type": "session.update", "session": {"audio": {"input": {"turn_detection": None}}}})
            assert ws.receive_json()["type"] == "session.updated"
            ws.send_json({"type": "input_audio_buffer.append", "audio": pcm})
            ws.send_json({"type": "input_audio_buffer.commit"})
            events = _until_closed(ws)
        kinds = [e.get("type") for e in events]
        assert "conversation.item.input_audio_transcription.completed" in kinds
        assert events[-1] == {"close": 1013}
        assert events[-2]["type"] == "error" and events[-2]["error"]["code"] == "key_audio_limit"
        assert usage.spent("alice") == pytest.approx(1.5, abs=0.01)
        wait_until(lambda: usage.in_flight("alice") == 0, 10, "the stream's place given back")
        # The next stream is refused before it starts.
        with client.websocket_connect("/v1/realtime?intent=transcription", headers=bearer(KEYS["alice"])) as ws:
            event = ws.receive_json()
            assert event["type"] == "error" and event["error"]["code"] == "key_audio_limit"
            with pytest.raises(WebSocketDisconnect) as refused:
                ws.receive_json()
        assert refused.value.code == 1013


def _until_closed(ws: Any) -> list[dict[str, Any]]:
    """Every event until the server closes, then {"close": code}."""
    events: list[dict[str, Any]] = []
    while True:
        try:
            events.append(ws.receive_json())
        except WebSocketDisconnect as closed:
            return [*events, {"close": closed.code}]
