"""The Realtime protocol's client events and a transcription session's configuration, as types.

The shapes are those of the official `openai` package (openai.types.realtime): `session.update`
carries a RealtimeTranscriptionSessionCreateRequest (`type`, `audio.input.format`,
`.transcription`, `.turn_detection`, `.noise_reduction`), and the three input_audio_buffer events
carry at most `audio` and an `event_id`. `parse_event` turns one text frame into one of these
events or raises ClientEventError with the code its `error` event carries; `SessionConfig.updated`
applies a `session.update` to the session's configuration without side effects, so that a
refused update changes nothing. Server events are plain dicts built by the session.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from service.streaming.audio_in import PCM_RATES

if TYPE_CHECKING:
    from pydantic_core import ErrorDetails

FORMATS = ("audio/pcm", "audio/pcmu", "audio/pcma")


class ClientEventError(Exception):
    """A client event the session cannot act on; answered with an `error` event."""

    def __init__(self, code: str, message: str, param: str | None = None, event_id: str | None = None) -> None:
        super().__init__(message)
        self.code, self.message, self.param, self.event_id = code, message, param, event_id


class _Model(BaseModel):
    # Fields the service does not know are ignored, as they always were.
    model_config = ConfigDict(extra="ignore")


# ---- the session's configuration: what session.created / session.updated show ------------------


class PcmFormat(_Model):
    type: Literal["audio/pcm"] = "audio/pcm"
    rate: Literal[24000, 16000] = 24000


class G711Format(_Model):
    """G.711 at 8 kHz: `audio/pcmu` (mu-law) or `audio/pcma` (A-law)."""

    type: Literal["audio/pcmu", "audio/pcma"]

    @property
    def rate(self) -> int:
        return 8000


AudioFormat = Annotated[PcmFormat | G711Format, Field(discriminator="type")]


class Transcription(_Model):
    model: str | None = None
    language: str | None = None
    prompt: str | None = None


class ServerVad(_Model):
    type: Literal["server_vad"] = "server_vad"
    threshold: float = 0.5
    prefix_padding_ms: int = 300
    silence_duration_ms: int = 500


class AudioInput(_Model):
    format: AudioFormat = Field(default_factory=PcmFormat)
    transcription: Transcription = Field(default_factory=Transcription)
    turn_detection: ServerVad | None = Field(default_factory=ServerVad)
    noise_reduction: Any = None


class SessionAudio(_Model):
    input: AudioInput = Field(default_factory=AudioInput)


class SessionConfig(_Model):
    """The whole effective configuration of a transcription session."""

    type: Literal["transcription"] = "transcription"
    id: str
    audio: SessionAudio = Field(default_factory=SessionAudio)

    @property
    def input(self) -> AudioInput:
        return self.audio.input

    def body(self) -> dict[str, Any]:
        """The session as session.created / session.updated show it."""
        return self.model_dump(mode="json")

    def updated(self, update: SessionUpdate) -> SessionConfig:
        """This configuration with `update` applied (given fields replace, others stay)."""
        given = update.audio.input if update.audio is not None and update.audio.input is not None else None
        if given is None:
            return self.model_copy(deep=True)
        current = self.input
        fields = given.model_fields_set
        changed: dict[str, Any] = {}
        if "format" in fields and given.format is not None:
            changed["format"] = given.format
        if "transcription" in fields and given.transcription is not None:
            merged = current.transcription.model_dump()
            merged.update(given.transcription.model_dump(include=given.transcription.model_fields_set))
            changed["transcription"] = Transcription(**merged)
        if "turn_detection" in fields:
            changed["turn_detection"] = given.turn_detection.resolved() if given.turn_detection else None
        if "noise_reduction" in fields:
            changed["noise_reduction"] = given.noise_reduction
        audio_input = current.model_copy(update=changed, deep=True)
        return self.model_copy(update={"audio": SessionAudio(input=audio_input)}, deep=True)


# ---- client events ------------------------------------------------------------------------------


class ServerVadUpdate(_Model):
    """`server_vad` as a client sends it: absent or null values take the protocol's defaults."""

    type: Literal["server_vad"]
    threshold: float | None = Field(None, ge=0.0, le=1.0)
    prefix_padding_ms: int | None = Field(None, ge=0, le=2000)
    silence_duration_ms: int | None = Field(None, ge=100, le=5000)

    def resolved(self) -> ServerVad:
        given = {k: v for k, v in self.model_dump(exclude={"type"}).items() if v is not None}
        return ServerVad(**given)


