"""The scoring job: score each newly referenced sample once and add to the quality counters.

Counters, never ratios: WER over any window is increase(word_errors) / increase(reference_words).
At startup the counters are restored from the store's running totals, so the service's
exported totals survive restarts (Prometheus treats the restart as a counter reset either
way; increase() and rate() are unaffected). In multiprocess mode the supervising process
restores them once, since a restarted worker's dead predecessor still has its files.

Runs in the service every ASR_QUALITY_INTERVAL_SECONDS and on demand (API, CLI). The store's
database lock serialises runs across processes, and with PostgreSQL across replicas (an
advisory lock), so each sample is scored by one run; a sample whose files are missing or damaged is
marked skipped, counted by reason, and the run goes on.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
import wave
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from service.quality import totals
from service.quality.scoring import score
from service.quality.store import check_wav

if TYPE_CHECKING:
    from collections.abc import Iterator

    from service.metrics import Metrics
    from service.quality.store import SampleStore

log = logging.getLogger(__name__)


@dataclass
class JobReport:
    scored: int = 0
    skipped: dict[str, int] = field(default_factory=dict)
    removed: int = 0
    pending: int = 0
    ran: bool = True  # False when another process held the lock


class QualityJob:
    def __init__(
        self,
        store: SampleStore,
        metrics: Metrics,
        normalizer: str = "auto",
    ) -> None:
        self.store = store
        self.metrics = metrics
        self.normalizer = normalizer
        self._thread_lock = threading.Lock()
        self._counters = totals.TotalCounters(metrics)

    def restore_counters(self) -> None:
        """Set the quality counters to the store's running totals (call once per fresh registry)."""
        unknown: set[str] = set()
        for name, language, stratum, value in self.store.totals():
            if name in self._counters:
                self._counters.add(name, language, value, stratum)
            else:
                unknown.add(name)
        if unknown:  # a newer release's totals, or a name that no longer matches: say so
            log.warning("quality totals with no counter, not restored: %s", ", ".join(sorted(unknown)))
        self.metrics.quality_pending.set(self.store.count("pending"))

    @contextlib.contextmanager
    def _exclusive(self, wait: bool) -> Iterator[bool]:
        with self._thread_lock, self.store.database.exclusive("quality-job", wait) as held:
            yield held

    def run_once(self, wait: bool = True) -> JobReport:
        """Apply retention, score what has a reference, update the gauges; blocking.

        With wait=False a run already under way in another process makes this one a no-op.
        """
        with self._exclusive(wait) as mine:
            if not mine:
                return JobReport(ran=False)
            report = JobReport(removed=self.store.sweep())
            for record in self.store.referenced():
                reason = self._damage(record.id)
                if reason is not None:
                    self.store.record_skip(record.id, reason)
                    self.metrics.quality_skipped.labels(reason).inc()
                    report.skipped[reason] = report.skipped.get(reason, 0) + 1
                    log.warning("quality sample %s skipped: %s", record.id, reason)
                    continue
                hypothesis = self.store.load_document(record.id)["hypothesis"]
                assert record.reference is not None
                result = score(record.reference, hypothesis, record.language, self.normalizer)
                if self.store.record_score(
                    record.id, record.language, result.unit, result.errors, result.reference_units, record.weight
                ):
                    self._counters.add_all(
                        totals.scored(result.unit, result.errors, result.reference_units, record.weight),
                        record.language,
                    )
                    report.scored += 1
            report.pending = self.store.count("pending")
        self.metrics.quality_pending.set(report.pending)
        self.metrics.quality_last_success.set(time.time())
        return report

    def _damage(self, sample_id: str) -> str | None:
        """Why a referenced sample cannot be trusted, or None when its files are whole."""
        try:
            self.store.load_document(sample_id)
        except (OSError, ValueError):
            return "missing_record"
        try:
            check_wav(self.store.audio_path(sample_id))
        except FileNotFoundError:
            return "missing_audio"
        except (OSError, EOFError, wave.Error):
            return "damaged_audio"
        return None

    async def run_forever(self, interval: float) -> None:
        """Run every `interval` seconds until cancelled; a failed run is logged and retried."""
        while True:
            try:
                report = await asyncio.to_thread(self.run_once, False)
                if report.ran and (report.scored or report.skipped or report.removed):
                    log.info("quality job: %s", report)
            except Exception:
                log.exception("quality job failed")
            await asyncio.sleep(interval)
