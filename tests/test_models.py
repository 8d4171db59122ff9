"""Several models in one service: choosing by id or alias, loading on demand, unloading by TTL, by
budget and by the admin, and the races between them. Fake engines here (memory measured for real:
SizedBackend takes what it says); tests/test_models_real.py runs Whisper base beside tiny.en."""

from __future__ import annotations

import asyncio
import threading
from typing import TYPE_CHECKING, Any

import pytest

from service.config import ModelEntry, ModelSettings
from tests.conftest import ADMIN, ADMIN_TOKEN, make_settings, running_app, until
from tests.fakes import FakeBackend, SizedBackend, by_model

if TYPE_CHECKING:
    from pathlib import Path

    from tests.conftest import AppHandle

pytestmark = pytest.mark.anyio


def _entries(*entries: dict[str, Any]) -> list[dict[str, Any]]:
    return [{"model": f"fake:{e['id']}", **e} for e in entries]


def _settings(tmp_path: Path, entries: list[dict[str, Any]], **model: Any) -> Any:
    return make_settings(tmp_path, model={"models": entries, **model}, server={"admin_token": ADMIN_TOKEN})


async def _post(h: AppHandle, fox: bytes, model: str | None = None, route: str = "/transcribe") -> Any:
    data = {"model": model} if model is not None else {}
    if route != "/transcribe":
        data.setdefault("model", "whisper-1")
    return await h.client.post(route, files={"file": ("fox.wav", fox)}, data=data)


def _states(h: AppHandle) -> dict[str, str]:
    return {m.id: m.state for m in h.app.state.pipeline.models()}


def test_entries_must_have_unique_names() -> None:
    with pytest.raises(ValueError, match="names 'a' twice"):
        ModelSettings(models=[{"id": "a", "model": "x"}, {"id": "b", "model": "y", "aliases": ["a"]}])
    with pytest.raises(ValueError, match="not a model name"):
        ModelEntry(id="a", model="x", aliases=("no spaces",))
    assert ModelSettings(models='[{"id": "a", "model": "x"}]').models == (ModelEntry(id="a", model="x"),)


async def test_requests_choose_a_model_by_id_or_alias(tmp_path: Path, speech_dir: Path) -> None:
    fox = (speech_dir / "fox.wav").read_bytes()
    entries = _entries(
        {"id": "big", "aliases": ["whisper-1", "gpt-4o-transcribe"], "preload": True},
        {"id": "small", "aliases": ["gpt-4o-mini-transcribe"]},
    )
    makers = {"big": lambda: FakeBackend(text="from big"), "small": lambda: FakeBackend(text="from small")}
    async with running_app(_settings(tmp_path, entries), by_model(**makers)) as h:
        assert _states(h) == {"big": "ready", "small": "unloaded"}  # only the preloaded one at startup
        assert (await _post(h, fox)).json()["model"] == "big"  # no model: the first entry
        r = await _post(h, fox, "small")
        assert (r.json()["text"], r.json()["model"]) == ("from small", "small")
        r = await _post(h, fox, "gpt-4o-mini-transcribe", "/v1/audio/transcriptions")
        assert r.json()["text"] == "from small"
        r = await _post(h, fox, "gpt-4o-transcribe", "/v1/audio/transcriptions")
        assert r.json()["text"] == "from big"
        # A name no entry has is 404 everywhere, and never becomes a metric label.
        for route in ("/transcribe", "/v1/audio/transcriptions", "/v1/jobs"):
            r = await _post(h, fox, "made-up-model", route)
            assert r.status_code == 404 and r.json()["error"]["code"] == "model_not_found", route
        listed = (await h.client.get("/v1/models")).json()["data"]
        metrics = (await h.client.get("/metrics")).text
    assert [(m["id"], m["state"], m["aliases"]) for m in listed] == [
        ("big", "ready", ["whisper-1", "gpt-4o-transcribe"]),
        ("small", "ready", ["gpt-4o-mini-transcribe"]),
    ]
    assert "made-up-model" not in metrics
    assert h.sample("asr_model_loads_total", {"model": "small", "reason": "demand"}) == 1
    assert h.sample("asr_audio_processed_seconds_total", {"backend": "fake", "model": "small", "language": "en"}) > 0


