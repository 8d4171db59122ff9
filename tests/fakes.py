"""A fake engine for fast tests of the HTTP layer; real-model tests use Whisper tiny.en."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from service.backends.base import Cancelled, Capabilities, Segment, TranscribeOptions, Transcript

if TYPE_CHECKING:
    import threading
    from collections.abc import Callable

    import numpy as np
    import numpy.typing as npt

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
