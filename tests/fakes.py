"""A fake engine for fast tests of the HTTP layer; real-model tests use Whisper tiny.en."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from service.backends.base import Cancelled, Capabilities, Segment, TranscribeOptions, Transcript

if TYPE_CHECKING:
    import threading
    from collections.abc import Callable

    import numpy as np
    import numpy.typing as npt

    from service.backends.base import Backend
    from service.config import Settings


@dataclass
class FakeBackend:
    """Returns `text` as one segment spanning the audio; can sleep, fail or block on an event."""

    text: str = "hello world"
    language: str = "en"
    delay: float = 0.0
    error: Exception | None = None
    gate: threading.Event | None = None  # when set: transcribe waits for it
    capabilities: Capabilities = field(
        default_factory=lambda: Capabilities(
            languages=frozenset({"en", "de", "zh"}), translate=True, word_timestamps=True
        )
    )
    segment_fields: dict[str, object] = field(default_factory=dict)
    name: str = "fake"
    model: str = "fake-model"
    device: str = "cpu"
    compute_type: str = "none"
    calls: list[TranscribeOptions] = field(default_factory=list)
    fail_after_warmup: bool = True
    closed: bool = False

    def transcribe(
        self,
        audio: npt.NDArray[np.float32],
        options: TranscribeOptions,
        cancel: threading.Event | None = None,
        on_segment: Callable[[Segment], None] | None = None,
    ) -> Transcript:
        self.calls.append(options)
        warmup = len(self.calls) == 1
        if self.gate is not None and not warmup:
            self.gate.wait(30)
        deadline = time.monotonic() + (0 if warmup else self.delay)
        while time.monotonic() < deadline:
            if cancel is not None and cancel.is_set():
                raise Cancelled()
            time.sleep(0.005)
        if self.error is not None and not (warmup and self.fail_after_warmup):
            raise self.error
        duration = len(audio) / 16_000
        segment = Segment(id=0, start=0.0, end=duration, text=self.text, **self.segment_fields)
        if on_segment is not None:
            on_segment(segment)
        return Transcript(self.text, options.language or self.language, 0.99, duration, [segment])

    def detect_language(self, audio: npt.NDArray[np.float32]) -> tuple[str, float]:
        return self.language, 0.97

    def close(self) -> None:
        self.closed = True


def factory(backend: FakeBackend) -> Callable[[Settings], FakeBackend]:
    return lambda settings: backend


def fake_beside_real_shadow(backend: FakeBackend) -> Callable[[Settings], Backend]:
    """`backend` for the served models, the real engine for the shadow model's entry (its id is
    service.models.SHADOW_ID), so that shadow transcripts differ from the served ones."""
    from service.backends import load_backend
    from service.models import SHADOW_ID

    def make(settings: Settings) -> Backend:
        return load_backend(settings) if settings.model.model_label == SHADOW_ID else backend

    return make


@dataclass
class SizedBackend(FakeBackend):
    """A fake engine that really takes `megabytes` of memory while loaded (the process's RSS grows
    by it), so that the model memory budget is tested on measured memory."""

    megabytes: int = 0
    _weights: Any = None

    def __post_init__(self) -> None:
        import numpy

        # ones(), not zeros(): the pages must be touched to count in RSS.
        self._weights = numpy.ones(self.megabytes * 2**20, dtype=numpy.uint8) if self.megabytes else None

    def close(self) -> None:
        self._weights = None
        self.closed = True


def by_model(**makers: Callable[[], FakeBackend]) -> Callable[[Settings], FakeBackend]:
    """A backend factory building a fresh fake per load, chosen by the entry's id (model label)."""

    def make(settings: Settings) -> FakeBackend:
        label = settings.model.model_label
        assert label is not None and label in makers, label
        backend = makers[label]()
        backend.model = label  # as a real engine reports its entry's id
        return backend

    return make
