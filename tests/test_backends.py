"""The optional engines, loaded from small checkpoints through the code production uses."""

from __future__ import annotations

import base64
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx
import pytest
from websockets.sync.client import connect

from service.backends import load_backend
from service.backends.sensevoice_tags import split_rich
from service.errors import MissingExtraError
from tests.checkpoints import build_fsmn_vad, build_openai_whisper, build_sensevoice
from tests.conftest import ADMIN, ADMIN_TOKEN, Server, make_settings, running_app, serve, settled_readiness

# ---- SenseVoice output parsing, on the strings SenseVoiceSmall and FunASR really produce ---------


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        (
            "<|en|><|NEUTRAL|><|Speech|><|woitn|>the weather is nice today",
            [("en", "NEUTRAL", ["Speech"], "the weather is nice today")],
        ),
        (
            "<|zh|><|HAPPY|><|BGM|><|withitn|>欢迎大家来体验达摩院推出的语音识别模型。",
            [("zh", "HAPPY", ["BGM"], "欢迎大家来体验达摩院推出的语音识别模型。")],
        ),
        # FunASR's VAD pipeline concatenates one tagged stretch per VAD segment:
        (
            "<|ja|><|SAD|><|Speech|><|withitn|>うちの中学は弁当制で。<|en|><|ANGRY|><|Applause|><|withitn|>Stop it.",
            [("ja", "SAD", ["Speech"], "うちの中学は弁当制で。"), ("en", "ANGRY", ["Applause"], "Stop it.")],
        ),
        ("<|nospeech|><|EMO_UNKNOWN|><|Event_UNK|><|woitn|>", [("nospeech", "EMO_UNKNOWN", ["Event_UNK"], "")]),
        ("<|yue|><|NEUTRAL|><|Laughter|><|withitn|>做咩咁好笑", [("yue", "NEUTRAL", ["Laughter"], "做咩咁好笑")]),
        ("<|ko|><|SURPRISED|><|Cough|><|withitn|>정말요?", [("ko", "SURPRISED", ["Cough"], "정말요?")]),
        ("plain text without tags", [(None, None, [], "plain text without tags")]),
        ("", []),
    ],
)
def test_rich_output_is_split_into_fields(raw: str, expected: list[tuple[object, ...]]) -> None:
    assert [(p.language, p.emotion, p.events, p.text) for p in split_rich(raw)] == expected


def test_unknown_tags_count_as_other() -> None:
    [piece] = split_rich("<|en|><|CONFUSED|><|Whistle|><|woitn|>hm")
    assert (piece.emotion, piece.events, piece.text) == (None, ["other"], "hm")


def test_a_missing_extra_names_the_extra_to_install(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "funasr", None)  # as if the sensevoice extra were not installed
    monkeypatch.delitem(sys.modules, "service.backends.sensevoice", raising=False)
    settings = make_settings(tmp_path, model={"backend": "sensevoice", "model": str(tmp_path)})
    with pytest.raises(MissingExtraError) as info:
        load_backend(settings)
    assert (
        str(info.value)
        == "backend 'sensevoice' needs the optional dependency 'funasr': pip install 'asr-service[sensevoice]'"
    )


# ---- SenseVoiceSmall through FunASR ----------------------------------------------------------------

TRAINED = {"fox": ("NEUTRAL", "Speech", "hello world"), "weather": ("HAPPY", "BGM", "good morning")}


@pytest.fixture(scope="module")
def sensevoice_dir(tmp_path_factory: pytest.TempPathFactory, speech_dir: Path) -> Path:
    training = {speech_dir / f"{name}.wav": spec for name, spec in TRAINED.items()}
    return build_sensevoice(tmp_path_factory.mktemp("sensevoice") / "SenseVoiceSmall", training)


