"""The engine port: what every backend offers and what it returns.

Backends take 16 kHz mono float32 audio and return a Transcript. They run in worker
threads, so `transcribe` may block; it should check `cancel` between segments so that a
request that timed out frees its worker early.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Literal, Protocol, runtime_checkable

if TYPE_CHECKING:
    import threading
    from collections.abc import Callable, Hashable

    import numpy as np
    import numpy.typing as npt

SAMPLE_RATE = 16_000
MAX_CLIP_SECONDS = 30.0  # the longest clip a batched call takes: one Whisper window
Task = Literal["transcribe", "translate"]


@dataclass(frozen=True)
class Capabilities:
    """What an engine can do; the API answers 422 when a request asks for more."""

    languages: frozenset[str]
    translate: bool
    word_timestamps: bool
    emotion: bool = False
    audio_events: bool = False
    batching: bool = False
    prompt: bool = True
    temperature: bool = True
    vad_filter: bool = True
    # Whether segments carry avg_logprob / no_speech_prob / compression_ratio.
    segment_scores: bool = True
    # Whether live streams get partial hypotheses (re-decoding a growing turn); else whole turns only.
    partials: bool = True
    # Whether segments can carry each text token's log probability (OpenAI's include=logprobs).
    logprobs: bool = False
    # Whether decoding can be steered towards given words and names (OpenAI's keywords).
    keywords: bool = False


@dataclass(frozen=True)
class TranscribeOptions:
    """One request's decoding options; None means the engine's (or service's) default."""

    language: str | None = None
    task: Task = "transcribe"
    word_timestamps: bool = False
    vad_filter: bool = False
    initial_prompt: str | None = None
    temperature: float | None = None
    # Decode 30 s chunks found by VAD as one batch (faster-whisper's BatchedInferencePipeline);
    # the pipeline asks for it on long audio and on CUDA (service.batching).
    batched: bool = False
    # Beam width for this call (None: ASR_BEAM_SIZE).
    beam_size: int | None = None
    # The prompt is context (a stream's recent text), not a client's words: the engine may drop its
    # oldest part, so that such prompts share batched calls (service.backends.whisper_batch).
    prompt_is_context: bool = False
    # A draft (a live partial hypothesis): one greedy-or-given-beam pass without temperature fallback,
    # where an engine that can may shorten its window to the audio plus some silence (cheaper, a
    # little less accurate: the turn's final is decoded in full). Engines that cannot decode as usual.
    draft: bool = False
    # Fill each segment's `logprobs` (faster-whisper: from the word-alignment pass).
    logprobs: bool = False
    # Words and names the audio may hold, to bias decoding towards (faster-whisper's hotwords).
    keywords: tuple[str, ...] = ()


@dataclass
class Word:
    start: float
    end: float
    word: str
    probability: float
    # Who said it, when the request asked for speakers (service.speakers.attribution).
    speaker: str | None = None


@dataclass(frozen=True)
class TokenLogprob:
    """One text token and the natural log of the probability the decoder gave it.

    `token` is the token's text as Whisper wrote it (a word's first token has its leading space);
    `data` its UTF-8 bytes, which join into the segment's text even where a character's bytes span
    two tokens (the token's text then holds U+FFFD)."""

    token: str
    data: bytes
    logprob: float


@dataclass
class Segment:
    id: int
    start: float
    end: float
    text: str
    # Where the decoding window began, in 10 ms mel frames from the start of the audio (Whisper's `seek`).
    seek: int = 0
    words: list[Word] | None = None
    avg_logprob: float | None = None
    no_speech_prob: float | None = None
    compression_ratio: float | None = None
    temperature: float | None = None
    tokens: list[int] = field(default_factory=list)
    # With TranscribeOptions.logprobs: the segment's text tokens, in order (no timestamp tokens).
    logprobs: list[TokenLogprob] | None = None
    # SenseVoice's rich output: one emotion and the sound events heard in the segment, and the
    # segment's own language (SenseVoice tags each stretch; speakers may switch languages).
    emotion: str | None = None
    events: list[str] = field(default_factory=list)
    language: str | None = None
    # Who said it (A, B, ... or a known speaker's name), when the request asked for speakers.
    speaker: str | None = None


@dataclass
class Transcript:
    text: str
    language: str
    language_probability: float
    duration: float
    segments: list[Segment]
    # The engine's own output before clean-up (SenseVoice's tagged text), when it has one.
    raw_text: str | None = None


class Cancelled(Exception):
    """Raised inside a backend when the request's cancel event was set."""


class Backend(Protocol):
    """An engine that turns audio into text. Implementations live beside this module."""

    name: str
    model: str
    device: str
    compute_type: str
    capabilities: Capabilities

    def transcribe(
        self,
        audio: npt.NDArray[np.float32],
        options: TranscribeOptions,
        cancel: threading.Event | None = None,
        on_segment: Callable[[Segment], None] | None = None,
    ) -> Transcript:
        """Transcribe one mono 16 kHz clip; raises Cancelled when `cancel` is set midway. Calls
        `on_segment` with each segment as soon as the engine has it (streaming answers)."""
        ...

    def detect_language(self, audio: npt.NDArray[np.float32]) -> tuple[str, float]:
        """The language spoken in (the first 30 s of) `audio` and the engine's confidence, 0-1."""
        ...

    def close(self) -> None:
        """Release the model's memory."""
        ...


@runtime_checkable
class ClipBatching(Protocol):
    """What an engine offers that can decode many short clips (each at most MAX_CLIP_SECONDS) in
    shared engine calls; the scheduler gathers them (service.scheduler, Batchable). Engines without
    it decode every clip on its own."""

    def batch_key(self, options: TranscribeOptions, seconds: float) -> Hashable | None:
        """What two clips' options (and `seconds` of audio) must share to be decoded in one call;
        None: never batched."""
        ...

    def transcribe_batch(
        self,
        clips: list[npt.NDArray[np.float32]],
        options: list[TranscribeOptions],
        cancels: list[threading.Event],
    ) -> list[Transcript | Exception]:
        """Transcribe each clip with its options (their batch keys are equal) as `transcribe` would;
        returns per clip its Transcript, or Cancelled when its cancel event was set."""
        ...