async def test_a_request_waits_for_its_model_to_load_within_a_bound(tmp_path: Path, speech_dir: Path) -> None:
    fox = (speech_dir / "fox.wav").read_bytes()
    release = threading.Event()

    def slow() -> FakeBackend:
        release.wait(20)
        return FakeBackend(text="slow one")

    entries = _entries({"id": "default", "preload": True}, {"id": "slow"})
    settings = _settings(tmp_path, entries, model_load_wait_seconds=0.5)
    async with running_app(settings, by_model(default=FakeBackend, slow=slow)) as h:
        # Readiness means the preloaded models are ready: the other loading later changes nothing.
        r = await _post(h, fox, "slow")
        assert r.status_code == 503 and r.json()["error"]["code"] == "not_ready"
        assert int(r.headers["retry-after"]) >= 1
        assert (await h.client.get("/readyz")).status_code == 200
        assert _states(h)["slow"] == "loading"
        release.set()
        await until(lambda: _states(h)["slow"] == "ready", what="the load to finish")
        assert (await _post(h, fox, "slow")).json()["text"] == "slow one"


async def test_an_idle_model_is_unloaded_after_its_ttl_and_loads_again(tmp_path: Path, speech_dir: Path) -> None:
    fox = (speech_dir / "fox.wav").read_bytes()
    entries = _entries({"id": "default", "preload": True}, {"id": "brief", "ttl_seconds": 0.4})
    async with running_app(_settings(tmp_path, entries), by_model(default=FakeBackend, brief=FakeBackend)) as h:
        assert (await _post(h, fox, "brief")).status_code == 200
        await until(lambda: _states(h)["brief"] == "unloaded", timeout=10, what="the TTL unload")
        assert h.sample("asr_model_unloads_total", {"model": "brief", "reason": "ttl"}) == 1
        assert h.sample("asr_model_loaded", {"model": "brief"}) == 0
        assert _states(h)["default"] == "ready"  # no TTL: never unloaded
        assert (await _post(h, fox, "brief")).status_code == 200
    assert h.sample("asr_model_loads_total", {"model": "brief", "reason": "demand"}) == 2


async def test_the_budget_evicts_the_least_recently_used_idle_model(tmp_path: Path, speech_dir: Path) -> None:
    fox = (speech_dir / "fox.wav").read_bytes()
    megabytes = 120  # each model really takes this much (RSS), measured at its load
    entries = _entries({"id": "default", "preload": True}, {"id": "a"}, {"id": "b"}, {"id": "c"})
    makers = {name: (lambda: SizedBackend(megabytes=megabytes)) for name in ("default", "a", "b", "c")}
    settings = _settings(tmp_path, entries, model_memory_budget_bytes=int(3.5 * megabytes * 2**20))
    async with running_app(settings, by_model(**makers)) as h:
        assert (await _post(h, fox, "a")).status_code == 200
        assert (await _post(h, fox, "b")).status_code == 200
        memory = {m.id: m.memory_bytes for m in h.app.state.pipeline.models()}
        assert memory["a"] and memory["a"] > 0.8 * megabytes * 2**20, memory
        assert (await _post(h, fox, "a")).status_code == 200  # a is now used more recently than b
        # A fourth does not fit beside three: the least recently used idle one (b) goes, never the
        # preloaded default (readiness depends on it), though it was used least recently of all.
        assert (await _post(h, fox, "c")).status_code == 200
        assert _states(h) == {"default": "ready", "a": "ready", "b": "unloaded", "c": "ready"}
        assert h.sample("asr_model_unloads_total", {"model": "b", "reason": "budget"}) == 1
        assert h.sample("asr_model_memory_bytes", {"model": "b"}) == 0


