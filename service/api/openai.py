"""OpenAI-compatible endpoints, so the official `openai` client works unchanged."""

from __future__ import annotations

import contextlib
import json
import logging
import time
from functools import partial
from typing import TYPE_CHECKING, Any, Literal

from fastapi import APIRouter, Request
from fastapi.responses import Response
from pydantic import BaseModel, ConfigDict, Field, ValidationError, ValidationInfo, field_validator, model_validator

from service.api import sse
from service.api.common import UPLOAD_ERRORS, describe_validation_error, documented, form_openapi, respond
from service.api.deps import AdminDep, ApiKeyDep, MetricsDep, PipelineDep, SettingsDep, WorkKeyDep
from service.api.schemas import (
    ModelCard,
    ModelList,
    OpenAIDiarizedSegment,
    OpenAIDiarizedTranscription,
    OpenAILogprob,
    OpenAITranscription,
    OpenAIVerboseTranscription,
    Usage,
    openai_answer,
)
from service.api.speaker_fields import MAX_KNOWN_SPEAKERS, ServerVadChunking, check_names, check_references, known
from service.api.uploads import read_upload, run_upload
from service.errors import BadRequestError, ServiceError
from service.formats import FINE_FORMATS, OpenAIResponseFormat
from service.languages import normalize_language
from service.models import ModelStatus
from service.pipeline import RequestOptions
from service.speakers.base import VadParams

if TYPE_CHECKING:
    from service.backends.base import Segment
    from service.config import Settings
    from service.metrics import Metrics
    from service.outcome import Outcome
    from service.pipeline import Pipeline

log = logging.getLogger(__name__)
router = APIRouter(prefix="/v1")
_STARTED = int(time.time())


class TranslationForm(BaseModel):
    model_config = ConfigDict(extra="ignore")

    model: str = Field(
        ...,
        max_length=256,
        description="A model's id or alias (GET /v1/models); by default `whisper-1` and OpenAI's other "
        "transcription names are the default model's aliases. Unknown: 404 model_not_found.",
    )
    prompt: str | None = Field(None, max_length=2000)
    response_format: OpenAIResponseFormat = Field(
        "json", description="`diarized_json` (transcriptions): segments with their speaker."
    )
    temperature: float = Field(0.0, ge=0.0, le=1.0)
    stream: bool = Field(False, description="Server-sent events: a delta per decoded segment, then the whole text.")


class TranscriptionForm(TranslationForm):
    language: str | None = Field(None, description="ISO-639-1 code of the audio's language.")
    timestamp_granularities: list[Literal["word", "segment"]] = Field(["segment"])
    chunking_strategy: Literal["auto"] | ServerVadChunking | None = Field(
        None, description="`auto`, or a `server_vad` object: how speech is found for diarized_json."
    )
    known_speaker_names: list[str] = Field(
        [], max_length=MAX_KNOWN_SPEAKERS, description="Names of the speakers in known_speaker_references[]."
    )
    known_speaker_references: list[str] = Field(
        [],
        validate_default=True,  # names without references are a mismatch too
        max_length=MAX_KNOWN_SPEAKERS,
        description="Data URLs of 2-10 s clips, one per known speaker: segments in that voice carry its name.",
    )

    include: list[Literal["logprobs"]] = Field(
        [],
        description="`logprobs`: each text token's log probability in `logprobs` (response_format json only; "
        "docs/models.md says where they come from).",
    )
    keywords: list[str] = Field(
        [],
        description="Words and names the audio may hold, to steer decoding towards (faster-whisper's hotwords); "
        "at most ASR_MAX_KEYWORDS of ASR_MAX_KEYWORD_CHARS characters.",
    )

    @model_validator(mode="before")
    @classmethod
    def nested_chunking(cls, values: object) -> object:
        # The openai client sends an object field as `chunking_strategy[type]=server_vad`, ...
        # (curl users may send it as JSON text).
        if isinstance(values, dict):
            nested = {k[len("chunking_strategy[") : -1]: v for k, v in values.items() if _nested_key(k)}
            if nested:
                values = {k: v for k, v in values.items() if not _nested_key(k)} | {"chunking_strategy": nested}
            given = values.get("chunking_strategy")
            if isinstance(given, str) and given.lstrip().startswith("{"):
                with contextlib.suppress(ValueError):
                    values = {**values, "chunking_strategy": json.loads(given)}
        return values

    @field_validator("chunking_strategy", mode="before")
    @classmethod
    def chunking(cls, value: object) -> object:
        # Checked here so that any mistake in it is one error naming the field (not the union's arms).
        if value is None or value == "auto" or isinstance(value, ServerVadChunking):
            return value
        if isinstance(value, dict):
            try:
                return ServerVadChunking.model_validate(value)
            except ValidationError as exc:
                raise ValueError(f"a server_vad object: {describe_validation_error(exc)}") from None
        raise ValueError("chunking_strategy is `auto` or an object {type: server_vad, ...}")

    @field_validator(
        "timestamp_granularities",
        "known_speaker_names",
        "known_speaker_references",
        "include",
        "keywords",
        mode="before",
    )
    @classmethod
    def one_or_many(cls, value: object) -> object:
        # Clients send `timestamp_granularities[]=word` (a list) or a bare `timestamp_granularities=word`.
        return [value] if isinstance(value, str) else value

    @field_validator("known_speaker_names")
    @classmethod
    def names(cls, value: list[str]) -> list[str]:
        return check_names(value)

    @field_validator("known_speaker_references")
    @classmethod
    def references(cls, value: list[str], info: ValidationInfo) -> list[str]:
        return check_references(value, info.data.get("known_speaker_names"))


