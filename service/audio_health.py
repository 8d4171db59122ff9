"""What the input audio sounds like, measured on the decoded samples of every request.

A codec or gain change upstream (a new phone gateway at 8 kHz, an automatic gain control turned
off) is the commonest cause of a WER drop that nobody changed in the service. These figures let
the dashboards and alerts see it before the sampled references do:

- level: RMS over the speech-bearing part, in dBFS: frames within 40 dB of the loudest one (a
  relative gate, as loudness meters use, so that turning the gain down by 30 dB reads 30 dB less);
- clipping: share of samples at or past full scale (|x| >= 0.999);
- silence: share of 20 ms frames quieter than -50 dBFS;
- SNR estimate: loud frames' energy (90th percentile) over quiet frames' (10th percentile), in dB,
  a crude but cheap proxy: speech with pauses scores high, steady noise scores near 0.

Only the first HEALTH_SECONDS are read, so the cost is bounded whatever the length (measured in
bench/results/overhead.md: tens of microseconds for a short clip, about a millisecond at the cap).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from service.backends.base import SAMPLE_RATE

if TYPE_CHECKING:
    import numpy.typing as npt

HEALTH_SECONDS = 30.0
FRAME = SAMPLE_RATE // 50  # 20 ms
CLIP_LEVEL = 0.999
SILENCE_DBFS = -50.0
GATE_DB = 40.0  # frames this far below the loudest do not count towards the level
_FLOOR = 1e-10  # energy of digital silence, so that log10 stays finite (-100 dBFS)


@dataclass(frozen=True)
class AudioHealth:
    level_dbfs: float
    clipping_ratio: float
    silence_ratio: float
    snr_db: float


def _dbfs(energy: float) -> float:
    """Mean square energy to dBFS, where a full-scale sine is about -3 dBFS."""
    return 10.0 * math.log10(max(energy, _FLOOR))


def measure(samples: npt.NDArray[np.float32]) -> AudioHealth | None:
    """Health of 16 kHz mono samples (the first HEALTH_SECONDS are used); None for under one frame."""
    samples = samples[: int(HEALTH_SECONDS * SAMPLE_RATE)]
    frames = len(samples) // FRAME
    if frames == 0:
        return None
    x = samples[: frames * FRAME].reshape(frames, FRAME).astype(np.float64)
    energy = np.einsum("ij,ij->i", x, x) / FRAME
    silent = energy < 10.0 ** (SILENCE_DBFS / 10.0)
    voiced = energy[energy >= max(float(energy.max()) * 10.0 ** (-GATE_DB / 10.0), _FLOOR)]
    level = _dbfs(float(voiced.mean())) if voiced.size else _dbfs(0.0)
    clipped = int(np.count_nonzero(np.abs(samples) >= CLIP_LEVEL))
    low, high = np.percentile(energy, (10.0, 90.0))
    return AudioHealth(
        level_dbfs=level,
        clipping_ratio=clipped / len(samples),
        silence_ratio=float(silent.mean()),
        snr_db=_dbfs(float(high)) - _dbfs(float(low)),
    )
