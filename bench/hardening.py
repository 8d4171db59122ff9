"""What a decompression bomb costs other clients: a normal clip's latency alone, and while six
uploads of three hours of Opus silence (3 MB each) arrive at the same time.

    python -m bench.hardening [--before PATH]

PATH is another checkout of the service (e.g. `git worktree add /tmp/before <commit>`) measured in
the same run, for a before/after comparison on the same machine. Writes bench/results/hardening.{json,md}.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx

from bench import inputs
from bench.common import RESULTS, markdown_table, write_report

if TYPE_CHECKING:
    from collections.abc import Iterator

ROUNDS = 5
BOMBS = 6
ENV = {"ASR_QUALITY_SAMPLE_RATE": "0", "ASR_LOG_LEVEL": "WARNING"}


def silence_bomb(folder: Path) -> Path:
    out = folder / "silence-3h.opus"
    if not out.exists():
        folder.mkdir(parents=True, exist_ok=True)
        source = ["-f", "lavfi", "-i", "anullsrc=r=8000:cl=mono", "-t", "10800"]
        opus = ["-c:a", "libopus", "-b:a", "6k", "-compression_level", "0", "-frame_duration", "60"]
        subprocess.run(["ffmpeg", "-loglevel", "error", *source, *opus, str(out)], check=True)
    return out


@contextlib.contextmanager
def service(checkout: Path, env: dict[str, str] | None = None) -> Iterator[str]:
    """`python -m service serve` from `checkout` on a free port, with ENV and `env`; yields its URL."""
    from bench.run_all import _free_port

    port = _free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "service", "serve"],
        cwd=checkout,
        env={**os.environ, **ENV, **(env or {}), "ASR_PORT": str(port), "PYTHONPATH": str(checkout)},
        start_new_session=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        while not _ready(url):
            if process.poll() is not None:
                raise RuntimeError(f"the service in {checkout} exited during startup")
            time.sleep(0.2)
        yield url
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)  # a decode in progress need not finish
        process.wait(timeout=60)


def _ready(url: str) -> bool:
    with contextlib.suppress(httpx.HTTPError):
        return httpx.get(url + "/readyz", timeout=1).status_code == 200
    return False


async def _round(url: str, clip: bytes, bomb: bytes | None) -> dict[str, float]:
    async with httpx.AsyncClient(base_url=url, timeout=600) as client:

        async def post(name: str, payload: bytes) -> tuple[int, float]:
            started = time.perf_counter()
            r = await client.post("/transcribe", files={"file": (name, payload)})
            return r.status_code, time.perf_counter() - started

        bombs = [post(f"bomb{i}.opus", bomb) for i in range(BOMBS)] if bomb is not None else []
        normal = asyncio.ensure_future(post("clip.mp3", clip))
        refused = await asyncio.gather(*bombs)
        status, seconds = await normal
    assert status == 200, status
    return {
        "clip_seconds": seconds,
        "bomb_seconds": max((s for _, s in refused), default=0.0),
        "bomb_statuses": float(sum(code == 413 for code, _ in refused)),
    }


def measure(checkout: Path, clip: bytes, bomb: bytes) -> dict[str, Any]:
    with service(checkout) as url:
        asyncio.run(_round(url, clip, None))  # warm-up
        alone = [asyncio.run(_round(url, clip, None)) for _ in range(ROUNDS)]
        barrage = [asyncio.run(_round(url, clip, bomb)) for _ in range(ROUNDS)]
    return {
        "clip_alone_s": statistics.median(r["clip_seconds"] for r in alone),
        "clip_with_bombs_s": statistics.median(r["clip_seconds"] for r in barrage),
        "bomb_answer_s": statistics.median(r["bomb_seconds"] for r in barrage),
        "bombs_refused_413": int(statistics.median(r["bomb_statuses"] for r in barrage)),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--before", type=Path, help="another checkout to measure in the same run")
    args = parser.parse_args()
    folder = RESULTS / "tmp"
    clip = inputs.clip(folder).read_bytes()
    bomb = silence_bomb(folder).read_bytes()
    here = Path(__file__).resolve().parent.parent
    runs = [("before", args.before)] if args.before else []
    rows = []
    for name, checkout in [*runs, ("this checkout", here)]:
        row = {"service": name, **measure(checkout, clip, bomb)}
        row["slowdown"] = row["clip_with_bombs_s"] / row["clip_alone_s"]
        rows.append(row)
        print(row, file=sys.stderr, flush=True)
    columns = ["service", "clip_alone_s", "clip_with_bombs_s", "slowdown", "bomb_answer_s", "bombs_refused_413"]
    md = (
        "# A normal clip beside decompression bombs\n"
        f"Whisper base (the default model), a ~13 s MP3 clip; beside it {BOMBS} uploads of 3 h of Opus silence "
        f"({len(bomb) / 2**20:.1f} MB each) at once; median of {ROUNDS} rounds. `slowdown` = clip latency with "
        "the bombs / alone.\n\n" + markdown_table(rows, columns)
    )
    print(write_report("hardening", {"rows": rows}, md).read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
