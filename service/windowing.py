"""Transcribe long audio window by window, so memory stays bounded whatever the length.

Engines compute features for the whole clip they are given (faster-whisper's STFT alone
takes ~600 MB for an hour), so audio longer than one window is cut at the quietest
100 ms near each window's end, and each window is transcribed with the language found in
the first and, where the engine takes one, the previous window's last words as prompt.

Whatever the length, this is where audio meets the engine: each window (or the whole clip) is
handed over without its trailing near-silence (service.trailing_silence), and every segment that
comes back is screened by the caller's `screen` (the hallucination guard) before it is kept,
passed on to a streaming caller, or used as the next window's prompt. Short clips of several
requests that the scheduler gathers into one engine call (`transcribe_clips`) are treated as
each would be alone.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

import numpy as np

from service import trailing_silence
from service.backends.base import (
    MAX_CLIP_SECONDS,
    Backend,
    Cancelled,
    ClipBatching,
    Segment,
    TranscribeOptions,
    Transcript,
)
from service.languages import join_texts

if TYPE_CHECKING:
    import threading
    from collections.abc import Iterator

    from service.audio import DecodedAudio

# Judges each segment as it arrives, given the end (seconds from the audio's start) of the audio the
# engine was given for it: the segment to keep, or None (service.quality.hallucination.Guard.screen).
Screen = Callable[[Segment, float], Segment | None]
_FRAME = 1600  # 100 ms at 16 kHz
_SEARCH_SECONDS = 10.0  # how far back from a window's end to look for a quiet cut
_PROMPT_CHARS = 200


def plan_windows(audio: DecodedAudio, window_seconds: float) -> Iterator[tuple[int, int]]:
    """Yield (start, stop) sample ranges of at most `window_seconds`, cut at quiet points."""
    rate = audio.sample_rate
    window = int(window_seconds * rate)
    search = min(int(_SEARCH_SECONDS * rate), window // 2)
    start = 0
    while start < audio.num_samples:
        stop = start + window
        if stop >= audio.num_samples:
            yield start, audio.num_samples
            return
        region = audio.read(stop - search, stop)
        frames = region[: len(region) // _FRAME * _FRAME].reshape(-1, _FRAME)
        quietest = int(np.argmin(np.sqrt(np.mean(frames.astype(np.float64) ** 2, axis=1))))
        cut = stop - search + quietest * _FRAME + _FRAME // 2
        yield start, cut
        start = cut


def transcribe_windowed(
    backend: Backend,
    audio: DecodedAudio,
    options: TranscribeOptions,
    window_seconds: float,
    cancel: threading.Event | None = None,
    on_segment: Callable[[Segment], None] | None = None,
    screen: Screen | None = None,
) -> Transcript:
    """Transcribe `audio`, in windows when it is longer than `window_seconds`; `on_segment` is
    called with each segment (times from the start of the audio) as soon as it is known.

    Each window is handed to the engine without its trailing near-silence (service.trailing_silence).
    `screen` sees every segment first, with the end of the audio the engine was given for it, and
    returns the segment to keep (possibly clamped) or None to drop it: what it drops is neither
    passed on nor answered, nor used as the next window's prompt.

    Raises Cancelled when `cancel` is set between windows (or inside the engine).
    """
    single = audio.duration <= window_seconds
    windows = [(0, audio.num_samples)] if single else plan_windows(audio, window_seconds)
    segments: list[Segment] = []
    texts: list[str] = []
    first: Transcript | None = None
    window_options = options
    for start, stop in windows:
        if cancel is not None and cancel.is_set():
            raise Cancelled()
        offset = start / audio.sample_rate
        clip = trailing_silence.trim(audio.read(start, stop))
        heard_end = offset + len(clip) / audio.sample_rate
        take = _WindowSegments(segments, offset, heard_end, screen, on_segment)
        part = backend.transcribe(clip, window_options, cancel, take)
        for seg in part.segments[take.seen :]:  # an engine that did not pass every segment on
            take(seg)
        if first is None:
            first = part
            window_options = replace(options, language=options.language or part.language)
        text = _kept_text(part, take.kept)
        if text:
            texts.append(text)
            # Batched decoding gives one prompt to every 30 s chunk of the next window, where it is
            # the right context for the first chunk only (WER 0.064 -> 0.115 on 8 minutes): not then.
            if backend.capabilities.prompt and options.initial_prompt is None and not options.batched:
                window_options = replace(window_options, initial_prompt=text[-_PROMPT_CHARS:])
    assert first is not None
    if single:  # all the engine said, but for what was dropped
        return replace(first, text=texts[0] if texts else "", duration=audio.duration, segments=segments)
    return Transcript(
        text=join_texts(texts, first.language),
        language=first.language,
        language_probability=first.language_probability,
        duration=audio.duration,
        segments=segments,
    )


def one_window(audio: DecodedAudio, window_seconds: float) -> bool:
    """Whether `audio` is decoded in one engine window, so that it may share a batched call."""
    return audio.duration <= min(window_seconds, MAX_CLIP_SECONDS)


@dataclass
class Clip:
    """One request's short audio in a batched call, with what transcribe_windowed would take for it."""

    audio: DecodedAudio
    options: TranscribeOptions
    on_segment: Callable[[Segment], None] | None = None
    screen: Screen | None = None


