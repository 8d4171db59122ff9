"""Engine registry: maps ASR_BACKEND names to modules, importing only the one chosen.

Heavy engines (PyTorch, FunASR) are optional extras; choosing one that is not installed
fails at startup with one line naming the extra to install.
"""

from __future__ import annotations

import importlib
import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from service.embedded_model import embedded_label, is_embedded
from service.errors import MissingExtraError, ModelLoadError

if TYPE_CHECKING:
    from service.backends.base import Backend
    from service.config import Settings


@dataclass(frozen=True)
class EngineEntry:
    module: str
    factory: str
    extra: str | None  # the pip extra that installs its dependencies; None: always installed


ENGINES: dict[str, EngineEntry] = {
    "faster-whisper": EngineEntry("service.backends.faster_whisper", "FasterWhisperBackend", None),
    "openai-whisper": EngineEntry("service.backends.openai_whisper", "OpenAIWhisperBackend", "openai-whisper"),
    "sensevoice": EngineEntry("service.backends.sensevoice", "SenseVoiceBackend", "sensevoice"),
}


def uses_gpu(settings: Settings) -> bool:
    """Whether inference will run on CUDA (ASR_DEVICE, or `auto` with a GPU present)."""
    if settings.model.device != "auto":
        return settings.model.device == "cuda"
    import ctranslate2  # always installed (faster-whisper); asking it is cheap, unlike importing torch

    return bool(ctranslate2.get_cuda_device_count() > 0)


def worker_count(settings: Settings) -> int:
    """Inference workers per process: ASR_WORKERS, or by default one single-threaded worker per
    CPU core (shared among processes) on CPU and one on a GPU.

    On CPU, measured on 2 cores with Whisper base int8 (docs/performance.md): two 1-thread
    workers match one 2-thread worker's latency for a single request and give 1.7x its
    throughput under load; each extra worker shares the weights (+20-30 MB).
    """
    if settings.scheduler.workers:
        return settings.scheduler.workers
    if uses_gpu(settings):
        return 1
    return max(1, (os.cpu_count() or 1) // settings.server.processes)


def decode_workers(settings: Settings) -> int:
    """Uploads decoded at once per process: ASR_DECODE_WORKERS, or one per CPU core among the processes."""
    if settings.scheduler.decode_workers:
        return settings.scheduler.decode_workers
    return max(1, (os.cpu_count() or 1) // settings.server.processes)


def cpu_threads(settings: Settings) -> int:
    """CPU threads per inference worker: ASR_CPU_THREADS, or the host's cores shared among the
    workers of every process, so that they don't fight over cores."""
    if settings.model.cpu_threads:
        return settings.model.cpu_threads
    workers = worker_count(settings) * settings.server.processes
    return max(1, (os.cpu_count() or 1) // workers)


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
