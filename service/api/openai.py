"""OpenAI-compatible endpoints, so the official `openai` client works unchanged."""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING, Literal

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, ConfigDict, Field, field_validator

from service.api import sse
from service.api.common import engine_of, form_openapi, pipeline_of
from service.api.uploads import read_work, run_work
from service.errors import ServiceError, shown
from service.formats import MEDIA_TYPES, openai_json, render_text, usage
from service.languages import normalize_language
from service.pipeline import RequestOptions

if TYPE_CHECKING:
    from service.backends.base import Segment
    from service.outcome import Outcome

log = logging.getLogger(__name__)
router = APIRouter(prefix="/v1")
_STARTED = int(time.time())
# The model name every OpenAI client sends by default; it means "the model served here".
OPENAI_DEFAULT_MODEL = "whisper-1"


class TranslationForm(BaseModel):
    model_config = ConfigDict(extra="ignore")

    model: str = Field(
        ..., max_length=256, description="Any name: the served model answers (see /v1/models), as for `whisper-1`."
    )
    prompt: str | None = Field(None, max_length=2000)
    response_format: Literal["json", "verbose_json", "text", "srt", "vtt"] = "json"
    temperature: float = Field(0.0, ge=0.0, le=1.0)
    stream: bool = Field(False, description="Server-sent events: a delta per decoded segment, then the whole text.")


class TranscriptionForm(TranslationForm):
    language: str | None = Field(None, description="ISO-639-1 code of the audio's language.")
    timestamp_granularities: list[Literal["word", "segment"]] = Field(["segment"])

    @field_validator("timestamp_granularities", mode="before")
    @classmethod
    def one_or_many(cls, value: object) -> object:
        # Clients send `timestamp_granularities[]=word` (a list) or a bare `timestamp_granularities=word`.
        return [value] if isinstance(value, str) else value


def _check_model(request: Request, form: TranslationForm) -> None:
    served = engine_of(request).ready_backend().model
    if form.model not in (served, OPENAI_DEFAULT_MODEL):
        # OpenAI-compatible servers answer any model name with the model they serve (clients
        # hard-code names such as gpt-4o-transcribe); say so once per name, not per request.
        seen: set[str] = request.app.state.model_aliases_seen
        if form.model not in seen and len(seen) < 100:
            seen.add(form.model)
            log.info("model %s requested: served by %s", shown(form.model), served)


async def _respond(request: Request, form_model: type[TranslationForm], task: str) -> Response:
    def options(form: TranslationForm) -> RequestOptions:
        _check_model(request, form)
        words = isinstance(form, TranscriptionForm) and "word" in form.timestamp_granularities
        language = form.language if isinstance(form, TranscriptionForm) else None
        return RequestOptions(
            language=normalize_language(language),
            task=task,
            word_timestamps=words,
            prompt=form.prompt,
            temperature=form.temperature,
            fine_segments=form.response_format in ("srt", "vtt", "verbose_json"),
        )

    pipeline = pipeline_of(request)
    form, work, multipart = await read_work(request, form_model, options)
    if form.stream:
        return await sse.stream(request, pipeline, work, multipart, _delta, _done, _error)
    outcome, background = await run_work(request, work, multipart)
    fmt = form.response_format
    if fmt in ("json", "verbose_json"):
        words = isinstance(form, TranscriptionForm) and "word" in form.timestamp_granularities
        body = openai_json(outcome.result, task, verbose=fmt == "verbose_json", words=words)
        return JSONResponse(body, background=background)
    return Response(render_text(outcome.result, fmt), media_type=MEDIA_TYPES[fmt], background=background)


def _delta(segment: Segment, index: int) -> str:
    """OpenAI's `transcript.text.delta`: each segment's text as it is decoded; joined, they are the text."""
    text = segment.text if index == 0 else " " + segment.text
    return sse.event({"type": "transcript.text.delta", "delta": text})


def _done(outcome: Outcome) -> str:
    result = outcome.result
    return sse.event({"type": "transcript.text.done", "text": result.transcript.text, "usage": usage(result)})


def _error(exc: ServiceError) -> str:
    # The openai client raises an APIError for an event whose data holds `error`.
    return sse.event({"error": {"code": exc.code, "message": exc.message, "type": "server_error", "param": None}})


@router.post("/audio/transcriptions", openapi_extra=form_openapi(TranscriptionForm, ("file", "model")))
async def transcriptions(request: Request) -> Response:
    """OpenAI's audio transcription endpoint."""
    return await _respond(request, TranscriptionForm, "transcribe")


@router.post("/audio/translations", openapi_extra=form_openapi(TranslationForm, ("file", "model")))
async def translations(request: Request) -> Response:
    """OpenAI's audio translation endpoint (speech in any language to English text)."""
    return await _respond(request, TranslationForm, "translate")


@router.get("/models")
async def models(request: Request) -> JSONResponse:
    """The served model, in OpenAI's list shape (empty while the model loads)."""
    backend = engine_of(request).backend
    data = (
        []
        if backend is None
        else [{"id": backend.model, "object": "model", "created": _STARTED, "owned_by": backend.name}]
    )
    return JSONResponse({"object": "list", "data": data})
