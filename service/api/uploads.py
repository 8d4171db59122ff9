"""The request flow both transcription APIs share, from auth to the background sampler.

auth (401) -> model ready (503) -> room in the queue (429) -> read the form with a size cap
(413) -> check options (422) -> decode (400/413/415/422) -> worker (429/504/503) ->
result; the quality sampler runs after the response is sent.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, TypeVar

from pydantic import BaseModel
from starlette.background import BackgroundTask

from service.api.common import read_upload_form, require_bearer, settings_of, transcriber_of
from service.middleware import request_state

if TYPE_CHECKING:
    from collections.abc import Callable

    from fastapi import Request

    from service.pipeline import Outcome, RequestOptions

F = TypeVar("F", bound=BaseModel)


async def transcribe_upload(
    request: Request, form_model: type[F], build_options: Callable[[F], RequestOptions]
) -> tuple[F, Outcome, BackgroundTask]:
    """Run one upload through the pipeline; returns the parsed fields, the outcome and the
    background task (quality sampling, freeing the audio) to attach to the response."""
    settings = settings_of(request)
    transcriber = transcriber_of(request)
    require_bearer(request, settings.server.api_key)
    transcriber.ready_backend()
    transcriber.scheduler.check_room()
    fields, upload, form = await read_upload_form(request, form_model, settings.limits.max_upload_bytes)
    state = request_state(request.scope)
    try:
        options = transcriber.check_options(build_options(fields))
        audio = await transcriber.decode(upload.file)
    finally:
        await form.close()
    state["audio_seconds"] = round(audio.duration, 3)
    try:
        outcome = await transcriber.run(audio, options)
    except BaseException:
        audio.close()
        raise
    result = outcome.result
    state.update(
        processing_seconds=round(result.processing_seconds, 3),
        rtf=round(result.rtf, 4),
        language=result.transcript.language,
    )
    sampler = request.app.state.sampler
    return fields, outcome, BackgroundTask(sampler.offer, outcome, state.get("request_id"))
