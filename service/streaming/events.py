"""The Realtime protocol's client events and a transcription session's configuration, as types.

The shapes are those of the official `openai` package (openai.types.realtime): `session.update`
carries a RealtimeTranscriptionSessionCreateRequest (`type`, `include`, `audio.input.format`,
`.transcription`, `.turn_detection`, `.noise_reduction`), and the three input_audio_buffer events
carry at most `audio` and an `event_id`. `parse_event` turns one text frame into one of these
events or raises ClientEventError with the code its `error` event carries; `SessionConfig.updated`
applies a `session.update` to the session's configuration without side effects, so that a
refused update changes nothing. Server events are plain dicts built by the session.

Every field the protocol defines is either honoured or refused by name: an option accepted and
then ignored would tell a client it got something it did not. Fields the protocol does not
define are refused too (`unknown_parameter`, as OpenAI answers), so a client with a typo or an
older protocol's flat fields (`input_audio_format`) learns at once instead of being half-served.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Annotated, Any, Literal

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    SerializerFunctionWrapHandler,
    ValidationError,
    field_validator,
    model_serializer,
)
from pydantic_core import PydanticCustomError

from service.streaming.audio_in import PCM_RATES

if TYPE_CHECKING:
    from collections.abc import Callable

    from pydantic_core import ErrorDetails

FORMATS = ("audio/pcm", "audio/pcmu", "audio/pcma")
# What a frame may make the service echo back: an id longer than this is refused, not echoed.
MAX_EVENT_ID = 256
MAX_PROMPT = 2000  # characters, as the HTTP form's `prompt`
MAX_MODEL = 256  # as the HTTP form's `model`
# The one `include` value OpenAI's transcription session defines (service.streaming.logprobs).
INCLUDE_LOGPROBS = "item.input_audio_transcription.logprobs"
Include = Literal["item.input_audio_transcription.logprobs"]
# Transcription models that have no server turn detection (openai.types.realtime: "for
# gpt-realtime-whisper, turn detection must be null"; gpt-live-transcribe clients commit
# themselves too): a client naming one and leaving turn_detection out commits its own turns.
CLIENT_TURN_MODELS = frozenset({"gpt-realtime-whisper", "gpt-live-transcribe"})
# semantic_vad waits longer when the speaker seems unfinished, up to 8/4/2 s for low/medium/high
# eagerness. Our VAD has no model of "unfinished": it ends a turn after a fixed silence, chosen
# from the eagerness (high as server_vad's default, low three times as patient).
EAGERNESS_SILENCE_MS = {"high": 500, "medium": 800, "auto": 800, "low": 1500}
Eagerness = Literal["low", "medium", "high", "auto"]


class ClientEventError(Exception):
    """A client event the session cannot act on; answered with an `error` event."""

    def __init__(self, code: str, message: str, param: str | None = None, event_id: str | None = None) -> None:
        super().__init__(message)
        self.code, self.message, self.param, self.event_id = code, message, param, event_id


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid")


def _refuse(why: str) -> Callable[[object], None]:
    """A validator for a field the protocol has and the service does not offer: only its "off"
    values (absent, null, false, empty) pass; anything else is refused, saying `why`."""

    def check(value: object) -> None:
        if value is None or value is False or value == [] or value == "":
            return None
        raise PydanticCustomError("unsupported_parameter", why)

    return check


def _refused(why: str) -> Any:
    return BeforeValidator(_refuse(why))


_NO_RESPONSES = _refused("a transcription session creates no responses: leave it out or send false")

# ---- the session's configuration: what session.created / session.updated show ------------------


class PcmFormat(_Model):
    type: Literal["audio/pcm"] = "audio/pcm"
    rate: Literal[24000, 16000] = 24000


class G711Format(_Model):
    """G.711 at 8 kHz: `audio/pcmu` (mu-law) or `audio/pcma` (A-law)."""

    type: Literal["audio/pcmu", "audio/pcma"]
    rate: Literal[8000] | None = Field(None, exclude=True)  # accepted when right, never shown

    @property
    def rate_hz(self) -> int:
        return 8000


AudioFormat = Annotated[PcmFormat | G711Format, Field(discriminator="type")]


def format_rate(fmt: PcmFormat | G711Format) -> int:
    """The sample rate of the frames in format `fmt`."""
    return fmt.rate if isinstance(fmt, PcmFormat) else fmt.rate_hz


class Transcription(_Model):
    model: str | None = Field(None, max_length=MAX_MODEL)
    language: str | None = Field(None, max_length=32)
    prompt: str | None = Field(None, max_length=MAX_PROMPT)
    # Checked against ASR_MAX_KEYWORDS / ASR_MAX_KEYWORD_CHARS by the pipeline, as over HTTP.
    keywords: list[str] | None = None
    # Ours: each completed turn names its speaker (A, B, ...), matched across the session's turns.
    speakers: bool | None = None

    @model_serializer(mode="wrap")
    def _shown(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        # OpenAI's fields as they are; ours only when the client set it.
        body: dict[str, Any] = handler(self)
        if body.get("speakers") is None:
            body.pop("speakers", None)
        return body


class ServerVad(_Model):
    type: Literal["server_vad"] = "server_vad"
    threshold: float = 0.5
    prefix_padding_ms: int = 300
    silence_duration_ms: int = 500


class SemanticVad(_Model):
    """semantic_vad as served: our VAD, with the silence its eagerness maps to (shown, so the
    client sees what it got)."""

    type: Literal["semantic_vad"] = "semantic_vad"
    eagerness: Eagerness = "auto"
    threshold: float = 0.5
    prefix_padding_ms: int = 300
    silence_duration_ms: int = EAGERNESS_SILENCE_MS["auto"]


class AudioInput(_Model):
    format: AudioFormat = Field(default_factory=PcmFormat)
    transcription: Transcription = Field(default_factory=Transcription)
    turn_detection: ServerVad | SemanticVad | None = Field(default_factory=ServerVad)
    noise_reduction: None = None


class SessionAudio(_Model):
    input: AudioInput = Field(default_factory=AudioInput)


class SessionConfig(_Model):
    """The whole effective configuration of a transcription session."""

    type: Literal["transcription"] = "transcription"
    id: str
    include: list[Include] | None = None
    audio: SessionAudio = Field(default_factory=SessionAudio)

    @property
    def input(self) -> AudioInput:
        return self.audio.input

    def body(self) -> dict[str, Any]:
        """The session as session.created / session.updated show it."""
        return self.model_dump(mode="json")

    def updated(self, update: SessionUpdate, default_detection: bool = False) -> SessionConfig:
        """This configuration with `update` applied (given fields replace, others stay).

        With `default_detection` (the client never chose a turn_detection), an update that names
        the transcription model and leaves turn_detection out also sets the model's default:
        none for CLIENT_TURN_MODELS, server VAD for the others.
        """
        top: dict[str, Any] = {}
        if "include" in update.model_fields_set:
            top["include"] = update.include or None  # [] and null both mean none
        given = update.audio.input if update.audio is not None and update.audio.input is not None else None
        if given is None:
            return self.model_copy(update=top, deep=True)
        current = self.input
        fields = given.model_fields_set
        changed: dict[str, Any] = {}
        if "format" in fields and given.format is not None:
            changed["format"] = given.format
        if "transcription" in fields and given.transcription is not None:
            named = given.transcription.model_fields_set & set(Transcription.model_fields)
            merged = {**current.transcription.model_dump(), **given.transcription.model_dump(include=named)}
            changed["transcription"] = Transcription(**merged)
            if default_detection and "turn_detection" not in fields and "model" in named:
                changed["turn_detection"] = None if merged["model"] in CLIENT_TURN_MODELS else ServerVad()
        if "turn_detection" in fields:
            changed["turn_detection"] = given.turn_detection.resolved() if given.turn_detection else None
        audio_input = current.model_copy(update=changed, deep=True)
        return self.model_copy(update={"audio": SessionAudio(input=audio_input), **top}, deep=True)


# ---- client events ------------------------------------------------------------------------------


class TranscriptionUpdate(Transcription):
    delay: Annotated[None, _refused("`delay` is for gpt-realtime-whisper; the served model has no delay setting")] = (
        None
    )
    languages: Annotated[None, _refused("a list of `languages` is not offered; name one `language`")] = None


class ServerVadUpdate(_Model):
    """`server_vad` as a client sends it: absent or null values take the protocol's defaults."""

    type: Literal["server_vad"]
    threshold: float | None = Field(None, ge=0.0, le=1.0)
    prefix_padding_ms: int | None = Field(None, ge=0, le=2000)
    silence_duration_ms: int | None = Field(None, ge=100, le=5000)
    idle_timeout_ms: Annotated[None, _refused("`idle_timeout_ms` is not offered (it triggers responses)")] = None
    create_response: Annotated[None, _NO_RESPONSES] = None
    interrupt_response: Annotated[None, _NO_RESPONSES] = None

    def resolved(self) -> ServerVad:
        given = self.model_dump(include={"threshold", "prefix_padding_ms", "silence_duration_ms"}, exclude_none=True)
        return ServerVad(**given)


