"""Inputs an attacker or a confused client sends, through the app on a fake engine: each gets a
clear 4xx (never a 500), is counted, and leaves the service serving. Real-server cases (hang-ups,
SIGTERM, a full disk, decompression bombs, fuzzing) are in test_hardening_server.py."""

from __future__ import annotations

import io
import logging
import struct
import subprocess
import sys
import wave
from typing import TYPE_CHECKING

import numpy as np
import pytest

from tests.conftest import ROOT, AppHandle, make_settings, running_app, until
from tests.fakes import FakeBackend, factory

if TYPE_CHECKING:
    from pathlib import Path

pytestmark = pytest.mark.anyio


def crafted_wav(rate: int, channels: int = 1, frames: int = 1000, bits: int = 16) -> bytes:
    """A WAV whose header says `rate` and `channels`, with `frames` frames of data."""
    data = b"\x01\x00" * frames * channels * (bits // 16)
    fmt = struct.pack("<HHIIHH", 1, channels, rate, rate * channels * bits // 8, channels * bits // 8, bits)
    body = b"WAVE" + b"fmt " + struct.pack("<I", len(fmt)) + fmt + b"data" + struct.pack("<I", len(data)) + data
    return b"RIFF" + struct.pack("<I", len(body)) + body


def pcm_wav(samples: np.ndarray, rate: int = 16_000) -> bytes:
    out = io.BytesIO()
    with wave.open(out, "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes((np.clip(samples, -1, 1) * 32767).astype("<i2").tobytes())
    return out.getvalue()


@pytest.mark.parametrize(
    ("rate", "channels", "needle"),
    [(1, 1, "1 Hz"), (1_000, 1, "1000 Hz"), (1_000_000, 1, "1000000 Hz"), (16_000, 200, "200 channels")],
)
async def test_implausible_sample_rates_and_channel_counts_are_422(
    tmp_path: Path, rate: int, channels: int, needle: str
) -> None:
    """A 2 KB WAV declaring 1 Hz once became 1,000 s of audio and held a worker for 312 s."""
    backend = FakeBackend()
    async with running_app(make_settings(tmp_path), factory(backend)) as h:
        r = await h.client.post("/transcribe", files={"file": ("x.wav", crafted_wav(rate, channels))})
        assert r.status_code == 422 and r.json()["error"]["code"] == "undecodable_audio"
        assert needle in r.json()["error"]["message"]
        assert h.sample("asr_requests_rejected_total", {"reason": "decode_error"}) == 1
        assert len(backend.calls) == 1  # the warm-up only: nothing reached the engine
        ok = await h.client.post("/transcribe", files={"file": ("ok.wav", crafted_wav(8_000, 2, 8_000))})
        assert ok.status_code == 200 and ok.json()["duration"] == pytest.approx(1.0)


@pytest.mark.parametrize("bits", [0, 65535])
async def test_a_wav_naming_no_usable_codec_is_422(tmp_path: Path, bits: int) -> None:
    """Found by the fuzz test: PyAV gives such a stream no codec context, which was a 500."""
    wav = bytearray(crafted_wav(16_000))
    struct.pack_into("<H", wav, 34, bits)
    async with running_app(make_settings(tmp_path), factory(FakeBackend())) as h:
        r = await h.client.post("/transcribe", files={"file": ("x.wav", bytes(wav))})
    assert r.status_code in (415, 422) and r.json()["error"]["code"] in ("undecodable_audio", "unsupported_media")


async def test_a_truncated_ogg_is_transcribed_with_a_warning(tmp_path: Path, speech_dir: Path) -> None:
    whole = (speech_dir / "weather.ogg").read_bytes()
    async with running_app(make_settings(tmp_path), factory(FakeBackend())) as h:
        r = await h.client.post("/transcribe", files={"file": ("w.ogg", whole)})
        assert r.status_code == 200 and r.json()["warnings"] == []
        r = await h.client.post("/transcribe", files={"file": ("w.ogg", whole[: len(whole) * 2 // 3])})
        assert r.status_code == 200
        [warning] = r.json()["warnings"]
        assert "may be truncated" in warning and f"{r.json()['duration']:.1f} s" in warning


async def test_a_one_sample_file_reports_no_real_time_factor(tmp_path: Path) -> None:
    async with running_app(make_settings(tmp_path), factory(FakeBackend())) as h:
        r = await h.client.post("/transcribe", files={"file": ("one.wav", pcm_wav(np.array([0.1])))})
        assert r.status_code == 200 and r.json()["rtf"] is None
        assert h.sample("asr_realtime_factor_count", {"backend": "fake", "model": "fake-model"}) == 0
        r = await h.client.post("/transcribe", files={"file": ("two.wav", pcm_wav(np.zeros(32_000)))})
        assert r.json()["rtf"] is not None
        assert h.sample("asr_realtime_factor_count", {"backend": "fake", "model": "fake-model"}) == 1
        assert h.sample("asr_request_realtime_factor_count", {"backend": "fake", "model": "fake-model"}) == 1


async def test_a_long_request_id_is_replaced_and_the_request_still_logged_and_sampled(
    tmp_path: Path, speech_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """An X-Request-ID of 119-128 characters made the exemplar fail after the answer: no access
    log line, no quality sample."""
    settings = make_settings(tmp_path, quality={"sample_rate": 1.0})
    long_id = "a" * 120
    async with running_app(settings, factory(FakeBackend())) as h:
        with caplog.at_level(logging.INFO, logger="service.access"):
            r = await h.client.post(
                "/transcribe",
                headers={"X-Request-ID": long_id},
                files={"file": ("fox.wav", (speech_dir / "fox.wav").read_bytes())},
            )
        assert r.status_code == 200
        given = r.headers["x-request-id"]
        assert given != long_id and len(given) == 32
        assert any(given in record.getMessage() for record in caplog.records)
        await until(lambda: h.app.state.store.count("pending"), what="the sample is kept")
        [sample], _ = h.app.state.store.page()
        assert sample.request_id == given
        # A plain id of up to 64 characters is kept as the caller sent it.
        r = await h.client.get("/v1/models", headers={"X-Request-ID": "trace-" + "b" * 58})
        assert r.headers["x-request-id"] == "trace-" + "b" * 58


def _series(h: AppHandle) -> int:
    return sum(1 for line in h.metrics.render(None)[0].decode().splitlines() if line and not line.startswith("#"))


async def test_made_up_http_methods_share_one_label(tmp_path: Path) -> None:
    """Each unusual method on a real route used to add 19 series (a counter, and a histogram)."""
    async with running_app(make_settings(tmp_path), factory(FakeBackend())) as h:
        r = await h.client.request("FOO", "/transcribe")
        assert r.status_code == 405 and r.json()["error"]["code"] == "method_not_allowed"
        before = _series(h)
        for method in ("BAR", "PROPFIND", "X" * 30):
            assert (await h.client.request(method, "/transcribe")).status_code == 405
        assert _series(h) == before
        labels = {"method": "other", "route": "/transcribe", "status": "405"}
        assert h.sample("asr_http_requests_total", labels) == 4
        text = h.metrics.render(None)[0].decode()
        assert 'method="FOO"' not in text and 'method="PROPFIND"' not in text


async def test_head_on_health_and_readiness(tmp_path: Path) -> None:
    async with running_app(make_settings(tmp_path), factory(FakeBackend())) as h:
        for path in ("/healthz", "/readyz"):
            r = await h.client.head(path)
            assert r.status_code == 200 and r.content == b""


async def test_form_abuse_is_422_and_echoes_little(tmp_path: Path, speech_dir: Path) -> None:
    fox = (speech_dir / "fox.wav").read_bytes()
    async with running_app(make_settings(tmp_path), factory(FakeBackend())) as h:
        # Two files: the last used to win silently.
        r = await h.client.post("/transcribe", files=[("file", ("a.wav", fox)), ("file", ("b.wav", fox))])
        assert r.status_code == 422 and "2 'file' fields" in r.json()["error"]["message"]
        # Huge values are not echoed back whole.
        for url, data in (
            ("/transcribe", {"language": "x" * 100_000}),
            ("/v1/audio/transcriptions", {"model": "y" * 100_000}),
            ("/transcribe", {"prompt": "z" * 100_000}),
        ):
            r = await h.client.post(url, files={"file": ("fox.wav", fox)}, data=data)
            assert r.status_code in (404, 422), r.text
            assert len(r.content) < 2_000
        assert h.sample("asr_requests_rejected_total", {"reason": "bad_request"}) >= 3


async def test_samples_api_refuses_absurd_paging_and_blank_references(tmp_path: Path, speech_dir: Path) -> None:
    settings = make_settings(tmp_path, quality={"sample_rate": 1.0}, server={"admin_token": "adm"})
    admin = {"Authorization": "Bearer adm"}
    async with running_app(settings, factory(FakeBackend())) as h:
        r = await h.client.get("/v1/samples", params={"offset": 2**63}, headers=admin)
        assert r.status_code == 422 and r.json()["error"]["code"] == "invalid_parameter"
        await h.client.post("/transcribe", files={"file": ("fox.wav", (speech_dir / "fox.wav").read_bytes())})
        await until(lambda: h.app.state.store.count("pending"), what="the sample is kept")
        [sample], _ = h.app.state.store.page()
        for blank in ("", "   ", "\n\t "):
            r = await h.client.put(f"/v1/samples/{sample.id}/reference", json={"text": blank}, headers=admin)
            assert r.status_code == 422 and "empty or only whitespace" in r.json()["error"]["message"], r.text
        assert h.app.state.store.get(sample.id).status == "pending"
        r = await h.client.put(f"/v1/samples/{sample.id}/reference", json={"text": "  hello world \n"}, headers=admin)
        assert r.status_code == 200 and r.json()["reference"] == "hello world"


async def test_a_json_body_over_its_limit_is_a_json_413(tmp_path: Path) -> None:
    settings = make_settings(tmp_path, quality={"sample_rate": 1.0}, server={"admin_token": "adm"})
    async with running_app(settings, factory(FakeBackend())) as h:
        r = await h.client.put(
            "/v1/samples/" + "0" * 32 + "/reference",
            content=b'{"text": "' + b"a" * 2_000_000 + b'"}',
            headers={"Authorization": "Bearer adm", "content-type": "application/json"},
        )
    assert r.status_code == 413 and r.json()["error"]["code"] == "upload_too_large"


async def test_decoding_is_measured(tmp_path: Path, speech_dir: Path) -> None:
    async with running_app(make_settings(tmp_path), factory(FakeBackend())) as h:
        for _ in range(3):
            await h.client.post("/transcribe", files={"file": ("fox.mp3", (speech_dir / "fox.mp3").read_bytes())})
        assert h.sample("asr_decode_seconds_count") == 3
        assert 0 < h.sample("asr_decode_seconds_sum") < 3
        assert h.sample("asr_decodes_in_flight") == 0
        assert h.sample("asr_workers") >= 1 and h.sample("asr_workers_busy") == 0


def test_scoring_english_does_not_load_torch() -> None:
    """The first English score used to import torch through openai-whisper (RSS 503 -> 1,009 MB)."""
    code = (
        "import sys; from service.quality.scoring import score; "
        "s = score('I have twenty apples', 'i have 20 apples', 'en'); "
        "print(s.errors, 'torch' in sys.modules, 'whisper' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["0", "False", "False"]
