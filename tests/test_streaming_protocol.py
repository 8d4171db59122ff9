"""The Realtime protocol's typed events and the session's input buffer, without a server."""

from __future__ import annotations

import json
from typing import Any

import numpy as np
import pytest

from service.streaming.buffer import InputBuffer
from service.streaming.events import ClientEventError, SessionConfig, SessionUpdateEvent, parse_event


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
    assert after["transcription"] == {"model": "tiny.en", "language": "en", "prompt": None}
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