class SemanticVadUpdate(_Model):
    type: Literal["semantic_vad"]
    eagerness: Eagerness | None = None
    create_response: Annotated[None, _NO_RESPONSES] = None
    interrupt_response: Annotated[None, _NO_RESPONSES] = None

    def resolved(self) -> SemanticVad:
        eagerness = self.eagerness or "auto"
        return SemanticVad(eagerness=eagerness, silence_duration_ms=EAGERNESS_SILENCE_MS[eagerness])


TurnDetectionUpdate = Annotated[ServerVadUpdate | SemanticVadUpdate, Field(discriminator="type")]


class AudioInputUpdate(_Model):
    format: AudioFormat | None = None
    transcription: TranscriptionUpdate | None = None
    turn_detection: TurnDetectionUpdate | None = None  # null: no server VAD, the client commits
    noise_reduction: Annotated[None, _refused("noise reduction is not offered: send null or leave it out")] = None

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
    include: list[Include] | None = None


class _Event(_Model):
    event_id: str | None = Field(None, max_length=MAX_EVENT_ID)


class SessionUpdateEvent(_Event):
    type: Literal["session.update"]
    session: SessionUpdate


class AppendEvent(_Event):
    type: Literal["input_audio_buffer.append"]
    audio: str


class CommitEvent(_Event):
    type: Literal["input_audio_buffer.commit"]


