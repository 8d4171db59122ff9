"""Two real service processes (Whisper tiny.en) on one PostgreSQL database and one shared data
directory, as two Kubernetes replicas behind a Service: a sample kept by one is reviewed
through the other, the quality job running in both scores each sample once, and a job submitted
to one is finished by the other after the first is gone."""

from __future__ import annotations

import os
import signal
import subprocess
from typing import TYPE_CHECKING, Any

import httpx
import jiwer
import pytest

from service.quality.scoring import basic_normalize
from tests.conftest import SENTENCES, Server, serve, wait_until
from tests.test_hardening_server import metric

if TYPE_CHECKING:
    from pathlib import Path

    from tests.postgres import PostgresServer

pytestmark = pytest.mark.slow
ADMIN = {"Authorization": "Bearer adm1n"}
LAST_RUN = "asr_quality_job_last_success_timestamp_seconds"  # set as each scoring run that held the lock ends


def _env(url: str, shared: Path) -> dict[str, str]:
    return {
        "ASR_DATABASE_URL": url,
        # The shared volume: uploads and sample audio are read by whichever replica needs them.
        "ASR_QUALITY_DIR": str(shared / "quality"),
        "ASR_JOBS_DIR": str(shared / "jobs"),
        "ASR_QUALITY_SAMPLE_RATE": "1",
        "ASR_QUALITY_NORMALIZER": "basic",
        # Both replicas run the scoring job every half second: they contend on every run.
        "ASR_QUALITY_INTERVAL_SECONDS": "0.5",
        "ASR_ADMIN_TOKEN": "adm1n",
        "ASR_JOBS_WINDOW_SECONDS": "30",
        "ASR_JOBS_CONCURRENCY": "1",
        "ASR_SHUTDOWN_GRACE_SECONDS": "2",
        # One window per engine call, so that replica a is still on the job when it goes: batched,
        # the job's last windows of tiny.en finish within a's shutdown (b then has nothing left to
        # show). Batched windows' cancellation is tested in tests/test_batcher.py.
        "ASR_BATCH_MAX_SIZE": "1",
    }


def _samples(url: str, status: str | None = None) -> list[dict[str, Any]]:
    params = {"status": status} if status else {}
    items: list[dict[str, Any]] = httpx.get(f"{url}/v1/samples", params=params, headers=ADMIN, timeout=10).json()[
        "items"
    ]
    return items


def _a_whole_scoring_run(server: Server) -> None:
    """Wait until `server` has finished a scoring run that began after this call."""
    before = metric(server, LAST_RUN)
    wait_until(lambda: metric(server, LAST_RUN) > before, 30, "the scoring run under way ends")
    ended = metric(server, LAST_RUN)
    wait_until(lambda: metric(server, LAST_RUN) > ended, 30, "a scoring run begins and ends after it")


def test_two_replicas_share_samples_scoring_and_jobs(
    tmp_path: Path, postgres: PostgresServer, speech_dir: Path
) -> None:
    database = postgres.new_database()
    shared = tmp_path / "shared"
    names = list(SENTENCES)
    for folder in ("a", "b"):
        (tmp_path / folder).mkdir()
    with serve(_env(database, shared), tmp_path / "a") as a, serve(_env(database, shared), tmp_path / "b") as b:
        # Requests land on either replica; each keeps its samples in the one store.
        for i, name in enumerate(names):
            server = a if i % 2 == 0 else b
            path = speech_dir / f"{name}.wav"
            r = httpx.post(server.url + "/transcribe", files={"file": (path.name, path.read_bytes())}, timeout=60)
            assert r.status_code == 200, r.text
        wait_until(lambda: len(_samples(b.url)) == len(names), 30, "samples visible through replica b")
        assert {s["id"] for s in _samples(a.url)} == {s["id"] for s in _samples(b.url)}

        # A reviewer's references go through the replica that did not keep the sample.
        expected_errors = expected_words = 0
        for item in _samples(a.url):
            reference = min(
                SENTENCES.values(), key=lambda s: jiwer.wer(basic_normalize(s), basic_normalize(item["hypothesis"]))
            )
            kept_by_a = httpx.get(f"{a.url}/v1/samples/{item['id']}/audio", headers=ADMIN, timeout=10)
            assert kept_by_a.status_code == 200 and kept_by_a.content[:4] == b"RIFF"
            r = httpx.put(
                f"{b.url}/v1/samples/{item['id']}/reference", json={"text": reference}, headers=ADMIN, timeout=10
            )
            assert r.status_code == 200 and r.json()["status"] == "referenced"
            out = jiwer.process_words(basic_normalize(reference), basic_normalize(item["hypothesis"]))
            expected_errors += out.substitutions + out.deletions + out.insertions
            expected_words += out.hits + out.substitutions + out.deletions

        # Both replicas' scoring jobs run; the advisory lock lets one at a time, and each
        # sample is scored once: the replicas' counters add up to the store's figures.
        wait_until(lambda: len(_samples(a.url, "scored")) == len(names), 30, "every sample scored")
        for server in (a, b):  # each job runs again over the scored store: it must find nothing more
            _a_whole_scoring_run(server)
        scored = sum(metric(s, "asr_quality_scored_samples_total", {"language": "en"}) for s in (a, b))
        errors = sum(metric(s, "asr_quality_word_errors_total", {"language": "en"}) for s in (a, b))
        words = sum(metric(s, "asr_quality_reference_words_total", {"language": "en"}) for s in (a, b))
        assert (scored, errors, words) == (len(names), expected_errors, expected_words)

        # A job submitted to replica a, which goes away mid-way: replica b finishes it.
        minute = tmp_path / "minute.mp3"
        loop = ["-stream_loop", "-1", "-i", str(speech_dir / "weather.wav"), "-t", "90"]
        subprocess.run(["ffmpeg", "-loglevel", "error", *loop, str(minute)], check=True)
        r = httpx.post(a.url + "/v1/jobs", files={"file": ("talk.mp3", minute.read_bytes())}, timeout=30)
        assert r.status_code == 202, r.text
        job_id = r.json()["id"]

        def progressed() -> bool:
            body = httpx.get(f"{b.url}/v1/jobs/{job_id}", timeout=10).json()
            return bool(body["progress"]["audio_seconds_done"] >= 30)

        wait_until(progressed, 60, "a first window, seen through replica b")
        b_audio_before = metric(b, "asr_audio_processed_seconds_total")
        os.killpg(a.process.pid, signal.SIGTERM)  # a rolling update takes replica a away
        a.process.wait(timeout=30)

        def finished() -> bool:
            body = httpx.get(f"{b.url}/v1/jobs/{job_id}", timeout=10).json()
            assert body["status"] in ("queued", "running", "succeeded"), body
            return bool(body["status"] == "succeeded")

        wait_until(finished, 120, "the job finished by replica b")
        result = httpx.get(f"{b.url}/v1/jobs/{job_id}/result", timeout=10).json()
        assert result["duration"] == pytest.approx(90, abs=1)
        assert basic_normalize(result["text"]).count("weather") >= 6  # the sentence, about 7 times in 90 s
        # Replica b decoded what was left (at least the last 30 s window) and nothing twice.
        left = metric(b, "asr_audio_processed_seconds_total") - b_audio_before
        assert 29 <= left <= 61, left
