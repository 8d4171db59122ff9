"""The real server (`python -m service serve`, Whisper tiny.en) against clients that hang up, a
SIGTERM mid-work, a full temporary disk, decompression bombs and a few hundred malformed requests.
Each case was a defect on main before: a 500, a worker kept busy for nothing, or lost time."""

from __future__ import annotations

import asyncio
import collections
import contextlib
import os
import random
import signal
import socket
import struct
import subprocess
import time
import uuid
from typing import TYPE_CHECKING, Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import CONTAINERS, Server, serve, until, wait_until

if TYPE_CHECKING:
    from collections.abc import Iterator
    from pathlib import Path

pytestmark = pytest.mark.slow


def metric(server: Server, name: str, labels: dict[str, str] | None = None) -> float:
    """One sample's value from the server's /metrics (0 when absent)."""
    return sample_value(httpx.get(server.url + "/metrics", timeout=10).text, name, labels)


def sample_value(text: str, name: str, labels: dict[str, str] | None = None) -> float:
    """One sample's value in a /metrics text (0 when absent)."""
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in (labels or {}).items()):
                return float(sample.value)
    return 0.0


def multipart(filename: str, payload: bytes, **fields: str) -> tuple[bytes, str]:
    boundary = uuid.uuid4().hex
    parts = [
        f'--{boundary}\r\nContent-Disposition: form-data; name="{k}"\r\n\r\n{v}\r\n'.encode() for k, v in fields.items()
    ]
    head = f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="{filename}"\r\n\r\n'.encode()
    body = b"".join(parts) + head + payload + f"\r\n--{boundary}--\r\n".encode()
    return body, f"multipart/form-data; boundary={boundary}"


