"""Decide which served requests to keep for review, after the response has gone out.

Requests fall in strata by language and duration bucket. Each stratum is kept at
ASR_QUALITY_SAMPLE_RATE, raised for rare strata so that each still gets at least
ASR_QUALITY_MIN_PER_STRATUM samples a day: the keep rate is
max(sample_rate, min(1, min_per_stratum / requests_seen_in_the_last_day)), with the day's
count decayed continuously. Requests the hallucination guard flagged are kept at no less
than ASR_QUALITY_FLAGGED_RATE, since they are the likeliest to be wrong.

So samples are not a uniform draw: each is stored with the probability it was kept with, and the
scoring job weights its errors and reference words by 1 / that probability (Horvitz-Thompson), so
that the exported WER estimates what all requests got, not what the oversampled ones got.
"""

from __future__ import annotations

import asyncio
import logging
import math
import random
import threading
import time
from typing import TYPE_CHECKING

from service.languages import language_label

if TYPE_CHECKING:
    from service.config import QualitySettings
    from service.metrics import Metrics
    from service.outcome import Outcome
    from service.quality.store import SampleStore

log = logging.getLogger(__name__)

DURATION_BUCKETS = ((10.0, "short"), (60.0, "medium"), (float("inf"), "long"))
_DAY = 86400.0


def duration_bucket(seconds: float) -> str:
    return next(name for limit, name in DURATION_BUCKETS if seconds < limit)


class StratumCounter:
    """Per-stratum request counts over roughly the last day (exponentially decayed)."""

    def __init__(self) -> None:
        self._counts: dict[tuple[str, str], tuple[float, float]] = {}
        self._lock = threading.Lock()

    def seen(self, stratum: tuple[str, str], now: float) -> float:
        """Count one request in `stratum`; return its decayed count including this one."""
        with self._lock:
            count, at = self._counts.get(stratum, (0.0, now))
            count = count * math.exp(-(now - at) / _DAY) + 1.0
            self._counts[stratum] = (count, now)
            return count


class Sampler:
    def __init__(
        self,
        settings: QualitySettings,
        store: SampleStore | None,
        metrics: Metrics,
        rng: random.Random | None = None,
    ) -> None:
        self.settings = settings
        self.store = store
        self.metrics = metrics
        self._rng = rng or random.Random()
        self._counter = StratumCounter()

    def keep_rate(self, language: str, duration: float, flagged: bool, now: float | None = None) -> float:
        """The probability that this request is kept (also counts it in its stratum)."""
        s = self.settings
        if duration > s.max_sample_seconds:
            return 0.0
        seen = self._counter.seen((language, duration_bucket(duration)), time.time() if now is None else now)
        rate = max(s.sample_rate, min(1.0, s.min_per_stratum / seen)) if s.sample_rate > 0 else 0.0
        return max(rate, s.flagged_rate) if flagged and s.sample_rate > 0 else rate

    async def offer(self, outcome: Outcome, request_id: str | None = None) -> str | None:
        """Maybe keep the request; always frees its audio. Returns the sample id if kept.

        Runs as a background task after the response: a failure is logged, never raised.
        """
        try:
            t = outcome.result.transcript
            rate = self.keep_rate(t.language, t.duration, bool(outcome.flags))
            if self.store is None or self._rng.random() >= rate:
                return None
            stratum = duration_bucket(t.duration)
            sample_id = await asyncio.to_thread(
                self.store.add,
                outcome.audio.read(),
                outcome.audio.sample_rate,
                t,
                backend=outcome.result.backend,
                model=outcome.result.model,
                stratum=stratum,
                flags=outcome.flags,
                request_id=request_id,
                metadata={"container": outcome.audio.info.container, "codec": outcome.audio.info.codec},
                inclusion_probability=rate,
            )
            self.metrics.quality_samples.labels(language_label(t.language), stratum).inc()
            return sample_id
        except Exception:
            log.exception("could not store a quality sample")
            return None
        finally:
            outcome.audio.close()
