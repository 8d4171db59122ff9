"""POST /transcribe: the service's own API, with everything it measured in the answer."""

from __future__ import annotations

from typing import TYPE_CHECKING, Literal

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, ConfigDict, Field

from service.api import sse
from service.api.common import form_openapi, pipeline_of
from service.api.uploads import read_work, run_work
from service.formats import MEDIA_TYPES, render_text, segment_json, service_json
from service.languages import normalize_language
from service.pipeline import RequestOptions

if TYPE_CHECKING:
    from service.backends.base import Segment
    from service.errors import ServiceError
    from service.outcome import Outcome

router = APIRouter()


class TranscribeForm(BaseModel):
    """Form fields of POST /transcribe (beside the `file`)."""

    model_config = ConfigDict(extra="ignore")

    language: str = Field("auto", description="ISO code (e.g. `en`), English name, or `auto` to detect.")
    task: Literal["transcribe", "translate"] = Field("transcribe", description="`translate` gives English text.")
    word_timestamps: bool = Field(False, description="Include per-word timings.")
    vad_filter: bool | None = Field(
        None, description="Drop silence with Silero VAD first (default: ASR_VAD_FILTER_DEFAULT)."
    )
    response_format: Literal["json", "verbose_json", "text", "srt", "vtt"] = "json"
    prompt: str | None = Field(None, max_length=2000, description="Text that the audio continues (names, spelling).")
    rich_output: bool = Field(False, description="SenseVoice only: also return the raw tagged text.")
    stream: bool = Field(
        False, description="Server-sent events: a `segment` event per decoded segment, then `done` with the answer."
    )


def _segment_event(segment: Segment, index: int) -> str:
    return sse.event(segment_json(segment, verbose=False), "segment")


def _error_event(exc: ServiceError) -> str:
    return sse.event({"error": {"code": exc.code, "message": exc.message}}, "error")


def request_options(form: TranscribeForm, fine_segments: bool | None = None) -> RequestOptions:
    """The pipeline's options for a /transcribe-style form (also used by jobs)."""
    if fine_segments is None:
        fine_segments = form.response_format in ("srt", "vtt", "verbose_json")
    return RequestOptions(
        language=normalize_language(form.language),
        task=form.task,
        word_timestamps=form.word_timestamps,
        vad_filter=form.vad_filter,
        prompt=form.prompt,
        rich_output=form.rich_output,
        fine_segments=fine_segments,
    )


@router.post(
    "/transcribe",
    openapi_extra=form_openapi(TranscribeForm),
    summary="Transcribe an audio file",
    responses={
        400: {"description": "empty upload"},
        401: {"description": "missing or wrong API key"},
        413: {"description": "upload or audio too large"},
        415: {"description": "not audio"},
        422: {"description": "invalid parameter, corrupt audio or unsupported feature"},
        429: {"description": "queue full (Retry-After)"},
        503: {"description": "model not ready or engine failure"},
        504: {"description": "took longer than the request timeout"},
    },
)
async def transcribe(request: Request) -> Response:
    pipeline = pipeline_of(request)
    form, work, multipart = await read_work(request, TranscribeForm, request_options)
    if form.stream:

        def done(outcome: Outcome) -> str:
            return sse.event(service_json(outcome.result, verbose=form.response_format == "verbose_json"), "done")

        return await sse.stream(request, pipeline, work, multipart, _segment_event, done, _error_event)
    outcome, background = await run_work(request, work, multipart)
    fmt = form.response_format
    if fmt in ("json", "verbose_json"):
        body = service_json(outcome.result, verbose=fmt == "verbose_json")
        if form.rich_output:
            body["raw_text"] = outcome.result.transcript.raw_text
        return JSONResponse(body, background=background)
    return Response(render_text(outcome.result, fmt), media_type=MEDIA_TYPES[fmt], background=background)
