"""The HTTP layer on a fake engine: errors, auth, formats, readiness, failures, logs."""

from __future__ import annotations

import json
import threading
from typing import TYPE_CHECKING

import pytest

from service.backends.base import Capabilities
from tests.conftest import ADMIN, ADMIN_TOKEN, make_settings, running_app, settled_readiness
from tests.fakes import FakeBackend, factory

if TYPE_CHECKING:
    from pathlib import Path

pytestmark = pytest.mark.anyio


def _upload(path: Path, **fields: str) -> dict[str, object]:
    return {"files": {"file": (path.name, path.read_bytes())}, "data": fields}


async def test_json_answer_has_every_field(tmp_path: Path, speech_dir: Path) -> None:
    backend = FakeBackend(text="hello world")
    async with running_app(make_settings(tmp_path), factory(backend)) as h:
        r = await h.client.post("/transcribe", **_upload(speech_dir / "fox.wav"))
    assert r.status_code == 200, r.text
    body = r.json()
    assert set(body) >= {
        "text",
        "language",
        "language_probability",
        "duration",
        "processing_seconds",
        "rtf",
        "segments",
        "backend",
        "model",
    }
    assert body["text"] == "hello world" and body["backend"] == "fake" and body["model"] == "fake-model"
    assert body["duration"] == pytest.approx(3.0, abs=1.0)
    assert body["rtf"] == pytest.approx(body["processing_seconds"] / body["duration"], rel=0.05, abs=1e-3)
    assert body["segments"][0]["id"] == 0
    assert r.headers["x-request-id"]


@pytest.mark.parametrize(
    ("fields", "status", "code"),
    [
        ({"response_format": "xml"}, 422, "invalid_parameter"),
        ({"task": "summarize"}, 422, "invalid_parameter"),
        ({"language": "klingon"}, 422, "invalid_parameter"),
        ({"word_timestamps": "perhaps"}, 422, "invalid_parameter"),
    ],
)
async def test_unknown_parameter_values_are_422_with_the_field_named(
    tmp_path: Path, speech_dir: Path, fields: dict[str, str], status: int, code: str
) -> None:
    async with running_app(make_settings(tmp_path), factory(FakeBackend())) as h:
        r = await h.client.post("/transcribe", **_upload(speech_dir / "fox.wav", **fields))
        assert r.status_code == status
        error = r.json()["error"]
        assert error["code"] == code
        assert next(iter(fields)) in error["message"] or "klingon" in error["message"]
        assert h.sample("asr_requests_rejected_total", {"reason": "bad_request"}) == 1


async def test_bad_uploads_get_clear_4xx_and_are_counted(tmp_path: Path, speech_dir: Path) -> None:
    half = tmp_path / "half.flac"
    half.write_bytes((speech_dir / "fox.flac").read_bytes()[:20000])
    cases = [
        ({"files": {"file": ("empty.wav", b"")}}, 400, "empty_upload", None),
        (
            {"files": {"file": ("notes.txt", b"just some text, not audio\n" * 50)}},
            415,
            "unsupported_media",
            "unsupported_media",
        ),
        ({"files": {"file": ("half.flac", half.read_bytes())}}, 422, "undecodable_audio", "decode_error"),
        ({"data": {"language": "en"}}, 422, "invalid_parameter", "bad_request"),
        (
            {"files": {"audio": ("fox.wav", (speech_dir / "fox.wav").read_bytes())}},
            422,
            "invalid_parameter",
            "bad_request",
        ),
    ]
    settings = make_settings(tmp_path, limits={"max_audio_seconds": 60})
    async with running_app(settings, factory(FakeBackend())) as h:
        for kwargs, status, code, reason in cases:
            r = await h.client.post("/transcribe", **kwargs)
            assert (r.status_code, r.json()["error"]["code"]) == (status, code), r.text
            if reason:
                assert h.sample("asr_requests_rejected_total", {"reason": reason}) >= 1
        # Not multipart at all.
        r = await h.client.post("/transcribe", content=b"RIFF....", headers={"content-type": "audio/wav"})
        assert r.status_code == 422 and "multipart/form-data" in r.json()["error"]["message"]
        # After all that, the service still serves.
        r = await h.client.post("/transcribe", **_upload(speech_dir / "fox.wav"))
        assert r.status_code == 200