async def test_the_budget_never_evicts_a_model_with_work_in_flight(tmp_path: Path, speech_dir: Path) -> None:
    fox = (speech_dir / "fox.wav").read_bytes()
    gate = threading.Event()
    entries = _entries({"id": "default", "preload": True}, {"id": "a"}, {"id": "b"})
    makers = {
        "default": FakeBackend,
        "a": lambda: SizedBackend(megabytes=100, gate=gate),
        "b": lambda: SizedBackend(megabytes=100),
    }
    settings = _settings(tmp_path, entries, model_memory_budget_bytes=150 * 2**20)
    async with running_app(settings, by_model(**makers)) as h:
        gate.clear()
        await h.client.post("/v1/models/a", headers=ADMIN)
        busy = asyncio.ensure_future(_post(h, fox, "a"))
        await until(lambda: h.sample("asr_workers_busy") == 1, what="a's request runs")
        r = await _post(h, fox, "b")
        assert r.status_code == 503 and r.json()["error"]["code"] == "model_budget_exceeded"
        assert "retry-after" in r.headers
        assert _states(h)["a"] == "ready"
        gate.set()
        assert (await busy).status_code == 200
        # Once a is idle, b may take its place.
        assert (await _post(h, fox, "b")).status_code == 200
        assert _states(h) == {"default": "ready", "a": "unloaded", "b": "ready"}


async def test_the_admin_loads_and_unloads_and_cannot_unload_a_busy_model(tmp_path: Path, speech_dir: Path) -> None:
    fox = (speech_dir / "fox.wav").read_bytes()
    gate = threading.Event()
    entries = _entries({"id": "a", "preload": True}, {"id": "b", "aliases": ["bee"]})
    makers = {"a": FakeBackend, "b": lambda: FakeBackend(gate=gate)}
    async with running_app(_settings(tmp_path, entries), by_model(**makers)) as h:
        assert (await h.client.post("/v1/models/b")).status_code == 401  # the admin's only
        r = await h.client.post("/v1/models/bee", headers=ADMIN)
        assert (r.status_code, r.json()["id"], r.json()["state"]) == (200, "b", "ready")
        assert h.sample("asr_model_loads_total", {"model": "b", "reason": "admin"}) == 1
        busy = asyncio.ensure_future(_post(h, fox, "b"))
        await until(lambda: h.sample("asr_workers_busy") == 1, what="b's request runs")
        r = await h.client.delete("/v1/models/b", headers=ADMIN)
        assert r.status_code == 409 and r.json()["error"]["code"] == "model_busy"
        gate.set()
        assert (await busy).status_code == 200
        r = await h.client.delete("/v1/models/b", headers=ADMIN)
        assert (r.status_code, r.json()["state"]) == (200, "unloaded")
        assert (await h.client.get("/v1/models/bee")).json()["state"] == "unloaded"
        assert (await h.client.delete("/v1/models/nope", headers=ADMIN)).status_code == 404
        r = await h.client.delete("/v1/models/a", headers=ADMIN)  # preloaded: readiness depends on it
        assert r.status_code == 409 and "preloaded" in r.json()["error"]["message"]


async def test_a_request_racing_an_unload_is_served_by_a_fresh_load(tmp_path: Path, speech_dir: Path) -> None:
    """An unload (the admin's, or the budget's) and a request for the same model: the request never
    gets a model that is being closed; it loads it again and is answered."""
    fox = (speech_dir / "fox.wav").read_bytes()
    closing, release = threading.Event(), threading.Event()

    class SlowToClose(FakeBackend):
        def close(self) -> None:
            closing.set()
            release.wait(20)
            super().close()

    loads: list[FakeBackend] = []

    def make() -> FakeBackend:
        loads.append(SlowToClose())
        return loads[-1]

    entries = _entries({"id": "a", "preload": True}, {"id": "b"})
    async with running_app(_settings(tmp_path, entries), by_model(a=FakeBackend, b=make)) as h:
        assert (await _post(h, fox, "b")).status_code == 200
        unload = asyncio.ensure_future(h.client.delete("/v1/models/b", headers=ADMIN))
        await until(closing.is_set, what="the unload is closing the model")
        request = asyncio.ensure_future(_post(h, fox, "b"))
        await until(lambda: _states(h)["b"] == "unloading", what="the model is marked unloading")
        release.set()
        assert (await unload).status_code == 200
        r = await request
        assert r.status_code == 200
        assert len(loads) == 2 and loads[0].closed and not loads[1].closed  # served by the second load


