"""Connections that never send a request: the cap, the request-head deadline, bounded accept logs.

Against a real server with a small file-descriptor limit (256, as a tight container has): before
these limits, 420 idle or half-open connections made /healthz time out and the accept loop logged
"Too many open files" hundreds of thousands of times.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import time
from typing import TYPE_CHECKING, Any

import httpx
import pytest

from service.config import ServerSettings
from service.connections import ConnectionGuard
from service.metrics import Metrics
from tests.conftest import serve, wait_until

if TYPE_CHECKING:
    from collections.abc import Iterator
    from pathlib import Path

    from tests.conftest import Server


def _metric(server: Server, name: str, labels: str = "") -> float:
    text = httpx.get(server.url + "/metrics", timeout=10).text
    for line in text.splitlines():
        if line.startswith(f"{name}{labels} ") or (not labels and line.startswith(f"{name} ")):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


def _closed_by_server(sock: socket.socket) -> bool:
    """Whether the server has closed `sock` (EOF or a reset; what it sent first is read past)."""
    sock.setblocking(False)
    try:
        while data := sock.recv(65536):
            del data
    except BlockingIOError:
        return False
    except OSError:
        return True
    return True


@contextlib.contextmanager
def _open(port: int, count: int, half: bytes | None = None) -> Iterator[list[socket.socket]]:
    socks = []
    try:
        for i in range(count):
            sock = socket.create_connection(("127.0.0.1", port), timeout=5)
            if half is not None and i % 2:
                sock.sendall(half)
            socks.append(sock)
        yield socks
    finally:
        for sock in socks:
            sock.close()


@pytest.mark.slow
def test_idle_and_half_open_connections_do_not_starve_the_service(tmp_path: Path, speech_dir: Path) -> None:
    env = {"ASR_HEADER_TIMEOUT_SECONDS": "3"}
    with serve(env, tmp_path, fd_limit=256) as server:
        half_head = b"GET /healthz HTTP/1.1\r\nHost: x\r\n"  # never finished
        with _open(server.port, 420, half_head) as socks:
            # The probe gets through while 420 connections sit idle or half-open (more than the
            # process has descriptors for).
            started = time.monotonic()
            assert httpx.get(server.url + "/healthz", timeout=20).status_code == 200
            probe_seconds = time.monotonic() - started
            # Every idle connection is closed by the request-head deadline or evicted for newcomers.
            wait_until(lambda: all(_closed_by_server(s) for s in socks), 60, "the idle connections are closed")
        closed = {
            reason: _metric(server, "asr_connections_closed_total", f'{{reason="{reason}"}}')
            for reason in ("header_timeout", "evicted_idle", "connection_limit")
        }
        with open(speech_dir / "fox.wav", "rb") as fh:
            assert httpx.post(server.url + "/transcribe", files={"file": fh}, timeout=60).status_code == 200
        log = server.log()
    assert probe_seconds < 15, probe_seconds
    assert closed["header_timeout"] + closed["evicted_idle"] >= 420, closed
    assert log.count("Too many open files") <= 3, "accept errors are logged at a bounded rate"
    assert len(log) < 200_000


@pytest.mark.slow
def test_an_unfinished_websocket_upgrade_is_closed(tmp_path: Path) -> None:
    with serve({"ASR_HEADER_TIMEOUT_SECONDS": "2"}, tmp_path) as server:
        head = b"GET /v1/realtime?intent=transcription HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\n"
        with _open(server.port, 3, None) as socks:
            for sock in socks:
                sock.sendall(head)
            wait_until(lambda: all(_closed_by_server(s) for s in socks), 20, "the upgrades are closed")
        assert _metric(server, "asr_connections_closed_total", '{reason="header_timeout"}') >= 3


@pytest.mark.slow
def test_at_the_cap_with_every_connection_busy_a_newcomer_gets_503(tmp_path: Path) -> None:
    import websockets.sync.client

    with serve({"ASR_MAX_CONNECTIONS": "3"}, tmp_path) as server:
        url = server.url.replace("http", "ws") + "/v1/realtime?intent=transcription"
        streams = [websockets.sync.client.connect(url) for _ in range(3)]
        try:
            for ws in streams:
                assert '"session.created"' in str(ws.recv(timeout=10))
            r = httpx.get(server.url + "/healthz", timeout=10)
            assert r.status_code == 503
            assert r.json()["error"]["code"] == "too_many_connections"
        finally:
            for ws in streams:
                ws.close()
        # Room again once the streams are gone.
        wait_until(lambda: httpx.get(server.url + "/healthz", timeout=5).status_code == 200, 20, "a free place")
        assert _metric(server, "asr_connections_closed_total", '{reason="connection_limit"}') >= 1


def test_accept_errors_are_counted_each_but_logged_once_per_interval(caplog: pytest.LogCaptureFixture) -> None:
    metrics = Metrics()
    guard = ConnectionGuard(ServerSettings(), metrics)
    loop = asyncio.new_event_loop()
    context: dict[str, Any] = {"message": "socket.accept() out of system resource", "exception": OSError(24, "x")}
    try:
        with caplog.at_level(logging.ERROR, logger="service.connections"):
            for _ in range(2000):
                guard.on_loop_exception(loop, context)
    finally:
        loop.close()
    assert metrics.registry.get_sample_value("asr_accept_errors_total") == 2000
    assert len([r for r in caplog.records if "cannot accept" in r.message]) == 1
