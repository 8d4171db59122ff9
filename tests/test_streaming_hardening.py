"""The Realtime WebSocket against hostile and careless clients, on a real server (Whisper tiny.en).

Clients as real voice-agent frameworks and attackers write them: ones that commit their own
turns, ask for semantic VAD or logprobs, send malformed frames, stop reading, or flood the
session; and a live turn whose soft last word must survive the VAD's cut. Raw sockets stand in
for clients that never read: a WebSocket library would read for them.
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import signal
import socket
import subprocess
import threading
import time
from typing import TYPE_CHECKING, Any

import numpy as np
import openai
import pytest
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import ClientConnection, connect

from tests.conftest import Server, serve, wait_until
from tests.test_hardening_server import metric

if TYPE_CHECKING:
    from collections.abc import Iterator
    from pathlib import Path

pytestmark = pytest.mark.slow
PATH = "/v1/realtime?intent=transcription"
# espeak-ng at 140 words a minute, server VAD at threshold 0.9 (a noisy room): Silero's probability
# falls below 0.75 while the "f" of "cliff" still sounds, 80 ms before its end.
SOFT_ENDING = "The wolf ran to the cliff"
SPOKEN = "The weather today is sunny with a light breeze from the west"


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    env = {
        "ASR_STREAM_IDLE_SECONDS": "3",
        "ASR_STREAM_MAX_SECONDS": "30",
        "ASR_STREAM_SEND_TIMEOUT_SECONDS": "2",
    }
    with serve(env, tmp_path_factory.mktemp("stream-hardening")) as server:
        yield server
        log = server.log()
    assert "Traceback" not in log and "Exception in ASGI application" not in log, log


def _url(server: Server) -> str:
    return server.url.replace("http", "ws") + PATH


def _pcm(text: str, folder: Path, rate: int, speed: int = 140, pad: tuple[float, float] = (0.5, 1.5)) -> bytes:
    """espeak-ng speaking `text`, as raw PCM16 at `rate` with silence before and after.

    Always the same samples (sox -R: no random dither), since a last word can flip with a
    difference of 1e-5 in the audio."""
    wav, raw = folder / "speech.wav", folder / "speech.raw"
    subprocess.run(["espeak-ng", "-v", "en-us", "-s", str(speed), "-w", str(wav), text], check=True)
    convert = ["sox", "-R", str(wav), "-r", str(rate), "-b", "16", "-t", "raw", "-e", "signed", str(raw)]
    subprocess.run([*convert, "pad", *map(str, pad)], check=True)
    return raw.read_bytes()


def _events_until(ws: ClientConnection, kind: str, timeout: float = 60) -> list[dict[str, Any]]:
    """Events received until one of type `kind` (included); fails on an error event."""
    events: list[dict[str, Any]] = []
    while not events or events[-1]["type"] != kind:
        events.append(json.loads(ws.recv(timeout=timeout)))
        assert events[-1]["type"] != "error", events[-1]
    return events


def _update(ws: ClientConnection, **input_: Any) -> dict[str, Any]:
    ws.send(json.dumps({"type": "session.update", "session": {"type": "transcription", "audio": {"input": input_}}}))
    return json.loads(ws.recv(timeout=30))


def _append(ws: ClientConnection, pcm: bytes) -> None:
    ws.send(json.dumps({"type": "input_audio_buffer.append", "audio": base64.b64encode(pcm).decode()}))


def _words(text: str) -> list[str]:
    return "".join(c if c.isalnum() or c == " " else " " for c in text.lower()).split()


# ---- turns ---------------------------------------------------------------------------------------


def test_a_live_turn_keeps_its_soft_last_word(server: Server, tmp_path: Path) -> None:
    pcm = _pcm(SOFT_ENDING, tmp_path, 16_000)
    samples = np.frombuffer(pcm, dtype="<i2")
    audible_end_ms = np.nonzero(np.abs(samples) > 100)[0][-1] / 16  # the last sample above -50 dBFS
    with connect(_url(server)) as ws:
        ws.recv(timeout=30)
        _update(
            ws,
            format={"type": "audio/pcm", "rate": 16000},
            transcription={"language": "en"},
            turn_detection={"type": "server_vad", "threshold": 0.9},
        )
        step = 3200  # 100 ms
        for i in range(0, len(pcm), step):  # in real time, as a microphone sends
            _append(ws, pcm[i : i + step])
            time.sleep(0.1)
        events = _events_until(ws, "conversation.item.input_audio_transcription.completed")
    started = next(e for e in events if e["type"] == "input_audio_buffer.speech_started")
    stopped = next(e for e in events if e["type"] == "input_audio_buffer.speech_stopped")
    completed = events[-1]
    turn_end_ms = started["audio_start_ms"] + completed["usage"]["seconds"] * 1000
    print(
        f"speech {started['audio_start_ms']}-{stopped['audio_end_ms']} ms, audible to {audible_end_ms:.0f} ms, "
        f"turn audio to {turn_end_ms:.0f} ms: {completed['transcript']!r}"
    )
    # Where the VAD says speech ended, the last consonant still sounds: a decode of the audio cut
    # there (every final before) loses it ...
    assert stopped["audio_end_ms"] < audible_end_ms - 40
    # ... the final's audio goes on past it, into the silence that ended the turn.
    assert turn_end_ms >= audible_end_ms + 100
    assert _words(completed["transcript"])[-1] == "cliff", completed["transcript"]


def test_clients_that_commit_their_own_turns(server: Server, tmp_path: Path) -> None:
    pcm = _pcm(SPOKEN, tmp_path, 24_000)
    with connect(_url(server)) as ws:
        ws.recv(timeout=30)
        # A model without server turn detection, turn_detection left out: the client commits.
        updated = _update(ws, transcription={"model": "gpt-realtime-whisper", "language": "en"})
        assert updated["type"] == "session.updated", updated
        assert updated["session"]["audio"]["input"]["turn_detection"] is None
        _append(ws, pcm)
        ws.send(json.dumps({"type": "input_audio_buffer.commit"}))
        events = _events_until(ws, "conversation.item.input_audio_transcription.completed")
        assert "input_audio_buffer.speech_started" not in [e["type"] for e in events]
        assert "weather" in _words(events[-1]["transcript"])
    with connect(_url(server)) as ws:
        ws.recv(timeout=30)
        # Server VAD on, and the client commits too, right after the VAD did: not an error.
        _update(ws, transcription={"model": "whisper-1", "language": "en"})
        _append(ws, pcm)
        committed = _events_until(ws, "input_audio_buffer.committed")[-1]
        ws.send(json.dumps({"type": "input_audio_buffer.commit", "event_id": "mine"}))
        again = _events_until(ws, "input_audio_buffer.committed")[-1]
        assert again["item_id"] == committed["item_id"]
        _events_until(ws, "conversation.item.input_audio_transcription.completed")
        # A second commit with nothing new is the client's mistake again.
        ws.send(json.dumps({"type": "input_audio_buffer.commit", "event_id": "twice"}))
        error = json.loads(ws.recv(timeout=30))
        assert error["error"]["code"] == "input_audio_buffer_commit_empty" and error["error"]["event_id"] == "twice"


def test_semantic_vad_ends_turns_with_our_vad(server: Server, tmp_path: Path) -> None:
    pcm = _pcm(SPOKEN, tmp_path, 24_000, pad=(0.5, 2.5))
    with connect(_url(server)) as ws:
        ws.recv(timeout=30)
        updated = _update(ws, turn_detection={"type": "semantic_vad", "eagerness": "low"})
        assert updated["type"] == "session.updated", updated
        detection = updated["session"]["audio"]["input"]["turn_detection"]
        assert detection["type"] == "semantic_vad" and detection["silence_duration_ms"] == 1500
        _append(ws, pcm)
        events = _events_until(ws, "conversation.item.input_audio_transcription.completed")
    kinds = [e["type"] for e in events]
    assert kinds.count("input_audio_buffer.speech_started") == kinds.count("input_audio_buffer.speech_stopped") == 1


def test_options_not_offered_are_refused_not_ignored(server: Server, speech_dir: Path) -> None:
    with connect(_url(server)) as ws:
        ws.recv(timeout=30)
        # include holds one value OpenAI defines (logprobs, honoured: tests/test_confidence.py); others are named.
        session = {"type": "transcription", "include": ["item.input_audio_transcription.tokens"]}
        ws.send(json.dumps({"type": "session.update", "event_id": "e1", "session": session}))
        error = json.loads(ws.recv(timeout=30))
        assert error["type"] == "error", error
        assert (error["error"]["code"], error["error"]["param"]) == ("invalid_include", "session.include")
        assert "logprobs" in error["error"]["message"] and error["error"]["event_id"] == "e1"
        refused = {"noise_reduction": {"type": "near_field"}}
        assert _update(ws, **refused)["error"]["param"] == "session.audio.input.noise_reduction"
    assert metric(server, "asr_stream_events_rejected_total", {"reason": "unsupported"}) >= 1
    assert metric(server, "asr_stream_events_rejected_total", {"reason": "invalid"}) >= 1
    client = openai.OpenAI(base_url=server.url + "/v1", api_key="unused", max_retries=0)
    with (speech_dir / "fox.wav").open("rb") as audio, pytest.raises(openai.UnprocessableEntityError) as refusal:
        # Over HTTP, logprobs come with the json format only (as OpenAI's): never dropped silently.
        client.audio.transcriptions.create(model="whisper-1", file=audio, include=["logprobs"], response_format="text")
    assert "logprobs" in str(refusal.value)


# ---- bad frames ----------------------------------------------------------------------------------


def test_frames_that_ended_sessions_are_error_events(server: Server) -> None:
    invalid = metric(server, "asr_stream_events_rejected_total", {"reason": "invalid"})
    bad = [
        json.dumps({"type": "session.update", "session": {"audio": "x"}}),
        json.dumps({"type": "session.update", "session": {"audio": ["x"]}}),
        json.dumps({"type": "session.update", "session": {"audio": 7}}),
        "[" * 100_000 + "]" * 100_000,
        # Found by the fuzz test (tests/test_streaming_fuzz.py): JSON may spell a lone surrogate,
        # which no UTF-8 encoder takes; echoed in the error event, it ended the session.
        '{"type": "input_audio_buffer.clear", "event_id": "\\ud874x"}',
    ]
    with connect(_url(server), max_size=None) as ws:
        ws.recv(timeout=30)
        for frame in bad:
            ws.send(frame)
            answer = json.loads(ws.recv(timeout=30))
            assert answer["type"] == "error", answer
        # An empty append at 24 kHz is no audio: nothing to answer, and the session goes on.
        ws.send(json.dumps({"type": "input_audio_buffer.append", "audio": ""}))
        assert _update(ws, transcription={"language": "en"})["type"] == "session.updated"
        ws.send(json.dumps({"type": "input_audio_buffer.commit"}))
        assert json.loads(ws.recv(timeout=30))["error"]["code"] == "input_audio_buffer_commit_empty"
    assert metric(server, "asr_stream_events_rejected_total", {"reason": "invalid"}) >= invalid + 6


# ---- clients that stop reading -------------------------------------------------------------------


class RawClient:
    """A WebSocket client on a plain TCP socket: it upgrades, then sends frames and reads nothing."""

    def __init__(self, port: int, receive_buffer: int | None = None) -> None:
        self.sock = socket.socket()
        if receive_buffer:
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, receive_buffer)
        self.sock.settimeout(30)
        self.sock.connect(("127.0.0.1", port))
        key = base64.b64encode(os.urandom(16)).decode()
        self.sock.sendall(
            f"GET {PATH} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n".encode()
        )
        head = b""
        while b"\r\n\r\n" not in head:
            head += self.sock.recv(1)
        assert head.startswith(b"HTTP/1.1 101"), head

    @staticmethod
    def frame(text: str, opcode: int = 1) -> bytes:
        """One masked frame (mask 0: the payload as is)."""
        payload = text.encode()
        size = len(payload)
        if size < 126:
            length = bytes([0x80 | size])
        elif size < 1 << 16:
            length = bytes([0x80 | 126]) + size.to_bytes(2, "big")
        else:
            length = bytes([0x80 | 127]) + size.to_bytes(8, "big")
        return bytes([0x80 | opcode]) + length + b"\0\0\0\0" + payload

    def send(self, text: str, opcode: int = 1) -> bool:
        """Send one frame; False once the socket takes no more."""
        try:
            self.sock.sendall(self.frame(text, opcode))
        except OSError:
            return False
        return True

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.sock.close()


def test_clients_that_never_read_do_not_hold_their_slots(server: Server) -> None:
    # Eight clients send events whose 400 KB event_id an error used to echo, and never read.
    clients = [RawClient(server.port) for _ in range(8)]
    wait_until(lambda: metric(server, "asr_streams_active") == 8, 30, "eight streams open")
    frame = json.dumps({"type": "input_audio_buffer.commit", "event_id": "x" * 400_000})

    def flood(client: RawClient) -> None:
        client.sock.settimeout(5)
        for _ in range(30):
            if not client.send(frame):
                return

    threads = [threading.Thread(target=flood, args=(c,)) for c in clients]
    for thread in threads:
        thread.start()
    try:
        # They stopped sending: the idle timeout (3 s) ends them, though none reads its error events.
        took = wait_until(lambda: metric(server, "asr_streams_active") == 0, 40, "every slot freed", interval=0.2)
        print(f"slots freed {took:.1f} s after the flood began")
        assert metric(server, "asr_streams_closed_total", {"reason": "idle_timeout"}) >= 8
    finally:
        for thread in threads:
            thread.join()
        for client in clients:
            client.close()


def test_a_client_that_stops_reading_is_closed_as_a_slow_consumer(server: Server) -> None:
    before = metric(server, "asr_streams_closed_total", {"reason": "slow_consumer"})
    client = RawClient(server.port, receive_buffer=4096)
    # Every session.update is answered with the whole session, its prompt included.
    update = {"type": "session.update", "session": {"audio": {"input": {"transcription": {"prompt": "p" * 2000}}}}}
    frame = json.dumps(update)
    client.sock.settimeout(2)
    started = time.monotonic()
    try:
        while metric(server, "asr_streams_active") and time.monotonic() - started < 25:
            for _ in range(80):
                if not client.send(frame):
                    break
            time.sleep(0.5)  # within the events rate (200 a second): the session answers every one
        assert metric(server, "asr_streams_active") == 0, "the stream is still open"
        assert metric(server, "asr_streams_closed_total", {"reason": "slow_consumer"}) == before + 1
        print(f"closed as a slow consumer after {time.monotonic() - started:.1f} s")
    finally:
        client.close()


# ---- floods --------------------------------------------------------------------------------------


def test_the_prompt_is_bounded_as_over_http(server: Server) -> None:
    with connect(_url(server), max_size=None) as ws:
        ws.recv(timeout=30)
        refused = _update(ws, transcription={"prompt": "p" * 1_000_000})
        assert refused["type"] == "error" and refused["error"]["code"] == "invalid_transcription", refused
        assert len(json.dumps(refused)) < 2000  # not echoed
        assert _update(ws, transcription={"prompt": "p" * 2000})["type"] == "session.updated"


def test_a_commit_flood_queues_a_few_turns_not_minutes_of_work(server: Server, tmp_path: Path) -> None:
    tenth = _pcm(SPOKEN, tmp_path, 24_000)[48_000 : 48_000 + 4800]  # 0.1 s of speech
    limit = 8  # ASR_STREAM_MAX_PENDING_TURNS
    append = json.dumps({"type": "input_audio_buffer.append", "audio": base64.b64encode(tenth).decode()})
    commit = json.dumps({"type": "input_audio_buffer.commit"})
    outstanding, worst, refusals = 0, 0, set()
    with connect(_url(server)) as ws:
        ws.recv(timeout=30)
        _update(ws, turn_detection=None, transcription={"language": "en"})

        def flood() -> None:
            started = time.monotonic()
            for _ in range(3000):
                if time.monotonic() - started > 5:
                    return
                ws.send(append)
                ws.send(commit)

        sender = threading.Thread(target=flood)
        sender.start()
        deadline = time.monotonic() + 60
        while (sender.is_alive() or outstanding) and time.monotonic() < deadline:
            try:
                event = json.loads(ws.recv(timeout=1))
            except TimeoutError:
                continue
            except ConnectionClosed:  # idle once the flood is over: turns still waiting are dropped
                break
            kind = event["type"]
            outstanding += kind == "input_audio_buffer.committed"
            outstanding -= kind.endswith(("transcription.completed", "transcription.failed"))
            worst = max(worst, outstanding)
            if kind == "error":
                refusals.add(event["error"]["code"])
        sender.join()
    print(f"at most {worst} turns outstanding; refusals: {sorted(refusals)}")
    assert worst <= limit
    assert refusals & {"too_many_pending_turns", "rate_limit_exceeded"}
    # Nothing is left running for the stream that left.
    wait_until(lambda: metric(server, "asr_workers_busy") == 0, 15, "the workers idle")


def test_a_flood_of_tiny_appends_is_refused_at_the_door(server: Server) -> None:
    before = metric(server, "asr_stream_events_rejected_total", {"reason": "rate_limited"})
    frame = json.dumps({"type": "input_audio_buffer.append", "audio": base64.b64encode(b"\0\0").decode()})
    sent = 0
    with connect(_url(server)) as ws:
        ws.recv(timeout=30)
        started = time.monotonic()
        for _ in range(50_000):
            ws.send(frame)
            sent += 1
        elapsed = time.monotonic() - started
        # Read what came back meanwhile, so the session stays open until the count is in.
        wait_until(
            lambda: (
                metric(server, "asr_stream_events_rejected_total", {"reason": "rate_limited"}) - before
                >= sent - 200 * (elapsed + 5) - 200
            ),
            30,
            "the appends past 200 per second refused",
        )
    print(f"{sent} appends in {elapsed:.1f} s")


def test_a_client_that_leaves_has_its_backlog_dropped_at_once(server: Server) -> None:
    client = RawClient(server.port)
    # 100,000 appends of one sample each, then a clean close: the client has left, but its frames
    # are still on their way, in the sockets' buffers.
    append = json.dumps({"type": "input_audio_buffer.append", "audio": base64.b64encode(b"\0\0").decode()})
    burst = RawClient.frame(append) * 100_000 + RawClient.frame("\x03\xe8", opcode=8)
    drained = threading.Event()

    def drain() -> None:  # reads what the server says, so that leaving is a clean close, not a reset
        client.sock.settimeout(1)
        while not drained.is_set():
            try:
                if not client.sock.recv(1 << 16):
                    return
            except TimeoutError:
                continue
            except OSError:
                return

    reader = threading.Thread(target=drain)
    reader.start()
    try:
        client.sock.settimeout(120)
        client.sock.sendall(burst)
        took = wait_until(lambda: metric(server, "asr_streams_active") == 0, 90, "the slot freed", interval=0.05)
        print(f"slot freed {took:.2f} s after the client left")
        assert took < 5
    finally:
        drained.set()
        reader.join()
        client.close()


def test_draining_finishes_the_pending_turn_then_closes_with_1012(tmp_path: Path) -> None:
    pcm = _pcm(SPOKEN, tmp_path, 24_000)
    with serve({"ASR_SHUTDOWN_GRACE_SECONDS": "20"}, tmp_path) as own, connect(_url(own)) as ws:
        ws.recv(timeout=30)
        _update(ws, turn_detection=None, transcription={"language": "en"})
        _append(ws, pcm)
        ws.send(json.dumps({"type": "input_audio_buffer.commit"}))
        _events_until(ws, "input_audio_buffer.committed")
        os.kill(own.process.pid, signal.SIGTERM)
        events: list[dict[str, Any]] = []
        code = None
        while code is None:
            try:
                events.append(json.loads(ws.recv(timeout=60)))
            except ConnectionClosed as closed:
                code = closed.rcvd.code if closed.rcvd is not None else -1
        kinds = [e["type"] for e in events]
        # The turn committed before the signal is transcribed; then the client is told why it ends.
        assert "conversation.item.input_audio_transcription.completed" in kinds, kinds
        assert events[-1]["type"] == "error" and events[-1]["error"]["code"] == "shutting_down"
        assert code == 1012
