"""Batched against sequential decoding on one long file, as the service runs on CUDA.

    python -m bench.batching [--model large-v3] [--device cuda] [--minutes 10] [--batch-size 16]

The service batches with faster-whisper's BatchedInferencePipeline when the device is CUDA
(ASR_BATCHING=auto): VAD cuts the audio into chunks of up to 30 s, which are decoded
ASR_BATCH_SIZE at a time. This compares that with the sequential WhisperModel.transcribe on the
same audio and writes bench/results/batching-<device>.{json,md}. Meant for a GPU host; on a CPU it
still runs and shows what batching does there.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from faster_whisper import WhisperModel

from bench import inputs
from bench.common import RESULTS, markdown_table, write_report
from service.backends.faster_whisper import ObservedBatchedPipeline, resolve_compute_type, resolve_device
from service.embedded_model import embedded_model_path, is_embedded


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="embedded:base", help="ASR_MODEL-style name or directory")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--minutes", type=int, default=10)
    parser.add_argument("--batch-size", type=int, default=16)
    args = parser.parse_args()
    device = resolve_device(args.device)
    compute = resolve_compute_type("auto", device)
    path = (
        str(embedded_model_path(args.model, Path.home() / ".cache/asr-service"))
        if is_embedded(args.model)
        else args.model
    )
    audio = inputs.long_audio(RESULTS / "tmp", args.minutes)
    model = WhisperModel(path, device=device, compute_type=compute)
    batched = ObservedBatchedPipeline(model)
    sizes: list[int] = []
    batched.observer = sizes.append

    rows = []
    for mode, run in (
        ("sequential", lambda: model.transcribe(str(audio), language="en")),
        ("batched", lambda: batched.transcribe(str(audio), language="en", batch_size=args.batch_size)),
    ):
        started = time.perf_counter()
        segments, info = run()
        count = len(list(segments))
        seconds = time.perf_counter() - started
        rows.append(
            {
                "mode": mode,
                "seconds": seconds,
                "audio_s_per_s": info.duration / seconds,
                "rtf": seconds / info.duration,
                "segments": count,
            }
        )
        print(rows[-1], file=sys.stderr, flush=True)
    speedup = rows[0]["seconds"] / rows[1]["seconds"]
    mean_batch = sum(sizes) / len(sizes) if sizes else 0.0
    md = (
        f"# Batched vs sequential decoding ({device})\n"
        f"Model {path} ({compute}) on {args.minutes} min of espeak-ng speech; batch size {args.batch_size}, "
        f"mean batch actually decoded {mean_batch:.1f} chunks.\n\n"
        + markdown_table(rows, ["mode", "seconds", "audio_s_per_s", "rtf", "segments"])
        + f"\n**Batched throughput / sequential throughput: {speedup:.2f}x.**\n"
    )
    out = write_report(f"batching-{device}", {"rows": rows, "speedup": speedup, "batch_sizes": sizes}, md)
    print(out.read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
