"""Where the speech is: Silero VAD (the model faster-whisper ships) over audio of any length.

The audio is read in chunks of CHUNK_SECONDS, so memory stays bounded for hours of audio; a stretch
of speech that crosses a chunk's edge comes out as two stretches that touch, which costs nothing:
the diarizer embeds windows of each stretch and joins same-speaker neighbours afterwards.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from service.backends.base import Cancelled

if TYPE_CHECKING:
    import threading

    from service.speakers.base import AudioReader, VadParams

CHUNK_SECONDS = 600.0
# Shorter blips (a click, a breath) carry no voice to embed.
MIN_SPEECH_MS = 200


def speech_regions(
    audio: AudioReader, params: VadParams, cancel: threading.Event | None = None
) -> list[tuple[int, int]]:
    """The (start, stop) sample ranges of speech in `audio`, in order; raises Cancelled when
    `cancel` is set between chunks."""
    from faster_whisper.vad import VadOptions, get_speech_timestamps

    options = VadOptions(
        threshold=params.threshold,
        min_silence_duration_ms=params.min_silence_ms,
        speech_pad_ms=params.pad_ms,
        min_speech_duration_ms=MIN_SPEECH_MS,
    )
    chunk = int(CHUNK_SECONDS * audio.sample_rate)
    regions: list[tuple[int, int]] = []
    for offset in range(0, audio.num_samples, chunk):
        if cancel is not None and cancel.is_set():
            raise Cancelled()
        samples = audio.read(offset, offset + chunk)
        for found in get_speech_timestamps(samples, options, sampling_rate=audio.sample_rate):
            start, stop = offset + int(found["start"]), offset + min(int(found["end"]), len(samples))
            if stop > start:
                regions.append((start, stop))
    return regions
