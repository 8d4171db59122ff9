"""pyannote.audio's speaker-embedding models (e.g. WeSpeaker ResNet34, pyannote/embedding) behind the
Embedder port, for hosts that have their weights: a local checkpoint file or a directory holding
`pytorch_model.bin` (ASR_DIARIZATION_MODEL). Nothing is fetched from a hub.

Windows are 1.5 s every 0.75 s (pyannote's sliding inference); a clip shorter than one window, or
a whole reference, is embedded in one pass. Not exercised by the test suite, since no pyannote
weights install from PyPI: tests/test_speakers.py checks that choosing it without pyannote.audio
or without a model path fails with the message that says which.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from service.backends.base import SAMPLE_RATE
from service.errors import ModelLoadError

if TYPE_CHECKING:
    import numpy.typing as npt

log = logging.getLogger(__name__)
WINDOW_SECONDS = 1.5
STEP_SECONDS = 0.75


class PyannoteEmbedder:
    name = "pyannote"

    def __init__(self, device: str = "cpu", threads: int = 0, model: str | None = None) -> None:
        import torch
        from pyannote.audio import Inference, Model

        checkpoint = _checkpoint(model)
        if threads and device == "cpu":
            torch.set_num_threads(threads)
        loaded = Model.from_pretrained(str(checkpoint))
        if loaded is None:
            raise ModelLoadError(f"pyannote could not load a model from {checkpoint}")
        self._torch = torch
        where = torch.device(device)
        self._sliding: Any = Inference(
            loaded, window="sliding", duration=WINDOW_SECONDS, step=STEP_SECONDS, device=where
        )
        self._whole: Any = Inference(loaded, window="whole", device=where)
        self.dimension = int(loaded.dimension) if hasattr(loaded, "dimension") else 0
        log.info("speaker embedder pyannote loaded from %s on %s", checkpoint, device)

    def windows(self, samples: npt.NDArray[np.float32]) -> tuple[npt.NDArray[np.float32], list[tuple[int, int]]]:
        if len(samples) < WINDOW_SECONDS * SAMPLE_RATE:
            return self.embed(samples)[None, :], [(0, len(samples))]
        features = self._sliding(self._input(samples))
        window = features.sliding_window
        vectors = np.asarray(features.data, dtype=np.float32)
        spans = []
        for i in range(len(vectors)):
            start = window[i].start
            spans.append((int(start * SAMPLE_RATE), min(len(samples), int((start + window.duration) * SAMPLE_RATE))))
        keep = np.all(np.isfinite(vectors), axis=1)
        vectors = vectors[keep]
        return _units(vectors), [s for s, k in zip(spans, keep.tolist(), strict=True) if k]

    def embed(self, samples: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
        vector = np.asarray(self._whole(self._input(samples)), dtype=np.float32).reshape(-1)
        return _units(vector[None, :])[0]

    def close(self) -> None:
        self._sliding = self._whole = None

    def _input(self, samples: npt.NDArray[np.float32]) -> dict[str, Any]:
        return {"waveform": self._torch.from_numpy(np.ascontiguousarray(samples))[None, :], "sample_rate": SAMPLE_RATE}


def _checkpoint(model: str | None) -> Path:
    if not model:
        raise ModelLoadError(
            "ASR_DIARIZATION_EMBEDDER=pyannote needs ASR_DIARIZATION_MODEL: the local checkpoint (or its directory) "
            "of a pyannote.audio embedding model"
        )
    path = Path(model).expanduser()
    if path.is_dir():
        path = path / "pytorch_model.bin"
    if not path.is_file():
        raise ModelLoadError(f"no pyannote embedding checkpoint at {path} (ASR_DIARIZATION_MODEL)")
    return path


def _units(vectors: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
    norms = np.linalg.norm(vectors, axis=1, keepdims=True)
    return (vectors / np.where(norms > 0, norms, 1.0)).astype(np.float32)
