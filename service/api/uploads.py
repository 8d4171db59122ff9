"""The one request flow of every upload route, from admission to the background sampler.

(auth: the route's ApiKeyDep, 401) -> admission checked before the body is read (503/429) ->
the form, within the body limit (413/499/507/422) -> the pipeline: checks, decode, worker
(422/413/415/429/504/503) -> result; the quality sampler runs after the response is sent. While
the pipeline works, the connection is watched: a client that hangs up cancels its work (queued
work is dropped at once, running work stops at its next segment) and is recorded as 499.

Routes differ only in what they pass: their form's model, how its fields become options, the
file field's name, raw PCM instead of a container (whisper-asr-webservice's encode=false), a
language-detection run, waiting for a place instead of a 429, or no place at all (jobs, which
only check the upload now and transcribe it later).
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Generic, Literal, TypeVar

from pydantic import BaseModel
from starlette.background import BackgroundTask

from service.api.common import FORM_FIELDS, FORM_OVERHEAD_BYTES, read_upload_form
from service.cancellation import CLIENT_DISCONNECTED, CancelToken
from service.decoding import EncodedAudio, RawPcm
from service.middleware import request_state
from service.pipeline import Work

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable

    from fastapi import Request
    from starlette.datastructures import FormData
    from starlette.types import Receive

    from service.config import Settings
    from service.outcome import Outcome
    from service.pipeline import Pipeline, RequestOptions

F = TypeVar("F", bound=BaseModel)
T = TypeVar("T")
PCM_BYTES_PER_SECOND = 32_000  # raw PCM: 16 kHz, 16-bit, mono


@dataclass
class Upload(Generic[F]):
    """An upload read and turned into the pipeline's Work; `close()` frees its spooled form."""

    fields: F
    work: Work
    form: FormData
    filename: str | None

    async def close(self) -> None:
        await self.form.close()


async def read_upload(
    request: Request,
    pipeline: Pipeline,
    settings: Settings,
    form_model: type[F],
    build_options: Callable[[F], RequestOptions],
    *,
    file_field: str = "file",
    raw_pcm: bool = False,
    mode: Literal["transcribe", "detect_language"] = "transcribe",
    admission_wait: float = 0.0,
    takes_place: bool = True,
) -> Upload[F]:
    """Admission, then the upload's form, turned into Work; the caller runs it (`run_upload`) and
    the Upload is closed by it. `admission_wait`: seconds to wait for a place instead of a 429;
    `takes_place=False`: the upload is only checked now (jobs), so no place is needed."""
    pipeline.admit(room=takes_place and admission_wait == 0)
    limit = settings.limits.max_upload_bytes
    if raw_pcm:
        # Raw PCM's length is its duration: the audio limit decides (413 audio_too_long), with room
        # for one more second so that the decoder, not the byte count, says so.
        limit = int((settings.limits.max_audio_seconds + 1) * PCM_BYTES_PER_SECOND) + FORM_OVERHEAD_BYTES
        request_state(request.scope)["body_limit"] = limit
    # Room for every keyword a request may give, so that too many are a 422 naming `keywords`.
    max_fields = FORM_FIELDS + settings.limits.max_keywords + 1
    fields, upload, form = await read_upload_form(request, form_model, limit, file_field, max_fields)
    try:
        source = RawPcm(upload.file) if raw_pcm else EncodedAudio(upload.file)
        work = Work(build_options(fields), source, token=CancelToken(), mode=mode, admission_wait=admission_wait)
    except BaseException:
        await form.close()
        raise
    return Upload(fields, work, form, upload.filename)


async def run_upload(request: Request, pipeline: Pipeline, upload: Upload[F]) -> tuple[Outcome, BackgroundTask]:
    """Run an upload's work while watching for a hang-up, close its form, and return the outcome
    with the background task (quality sampling, freeing the audio) to attach to the response."""
    try:
        outcome = await until_disconnected(request.receive, upload.work.token, pipeline.transcribe(upload.work))
    finally:
        await upload.close()
    return outcome, answered(request, pipeline, outcome)


def answered(request: Request, pipeline: Pipeline, outcome: Outcome) -> BackgroundTask:
    """Note the outcome in the access log's fields; return the after-response sampling task."""
    state = note_outcome(request, outcome)
    return BackgroundTask(pipeline.keep_sample, outcome, state.get("request_id"))


def note_outcome(request: Request, outcome: Outcome) -> dict[str, Any]:
    """Put what the outcome cost in the request's state (the access log's fields; `audio_seconds`
    is also what the caller's key is charged, service.api.deps.work_caller); returns the state."""
    result = outcome.result
    state = request_state(request.scope)
    state.update(
        audio_seconds=round(result.transcript.duration, 3),
        processing_seconds=round(result.processing_seconds, 3),
        language=result.transcript.language,
    )
    if result.rtf is not None:
        state["rtf"] = round(result.rtf, 4)
    return state


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
