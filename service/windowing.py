"""Transcribe long audio window by window, so memory stays bounded whatever the length.

Engines compute features for the whole clip they are given (faster-whisper's STFT alone
takes ~600 MB for an hour), so audio longer than one window is cut at the quietest
100 ms near each window's end, and each window is transcribed with the language found in
the first and, where the engine takes one, the previous window's last words as prompt.
"""

from __future__ import annotations

from dataclasses import replace
from typing import TYPE_CHECKING

import numpy as np

from service.backends.base import Backend, Cancelled, Segment, TranscribeOptions, Transcript
from service.languages import join_texts

if TYPE_CHECKING:
    import threading
    from collections.abc import Callable, Iterator

    from service.audio import DecodedAudio

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
) -> Transcript:
    """Transcribe `audio`, in windows when it is longer than `window_seconds`; `on_segment` is
    called with each segment (times from the start of the audio) as soon as it is known.

    Raises Cancelled when `cancel` is set between windows (or inside the engine).
    """
    if audio.duration <= window_seconds:
        return backend.transcribe(audio.read(), options, cancel, on_segment)
    segments: list[Segment] = []
    texts: list[str] = []
    first: Transcript | None = None
    window_options = options
    for start, stop in plan_windows(audio, window_seconds):
        if cancel is not None and cancel.is_set():
            raise Cancelled()
        offset = start / audio.sample_rate
        streamed = len(segments)

        def passed_on(seg: Segment, offset: float = offset) -> None:
            nonlocal streamed
            assert on_segment is not None
            on_segment(shift_segment(seg, streamed, offset))
            streamed += 1

        part = backend.transcribe(audio.read(start, stop), window_options, cancel, passed_on if on_segment else None)
        if first is None:
            first = part
            window_options = replace(options, language=options.language or part.language)
        for seg in part.segments:
            segments.append(shift_segment(seg, len(segments), offset))
        if part.text:
            texts.append(part.text)
            # Batched decoding gives one prompt to every 30 s chunk of the next window, where it is
            # the right context for the first chunk only (WER 0.064 -> 0.115 on 8 minutes): not then.
            if backend.capabilities.prompt and options.initial_prompt is None and not options.batched:
                window_options = replace(window_options, initial_prompt=part.text[-_PROMPT_CHARS:])
    assert first is not None
    return Transcript(
        text=join_texts(texts, first.language),
        language=first.language,
        language_probability=first.language_probability,
        duration=audio.duration,
        segments=segments,
    )


def shift_segment(seg: Segment, new_id: int, offset: float) -> Segment:
    """`seg` from a window that began `offset` seconds into the audio, with times from the audio's start."""
    words = (
        [replace(w, start=w.start + offset, end=w.end + offset) for w in seg.words] if seg.words is not None else None
    )
    frames = round(offset * 100)  # seek counts 10 ms mel frames
    return replace(seg, id=new_id, start=seg.start + offset, end=seg.end + offset, words=words, seek=seg.seek + frames)
