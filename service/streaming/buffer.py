"""A live session's input audio: the 16 kHz samples not yet forgotten, and when they arrived.

Positions are sample indices from the session's first sample, so turns, VAD events and the
buffer agree on where audio is even after its front was trimmed. The samples live in one array
that grows by doubling and is trimmed by moving its start, so appending a 20 ms frame costs the
frame, not the buffer (a concatenation per frame made a two-minute buffer quadratic).
"""

from __future__ import annotations

import time
from collections import deque

import numpy as np
import numpy.typing as npt


class InputBuffer:
    def __init__(self) -> None:
        self._data = np.zeros(0, dtype=np.float32)
        self._head = 0  # index in _data of the sample at position `start`
        self._tail = 0  # index in _data past the last sample
        self.start = 0  # position of the first sample held
        self.received = 0  # position past the last sample: every sample the session received
        self._arrivals: deque[tuple[int, float]] = deque()  # (samples received by then, wall clock)

    @property
    def size(self) -> int:
        """Samples held."""
        return self._tail - self._head

    def append(self, samples: npt.NDArray[np.float32], now: float) -> None:
        """Add samples that arrived at `now` (wall clock, monotonic)."""
        if samples.size == 0:
            return
        if self._tail + samples.size > self._data.size:
            held = self._data[self._head : self._tail]
            grown = np.zeros(max(2 * (held.size + samples.size), 16_000), dtype=np.float32)
            grown[: held.size] = held
            self._data, self._head, self._tail = grown, 0, held.size
        self._data[self._tail : self._tail + samples.size] = samples
        self._tail += samples.size
        self.received += samples.size
        self._arrivals.append((self.received, now))

    def slice(self, start: int, stop: int) -> npt.NDArray[np.float32]:
        """A copy of the samples held between positions `start` and `stop`."""
        first = self._head + min(max(0, start - self.start), self.size)
        last = self._head + min(max(0, stop - self.start), self.size)
        return self._data[first:last].copy()

    def trim(self, before: int) -> None:
        """Forget the audio before position `before`."""
        cut = min(max(0, before - self.start), self.size)
        if cut:
            self._head += cut
            self.start += cut
        while len(self._arrivals) > 1 and self._arrivals[1][0] <= self.start:
            self._arrivals.popleft()

    def arrived(self, sample: int) -> float:
        """When the audio up to position `sample` had arrived (wall clock, monotonic)."""
        for received, at in self._arrivals:
            if received >= sample:
                return at
        return time.monotonic()

    def clear(self) -> None:
        """Forget everything held; the next sample appended starts the buffer."""
        self._data = np.zeros(0, dtype=np.float32)
        self._head = self._tail = 0
        self.start = self.received
        self._arrivals.clear()
