"""POST /transcribe: the service's own API, with everything it measured in the answer."""

from __future__ import annotations

from typing import TYPE_CHECKING, Literal

from fastapi import APIRouter, Request
from fastapi.responses import Response
from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator

from service.api import sse
from service.api.common import UPLOAD_ERRORS, documented, form_openapi, respond
from service.api.deps import MetricsDep, PipelineDep, SettingsDep, WorkKeyDep
from service.api.schemas import Transcription, segment_out
from service.api.uploads import read_upload, run_upload
from service.formats import FINE_FORMATS, ResponseFormat
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

    model: str | None = Field(
        None, max_length=256, description="A model's id or alias (GET /v1/models); default: the default model."
    )
    language: str = Field("auto", description="ISO code (e.g. `en`), English name, or `auto` to detect.")
    task: Literal["transcribe", "translate"] = Field("transcribe", description="`translate` gives English text.")
    word_timestamps: bool = Field(False, description="Include per-word timings.")
    vad_filter: bool | None = Field(
        None, description="Drop silence with Silero VAD first (default: ASR_VAD_FILTER_DEFAULT)."
    )
    response_format: ResponseFormat = "json"
    prompt: str | None = Field(None, max_length=2000, description="Text that the audio continues (names, spelling).")
    keywords: list[str] = Field(
        [],
        description="Words and names the audio may hold, to steer decoding towards (`keywords[]=a&keywords[]=b`, "
        "or the field repeated); at most ASR_MAX_KEYWORDS of ASR_MAX_KEYWORD_CHARS characters.",
    )
    rich_output: bool = Field(False, description="SenseVoice only: also return the raw tagged text.")
    stream: bool = Field(
        False, description="Server-sent events: a `segment` event per decoded segment, then `done` with the answer."
    )
    diarize: bool = Field(
        False,
        description="Who spoke: `speaker` on every segment (and word), srt with a speaker prefix, vtt voice tags "
        "(needs the `diarization` extra). Implied by min_speakers or max_speakers.",
    )
    min_speakers: int | None = Field(None, ge=1, le=32, description="With diarize: at least this many speakers.")
    max_speakers: int | None = Field(None, ge=1, le=32, description="With diarize: at most this many speakers.")

    @field_validator("max_speakers")
    @classmethod
    def at_least_min(cls, value: int | None, info: ValidationInfo) -> int | None:
        low = info.data.get("min_speakers")
        if value is not None and low is not None and value < low:
            raise ValueError(f"max_speakers ({value}) is below min_speakers ({low})")
        return value

    @field_validator("keywords", mode="before")
    @classmethod
    def one_or_many(cls, value: object) -> object:
        return [value] if isinstance(value, str) else value


def _segment_event(segment: Segment, index: int) -> str:
    return sse.event(segment_out(segment, verbose=False).body(), "segment")


def _error_event(exc: ServiceError) -> str:
    return sse.event({"error": {"code": exc.code, "message": exc.message}}, "error")


def request_options(form: TranscribeForm, fine_segments: bool | None = None) -> RequestOptions:
    """The pipeline's options for a /transcribe-style form (also used by jobs)."""
    if fine_segments is None:
        fine_segments = form.response_format in FINE_FORMATS
    return RequestOptions(
        language=normalize_language(form.language),
        task=form.task,
        word_timestamps=form.word_timestamps,
        vad_filter=form.vad_filter,
        prompt=form.prompt,
        rich_output=form.rich_output,
        fine_segments=fine_segments,
        model=form.model,  # resolved by the pipeline: 404 model_not_found for a name no entry has
        keywords=tuple(form.keywords),
        diarize=form.diarize or form.min_speakers is not None or form.max_speakers is not None,
        min_speakers=form.min_speakers,
        max_speakers=form.max_speakers,
    )


@router.post(
    "/transcribe",
    openapi_extra=form_openapi(TranscribeForm),
    summary="Transcribe an audio file",
    response_model=None,
    responses=documented(*UPLOAD_ERRORS, ok=Transcription),
)
async def transcribe(
    request: Request, caller: WorkKeyDep, pipeline: PipelineDep, settings: SettingsDep, metrics: MetricsDep
) -> Response:
    """Transcribe `file`: JSON with the text, segments, timings and warnings, or text, srt or vtt."""
    upload = await read_upload(request, pipeline, settings, TranscribeForm, request_options)
    form = upload.fields
    verbose = form.response_format == "verbose_json"
    if form.stream:

        def done(outcome: Outcome) -> str:
            return sse.event(Transcription.build(outcome.result, verbose).body(), "done")

        return await sse.stream(request, pipeline, metrics, upload, _segment_event, done, _error_event)
    outcome, background = await run_upload(request, pipeline, upload)
    result = outcome.result
    return respond(
        result, form.response_format, lambda: Transcription.build(result, verbose, form.rich_output), background
    )
