"""A real job (Whisper tiny.en, four minutes of espeak-ng speech) on the real server: progress
moves, the server is killed with SIGKILL mid-way, a new one resumes the job from its finished
windows, and the result matches a synchronous transcription of the same file."""

from __future__ import annotations

import os
import signal
import time
from typing import TYPE_CHECKING, Any

import httpx
import pytest

from service.quality.scoring import score
from tests.conftest import serve
from tests.test_hardening_server import metric

if TYPE_CHECKING:
    from pathlib import Path

pytestmark = pytest.mark.slow
# Job windows of 30 s against the synchronous path's one 300 s window: both batched, so the
# words differ only where a window boundary cuts (measured 0.02-0.04 on this corpus).
JOB_VS_SYNC_WER = 0.10


def _status(url: str, job_id: str) -> dict[str, Any]:
    body: dict[str, Any] = httpx.get(f"{url}/v1/jobs/{job_id}", timeout=10).json()
    return body


def test_a_job_killed_mid_way_resumes_after_a_restart(tmp_path: Path, long_speech: Path) -> None:
    env = {"ASR_JOBS_WINDOW_SECONDS": "30"}
    payload = long_speech.read_bytes()
    with serve(env, tmp_path) as first:
        r = httpx.post(first.url + "/v1/jobs", files={"file": ("talk.mp3", payload)}, data={"language": "en"})
        assert r.status_code == 202
        job_id = r.json()["id"]
        deadline = time.monotonic() + 120
        while (progress := _status(first.url, job_id)["progress"])["audio_seconds_done"] < 30:
            assert time.monotonic() < deadline, "no window finished"
            time.sleep(0.1)
        total = progress["audio_seconds_total"]
        assert total == pytest.approx(240, abs=1) and progress["audio_seconds_done"] < total
        os.killpg(first.process.pid, signal.SIGKILL)
        first.process.wait()
    done_before = progress["audio_seconds_done"]

    with serve(env, tmp_path) as second:
        deadline = time.monotonic() + 180
        while (status := _status(second.url, job_id))["status"] != "succeeded":
            assert status["status"] in ("queued", "running"), status
            assert time.monotonic() < deadline, status
            time.sleep(0.2)
        resumed_audio = metric(second, "asr_audio_processed_seconds_total")
        job_text = httpx.get(f"{second.url}/v1/jobs/{job_id}/result", timeout=10).json()["text"]
        srt = httpx.get(f"{second.url}/v1/jobs/{job_id}/result", params={"response_format": "srt"}).text
        sync = httpx.post(
            second.url + "/transcribe", files={"file": ("talk.mp3", payload)}, data={"language": "en"}, timeout=300
        ).json()
    assert status["progress"]["audio_seconds_done"] == pytest.approx(total, abs=0.5)
    # The restarted service did not redo the windows finished before the kill (those in flight
    # then are redone: at most one per worker).
    assert resumed_audio <= total - done_before + 2 * 30 + 1
    assert resumed_audio >= total - done_before - 1
    agreement = score(sync["text"], job_text, "en", "basic").rate
    print(
        f"killed after {done_before:.0f} of {total:.0f} s; the restart transcribed {resumed_audio:.0f} s; "
        f"job vs sync WER {agreement:.3f}"
    )
    assert agreement <= JOB_VS_SYNC_WER
    # Subtitle-sized segments although windows are decoded batched, in 30 s chunks.
    timings = [line for line in srt.splitlines() if " --> " in line]
    assert len(timings) > 240 / 8