@pytest.mark.slow
@pytest.mark.anyio
async def test_sensevoice_answers_with_text_emotion_and_events(
    tmp_path: Path, speech_dir: Path, sensevoice_dir: Path
) -> None:
    settings = make_settings(tmp_path, model={"backend": "sensevoice", "model": str(sensevoice_dir)})
    async with running_app(settings) as h:
        bodies = {}
        for name, fmt in (("fox", "wav"), ("weather", "mp3")):
            path = speech_dir / f"{name}.{fmt}"
            r = await h.client.post(
                "/transcribe", files={"file": (path.name, path.read_bytes())}, data={"rich_output": "true"}
            )
            assert r.status_code == 200, r.text
            bodies[name] = r.json()
        fox, weather = bodies["fox"], bodies["weather"]
        assert (fox["backend"], fox["model"], fox["language"]) == ("sensevoice", "SenseVoiceSmall", "en")
        assert fox["text"] == "hello world"
        [seg] = fox["segments"]
        assert (seg["emotion"], seg["events"], seg["language"]) == ("NEUTRAL", ["Speech"], "en")
        assert 0 <= seg["start"] < 1.0 and fox["duration"] - 1.0 < seg["end"] <= fox["duration"] + 0.01
        assert fox["raw_text"] == "<|en|><|NEUTRAL|><|Speech|><|withitn|> hello world"
        assert weather["segments"][0]["emotion"] == "HAPPY" and weather["segments"][0]["events"] == ["BGM"]
        assert weather["text"] == "🎼good morning😊"  # FunASR's rich_transcription_postprocess
        for emotion, count in (("NEUTRAL", 1), ("HAPPY", 1), ("SAD", 0)):
            assert h.sample("asr_emotion_total", {"emotion": emotion}) == count
        assert h.sample("asr_audio_events_total", {"event": "BGM"}) == 1
        assert h.sample("asr_audio_events_total", {"event": "Speech"}) == 1
        assert (
            h.sample(
                "asr_model_info",
                {"backend": "sensevoice", "model": "SenseVoiceSmall", "device": "cpu", "compute_type": "float32"},
            )
            == 1
        )

        # What SenseVoice cannot do is refused, with the reason.
        wav = {"file": ("fox.wav", (speech_dir / "fox.wav").read_bytes())}
        for data, needle in (
            ({"task": "translate"}, "translation"),
            ({"word_timestamps": "true"}, "word timestamps"),
            ({"language": "de"}, "unsupported language"),
            ({"prompt": "x"}, "a prompt"),
        ):
            r = await h.client.post("/transcribe", files=wav, data=data)
            assert r.status_code == 422 and needle in r.json()["error"]["message"], r.text
        r = await h.client.post("/v1/audio/transcriptions", files=wav, data={"model": "whisper-1", "language": "en"})
        assert r.json()["text"] == "hello world" and r.json()["usage"]["type"] == "duration"


@pytest.mark.slow
@pytest.mark.anyio
async def test_sensevoice_with_funasr_vad_model(tmp_path: Path, speech_dir: Path, sensevoice_dir: Path) -> None:
    vad = build_fsmn_vad(tmp_path / "fsmn-vad")
    settings = make_settings(tmp_path, model={"backend": "sensevoice", "model": str(sensevoice_dir)})
    settings = settings.model_copy(
        update={"sensevoice": settings.sensevoice.model_copy(update={"vad_model": str(vad)})}
    )
    async with running_app(settings) as h:
        path = speech_dir / "fox.mp3"
        r = await h.client.post(
            "/transcribe", files={"file": (path.name, path.read_bytes())}, data={"response_format": "srt"}
        )
        assert r.status_code == 200, r.text
        assert r.text.startswith("1\n00:00:00,000 --> 00:00:0") and "hello world" in r.text
        r = await h.client.post("/transcribe", files={"file": (path.name, path.read_bytes())})
        [seg] = r.json()["segments"]
        assert seg["emotion"] == "NEUTRAL" and seg["end"] > seg["start"]


@pytest.mark.slow
def test_sensevoice_by_environment_through_the_real_server(
    tmp_path: Path, speech_dir: Path, sensevoice_dir: Path
) -> None:
    env = {"ASR_BACKEND": "sensevoice", "ASR_MODEL": str(sensevoice_dir)}
    with serve(env, tmp_path, ready_timeout=180) as server:
        r = httpx.post(
            server.url + "/transcribe", files={"file": ("w.ogg", (speech_dir / "weather.ogg").read_bytes())}, timeout=60
        )
        metrics = httpx.get(server.url + "/metrics").text
        live = _live_turn(server, speech_dir / "weather.wav", tmp_path)
    assert r.status_code == 200 and r.json()["segments"][0]["emotion"] == "HAPPY"
    assert 'asr_emotion_total{emotion="HAPPY"} 1.0' in metrics
    # Live: SenseVoice transcribes each VAD turn whole (no partials), with its tags on the turn.
    kinds = [e["type"] for e in live]
    assert "input_audio_buffer.speech_started" in kinds and "input_audio_buffer.committed" in kinds
    completed = live[-1]
    # No partials while the speaker talks: one delta, the whole turn, after the commit.
    deltas = [e["delta"] for e in live if e["type"].endswith("transcription.delta")]
    assert deltas == [completed["transcript"]] and kinds.index("input_audio_buffer.committed") < kinds.index(
        "conversation.item.input_audio_transcription.delta"
    )
    assert completed["type"] == "conversation.item.input_audio_transcription.completed"
    assert (completed["emotion"], completed["events"], completed["language"]) == ("HAPPY", ["BGM"], "en")
    assert "good morning" in completed["transcript"]