def transcribe_clips(
    backend: ClipBatching, clips: list[Clip], cancels: list[threading.Event]
) -> list[Transcript | Exception]:
    """Transcribe clips that each fit one window (`one_window`) in shared engine calls; each is
    trimmed, screened and passed on as transcribe_windowed does alone. Returns per clip its
    Transcript or the exception it met (Cancelled when its cancel event was set)."""
    samples = [trailing_silence.trim(clip.audio.read()) for clip in clips]
    parts = backend.transcribe_batch(samples, [clip.options for clip in clips], cancels)
    out: list[Transcript | Exception] = []
    for clip, heard, part in zip(clips, samples, parts, strict=True):
        if isinstance(part, Exception):
            out.append(part)
            continue
        segments: list[Segment] = []
        take = _WindowSegments(segments, 0.0, len(heard) / clip.audio.sample_rate, clip.screen, clip.on_segment)
        for seg in part.segments:
            take(seg)
        out.append(replace(part, text=_kept_text(part, take.kept), duration=clip.audio.duration, segments=segments))
    return out


def _kept_text(part: Transcript, kept: list[Segment]) -> str:
    """A window's text without the segments the screen dropped (all the engine said when none was)."""
    return part.text if len(kept) == len(part.segments) else join_texts([s.text for s in kept], part.language)


class _WindowSegments:
    """One window's segments as the engine passes them on: shifted to the audio's timeline, screened,
    added to the transcript's `segments` and passed on when kept."""

    def __init__(
        self,
        segments: list[Segment],
        offset: float,
        heard_end: float,
        screen: Screen | None,
        on_segment: Callable[[Segment], None] | None,
    ) -> None:
        self._segments = segments
        self._offset = offset
        self._heard_end = heard_end
        self._screen = screen
        self._on_segment = on_segment
        self.seen = 0
        self.kept: list[Segment] = []

    def __call__(self, seg: Segment) -> None:
        self.seen += 1
        shifted = shift_segment(seg, len(self._segments), self._offset)
        fitted = shifted if self._screen is None else self._screen(shifted, self._heard_end)
        if fitted is None:
            return
        self._segments.append(fitted)
        self.kept.append(fitted)
        if self._on_segment is not None:
            self._on_segment(fitted)


def shift_segment(seg: Segment, new_id: int, offset: float) -> Segment:
    """`seg` from a window that began `offset` seconds into the audio, with times from the audio's start."""
    words = (
        [replace(w, start=w.start + offset, end=w.end + offset) for w in seg.words] if seg.words is not None else None
    )
    frames = round(offset * 100)  # seek counts 10 ms mel frames
    return replace(seg, id=new_id, start=seg.start + offset, end=seg.end + offset, words=words, seek=seg.seek + frames)
