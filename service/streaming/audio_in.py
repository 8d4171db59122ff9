"""Live audio as the Realtime protocol sends it, to 16 kHz mono float32.

Formats: `audio/pcm` (16-bit little-endian mono at 24 kHz, OpenAI's rate, or 16 kHz), and G.711
`audio/pcmu` (mu-law) and `audio/pcma` (A-law) at 8 kHz, as telephony sends. Resampling keeps its
state between frames (PyAV's resampler), so frame boundaries leave no clicks.
"""

from __future__ import annotations

import av
import numpy as np
import numpy.typing as npt

from service.backends.base import SAMPLE_RATE

PCM_RATES = (16_000, 24_000)
G711_RATE = 8_000


class BadAudioError(ValueError):
    """A frame that is not what the session's format says (an odd byte count for PCM16)."""


def _mulaw_table() -> npt.NDArray[np.int16]:
    codes = ~np.arange(256, dtype=np.uint8)
    sign = codes & 0x80
    exponent = (codes >> 4) & 0x07
    mantissa = codes & 0x0F
    magnitude = ((mantissa.astype(np.int32) << 3) + 0x84) << exponent
    values = magnitude - 0x84
    return np.where(sign != 0, -values, values).astype(np.int16)


def _alaw_table() -> npt.NDArray[np.int16]:
    codes = np.arange(256, dtype=np.uint8) ^ 0x55
    sign = codes & 0x80
    exponent = (codes >> 4) & 0x07
    mantissa = (codes & 0x0F).astype(np.int32)
    values = np.where(exponent == 0, (mantissa << 4) + 8, ((mantissa << 4) + 0x108) << (exponent - 1))
    return np.where(sign != 0, values, -values).astype(np.int16)


_G711 = {"audio/pcmu": _mulaw_table(), "audio/pcma": _alaw_table()}


class AudioInput:
    """Turns one session's frames into 16 kHz float32, whatever its format."""

    def __init__(self, kind: str, rate: int) -> None:
        self.kind = kind
        self.rate = G711_RATE if kind in _G711 else rate
        self._resampler = (
            av.AudioResampler(format="s16", layout="mono", rate=SAMPLE_RATE) if self.rate != SAMPLE_RATE else None
        )

    def bytes_per_second(self) -> int:
        return self.rate * (1 if self.kind in _G711 else 2)

    def convert(self, data: bytes) -> npt.NDArray[np.float32]:
        """Samples at 16 kHz for one frame; raises BadAudioError."""
        if not data:
            return np.zeros(0, dtype=np.float32)  # PyAV cannot make a frame of no samples (MemoryError)
        if self.kind in _G711:
            pcm = _G711[self.kind][np.frombuffer(data, dtype=np.uint8)]
        else:
            if len(data) % 2:
                raise BadAudioError(f"PCM16 audio has an even number of bytes; this frame has {len(data)}")
            pcm = np.frombuffer(data, dtype="<i2")
        if self._resampler is None:
            return pcm.astype(np.float32) / 32768.0
        frame = av.AudioFrame.from_ndarray(pcm.reshape(1, -1), format="s16", layout="mono")
        frame.sample_rate = self.rate
        out = [f.to_ndarray().reshape(-1) for f in self._resampler.resample(frame)]
        joined = np.concatenate(out) if out else np.zeros(0, dtype=np.int16)
        return joined.astype(np.float32) / 32768.0
