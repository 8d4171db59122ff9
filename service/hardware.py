"""Where inference runs and how much of the host each worker takes.

The one place for device, compute-type, worker and thread arithmetic, used by every engine, the
pipeline and the benchmarks. Which library is asked whether a GPU exists depends on the engine:
CTranslate2 for faster-whisper (cheap to ask), torch for the torch-based engines (a torch build
without CUDA sees no GPU even when CTranslate2 would), so each engine names its probe.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Literal

if TYPE_CHECKING:
    from service.config import Settings

CudaProbe = Literal["ctranslate2", "torch"]


def cuda_device_count(probe: CudaProbe) -> int:
    """How many CUDA devices the engine's library sees (0 without a GPU or a CUDA build)."""
    if probe == "torch":
        import torch  # only the torch-based engines name this probe, and they need torch anyway

        return int(torch.cuda.device_count()) if torch.cuda.is_available() else 0
    import ctranslate2  # always installed (faster-whisper)

    return int(ctranslate2.get_cuda_device_count())


def resolve_device(requested: str, probe: CudaProbe) -> str:
    """`cuda` or `cpu` for ASR_DEVICE; `auto` picks CUDA when the engine's library sees a GPU."""
    if requested != "auto":
        return requested
    return "cuda" if cuda_device_count(probe) > 0 else "cpu"


def resolve_compute_type(requested: str, device: str) -> str:
    """ASR_COMPUTE_TYPE, or for `auto` int8 on CPU and float16 on CUDA."""
    if requested != "auto":
        return requested
    # int8 keeps quality and runs ~2-3x faster than float32 on CPU; float16 is the GPU norm.
    return "float16" if device == "cuda" else "int8"


def worker_count(settings: Settings, on_gpu: bool) -> int:
    """Inference workers per process: ASR_WORKERS, or by default one single-threaded worker per
    CPU core (shared among processes) on CPU and one on a GPU.

    On CPU, measured on 2 cores with Whisper base int8 (docs/performance.md): two 1-thread
    workers match one 2-thread worker's latency for a single request and give 1.7x its
    throughput under load; each extra worker shares the weights (+20-30 MB).
    """
    if settings.scheduler.workers:
        return settings.scheduler.workers
    if on_gpu:
        return 1
    return max(1, _cores() // settings.server.processes)


def decode_workers(settings: Settings) -> int:
    """Uploads decoded at once per process: ASR_DECODE_WORKERS, or one per CPU core among the processes."""
    if settings.scheduler.decode_workers:
        return settings.scheduler.decode_workers
    return max(1, _cores() // settings.server.processes)


def cpu_threads(settings: Settings, on_gpu: bool) -> int:
    """CPU threads per inference worker: ASR_CPU_THREADS, or the host's cores shared among the
    workers of every process, so that they don't fight over cores."""
    if settings.model.cpu_threads:
        return settings.model.cpu_threads
    workers = worker_count(settings, on_gpu) * settings.server.processes
    return max(1, _cores() // workers)


def _cores() -> int:
    return os.cpu_count() or 1
