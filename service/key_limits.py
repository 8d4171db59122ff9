"""Per-key limits in one process: work in flight now, and audio seconds over the last hour.

A route that transcribes (an upload, a job submission, a live stream) takes one of its key's
places in flight for as long as it runs, and is refused at once (429 `key_concurrency_limit`)
when the key has none left; it is also refused (429 `key_audio_limit`, Retry-After: when enough
of the hour's audio has aged out) when the key's audio seconds of the last hour are spent. Audio
is charged where it is known: after an upload was transcribed (its decoded length), when a job's
audio has been decoded, and with each finished turn of a live stream. So the hour's total may
pass the budget by what was in flight when it ran out; never by more than max_in_flight
requests, each capped by ASR_MAX_AUDIO_SECONDS.

Counts live in the process (like ASR_MAX_STREAMS): with ASR_PROCESSES or replicas above one, each
process enforces the limits on the work it serves. The ledger keeps one bucket per minute and
key, so it stays small however busy a key is.
"""

from __future__ import annotations

import math
import threading
import time
from collections import deque
from typing import TYPE_CHECKING

from service.errors import KeyAudioLimitError, KeyBusyError
from service.keys import ANONYMOUS

if TYPE_CHECKING:
    from collections.abc import Callable, Iterable

    from service.keys import KeyLimits
    from service.metrics import Metrics

HOUR = 3600.0
_BUCKET_SECONDS = 60.0


class KeyUsage:
    """What each key uses now; thread-safe (auth runs in FastAPI's thread pool)."""

    def __init__(self, metrics: Metrics, names: Iterable[str] = (), clock: Callable[[], float] = time.monotonic):
        """`names`: the configured keys, whose series are created at zero (rate() sees them at once)."""
        self._metrics = metrics
        self._clock = clock
        self._lock = threading.Lock()
        self._in_flight: dict[str, int] = {}
        self._audio: dict[str, deque[list[float]]] = {}  # per key: [bucket start, seconds], oldest first
        for name in (*names, ANONYMOUS):
            metrics.key_audio.labels(name)
            metrics.key_in_flight.labels(name)

    def admit(self, name: str, limits: KeyLimits | None) -> Callable[[], None]:
        """Take one of `name`'s places in flight; returns the function that gives it back (once).

        Raises KeyAudioLimitError when its audio of the last hour is spent, KeyBusyError when
        every place is taken. `limits` None: no limits (the admin, or keys off)."""
        with self._lock:
            if limits is not None and limits.audio_seconds_per_hour > 0:
                wait = self._wait_for_audio(name, limits.audio_seconds_per_hour)
                if wait is not None:
                    raise KeyAudioLimitError(name, limits.audio_seconds_per_hour, wait)
            busy = self._in_flight.get(name, 0)
            if limits is not None and 0 < limits.max_in_flight <= busy:
                raise KeyBusyError(name, limits.max_in_flight)
            self._in_flight[name] = busy + 1
        self._metrics.key_in_flight.labels(name).inc()
        released = False

        def release() -> None:
            nonlocal released
            if released:
                return
            released = True
            with self._lock:
                self._in_flight[name] -= 1
            self._metrics.key_in_flight.labels(name).dec()

        return release

    def in_flight(self, name: str) -> int:
        with self._lock:
            return self._in_flight.get(name, 0)

    def charge(self, name: str, seconds: float) -> None:
        """Count `seconds` of audio transcribed for `name` (now)."""
        if seconds <= 0:
            return
        self._metrics.key_audio.labels(name).inc(seconds)
        with self._lock:
            now = self._clock()
            buckets = self._audio.setdefault(name, deque())
            start = now - now % _BUCKET_SECONDS
            if buckets and buckets[-1][0] == start:
                buckets[-1][1] += seconds
            else:
                buckets.append([start, seconds])
            self._expire(buckets, now)

    def spent(self, name: str) -> float:
        """Audio seconds charged to `name` over the last hour."""
        with self._lock:
            buckets = self._audio.get(name)
            if not buckets:
                return 0.0
            self._expire(buckets, self._clock())
            return sum(seconds for _, seconds in buckets)

    def over_budget(self, name: str, limits: KeyLimits | None) -> bool:
        """Whether `name` has spent its audio of the last hour (a live stream then ends)."""
        if limits is None or limits.audio_seconds_per_hour <= 0:
            return False
        return self.spent(name) >= limits.audio_seconds_per_hour

    def _wait_for_audio(self, name: str, budget: float) -> int | None:
        """Seconds until `name`'s hour has room again, or None when it has room now (lock held)."""
        buckets = self._audio.get(name)
        if not buckets:
            return None
        now = self._clock()
        self._expire(buckets, now)
        spent = sum(seconds for _, seconds in buckets)
        if spent < budget:
            return None
        for start, seconds in buckets:
            spent -= seconds
            if spent < budget:
                # That bucket leaves the hour once its last second has.
                return max(1, math.ceil(start + _BUCKET_SECONDS + HOUR - now))
        return int(HOUR)  # not reached: with every bucket gone nothing is spent

    @staticmethod
    def _expire(buckets: deque[list[float]], now: float) -> None:
        while buckets and buckets[0][0] + _BUCKET_SECONDS <= now - HOUR:
            buckets.popleft()