class ClearEvent(_Event):
    type: Literal["input_audio_buffer.clear"]


ClientEvent = SessionUpdateEvent | AppendEvent | CommitEvent | ClearEvent
EVENTS: dict[str, type[ClientEvent]] = {
    "session.update": SessionUpdateEvent,
    "input_audio_buffer.append": AppendEvent,
    "input_audio_buffer.commit": CommitEvent,
    "input_audio_buffer.clear": ClearEvent,
}
_TAGS = {*FORMATS, "server_vad", "semantic_vad"}


def event_id_of(raw: dict[str, Any]) -> str | None:
    """The event's `event_id` if it is one the service may echo (a string of sane length)."""
    value = raw.get("event_id")
    return value if isinstance(value, str) and len(value) <= MAX_EVENT_ID else None


def parse_event(text: str) -> ClientEvent:
    """The client event in one text frame; raises ClientEventError (with the event's id, when it has one)."""
    try:
        raw = json.loads(text)
    except RecursionError:  # "[[[[...": Python's parser recurses per level
        raise ClientEventError("invalid_json", "the event is nested too deeply") from None
    except ValueError:
        raise ClientEventError("invalid_json", "the event is not valid JSON") from None
    if not isinstance(raw, dict):
        raise ClientEventError("invalid_event", "an event is a JSON object with a `type`")
    if "\\u" in text and not _is_text(raw):
        raise ClientEventError("invalid_json", "the event holds a lone UTF-16 surrogate (\\ud800-\\udfff): not text")
    event_id = event_id_of(raw)
    kind = raw.get("type")
    model = EVENTS.get(kind) if isinstance(kind, str) else None
    if model is None or not isinstance(kind, str):
        shown = str(kind)[:40] if kind is not None else "none"
        raise ClientEventError("unknown_event", f"unknown or unsupported event type {shown!r}", "type", event_id)
    try:
        return model.model_validate(raw)
    except ValidationError as exc:
        code, message, param = _describe(kind, exc.errors(include_input=False)[0])
        raise ClientEventError(code, message, param, event_id) from None


def _is_text(value: dict[str, Any]) -> bool:
    """Whether every string in `value` is text: JSON's escapes can spell a lone surrogate
    ("\\ud800"), which Python parses into a str that no UTF-8 encoder takes (echoed in an error
    event, it ended the session)."""
    try:
        json.dumps(value, ensure_ascii=False).encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _describe(kind: str, error: ErrorDetails) -> tuple[str, str, str | None]:
    """The error code, message and param of an event's first invalid field."""
    # A tagged union puts its tag in the location (format.audio/pcm.rate): the client wrote no such key.
    # A location part may be a key the client made up: cut, since it is echoed.
    loc = [str(part)[:40] for part in error["loc"] if part not in _TAGS]
    param = ".".join(loc)[:120] or None
    message = "must be an object" if error["type"] in ("model_type", "dict_type") else error["msg"][:200]
    detail = f"{param}: {message}"
    if error["type"] == "extra_forbidden":
        return "unknown_parameter", f"unknown parameter {param}", param
    if error["type"] == "unsupported_parameter":
        return "unsupported_parameter", detail, param
    if loc[:1] == ["event_id"]:
        return "invalid_event", detail, param
    if kind == "input_audio_buffer.append":
        return "invalid_audio", "append carries base64 audio in `audio`", "audio"
    if kind != "session.update" or loc[:1] != ["session"]:
        return "invalid_event", detail, param
    if len(loc) == 1:
        return "invalid_session", "session.update carries a `session` object", "session"
    if loc[1] == "include":
        return "invalid_include", f'include is null or a list of "{INCLUDE_LOGPROBS}"', "session.include"
    if loc[1] == "type":
        only = "only transcription sessions are served (connect with ?intent=transcription)"
        return "unsupported_session", only, None
    field = loc[3] if len(loc) > 3 and loc[1:3] == ["audio", "input"] else None
    if field == "format":
        if loc[-1] == "rate":
            rates = " or ".join(map(str, PCM_RATES[::-1]))
            return "unsupported_format", f"audio/pcm at {rates} Hz, G.711 at 8000 Hz", param
        return "unsupported_format", f"audio formats: {', '.join(FORMATS)}", param
    if field == "transcription":
        if len(loc) == 4:
            return "invalid_session", "transcription must be an object", param
        return "invalid_transcription", detail, param
    if field == "turn_detection":
        if len(loc) == 4 or loc[4] == "type":
            return "unsupported_turn_detection", "turn_detection is server_vad, semantic_vad or null", param
        return "invalid_turn_detection", detail, loc[-1]
    return "invalid_session", detail, param
