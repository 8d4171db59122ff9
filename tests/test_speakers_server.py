"""Who spoke, through the real server with the real embedder (resemblyzer) on conversations of
espeak-ng voices built here (bench/conversations.py): the official openai client's diarized_json and
its stream, speakers named from reference clips, speaker-aware subtitles, every bad speaker input,
and a diarized job killed with SIGKILL and resumed with its speakers kept."""

from __future__ import annotations

import base64
import os
import random
import signal
import threading
from collections import Counter
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import openai
import pytest
from openai.types.audio import TranscriptionDiarized, TranscriptionTextDoneEvent, TranscriptionTextSegmentEvent

from bench.conversations import Conversation, VoiceBank, build, reference_clip, write_wav
from service.backends.base import SAMPLE_RATE
from tests.conftest import Server, serve, wait_until

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def bank(tmp_path_factory: pytest.TempPathFactory) -> VoiceBank:
    return VoiceBank(tmp_path_factory.mktemp("voices"))


@pytest.fixture(scope="module")
def talk(bank: VoiceBank, tmp_path_factory: pytest.TempPathFactory) -> tuple[Conversation, Path]:
    """Two voices taking six turns (about 30 s), as a WAV upload."""
    conversation = build(bank, 2, seed=12, turns=6)
    return conversation, write_wav(tmp_path_factory.mktemp("talk") / "talk.wav", conversation.audio)


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Any:
    with serve({}, tmp_path_factory.mktemp("speakers-server")) as running:
        yield running


def _voice_at(conversation: Conversation, start: float, end: float) -> str | None:
    held = Counter[str]()
    for s, e, voice in conversation.turns:
        held[voice] += max(0.0, min(end, e) - max(start, s))
    best = held.most_common(1)
    return best[0][0] if best and best[0][1] > 0 else None


def _who_is_who(conversation: Conversation, segments: list[tuple[float, float, str]]) -> dict[str, str]:
    """Each label's voice; asserts that every label is one voice (90% of its time) and every voice one label."""
    time_by: dict[str, Counter[str]] = {}
    for start, end, label in segments:
        voice = _voice_at(conversation, start, end)
        if voice is not None:
            time_by.setdefault(label, Counter())[voice] += end - start
    mapping = {}
    for label, voices in time_by.items():
        voice, held = voices.most_common(1)[0]
        assert held >= 0.9 * sum(voices.values()), (label, voices)
        mapping[label] = voice
    assert sorted(mapping.values()) == sorted(set(conversation.voices)), (mapping, conversation.voices)
    return mapping


def _client(server: Server) -> openai.OpenAI:
    return openai.OpenAI(base_url=server.url + "/v1", api_key="not-needed", max_retries=0, timeout=120)


def _data_url(path: Path) -> str:
    return "data:audio/wav;base64," + base64.b64encode(path.read_bytes()).decode()


def _clip(bank: VoiceBank, voice: str, folder: Path, seconds: float = 5.0) -> Path:
    return write_wav(folder / f"{voice.replace('+', '_')}-{seconds}.wav", reference_clip(bank, voice, 1, seconds))


def test_the_openai_client_gets_diarized_json_with_each_segments_speaker(
    server: Server, talk: tuple[Conversation, Path]
) -> None:
    conversation, wav = talk
    with open(wav, "rb") as audio:
        answer = _client(server).audio.transcriptions.create(
            model="gpt-4o-transcribe-diarize", file=audio, response_format="diarized_json"
        )
    assert isinstance(answer, TranscriptionDiarized)
    assert answer.task == "transcribe" and answer.duration == pytest.approx(conversation.duration, abs=0.05)
    assert answer.usage is not None and answer.usage.type == "duration"
    assert all(s.type == "transcript.text.segment" and s.id.startswith("seg_") for s in answer.segments)
    assert {s.speaker for s in answer.segments} == {"A", "B"}
    assert answer.segments[0].speaker == "A"  # letters in the order people first speak
    _who_is_who(conversation, [(s.start, s.end, s.speaker) for s in answer.segments])
    assert " ".join(s.text for s in answer.segments).split() == answer.text.split()