class AudioInputUpdate(_Model):
    format: AudioFormat | None = None
    transcription: Transcription | None = None
    turn_detection: ServerVadUpdate | None = None  # null: no server VAD, the client commits
    noise_reduction: Any = None

    @field_validator("format", "transcription", mode="before")
    @classmethod
    def not_null(cls, value: object) -> object:
        # Unlike turn_detection, these have no "off": null is a mistake, not a setting.
        if value is None:
            raise ValueError("must be an object")
        return value


class SessionAudioUpdate(_Model):
    input: AudioInputUpdate | None = None


class SessionUpdate(_Model):
    type: Literal["transcription"] = "transcription"
    audio: SessionAudioUpdate | None = None


class SessionUpdateEvent(_Model):
    type: Literal["session.update"]
    event_id: str | None = None
    session: SessionUpdate


class AppendEvent(_Model):
    type: Literal["input_audio_buffer.append"]
    event_id: str | None = None
    audio: str


class CommitEvent(_Model):
    type: Literal["input_audio_buffer.commit"]
    event_id: str | None = None


class ClearEvent(_Model):
    type: Literal["input_audio_buffer.clear"]
    event_id: str | None = None


ClientEvent = SessionUpdateEvent | AppendEvent | CommitEvent | ClearEvent
EVENTS: dict[str, type[ClientEvent]] = {
    "session.update": SessionUpdateEvent,
    "input_audio_buffer.append": AppendEvent,
    "input_audio_buffer.commit": CommitEvent,
    "input_audio_buffer.clear": ClearEvent,
}


_TAGS = {*FORMATS, "server_vad"}


def parse_event(text: str) -> ClientEvent:
    """The client event in one text frame; raises ClientEventError (with the event's id, when it has one)."""
    try:
        raw = json.loads(text)
    except ValueError:
        raise ClientEventError("invalid_json", "the event is not valid JSON") from None
    if not isinstance(raw, dict):
        raise ClientEventError("invalid_event", "an event is a JSON object with a `type`")
    event_id = raw.get("event_id") if isinstance(raw.get("event_id"), str) else None
    kind = raw.get("type")
    model = EVENTS.get(kind) if isinstance(kind, str) else None
    if model is None or not isinstance(kind, str):
        shown = str(kind)[:40] if kind is not None else "none"
        raise ClientEventError("unknown_event", f"unknown or unsupported event type {shown!r}", "type", event_id)
    if not isinstance(raw.get("event_id"), str | None):
        raw = {k: v for k, v in raw.items() if k != "event_id"}  # a non-string id is not an id
    try:
        return model.model_validate(raw)
    except ValidationError as exc:
        code, message, param = _describe(kind, exc.errors()[0])
        raise ClientEventError(code, message, param, event_id) from None


def _describe(kind: str, error: ErrorDetails) -> tuple[str, str, str | None]:
    """The error code, message and param of an event's first invalid field."""
    # A tagged union puts its tag in the location (format.audio/pcm.rate): the client wrote no such key.
    loc = [str(part) for part in error["loc"] if part not in _TAGS]
    param = ".".join(loc)[:80] or None
    message = "must be an object" if error["type"] in ("model_type", "dict_type") else error["msg"][:200]
    detail = f"{param}: {message}"
    if kind == "input_audio_buffer.append":
        return "invalid_audio", "append carries base64 audio in `audio`", "audio"
    if kind != "session.update" or loc[:1] != ["session"]:
        return "invalid_event", detail, param
    if len(loc) == 1:
        return "invalid_session", "session.update carries a `session` object", "session"
    if loc[1] == "type":
        only = "only transcription sessions are served (connect with ?intent=transcription)"
        return "unsupported_session", only, None
    field = loc[3] if len(loc) > 3 and loc[1:3] == ["audio", "input"] else None
    if field == "format":
        if loc[-1] == "rate":
            return "unsupported_format", f"audio/pcm at {' or '.join(map(str, PCM_RATES[::-1]))} Hz", param
        return "unsupported_format", f"audio formats: {', '.join(FORMATS)}", param
    if field == "transcription":
        if len(loc) == 4:
            return "invalid_session", "transcription must be an object", param
        return "invalid_transcription", detail, param
    if field == "turn_detection":
        if len(loc) == 4 or loc[4] == "type":
            return "unsupported_turn_detection", "turn_detection is server_vad or null", param
        return "invalid_turn_detection", detail, loc[-1]
    return "invalid_session", detail, param
