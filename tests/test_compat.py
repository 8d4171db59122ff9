"""Drop-in compatibility: whisper-asr-webservice's /asr and /detect-language (as Bazarr calls
them) and the looser corners of the OpenAI API, on real models where the words matter."""

from __future__ import annotations

import asyncio
import subprocess
import threading
from typing import TYPE_CHECKING

import httpx
import openai
import pytest

from service.quality.scoring import score
from tests.conftest import SENTENCES, Server, make_settings, running_app, serve, until
from tests.fakes import FakeBackend, factory

if TYPE_CHECKING:
    from pathlib import Path

FILE_WER = 0.6  # tiny.en on one espeak sentence (docs/testing.md)


def pcm(path: Path) -> bytes:
    """Raw 16 kHz mono s16le, as Bazarr extracts a film's soundtrack with ffmpeg."""
    return subprocess.run(
        ["ffmpeg", "-loglevel", "error", "-i", str(path), "-f", "s16le", "-ac", "1", "-ar", "16000", "-"],
        check=True,
        capture_output=True,
    ).stdout


@pytest.mark.slow
def test_asr_answers_every_output_in_whisper_asr_webservices_shapes(tiny_server: Server, speech_dir: Path) -> None:
    fox = (speech_dir / "fox.mp3").read_bytes()
    outputs = {}
    for output in ("txt", "srt", "vtt", "tsv", "json"):
        r = httpx.post(
            tiny_server.url + "/asr",
            params={"output": output, "language": "en", "task": "transcribe"},
            files={"audio_file": ("fox.mp3", fox)},
            timeout=60,
        )
        assert r.status_code == 200, r.text
        assert r.headers["content-type"].startswith("text/plain")
        assert r.headers["asr-engine"] == "faster_whisper"
        assert r.headers["content-disposition"] == f'attachment; filename="fox.mp3.{output}"'
        outputs[output] = r.text
    assert outputs["txt"].endswith("\n") and score(SENTENCES["fox"], outputs["txt"], "en", "basic").rate <= FILE_WER
    assert outputs["srt"].startswith("1\n00:00:00,000 --> 00:00:0")
    assert outputs["vtt"].startswith("WEBVTT\n\n00:00:00.000 --> ")
    header, first = outputs["tsv"].splitlines()[:2]
    start, end, text = first.split("\t")
    assert header == "start\tend\ttext" and int(start) == 0 and 1000 < int(end) < 5000 and text
    import json

    result = json.loads(outputs["json"])
    assert set(result) == {"text", "segments", "language"} and result["language"] == "en"
    assert {"id", "seek", "start", "end", "text", "tokens", "avg_logprob", "no_speech_prob"} <= set(
        result["segments"][0]
    )
    # Word timings, on request.
    r = httpx.post(
        tiny_server.url + "/asr",
        params={"output": "json", "word_timestamps": "true"},
        files={"audio_file": ("fox.mp3", fox)},
        timeout=60,
    )
    assert r.json()["segments"][0]["words"][0]["word"].strip().lower() == "the"


@pytest.mark.slow
def test_raw_pcm_as_bazarr_sends_it_even_past_the_byte_cap(tmp_path: Path, speech_dir: Path) -> None:
    """A film's soundtrack as raw PCM is larger than ASR_MAX_UPLOAD_BYTES; it is bounded by its
    duration instead."""
    sentence = pcm(speech_dir / "meeting.wav")
    long_pcm = sentence * 6  # ~26 s, ~830 KB
    env = {"ASR_MAX_UPLOAD_BYTES": "200000", "ASR_MAX_AUDIO_SECONDS": "40"}
    with serve(env, tmp_path) as server:
        encoded = httpx.post(
            server.url + "/asr", files={"audio_file": ("a.wav", (speech_dir / "fox.wav").read_bytes())}
        )
        assert encoded.status_code == 200
        r = httpx.post(
            server.url + "/asr",
            params={"encode": "false", "output": "srt", "language": "en"},
            files={"audio_file": ("film", long_pcm)},
            timeout=120,
        )
        assert r.status_code == 200, r.text
        text = " ".join(line for line in r.text.splitlines() if line and "-->" not in line and not line.isdigit())
        assert score(" ".join([SENTENCES["meeting"]] * 6), text, "en", "basic").rate <= 0.3
        # The same bytes as an encoded upload are over the byte cap; past 40 s of PCM, too long.
        assert httpx.post(server.url + "/asr", files={"audio_file": ("a.wav", long_pcm)}).status_code == 413
        too_long = httpx.post(
            server.url + "/asr", params={"encode": "false"}, files={"audio_file": ("film", long_pcm * 2)}, timeout=60
        )
        assert too_long.status_code == 413 and too_long.json()["error"]["code"] == "audio_too_long"
        detected = httpx.post(
            server.url + "/detect-language", params={"encode": "false"}, files={"audio_file": ("film", long_pcm)}
        )
        assert detected.json() == {"detected_language": "english", "language_code": "en", "confidence": 1.0}


