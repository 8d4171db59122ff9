"""The Realtime protocol's typed events and the session's input buffer, without a server."""

from __future__ import annotations

import json
import types
import typing
from typing import Any

import numpy as np
import pytest
from openai.types.realtime.audio_transcription import AudioTranscription
from openai.types.realtime.realtime_transcription_session_create_request import (
    RealtimeTranscriptionSessionCreateRequest,
)
from pydantic import BaseModel

from service.config import StreamSettings
from service.streaming.audio_in import AudioInput
from service.streaming.buffer import InputBuffer
from service.streaming.connection import FrameGate
from service.streaming.events import (
    CLIENT_TURN_MODELS,
    ClientEventError,
    SemanticVad,
    ServerVad,
    SessionConfig,
    SessionUpdateEvent,
    parse_event,
)


def _error(frame: Any) -> ClientEventError:
    with pytest.raises(ClientEventError) as caught:
        parse_event(frame if isinstance(frame, str) else json.dumps(frame))
    return caught.value


def _update(input_: dict[str, Any]) -> SessionUpdateEvent:
    event = parse_event(json.dumps({"type": "session.update", "session": {"audio": {"input": input_}}}))
    assert isinstance(event, SessionUpdateEvent)
    return event


@pytest.mark.parametrize(
    ("frame", "code"),
    [
        ("not json", "invalid_json"),
        ([1, 2], "invalid_event"),
        ({"type": "response.create"}, "unknown_event"),
        ({"type": "input_audio_buffer.append", "audio": 5}, "invalid_audio"),
        ({"type": "session.update", "session": 5}, "invalid_session"),
        ({"type": "session.update", "session": {"type": "realtime"}}, "unsupported_session"),
        ({"type": "session.update", "session": {"audio": "x"}}, "invalid_session"),
        ({"type": "session.update", "session": {"audio": {"input": [1]}}}, "invalid_session"),
        (
            {"type": "session.update", "session": {"audio": {"input": {"format": {"type": "audio/mp3"}}}}},
            "unsupported_format",
        ),
        (
            {
                "type": "session.update",
                "session": {"audio": {"input": {"format": {"type": "audio/pcm", "rate": 8000}}}},
            },
            "unsupported_format",
        ),
        ({"type": "session.update", "session": {"audio": {"input": {"transcription": 5}}}}, "invalid_session"),
        (
            {"type": "session.update", "session": {"audio": {"input": {"turn_detection": {"type": "vad"}}}}},
            "unsupported_turn_detection",
        ),
        (
            {
                "type": "session.update",
                "session": {"audio": {"input": {"turn_detection": {"type": "server_vad", "threshold": 2}}}},
            },
            "invalid_turn_detection",
        ),
    ],
)
def test_bad_events_get_the_code_of_their_error_event(frame: Any, code: str) -> None:
    assert _error(frame).code == code


def test_the_event_id_is_echoed_and_the_location_names_the_field() -> None:
    frame = {"type": "session.update", "event_id": "e7", "session": {"audio": {"input": {"format": {"type": "x"}}}}}
    error = _error(frame)
    assert (error.event_id, error.param) == ("e7", "session.audio.input.format")
    # The union's tag is not a key the client wrote.
    rate = {"type": "session.update", "session": {"audio": {"input": {"format": {"type": "audio/pcm", "rate": 1}}}}}
    assert _error(rate).param == "session.audio.input.format.rate"