def open_request(
    port: int, body: bytes, content_type: str, path: str = "/transcribe", send: int | None = None
) -> socket.socket:
    """Send a request (all of its body, or only `send` bytes of it) and return the open socket."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=30)
    head = (
        f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Type: {content_type}\r\nContent-Length: {len(body)}\r\n\r\n"
    ).encode()
    sock.sendall(head + body[: len(body) if send is None else send])
    return sock


def test_clients_that_hang_up_free_their_place_and_their_worker(
    tmp_path: Path, long_speech: Path, speech_dir: Path
) -> None:
    with serve({"ASR_WORKERS": "1", "ASR_QUEUE_SIZE": "4"}, tmp_path) as server:
        gone = {"reason": "client_disconnected"}
        # A: four minutes of speech, running. B: a short clip, queued behind it.
        running = open_request(server.port, *multipart("long.mp3", long_speech.read_bytes(), language="en"))
        wait_until(lambda: metric(server, "asr_workers_busy") == 1, 20, "the long request starts")
        queued = open_request(server.port, *multipart("fox.wav", (speech_dir / "fox.wav").read_bytes()))
        wait_until(lambda: metric(server, "asr_queue_depth") == 1, 10, "the short request queues")

        # B hangs up: it leaves the queue at once and is counted, as 499.
        queued.close()
        wait_until(lambda: metric(server, "asr_requests_rejected_total", gone) == 1, 3, "the queued hang-up counts")
        assert metric(server, "asr_queue_depth") == 0
        assert metric(server, "asr_http_requests_total", {"route": "/transcribe", "status": "499"}) == 1

        # A hangs up: the engine stops at its next 30 s window instead of running ~25 s more.
        running.close()
        freed = wait_until(lambda: metric(server, "asr_workers_busy") == 0, 12, "the running hang-up frees the worker")
        assert metric(server, "asr_requests_rejected_total", gone) == 2

        # C hangs up half-way through its upload: a 499, not a 500 with a traceback.
        body, content_type = multipart("fox.wav", (speech_dir / "fox.wav").read_bytes() * 20)
        wait_until(lambda: metric(server, "asr_http_requests_in_flight") == 0, 5, "A and B are answered")
        cut = open_request(server.port, body, content_type, send=len(body) // 3)
        wait_until(lambda: metric(server, "asr_http_requests_in_flight") == 1, 5, "the server reads C's upload")
        cut.close()
        wait_until(lambda: metric(server, "asr_requests_rejected_total", gone) == 3, 5, "the mid-upload hang-up counts")
        r = httpx.post(server.url + "/transcribe", files={"file": ("fox.wav", (speech_dir / "fox.wav").read_bytes())})
        assert r.status_code == 200
        # Only D was transcribed to the end; nothing else was measured as served audio.
        assert metric(server, "asr_inference_duration_seconds_count") == 1
        assert metric(server, "asr_http_requests_total", {"route": "/transcribe", "status": "499"}) == 3
        assert metric(server, "asr_http_requests_total", {"route": "/transcribe", "status": "500"}) == 0
        log = server.log()
    assert "Traceback" not in log and "Exception in ASGI application" not in log, log
    print(f"worker freed {freed:.1f} s after the running client hung up")


def test_sigterm_drains_readiness_first_and_answers_everyone_in_json(
    tmp_path: Path, speech_dir: Path, long_speech: Path
) -> None:
    env = {"ASR_WORKERS": "1", "ASR_SHUTDOWN_GRACE_SECONDS": "3"}
    fox = (speech_dir / "fox.wav").read_bytes()

    async def traffic(server: Server) -> tuple[list[httpx.Response], dict[str, httpx.Response], float]:
        async with httpx.AsyncClient(base_url=server.url, timeout=60) as client:

            async def past(count: int, *stages: str) -> bool:
                """Whether `count` requests are answered or in the gauges `stages` (running, queued, decoding)."""
                text = (await client.get("/metrics")).text
                answered = sample_value(text, "asr_http_requests_total", {"route": "/transcribe", "status": "200"})
                return answered + sum(sample_value(text, stage) for stage in stages) >= count

            admitted = ("asr_workers_busy", "asr_queue_depth", "asr_decodes_in_flight")
            first = asyncio.create_task(client.post("/transcribe", files={"file": ("a.wav", fox)}))
            # The first is on the worker (or done) before the others are sent: it is ahead of them.
            await until(lambda: past(1, "asr_workers_busy"), 30, "the first request runs", interval=0.05)
            long = asyncio.create_task(client.post("/transcribe", files={"file": ("b.mp3", long_speech.read_bytes())}))
            last = asyncio.create_task(client.post("/transcribe", files={"file": ("c.mp3", long_speech.read_bytes())}))
            # All three are in the service's hands before the signal, so the drain has work to wait for.
            await until(lambda: past(3, *admitted), 30, "the three requests admitted", interval=0.05)
            os.kill(server.process.pid, signal.SIGTERM)
            signalled = time.monotonic()
            ready: list[httpx.Response] = []

            async def readiness_drained() -> bool:
                ready.append(await client.get("/readyz"))
                return ready[-1].status_code != 200

            await until(readiness_drained, 5, "readiness turns 503 after SIGTERM", interval=0.05)
            during = {
                "ready": ready[-1],
                "health": await client.get("/healthz"),
                "new": await client.post("/transcribe", files={"file": ("d.wav", fox)}),
            }
            answers = await asyncio.gather(first, long, last)
            return answers, during, time.monotonic() - signalled

    with serve(env, tmp_path) as server:
        answers, during, answered_after = asyncio.run(traffic(server))
        server.process.wait(timeout=20)
        log = server.log()
    assert during["ready"].status_code == 503 and during["ready"].json() == {"status": "draining"}
    assert during["health"].status_code == 200
    assert during["new"].status_code == 503 and during["new"].json()["error"]["code"] == "shutting_down"
    first, long, last = answers
    assert first.status_code == 200 and first.json()["text"]  # finished within the grace period
    for cut in (long, last):  # still running or queued when it ended
        assert cut.status_code == 503 and cut.json()["error"]["code"] == "shutting_down", cut.text
        assert cut.headers["retry-after"] == "1"
    assert 2.5 < answered_after < 8
    # uvicorn ends a graceful shutdown by re-raising the signal it caught, as supervisors expect.
    assert server.process.returncode in (0, -signal.SIGTERM)
    assert "Traceback" not in log and "Internal Server Error" not in log, log


@contextlib.contextmanager
def small_tmpfs(where: Path, size: str) -> Iterator[bool]:
    """A tmpfs of `size` at `where`; yields False where mounting is not allowed (no root)."""
    where.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(where)], capture_output=True)
    try:
        yield mounted.returncode == 0
    finally:
        if mounted.returncode == 0:
            subprocess.run(["umount", "-l", str(where)], check=False)


def test_a_full_temporary_disk_is_507_and_small_requests_still_work(tmp_path: Path, speech_dir: Path) -> None:
    """Uploads spool to the temporary disk past 1 MB, long audio spills there past the window."""
    minute = tmp_path / "minute.mp3"
    loop = ["-stream_loop", "-1", "-i", str(speech_dir / "weather.wav"), "-t", "60", "-b:a", "32k", str(minute)]
    subprocess.run(["ffmpeg", "-loglevel", "error", *loop], check=True)
    big = (speech_dir / "weather.wav").read_bytes() * 12  # ~1.7 MB: spooled to disk by the form parser
    with small_tmpfs(tmp_path / "tmp", "2m") as mounted:
        assert mounted, "mounting a tmpfs needs root, which the test machines have"
        (tmp_path / "tmp" / "filler").write_bytes(b"\0" * (2 * 1024 * 1024 - 64 * 1024))
        env = {"TMPDIR": str(tmp_path / "tmp"), "ASR_LONG_AUDIO_WINDOW_SECONDS": "10"}
        with serve(env, tmp_path) as server:
            for name, payload in (("big.wav", big), ("minute.mp3", minute.read_bytes())):
                r = httpx.post(server.url + "/transcribe", files={"file": (name, payload)}, timeout=60)
                assert r.status_code == 507, r.text
                assert r.json()["error"]["code"] == "insufficient_storage" and "disk is full" in r.text
            small = httpx.post(
                server.url + "/transcribe", files={"file": ("fox.wav", (speech_dir / "fox.wav").read_bytes())}
            )
            assert small.status_code == 200 and small.json()["text"]
            assert metric(server, "asr_requests_rejected_total", {"reason": "insufficient_storage"}) == 2
            log = server.log()
    assert "Traceback" not in log, log


def test_decompression_bombs_are_refused_before_they_cost_anything(
    tmp_path: Path, speech_dir: Path, silence_bomb: Path
) -> None:
    """Six uploads of an hour of Opus silence at once, beside a normal clip (the limit is 30 min)."""
    bomb = silence_bomb.read_bytes()
    fox = (speech_dir / "fox.wav").read_bytes()

    async def barrage(server: Server) -> list[httpx.Response]:
        async with httpx.AsyncClient(base_url=server.url, timeout=60) as client:
            bombs = [client.post("/transcribe", files={"file": (f"b{i}.opus", bomb)}) for i in range(6)]
            return list(await asyncio.gather(*bombs, client.post("/transcribe", files={"file": ("fox.wav", fox)})))

    with serve({"ASR_MAX_AUDIO_SECONDS": "1800"}, tmp_path) as server:
        *refused, normal = asyncio.run(barrage(server))
        decode_seconds = metric(server, "asr_decode_seconds_sum")
    assert normal.status_code == 200 and normal.json()["text"]
    for r in refused:
        assert r.status_code == 413 and r.json()["error"]["code"] == "audio_too_long", r.text
        assert "3600 s" in r.json()["error"]["message"]
    # Refused from the container's declared duration: not a second of silence was decoded.
    assert decode_seconds < 1.0


# ---- fuzzing ------------------------------------------------------------------------------------

FUZZ_SEED = 20261124


def _fuzz_cases(rng: random.Random, speech_dir: Path) -> list[dict[str, Any]]:
    """Malformed requests of every kind a client can send, reproducible from the seed."""
    from tests.test_hardening import crafted_wav

    real = [p.read_bytes() for p in sorted(speech_dir.iterdir()) if p.suffix[1:] in CONTAINERS]
    cases: list[dict[str, Any]] = []

    def upload(payload: bytes, path: str = "/transcribe", **fields: str) -> None:
        body, content_type = multipart(f"f{len(cases)}.bin", payload, **fields)
        cases.append({"method": "POST", "path": path, "body": body, "type": content_type})

    for _ in range(40):  # noise
        upload(rng.randbytes(rng.choice([1, 16, 300, 4096, 65536])))
    for _ in range(40):  # real files cut anywhere
        data = rng.choice(real)
        upload(data[: rng.randrange(1, len(data))])
    for _ in range(50):  # real files with bytes flipped, header included
        data = bytearray(rng.choice(real))
        for _ in range(rng.randrange(1, 40)):
            data[rng.randrange(0, min(len(data), rng.choice([64, 512, len(data)])))] = rng.randrange(256)
        upload(bytes(data))
    for _ in range(40):  # WAV headers that lie
        rate = rng.choice([0, 1, 7, 3999, 4000, 8000, 44100, 384001, 2**31, 2**32 - 1])
        wav = bytearray(crafted_wav(16_000, rng.choice([1, 2, 3, 64, 65]), rng.randrange(1, 4000)))
        struct.pack_into("<I", wav, 24, rate)  # the rate as sent, 0 included
        if rng.random() < 0.5:
            struct.pack_into("<I", wav, 40, rng.choice([0, 1, 2**31, 2**32 - 1]))  # data size
        if rng.random() < 0.3:
            struct.pack_into("<H", wav, 34, rng.choice([0, 1, 7, 64, 65535]))  # bits per sample
        upload(bytes(wav))
    fields = {
        "language": ["", "auto", "EN", "english", "xx", "\x00", "é" * 50, "x" * 5000],
        "task": ["translate", "TRANSCRIBE", "", "x" * 300],
        "response_format": ["srt", "vtt", "verbose_json", "xml", ""],
        "word_timestamps": ["true", "yes", "2", ""],
        "vad_filter": ["true", "maybe"],
        "prompt": ["", "p" * 2001, "\u202e" * 10],
        "temperature": ["0.5", "-1", "nan", "1e999"],
        "model": ["whisper-1", "", "m" * 3000, "../../etc/passwd"],
        "timestamp_granularities[]": ["word", "sentence"],
    }
    for _ in range(40):  # field values
        chosen = {k: rng.choice(v) for k, v in rng.sample(sorted(fields.items()), rng.randrange(1, 4))}
        upload(
            rng.choice(real),
            rng.choice(["/transcribe", "/v1/audio/transcriptions", "/v1/audio/translations"]),
            **chosen,
        )
    fox = real[0]
    for _ in range(30):  # forms that are not what they say
        boundary = uuid.uuid4().hex
        body = rng.choice(
            [
                b"--" + boundary.encode() + b'\r\nContent-Disposition: form-data; name="file"\r\n\r\n' + fox,
                b"not a form at all",
                b"--" + boundary.encode() + b"--\r\n",
                b"--"
                + boundary.encode()
                + b'\r\nContent-Disposition: form-data; name="file"; filename="a"\r\n\r\n'
                + fox
                + b"\r\n--"
                + boundary.encode()
                + b'\r\nContent-Disposition: form-data; name="file"; filename="b"\r\n\r\n'
                + fox
                + b"\r\n--"
                + boundary.encode()
                + b"--\r\n",
                rng.randbytes(2000),
            ]
        )
        content_type = rng.choice(
            [
                f"multipart/form-data; boundary={boundary}",
                "multipart/form-data",
                "application/json",
                "audio/wav",
                "text/plain",
                "",
            ]
        )
        cases.append(
            {
                "method": "POST",
                "path": rng.choice(["/transcribe", "/v1/audio/transcriptions"]),
                "body": body,
                "type": content_type,
            }
        )
    paths = [
        "/transcribe",
        "/v1/models",
        "/v1/samples",
        "/v1/samples/" + "0" * 32,
        "/v1/samples/../../x",
        "/%00",
        "/a" * 200,
    ]
    for _ in range(40):  # methods, paths, queries, headers
        query = rng.choice(
            ["", "?offset=9223372036854775808", "?limit=-1", "?status=nope", "?language=" + "l" * 100, "?offset=1e9"]
        )
        cases.append(
            {
                "method": rng.choice(["GET", "POST", "PUT", "DELETE", "PATCH", "OPTIONS", "HEAD", "FOO", "PROPFIND"]),
                "path": rng.choice(paths) + query,
                "body": rng.choice([b"", b"{}", b'{"text": "   "}', rng.randbytes(100)]),
                "type": rng.choice(["application/json", "text/plain"]),
                "headers": {
                    "Authorization": rng.choice(["Bearer adm", "Bearer wrong", "Basic x", ""]),
                    "X-Request-ID": rng.choice(["ok-id", "x" * 200, "bad id\x7f", ""]),
                },
            }
        )
    return cases


async def _fuzz(server: Server, cases: list[dict[str, Any]]) -> tuple[list[tuple[int, str]], list[float]]:
    statuses: list[tuple[int, str]] = []
    health: list[float] = []
    done = asyncio.Event()
    async with httpx.AsyncClient(base_url=server.url, timeout=120) as client:

        async def probe() -> None:
            while not done.is_set():
                started = time.monotonic()
                assert (await client.get("/healthz")).status_code == 200
                health.append(time.monotonic() - started)
                await asyncio.sleep(0.25)

        async def send(case: dict[str, Any], slots: asyncio.Semaphore) -> None:
            headers = {"Content-Type": case["type"], **{k: v for k, v in case.get("headers", {}).items() if v}}
            what = f"{case['method']} {case['path'][:60]}"
            async with slots:
                try:
                    r = await client.request(case["method"], case["path"], content=case["body"], headers=headers)
                except httpx.TransportError as exc:  # a dropped connection counts as a 5xx (599)
                    statuses.append((599, f"{what} -> dropped: {type(exc).__name__}"))
                    return
            statuses.append((r.status_code, f"{what} -> {r.text[:200]}"))

        prober = asyncio.create_task(probe())
        slots = asyncio.Semaphore(4)
        await asyncio.gather(*(send(case, slots) for case in cases))
        done.set()
        await prober
    return statuses, health


def _rss_bytes(pid: int) -> int:
    with open(f"/proc/{pid}/status") as fh:
        line = next(line for line in fh if line.startswith("VmRSS:"))
    return int(line.split()[1]) * 1024


def test_a_few_hundred_malformed_requests_get_no_5xx(tmp_path: Path, speech_dir: Path) -> None:
    cases = _fuzz_cases(random.Random(FUZZ_SEED), speech_dir)
    env = {
        "ASR_MAX_AUDIO_SECONDS": "20",
        "ASR_ADMIN_TOKEN": "adm",
        "ASR_QUALITY_SAMPLE_RATE": "0.2",
        "ASR_QUEUE_SIZE": "32",
    }
    fox = (speech_dir / "fox.wav").read_bytes()
    with serve(env, tmp_path) as server:
        assert httpx.post(server.url + "/transcribe", files={"file": ("fox.wav", fox)}).status_code == 200
        rss_before = _rss_bytes(server.process.pid)
        started = time.monotonic()
        statuses, health = asyncio.run(_fuzz(server, cases))
        seconds = time.monotonic() - started
        rss_after = _rss_bytes(server.process.pid)
        after = httpx.post(server.url + "/transcribe", files={"file": ("fox.wav", fox)})
        alive = server.process.poll() is None
        log = server.log()
    errors = [what for status, what in statuses if status >= 500]
    print(
        f"fuzz: {len(cases)} requests in {seconds:.0f} s, {len(errors)} answered 5xx; "
        f"statuses {sorted(collections.Counter(s for s, _ in statuses).items())}; "
        f"RSS {rss_before / 2**20:.0f} -> {rss_after / 2**20:.0f} MiB; /healthz max {max(health) * 1000:.0f} ms"
    )
    assert len(statuses) == len(cases) >= 250
    assert errors == []
    assert alive and after.status_code == 200
    assert rss_after - rss_before < 300 * 2**20
    assert max(health) < 1.0
    assert "Traceback" not in log, log[-3000:]


# ---- fuzzing job submissions ----------------------------------------------------------------------


def _webhook_url(rng: random.Random) -> str:
    """A webhook URL assembled from parts that each broke (or nearly broke) a parser somewhere."""
    if rng.random() < 0.15:
        return rng.randbytes(rng.choice([1, 8, 60])).decode("latin-1")
    if rng.random() < 0.2:  # each broke the service once (issue 20)
        return rng.choice(
            [
                "http://[::1",
                "http://0177.0.0.1:1/",
                "http://h:abc/",
                "http://xn--zz/",
                "http://169.254.169.254/latest/meta-data/",
                "http://2130706433/",
                "http://[::ffff:127.0.0.1]/",
                "http://hooks.example.org@127.0.0.1/",
            ]
        )
    scheme = rng.choice(["http://", "https://", "HTTP://", "ftp://", "javascript:", "http:/", "//", ""])
    userinfo = rng.choice(["", "", "", "u@", "u:p@", "@", ":@", "hooks.example.org@"])
    host = rng.choice(
        [
            "hooks.example.org",
            "HOOKS.example.org.",
            "127.0.0.1",
            "0177.0.0.1",
            "2130706433",
            "0x7f.1",
            "127.1",
            "[::1]",
            "[::1",
            "::1",
            "[::ffff:127.0.0.1]",
            "[fe80::1%25eth0]",
            "[v1.x]",
            "169.254.169.254",
            "10.0.0.1",
            "0.0.0.0",
            "localhost",
            "xn--zz",
            "xn--nxasmq6b.example",
            "bücher.example",
            "ex ample.org",
            "-a.example",
            "a" * 64 + ".example",
            ("a" * 60 + ".") * 5 + "org",
            "..",
            "",
            "%00",
            "h\x00",
            "h:abc",
        ]
    )
    port = rng.choice(["", "", "", ":0", ":1", ":443", ":65535", ":65536", ":abc", ":-1", ":99999999999999", ":"])
    path = rng.choice(["/", "", "/x?y=1#f", "/" + "p" * 1990, "/\u202e", "/%zz", "\\x", "?a=b"])
    return scheme + userinfo + host + port + path


def _job_fuzz_cases(rng: random.Random, speech_dir: Path) -> list[dict[str, Any]]:
    """Job submissions with random fields, webhook URLs and files, and calls on jobs that do not exist."""
    real = [p.read_bytes() for p in sorted(speech_dir.iterdir()) if p.suffix[1:] in CONTAINERS]
    fields = {
        "language": ["", "auto", "en", "xx", "\x00", "x" * 5000],
        "task": ["translate", "", "x" * 300],
        "response_format": ["srt", "verbose_json", "xml"],
        "word_timestamps": ["true", "2"],
        "prompt": ["", "p" * 2001],
        "temperature": ["0.5", "nan", "1e999"],
        "model": ["whisper-1", "m" * 3000],
        "webhook_url": [""],
    }
    cases: list[dict[str, Any]] = []
    for _ in range(250):
        data = rng.choice(real)
        payload = rng.choice(
            [data, data, data[: rng.randrange(1, len(data))], rng.randbytes(rng.choice([1, 300, 4096])), b""]
        )
        chosen = {k: rng.choice(v) for k, v in rng.sample(sorted(fields.items()), rng.randrange(0, 3))}
        if rng.random() < 0.9:
            chosen["webhook_url"] = _webhook_url(rng)
        body, content_type = multipart(f"j{len(cases)}.bin", payload, **chosen)
        cases.append({"method": "POST", "path": "/v1/jobs", "body": body, "type": content_type})
    ids = ["0" * 32, "z" * 32, "../" * 11, "%00", "x" * 300, uuid.uuid4().hex]
    for _ in range(40):
        suffix = rng.choice(["", "/result", "/result?response_format=srt", "/result?response_format=xml", "/x"])
        cases.append(
            {
                "method": rng.choice(["GET", "DELETE", "POST", "PUT"]),
                "path": "/v1/jobs/" + rng.choice(ids) + suffix,
                "body": b"",
                "type": "text/plain",
            }
        )
    return cases


def test_a_few_hundred_malformed_job_submissions_get_no_5xx(tmp_path: Path, speech_dir: Path) -> None:
    cases = _job_fuzz_cases(random.Random(FUZZ_SEED), speech_dir)
    # Room for every job a case makes, so that each submission is read and checked to the end.
    env = {"ASR_MAX_AUDIO_SECONDS": "20", "ASR_JOBS_MAX_QUEUED": "300", "ASR_WEBHOOK_TIMEOUT_SECONDS": "2"}
    fox = (speech_dir / "fox.wav").read_bytes()
    with serve(env, tmp_path) as server:
        statuses, health = asyncio.run(_fuzz(server, cases))
        accepted = [j["id"] for j in httpx.get(server.url + "/v1/jobs", timeout=10).json()["items"]]
        for job_id in accepted:  # make room, then prove the runner still works
            assert httpx.delete(f"{server.url}/v1/jobs/{job_id}", timeout=10).status_code in (200, 204)
        job = httpx.post(server.url + "/v1/jobs", files={"file": ("fox.wav", fox)}, timeout=30)
        assert job.status_code == 202, job.text
        wait_until(
            lambda: httpx.get(f"{server.url}/v1/jobs/{job.json()['id']}", timeout=10).json()["status"] == "succeeded",
            60,
            "a job after the fuzz run succeeds",
        )
        alive = server.process.poll() is None
        log = server.log()
    errors = [what for status, what in statuses if status >= 500]
    counts = collections.Counter(s for s, _ in statuses)
    print(
        f"job fuzz: {len(cases)} requests ({sum(c['path'] == '/v1/jobs' for c in cases)} submissions), "
        f"{len(errors)} answered 5xx; {len(accepted)} jobs accepted; statuses {sorted(counts.items())}"
    )
    assert len(statuses) == len(cases) >= 250
    assert errors == [], errors[:5]
    assert alive and max(health) < 1.0
    assert "Traceback" not in log and "tick failed" not in log, log[-3000:]
