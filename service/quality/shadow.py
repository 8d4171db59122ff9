"""Shadow scoring: a stronger engine re-transcribes sampled audio while the workers are idle.

Human references are slow to come; a reference engine (ASR_SHADOW_MODEL, e.g. large-v3 beside a
smaller served model) gives every kept sample an agreement score within minutes. The served
hypothesis is scored against the shadow transcript as if it were the reference, weighted by the
sample's inclusion probability like the human-referenced WER, into asr_quality_shadow_* counters.
Shadow WER is not true WER (the shadow engine errs too, and shares some errors with the served
one), so it is watched against its own baseline (ASRShadowDisagreementRising); how closely it
tracks true WER is measured on samples that have both (`samples report`, docs/quality.md).

Never at a request's expense: each transcription runs on a worker at IDLE priority (only when
nothing else waits, and preempted when a request arrives with no worker free), and the engine
seconds spent are capped per rolling hour (ASR_SHADOW_BUDGET_SECONDS_PER_HOUR).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import wave
from collections import deque
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

import numpy as np

from service.quality import totals
from service.quality.scoring import score
from service.scheduler import Preempted

if TYPE_CHECKING:
    import numpy.typing as npt

    from service.config import Settings
    from service.metrics import Metrics
    from service.quality.store import SampleRecord, SampleStore

log = logging.getLogger(__name__)
_HOUR = 3600.0


class IdleTranscriber(Protocol):
    """Where shadow transcriptions run: the pipeline's idle-priority verb (a Protocol, so that
    quality does not depend on the pipeline, which depends on quality's sampler)."""

    async def transcribe_idle(
        self, audio: npt.NDArray[np.float32], model: str, language: str | None
    ) -> tuple[str, float]: ...


@dataclass
class ShadowReport:
    scored: int = 0
    seconds: float = 0.0
    # Why the run ended early: "budget", "preempted", "elsewhere" (another process or replica
    # is shadow-scoring the same store), or "" (nothing left).
    stopped: str = ""


class ShadowScorer:
    def __init__(
        self,
        settings: Settings,
        store: SampleStore,
        pipeline: IdleTranscriber,
        metrics: Metrics,
        model: str,
    ) -> None:
        self.settings = settings
        self.store = store
        self.pipeline = pipeline
        self.metrics = metrics
        self.model = model  # the ASR_MODELS entry that transcribes (service.models.shadow_model_id)
        self.runs = 0  # runs finished (for the log and the tests: the startup run is one)
        self._spent: deque[tuple[float, float]] = deque()  # (when, engine seconds) in the last hour
        self._counters = totals.TotalCounters(metrics)

    def budget_left(self, now: float | None = None) -> float:
        now = time.monotonic() if now is None else now
        while self._spent and self._spent[0][0] < now - _HOUR:
            self._spent.popleft()
        return self.settings.shadow.budget_seconds_per_hour - sum(s for _, s in self._spent)

    async def run_once(self, limit: int = 50) -> ShadowReport:
        """Shadow-transcribe up to `limit` samples, newest first, within the hour's budget.

        One process at a time per store (the store's database lock): replicas would otherwise all
        transcribe the same newest samples, each paying for work that is recorded once.
        """
        with contextlib.ExitStack() as held:
            lock = self.store.database.exclusive("shadow", wait=False)
            if not await asyncio.to_thread(held.enter_context, lock):
                return ShadowReport(stopped="elsewhere")
            try:
                return await self._run(limit)
            finally:
                self.runs += 1
                await asyncio.to_thread(held.close)

    async def _run(self, limit: int) -> ShadowReport:
        report = ShadowReport()
        for record in await asyncio.to_thread(self.store.unshadowed, limit):
            if self.budget_left() <= 0:
                report.stopped = "budget"
                break
            try:
                seconds = await self._shadow(record)
            except Preempted:
                report.stopped = "preempted"  # a request needed the worker: try again next run
                break
            except (OSError, EOFError, wave.Error, ValueError):
                log.warning("shadow scoring: sample %s is unreadable; left for the scoring job", record.id)
                continue
            report.scored += 1
            report.seconds += seconds
        return report

    async def _shadow(self, record: SampleRecord) -> float:
        audio = await asyncio.to_thread(_read_wav, self.store, record.id)
        served = (await asyncio.to_thread(self.store.load_document, record.id))["hypothesis"]
        text, seconds = await self.pipeline.transcribe_idle(audio, self.model, record.language)
        self._spent.append((time.monotonic(), seconds))
        self.metrics.quality_shadow_seconds.inc(seconds)
        agreement = score(text, served, record.language, self.settings.quality.normalizer)
        if await asyncio.to_thread(
            self.store.record_shadow,
            record.id,
            record.language,
            agreement.unit,
            agreement.errors,
            agreement.reference_units,
            record.weight,
        ):
            self._counters.add_all(
                totals.shadowed(agreement.unit, agreement.errors, agreement.reference_units, record.weight),
                record.language,
            )
        return seconds

    async def run_forever(self, interval: float) -> None:
        while True:
            try:
                report = await self.run_once()
                if report.scored:
                    log.info("shadow scoring: %s", report)
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("shadow scoring failed")
            await asyncio.sleep(interval)


def _read_wav(store: SampleStore, sample_id: str) -> npt.NDArray[np.float32]:
    with wave.open(str(store.audio_path(sample_id)), "rb") as wav:
        pcm = np.frombuffer(wav.readframes(wav.getnframes()), dtype="<i2")
    return pcm.astype(np.float32) / 32768.0
