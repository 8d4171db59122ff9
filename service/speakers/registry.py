"""Speaker embedders by name (ASR_DIARIZATION_EMBEDDER), imported only when one is loaded.

Whether an embedder's libraries are installed is asked without importing them (importlib's
find_spec), so every request can be told at once, with the extra to install, when they are not.
"""

from __future__ import annotations

import importlib
import importlib.util
from dataclasses import dataclass
from typing import TYPE_CHECKING

from service.errors import MissingExtraError, ModelLoadError
from service.hardware import resolve_device

if TYPE_CHECKING:
    from service.config import Settings
    from service.speakers.base import Diarizer, Embedder


@dataclass(frozen=True)
class EmbedderEntry:
    module: str
    factory: str
    needs: tuple[str, ...]  # the modules it imports when built
    install: str  # what a user installs to have them


_DIARIZATION = "pip install 'asr-service[diarization]'"
EMBEDDERS: dict[str, EmbedderEntry] = {
    "resemblyzer": EmbedderEntry(
        "service.speakers.resemblyzer_embedder",
        "ResemblyzerEmbedder",
        ("resemblyzer", "webrtcvad", "torch", "sklearn", "scipy"),
        _DIARIZATION,
    ),
    "pyannote": EmbedderEntry(
        "service.speakers.pyannote_embedder",
        "PyannoteEmbedder",
        ("pyannote.audio", "torch", "sklearn", "scipy"),
        f"{_DIARIZATION} 'pyannote.audio>=3.1'",
    ),
}


def missing(settings: Settings) -> str | None:
    """Why speakers cannot be found with this install (the libraries to install), or None."""
    entry = EMBEDDERS[settings.diarization.embedder]
    absent = [name for name in entry.needs if not _installed(name)]
    if not absent:
        return None
    return (
        f"speaker diarization needs the optional extra `diarization` ({', '.join(absent)} not installed): "
        f"{entry.install}"
    )


def load_diarizer(settings: Settings) -> Diarizer:
    """Build the configured embedder and the diarizer over it (blocking: loads a model).

    Raises MissingExtraError when its libraries are absent, ModelLoadError when its model is.
    """
    from service.hardware import cpu_threads
    from service.speakers.diarizer import EmbeddingDiarizer

    config = settings.diarization
    reason = missing(settings)
    if reason is not None:
        raise MissingExtraError(reason)
    entry = EMBEDDERS[config.embedder]
    device = resolve_device(config.device, "torch")
    threads = cpu_threads(settings, on_gpu=False)
    module = importlib.import_module(entry.module)
    try:
        embedder: Embedder = getattr(module, entry.factory)(device=device, threads=threads, model=config.model)
    except (OSError, RuntimeError, ValueError) as exc:
        raise ModelLoadError(f"cannot load speaker embedder {config.embedder!r}: {exc}") from exc
    return EmbeddingDiarizer(embedder, config.similarity, config.match_threshold, config.max_speakers)


def _installed(name: str) -> bool:
    try:
        return importlib.util.find_spec(name) is not None
    except (ImportError, ValueError):  # a parent package that is missing, or half-installed
        return False
