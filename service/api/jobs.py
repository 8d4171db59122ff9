"""Jobs: long audio submitted now, transcribed in the background, fetched later.

    POST   /v1/jobs                 the same multipart fields as /transcribe, plus `webhook_url`
                                    -> 202 {id, status, status_url, result_url, ...}
    GET    /v1/jobs                 recent jobs, newest first
    GET    /v1/jobs/{id}            status, progress (audio seconds done / total), ETA, error
    GET    /v1/jobs/{id}/result     ?response_format=json|verbose_json|text|srt|vtt (409 until it succeeded)
    DELETE /v1/jobs/{id}            cancels an active job; deletes a finished one (204)

The same auth as transcription. A key sees only the jobs it submitted: another key's job answers
404, as one that does not exist (the admin token sees every job). At most ASR_JOBS_MAX_QUEUED jobs
wait or run at once (429 beyond, held in the store's insert, so concurrent submits cannot pass it).
An upload is checked at once (415/422/413 now, not in a failed job later), and so is `webhook_url`
(service.jobs.destinations: 422); its audio counts against the key's hourly budget once the job
has decoded it. A full disk under the job store is 507, with nothing left behind.
"""

from __future__ import annotations

import asyncio
import shutil
import time
import uuid
from dataclasses import asdict, replace
from typing import TYPE_CHECKING, Any, Literal

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, Field

from service.api.common import UPLOAD_ERRORS, documented, form_openapi, respond
from service.api.deps import ApiKeyDep, Caller, JobsDep, PipelineDep, SettingsDep, WorkKeyDep
from service.api.schemas import JobTranscription
from service.api.transcribe import TranscribeForm, request_options
from service.api.uploads import read_upload
from service.decoding import EncodedAudio
from service.errors import (
    InsufficientStorageError,
    NotFoundError,
    QueueFullError,
    ServiceError,
    is_disk_full,
)
from service.formats import ResponseFormat
from service.jobs.destinations import check_url
from service.jobs.store import JobLimitReached
from service.jobs.webhook import ERROR_CLASSES

if TYPE_CHECKING:
    from pathlib import Path

    from service.jobs.store import JobRecord, JobStore
    from service.pipeline import RequestOptions

router = APIRouter(prefix="/v1/jobs", tags=["jobs"])


class JobForm(TranscribeForm):
    """Fields of POST /v1/jobs: those of /transcribe, and where to report the end."""

    webhook_url: str | None = Field(None, max_length=2000, description="POSTed to (signed) when the job ends.")


class JobNotFinishedError(ServiceError):
    status = 409
    code = "job_not_finished"


class JobProgress(BaseModel):
    audio_seconds_done: float
    audio_seconds_total: float | None = Field(description="Known once the job's audio is decoded.")
    ratio: float


class JobError(BaseModel):
    code: str
    message: str


class WebhookView(BaseModel):
    state: str | None = Field(description="pending, delivered or failed.")
    attempts: int
    error: str | None = Field(
        description=f"Why the last delivery failed, as a class: {', '.join(ERROR_CLASSES)} (details are in the log)."
    )


class JobView(BaseModel):
    """What a client sees of a job."""

    id: str
    status: Literal["queued", "running", "succeeded", "failed", "cancelled"]
    created_at: float
    started_at: float | None
    finished_at: float | None
    filename: str | None
    language: str | None
    progress: JobProgress
    eta_seconds: float | None
    error: JobError | None
    webhook: WebhookView | None
    status_url: str
    result_url: str

    @classmethod
    def of(cls, job: JobRecord) -> JobView:
        total = job.duration
        eta = None
        if job.status == "running" and total and job.audio_done and job.started_at:
            pace = job.audio_done / max(time.time() - job.started_at, 1e-6)
            eta = round((total - job.audio_done) / pace, 1)
        return cls(
            id=job.id,
            status=job.status,  # the store holds only these
            created_at=job.created_at,
            started_at=job.started_at,
            finished_at=job.finished_at,
            filename=job.filename,
            language=job.language,
            progress=JobProgress(
                audio_seconds_done=round(job.audio_done, 3),
                audio_seconds_total=round(total, 3) if total is not None else None,
                ratio=round(job.audio_done / total, 4) if total else 0.0,
            ),
            eta_seconds=eta,
            error=JobError(code=job.error_code, message=job.error_message or "") if job.error_code else None,
            webhook=WebhookView(state=job.webhook_state, attempts=job.webhook_attempts, error=job.webhook_error)
            if job.webhook_url
            else None,
            status_url=f"/v1/jobs/{job.id}",
            result_url=f"/v1/jobs/{job.id}/result",
        )


class JobList(BaseModel):
    items: list[JobView] = Field(description="Recent jobs, newest first.")


