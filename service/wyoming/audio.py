"""Wyoming audio chunks to 16 kHz mono float32: the formats accepted, and the conversion.

A Wyoming chunk says its own format (rate, width in bytes, channels). Home Assistant sends
16 kHz 16-bit mono, which passes straight through; other formats within ACCEPTED are converted:
8-, 24- and 32-bit samples scaled, channels averaged, and the rate resampled by PyAV (its
resampler keeps its state between chunks, so chunk boundaries leave no clicks, and filters
before it decimates, as the protocol library's linear `ratecv` does not). Anything else is refused
by `check_format`, which the handler answers with an `error` event.
"""

from __future__ import annotations

from dataclasses import dataclass

import av
import numpy as np
import numpy.typing as npt

from service.backends.base import SAMPLE_RATE

MIN_RATE, MAX_RATE = 8_000, 48_000
WIDTHS = (1, 2, 3, 4)  # bytes per sample: unsigned 8-bit, signed 16-, 24- and 32-bit little-endian
MAX_CHANNELS = 8
ACCEPTED = f"rate {MIN_RATE}-{MAX_RATE} Hz, width 1-4 bytes, 1-{MAX_CHANNELS} channels"


class FormatError(ValueError):
    """An audio format that is not accepted, or a chunk that does not fit its format."""


@dataclass(frozen=True)
class AudioFormat:
    rate: int
    width: int
    channels: int

    @property
    def bytes_per_second(self) -> int:
        return self.rate * self.width * self.channels


def check_format(rate: object, width: object, channels: object) -> AudioFormat:
    """The format a chunk or audio-start declares; raises FormatError when it is not accepted."""
    values = (rate, width, channels)
    if not all(isinstance(v, int) and not isinstance(v, bool) for v in values):
        raise FormatError(f"rate, width and channels must be integers; accepted: {ACCEPTED}")
    assert isinstance(rate, int) and isinstance(width, int) and isinstance(channels, int)
    if not (MIN_RATE <= rate <= MAX_RATE and width in WIDTHS and 1 <= channels <= MAX_CHANNELS):
        raise FormatError(f"audio of rate {rate}, width {width}, channels {channels} is not accepted: {ACCEPTED}")
    return AudioFormat(rate, width, channels)


class Converter:
    """One utterance's audio, chunk by chunk, in one format, to 16 kHz mono float32."""

    def __init__(self, fmt: AudioFormat) -> None:
        self.format = fmt
        self._resampler = (
            av.AudioResampler(format="flt", layout="mono", rate=SAMPLE_RATE) if fmt.rate != SAMPLE_RATE else None
        )

    def convert(self, data: bytes) -> npt.NDArray[np.float32]:
        """The chunk's samples at 16 kHz; raises FormatError when it holds a partial frame."""
        frame = self.format.width * self.format.channels
        if len(data) % frame:
            raise FormatError(f"a chunk holds whole frames of {frame} bytes; this one has {len(data)}")
        if not data:
            return np.zeros(0, dtype=np.float32)  # PyAV cannot make a frame of no samples
        mono = _samples(data, self.format.width).reshape(-1, self.format.channels).mean(axis=1, dtype=np.float32)
        return self._resample(mono)

    def flush(self) -> npt.NDArray[np.float32]:
        """The samples the resampler still holds (a few), at the end of the utterance."""
        if self._resampler is None:
            return np.zeros(0, dtype=np.float32)
        return _joined(self._resampler.resample(None))

    def _resample(self, mono: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
        if self._resampler is None:
            return mono
        frame = av.AudioFrame.from_ndarray(mono.reshape(1, -1), format="flt", layout="mono")
        frame.sample_rate = self.format.rate
        return _joined(self._resampler.resample(frame))


def _samples(data: bytes, width: int) -> npt.NDArray[np.float32]:
    """Interleaved samples of `width` bytes as float32 in [-1, 1)."""
    if width == 1:
        return (np.frombuffer(data, dtype=np.uint8).astype(np.float32) - 128.0) / 128.0
    if width == 2:
        return np.frombuffer(data, dtype="<i2").astype(np.float32) / 32768.0
    if width == 3:
        raw = np.frombuffer(data, dtype=np.uint8).reshape(-1, 3).astype(np.int32)
        value = raw[:, 0] | (raw[:, 1] << 8) | (raw[:, 2] << 16)
        value = np.where(value >= 1 << 23, value - (1 << 24), value)
        return value.astype(np.float32) / float(1 << 23)
    return (np.frombuffer(data, dtype="<i4").astype(np.float64) / float(1 << 31)).astype(np.float32)


def _joined(frames: list[av.AudioFrame]) -> npt.NDArray[np.float32]:
    out = [f.to_ndarray().reshape(-1) for f in frames]
    return np.concatenate(out).astype(np.float32, copy=False) if out else np.zeros(0, dtype=np.float32)
