"""What one trip through the pipeline produced: the result to render, the audio, the flags.

Its own module so that the quality sampler (which keeps outcomes) and the pipeline (which makes
them) both depend on it and not on each other.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from collections.abc import Callable

    from service.audio import DecodedAudio
    from service.formats import Result
    from service.speakers.base import Diarization


@dataclass
class Outcome:
    """A finished transcription. The audio stays open until the sampler has looked at it."""

    result: Result
    audio: DecodedAudio
    flags: list[str]  # the hallucination guard's findings (service.quality.hallucination)
    # Who spoke, when the request asked (its speakers' voice prints link a job's windows).
    diarization: Diarization | None = None
    # Work run with observe=False: what counting it would record (Pipeline.observe), else None.
    unobserved: Callable[[], None] | None = None