async def test_audio_longer_than_the_limit_is_413(tmp_path: Path, speech_dir: Path) -> None:
    async with running_app(make_settings(tmp_path, limits={"max_audio_seconds": 1.5}), factory(FakeBackend())) as h:
        r = await h.client.post("/transcribe", **_upload(speech_dir / "weather.mp3"))
        assert r.status_code == 413 and r.json()["error"]["code"] == "audio_too_long"
        assert h.sample("asr_requests_rejected_total", {"reason": "too_large"}) == 1


async def test_upload_over_the_byte_limit_is_413(tmp_path: Path, speech_dir: Path) -> None:
    limit = 50_000
    async with running_app(make_settings(tmp_path, limits={"max_upload_bytes": limit}), factory(FakeBackend())) as h:
        r = await h.client.post("/transcribe", files={"file": ("big.wav", b"\0" * (limit + 10))})
        assert r.status_code == 413 and r.json()["error"]["code"] == "upload_too_large"
        r = await h.client.post("/transcribe", files={"file": ("huge.wav", b"\0" * (limit + 2 * 1024 * 1024))})
        assert r.status_code == 413
        assert h.sample("asr_requests_rejected_total", {"reason": "too_large"}) == 2


async def test_api_key_is_required_when_configured(tmp_path: Path, speech_dir: Path) -> None:
    settings = make_settings(tmp_path, server={"api_key": "k3y"})
    async with running_app(settings, factory(FakeBackend())) as h:
        upload = _upload(speech_dir / "fox.wav")
        for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": "Basic k3y"}):
            r = await h.client.post("/transcribe", headers=headers, **upload)
            assert r.status_code == 401 and r.json()["error"]["code"] == "unauthorized"
            assert r.headers["www-authenticate"] == "Bearer"
        r = await h.client.post("/transcribe", headers={"Authorization": "Bearer k3y"}, **upload)
        assert r.status_code == 200
        assert h.sample("asr_requests_rejected_total", {"reason": "unauthorized"}) == 3
        assert (await h.client.get("/healthz")).status_code == 200  # probes need no key


async def test_features_the_engine_lacks_are_refused(tmp_path: Path, speech_dir: Path) -> None:
    caps = Capabilities(languages=frozenset({"en"}), translate=False, word_timestamps=False)
    async with running_app(make_settings(tmp_path), factory(FakeBackend(capabilities=caps))) as h:
        for fields, needle in (
            ({"task": "translate"}, "translation"),
            ({"word_timestamps": "true"}, "word timestamps"),
            ({"rich_output": "true"}, "emotion"),
            ({"language": "de"}, "unsupported language"),
        ):
            r = await h.client.post("/transcribe", **_upload(speech_dir / "fox.wav", **fields))
            assert r.status_code == 422 and needle in r.json()["error"]["message"], r.text


@pytest.mark.parametrize(
    ("fmt", "start"),
    [("text", "hello world\n"), ("srt", "1\n00:00:00,000 --> "), ("vtt", "WEBVTT\n\n00:00:00.000 --> ")],
)
async def test_text_formats(tmp_path: Path, speech_dir: Path, fmt: str, start: str) -> None:
    async with running_app(make_settings(tmp_path), factory(FakeBackend())) as h:
        r = await h.client.post("/transcribe", **_upload(speech_dir / "fox.wav", response_format=fmt))
    assert r.status_code == 200
    assert r.text.startswith(start)


async def test_not_ready_while_loading_then_ready(tmp_path: Path, speech_dir: Path) -> None:
    release = threading.Event()

    def slow_factory(settings: object) -> FakeBackend:
        release.wait(10)
        return FakeBackend()

    async with running_app(make_settings(tmp_path), slow_factory, wait_ready=False) as h:
        assert (await h.client.get("/healthz")).status_code == 200
        r = await h.client.get("/readyz")
        assert r.status_code == 503 and r.json()["status"] == "loading"
        r = await h.client.post("/transcribe", **_upload(speech_dir / "fox.wav"))
        assert r.status_code == 503 and r.json()["error"]["code"] == "not_ready"
        release.set()
        assert (await settled_readiness(h)).json()["status"] == "ready"


