"""Jobs through the app on a fake engine: lifecycle, results, webhooks, cancellation, limits.
The real-model job killed mid-way and resumed is in test_jobs_server.py."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import itertools
import json
import subprocess
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import TYPE_CHECKING, Any

import pytest

from tests.conftest import AppHandle, make_settings, running_app, until
from tests.fakes import FakeBackend, factory

if TYPE_CHECKING:
    from collections.abc import Iterator
    from pathlib import Path

pytestmark = pytest.mark.anyio


@pytest.fixture(scope="module")
def two_minutes(tmp_path_factory: pytest.TempPathFactory, speech_dir: Path) -> bytes:
    """Two minutes of speech (the four sentences, looped) as MP3."""
    out = tmp_path_factory.mktemp("two-minutes") / "speech.mp3"
    loop = ["-stream_loop", "-1", "-i", str(speech_dir / "weather.wav"), "-t", "120"]
    subprocess.run(["ffmpeg", "-loglevel", "error", *loop, str(out)], check=True)
    return out.read_bytes()


class Hook:
    """A local HTTP server that records webhook calls; answers `statuses` in turn, then 200."""

    def __init__(self, statuses: list[int]) -> None:
        self.calls: list[tuple[dict[str, str], bytes]] = []
        hook = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                hook.calls.append((dict(self.headers), body))
                self.send_response(statuses.pop(0) if statuses else 200)
                self.end_headers()

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/done"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()


@pytest.fixture
def hook() -> Iterator[Hook]:
    server = Hook([500])  # the first delivery fails: a retry follows
    yield server
    server.server.shutdown()


async def wait_status(h: AppHandle, job_id: str, wanted: set[str], timeout: float = 30) -> dict[str, Any]:
    async with asyncio.timeout(timeout):
        while (body := (await h.client.get(f"/v1/jobs/{job_id}")).json())["status"] not in wanted:
            await asyncio.sleep(0.05)
    return body


def job_settings(tmp_path: Path, **extra: dict[str, Any]) -> Any:
    """Settings for job tests; webhooks may reach loopback only where a test says so (the Hook
    receivers listen on 127.0.0.1, which the default refuses)."""
    return make_settings(
        tmp_path,
        jobs={"window_seconds": 30.0, **extra.pop("jobs", {})},
        webhook={"secret": "s3cret", "retry_seconds": 0.2, **extra.pop("webhook", {})},
        **extra,
    )


async def test_a_job_runs_in_windows_and_its_result_comes_in_every_format(
    tmp_path: Path, two_minutes: bytes, hook: Hook, database: dict[str, Any]
) -> None:
    backend = FakeBackend(text="hello world")
    settings = job_settings(tmp_path, database=database, webhook={"allowed_networks": "127.0.0.1/32"})
    async with running_app(settings, factory(backend)) as h:
        r = await h.client.post(
            "/v1/jobs", files={"file": ("talk.mp3", two_minutes)}, data={"language": "en", "webhook_url": hook.url}
        )
        assert r.status_code == 202, r.text
        job = r.json()
        assert job["status"] in ("queued", "running") and r.headers["location"] == f"/v1/jobs/{job['id']}"
        assert (await h.client.get(f"/v1/jobs/{job['id']}/result")).status_code in (409, 200)
        done = await wait_status(h, job["id"], {"succeeded"})
        assert done["progress"]["audio_seconds_done"] == pytest.approx(120, abs=1)
        assert done["progress"]["ratio"] == pytest.approx(1.0, abs=0.01) and done["language"] == "en"
        # Windows of at most 30 s, cut at quiet points: the fake engine says "hello world" once per window.
        body = (await h.client.get(f"/v1/jobs/{job['id']}/result")).json()
        windows = len(body["segments"])
        assert windows >= 4 and body["text"] == " ".join(["hello world"] * windows)
        assert all(s["end"] - s["start"] <= 30.0 for s in body["segments"])
        ends = [(s["start"], s["end"]) for s in body["segments"]]
        assert ends[0][0] == 0 and all(b[0] == pytest.approx(a[1], abs=0.01) for a, b in itertools.pairwise(ends))
        srt = (await h.client.get(f"/v1/jobs/{job['id']}/result", params={"response_format": "srt"})).text
        assert srt.startswith("1\n00:00:00,000 --> 00:00:") and "\n4\n" in srt
        vtt = (await h.client.get(f"/v1/jobs/{job['id']}/result", params={"response_format": "vtt"})).text
        assert vtt.startswith("WEBVTT")
        listed = (await h.client.get("/v1/jobs")).json()["items"]
        assert [j["id"] for j in listed] == [job["id"]]
        # The webhook: first answered 500, retried, then delivered; signed with the secret.
        async with asyncio.timeout(10):
            while len(hook.calls) < 2:
                await asyncio.sleep(0.05)
        headers, payload = hook.calls[-1]
        expected = hmac.new(b"s3cret", headers["X-ASR-Timestamp"].encode() + b"." + payload, hashlib.sha256)
        assert headers["X-ASR-Signature"] == "sha256=" + expected.hexdigest()
        sent = json.loads(payload)
        assert sent["id"] == job["id"] and sent["status"] == "succeeded" and sent["text"] == body["text"]
        assert sent["result_url"] == f"/v1/jobs/{job['id']}/result"
        # Counted once the receiver's answer is recorded, a moment after the receiver saw the call.
        await until(lambda: h.sample("asr_webhook_deliveries_total", {"outcome": "delivered"}) == 1)
        assert h.sample("asr_webhook_deliveries_total", {"outcome": "retried"}) == 1
        assert h.sample("asr_job_duration_seconds_count") == 1
        # The runner refreshes the job gauges each second.
        await until(lambda: h.sample("asr_jobs", {"state": "succeeded"}) == 1, what="the succeeded job counted")
        # Windows ran at batch priority: they are not anyone's answer latency.
        assert h.sample("asr_request_realtime_factor_count", {"backend": "fake", "model": "fake-model"}) == 0
        # A finished job is deleted on DELETE.
        assert (await h.client.delete(f"/v1/jobs/{job['id']}")).status_code == 204
        assert (await h.client.get(f"/v1/jobs/{job['id']}")).status_code == 404


async def test_a_running_job_can_be_cancelled(tmp_path: Path, two_minutes: bytes, database: dict[str, Any]) -> None:
    backend = FakeBackend(delay=1.0)
    async with running_app(job_settings(tmp_path, database=database), factory(backend)) as h:
        job = (await h.client.post("/v1/jobs", files={"file": ("talk.mp3", two_minutes)})).json()
        await wait_status(h, job["id"], {"running"})
        r = await h.client.delete(f"/v1/jobs/{job['id']}")
        assert r.status_code == 200 and r.json()["status"] == "cancelled"
        calls = len(backend.calls)
        # Once the runner has let go of the job, no window of it can start any more; a job that
        # was not stopped would run its remaining windows (a second each) first.
        await until(lambda: job["id"] not in h.app.state.jobs._running, what="the runner lets go of the job")
        assert len(backend.calls) <= calls + 1  # at most the window under way
        assert (await h.client.get(f"/v1/jobs/{job['id']}/result")).status_code == 409


async def test_job_submission_limits_and_checks(
    tmp_path: Path, two_minutes: bytes, speech_dir: Path, database: dict[str, Any]
) -> None:
    settings = job_settings(
        tmp_path,
        jobs={"max_queued": 1},
        server={"api_key": "k"},
        webhook={"allowed_hosts": "hooks.example.org"},
        database=database,
    )
    key = {"Authorization": "Bearer k"}
    async with running_app(settings, factory(FakeBackend(delay=2.0))) as h:
        assert (await h.client.post("/v1/jobs", files={"file": ("a.mp3", two_minutes)})).status_code == 401
        r = await h.client.post("/v1/jobs", files={"file": ("notes.txt", b"not audio" * 100)}, headers=key)
        assert r.status_code == 415  # checked now, not in a failed job later
        r = await h.client.post(
            "/v1/jobs", files={"file": ("a.mp3", two_minutes)}, data={"webhook_url": "http://evil.test/x"}, headers=key
        )
        assert r.status_code == 422 and r.json()["error"]["param"] == "webhook_url"
        first = await h.client.post("/v1/jobs", files={"file": ("a.mp3", two_minutes)}, headers=key)
        assert first.status_code == 202
        r = await h.client.post("/v1/jobs", files={"file": ("b.mp3", two_minutes)}, headers=key)
        assert r.status_code == 429 and int(r.headers["retry-after"]) >= 1
        assert (await h.client.get("/v1/jobs/" + "0" * 32, headers=key)).status_code == 404
        assert (await h.client.get("/v1/jobs/../../etc", headers=key)).status_code == 404
