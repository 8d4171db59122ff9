"""The request flow every upload route shares, from auth to the background sampler.

auth (401) -> admission checked before the body is read (503/429) -> the form, within the
body limit (413/499/507) -> the pipeline: checks, decode, worker (422/413/415/429/504/503)
-> result; the quality sampler runs after the response is sent. While the pipeline works,
the connection is watched: a client that hangs up cancels its work (queued work is dropped at
once, running work stops at its next segment) and is recorded as 499.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, TypeVar

from pydantic import BaseModel
from starlette.background import BackgroundTask

from service.api.common import pipeline_of, read_upload_form, require_bearer, settings_of
from service.cancellation import CLIENT_DISCONNECTED, CancelToken
from service.decoding import EncodedAudio
from service.middleware import request_state
from service.pipeline import Work

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable

    from fastapi import Request
    from starlette.datastructures import FormData
    from starlette.types import Receive

    from service.outcome import Outcome
    from service.pipeline import Pipeline, RequestOptions

F = TypeVar("F", bound=BaseModel)
T = TypeVar("T")


async def read_work(
    request: Request, form_model: type[F], build_options: Callable[[F], RequestOptions], file_field: str = "file"
) -> tuple[F, Work, FormData]:
    """Auth, admission and the upload's form, turned into the pipeline's Work; the caller runs it
    and closes the form."""
    settings = settings_of(request)
    pipeline = pipeline_of(request)
    require_bearer(request, settings.server.api_key)
    pipeline.check_admission()
    fields, upload, form = await read_upload_form(request, form_model, settings.limits.max_upload_bytes, file_field)
    try:
        return fields, Work(build_options(fields), EncodedAudio(upload.file), token=CancelToken()), form
    except BaseException:
        await form.close()
        raise


async def transcribe_upload(
    request: Request, form_model: type[F], build_options: Callable[[F], RequestOptions], file_field: str = "file"
) -> tuple[F, Outcome, BackgroundTask]:
    """Run one upload through the pipeline; returns the parsed fields, the outcome and the
    background task (quality sampling, freeing the audio) to attach to the response."""
    fields, work, form = await read_work(request, form_model, build_options, file_field)
    outcome, background = await run_work(request, work, form)
    return fields, outcome, background


async def run_work(request: Request, work: Work, form: FormData) -> tuple[Outcome, BackgroundTask]:
    """Run an upload's work while watching for a hang-up, close its form, and return the outcome
    with the background task (quality sampling, freeing the audio) to attach to the response."""
    pipeline = pipeline_of(request)
    try:
        outcome = await until_disconnected(request.receive, work.token, pipeline.transcribe(work))
    finally:
        await form.close()
    return outcome, answered(request, pipeline, outcome)


def answered(request: Request, pipeline: Pipeline, outcome: Outcome) -> BackgroundTask:
    """Note the outcome in the access log's fields; return the after-response sampling task."""
    result = outcome.result
    state = request_state(request.scope)
    state.update(
        audio_seconds=round(result.transcript.duration, 3),
        processing_seconds=round(result.processing_seconds, 3),
        language=result.transcript.language,
    )
    if result.rtf is not None:
        state["rtf"] = round(result.rtf, 4)
    return BackgroundTask(pipeline.keep_sample, outcome, state.get("request_id"))


async def until_disconnected(receive: Receive, token: CancelToken, work: Awaitable[T]) -> T:
    """Await `work`; if the client disconnects first, cancel `token` (the work then raises
    ClientGoneError). Call only once the request body has been read."""

    async def watch() -> None:
        while (await receive())["type"] != "http.disconnect":
            pass
        token.cancel(CLIENT_DISCONNECTED)

    watcher = asyncio.ensure_future(watch())
    try:
        return await work
    finally:
        watcher.cancel()