def test_an_update_replaces_what_it_names_and_keeps_the_rest() -> None:
    config = SessionConfig(id="sess_1")
    config.input.transcription.model = "tiny.en"
    before = config.body()
    update = _update({"transcription": {"language": "en"}, "turn_detection": {"type": "server_vad", "threshold": 0.7}})
    after = config.updated(update.session).body()["audio"]["input"]
    assert after["transcription"] == {"model": "tiny.en", "language": "en", "prompt": None, "keywords": None}
    # A turn_detection object is whole: what it leaves out takes the protocol's defaults.
    assert after["turn_detection"] == {
        "type": "server_vad",
        "threshold": 0.7,
        "prefix_padding_ms": 300,
        "silence_duration_ms": 500,
    }
    assert after["format"] == {"type": "audio/pcm", "rate": 24000}
    assert config.body() == before  # the update made a new configuration
    off = config.updated(_update({"turn_detection": None, "format": {"type": "audio/pcmu"}}).session).body()
    assert off["audio"]["input"]["turn_detection"] is None and off["audio"]["input"]["format"] == {"type": "audio/pcmu"}


def test_the_buffer_keeps_positions_across_trims_and_growth() -> None:
    buffer = InputBuffer()
    for i in range(100):
        buffer.append(np.full(500, i, dtype=np.float32), now=float(i))
    assert (buffer.start, buffer.received, buffer.size) == (0, 50_000, 50_000)
    buffer.trim(20_250)
    assert buffer.start == 20_250 and buffer.size == 29_750
    part = buffer.slice(20_000, 21_000)  # before the start: only what is held
    assert part.size == 750 and part[0] == 40 and part[-1] == 41
    assert buffer.arrived(20_400) == 40.0 and buffer.arrived(21_000) == 41.0
    buffer.append(np.ones(100_000, dtype=np.float32), now=100.0)
    assert buffer.slice(49_999, 50_001).tolist() == [99.0, 1.0]
    buffer.clear()
    assert (buffer.start, buffer.size) == (150_000, 0) and buffer.slice(0, 10**9).size == 0


# ---- every field of the protocol's transcription session: honoured or refused by name ---------------


def _leaves(model: type[BaseModel], prefix: str) -> set[str]:
    """The leaf fields of one of the openai package's models, union variants named by class."""
    found = set()
    for name, field in model.model_fields.items():
        variants = [t for t in _flatten(field.annotation) if isinstance(t, type) and issubclass(t, BaseModel)]
        for variant in variants:
            tag = f".{variant.__name__}" if len(variants) > 1 or name == "noise_reduction" else ""
            found |= _leaves(variant, f"{prefix}.{name}{tag}")
        if not variants:
            found.add(f"{prefix}.{name}")
    return found


def _flatten(annotation: Any) -> list[Any]:
    args = typing.get_args(annotation)
    if typing.get_origin(annotation) in (typing.Annotated,):
        return _flatten(args[0])
    if args and typing.get_origin(annotation) in (typing.Union, types.UnionType):
        return [t for arg in args for t in _flatten(arg)]
    return [annotation]


def _at(path: str, value: Any) -> dict[str, Any]:
    """A session.update's `session` setting one field: `audio.input.turn_detection.ServerVad.threshold`."""
    tags = {"AudioPCM": "audio/pcm", "AudioPCMU": "audio/pcmu", "AudioPCMA": "audio/pcma"}
    tags |= {"ServerVad": "server_vad", "SemanticVad": "semantic_vad", "NoiseReduction": None}
    parts = path.split(".")
    node: dict[str, Any] = {}
    root = node
    for i, part in enumerate(parts[:-1]):
        if part in tags:
            continue
        child: dict[str, Any] = {}
        node[part] = child
        node = child
        if i + 1 < len(parts) - 1 and parts[i + 1] in tags and tags[parts[i + 1]] is not None:
            node["type"] = tags[parts[i + 1]]
    node[parts[-1]] = value
    return root