def _nested_key(key: str) -> bool:
    return key.startswith("chunking_strategy[") and key.endswith("]")


async def _respond(
    request: Request,
    pipeline: Pipeline,
    settings: Settings,
    metrics: Metrics,
    form_model: type[TranslationForm],
    task: Literal["transcribe", "translate"],
) -> Response:
    def options(form: TranslationForm) -> RequestOptions:
        diarized = form.response_format == "diarized_json"
        if diarized and not isinstance(form, TranscriptionForm):
            raise BadRequestError("diarized_json is an answer of /v1/audio/transcriptions", param="response_format")
        words = isinstance(form, TranscriptionForm) and "word" in form.timestamp_granularities
        language = form.language if isinstance(form, TranscriptionForm) else None
        speakers = _speaker_options(form) if isinstance(form, TranscriptionForm) else {}
        logprobs = _logprobs(form)
        if logprobs and form.response_format != "json":
            # As OpenAI: logprobs are part of the json answer only; never dropped silently.
            raise BadRequestError(
                f"include=logprobs needs response_format json, not {form.response_format}", param="include"
            )
        return RequestOptions(
            language=normalize_language(language),
            task=task,
            word_timestamps=words,
            prompt=form.prompt,
            temperature=form.temperature,
            fine_segments=form.response_format in FINE_FORMATS,
            model=pipeline.resolve_model(form.model),  # 404 model_not_found for a name no entry has
            diarize=diarized,
            logprobs=logprobs,
            keywords=tuple(form.keywords) if isinstance(form, TranscriptionForm) else (),
            **speakers,
        )

    upload = await read_upload(request, pipeline, settings, form_model, options)
    form = upload.fields
    diarized = form.response_format == "diarized_json"
    logprobs = _logprobs(form)
    if form.stream:
        delta = _segment if diarized else partial(_delta, logprobs)
        return await sse.stream(request, pipeline, metrics, upload, delta, partial(_done, logprobs), _error)
    outcome, background = await run_upload(request, pipeline, upload)
    result = outcome.result
    if diarized:
        return respond(result, "diarized_json", lambda: OpenAIDiarizedTranscription.build(result), background)
    words = isinstance(form, TranscriptionForm) and "word" in form.timestamp_granularities
    verbose = form.response_format == "verbose_json"
    return respond(
        result, form.response_format, lambda: openai_answer(result, task, verbose, words, logprobs), background
    )


def _logprobs(form: TranslationForm) -> bool:
    return isinstance(form, TranscriptionForm) and "logprobs" in form.include


def _speaker_options(form: TranscriptionForm) -> dict[str, Any]:
    """The pipeline's speaker options from OpenAI's fields (known speakers only with diarized_json)."""
    if form.known_speaker_names and form.response_format != "diarized_json":
        raise BadRequestError(
            "known speakers name the speakers of response_format=diarized_json; ask for it",
            param="known_speaker_names",
        )
    chunking = form.chunking_strategy
    vad = None
    if isinstance(chunking, ServerVadChunking):
        defaults = VadParams()
        vad = VadParams(
            threshold=chunking.threshold if chunking.threshold is not None else defaults.threshold,
            min_silence_ms=chunking.silence_duration_ms
            if chunking.silence_duration_ms is not None
            else defaults.min_silence_ms,
            pad_ms=chunking.prefix_padding_ms if chunking.prefix_padding_ms is not None else defaults.pad_ms,
        )
    return {"known_speakers": known(form.known_speaker_names, form.known_speaker_references), "speaker_vad": vad}


