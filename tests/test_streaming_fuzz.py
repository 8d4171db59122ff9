"""A fuzz run over Realtime WebSocket frames against a real server (Whisper tiny.en).

Random and malformed events: not JSON, JSON of every shape and depth, known event types with
fields of the wrong type, size or nesting, unknown fields, base64 that is not, or is odd, empty or
huge, session updates mixing valid and invalid settings, binary frames. After each input a probe
event (an unknown type with a known event_id) must come back as its `error` event, with only
server events of the protocol before it. A failure is anything else: a close, a frame that is not
a server event, the server gone, or a traceback in its log. The count of inputs and failures is
printed; the goal, asserted, is no failure.
"""

from __future__ import annotations

import base64
import contextlib
import json
import random
import string
from collections import Counter
from typing import TYPE_CHECKING, Any

import httpx
import pytest
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import ClientConnection, connect

from tests.conftest import Server, serve

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator

pytestmark = pytest.mark.slow
INPUTS = 5000
PER_CONNECTION = 150
SEED = 20
SERVER_EVENTS = {
    "error",
    "session.created",
    "session.updated",
    "input_audio_buffer.speech_started",
    "input_audio_buffer.speech_stopped",
    "input_audio_buffer.committed",
    "input_audio_buffer.cleared",
    "conversation.item.input_audio_transcription.delta",
    "conversation.item.input_audio_transcription.completed",
    "conversation.item.input_audio_transcription.failed",
}
TYPES = ["session.update", "input_audio_buffer.append", "input_audio_buffer.commit", "input_audio_buffer.clear"]


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    # Rates high enough that the fuzz reaches the parser and the session, not only the rate limits.
    env = {
        "ASR_STREAM_MAX_EVENTS_PER_SECOND": "100000",
        "ASR_STREAM_MAX_AUDIO_PER_SECOND": "1000",
        "ASR_STREAM_AUDIO_BURST_SECONDS": "100000",
        "ASR_STREAM_MAX_FRAME_BYTES": "262144",
    }
    with serve(env, tmp_path_factory.mktemp("stream-fuzz")) as server:
        yield server


class Fuzz:
    """Seeded generators of frames: each returns the text (or bytes) of one frame."""

    def __init__(self, seed: int) -> None:
        self.rng = random.Random(seed)

    def value(self, depth: int = 0) -> Any:
        r = self.rng
        kinds: list[Callable[[], Any]] = [
            lambda: None,
            lambda: r.choice([True, False]),
            lambda: r.randint(-(2**70), 2**70),
            lambda: r.choice([0, 1, -1, 16000, 24000, 8000, 0.5, 1e308, -1e-308, 2**63]),
            lambda: r.uniform(-1e6, 1e6),
            self.text,
            lambda: [self.value(depth + 1) for _ in range(r.randint(0, 4))] if depth < 6 else [],
            lambda: {self.text(): self.value(depth + 1) for _ in range(r.randint(0, 4))} if depth < 6 else {},
        ]
        return r.choice(kinds)()

    def text(self) -> str:
        r = self.rng
        choice = r.random()
        if choice < 0.3:
            return r.choice(["", "x", "audio/pcm", "server_vad", "semantic_vad", "en", "whisper-1", "null", "\0"])
        if choice < 0.6:
            return "".join(r.choice(string.printable) for _ in range(r.randint(0, 40)))
        if choice < 0.8:
            return (
                "".join(chr(r.randint(0x80, 0x2FFFF)) for _ in range(r.randint(1, 20)))
                .encode("utf-8", "replace")
                .decode("utf-8", "replace")
            )
        return r.choice(["x", "é", "🙂"]) * r.choice([300, 3000, 70_000])

    def base64(self) -> str:
        r = self.rng
        raw = bytes(r.getrandbits(8) for _ in range(r.choice([0, 1, 2, 3, 7, 160, 4801, 32_000])))
        encoded = base64.b64encode(raw).decode()
        mutation = r.random()
        if mutation < 0.5:
            return encoded
        if mutation < 0.6:
            return encoded.rstrip("=")
        if mutation < 0.7:
            return encoded + "=" * r.randint(1, 3)
        if mutation < 0.8:
            return base64.urlsafe_b64encode(raw).decode().replace("A", "-")
        if mutation < 0.9:
            return " ".join(encoded[i : i + 4] for i in range(0, len(encoded), 4))
        return "A" * r.choice([1, 5, 350_000, 400_000])  # past the frame limit at the top

    def session(self) -> dict[str, Any]:
        r = self.rng
        audio_input: dict[str, Any] = {}
        if r.random() < 0.5:
            audio_input["format"] = r.choice(
                [
                    {"type": "audio/pcm", "rate": r.choice([24000, 16000, 8000, 0, "24000", None])},
                    {"type": r.choice(["audio/pcmu", "audio/pcma", "audio/mp3", "", None])},
                    {"type": "audio/pcmu", "rate": r.choice([8000, 16000])},
                    self.value(),
                ]
            )
        if r.random() < 0.5:
            transcription = {
                k: self.value() if r.random() < 0.3 else v
                for k, v in {
                    "model": r.choice(["whisper-1", "gpt-realtime-whisper", "gpt-live-transcribe", "x" * 300]),
                    "language": r.choice(["en", "de", "EN", "english", "", "x" * 40]),
                    "prompt": r.choice(["", "Zeus", "p" * 2001]),
                }.items()
                if r.random() < 0.6
            }
            audio_input["transcription"] = transcription if r.random() < 0.9 else self.value()
        if r.random() < 0.5:
            audio_input["turn_detection"] = r.choice(
                [
                    None,
                    {"type": "server_vad", "threshold": r.choice([0.5, 0.9, -1, 2, "x"])},
                    {"type": "server_vad", "silence_duration_ms": r.choice([100, 50, 5000, 10**9, 500.5])},
                    {"type": "semantic_vad", "eagerness": r.choice(["low", "medium", "high", "auto", "x", 1])},
                    {"type": "server_vad", "create_response": r.choice([True, False]), "idle_timeout_ms": 5},
                    self.value(),
                ]
            )
        if r.random() < 0.2:
            audio_input["noise_reduction"] = r.choice([None, {"type": "near_field"}, self.value()])
        session: dict[str, Any] = {"type": "transcription"} if r.random() < 0.8 else {"type": self.value()}
        session["audio"] = {"input": audio_input} if r.random() < 0.85 else self.value()
        if r.random() < 0.1:
            session["include"] = r.choice([[], ["item.input_audio_transcription.logprobs"], self.value()])
        if r.random() < 0.1:
            session[self.text()] = self.value()
        return session

    def event(self) -> dict[str, Any]:
        r = self.rng
        kind = r.choice([*TYPES, *TYPES, "response.create", self.text()])
        event: dict[str, Any] = {"type": kind if r.random() < 0.95 else self.value()}
        if r.random() < 0.3:
            event["event_id"] = r.choice([self.text(), self.value(), "e" * r.choice([10, 256, 257, 400_000])])
        if kind == "session.update":
            event["session"] = self.session() if r.random() < 0.85 else self.value()
        elif kind == "input_audio_buffer.append":
            event["audio"] = self.base64() if r.random() < 0.85 else self.value()
        if r.random() < 0.1:
            event[self.text()] = self.value()
        return event

    def frame(self) -> str | bytes:
        r = self.rng
        choice = r.random()
        if choice < 0.6:
            return json.dumps(self.event(), ensure_ascii=r.random() < 0.5)
        if choice < 0.7:
            return json.dumps(self.value())
        if choice < 0.75:  # deep nesting, in every container
            depth = r.choice([100, 1000, 100_000])
            opener, closer = r.choice([("[", "]"), ('{"a":', "}"), ('{"type":"session.update","session":', "}")])
            return opener * depth + "1" + closer * depth
        if choice < 0.85:  # broken JSON
            text = json.dumps(self.event())
            cut = r.randint(0, len(text))
            return text[:cut] + r.choice(["", "}", ",", "\\", '"']) + text[cut + 1 :]
        if choice < 0.9:
            return bytes(r.getrandbits(8) for _ in range(r.randint(0, 500)))
        return self.text()