_TD = "audio.input.turn_detection"
# Each leaf of openai's RealtimeTranscriptionSessionCreateRequest: the value sent, and what it does
# (None: honoured, shown in session.updated at its place; a string: refused, that string the error's param).
AUDIT: dict[str, tuple[Any, str | None]] = {
    "type": ("transcription", None),
    "include": (["item.input_audio_transcription.logprobs"], None),
    "audio.input.format.AudioPCM.rate": (16000, None),
    "audio.input.format.AudioPCM.type": ("audio/pcm", None),
    "audio.input.format.AudioPCMU.type": ("audio/pcmu", None),
    "audio.input.format.AudioPCMA.type": ("audio/pcma", None),
    "audio.input.noise_reduction.NoiseReduction.strength": (0.5, "session.audio.input.noise_reduction"),
    "audio.input.noise_reduction.NoiseReduction.type": ("near_field", "session.audio.input.noise_reduction"),
    "audio.input.transcription.delay": ("low", "session.audio.input.transcription.delay"),
    "audio.input.transcription.keywords": (["Zeus"], None),
    "audio.input.transcription.language": ("en", None),
    "audio.input.transcription.languages": (["en", "de"], "session.audio.input.transcription.languages"),
    "audio.input.transcription.model": ("gpt-4o-transcribe", None),
    "audio.input.transcription.prompt": ("Zeus and Hera", None),
    f"{_TD}.ServerVad.type": ("server_vad", None),
    f"{_TD}.ServerVad.create_response": (True, f"session.{_TD}.create_response"),
    f"{_TD}.ServerVad.idle_timeout_ms": (5000, f"session.{_TD}.idle_timeout_ms"),
    f"{_TD}.ServerVad.interrupt_response": (True, f"session.{_TD}.interrupt_response"),
    f"{_TD}.ServerVad.prefix_padding_ms": (200, None),
    f"{_TD}.ServerVad.silence_duration_ms": (700, None),
    f"{_TD}.ServerVad.threshold": (0.6, None),
    f"{_TD}.SemanticVad.type": ("semantic_vad", None),
    f"{_TD}.SemanticVad.create_response": (True, f"session.{_TD}.create_response"),
    f"{_TD}.SemanticVad.eagerness": ("high", None),
    f"{_TD}.SemanticVad.interrupt_response": (True, f"session.{_TD}.interrupt_response"),
}


def test_the_audit_covers_every_field_the_protocol_has() -> None:
    fields = {leaf.removeprefix(".") for leaf in _leaves(RealtimeTranscriptionSessionCreateRequest, "")}
    assert fields == set(AUDIT)


@pytest.mark.parametrize("path", sorted(AUDIT))
def test_every_session_field_is_honoured_or_refused_by_name(path: str) -> None:
    value, refused_as = AUDIT[path]
    frame = json.dumps({"type": "session.update", "session": _at(path, value)})
    config = SessionConfig(id="sess_1")
    if refused_as is not None:
        error = _error(frame)
        assert (error.code, error.param) == ("unsupported_parameter", refused_as)
        return
    event = parse_event(frame)
    assert isinstance(event, SessionUpdateEvent)
    shown: Any = config.updated(event.session).body()
    for part in path.split("."):
        if part not in ("AudioPCM", "AudioPCMU", "AudioPCMA", "ServerVad", "SemanticVad"):
            shown = shown[part]
    assert shown == value


def test_unknown_fields_are_named_not_ignored() -> None:
    error = _error({"type": "session.update", "session": {"input_audio_format": "pcm16"}})
    assert (error.code, error.param) == ("unknown_parameter", "session.input_audio_format")
    error = _error({"type": "input_audio_buffer.commit", "event_id": "e1", "item_id": "x"})
    assert (error.code, error.param, error.event_id) == ("unknown_parameter", "item_id", "e1")


def test_semantic_vad_is_served_by_our_vad_with_a_silence_from_its_eagerness() -> None:
    config = SessionConfig(id="sess_1")
    for eagerness, silence in (("low", 1500), ("medium", 800), ("auto", 800), ("high", 500)):
        update = _update({"turn_detection": {"type": "semantic_vad", "eagerness": eagerness}})
        shown = config.updated(update.session).body()["audio"]["input"]["turn_detection"]
        assert shown == {
            "type": "semantic_vad",
            "eagerness": eagerness,
            "threshold": 0.5,
            "prefix_padding_ms": 300,
            "silence_duration_ms": silence,
        }
    update = _update({"turn_detection": {"type": "semantic_vad"}})
    assert config.updated(update.session).input.turn_detection == SemanticVad(eagerness="auto")