@pytest.mark.slow
@pytest.mark.anyio
async def test_detect_language_hears_english_and_spanish_from_the_first_30_s(tmp_path: Path, speech_dir: Path) -> None:
    # espeak-ng's Spanish is one Whisper base recognises clearly (0.95; its German only at 0.23).
    spanish = tmp_path / "es.wav"
    text = (
        "Buenos días. Hoy nos reunimos a las tres en la oficina para hablar del nuevo proyecto. "
        "Por favor, traiga los documentos."
    )
    subprocess.run(["espeak-ng", "-v", "es", "-s", "140", "-w", str(spanish), text], check=True)
    # Three minutes: only the first 30 s are decoded and listened to.
    long = tmp_path / "long.mp3"
    loop = ["-stream_loop", "-1", "-i", str(speech_dir / "weather.wav"), "-t", "180"]
    subprocess.run(["ffmpeg", "-loglevel", "error", *loop, str(long)], check=True)
    async with running_app(make_settings(tmp_path, model={"model": "embedded:base"})) as h:
        answers = {}
        for name, path in (("en", long), ("es", spanish)):
            r = await h.client.post("/detect-language", files={"audio_file": (path.name, path.read_bytes())})
            assert r.status_code == 200, r.text
            answers[name] = r.json()
        decoded = h.sample("asr_decode_seconds_count")
        served = h.sample(
            "asr_audio_processed_seconds_total",
            {"backend": "faster-whisper", "model": "whisper-base", "language": "en"},
        )
    assert answers["en"]["language_code"] == "en" and answers["en"]["detected_language"] == "english"
    assert answers["es"]["language_code"] == "es" and answers["es"]["detected_language"] == "spanish"
    assert 0.5 < answers["es"]["confidence"] <= 1.0
    assert decoded == 2 and served == 0  # detection is not transcription


@pytest.mark.anyio
async def test_asr_clients_wait_for_a_place_instead_of_a_429(
    tmp_path: Path, speech_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    gate = threading.Event()
    settings = make_settings(tmp_path, scheduler={"workers": 1, "queue_size": 0, "queue_wait_seconds": 10})
    fox = (speech_dir / "fox.wav").read_bytes()
    async with running_app(settings, factory(FakeBackend(gate=gate))) as h:
        scheduler = h.app.state.pipeline._scheduler  # white-box: the test watches its wait for a place
        # Watch the scheduler's own wait for a place, so the test knows when the second request
        # has started waiting (the wait itself is the real one).
        waiting = asyncio.Event()
        admit_waiting = scheduler.admit_waiting

        async def watched(seconds: float) -> object:
            waiting.set()
            return await admit_waiting(seconds)

        monkeypatch.setattr(scheduler, "admit_waiting", watched)
        first = asyncio.create_task(h.client.post("/asr", files={"audio_file": ("a.wav", fox)}))
        await until(lambda: scheduler.busy == 1, what="the first request holds the only place")
        waiting.clear()
        second = asyncio.create_task(h.client.post("/asr", files={"audio_file": ("b.wav", fox)}))
        # An OpenAI client retries a 429 on its own: it gets one at once.
        refused = await h.client.post("/transcribe", files={"file": ("c.wav", fox)})
        assert refused.status_code == 429
        async with asyncio.timeout(10):
            await waiting.wait()
        # The second waits for the place the first holds (a 429 would fail it below).
        assert not second.done()
        gate.set()
        assert (await first).status_code == 200 and (await second).status_code == 200


@pytest.mark.anyio
async def test_the_looser_openai_surface(tmp_path: Path, speech_dir: Path) -> None:
    fox = (speech_dir / "fox.wav").read_bytes()
    async with running_app(make_settings(tmp_path), factory(FakeBackend())) as h:
        # OpenAI's transcription names are the default model's aliases ...
        for name in ("gpt-4o-transcribe", "gpt-4o-mini-transcribe", "whisper-1", "whisper-tiny.en"):
            r = await h.client.post("/v1/audio/transcriptions", files={"file": ("a.wav", fox)}, data={"model": name})
            assert r.status_code == 200 and r.json()["usage"] == {
                "type": "duration",
                "seconds": pytest.approx(3.65, abs=0.1),
            }
        # ... and a name no model has is 404 in OpenAI's shape, never served by another model.
        r = await h.client.post("/v1/audio/transcriptions", files={"file": ("a.wav", fox)}, data={"model": "nope-7"})
        assert r.status_code == 404
        assert r.json()["error"] == {
            "code": "model_not_found",
            "message": "the model 'nope-7' does not exist; models here: whisper-tiny.en",
            "type": "invalid_request_error",
            "param": "model",
        }
        # A bare timestamp_granularities=word (no []).
        r = await h.client.post(
            "/v1/audio/transcriptions",
            files={"file": ("a.wav", fox)},
            data={"model": "whisper-1", "response_format": "verbose_json", "timestamp_granularities": "word"},
        )
        assert r.status_code == 200 and "words" in r.json()
        # A translation's language is the output's.
        r = await h.client.post(
            "/v1/audio/translations",
            files={"file": ("a.wav", fox)},
            data={"model": "whisper-1", "response_format": "verbose_json"},
        )
        assert r.json()["language"] == "english" and r.json()["usage"]["type"] == "duration"
        # Validation errors name the field, as OpenAI's do.
        r = await h.client.post(
            "/v1/audio/transcriptions",
            files={"file": ("a.wav", fox)},
            data={"model": "whisper-1", "response_format": "xml"},
        )
        assert r.status_code == 422 and r.json()["error"]["param"] == "response_format"


@pytest.mark.slow
def test_the_openai_client_with_openai_model_names_and_real_seek_values(tiny_server: Server, speech_dir: Path) -> None:
    client = openai.OpenAI(base_url=tiny_server.url + "/v1", api_key="x", max_retries=0)
    with open(speech_dir / "weather.mp3", "rb") as fh:
        result = client.audio.transcriptions.create(model="gpt-4o-transcribe", file=fh)
    assert score(SENTENCES["weather"], result.text, "en", "basic").rate <= FILE_WER
    assert result.usage is not None and result.usage.type == "duration" and result.usage.seconds > 3
    with open(speech_dir / "weather.mp3", "rb") as fh:
        verbose = client.audio.transcriptions.create(model="whisper-1", file=fh, response_format="verbose_json")
    assert verbose.segments and verbose.segments[0].seek == 0