def test_the_diarized_stream_sends_each_segment_with_its_speaker_then_done(
    server: Server, talk: tuple[Conversation, Path]
) -> None:
    conversation, wav = talk
    with open(wav, "rb") as audio:
        stream = _client(server).audio.transcriptions.create(
            model="gpt-4o-transcribe-diarize", file=audio, response_format="diarized_json", stream=True
        )
        events = list(stream)
    *segments, done = events
    assert segments and all(isinstance(e, TranscriptionTextSegmentEvent) for e in segments)
    assert isinstance(done, TranscriptionTextDoneEvent) and done.text
    _who_is_who(conversation, [(e.start, e.end, e.speaker) for e in segments])


def test_reference_clips_name_their_speakers_and_a_strangers_names_nobody(
    server: Server, talk: tuple[Conversation, Path], bank: VoiceBank, tmp_path: Path
) -> None:
    conversation, wav = talk
    first, second = conversation.voices
    stranger = next(v for v in ("en+Lee", "en+anika", "en-us") if v not in conversation.voices)
    references = [_data_url(_clip(bank, v, tmp_path)) for v in (second, stranger)]
    with open(wav, "rb") as audio:
        answer = _client(server).audio.transcriptions.create(
            model="gpt-4o-transcribe-diarize",
            file=audio,
            response_format="diarized_json",
            known_speaker_names=["bob", "zed"],
            known_speaker_references=references,
        )
    assert isinstance(answer, TranscriptionDiarized)
    mapping = _who_is_who(conversation, [(s.start, s.end, s.speaker) for s in answer.segments])
    assert mapping == {"A": first, "bob": second}  # the stranger's name is nowhere; the other is A
    matched = _metric(server, "asr_known_speaker_matches_total", 'outcome="matched"')
    assert matched >= 1


def test_subtitles_and_our_json_carry_the_speakers(server: Server, talk: tuple[Conversation, Path]) -> None:
    conversation, wav = talk
    data = wav.read_bytes()
    vtt = httpx.post(
        server.url + "/transcribe",
        files={"file": ("talk.wav", data)},
        data={"diarize": "true", "response_format": "vtt"},
        timeout=120,
    )
    assert vtt.status_code == 200 and vtt.text.startswith("WEBVTT")
    cues = [line for line in vtt.text.splitlines() if line.startswith("<v ")]
    assert cues and all(line.endswith("</v>") for line in cues)
    assert {line[3 : line.index(">")] for line in cues} == {"A", "B"}
    srt = httpx.post(
        server.url + "/transcribe",
        files={"file": ("talk.wav", data)},
        data={"diarize": "true", "response_format": "srt"},
        timeout=120,
    ).text
    assert any(line.startswith("A: ") for line in srt.splitlines())
    assert any(line.startswith("B: ") for line in srt.splitlines())
    body = httpx.post(
        server.url + "/transcribe",
        files={"file": ("talk.wav", data)},
        data={"max_speakers": "2", "word_timestamps": "true"},
        timeout=120,
    ).json()
    assert body["speakers"] == ["A", "B"]
    _who_is_who(conversation, [(s["start"], s["end"], s["speaker"]) for s in body["segments"]])
    for segment in body["segments"]:
        assert {w["speaker"] for w in segment["words"]} == {segment["speaker"]}
    # Without diarize nothing changes: no speaker anywhere.
    plain = httpx.post(server.url + "/transcribe", files={"file": ("talk.wav", data)}, timeout=120).json()
    assert "speakers" not in plain and all("speaker" not in s for s in plain["segments"])


def _metric(server: Server, name: str, labels: str = "") -> float:
    for line in httpx.get(server.url + "/metrics", timeout=10).text.splitlines():
        if line.startswith(name + ("{" + labels + "}" if labels else " ")):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