def _probe(ws: ClientConnection, number: int, seen: Counter[str]) -> str | None:
    """Send the probe and read up to its answer (counting the answers in `seen`); return what went
    wrong, or None."""
    probe_id = f"probe-{number}"
    try:
        ws.send(json.dumps({"type": "fuzz.probe", "event_id": probe_id}))
    except ConnectionClosed as closed:
        return f"closed: {closed}"
    while True:
        try:
            event = json.loads(ws.recv(timeout=60))
        except ConnectionClosed as closed:
            return f"closed: {closed}"
        except TimeoutError:
            return "no answer to the probe within 60 s"
        except ValueError:
            return "a frame that is not JSON"
        if not isinstance(event, dict) or event.get("type") not in SERVER_EVENTS:
            return f"not a server event: {str(event)[:200]}"
        if event["type"] == "error" and event["error"].get("event_id") == probe_id:
            return None if event["error"]["code"] == "unknown_event" else f"probe answered {event}"
        seen[event["error"]["code"] if event["type"] == "error" else event["type"]] += 1
        if event["type"] == "error" and event["error"]["code"] == "server_error":
            return f"server error: {event['error']}"


def test_fuzzed_frames_get_error_events_and_sessions_go_on(server: Server) -> None:
    fuzz = Fuzz(SEED)
    url = server.url.replace("http", "ws") + "/v1/realtime?intent=transcription"
    failures: list[str] = []
    seen: Counter[str] = Counter()
    sent = 0
    while sent < INPUTS:
        ws = connect(url, max_size=None)
        try:
            assert json.loads(ws.recv(timeout=30))["type"] == "session.created"
            for _ in range(PER_CONNECTION):
                frame = fuzz.frame()
                sent += 1
                try:
                    ws.send(frame)
                except ConnectionClosed as closed:
                    failures.append(f"input {sent}: closed on send: {closed}")
                    break
                problem = _probe(ws, sent, seen)
                if problem is not None:
                    failures.append(f"input {sent} ({str(frame)[:120]!r}): {problem}")
                    if problem.startswith("closed"):
                        break
        finally:
            with contextlib.suppress(ConnectionClosed):
                ws.close()
    assert httpx.get(server.url + "/healthz", timeout=10).status_code == 200
    log = server.log()
    tracebacks = log.count("Traceback")
    print(f"fuzz: {sent} inputs, {len(failures)} failures, {tracebacks} tracebacks in the server log")
    print("answers:", dict(seen.most_common()))
    for failure in failures[:20]:
        print(" ", failure)
    assert not failures
    assert tracebacks == 0 and "Exception in ASGI application" not in log, log[-5000:]