async def test_a_model_that_fails_to_load_is_reported_not_ready(tmp_path: Path) -> None:
    def broken(settings: object) -> FakeBackend:
        raise RuntimeError("weights not found")

    settings = make_settings(tmp_path, server={"admin_token": ADMIN_TOKEN})
    async with running_app(settings, broken, wait_ready=False) as h:
        r = await settled_readiness(h)
        # Anyone may read readiness: it names the model and the kind of failure, not the details.
        assert r.status_code == 503 and r.json() == {
            "status": "failed",
            "error": "model whisper-tiny.en failed to load (RuntimeError); the service log says why",
        }
        r = await h.client.post("/transcribe", files={"file": ("a.wav", b"RIFF")})
        assert r.status_code == 503 and "weights not found" not in r.text
        detailed = await settled_readiness(h, ADMIN)
        assert detailed.json()["error"] == "RuntimeError: weights not found"


async def test_gpu_out_of_memory_is_503_counted_and_the_service_goes_on(tmp_path: Path, speech_dir: Path) -> None:
    backend = FakeBackend(error=RuntimeError("CUDA failed with error out of memory"))
    async with running_app(make_settings(tmp_path), factory(backend)) as h:
        r = await h.client.post("/transcribe", **_upload(speech_dir / "fox.wav"))
        assert r.status_code == 503 and "GPU memory" in r.json()["error"]["message"]
        assert h.sample("asr_gpu_oom_total") == 1
        assert h.sample("asr_requests_rejected_total", {"reason": "backend_error"}) == 1
        backend.error = None
        r = await h.client.post("/transcribe", **_upload(speech_dir / "fox.wav"))
        assert r.status_code == 200


async def test_engine_bug_is_503_not_500(tmp_path: Path, speech_dir: Path) -> None:
    async with running_app(make_settings(tmp_path), factory(FakeBackend(error=IndexError("oops")))) as h:
        r = await h.client.post("/transcribe", **_upload(speech_dir / "fox.wav"))
    assert r.status_code == 503 and r.json()["error"]["code"] == "backend_error"


async def test_timeout_is_504_and_frees_the_worker(tmp_path: Path, speech_dir: Path) -> None:
    settings = make_settings(tmp_path, limits={"request_timeout_seconds": 0.3, "timeout_per_audio_second": 0})
    backend = FakeBackend(delay=5.0)
    async with running_app(settings, factory(backend)) as h:
        r = await h.client.post("/transcribe", **_upload(speech_dir / "fox.wav"))
        assert r.status_code == 504 and r.json()["error"]["code"] == "timeout"
        assert h.sample("asr_requests_rejected_total", {"reason": "timeout"}) == 1
        backend.delay = 0
        r = await h.client.post("/transcribe", **_upload(speech_dir / "fox.wav"))
        assert r.status_code == 200


async def test_unknown_paths_and_methods_answer_json(tmp_path: Path) -> None:
    async with running_app(make_settings(tmp_path), factory(FakeBackend())) as h:
        r = await h.client.get("/no/such/thing")
        assert r.status_code == 404 and r.json()["error"]["code"] == "not_found"
        r = await h.client.get("/transcribe")
        assert r.status_code == 405 and r.json()["error"]["code"] == "method_not_allowed"


async def test_one_json_log_line_per_request_with_the_request_id(tmp_path: Path, speech_dir: Path) -> None:
    log_file = tmp_path / "logs" / "asr.log"
    settings = make_settings(tmp_path, server={"log_format": "json", "log_file": log_file})
    async with running_app(settings, factory(FakeBackend())) as h:
        r = await h.client.post("/transcribe", headers={"X-Request-ID": "abc-123"}, **_upload(speech_dir / "fox.wav"))
        await h.client.get("/healthz")
    assert r.headers["x-request-id"] == "abc-123"
    lines = [json.loads(line) for line in log_file.read_text().splitlines()]
    access = [line for line in lines if line["logger"] == "service.access"]
    assert len(access) == 1  # the health probe is not logged as traffic
    entry = access[0]
    assert entry["request_id"] == "abc-123" and entry["status"] == 200 and entry["route"] == "/transcribe"
    assert entry["audio_seconds"] > 0 and entry["processing_seconds"] >= 0 and "rtf" in entry