def test_every_bad_speaker_input_is_a_422_naming_its_field(
    server: Server, talk: tuple[Conversation, Path], bank: VoiceBank, tmp_path: Path
) -> None:
    _, wav = talk
    voice = "en-us"
    good = _data_url(_clip(bank, voice, tmp_path))
    short = _data_url(_clip(bank, voice, tmp_path, seconds=1.0))
    twelve = bank.turn(voice, random.Random(1), 12.0)
    assert len(twelve) / SAMPLE_RATE > 10.5
    long = write_wav(tmp_path / "long.wav", twelve)
    not_audio = "data:audio/wav;base64," + base64.b64encode(b"these bytes are no audio at all").decode()
    diarized = {"model": "gpt-4o-transcribe-diarize", "response_format": "diarized_json"}
    cases: list[tuple[str, dict[str, Any], str, str]] = [
        ("/v1/audio/transcriptions", {"known_speaker_names[]": ["a"], "known_speaker_references[]": [not_audio]},
         "known_speaker_references", "known_speaker_references[0]"),
        ("/v1/audio/transcriptions", {"known_speaker_names[]": ["a"], "known_speaker_references[]": [short]},
         "known_speaker_references", "must last 2 to 10 s"),
        ("/v1/audio/transcriptions", {"known_speaker_names[]": ["a"], "known_speaker_references[]": [_data_url(long)]},
         "known_speaker_references", "must last 2 to 10 s"),
        ("/v1/audio/transcriptions", {"known_speaker_names[]": list("abcde"), "known_speaker_references[]": [good] * 5},
         "known_speaker_names", "at most 4"),
        ("/v1/audio/transcriptions", {"known_speaker_names[]": ["x" * 65], "known_speaker_references[]": [good]},
         "known_speaker_names", "longer than 64"),
        ("/v1/audio/transcriptions", {"known_speaker_names[]": ["a", "a"], "known_speaker_references[]": [good, good]},
         "known_speaker_names", "named twice"),
        ("/v1/audio/transcriptions", {"known_speaker_names[]": ["a", "b"], "known_speaker_references[]": [good]},
         "known_speaker_references", "1 reference(s) for 2"),
        ("/v1/audio/transcriptions", {"known_speaker_names[]": ["a"], "known_speaker_references[]": ["file.wav"]},
         "known_speaker_references", "not a base64 data URL"),
        ("/v1/audio/transcriptions", {"chunking_strategy[type]": "semantic"}, "chunking_strategy", "server_vad"),
        ("/v1/audio/transcriptions", {"response_format": "json", "known_speaker_names[]": ["a"],
         "known_speaker_references[]": [good]}, "known_speaker_names", "diarized_json"),
        ("/v1/audio/translations", {}, "response_format", "diarized_json"),
        ("/transcribe", {"min_speakers": "3", "max_speakers": "2"}, "max_speakers", "below min_speakers"),
        ("/transcribe", {"min_speakers": "20"}, "min_speakers", "at most 10"),
        ("/transcribe", {"max_speakers": "0"}, "max_speakers", "greater than or equal to 1"),
    ]  # fmt: skip
    refused = _metric(server, "asr_requests_rejected_total", 'reason="bad_request"')
    for route, fields, param, said in cases:
        data = {**(diarized if route.startswith("/v1") else {}), **fields}
        r = httpx.post(server.url + route, files={"file": ("talk.wav", wav.read_bytes())}, data=data, timeout=120)
        assert r.status_code == 422, (route, fields, r.text)
        error = r.json()["error"]
        assert error["param"] == param and said in error["message"], (fields, error)
    assert _metric(server, "asr_requests_rejected_total", 'reason="bad_request"') == refused + len(cases)
    assert httpx.get(server.url + "/readyz", timeout=10).status_code == 200


