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
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, ConfigDict

from service.api.common import FORM_OVERHEAD_BYTES, pipeline_of, read_upload_form, require_bearer, settings_of
from service.api.uploads import answered, until_disconnected
from service.cancellation import CancelToken
from service.decoding import EncodedAudio, RawPcm
from service.formats import render_text, to_tsv, whisper_json
from service.languages import language_name, normalize_language
from service.middleware import request_state
from service.pipeline import RequestOptions, Work

if TYPE_CHECKING:
    from service.outcome import Outcome

router = APIRouter(tags=["whisper-asr-webservice"])
PCM_BYTES_PER_SECOND = 32_000  # 16 kHz, 16-bit, mono
Output = Literal["txt", "vtt", "srt", "tsv", "json"]
_FILE_FIELD = "audio_file"


class _NoFields(BaseModel):
    """The form carries only the file; the options are query parameters."""

    model_config = ConfigDict(extra="ignore")


async def _run(
    request: Request, encode: bool, options: RequestOptions, mode: Literal["transcribe", "detect_language"]
) -> Outcome:
    settings = settings_of(request)
    pipeline = pipeline_of(request)
    require_bearer(request, settings.server.api_key)
    wait = settings.scheduler.queue_wait_seconds
    pipeline.check_admission(room=wait == 0)
    limit = settings.limits.max_upload_bytes
    if not encode:
        # Raw PCM's length is its duration: the audio limit decides (413 audio_too_long), with room
        # for one more second so that the decoder, not the byte count, says so.
        limit = int((settings.limits.max_audio_seconds + 1) * PCM_BYTES_PER_SECOND) + FORM_OVERHEAD_BYTES
        request_state(request.scope)["body_limit"] = limit
    _, upload, form = await read_upload_form(request, _NoFields, limit, _FILE_FIELD)
    token = CancelToken()
    source = EncodedAudio(upload.file) if encode else RawPcm(upload.file)
    work = Work(options, source, token=token, mode=mode, admission_wait=wait)
    try:
        outcome = await until_disconnected(request.receive, token, pipeline.transcribe(work))
    finally:
        await form.close()
    request_state(request.scope)["filename"] = upload.filename or "audio"
    return outcome


@router.post("/asr", summary="Transcribe (whisper-asr-webservice compatible)")
async def asr(
    request: Request,
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
    outcome = await _run(request, encode, options, "transcribe")
    result = outcome.result
    if output == "json":
        body = json.dumps(whisper_json(result), ensure_ascii=False)
    elif output == "txt":
        body = "".join(s.text.strip() + "\n" for s in result.transcript.segments)
    elif output == "tsv":
        body = to_tsv(result.transcript.segments)
    else:
        body = render_text(result, output)
    filename = request_state(request.scope)["filename"]
    headers = {
        "Asr-Engine": result.backend.replace("-", "_"),
        "Content-Disposition": f'attachment; filename="{quote(filename)}.{output}"',
    }
    background = answered(request, pipeline_of(request), outcome)
    return Response(body, media_type="text/plain; charset=utf-8", headers=headers, background=background)


@router.post("/detect-language", summary="Detect the language of the first 30 s")
async def detect_language(
    request: Request,
    encode: Annotated[bool, Query(description="false: audio_file is raw 16 kHz mono s16le PCM")] = True,
) -> JSONResponse:
    """Only the first 30 seconds are decoded and listened to."""
    outcome = await _run(request, encode, RequestOptions(), "detect_language")
    result = outcome.result
    outcome.audio.close()
    code = result.transcript.language
    return JSONResponse(
        {
            "detected_language": language_name(code),
            "language_code": code,
            "confidence": round(result.transcript.language_probability, 4),
        }
    )