def _live_turn(server: Server, wav: Path, tmp_path: Path) -> list[dict[str, Any]]:
    """One spoken turn (then silence) over the Realtime WebSocket with server VAD; the events until it completed."""
    raw = tmp_path / "turn.raw"
    subprocess.run(
        ["sox", str(wav), "-r", "24000", "-b", "16", "-t", "raw", "-e", "signed", str(raw), "pad", "0.3", "1.5"],
        check=True,
    )
    url = server.url.replace("http", "ws") + "/v1/realtime?intent=transcription"
    events: list[dict[str, Any]] = []
    with connect(url) as ws:
        session = {"type": "transcription", "audio": {"input": {"transcription": {"language": "en"}}}}
        ws.send(json.dumps({"type": "session.update", "session": session}))
        ws.send(json.dumps({"type": "input_audio_buffer.append", "audio": base64.b64encode(raw.read_bytes()).decode()}))
        while not events or not events[-1]["type"].endswith("transcription.completed"):
            events.append(json.loads(ws.recv(timeout=60)))
            assert events[-1]["type"] != "error", events[-1]
    return events


@pytest.mark.anyio
async def test_sensevoice_without_a_model_directory_is_not_ready_with_a_reason(tmp_path: Path) -> None:
    settings = make_settings(
        tmp_path, model={"backend": "sensevoice", "model": "embedded:base"}, server={"admin_token": ADMIN_TOKEN}
    )
    async with running_app(settings, wait_ready=False) as h:
        body = (await settled_readiness(h, ADMIN)).json()
    assert body["status"] == "failed" and "SenseVoiceSmall directory" in body["error"]


# ---- Whisper through openai-whisper -----------------------------------------------------------------


@pytest.fixture(scope="module")
def whisper_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_openai_whisper(tmp_path_factory.mktemp("openai-whisper") / "tiny-random.pt")


@pytest.mark.slow
def test_openai_whisper_by_environment_through_the_real_server(
    tmp_path: Path, speech_dir: Path, whisper_checkpoint: Path
) -> None:
    env = {"ASR_BACKEND": "openai-whisper", "ASR_MODEL": str(whisper_checkpoint)}
    files = {"file": ("fox.mp3", (speech_dir / "fox.mp3").read_bytes())}
    with serve(env, tmp_path, ready_timeout=180) as server:
        r = httpx.post(server.url + "/transcribe", files=files, timeout=120, data={"response_format": "verbose_json"})
        assert r.status_code == 200, r.text
        body = r.json()
        ready = httpx.get(server.url + "/readyz").json()
        # One fixed temperature: a random model would otherwise retry every window six times.
        r = httpx.post(
            server.url + "/v1/audio/transcriptions",
            files=files,
            timeout=120,
            data={
                "model": "tiny-random",
                "response_format": "verbose_json",
                "timestamp_granularities[]": "word",
                "temperature": "0.3",
                "language": "en",
            },
        )
        assert r.status_code == 200, r.text
        openai_body = r.json()
        live = _live_turn(server, speech_dir / "fox.wav", tmp_path)
    from whisper.tokenizer import LANGUAGES

    # Live, by re-decoding the growing turn: the turn completes with its audio's length.
    assert live[-1]["usage"]["seconds"] == pytest.approx(body["duration"], abs=1.0)

    # Random weights: the words are nonsense, but the answer has the faster-whisper backend's shape.
    assert (body["backend"], body["model"], ready["device"]) == ("openai-whisper", "tiny-random", "cpu")
    assert isinstance(body["text"], str) and body["language"] in LANGUAGES
    assert body["duration"] == pytest.approx(3.0, abs=1.5) and 0 <= body["language_probability"] <= 1
    for seg in body["segments"]:
        assert 0 <= seg["start"] <= seg["end"] and {"avg_logprob", "no_speech_prob", "tokens"} <= set(seg)
    assert openai_body["language"] == "english" and isinstance(openai_body["words"], list)
    assert all(w["start"] <= w["end"] for w in openai_body["words"])
    assert {s["temperature"] for s in openai_body["segments"]} <= {0.3}


@pytest.mark.anyio
async def test_openai_whisper_by_name_without_weights_says_where_it_looked(tmp_path: Path) -> None:
    settings = make_settings(
        tmp_path,
        model={"backend": "openai-whisper", "model": "large-v3", "local_files_only": True},
        server={"admin_token": ADMIN_TOKEN},
    )
    async with running_app(settings, wait_ready=False) as h:
        public = (await settled_readiness(h)).json()
        body = (await settled_readiness(h, ADMIN)).json()
    assert str(tmp_path) not in public["error"] and "large-v3" in public["error"]
    assert body["status"] == "failed"
    assert str(tmp_path / "cache" / "openai-whisper" / "large-v3.pt") in body["error"]


@pytest.mark.anyio
async def test_faster_whisper_by_name_offline_without_a_local_copy_says_so(tmp_path: Path) -> None:
    settings = make_settings(tmp_path, model={"model": "large-v3", "local_files_only": True})
    async with running_app(settings, wait_ready=False) as h:
        body = (await settled_readiness(h)).json()
    assert body["status"] == "failed" and "large-v3" in body["error"]
