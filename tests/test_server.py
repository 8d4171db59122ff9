"""The real server process (`python -m service serve`) with Whisper tiny.en."""

from __future__ import annotations

import asyncio
import json
import re
import socket
import time
from typing import TYPE_CHECKING

import httpx
import openai
import pytest

from service.quality.scoring import score
from tests.conftest import SENTENCES, Server, run_cli, serve

if TYPE_CHECKING:
    from pathlib import Path

pytestmark = pytest.mark.slow


def _client(server: Server) -> openai.OpenAI:
    return openai.OpenAI(base_url=server.url + "/v1", api_key="not-needed", max_retries=0)


def test_openai_client_json_and_srt(tiny_server: Server, speech_dir: Path) -> None:
    client = _client(tiny_server)
    with open(speech_dir / "fox.mp3", "rb") as fh:
        result = client.audio.transcriptions.create(model="whisper-1", file=fh)
    assert score(SENTENCES["fox"], result.text, "en", "basic").rate <= 0.6
    with open(speech_dir / "fox.mp3", "rb") as fh:
        srt = client.audio.transcriptions.create(model="whisper-1", file=fh, response_format="srt")
    assert isinstance(srt, str) and srt.startswith("1\n00:00:00,000 --> 00:00:0")
    with open(speech_dir / "meeting.wav", "rb") as fh:
        verbose = client.audio.transcriptions.create(
            model="whisper-tiny.en",
            file=fh,
            response_format="verbose_json",
            timestamp_granularities=["word", "segment"],
            language="en",
        )
    assert verbose.language == "english" and verbose.duration > 3
    assert verbose.words and verbose.words[0].word.lower() == "please"
    assert verbose.segments and verbose.segments[0].end > verbose.segments[0].start


@pytest.mark.filterwarnings("ignore:deprecated:DeprecationWarning")  # the client deprecates translations
def test_openai_client_sees_clear_errors(tiny_server: Server, speech_dir: Path) -> None:
    client = _client(tiny_server)
    with open(speech_dir / "fox.wav", "rb") as fh, pytest.raises(openai.UnprocessableEntityError) as info:
        client.audio.translations.create(model="whisper-1", file=fh)  # tiny.en cannot translate
    assert "translation is not supported" in str(info.value)
    assert [m.id for m in client.models.list().data] == ["whisper-tiny.en"]