def test_a_diarized_job_killed_and_resumed_keeps_its_speakers(bank: VoiceBank, tmp_path: Path) -> None:
    conversation = build(bank, 3, seed=31, turns=18)  # about 100 s: four 30 s windows
    upload = write_wav(tmp_path / "meeting.wav", conversation.audio).read_bytes()
    env = {"ASR_JOBS_WINDOW_SECONDS": "30"}

    def status(url: str, job_id: str) -> dict[str, Any]:
        body: dict[str, Any] = httpx.get(f"{url}/v1/jobs/{job_id}", timeout=10).json()
        return body

    with serve(env, tmp_path) as first:
        r = httpx.post(
            first.url + "/v1/jobs",
            files={"file": ("meeting.wav", upload)},
            data={"language": "en", "diarize": "true"},
            timeout=60,
        )
        assert r.status_code == 202, r.text
        job_id = r.json()["id"]
        wait_until(lambda: status(first.url, job_id)["progress"]["audio_seconds_done"] >= 30, 180, "a first window")
        done_before = status(first.url, job_id)["progress"]["audio_seconds_done"]
        os.killpg(first.process.pid, signal.SIGKILL)
        first.process.wait()
    assert done_before < conversation.duration - 1, "the job finished before it could be killed"

    with serve(env, tmp_path) as second:
        wait_until(lambda: status(second.url, job_id)["status"] == "succeeded", 300, "the resumed job")
        body = httpx.get(f"{second.url}/v1/jobs/{job_id}/result", timeout=10).json()
        srt = httpx.get(f"{second.url}/v1/jobs/{job_id}/result", params={"response_format": "srt"}, timeout=10).text
    segments = [(s["start"], s["end"], s["speaker"]) for s in body["segments"]]
    mapping = _who_is_who(conversation, segments)  # one label per voice across every window
    assert set(body["speakers"]) == set(mapping)
    assert len(mapping) == 3
    before = {label for start, _, label in segments if start < done_before - 1}
    after = {label for start, _, label in segments if start > done_before + 1}
    assert before & after, "no voice was heard both before the kill and after the resume"
    assert any(line[:3] in ("A: ", "B: ", "C: ") for line in srt.splitlines())


def test_a_realtime_session_that_asks_gets_each_turns_speaker(server: Server, bank: VoiceBank) -> None:
    first, second = "en+f2", "en+iven"
    order = [first, second, first, second]
    rng = random.Random(5)
    quiet = np.zeros(int(1.2 * SAMPLE_RATE), dtype=np.float32)
    audio = np.concatenate([quiet, *[np.concatenate([bank.turn(v, rng, 3.5), quiet]) for v in order]])
    at_24k = np.interp(np.arange(0, len(audio), SAMPLE_RATE / 24_000), np.arange(len(audio)), audio)
    pcm = (np.clip(at_24k, -1, 1) * 32767).astype("<i2").tobytes()
    session = {
        "type": "transcription",
        "audio": {
            "input": {
                "format": {"type": "audio/pcm", "rate": 24000},
                "transcription": {"model": "whisper-1", "language": "en", "speakers": True},
                "turn_detection": {"type": "server_vad", "silence_duration_ms": 500},
            }
        },
    }
    speakers: list[str] = []
    with _client(server).realtime.connect(extra_query={"intent": "transcription"}) as conn:
        watchdog = threading.Timer(120, conn.close)  # turns that never complete end the loop below
        watchdog.start()
        conn.session.update(session=session)
        for i in range(0, len(pcm), 4800):
            conn.input_audio_buffer.append(audio=base64.b64encode(pcm[i : i + 4800]).decode())
        for event in conn:
            assert event.type != "error", event
            if event.type == "conversation.item.input_audio_transcription.completed":
                speakers.append(getattr(event, "speaker", None) or (event.model_extra or {}).get("speaker"))
                if len(speakers) == len(order):
                    break
        watchdog.cancel()
    assert speakers == ["A", "B", "A", "B"]
