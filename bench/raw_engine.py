"""The raw engine: faster-whisper called in-process, as the service would call it.

Model, device, compute type, CPU threads, workers and decode options are resolved by the
service's own functions from the same Settings, so the only difference from the service is
the service. Run as a child process per concurrency level, so that its peak memory is its own:

    python -m bench.raw_engine --clip FILE --concurrency 4 --requests 12
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from faster_whisper import WhisperModel

from service.config import Settings
from service.embedded_model import embedded_model_path, is_embedded
from service.hardware import cpu_threads, resolve_compute_type, resolve_device, worker_count


def engine_options(settings: Settings) -> tuple[dict[str, Any], dict[str, Any]]:
    """(WhisperModel arguments, transcribe arguments) exactly as the service resolves them."""
    ms, decode = settings.model, settings.decode
    device = resolve_device(ms.device, "ctranslate2")
    gpu = device == "cuda"
    workers = worker_count(settings, gpu)
    path = str(embedded_model_path(ms.model, ms.cache_dir)) if is_embedded(ms.model) else ms.model
    model_args = {
        "model_size_or_path": path,
        "device": device,
        "compute_type": resolve_compute_type(ms.compute_type, device),
        "cpu_threads": cpu_threads(settings, gpu),
        "num_workers": workers,
    }
    decode_args = {
        "beam_size": decode.beam_size,
        "best_of": decode.best_of,
        "condition_on_previous_text": decode.condition_on_previous_text,
        "vad_filter": decode.vad_filter_default,
    }
    return model_args, decode_args


def peak_rss_bytes() -> int:
    """This process's peak resident memory (VmHWM)."""
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    return 0


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--clip", required=True)
    parser.add_argument("--concurrency", type=int, required=True)
    parser.add_argument("--requests", type=int, required=True)
    args = parser.parse_args()
    model_args, decode_args = engine_options(Settings())
    model = WhisperModel(**model_args)

    def one(_: int) -> tuple[float, float]:
        started = time.perf_counter()
        segments, info = model.transcribe(args.clip, **decode_args)  # decodes the file, as the service does
        list(segments)
        return time.perf_counter() - started, info.duration

    one(0)  # warm-up, as the service warms up before it is ready
    with ThreadPoolExecutor(args.concurrency) as pool:
        started = time.perf_counter()
        results = list(pool.map(one, range(args.requests)))
        wall = time.perf_counter() - started
    json.dump(
        {
            "latencies": [r[0] for r in results],
            "audio_seconds": [r[1] for r in results],
            "processing_seconds": [r[0] for r in results],
            "wall_seconds": wall,
            "peak_rss_bytes": peak_rss_bytes(),
            "model_args": model_args,
            "decode_args": decode_args,
        },
        sys.stdout,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
