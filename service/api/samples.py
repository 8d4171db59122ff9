"""The review API: list kept samples, fetch their audio, attach references, score, delete.

Guarded by ASR_ADMIN_TOKEN. Without a token configured the API is off (403), never open.
Ids are checked against the store's pattern before anything touches the disk; a malformed
id is simply "not found".
"""

from __future__ import annotations

import asyncio
import dataclasses
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Query
from fastapi.responses import FileResponse, Response
from pydantic import BaseModel, ConfigDict, Field, field_validator

from service.api.common import documented
from service.api.deps import AdminDep, QualityJobDep, SampleStoreDep
from service.errors import NotFoundError, ServiceError
from service.quality.store import SampleConflictError, valid_id

router = APIRouter(prefix="/v1/samples", tags=["quality"])


class ConflictError(ServiceError):
    status = 409
    code = "conflict"


class SampleSummary(BaseModel):
    """A sample as a review list shows it."""

    id: str
    language: str
    duration: float
    hypothesis: str
    created_at: float
    status: Literal["pending", "referenced", "scored", "skipped"]


class SamplePage(BaseModel):
    items: list[SampleSummary]
    total: int = Field(description="Samples that match the filters, on every page.")
    limit: int
    offset: int


class SampleDetail(BaseModel):
    """One sample: its record, reference and score, and the segments the engine gave."""

    model_config = ConfigDict(extra="allow")  # the record's fields (service.quality.store.SampleRecord)

    id: str
    status: str
    hypothesis: str
    reference: str | None
    segments: list[dict[str, Any]] | None = Field(None, description="Null when the sample's file is unreadable.")


class ScoreReport(BaseModel):
    scored: int
    skipped: dict[str, int]
    removed: int
    pending: int
    ran: bool = Field(description="False when another process was scoring at the time.")


class Reference(BaseModel):
    text: str = Field(..., max_length=100_000, description="What was really said, checked by a person.")

    @field_validator("text")
    @classmethod
    def has_words(cls, text: str) -> str:
        # A blank reference would score every hypothesis word as an insertion against nothing.
        if not text.strip():
            raise ValueError("the reference is empty or only whitespace")
        return text.strip()


def _checked_id(sample_id: str) -> str:
    if not valid_id(sample_id):
        raise NotFoundError(f"no sample {sample_id[:40]!r}")
    return sample_id


_ADMIN_ERRORS = (401, 403)


@router.get("", responses=documented(*_ADMIN_ERRORS))
async def list_samples(
    _: AdminDep,
    store: SampleStoreDep,
    status: Literal["pending", "referenced", "scored", "skipped"] | None = None,
    language: Annotated[str | None, Query(max_length=16)] = None,
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
    offset: Annotated[int, Query(ge=0, le=1_000_000_000)] = 0,
) -> SamplePage:
    """Samples, newest first; filter by status and language."""
    items, total = await asyncio.to_thread(store.page, status, language, limit, offset)
    return SamplePage(items=[SampleSummary(**r.summary()) for r in items], total=total, limit=limit, offset=offset)


@router.get("/{sample_id}", responses=documented(*_ADMIN_ERRORS, 404))
async def get_sample(_: AdminDep, store: SampleStoreDep, sample_id: str) -> SampleDetail:
    """One sample with its reference and score, and the segments the engine gave."""
    record = await asyncio.to_thread(store.get, _checked_id(sample_id))
    if record is None:
        raise NotFoundError(f"no sample {sample_id}")
    detail = record.detail()
    try:
        detail["segments"] = (await asyncio.to_thread(store.load_document, sample_id)).get("segments", [])
    except (OSError, ValueError):
        detail["segments"] = None
    return SampleDetail(**detail)


@router.get("/{sample_id}/audio", response_class=FileResponse, responses=documented(*_ADMIN_ERRORS, 404))
async def get_sample_audio(_: AdminDep, store: SampleStoreDep, sample_id: str) -> Response:
    """The sample's audio (16 kHz mono WAV), for the person writing the reference."""
    if await asyncio.to_thread(store.get, _checked_id(sample_id)) is None:
        raise NotFoundError(f"no sample {sample_id}")
    path = store.audio_path(sample_id)
    if not path.is_file():
        raise NotFoundError(f"the audio of sample {sample_id} is missing")
    return FileResponse(path, media_type="audio/wav", filename=f"{sample_id}.wav")


@router.put("/{sample_id}/reference", responses=documented(*_ADMIN_ERRORS, 404, 409, 422))
async def put_reference(_: AdminDep, store: SampleStoreDep, sample_id: str, reference: Reference) -> SampleDetail:
    """Attach the reference text; the job scores it at its next run (or POST /v1/samples/score)."""
    try:
        record = await asyncio.to_thread(store.set_reference, _checked_id(sample_id), reference.text)
    except SampleConflictError as exc:
        raise ConflictError(f"{exc}; its reference can no longer change") from None
    if record is None:
        raise NotFoundError(f"no sample {sample_id}")
    return SampleDetail(**record.detail())


@router.delete("/{sample_id}", status_code=204, responses=documented(*_ADMIN_ERRORS, 404))
async def delete_sample(_: AdminDep, store: SampleStoreDep, sample_id: str) -> Response:
    """Delete a sample's audio, text and record (its past score stays in the totals)."""
    if not await asyncio.to_thread(store.delete, _checked_id(sample_id)):
        raise NotFoundError(f"no sample {sample_id}")
    return Response(status_code=204)


@router.post("/score", responses=documented(*_ADMIN_ERRORS))
async def score_now(_: AdminDep, job: QualityJobDep) -> ScoreReport:
    """Run the scoring job now and return what it did."""
    report = await asyncio.to_thread(job.run_once, True)
    return ScoreReport(**dataclasses.asdict(report))
