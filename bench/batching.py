"""Long audio: batched against sequential decoding, in the raw engine and through the service.

    python -m bench.batching [--model embedded:base] [--device auto] [--repeats 3]

The corpus is the benchmark story (16 espeak-ng sentences, ~81 s) said `--repeats` times, so its
reference text is exact and WER is measured, not guessed. Measured in one run, on one machine:
- the raw engine (faster-whisper), sequential and batched (BatchedInferencePipeline, batch 8),
  with one CPU thread (the service's per-worker layout) and with every core;
- the service (`python -m service serve`): the file as one synchronous request, and as a job
  (windows of ASR_JOBS_WINDOW_SECONDS decoded batched on every free worker).
Writes bench/results/batching-<device>.{json,md}. On a GPU host pass --device cuda.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
from faster_whisper import BatchedInferencePipeline, WhisperModel

from bench import inputs
from bench.common import RESULTS, markdown_table, write_report
from bench.hardening import service
from service.audio import load_file
from service.backends.base import SAMPLE_RATE
from service.embedded_model import embedded_model_path, is_embedded
from service.hardware import resolve_compute_type, resolve_device
from service.quality.scoring import score

WER_PARITY = 0.01  # batched may be at most this much worse than sequential


def corpus(folder: Path, repeats: int) -> tuple[Path, str]:
    out = folder / f"story-x{repeats}.wav"
    if not out.exists():
        story = inputs.story(folder)
        listing = folder / f"story-x{repeats}.txt"
        listing.write_text(f"file '{story}'\n" * repeats)
        subprocess.run(
            ["ffmpeg", "-loglevel", "error", "-y", "-f", "concat", "-safe", "0", "-i", str(listing), str(out)],
            check=True,
        )
    return out, " ".join([" ".join(inputs.STORY)] * repeats)


def raw_rows(path: str, device: str, audio_path: Path, reference: str) -> list[dict[str, Any]]:
    audio = load_file(audio_path).read()
    duration = len(audio) / SAMPLE_RATE
    compute = resolve_compute_type("auto", device)
    rows = []
    for threads in (1, os.cpu_count() or 1) if device == "cpu" else (0,):
        model = WhisperModel(path, device=device, compute_type=compute, cpu_threads=threads)
        batched = BatchedInferencePipeline(model)
        for mode, run in (
            ("sequential", lambda m=model: m.transcribe(audio, language="en")),
            ("batched", lambda b=batched: b.transcribe(audio, language="en", batch_size=8)),
        ):
            started = time.perf_counter()
            segments, _ = run()
            text = " ".join(s.text for s in segments)
            seconds = time.perf_counter() - started
            rows.append(
                {
                    "path": f"raw engine, {mode}",
                    "threads": threads or "default",
                    "seconds": seconds,
                    "x_real_time": duration / seconds,
                    "wer": score(reference, text, "en", "basic").rate,
                }
            )
            print(rows[-1], file=sys.stderr, flush=True)
        del batched, model
    return rows


def service_rows(model: str, audio_path: Path, reference: str) -> list[dict[str, Any]]:
    duration = load_file(audio_path).duration
    payload = audio_path.read_bytes()
    here = Path(__file__).resolve().parent.parent
    os.environ["ASR_MODEL"] = model
    rows = []
    with service(here) as url:
        # The job first, on a quiet service: batch work takes every worker only after a minute
        # without requests (a request just before would hold it to workers - 1).
        started = time.perf_counter()
        job = httpx.post(url + "/v1/jobs", files={"file": ("story.wav", payload)}, data={"language": "en"}).json()
        while httpx.get(f"{url}/v1/jobs/{job['id']}").json()["status"] not in ("succeeded", "failed"):
            time.sleep(0.2)
        seconds = time.perf_counter() - started
        text = httpx.get(f"{url}/v1/jobs/{job['id']}/result").json()["text"]
        rows.append({"path": "service, job", "seconds": seconds, "text": text})
        started = time.perf_counter()
        r = httpx.post(
            url + "/transcribe", files={"file": ("story.wav", payload)}, data={"language": "en"}, timeout=900
        )
        seconds = time.perf_counter() - started
        rows.append({"path": "service, one request", "seconds": seconds, "text": r.json()["text"]})
    for row in rows:
        row.update(
            threads="service default",
            x_real_time=duration / row["seconds"],
            wer=score(reference, row.pop("text"), "en", "basic").rate,
        )
        print(row, file=sys.stderr, flush=True)
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="embedded:base", help="ASR_MODEL-style name or directory")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--repeats", type=int, default=6, help="story repetitions (81 s each)")
    args = parser.parse_args()
    device = resolve_device(args.device, "ctranslate2")
    path = (
        str(embedded_model_path(args.model, Path.home() / ".cache/asr-service"))
        if is_embedded(args.model)
        else args.model
    )
    audio_path, reference = corpus(RESULTS / "tmp", args.repeats)
    rows = raw_rows(path, device, audio_path, reference) + service_rows(args.model, audio_path, reference)
    by = {(r["path"], r["threads"]): r for r in rows}
    cores = os.cpu_count() or 1
    one_thread = by.get(("raw engine, sequential", 1)) or rows[0]
    all_cores = by.get(("raw engine, sequential", cores)) or rows[0]
    job = by[("service, job", "service default")]
    sequential_wer = min(r["wer"] for r in rows if "sequential" in r["path"])
    batched_wer = max(r["wer"] for r in rows if r["path"] != "raw engine, sequential")
    ratios = {
        "job_vs_sequential_one_worker": job["x_real_time"] / one_thread["x_real_time"],
        "job_vs_sequential_all_cores": job["x_real_time"] / all_cores["x_real_time"],
        "batched_vs_sequential_equal_threads": [
            by[("raw engine, batched", t)]["x_real_time"] / by[("raw engine, sequential", t)]["x_real_time"]
            for t in sorted(
                {r["threads"] for r in rows if r["path"].startswith("raw") and isinstance(r["threads"], int)}
            )
        ],
        "wer_batched_minus_sequential": batched_wer - sequential_wer,
    }
    duration = load_file(audio_path).duration
    md = (
        f"# Long audio: batched and sequential decoding ({device})\n"
        f"Model {args.model} ({resolve_compute_type('auto', device)}), {duration:.0f} s of espeak-ng speech with an "
        f"exact reference (the benchmark story said {args.repeats} times); raw engine batch size 8; the service "
        "with its defaults (one single-threaded worker per core; jobs in 120 s windows).\n\n"
        + markdown_table(rows, ["path", "threads", "seconds", "x_real_time", "wer"])
        + f"\n- **A job / the raw sequential engine on one worker (the service's per-worker layout, and its long-audio "
        f"path before jobs and batching): {ratios['job_vs_sequential_one_worker']:.2f}x.**\n"
        f"- A job / the raw sequential engine on all {cores} cores: {ratios['job_vs_sequential_all_cores']:.2f}x.\n"
        "- Batched / sequential at equal threads: "
        + ", ".join(f"{x:.2f}x" for x in ratios["batched_vs_sequential_equal_threads"])
        + f".\n- WER, worst batched path minus best sequential: {ratios['wer_batched_minus_sequential']:+.3f} "
        f"(parity bound +{WER_PARITY}).\n"
    )
    out = write_report(f"batching-{device}", {"rows": rows, "ratios": ratios}, md)
    print(out.read_text())
    return 0 if ratios["wer_batched_minus_sequential"] <= WER_PARITY else 1


if __name__ == "__main__":
    sys.exit(main())
