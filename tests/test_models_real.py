"""Two real models side by side: Whisper base (embedded, preloaded) and tiny.en (loaded on use),
chosen per request through every route, unloaded by TTL and by a memory budget measured for real."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

import httpx
import openai
import pytest

from tests.conftest import SENTENCES, make_settings, running_app, serve, until, wait_until, wer
from tests.test_hardening_server import metric
from tests.test_streaming import TURNS, _realtime, talk  # noqa: F401 (talk: the fixture)

if TYPE_CHECKING:
    from pathlib import Path

pytestmark = pytest.mark.slow

MODELS = [
    {"id": "base", "model": "embedded:base", "aliases": ["whisper-1", "gpt-4o-transcribe"], "preload": True},
    {"id": "tiny", "model": "embedded:tiny.en", "aliases": ["gpt-4o-mini-transcribe"], "ttl_seconds": 3},
]


def _states(url: str) -> dict[str, str]:
    return {m["id"]: m["state"] for m in httpx.get(url + "/v1/models", timeout=10).json()["data"]}


def test_two_models_serve_side_by_side_through_every_route(tmp_path: Path, speech_dir: Path) -> None:
    env = {"ASR_MODELS": json.dumps(MODELS), "ASR_MODEL": "embedded:base"}
    with serve(env, tmp_path) as server:
        assert _states(server.url) == {"base": "ready", "tiny": "unloaded"}
        client = openai.OpenAI(base_url=server.url + "/v1", api_key="x", max_retries=0)
        for model in ("gpt-4o-mini-transcribe", "whisper-1"):
            with open(speech_dir / "weather.mp3", "rb") as fh:
                text = client.audio.transcriptions.create(model=model, file=fh).text
            assert wer(SENTENCES["weather"], text) <= 0.3, (model, text)
        assert _states(server.url) == {"base": "ready", "tiny": "ready"}
        # Our route names the model that answered.
        for model, expected in (("tiny", "tiny"), (None, "base"), ("gpt-4o-transcribe", "base")):
            with open(speech_dir / "meeting.wav", "rb") as fh:
                data = {"model": model} if model else {}
                r = httpx.post(server.url + "/transcribe", files={"file": fh}, data=data, timeout=60)
            assert r.json()["model"] == expected
            assert wer(SENTENCES["meeting"], r.json()["text"]) <= 0.3
        # A job on tiny keeps its model when it runs.
        with open(speech_dir / "fox.mp3", "rb") as fh:
            job = httpx.post(server.url + "/v1/jobs", files={"file": fh}, data={"model": "tiny"}, timeout=60).json()
        wait_until(
            lambda: httpx.get(f"{server.url}/v1/jobs/{job['id']}").json()["status"] == "succeeded", 60, "the job"
        )
        assert httpx.get(f"{server.url}/v1/jobs/{job['id']}/result").json()["model"] == "tiny"
        with pytest.raises(openai.NotFoundError), open(speech_dir / "fox.mp3", "rb") as fh:
            client.audio.transcriptions.create(model="whisper-large-v9", file=fh)
        # Unused for its TTL, tiny goes; base (no TTL) stays.
        wait_until(lambda: _states(server.url)["tiny"] == "unloaded", 30, "tiny's TTL")
        metrics = httpx.get(server.url + "/metrics").text
        assert 'asr_model_unloads_total{model="tiny",reason="ttl"} 1.0' in metrics
        assert _states(server.url)["base"] == "ready"


@pytest.mark.anyio
async def test_a_budget_measured_on_real_models_evicts_the_idle_one(tmp_path: Path, speech_dir: Path) -> None:
    fox = (speech_dir / "fox.wav").read_bytes()
    models: list[dict[str, Any]] = [
        {"id": "base", "model": "embedded:base", "preload": True},
        {"id": "tiny", "model": "embedded:tiny.en"},
        {"id": "tiny-too", "model": "embedded:tiny.en"},
    ]
    # First, what each takes here (RSS growth at its load).
    async with running_app(make_settings(tmp_path, model={"models": models})) as h:
        assert (await h.client.post("/transcribe", files={"file": ("a.wav", fox)}, data={"model": "tiny"})).is_success
        sizes = {m.id: m.memory_bytes for m in h.app.state.pipeline.models() if m.memory_bytes}
    assert sizes["base"] > sizes["tiny"] > 20 * 2**20, sizes
    # Then a budget with room for base and one tiny.en, not two (the sizes are the C heap each load
    # kept: the same at every load, see service.models._memory_in_use).
    budget = sizes["base"] + int(1.5 * sizes["tiny"])
    settings = make_settings(tmp_path, model={"models": models, "model_memory_budget_bytes": budget})
    async with running_app(settings) as h:
        for model in ("tiny", "tiny-too"):
            r = await h.client.post("/transcribe", files={"file": ("a.wav", fox)}, data={"model": model})
            assert r.status_code == 200 and wer(SENTENCES["fox"], r.json()["text"]) <= 0.5
        await until(lambda: h.sample("asr_model_unloads_total", {"model": "tiny", "reason": "budget"}) == 1)
        states = {m.id: m.state for m in h.app.state.pipeline.models()}
        loaded = sum(m.memory_bytes or 0 for m in h.app.state.pipeline.models())
    assert states == {"base": "ready", "tiny": "unloaded", "tiny-too": "ready"}
    assert loaded <= budget


def test_a_stream_takes_its_partials_from_the_draft_model_and_its_finals_from_its_own(
    tmp_path: Path,
    talk: bytes,  # noqa: F811 (the fixture imported from tests.test_streaming)
) -> None:
    models = [{**MODELS[0]}, {**MODELS[1], "preload": True, "ttl_seconds": None}]
    env = {"ASR_MODELS": json.dumps(models), "ASR_MODEL": "embedded:base", "ASR_STREAM_PARTIAL_MODEL": "tiny"}
    with serve(env, tmp_path) as server:
        wait_until(lambda: _states(server.url) == {"base": "ready", "tiny": "ready"}, 60, "both preloaded")
        events, _ = _realtime(server, talk)  # the session asks for whisper-1: base
        completed = [e for _, e in events if e.type.endswith("transcription.completed")]
        deltas = [e for _, e in events if e.type.endswith("transcription.delta")]
        assert len(completed) == len(TURNS) and deltas
        assert wer(" ".join(SENTENCES[n] for n in TURNS), " ".join(e.transcript for e in completed)) <= 0.2
        # Finals are observed per model (partials are not): all three on base, none on tiny.en.
        duration = "asr_audio_duration_seconds_count"
        assert metric(server, duration, {"model": "base"}) == len(TURNS)
        assert metric(server, duration, {"model": "tiny"}) == 0
        # Every engine call on tiny.en was a partial: there were some, and base had only the finals.
        assert metric(server, "asr_batch_size_count", {"model": "tiny"}) >= 1
        assert metric(server, "asr_batch_size_count", {"model": "base"}) <= len(TURNS)