async def test_a_load_racing_an_unload_waits_for_it(tmp_path: Path) -> None:
    release = threading.Event()

    def slow() -> FakeBackend:
        release.wait(20)
        return FakeBackend()

    entries = _entries({"id": "a", "preload": True}, {"id": "b"})
    async with running_app(_settings(tmp_path, entries), by_model(a=FakeBackend, b=slow)) as h:
        load = asyncio.ensure_future(h.client.post("/v1/models/b", headers=ADMIN))
        await until(lambda: _states(h)["b"] == "loading", what="the load runs")
        unload = asyncio.ensure_future(h.client.delete("/v1/models/b", headers=ADMIN))
        release.set()
        assert (await load).json()["state"] == "ready"
        r = await unload
        assert (r.status_code, r.json()["state"]) == (200, "unloaded")  # after the load, not during it


async def test_one_model_settings_stay_as_they_were(tmp_path: Path, speech_dir: Path) -> None:
    """Without ASR_MODELS: one preloaded model under its label, answering to OpenAI's names."""
    fox = (speech_dir / "fox.wav").read_bytes()
    async with running_app(make_settings(tmp_path), by_model(**{"whisper-tiny.en": FakeBackend})) as h:
        [card] = (await h.client.get("/v1/models")).json()["data"]
        assert card["id"] == "whisper-tiny.en" and card["state"] == "ready" and card["preload"] is True
        assert "whisper-1" in card["aliases"] and "gpt-4o-transcribe" in card["aliases"]
        assert (await _post(h, fox, "whisper-1", "/v1/audio/transcriptions")).status_code == 200


def test_a_realtime_session_chooses_its_model(tmp_path: Path) -> None:
    import base64
    import json

    import numpy as np
    from starlette.testclient import TestClient

    from service.app import create_app
    from service.metrics import Metrics

    entries = _entries({"id": "big", "aliases": ["gpt-4o-transcribe"], "preload": True}, {"id": "small"})
    makers = {"big": lambda: FakeBackend(text="from big"), "small": lambda: FakeBackend(text="from small")}
    app = create_app(_settings(tmp_path, entries), backend_factory=by_model(**makers), metrics=Metrics())
    speech = (np.sin(np.arange(24_000) / 3) * 8000).astype("<i2").tobytes()  # 1 s at 24 kHz
    with TestClient(app) as client, client.websocket_connect("/v1/realtime?intent=transcription") as ws:
        created = ws.receive_json()
        assert created["session"]["audio"]["input"]["transcription"]["model"] == "big"
        update = {"type": "session.update", "session": {"type": "transcription", "audio": {"input": {}}}}
        unknown = json.loads(json.dumps(update))
        unknown["session"]["audio"]["input"] = {"transcription": {"model": "nope"}, "turn_detection": None}
        ws.send_json(unknown)
        error = ws.receive_json()
        assert error["type"] == "error" and error["error"]["code"] == "model_not_found"
        update["session"]["audio"]["input"] = {"transcription": {"model": "small"}, "turn_detection": None}
        ws.send_json(update)
        assert ws.receive_json()["type"] == "session.updated"  # the session went on
        ws.send_json({"type": "input_audio_buffer.append", "audio": base64.b64encode(speech).decode()})
        ws.send_json({"type": "input_audio_buffer.commit"})
        while (event := ws.receive_json())["type"] != "conversation.item.input_audio_transcription.completed":
            assert event["type"] != "error", event
        assert event["transcript"] == "from small"