def _job(store: JobStore, job_id: str, caller: Caller) -> JobRecord:
    """The job if `caller` may see it; NotFoundError (404) otherwise, whether it exists or not."""
    job = store.get(job_id, caller.owner_filter) if len(job_id) == 32 and job_id.isalnum() else None
    if job is None:
        raise NotFoundError(f"no job {job_id[:40]!r}")
    return job


def _job_options(form: JobForm) -> RequestOptions:
    # Jobs are fetched later in any format: keep subtitle-sized segments.
    return request_options(form, fine_segments=True)


@router.post(
    "",
    status_code=202,
    openapi_extra=form_openapi(JobForm),
    response_model=None,
    responses={202: {"model": JobView, "description": "accepted"}, **documented(*UPLOAD_ERRORS)},
)
async def submit(
    request: Request, caller: WorkKeyDep, pipeline: PipelineDep, settings: SettingsDep, runner: JobsDep
) -> JSONResponse:
    """Queue a transcription of an upload; 202 with the job's id and where to follow it."""
    pipeline.admit(room=False)
    # Early, before the upload is read; the store's insert enforces the limit exactly.
    if await asyncio.to_thread(runner.store.count_active) >= settings.jobs.max_queued:
        raise QueueFullError(60)
    upload = await read_upload(request, pipeline, settings, JobForm, _job_options, takes_place=False)
    try:
        # The job keeps the model's id (not an alias), so that it resumes on the same model.
        options = replace(upload.work.options, model=pipeline.resolve_model(upload.work.options.model))
        pipeline.check_options(options)
        fields = upload.fields
        webhook = check_url(fields.webhook_url, settings.webhook) if fields.webhook_url else None
        source = upload.work.source
        assert isinstance(source, EncodedAudio)
        await pipeline.probe(source)
        spooled = await asyncio.to_thread(_spool, source.file, runner.store.root)
        try:  # the store removes the spooled upload whatever goes wrong
            job = await asyncio.to_thread(
                runner.store.create,
                spooled,
                asdict(options),
                upload.filename,
                webhook,
                caller.key,
                limit=settings.jobs.max_queued,
            )
        except JobLimitReached:
            raise QueueFullError(60) from None
    finally:
        await upload.close()
    runner.wake()
    return JSONResponse(
        JobView.of(job).model_dump(mode="json"), status_code=202, headers={"Location": f"/v1/jobs/{job.id}"}
    )


def _spool(source: Any, root: Path) -> Path:
    """Copy the upload beside the job table (a temp name; the store moves it into place)."""
    target = root / f".upload-{uuid.uuid4().hex}"
    try:
        with open(target, "wb") as out:
            shutil.copyfileobj(source, out, 1 << 20)
    except OSError as exc:
        target.unlink(missing_ok=True)
        if is_disk_full(exc):
            raise InsufficientStorageError("the job store's disk is full; the job was not accepted") from exc
        raise
    return target


@router.get("", responses=documented(401))
async def list_jobs(caller: ApiKeyDep, runner: JobsDep) -> JobList:
    jobs = await asyncio.to_thread(runner.store.recent, 100, caller.owner_filter)
    return JobList(items=[JobView.of(j) for j in jobs])


@router.get("/{job_id}", responses=documented(401, 404))
async def status(caller: ApiKeyDep, runner: JobsDep, job_id: str) -> JobView:
    return JobView.of(await asyncio.to_thread(_job, runner.store, job_id, caller))


@router.get(
    "/{job_id}/result",
    response_model=None,
    responses=documented(401, 404, 409, ok=JobTranscription),
)
async def result(caller: ApiKeyDep, runner: JobsDep, job_id: str, response_format: ResponseFormat = "json") -> Response:
    """The finished job's transcript in any format (409 until it has succeeded)."""
    job = await asyncio.to_thread(_job, runner.store, job_id, caller)
    if job.status != "succeeded":
        raise JobNotFinishedError(f"job {job.id} is {job.status}; its result exists once it has succeeded")
    transcribed = await asyncio.to_thread(runner.result, job)
    verbose = response_format == "verbose_json"
    return respond(transcribed, response_format, lambda: JobTranscription.of_job(job.id, transcribed, verbose))


@router.delete("/{job_id}", response_model=None, responses={204: {"description": "deleted"}, **documented(401, 404)})
async def cancel(caller: ApiKeyDep, runner: JobsDep, job_id: str) -> Response:
    """Cancel a queued or running job (200, its status); delete a finished one (204)."""
    job = await asyncio.to_thread(_job, runner.store, job_id, caller)
    if await asyncio.to_thread(runner.cancel, job.id):
        view = JobView.of(await asyncio.to_thread(_job, runner.store, job.id, caller))
        return JSONResponse(view.model_dump(mode="json"))
    await asyncio.to_thread(runner.store.delete, job.id)
    return Response(status_code=204)
