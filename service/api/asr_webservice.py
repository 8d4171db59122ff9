"""whisper-asr-webservice's API (`/asr`, `/detect-language`), for clients written for it (Bazarr).

Same query parameters, multipart field `audio_file`, and answers in its shapes: plain-text bodies
for every output (txt: a line per segment; srt; vtt; tsv in integer milliseconds; json:
openai-whisper's result dict), an `Asr-Engine` header and a `Content-Disposition` naming the file.
With `encode=false` the field is raw 16 kHz mono s16le PCM, as Bazarr sends a film's soundtrack:
its byte limit follows ASR_MAX_AUDIO_SECONDS (32,000 bytes a second) instead of
ASR_MAX_UPLOAD_BYTES, and the body goes to disk as it arrives. These clients do not retry a 429,
so with ASR_QUEUE_WAIT_SECONDS set they wait that long for a place instead.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Annotated, Literal
from urllib.parse import quote

from fastapi import APIRouter, Query, Request
from fastapi.responses import Response
from pydantic import BaseModel, ConfigDict

from service.api.common import documented
from service.api.deps import PipelineDep, SettingsDep, WorkKeyDep
from service.api.schemas import DetectedLanguage, WhisperResult
from service.api.uploads import read_upload, run_upload
from service.formats import render_text, to_tsv
from service.languages import language_name, normalize_language
from service.pipeline import RequestOptions

if TYPE_CHECKING:
    from starlette.background import BackgroundTask

    from service.config import Settings
    from service.outcome import Outcome
    from service.pipeline import Pipeline

router = APIRouter(tags=["whisper-asr-webservice"])
Output = Literal["txt", "vtt", "srt", "tsv", "json"]
_FILE_FIELD = "audio_file"


class _NoFields(BaseModel):
    """The form carries only the file; the options are query parameters."""

    model_config = ConfigDict(extra="ignore")


async def _run(
    request: Request,
    pipeline: Pipeline,
    settings: Settings,
    encode: bool,
    options: RequestOptions,
    mode: Literal["transcribe", "detect_language"],
) -> tuple[Outcome, BackgroundTask, str]:
    """The upload through the pipeline; returns the outcome, the after-response sampling task and
    the upload's file name."""
    upload = await read_upload(
        request,
        pipeline,
        settings,
        _NoFields,
        lambda _: options,
        file_field=_FILE_FIELD,
        raw_pcm=not encode,
        mode=mode,
        admission_wait=settings.scheduler.queue_wait_seconds,
    )
    outcome, background = await run_upload(request, pipeline, upload)
    return outcome, background, upload.filename or "audio"


_DOCUMENTED = documented(401, 413, 415, 422, 429, 503, 504, 507, ok_text="the transcript in `output`'s format")


@router.post("/asr", summary="Transcribe (whisper-asr-webservice compatible)", responses=_DOCUMENTED)
async def asr(
    request: Request,
    caller: WorkKeyDep,
    pipeline: PipelineDep,
    settings: SettingsDep,
    encode: Annotated[bool, Query(description="false: audio_file is raw 16 kHz mono s16le PCM")] = True,
    task: Literal["transcribe", "translate"] = "transcribe",
    language: Annotated[str | None, Query(max_length=32)] = None,
    initial_prompt: Annotated[str | None, Query(max_length=2000)] = None,
    vad_filter: bool = False,
    word_timestamps: bool = False,
    output: Output = "txt",
) -> Response:
    """Transcribe `audio_file`; the body is the transcript in `output`'s format, as plain text."""
    options = RequestOptions(
        language=normalize_language(language),
        task=task,
        word_timestamps=word_timestamps,
        vad_filter=vad_filter,
        prompt=initial_prompt,
        fine_segments=output != "txt",
    )
    outcome, background, filename = await _run(request, pipeline, settings, encode, options, "transcribe")
    result = outcome.result
    if output == "json":
        body = json.dumps(WhisperResult.build(result).body(), ensure_ascii=False)
    elif output == "txt":
        body = "".join(s.text.strip() + "\n" for s in result.transcript.segments)
    elif output == "tsv":
        body = to_tsv(result.transcript.segments)
    else:
        body = render_text(result, output)
    headers = {
        "Asr-Engine": result.backend.replace("-", "_"),
        "Content-Disposition": f'attachment; filename="{quote(filename)}.{output}"',
    }
    return Response(body, media_type="text/plain; charset=utf-8", headers=headers, background=background)


@router.post(
    "/detect-language",
    summary="Detect the language of the first 30 s",
    responses=documented(401, 413, 415, 422, 429, 503, 504, 507),
)
async def detect_language(
    request: Request,
    caller: WorkKeyDep,
    pipeline: PipelineDep,
    settings: SettingsDep,
    encode: Annotated[bool, Query(description="false: audio_file is raw 16 kHz mono s16le PCM")] = True,
) -> DetectedLanguage:
    """Only the first 30 seconds are decoded and listened to."""
    # Detection is not a transcription: nothing is sampled (no background task), the audio goes now.
    outcome, _, _ = await _run(request, pipeline, settings, encode, RequestOptions(), "detect_language")
    result = outcome.result
    outcome.audio.close()
    code = result.transcript.language
    return DetectedLanguage(
        detected_language=language_name(code),
        language_code=code,
        confidence=round(result.transcript.language_probability, 4),
    )
