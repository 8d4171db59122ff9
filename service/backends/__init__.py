"""Engine registry: maps ASR_BACKEND names to modules, importing only the one chosen.

Heavy engines (PyTorch, FunASR) are optional extras; choosing one that is not installed
fails at startup with one line naming the extra to install.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from service.embedded_model import embedded_label, is_embedded
from service.errors import MissingExtraError, ModelLoadError
from service.hardware import resolve_device

if TYPE_CHECKING:
    from service.backends.base import Backend
    from service.config import Settings
    from service.hardware import CudaProbe


@dataclass(frozen=True)
class EngineEntry:
    module: str
    factory: str
    extra: str | None  # the pip extra that installs its dependencies; None: always installed
    cuda_probe: CudaProbe  # the library that says whether this engine would run on a GPU


ENGINES: dict[str, EngineEntry] = {
    "faster-whisper": EngineEntry("service.backends.faster_whisper", "FasterWhisperBackend", None, "ctranslate2"),
    "openai-whisper": EngineEntry("service.backends.openai_whisper", "OpenAIWhisperBackend", "openai-whisper", "torch"),
    "sensevoice": EngineEntry("service.backends.sensevoice", "SenseVoiceBackend", "sensevoice", "torch"),
}


def on_gpu(settings: Settings) -> bool:
    """Whether the configured engine will run on CUDA (ASR_DEVICE, or `auto` with a GPU its library sees)."""
    entry = ENGINES.get(settings.model.backend)
    if entry is None:  # an unknown engine fails to load, with its own message
        return settings.model.device == "cuda"
    try:
        return resolve_device(settings.model.device, entry.cuda_probe) == "cuda"
    except ImportError:  # the engine's extra is missing: its load will say so
        return False


def model_label(settings: Settings) -> str:
    """Return the name the model is reported under (metrics, /v1/models, responses)."""
    if settings.model.model_label:
        return settings.model.model_label
    name = settings.model.model
    if is_embedded(name):
        return embedded_label(name)
    path = Path(name)
    if path.exists():
        return path.stem if path.is_file() else path.name
    return name


def load_backend(settings: Settings) -> Backend:
    """Import the configured engine and load its model.

    Raises ModelLoadError, or MissingExtraError when the engine's extra is not installed.
    """
    name = settings.model.backend
    entry = ENGINES.get(name)
    if entry is None:
        raise ModelLoadError(f"unknown backend {name!r}; choose one of: {', '.join(ENGINES)}")
    try:
        module = importlib.import_module(entry.module)
        # The optional engines import their extra's libraries when built (their modules import
        # without them), so a missing one surfaces from the factory.
        backend: Backend = getattr(module, entry.factory)(settings)
    except ModuleNotFoundError as exc:
        if entry.extra is None or (exc.name or "").startswith("service"):
            raise
        raise MissingExtraError(
            f"backend {name!r} needs the optional dependency {exc.name!r}: pip install 'asr-service[{entry.extra}]'"
        ) from exc
    return backend