def _delta(logprobs: bool, segment: Segment, index: int) -> str:
    """OpenAI's `transcript.text.delta`: each segment's text as it is decoded; joined, they are the text."""
    text = segment.text if index == 0 else " " + segment.text
    extra = {"logprobs": [lp.body() for lp in OpenAILogprob.of([segment])]} if logprobs else {}
    return sse.event({"type": "transcript.text.delta", "delta": text, **extra})


def _segment(segment: Segment, index: int) -> str:
    """OpenAI's `transcript.text.segment` (diarized_json streams): a segment with its speaker."""
    return sse.event(OpenAIDiarizedSegment.of(segment).body())


def _done(logprobs: bool, outcome: Outcome) -> str:
    result = outcome.result
    usage = Usage.of(result).body()
    extra = {"logprobs": [lp.body() for lp in OpenAILogprob.of(result.transcript.segments)]} if logprobs else {}
    return sse.event({"type": "transcript.text.done", "text": result.transcript.text, "usage": usage, **extra})


def _error(exc: ServiceError) -> str:
    # The openai client raises an APIError for an event whose data holds `error`.
    return sse.event({"error": {"code": exc.code, "message": exc.message, "type": "server_error", "param": None}})


_OK = OpenAITranscription | OpenAIVerboseTranscription | OpenAIDiarizedTranscription


@router.post(
    "/audio/transcriptions",
    openapi_extra=form_openapi(TranscriptionForm, ("file", "model")),
    response_model=None,
    responses=documented(*UPLOAD_ERRORS, ok=_OK),
)
async def transcriptions(
    request: Request, caller: WorkKeyDep, pipeline: PipelineDep, settings: SettingsDep, metrics: MetricsDep
) -> Response:
    """OpenAI's audio transcription endpoint."""
    return await _respond(request, pipeline, settings, metrics, TranscriptionForm, "transcribe")


@router.post(
    "/audio/translations",
    openapi_extra=form_openapi(TranslationForm, ("file", "model")),
    response_model=None,
    responses=documented(*UPLOAD_ERRORS, ok=_OK),
)
async def translations(
    request: Request, caller: WorkKeyDep, pipeline: PipelineDep, settings: SettingsDep, metrics: MetricsDep
) -> Response:
    """OpenAI's audio translation endpoint (speech in any language to English text)."""
    return await _respond(request, pipeline, settings, metrics, TranslationForm, "translate")


def _card(status: ModelStatus) -> ModelCard:
    return ModelCard(
        id=status.id,
        created=_STARTED,
        owned_by=status.backend,
        state=status.state,
        aliases=list(status.aliases),
        preload=status.preload,
        ttl_seconds=status.ttl_seconds,
        memory_bytes=status.memory_bytes,
        load_seconds=round(status.load_seconds, 3) if status.load_seconds is not None else None,
        in_flight=status.in_flight,
    )


def _status(pipeline: Pipeline, model_id: str) -> ModelStatus:
    wanted = pipeline.resolve_model(model_id)  # 404 model_not_found
    return next(s for s in pipeline.models() if s.id == wanted)


@router.get("/models", responses=documented(401))
async def models(caller: ApiKeyDep, pipeline: PipelineDep) -> ModelList:
    """Every configured model, in OpenAI's list shape, with its state (unloaded, loading, ready, failed)."""
    return ModelList(data=[_card(s) for s in pipeline.models()])


@router.get("/models/{model_id:path}", responses=documented(401, 404))
async def model(caller: ApiKeyDep, pipeline: PipelineDep, model_id: str) -> ModelCard:
    """One model by id or alias (OpenAI's retrieve)."""
    return _card(_status(pipeline, model_id))


@router.post("/models/{model_id:path}", responses=documented(401, 403, 404, 503))
async def load_model(_: AdminDep, pipeline: PipelineDep, model_id: str) -> ModelCard:
    """Load a model now (admin); answers once it is ready or has failed (its state says which)."""
    pipeline.resolve_model(model_id)
    return _card(await pipeline.load_model(model_id))


@router.delete("/models/{model_id:path}", responses=documented(401, 403, 404, 409))
async def unload_model(_: AdminDep, pipeline: PipelineDep, model_id: str) -> ModelCard:
    """Unload a model (admin): 409 model_busy while requests use it; it loads again on its next request."""
    await pipeline.unload_model(model_id)
    return _card(_status(pipeline, model_id))
