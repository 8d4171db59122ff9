"""OpenAI-compatible endpoints, so the official `openai` client works unchanged."""

from __future__ import annotations

import logging
import time
from functools import partial
from typing import TYPE_CHECKING, Literal

from fastapi import APIRouter, Request
from fastapi.responses import Response
from pydantic import BaseModel, ConfigDict, Field, field_validator

from service.api import sse
from service.api.common import UPLOAD_ERRORS, documented, form_openapi, respond
from service.api.deps import AdminDep, ApiKeyDep, MetricsDep, PipelineDep, SettingsDep, WorkKeyDep
from service.api.schemas import (
    ModelCard,
    ModelList,
    OpenAILogprob,
    OpenAITranscription,
    OpenAIVerboseTranscription,
    Usage,
    openai_answer,
)
from service.api.uploads import read_upload, run_upload
from service.errors import BadRequestError, ServiceError
from service.formats import FINE_FORMATS, ResponseFormat
from service.languages import normalize_language
from service.models import ModelStatus
from service.pipeline import RequestOptions

if TYPE_CHECKING:
    from service.backends.base import Segment
    from service.config import Settings
    from service.metrics import Metrics
    from service.outcome import Outcome
    from service.pipeline import Pipeline

log = logging.getLogger(__name__)
router = APIRouter(prefix="/v1")
_STARTED = int(time.time())
# The model name every OpenAI client sends by default; it means "the model served here".
OPENAI_DEFAULT_MODEL = "whisper-1"


class TranslationForm(BaseModel):
    model_config = ConfigDict(extra="ignore")

    model: str = Field(
        ...,
        max_length=256,
        description="A model's id or alias (GET /v1/models); by default `whisper-1` and OpenAI's other "
        "transcription names are the default model's aliases. Unknown: 404 model_not_found.",
    )
    prompt: str | None = Field(None, max_length=2000)
    response_format: ResponseFormat = "json"
    temperature: float = Field(0.0, ge=0.0, le=1.0)
    stream: bool = Field(False, description="Server-sent events: a delta per decoded segment, then the whole text.")


class TranscriptionForm(TranslationForm):
    language: str | None = Field(None, description="ISO-639-1 code of the audio's language.")
    timestamp_granularities: list[Literal["word", "segment"]] = Field(["segment"])
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

    @field_validator("timestamp_granularities", "include", "keywords", mode="before")
    @classmethod
    def one_or_many(cls, value: object) -> object:
        # Clients send `timestamp_granularities[]=word` (a list) or a bare `timestamp_granularities=word`.
        return [value] if isinstance(value, str) else value


async def _respond(
    request: Request,
    pipeline: Pipeline,
    settings: Settings,
    metrics: Metrics,
    form_model: type[TranslationForm],
    task: Literal["transcribe", "translate"],
) -> Response:
    def options(form: TranslationForm) -> RequestOptions:
        words = isinstance(form, TranscriptionForm) and "word" in form.timestamp_granularities
        language = form.language if isinstance(form, TranscriptionForm) else None
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
            logprobs=logprobs,
            keywords=tuple(form.keywords) if isinstance(form, TranscriptionForm) else (),
        )

    upload = await read_upload(request, pipeline, settings, form_model, options)
    form = upload.fields
    logprobs = _logprobs(form)
    if form.stream:
        return await sse.stream(
            request, pipeline, metrics, upload, partial(_delta, logprobs), partial(_done, logprobs), _error
        )
    outcome, background = await run_upload(request, pipeline, upload)
    result = outcome.result
    words = isinstance(form, TranscriptionForm) and "word" in form.timestamp_granularities
    verbose = form.response_format == "verbose_json"
    return respond(
        result, form.response_format, lambda: openai_answer(result, task, verbose, words, logprobs), background
    )


def _logprobs(form: TranslationForm) -> bool:
    return isinstance(form, TranscriptionForm) and "logprobs" in form.include


def _delta(logprobs: bool, segment: Segment, index: int) -> str:
    """OpenAI's `transcript.text.delta`: each segment's text as it is decoded; joined, they are the text."""
    text = segment.text if index == 0 else " " + segment.text
    extra = {"logprobs": [lp.body() for lp in OpenAILogprob.of([segment])]} if logprobs else {}
    return sse.event({"type": "transcript.text.delta", "delta": text, **extra})


def _done(logprobs: bool, outcome: Outcome) -> str:
    result = outcome.result
    usage = Usage.of(result).body()
    extra = {"logprobs": [lp.body() for lp in OpenAILogprob.of(result.transcript.segments)]} if logprobs else {}
    return sse.event({"type": "transcript.text.done", "text": result.transcript.text, "usage": usage, **extra})


def _error(exc: ServiceError) -> str:
    # The openai client raises an APIError for an event whose data holds `error`.
    return sse.event({"error": {"code": exc.code, "message": exc.message, "type": "server_error", "param": None}})


_OK = OpenAITranscription | OpenAIVerboseTranscription


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