def test_models_without_server_turn_detection_default_to_client_commits() -> None:
    # The names are the openai package's own.
    names = {a for t in _flatten(AudioTranscription.model_fields["model"].annotation) for a in typing.get_args(t)}
    assert names >= CLIENT_TURN_MODELS
    config = SessionConfig(id="sess_1")
    whisper = _update({"transcription": {"model": "gpt-realtime-whisper"}}).session
    assert config.updated(whisper, default_detection=True).input.turn_detection is None
    # Unless the client chose a turn_detection: then it stays.
    assert config.updated(whisper, default_detection=False).input.turn_detection == ServerVad()
    back = _update({"transcription": {"model": "whisper-1"}}).session
    off = config.updated(whisper, default_detection=True)
    assert off.updated(back, default_detection=True).input.turn_detection == ServerVad()


@pytest.mark.parametrize(
    "frame",
    [
        {"type": "session.update", "session": {"audio": "x"}},
        {"type": "session.update", "session": {"audio": ["x"]}},
        {"type": "session.update", "session": {"audio": 7}},
        "[" * 100_000 + "]" * 100_000,
        "{" * 50_000,
        json.dumps({"type": "session.update", "session": {"a": [[[[[[1]]]]]]}}),
        # Found by the fuzz test: a lone surrogate, echoed in the error event, ended the session.
        '{"type": "input_audio_buffer.clear", "event_id": "\\ud874x"}',
    ],
)
def test_frames_that_crashed_sessions_are_errors(frame: Any) -> None:
    assert _error(frame).code in ("invalid_session", "invalid_json", "unknown_parameter")


def test_what_an_error_echoes_is_bounded() -> None:
    long = "x" * 400_000
    error = _error({"type": "session.update", "event_id": long, "session": {}})
    assert error.code == "invalid_event" and error.event_id is None
    error = _error({"type": "session.update", "session": {long: 1}})
    assert error.code == "unknown_parameter" and len(error.message) < 200
    error = _error({"type": "session.update", "session": {"audio": {"input": {"transcription": {"prompt": long}}}}})
    assert error.code == "invalid_transcription" and len(error.message) < 300


def test_an_empty_append_is_no_audio_in_every_format() -> None:
    for kind, rate in (("audio/pcm", 24_000), ("audio/pcm", 16_000), ("audio/pcmu", 8_000), ("audio/pcma", 8_000)):
        assert AudioInput(kind, rate).convert(b"").size == 0


def test_the_frame_gate_holds_a_stream_to_its_rates() -> None:
    settings = StreamSettings(
        stream_max_events_per_second=10, stream_max_audio_per_second=2, stream_audio_burst_seconds=4
    )
    gate = FrameGate(settings, now=0.0)
    small = [gate.refusal(100, 48_000, now=0.0) for _ in range(12)]
    assert small[:10] == [None] * 10 and {r[0] for r in small[10:] if r} == {"rate_limit_exceeded"}
    assert gate.refusal(100, 48_000, now=1.0) is None  # a second later: ten more
    # Audio: 4 s at once, then 2 s per second (one second of 24 kHz PCM16 is 64,000 base64 characters).
    gate = FrameGate(settings, now=0.0)
    assert [gate.refusal(64_000, 48_000, now=0.0) is None for _ in range(5)] == [True] * 4 + [False]
    assert gate.refusal(64_000, 48_000, now=0.5) is None and gate.refusal(64_000, 48_000, now=0.5) is not None
    assert gate.refusal(gate.max_chars + 1, 48_000, now=9.0) == (
        "frame_too_large",
        f"a frame may hold at most {gate.max_chars} characters",
    )
