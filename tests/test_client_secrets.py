"""Realtime client secrets: minted with a key, they open one /v1/realtime session of that key, as a
bearer token or as browsers send it (the subprotocol `openai-insecure-api-key.<token>`), then
never again; they expire, open nothing over HTTP, and the key's limits apply to their session.
On the app with a fake engine, then with the official `openai` client on the real server."""

from __future__ import annotations

import base64
import json
import subprocess
import time
from typing import TYPE_CHECKING, Any

import httpx
import openai
import pytest
from starlette.testclient import TestClient
from starlette.websockets import WebSocketDisconnect
from websockets.sync.client import connect

from service.api.deps import KEY_SUBPROTOCOL
from service.app import create_app
from service.metrics import Metrics
from tests.conftest import make_settings, serve, wait_until
from tests.fakes import FakeBackend, factory
from tests.test_keys import ADMIN_TOKEN, KEYS, bearer, key_settings, write_keys

if TYPE_CHECKING:
    from collections.abc import Iterator
    from pathlib import Path

    from tests.conftest import Server

REALTIME = "/v1/realtime?intent=transcription"
GERMAN = {"type": "transcription", "audio": {"input": {"transcription": {"language": "de"}}}}


@pytest.fixture
def make_client(tmp_path: Path) -> Iterator[Any]:
    clients: list[TestClient] = []

    def make(settings: Any = None) -> TestClient:
        app = create_app(settings or key_settings(tmp_path), backend_factory=factory(FakeBackend()), metrics=Metrics())
        client = TestClient(app, base_url="http://asr.test").__enter__()
        clients.append(client)
        wait_until(lambda: client.get("/readyz").status_code == 200, 30, "the model loaded")
        return client

    yield make
    for client in clients:
        client.__exit__(None, None, None)


def mint(client: TestClient, key: str, **body: Any) -> dict[str, Any]:
    r = client.post("/v1/realtime/client_secrets", json=body, headers=bearer(key))
    assert r.status_code == 200, r.text
    answer: dict[str, Any] = r.json()
    return answer


def refusal(client: TestClient, path: str = REALTIME, **connect: Any) -> tuple[str, int]:
    """The error code and close code of a refused WebSocket."""
    with client.websocket_connect(path, **connect) as ws:
        event = ws.receive_json()
        assert event["type"] == "error", event
        with pytest.raises(WebSocketDisconnect) as closed:
            ws.receive_json()
    return event["error"]["code"], closed.value.code


def test_a_client_secret_opens_one_session_as_browsers_send_it(make_client: Any) -> None:
    client = make_client()
    secret = mint(client, KEYS["alice"], session=GERMAN)
    assert secret["value"].startswith("ek_") and secret["expires_at"] == pytest.approx(time.time() + 120, abs=5)
    assert secret["session"]["type"] == "transcription" and secret["session"]["id"].startswith("sess_")
    # A browser offers "realtime" beside the token; the server picks "realtime", never the token.
    protocols = ["realtime", KEY_SUBPROTOCOL + secret["value"], "openai-beta.realtime-v1"]
    usage = client.app.state.key_usage  # type: ignore[attr-defined]
    with client.websocket_connect("/v1/realtime", subprotocols=protocols) as ws:  # no ?intent: the token says
        assert ws.accepted_subprotocol == "realtime"
        assert ws.receive_json()["type"] == "session.created"
        updated = ws.receive_json()  # the configuration it was minted with, applied
        assert updated["type"] == "session.updated"
        assert updated["session"]["audio"]["input"]["transcription"]["language"] == "de"
        assert usage.in_flight("alice") == 1  # alice's session, with alice's limits
    # Used once: a second connection with it is refused, by either channel.
    assert refusal(client, subprotocols=protocols) == ("unauthorized", 1008)
    assert refusal(client, headers=bearer(secret["value"])) == ("unauthorized", 1008)


