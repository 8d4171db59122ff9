"""Wyoming speech to text: this service against wyoming-faster-whisper, side by side in one run.

    python -m bench.wyoming [--peer-python /tmp/peer/venv/bin/python] [--model embedded:base]
                            [--quick]

Both servers load the same CTranslate2 model directory (the embedded model, joined by
service.embedded_model) with the same beam (5) and compute type (int8) on the CPU; the peer, from
PyPI (`pip install wyoming-faster-whisper` in a venv of its own: --peer-python), runs one model
with --cpu-threads equal to the cores, ours its default of one single-threaded worker per core.
Clients are the protocol library's own (bench/wyoming_client.py), as Home Assistant is one:
`transcribe` (en), then each utterance as 16 kHz 16-bit mono in 20 ms chunks paced in real time,
and audio-stop. Utterances are espeak-ng speech of 2-8 s (commands, sentences, pairs of them), with
espeak-ng's own 0.43 s of trailing silence trimmed to 50 ms (trim_tail), then
followed by the 0.7 s of silence Home Assistant's VAD waits for before it stops (its default), and
again with none (the stop right at the end of the speech, where no early decode can help). At 1
and 4 concurrent clients (staggered), measured by the clients: latency from audio-stop to the
`transcript` event (p50, p95, mean), and WER over all utterances (jiwer, basic normalisation).
Writes bench/results/wyoming.{json,md}.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import signal
import socket
import statistics
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np

from bench import inputs
from bench.common import RESULTS, markdown_table, write_report
from bench.wyoming_client import Pcm, transcribe
from service.config import ModelSettings
from service.embedded_model import embedded_model_path
from service.quality.scoring import score

UTTERANCES = [
    "Turn on the kitchen lights.",
    "What is the weather like tomorrow?",
    "Set a timer for ten minutes.",
    "Close the garage door and lock the front door.",
    *inputs.SENTENCES,
    inputs.STORY[0],
    inputs.STORY[3],
    inputs.STORY[8],
    f"{inputs.SENTENCES[0]} {inputs.SENTENCES[1]}",
    f"{inputs.STORY[4]} Then turn off the lights.",
]
PEER = "wyoming-faster-whisper"
HA_SILENCE_SECONDS = 0.7  # Home Assistant's default end-of-command silence (VAD sensitivity "default")
BEAM = 5
COMPUTE_TYPE = "int8"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def speech(folder: Path) -> list[tuple[str, Pcm]]:
    """Each utterance as 16 kHz 16-bit mono (espeak-ng at 140 wpm, resampled by sox), its trailing
    silence trimmed (trim_tail)."""
    folder.mkdir(parents=True, exist_ok=True)
    out = []
    for i, text in enumerate(UTTERANCES):
        wav, raw = folder / f"u{i}.wav", folder / f"u{i}.raw"
        subprocess.run(["espeak-ng", "-v", "en-us", "-s", "140", "-w", str(wav), text], check=True)
        subprocess.run(["sox", str(wav), "-r", "16000", "-c", "1", "-b", "16", "-t", "raw", str(raw)], check=True)
        out.append((text, Pcm(trim_tail(raw.read_bytes()), 16_000)))
    return out


def trim_tail(pcm16: bytes, keep_seconds: float = 0.05) -> bytes:
    """16-bit mono PCM without espeak-ng's trailing silence (it ends every file with ~0.43 s),
    `keep_seconds` after the last sample above -40 dBFS: so that a trailing silence of 0 s means
    the stop right at the speech's end, and 0.7 s means Home Assistant's wait and no more."""
    samples = np.frombuffer(pcm16, np.int16)
    loud = np.nonzero(np.abs(samples) > 328)[0]
    end = min(samples.size, int(loud[-1]) + 1 + int(keep_seconds * 16_000)) if loud.size else samples.size
    return samples[:end].tobytes()


def wait_port(port: int, process: subprocess.Popen[bytes], seconds: float = 300) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError("a server exited during startup")
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=1):
            return
        time.sleep(0.2)
    raise RuntimeError(f"nothing listens on {port}")


@contextlib.contextmanager
def running(argv: list[str], env: dict[str, str], log: Path) -> Iterator[subprocess.Popen[bytes]]:
    with open(log, "wb") as out:
        process = subprocess.Popen(argv, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        yield process
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)


@contextlib.contextmanager
def ours(model: str, tmp: Path, extra: dict[str, str]) -> Iterator[int]:
    tmp.mkdir(parents=True, exist_ok=True)
    http, port = free_port(), free_port()
    env = {
        **os.environ,
        "ASR_MODEL": model,
        "ASR_COMPUTE_TYPE": COMPUTE_TYPE,
        "ASR_BEAM_SIZE": str(BEAM),
        "ASR_QUALITY_SAMPLE_RATE": "0",
        "ASR_QUALITY_DIR": str(tmp / "quality"),
        "ASR_JOBS_DIR": str(tmp / "jobs"),
        "ASR_HOST": "127.0.0.1",
        "ASR_PORT": str(http),
        "ASR_WYOMING_PORT": str(port),
        **extra,
    }
    with running([sys.executable, "-m", "service", "serve"], env, tmp / "ours.log") as process:
        deadline = time.monotonic() + 300
        while True:
            if process.poll() is not None:
                raise RuntimeError("the service exited during startup")
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"http://127.0.0.1:{http}/readyz", timeout=1).status_code == 200:
                    break
            if time.monotonic() > deadline:
                raise RuntimeError("the service was not ready in time")
            time.sleep(0.2)
        yield port


@contextlib.contextmanager
def peer(python: str, model_dir: Path, tmp: Path) -> Iterator[int]:
    port = free_port()
    argv = [
        python, "-m", "wyoming_faster_whisper", "--uri", f"tcp://127.0.0.1:{port}", "--model", str(model_dir),
        "--data-dir", str(tmp / "peer-data"), "--language", "en", "--beam-size", str(BEAM),
        "--compute-type", COMPUTE_TYPE, "--cpu-threads", str(os.cpu_count() or 1),
    ]  # fmt: skip
    with running(argv, {**os.environ, "HF_HUB_OFFLINE": "1"}, tmp / "peer.log") as process:
        wait_port(port, process)
        yield port


async def level(port: int, audio: list[tuple[str, Pcm]], clients: int, silence: float) -> dict[str, Any]:
    """Every client sends its share of the utterances one after another, the clients staggered."""
    # Each client sends half of them (rotated: together they send each one twice, for WER).
    half = len(audio) // 2 if clients > 1 else len(audio)
    share = [(audio[i * half // 2 :] + audio[: i * half // 2])[:half] for i in range(clients)]
    results: list[tuple[str, str, float]] = []

    async def client(index: int, items: list[tuple[str, Pcm]]) -> None:
        await asyncio.sleep(index * 0.6)
        for text, pcm in items:
            answer = await transcribe("127.0.0.1", port, pcm.with_silence(silence))
            if answer.text is None or answer.latency is None:
                raise RuntimeError(f"no transcript: {answer.error}")
            results.append((text, answer.text, answer.latency))

    await asyncio.gather(*(client(i, items) for i, items in enumerate(share)))
    latencies = sorted(r[2] for r in results)
    errors = words = 0
    for reference, hypothesis, _ in results:
        s = score(reference, hypothesis, "en", "basic")
        errors += s.errors
        words += s.reference_units
    return {
        "utterances": len(results),
        "latency_p50_s": round(statistics.median(latencies), 3),
        "latency_p95_s": round(latencies[min(len(latencies) - 1, int(0.95 * len(latencies)))], 3),
        "latency_mean_s": round(statistics.fmean(latencies), 3),
        "wer": round(errors / words, 4),
    }


def find(rows: list[dict[str, Any]], server: str, clients: int, silence: float) -> dict[str, Any]:
    return next(
        r for r in rows if r["server"] == server and r["clients"] == clients and r["trailing_silence_s"] == silence
    )


async def warm(port: int, audio: list[tuple[str, Pcm]]) -> None:
    for _, pcm in audio[:2]:
        await transcribe("127.0.0.1", port, pcm, realtime=False)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--peer-python", default="/tmp/peer/venv/bin/python")
    parser.add_argument("--model", default="embedded:base")
    parser.add_argument("--quick", action="store_true", help="half the utterances")
    parser.add_argument("--env", action="append", default=[], help="KEY=VALUE for our server (experiments)")
    parser.add_argument(
        "--tuned",
        action="append",
        default=None,
        help="KEY=VALUE for a second server of ours beside the default one (default: ASR_CPU_THREADS=<cores>); "
        "--tuned '' for none",
    )
    parser.add_argument("--levels", default="1,4", help="concurrent clients, comma-separated")
    parser.add_argument("--silences", default=f"{HA_SILENCE_SECONDS},0", help="trailing silences, comma-separated")
    args = parser.parse_args()
    args.tuned = [
        t for t in (args.tuned if args.tuned is not None else [f"ASR_CPU_THREADS={os.cpu_count() or 1}"]) if t
    ]
    extra = dict(item.split("=", 1) for item in args.env)
    levels = tuple(int(x) for x in args.levels.split(","))
    silences = tuple(float(x) for x in args.silences.split(","))
    tmp = RESULTS / "tmp" / "wyoming"
    tmp.mkdir(parents=True, exist_ok=True)
    model_dir = embedded_model_path(args.model, ModelSettings().cache_dir)
    audio = speech(tmp / "speech")
    if args.quick:
        audio = audio[::2]
    rows: list[dict[str, Any]] = []
    tuned = dict(item.split("=", 1) for item in args.tuned)
    variants = {"asr-service": extra}
    if tuned:
        variants[f"asr-service {' '.join(args.tuned)}"] = {**extra, **tuned}
    with contextlib.ExitStack() as stack:
        servers = {
            name: stack.enter_context(ours(args.model, tmp / f"ours{i}", env))
            for i, (name, env) in enumerate(variants.items())
        }
        servers[PEER] = stack.enter_context(peer(args.peer_python, model_dir, tmp))
        for port in servers.values():
            asyncio.run(warm(port, audio))
        for step, (silence, clients) in enumerate((s, c) for s in silences for c in levels):
            # One server after the other for each condition, the order rotated over the conditions.
            order = list(servers.items())
            order = order[step % len(order) :] + order[: step % len(order)]
            for name, port in order:
                result = asyncio.run(level(port, audio, clients, silence))
                row = {"server": name, "clients": clients, "trailing_silence_s": silence, **result}
                print(row, flush=True)
                rows.append(row)
    ratios = []
    for name in variants:
        for silence in silences:
            for clients in levels:
                a, b = find(rows, name, clients, silence), find(rows, PEER, clients, silence)
                ratios.append(
                    {
                        "server": name,
                        "clients": clients,
                        "trailing_silence_s": silence,
                        "p50_ratio": round(a["latency_p50_s"] / b["latency_p50_s"], 3),
                        "mean_ratio": round(a["latency_mean_s"] / b["latency_mean_s"], 3),
                        "wer_ours": a["wer"],
                        "wer_peer": b["wer"],
                    }
                )
    peer_version = subprocess.run(
        [args.peer_python, "-c", "import importlib.metadata as m; print(m.version('wyoming-faster-whisper'))"],
        capture_output=True,
        text=True,
    ).stdout.strip()
    data = {
        "model": args.model,
        "model_dir": str(model_dir),
        "beam_size": BEAM,
        "compute_type": COMPUTE_TYPE,
        "peer": f"wyoming-faster-whisper {peer_version}, --cpu-threads {os.cpu_count()}",
        "our_settings": variants,
        "utterances": [{"text": t, "seconds": round(p.seconds, 2)} for t, p in audio],
        "rows": rows,
        "ratios": ratios,
    }
    columns = ["server", "clients", "trailing_silence_s", "utterances", "latency_p50_s", "latency_p95_s",
               "latency_mean_s", "wer"]  # fmt: skip
    seconds = [p.seconds for _, p in audio]
    md = (
        "# Wyoming: asr-service against wyoming-faster-whisper\n\n"
        f"Same model directory ({args.model}), beam {BEAM}, compute type {COMPUTE_TYPE}; the peer is "
        f"{data['peer']}, ours its default workers (one single-threaded worker per core) and, where named, "
        f"with the settings named. {len(audio)} espeak-ng utterances of "
        f"{min(seconds):.1f}-{max(seconds):.1f} s, 16 kHz 16-bit mono in 20 ms chunks in real time; latency is "
        "audio-stop to `transcript`, measured by the client; at 4 clients each client sends half of them, rotated.\n\n"
        + markdown_table(rows, columns)
        + "\nOurs over the peer's (below 1: ours answers sooner):\n\n"
        + markdown_table(
            ratios, ["server", "clients", "trailing_silence_s", "p50_ratio", "mean_ratio", "wer_ours", "wer_peer"]
        )
    )
    print(write_report("wyoming", data, md))


if __name__ == "__main__":
    main()
