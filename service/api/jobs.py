"""Jobs: long audio submitted now, transcribed in the background, fetched later.

    POST   /v1/jobs                 the same multipart fields as /transcribe, plus `webhook_url`
                                    -> 202 {id, status, status_url, result_url, ...}
    GET    /v1/jobs                 recent jobs, newest first
    GET    /v1/jobs/{id}            status, progress (audio seconds done / total), ETA, error
    GET    /v1/jobs/{id}/result     ?response_format=json|verbose_json|text|srt|vtt (409 until it succeeded)
    DELETE /v1/jobs/{id}            cancels an active job; deletes a finished one (204)

The same auth as transcription (ASR_API_KEY). At most ASR_JOBS_MAX_QUEUED jobs wait or run at
once (429 beyond). An upload is checked at once (415/422/413 now, not in a failed job later).
"""

from __future__ import annotations

import asyncio
import shutil
import time
import uuid
from dataclasses import asdict
from typing import TYPE_CHECKING, Any, Literal

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response
from pydantic import Field

from service.api.common import form_openapi, pipeline_of, read_upload_form, require_bearer, settings_of
from service.api.transcribe import TranscribeForm, request_options
from service.decoding import EncodedAudio
from service.errors import (
    InsufficientStorageError,
    NotFoundError,
    QueueFullError,
    ServiceError,
    is_disk_full,
)
from service.formats import MEDIA_TYPES, render_text, service_json
from service.jobs.webhook import check_url

if TYPE_CHECKING:
    from pathlib import Path

    from service.jobs.runner import JobRunner
    from service.jobs.store import JobRecord, JobStore

router = APIRouter(prefix="/v1/jobs", tags=["jobs"])


class JobForm(TranscribeForm):
    """Fields of POST /v1/jobs: those of /transcribe, and where to report the end."""

    webhook_url: str | None = Field(None, max_length=2000, description="POSTed to (signed) when the job ends.")


class JobNotFinishedError(ServiceError):
    status = 409
    code = "job_not_finished"


def _runner(request: Request) -> JobRunner:
    require_bearer(request, settings_of(request).server.api_key)
    runner: JobRunner = request.app.state.jobs
    return runner


def _job(store: JobStore, job_id: str) -> JobRecord:
    job = store.get(job_id) if len(job_id) == 32 and job_id.isalnum() else None
    if job is None:
        raise NotFoundError(f"no job {job_id[:40]!r}")
    return job


def job_view(job: JobRecord) -> dict[str, Any]:
    """What a client sees of a job."""
    total = job.duration
    eta = None
    if job.status == "running" and total and job.audio_done and job.started_at:
        pace = job.audio_done / max(time.time() - job.started_at, 1e-6)
        eta = round((total - job.audio_done) / pace, 1)
    return {
        "id": job.id,
        "status": job.status,
        "created_at": job.created_at,
        "started_at": job.started_at,
        "finished_at": job.finished_at,
        "filename": job.filename,
        "language": job.language,
        "progress": {
            "audio_seconds_done": round(job.audio_done, 3),
            "audio_seconds_total": round(total, 3) if total is not None else None,
            "ratio": round(job.audio_done / total, 4) if total else 0.0,
        },
        "eta_seconds": eta,
        "error": {"code": job.error_code, "message": job.error_message} if job.error_code else None,
        "webhook": {"state": job.webhook_state, "attempts": job.webhook_attempts, "error": job.webhook_error}
        if job.webhook_url
        else None,
        "status_url": f"/v1/jobs/{job.id}",
        "result_url": f"/v1/jobs/{job.id}/result",
    }


@router.post("", status_code=202, openapi_extra=form_openapi(JobForm))
async def submit(request: Request) -> JSONResponse:
    """Queue a transcription of an upload; 202 with the job's id and where to follow it."""
    runner = _runner(request)
    settings = settings_of(request)
    pipeline = pipeline_of(request)
    pipeline.engine.ready_backend()
    pipeline.lifecycle.check_accepting()
    if await asyncio.to_thread(runner.store.count_active) >= settings.jobs.max_queued:
        raise QueueFullError(60)
    fields, upload, form = await read_upload_form(request, JobForm, settings.limits.max_upload_bytes)
    try:
        # Jobs are fetched later in any format: keep subtitle-sized segments.
        options = request_options(fields, fine_segments=True)
        pipeline.check_options(options)
        webhook = check_url(fields.webhook_url, settings.webhook) if fields.webhook_url else None
        await pipeline.decoder.probe(EncodedAudio(upload.file))
        spooled = await asyncio.to_thread(_spool, upload.file, runner.store.root)
        job = await asyncio.to_thread(runner.store.create, spooled, asdict(options), upload.filename, webhook)
    finally:
        await form.close()
    runner.wake()
    return JSONResponse(job_view(job), status_code=202, headers={"Location": f"/v1/jobs/{job.id}"})


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


@router.get("")
async def list_jobs(request: Request) -> dict[str, Any]:
    runner = _runner(request)
    return {"items": [job_view(j) for j in await asyncio.to_thread(runner.store.recent)]}


@router.get("/{job_id}")
async def status(request: Request, job_id: str) -> dict[str, Any]:
    runner = _runner(request)
    return job_view(await asyncio.to_thread(_job, runner.store, job_id))


@router.get("/{job_id}/result")
async def result(
    request: Request, job_id: str, response_format: Literal["json", "verbose_json", "text", "srt", "vtt"] = "json"
) -> Response:
    runner = _runner(request)
    job = await asyncio.to_thread(_job, runner.store, job_id)
    if job.status != "succeeded":
        raise JobNotFinishedError(f"job {job.id} is {job.status}; its result exists once it has succeeded")
    transcribed = await asyncio.to_thread(runner.result, job)
    if response_format in ("json", "verbose_json"):
        body = {"id": job.id, **service_json(transcribed, verbose=response_format == "verbose_json")}
        return JSONResponse(body)
    return Response(render_text(transcribed, response_format), media_type=MEDIA_TYPES[response_format])


@router.delete("/{job_id}", response_model=None)
async def cancel(request: Request, job_id: str) -> Response:
    """Cancel a queued or running job (200, its status); delete a finished one (204)."""
    runner = _runner(request)
    job = await asyncio.to_thread(_job, runner.store, job_id)
    if await asyncio.to_thread(runner.cancel, job.id):
        return JSONResponse(job_view(_job(runner.store, job.id)))
    await asyncio.to_thread(runner.store.delete, job.id)
    return Response(status_code=204)
