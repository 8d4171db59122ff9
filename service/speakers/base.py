"""The speaker port: what a diarizer and an embedder offer, and what they return.

A diarizer answers "who spoke when" for 16 kHz mono audio: turns with request-local labels (A, B,
...) and one voice print (an L2-normalised embedding, the mean of its windows') per speaker, so
that callers can name speakers from reference clips, link a job's windows or remember a live
session's voices. Like the ASR backends it runs in a worker thread and checks `cancel` between
steps. Implementations live beside this module and import their heavy libraries only when built.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    import threading

    import numpy as np
    import numpy.typing as npt


class AudioReader(Protocol):
    """What a diarizer reads: 16 kHz samples by range (service.audio.DecodedAudio is one), so
    hours of audio never have to be in memory at once."""

    sample_rate: int
    num_samples: int

    def read(self, start: int = 0, stop: int | None = None) -> npt.NDArray[np.float32]: ...


@dataclass(frozen=True)
class VadParams:
    """How speech is found before it is embedded (OpenAI's `chunking_strategy: server_vad` sets
    these): Silero's threshold, the silence that ends a stretch of speech, the padding kept."""

    threshold: float = 0.5
    min_silence_ms: int = 300
    pad_ms: int = 100


@dataclass(frozen=True)
class KnownSpeaker:
    """A speaker the client named, with its reference clip as sent (any container ffmpeg reads)."""

    name: str
    audio: bytes


@dataclass(frozen=True, eq=False)
class KnownVoice:
    """A speaker the client named, with the voice print of its reference clip."""

    name: str
    embedding: npt.NDArray[np.float32]


@dataclass(frozen=True)
class DiarizeOptions:
    """One request's diarization: bounds on the speaker count (None: estimated freely), the
    voices to name, and how speech is found."""

    min_speakers: int | None = None
    max_speakers: int | None = None
    known: tuple[KnownVoice, ...] = ()
    vad: VadParams = field(default_factory=VadParams)


@dataclass(frozen=True)
class Turn:
    """A stretch of audio one speaker holds, in seconds from the audio's start."""

    start: float
    end: float
    speaker: str


@dataclass(eq=False)
class Speaker:
    """One voice in the audio: its label (A, B, ... or a known speaker's name), its voice print
    and how many seconds it spoke."""

    label: str
    embedding: npt.NDArray[np.float32]
    seconds: float
    known: bool = False  # the label is a name from the request's known speakers


@dataclass
class Diarization:
    """Who spoke when: turns in time order, and the speakers (in order of first appearance)."""

    turns: list[Turn]
    speakers: list[Speaker]

    def relabel(self, names: dict[str, str], known: set[str] | None = None) -> Diarization:
        """The same diarization with labels renamed by `names` (labels not in it are kept);
        `known`: the new labels that are known speakers' names."""
        known = known or set()
        turns = [Turn(t.start, t.end, names.get(t.speaker, t.speaker)) for t in self.turns]
        speakers = []
        for s in self.speakers:
            label = names.get(s.label, s.label)
            speakers.append(Speaker(label, s.embedding, s.seconds, s.known or label in known))
        return Diarization(turns, speakers)


class Embedder(Protocol):
    """A speaker-embedding model: voice prints of short windows and of whole clips."""

    name: str
    dimension: int

    def windows(self, samples: npt.NDArray[np.float32]) -> tuple[npt.NDArray[np.float32], list[tuple[int, int]]]:
        """Embed overlapping windows of one stretch of speech; returns (n, dimension) unit vectors
        and each window's (start, stop) sample range within `samples`."""
        ...

    def embed(self, samples: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
        """One unit vector for a whole clip (a reference, a live turn)."""
        ...

    def close(self) -> None:
        """Release the model's memory."""
        ...


class Diarizer(Protocol):
    """Who spoke when in a recording; implementations: service.speakers.diarizer (VAD, embed,
    cluster) over any Embedder."""

    name: str

    def diarize(
        self, audio: AudioReader, options: DiarizeOptions, cancel: threading.Event | None = None
    ) -> Diarization:
        """Turns and speakers of `audio`; raises service.backends.base.Cancelled when `cancel` is set."""
        ...

    def voice_print(self, samples: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
        """The voice print of a clip of one speaker (a known speaker's reference)."""
        ...

    def close(self) -> None: ...
