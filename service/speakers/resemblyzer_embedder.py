"""Resemblyzer's voice encoder (a 3-layer LSTM d-vector model, 256 dimensions): the embedder that
runs anywhere, since its pretrained weights ship inside the PyPI wheel (resemblyzer/pretrained.pt,
17 MB, Apache-2.0). Needs the `diarization` extra (resemblyzer, torch, webrtcvad-wheels).

Windows are resemblyzer's partial utterances: 1.6 s of audio, WINDOWS_PER_SECOND of them per
second. Each stretch of speech is brought to resemblyzer's training loudness first (-30 dBFS, only
ever raised), as its own preprocessing does.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    import numpy.typing as npt

log = logging.getLogger(__name__)
# 1.6 s windows every 0.8 s: half as many LSTM frames as resemblyzer's default rate (1.3) at the
# same accuracy on our benchmark (bench/speakers.py), so the embedder costs less per audio second.
WINDOWS_PER_SECOND = 1.25
TARGET_DBFS = -30.0
# A stretch's last window is kept when this much of it is speech (the rest zero padding): at 0.5,
# half-silent windows formed voices of their own (count right on 32 of 48 conversations, against 43).
MIN_COVERAGE = 0.75


class ResemblyzerEmbedder:
    name = "resemblyzer"
    dimension = 256

    def __init__(self, device: str = "cpu", threads: int = 0, model: str | None = None) -> None:
        """`model`: another checkpoint of resemblyzer's encoder (default: the one in its wheel)."""
        import torch
        from resemblyzer import VoiceEncoder

        if threads and device == "cpu":
            # torch's pool is the process's: one thread per inference worker, as the engine's.
            torch.set_num_threads(threads)
        self._encoder: Any = VoiceEncoder(device=device, verbose=False, weights_fpath=model)
        self._encoder.eval()
        log.info("speaker embedder resemblyzer loaded on %s", device)

    def windows(self, samples: npt.NDArray[np.float32]) -> tuple[npt.NDArray[np.float32], list[tuple[int, int]]]:
        _, partials, slices = self._encoder.embed_utterance(
            _loudness(samples), return_partials=True, rate=WINDOWS_PER_SECOND, min_coverage=MIN_COVERAGE
        )
        spans = [(int(s.start), min(int(s.stop), len(samples))) for s in slices]
        return np.asarray(partials, dtype=np.float32), spans

    def embed(self, samples: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
        return np.asarray(self._encoder.embed_utterance(_loudness(samples), rate=WINDOWS_PER_SECOND), dtype=np.float32)

    def close(self) -> None:
        self._encoder = None


def _loudness(samples: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
    """`samples` raised to TARGET_DBFS (never lowered; silence stays silence)."""
    rms = float(np.sqrt(np.mean(np.square(samples, dtype=np.float64)))) if len(samples) else 0.0
    if rms <= 1e-6:
        return samples
    gain = 10 ** (TARGET_DBFS / 20) / rms
    return (samples * gain).astype(np.float32) if gain > 1 else samples