def _raw_request(port: int, head: bytes, body_chunks: list[bytes]) -> tuple[int, float, bytes]:
    """Send a request by hand; return (status, seconds until the status line arrived, what came back)."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        started = time.monotonic()
        sock.sendall(head)
        try:
            for chunk in body_chunks:
                sock.sendall(chunk)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the server may stop reading once it has refused
        data = sock.recv(4096)
        status, seconds = int(data.split(b" ", 2)[1]), time.monotonic() - started
        head_end = data.find(b"\r\n\r\n")
        length = re.search(rb"content-length: (\d+)", data[:head_end].lower())
        while length and len(data) - head_end - 4 < int(length.group(1)):
            more = sock.recv(4096)
            if not more:
                break
            data += more
        return status, seconds, data


def test_upload_limit_refuses_before_reading_the_body(tmp_path: Path) -> None:
    limit = 200_000
    with serve({"ASR_MAX_UPLOAD_BYTES": str(limit)}, tmp_path) as server:
        # A declared 10 GB body is refused at once, with nothing sent after the headers.
        head = (
            b"POST /transcribe HTTP/1.1\r\nHost: x\r\nContent-Type: multipart/form-data; boundary=b\r\n"
            b"Content-Length: 10000000000\r\n\r\n"
        )
        status, seconds, answer = _raw_request(server.port, head, [])
        assert status == 413 and seconds < 2
        # In the service's JSON error shape (it was the framework's plain text).
        headers, _, body = answer.partition(b"\r\n\r\n")
        assert b"content-type: application/json" in headers.lower()
        assert json.loads(body)["error"]["code"] == "upload_too_large"
        # A chunked body without a length is refused once it passes the limit: the server
        # answers while the client is still sending.
        head = (
            b"POST /transcribe HTTP/1.1\r\nHost: x\r\nContent-Type: multipart/form-data; boundary=b\r\n"
            b"Transfer-Encoding: chunked\r\n\r\n"
        )
        part = b'--b\r\nContent-Disposition: form-data; name="file"; filename="a.wav"\r\n\r\n'
        first = f"{len(part):x}\r\n".encode() + part + b"\r\n"
        chunk = b"10000\r\n" + b"\0" * 0x10000 + b"\r\n"  # 64 KiB chunks
        status, _, _ = _raw_request(server.port, head, [first] + [chunk] * 40)  # 2.5 MiB offered
        assert status == 413
        metrics = httpx.get(server.url + "/metrics").text
        assert 'asr_requests_rejected_total{reason="too_large"} 2.0' in metrics


def test_a_burst_beyond_the_queue_gets_200_or_429_and_health_stays_fast(tmp_path: Path, speech_dir: Path) -> None:
    env = {"ASR_WORKERS": "1", "ASR_QUEUE_SIZE": "2"}
    payload = (speech_dir / "weather.wav").read_bytes()

    async def burst(server: Server) -> tuple[list[httpx.Response], list[float]]:
        async with httpx.AsyncClient(base_url=server.url, timeout=120) as client:
            health: list[float] = []

            async def probe() -> None:
                for _ in range(15):
                    started = time.monotonic()
                    r = await client.get("/healthz")
                    assert r.status_code == 200
                    health.append(time.monotonic() - started)
                    await asyncio.sleep(0.1)

            posts = [client.post("/transcribe", files={"file": ("w.wav", payload)}) for _ in range(10)]
            *responses, _ = await asyncio.gather(*posts, probe())
            return list(responses), health

    with serve(env, tmp_path) as server:
        responses, health = asyncio.run(burst(server))
        metrics = httpx.get(server.url + "/metrics").text
    statuses = sorted(r.status_code for r in responses)
    assert set(statuses) <= {200, 429}, statuses
    ok = statuses.count(200)
    assert ok >= 3  # one running + two queued are always admitted
    assert statuses.count(429) >= 1
    for r in responses:
        if r.status_code == 429:
            assert int(r.headers["retry-after"]) >= 1 and r.json()["error"]["code"] == "queue_full"
        else:
            assert r.json()["text"]
    assert max(health) < 0.5, health
    assert f'asr_requests_rejected_total{{reason="queue_full"}} {statuses.count(429)}.0' in metrics
    assert f'asr_http_requests_total{{method="POST",route="/transcribe",status="200"}} {ok}.0' in metrics


def test_cli_transcribes_several_files_with_a_progress_bar(speech_dir: Path, tmp_path: Path) -> None:
    env = {"ASR_MODEL": "embedded:tiny.en", "ASR_CACHE_DIR": str(tmp_path), "PATH": "/usr/bin:/bin"}
    files = [str(speech_dir / "fox.wav"), str(speech_dir / "meeting.mp3")]
    run = run_cli(env, "transcribe", *files, "--format", "json", timeout=120)
    assert run.returncode == 0, run.stderr
    lines = [json.loads(line) for line in run.stdout.splitlines()]
    assert [line["file"] for line in lines] == files
    assert score(SENTENCES["meeting"], lines[1]["text"], "en", "basic").rate <= 0.6
    assert "2/2" in run.stderr  # tqdm's progress bar
    run = run_cli(env, "transcribe", files[0], "--format", "vtt", timeout=120)
    assert run.stdout.startswith("WEBVTT\n\n00:00:00.000 --> ") and "2/2" not in run.stderr
    run = run_cli(env, "transcribe", str(speech_dir / "missing.wav"), timeout=120)
    assert run.returncode == 1 and "missing.wav" in run.stderr
