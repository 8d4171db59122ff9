"""The quality loop for people: what to review next, and what the references say so far.

`GET /v1/quality/queue`: pending samples, most useful first (service.quality.review_queue says
why). `GET /v1/quality/report`: per language, the figures `python -m service samples report`
prints (one function computes both), and the samples scored last with their word-by-word
alignment. Both are admin routes (ASR_ADMIN_TOKEN), as the rest of the review API.
"""

from __future__ import annotations

import asyncio
from typing import Annotated, Literal

from fastapi import APIRouter, Query
from pydantic import BaseModel, Field

from service.api.common import documented
from service.api.deps import AdminDep, SampleStoreDep, SettingsDep
from service.api.samples import SampleSummary
from service.quality.diff import align
from service.quality.report import quality_report
from service.quality.review_queue import rank

router = APIRouter(prefix="/v1/quality", tags=["quality"])
# The pending samples ranked per call; beyond it the oldest wait (a queue that long is read by
# its head, and ranking stays a fraction of a second).
QUEUE_CANDIDATES = 5000


class QueueItem(SampleSummary):
    """A pending sample, with how useful its reference would be and why."""

    stratum: str
    flags: list[str]
    priority: float = Field(description="Higher first: rare stratum + suspected hallucination + shadow disagreement.")
    reasons: list[str] = Field(description="Why it ranks where it does, for the reviewer.")


class ReviewQueue(BaseModel):
    items: list[QueueItem]
    pending: int = Field(description="Samples waiting for a reference, in all.")


class LanguageFigures(BaseModel):
    """One language's row of `samples report`."""

    language: str
    metric: Literal["WER", "CER"]
    samples: int
    rate: float | None = Field(description="Weighted (population) error rate.")
    ci95: list[float | None] = Field(description="95% bootstrap interval of `rate`.")
    unweighted: float | None
    shadowed: int
    true_on_shadowed: float | None
    shadow_on_shadowed: float | None
    pending: int = Field(
        description="Samples of the language still waiting for a reference. The queue serves flagged and "
        "disputed samples first, so until these are done the estimate leans towards them."
    )


class AlignedChunk(BaseModel):
    op: Literal["equal", "substitute", "delete", "insert"]
    reference: list[str]
    hypothesis: list[str]


class ScoredSample(BaseModel):
    id: str
    language: str
    unit: str
    errors: int
    reference_units: int
    scored_at: float
    reference: str
    hypothesis: str
    alignment: list[AlignedChunk] = Field(description="After the scoring's normalisation: the errors it counted.")


class QualityReport(BaseModel):
    languages: list[LanguageFigures]
    recent: list[ScoredSample]


_ADMIN_ERRORS = (401, 403)


@router.get("/queue", responses=documented(*_ADMIN_ERRORS))
async def review_queue(
    _: AdminDep, store: SampleStoreDep, limit: Annotated[int, Query(ge=1, le=500)] = 50
) -> ReviewQueue:
    """Pending samples, the most useful reference first."""

    def ranked() -> tuple[list[QueueItem], int]:
        order = rank(store.pending(QUEUE_CANDIDATES), store.reference_counts())[:limit]
        items = [
            QueueItem(
                **r.record.summary(),
                stratum=r.record.stratum,
                flags=r.record.flags,
                priority=r.priority,
                reasons=r.reasons,
            )
            for r in order
        ]
        return items, store.count("pending")

    items, pending = await asyncio.to_thread(ranked)
    return ReviewQueue(items=items, pending=pending)


@router.get("/report", responses=documented(*_ADMIN_ERRORS))
async def report(
    _: AdminDep, store: SampleStoreDep, settings: SettingsDep, recent: Annotated[int, Query(ge=0, le=200)] = 20
) -> QualityReport:
    """Weighted WER/CER per language with its interval (as `samples report`), and recent scored samples."""
    mode = settings.quality.normalizer

    def build() -> QualityReport:
        rows = [
            LanguageFigures(**row, pending=store.page("pending", row["language"], 1)[1])
            for row in quality_report(store.scored())
        ]
        scored = []
        for r in store.recently_scored(recent):
            chunks = align(r.reference or "", r.hypothesis, r.language, mode)
            scored.append(
                ScoredSample(
                    id=r.id,
                    language=r.language,
                    unit=r.unit or "word",
                    errors=r.errors or 0,
                    reference_units=r.reference_units or 0,
                    scored_at=r.scored_at or 0.0,
                    reference=r.reference or "",
                    hypothesis=r.hypothesis,
                    alignment=[AlignedChunk(op=c.op, reference=c.reference, hypothesis=c.hypothesis) for c in chunks],
                )
            )
        return QualityReport(languages=rows, recent=scored)

    return await asyncio.to_thread(build)
