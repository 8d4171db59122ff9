"""Server VAD for live audio: Silero (the model faster-whisper ships), fed as audio arrives.

Silero scores 32 ms windows (512 samples at 16 kHz), each seen with the 64 samples before it,
and carries a recurrent state from window to window. Keeping both between calls, scoring each new
window as it arrives gives the probabilities a whole-file pass would, at a constant cost per
second of audio (no re-reading of the turn). Turns follow the Realtime protocol's server VAD:
speech starts when a window scores at least `threshold`, and stops after `silence_duration_ms`
below `threshold - 0.15`; a turn also ends at `max_turn_seconds` (Whisper hears 30 s at a time).

A turn's audio is more than its speech: the prefix padding before it, and after it some of the
silence that ended it (up to TAIL_SECONDS), as the Realtime API's own commit keeps the audio up
to the moment the VAD fired. Cut exactly where the VAD's probability fell, a soft last consonant
is lost: espeak-ng's "They found the lost ship" came back "... the last cube" with tiny.en, and
"... the last ship" with 200 ms or more of the silence after it.
"""

from __future__ import annotations

import functools
import threading
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from service.backends.base import SAMPLE_RATE

WINDOW = 512  # samples: 32 ms at 16 kHz
CONTEXT = 64
TAIL_SECONDS = 0.5  # of the silence that ended a turn, kept with it


@functools.cache
def _model() -> Any:
    from faster_whisper.vad import get_vad_model

    return get_vad_model()


_model_lock = threading.Lock()


@dataclass(frozen=True)
class VadEvent:
    kind: str  # "start" or "stop"
    sample: int  # where speech starts (padding included) or ends, from the session's first sample
    until: int = 0  # for a stop: where the turn's audio ends (speech, then some of the silence)


class StreamingVad:
    def __init__(
        self,
        threshold: float = 0.5,
        prefix_padding_ms: int = 300,
        silence_duration_ms: int = 500,
        max_turn_seconds: float = 30.0,
    ) -> None:
        self.threshold = threshold
        self.negative = max(0.0, threshold - 0.15)
        self.prefix = prefix_padding_ms * SAMPLE_RATE // 1000
        self.silence = silence_duration_ms * SAMPLE_RATE // 1000
        self.tail = min(self.silence, int(TAIL_SECONDS * SAMPLE_RATE))
        self.max_turn = int(max_turn_seconds * SAMPLE_RATE)
        self._pending = np.zeros(0, dtype=np.float32)
        self._context = np.zeros(CONTEXT, dtype=np.float32)
        self._position = 0  # samples scored so far
        self._state = (np.zeros((1, 1, 128), dtype="float32"), np.zeros((1, 1, 128), dtype="float32"))
        self.speaking = False
        self._turn_start = 0
        self._quiet_since: int | None = None

    def feed(self, samples: npt.NDArray[np.float32]) -> list[VadEvent]:
        """Score the whole windows now available; return the turn starts and stops they show."""
        self._pending = np.concatenate([self._pending, samples])
        whole = len(self._pending) // WINDOW * WINDOW
        if whole == 0:
            return []
        chunk, self._pending = self._pending[:whole], self._pending[whole:]
        probabilities = self._score(chunk)
        events = []
        for i, p in enumerate(probabilities):
            start = self._position + i * WINDOW
            end = start + WINDOW
            if not self.speaking:
                if p >= self.threshold:
                    self.speaking, self._quiet_since = True, None
                    self._turn_start = max(0, start - self.prefix)
                    events.append(VadEvent("start", self._turn_start))
                continue
            if p < self.negative:
                self._quiet_since = start if self._quiet_since is None else self._quiet_since
                if end - self._quiet_since >= self.silence:
                    events.append(self._stop(self._quiet_since, self._quiet_since + self.tail))
            else:
                self._quiet_since = None
            if self.speaking and end - self._turn_start >= self.max_turn:
                events.append(self._stop(end, end))  # mid-speech: the next turn goes on from here
                self.speaking, self._turn_start = True, end  # speech goes on: a new turn from here
                events.append(VadEvent("start", end))
        self._position += whole
        return events

    def _stop(self, sample: int, until: int) -> VadEvent:
        self.speaking, self._quiet_since = False, None
        return VadEvent("stop", sample, until)

    def _score(self, chunk: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
        # Each window is scored with the 64 samples before it, as in a pass over the whole audio.
        framed = np.concatenate([self._context, chunk])
        windows = chunk.reshape(-1, WINDOW)
        contexts = np.stack([framed[i * WINDOW : i * WINDOW + CONTEXT] for i in range(len(windows))])
        self._context = chunk[-CONTEXT:].copy()
        batch = np.concatenate([contexts, windows], axis=1).astype(np.float32)
        model = _model()
        h, c = self._state
        with _model_lock:
            output, h, c = model.session.run(None, {"input": batch, "h": h, "c": c})
        self._state = (h, c)
        return np.asarray(output).reshape(-1)
