"""The review API: list kept samples, fetch their audio, attach references, score, delete.

Guarded by ASR_ADMIN_TOKEN. Without a token configured the API is off (403), never open.
Ids are checked against the store's pattern before anything touches the disk; a malformed
id is simply "not found".
"""

from __future__ import annotations

import asyncio
import dataclasses
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Query, Request
from fastapi.responses import FileResponse, JSONResponse, Response
from pydantic import BaseModel, Field, field_validator

from service.api.common import require_bearer, settings_of
from service.errors import NotFoundError, ServiceError
from service.quality.store import SampleConflictError, SampleStore, valid_id

router = APIRouter(prefix="/v1/samples", tags=["quality"])


class ReviewDisabledError(ServiceError):
    status = 403
    code = "review_api_disabled"
    reason = "unauthorized"


class ConflictError(ServiceError):
    status = 409
    code = "conflict"


class Reference(BaseModel):
    text: str = Field(..., max_length=100_000, description="What was really said, checked by a person.")

    @field_validator("text")
    @classmethod
    def has_words(cls, text: str) -> str:
        # A blank reference would score every hypothesis word as an insertion against nothing.
        if not text.strip():
            raise ValueError("the reference is empty or only whitespace")
        return text.strip()


def _store(request: Request) -> SampleStore:
    token = settings_of(request).server.admin_token
    if token is None:
        raise ReviewDisabledError("the sample review API is off: set ASR_ADMIN_TOKEN to enable it")
    require_bearer(request, token)
    store: SampleStore | None = request.app.state.store
    if store is None:
        raise ReviewDisabledError("the sample store is off (ASR_QUALITY_SAMPLE_RATE=0)")
    return store


def _checked_id(sample_id: str) -> str:
    if not valid_id(sample_id):
        raise NotFoundError(f"no sample {sample_id[:40]!r}")
    return sample_id


@router.get("")
async def list_samples(
    request: Request,
    status: Literal["pending", "referenced", "scored", "skipped"] | None = None,
    language: Annotated[str | None, Query(max_length=16)] = None,
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
    offset: Annotated[int, Query(ge=0, le=1_000_000_000)] = 0,
) -> dict[str, Any]:
    """Samples, newest first; filter by status and language."""
    store = _store(request)
    items, total = await asyncio.to_thread(store.page, status, language, limit, offset)
    return {"items": [r.summary() for r in items], "total": total, "limit": limit, "offset": offset}


@router.get("/{sample_id}")
async def get_sample(request: Request, sample_id: str) -> dict[str, Any]:
    """One sample with its reference and score, and the segments the engine gave."""
    store = _store(request)
    record = await asyncio.to_thread(store.get, _checked_id(sample_id))
    if record is None:
        raise NotFoundError(f"no sample {sample_id}")
    detail = record.detail()
    try:
        detail["segments"] = (await asyncio.to_thread(store.load_document, sample_id)).get("segments", [])
    except (OSError, ValueError):
        detail["segments"] = None
    return detail


@router.get("/{sample_id}/audio", response_class=FileResponse)
async def get_sample_audio(request: Request, sample_id: str) -> Response:
    """The sample's audio (16 kHz mono WAV), for the person writing the reference."""
    store = _store(request)
    if await asyncio.to_thread(store.get, _checked_id(sample_id)) is None:
        raise NotFoundError(f"no sample {sample_id}")
    path = store.audio_path(sample_id)
    if not path.is_file():
        raise NotFoundError(f"the audio of sample {sample_id} is missing")
    return FileResponse(path, media_type="audio/wav", filename=f"{sample_id}.wav")


@router.put("/{sample_id}/reference")
async def put_reference(request: Request, sample_id: str, reference: Reference) -> dict[str, Any]:
    """Attach the reference text; the job scores it at its next run (or POST /v1/samples/score)."""
    store = _store(request)
    try:
        record = await asyncio.to_thread(store.set_reference, _checked_id(sample_id), reference.text)
    except SampleConflictError as exc:
        raise ConflictError(f"{exc}; its reference can no longer change") from None
    if record is None:
        raise NotFoundError(f"no sample {sample_id}")
    return record.detail()


@router.delete("/{sample_id}", status_code=204)
async def delete_sample(request: Request, sample_id: str) -> Response:
    """Delete a sample's audio, text and record (its past score stays in the totals)."""
    store = _store(request)
    if not await asyncio.to_thread(store.delete, _checked_id(sample_id)):
        raise NotFoundError(f"no sample {sample_id}")
    return Response(status_code=204)


@router.post("/score")
async def score_now(request: Request) -> JSONResponse:
    """Run the scoring job now and return what it did."""
    _store(request)
    report = await asyncio.to_thread(request.app.state.quality_job.run_once, True)
    return JSONResponse(dataclasses.asdict(report))
