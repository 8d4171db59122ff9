"""The diarizer beside the ASR engine: loaded on first use, shared by every request after it.

Most requests never ask for speakers, so the embedder (torch, ~100 MB of memory) is loaded by the
first one that does, in its worker thread, under a lock; its load time counts in that request's
time limit. Whether it can load at all (the `diarization` extra) is known before any work is done.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import TYPE_CHECKING

from service.errors import MissingExtraError, UnsupportedFeatureError
from service.speakers.attribution import attribute
from service.speakers.base import DiarizeOptions, KnownVoice, VadParams
from service.speakers.registry import load_diarizer, missing

if TYPE_CHECKING:
    from collections.abc import Callable

    import numpy as np
    import numpy.typing as npt

    from service.backends.base import Segment
    from service.config import Settings
    from service.metrics import Metrics
    from service.speakers.base import AudioReader, Diarization, Diarizer


class SpeakerEngine:
    def __init__(
        self, settings: Settings, metrics: Metrics, factory: Callable[[Settings], Diarizer] | None = None
    ) -> None:
        self.settings = settings
        self._metrics = metrics
        self._factory = factory or load_diarizer
        self._diarizer: Diarizer | None = None
        self._lock = threading.Lock()
        self._missing: str | None = None if factory is not None else missing(settings)

    def check(self) -> None:
        """Raise UnsupportedFeatureError (422) when this install cannot find speakers, naming the
        extra to install."""
        if self._missing is not None:
            raise UnsupportedFeatureError(self._missing)

    def diarizer(self) -> Diarizer:
        """The diarizer, loaded now if no request has needed it yet (blocking; a worker thread's).
        Raises UnsupportedFeatureError when its extra is missing, ModelLoadError when its model is."""
        self.check()
        with self._lock:
            if self._diarizer is None:
                started = time.perf_counter()
                try:
                    self._diarizer = self._factory(self.settings)
                except MissingExtraError as exc:
                    raise UnsupportedFeatureError(str(exc)) from exc
                logging.getLogger(__name__).info(
                    "speaker diarizer %s ready in %.1f s", self._diarizer.name, time.perf_counter() - started
                )
            return self._diarizer

    def who_spoke(
        self,
        audio: AudioReader,
        segments: list[Segment],
        references: list[tuple[str, npt.NDArray[np.float32]]],
        bounds: tuple[int | None, int | None],
        vad: VadParams | None,
        cancel: threading.Event | None,
    ) -> tuple[list[Segment], Diarization]:
        """Who spoke in `audio` (blocking: a worker thread's), and `segments` given their speakers:
        references are (name, samples) of known speakers, `bounds` the (min, max) speaker count.
        Raises Cancelled when `cancel` is set, and what `diarizer` raises."""
        started = time.perf_counter()
        diarizer = self.diarizer()
        known = tuple(KnownVoice(name, diarizer.voice_print(samples)) for name, samples in references)
        options = DiarizeOptions(bounds[0], bounds[1], known, vad or VadParams())
        diarization = diarizer.diarize(audio, options, cancel)
        attributed = attribute(segments, diarization.turns)
        m = self._metrics
        m.diarization_duration.observe(time.perf_counter() - started)
        m.diarization_audio.inc(audio.num_samples / audio.sample_rate)
        m.diarization_speakers.observe(len(diarization.speakers))
        named = sum(1 for s in diarization.speakers if s.known)
        m.known_speakers.labels("matched").inc(named)
        m.known_speakers.labels("unmatched").inc(len(known) - named)
        return attributed, diarization

    def close(self) -> None:
        with self._lock:
            if self._diarizer is not None:
                self._diarizer.close()
                self._diarizer = None