def test_a_client_secret_as_a_bearer_token_and_what_it_does_not_open(make_client: Any) -> None:
    client = make_client()
    secret = mint(client, KEYS["bob"])["value"]
    # Over HTTP a client secret is no key: not for transcription, not for minting more.
    assert client.get("/v1/models", headers=bearer(secret)).status_code == 401
    assert client.post("/v1/realtime/client_secrets", json={}, headers=bearer(secret)).status_code == 401
    with client.websocket_connect(REALTIME, headers=bearer(secret)) as ws:
        assert ws.receive_json()["type"] == "session.created"
    # A long-lived key works as a subprotocol too (OpenAI's JS client with dangerouslyAllowBrowser).
    with client.websocket_connect(REALTIME, subprotocols=["realtime", KEY_SUBPROTOCOL + KEYS["bob"]]) as ws:
        assert ws.accepted_subprotocol == "realtime"
        assert ws.receive_json()["type"] == "session.created"
    assert refusal(client, subprotocols=["realtime", KEY_SUBPROTOCOL + "asr_wrong"]) == ("unauthorized", 1008)
    assert refusal(client, subprotocols=["realtime", KEY_SUBPROTOCOL + "ek_never-minted"]) == ("unauthorized", 1008)


def test_a_client_secret_expires(tmp_path: Path, make_client: Any) -> None:
    client = make_client(key_settings(tmp_path, server={"client_secret_max_seconds": 1}))
    secret = mint(client, KEYS["alice"], expires_after={"anchor": "created_at", "seconds": 600})
    assert secret["expires_at"] <= time.time() + 2  # asked for 600 s, cut to the cap (whole seconds)
    wait_until(lambda: time.time() > secret["expires_at"] + 0.1, 5, "the secret expired")
    assert refusal(client, headers=bearer(secret["value"])) == ("unauthorized", 1008)


@pytest.mark.parametrize(
    "body",
    [
        {"expires_after": {"anchor": "created_at", "seconds": 5}},
        {"expires_after": {"anchor": "now", "seconds": 60}},
        {"session": {"type": "realtime", "model": "gpt-realtime"}},
        {"session": {"type": "transcription", "prompt": "x" * 20_000}},
        {"sesion": {}},
    ],
    ids=["too-short", "bad-anchor", "conversation-session", "huge-session", "typo"],
)
def test_a_bad_client_secret_request_is_422(make_client: Any, body: dict[str, Any]) -> None:
    r = make_client().post("/v1/realtime/client_secrets", json=body, headers=bearer(KEYS["alice"]))
    assert r.status_code == 422, r.text
    assert r.json()["error"]["code"] == "invalid_parameter"


def test_the_minting_keys_limits_apply_to_its_session(tmp_path: Path, make_client: Any, speech_dir: Path) -> None:
    client = make_client(key_settings(tmp_path, {"alice": {"max_in_flight": 1}}))
    secret = mint(client, KEYS["alice"])["value"]
    with client.websocket_connect(REALTIME, subprotocols=["realtime", KEY_SUBPROTOCOL + secret]) as ws:
        assert ws.receive_json()["type"] == "session.created"
        # Alice's one place is the stream's: her upload waits for it to end.
        with open(speech_dir / "fox.wav", "rb") as fh:
            busy = client.post("/transcribe", files={"file": fh}, headers=bearer(KEYS["alice"]))
        assert busy.status_code == 429 and busy.json()["error"]["code"] == "key_concurrency_limit"
        # And a second stream of hers, with a fresh secret, is refused before it starts.
        another = mint(client, KEYS["alice"])["value"]
        assert refusal(client, headers=bearer(another)) == ("key_concurrency_limit", 1013)


def test_client_secrets_with_keys_off(tmp_path: Path, make_client: Any) -> None:
    client = make_client(make_settings(tmp_path))
    secret = mint(client, "anything", session=GERMAN)["value"]
    with client.websocket_connect("/v1/realtime", headers=bearer(secret)) as ws:
        assert ws.receive_json()["type"] == "session.created"
        assert ws.receive_json()["session"]["audio"]["input"]["transcription"]["language"] == "de"
    # Still one session per secret: a client that shows one gets what it was minted for, once.
    assert refusal(client, headers=bearer(secret)) == ("unauthorized", 1008)


# ---- the official client, the real server ---------------------------------------------------


@pytest.fixture(scope="module")
def keyed_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    tmp = tmp_path_factory.mktemp("keyed-server")
    env = {"ASR_API_KEYS": str(write_keys(tmp / "keys.toml")), "ASR_ADMIN_TOKEN": ADMIN_TOKEN}
    with serve(env, tmp) as server:
        yield server


def _turn_audio(speech_dir: Path) -> str:
    """fox.wav as base64 PCM16 at 16 kHz (the format the secret's session names)."""
    raw = subprocess.run(
        [
            "sox",
            str(speech_dir / "fox.wav"),
            "-r",
            "16000",
            "-b",
            "16",
            "-t",
            "raw",
            "-e",
            "signed",
            "-",
            "pad",
            "0",
            "0.5",
        ],
        check=True,
        capture_output=True,
    ).stdout
    return base64.b64encode(raw).decode()


@pytest.mark.slow
def test_the_openai_client_mints_a_secret_and_a_browser_streams_with_it(keyed_server: Server, speech_dir: Path) -> None:
    backend = openai.OpenAI(base_url=keyed_server.url + "/v1", api_key=KEYS["alice"], max_retries=0)
    session = {
        "type": "transcription",
        "audio": {"input": {"format": {"type": "audio/pcm", "rate": 16000}, "turn_detection": None}},
    }
    secret = backend.realtime.client_secrets.create(
        expires_after={"anchor": "created_at", "seconds": 60}, session=session
    )
    assert secret.value.startswith("ek_") and secret.expires_at <= time.time() + 61
    assert secret.session.type == "transcription"

    # The browser: no headers on a WebSocket, the token as a subprotocol beside "realtime".
    url = keyed_server.url.replace("http", "ws") + "/v1/realtime"
    with connect(url, subprotocols=["realtime", KEY_SUBPROTOCOL + secret.value]) as ws:  # type: ignore[list-item]
        assert ws.subprotocol == "realtime"
        assert json.loads(ws.recv(timeout=30))["type"] == "session.created"
        assert json.loads(ws.recv(timeout=30))["type"] == "session.updated"  # minted with turn_detection null
        ws.send(json.dumps({"type": "input_audio_buffer.append", "audio": _turn_audio(speech_dir)}))
        ws.send(json.dumps({"type": "input_audio_buffer.commit"}))
        while (event := json.loads(ws.recv(timeout=60)))[
            "type"
        ] != "conversation.item.input_audio_transcription.completed":
            assert event["type"] != "error", event
    assert "fox" in event["transcript"].lower()
    # The turn's audio was charged to alice, the key that minted the secret.
    metrics = httpx.get(keyed_server.url + "/metrics", timeout=10).text
    charged = [line for line in metrics.splitlines() if line.startswith('asr_key_audio_seconds_total{key="alice"}')]
    assert charged and float(charged[0].split()[-1]) == pytest.approx(event["usage"]["seconds"], abs=0.01)

    # Used: the browser's second connection is refused (a 401 error event, close 1008).
    with connect(url, subprotocols=["realtime", KEY_SUBPROTOCOL + secret.value]) as ws:  # type: ignore[list-item]
        refused = json.loads(ws.recv(timeout=30))
        assert refused["error"]["code"] == "unauthorized"

    # The official client itself connects with a fresh secret as its api_key (a bearer header).
    fresh = backend.realtime.client_secrets.create(session={"type": "transcription"})
    browser = openai.OpenAI(base_url=keyed_server.url + "/v1", api_key=fresh.value, max_retries=0)
    with browser.realtime.connect(extra_query={"intent": "transcription"}) as conn:
        assert conn.recv().type == "session.created"
    # An ordinary key over HTTP still works; the secret does not.
    assert backend.models.list().data
    with pytest.raises(openai.AuthenticationError):
        browser.models.list()
    # Without a key at all, minting is refused.
    stranger = openai.OpenAI(base_url=keyed_server.url + "/v1", api_key="asr_wrong", max_retries=0)
    with pytest.raises(openai.AuthenticationError):
        stranger.realtime.client_secrets.create()
