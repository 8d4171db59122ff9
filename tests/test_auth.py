"""Every route but the public probes refuses a missing or wrong key: a walk over app.routes.

New routes are covered without editing this file: the walk finds them, sends each method without
a key, with a wrong one, with a Realtime client secret (which opens only a WebSocket session) and
(for the admin API) with a client key, and expects a refusal before the handler runs. HTTP
answers 401 in the JSON error shape; the Realtime WebSocket an `error` event with code
`unauthorized` and close 1008. Every kind of key opens the client routes: ASR_API_KEY, the named
keys of ASR_API_KEYS, ASR_ADMIN_TOKEN, and on a WebSocket each as the subprotocol browsers send. A
second check reads each route's dependency tree: auth is part of its signature (ApiKeyDep,
WorkKeyDep or AdminDep), not a line in its body.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import pytest
from fastapi.routing import APIRoute, APIWebSocketRoute
from starlette.testclient import TestClient
from starlette.websockets import WebSocketDisconnect

from service.api.deps import KEY_SUBPROTOCOL, admin, api_caller
from service.api.health import PUBLIC_ROUTES
from service.app import create_app
from service.keys import hash_key, key_table
from service.metrics import Metrics
from service.ui.router import UI_ROUTES
from tests.conftest import make_settings
from tests.fakes import FakeBackend, factory

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator
    from pathlib import Path

    from fastapi.dependencies.models import Dependant

KEY, ADMIN_TOKEN = "client-key", "admin-token"
NAMED = {"alice": "asr_alice-key", "bob": "asr_bob-key"}
# FastAPI's own documentation routes: they describe the API and hold no data.
DOCS_ROUTES = frozenset({"/openapi.json", "/docs", "/docs/oauth2-redirect", "/redoc"})
# The web console's shell and static files (service/ui): the same HTML and scripts for everyone,
# holding no data; every datum its pages show comes from the API routes below, with the key.
OPEN = PUBLIC_ROUTES | DOCS_ROUTES | UI_ROUTES


@pytest.fixture(scope="module")
def client(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TestClient]:
    tmp = tmp_path_factory.mktemp("auth")
    keys = tmp / "keys.toml"
    keys.write_text("".join(key_table(name, hash_key(key)) for name, key in NAMED.items()))
    server = {"api_key": KEY, "api_keys": keys, "admin_token": ADMIN_TOKEN}
    settings = make_settings(tmp, server=server, quality={"sample_rate": 1.0})
    app = create_app(settings, backend_factory=factory(FakeBackend()), metrics=Metrics())
    with TestClient(app, base_url="http://asr.test") as test_client:
        yield test_client


def _path(template: str) -> str:
    # Path parameters get a well-formed id, so that a handler that ran would find "no such item"
    # (404), not a malformed path: only auth can answer 401 first.
    return re.sub(r"\{[^}]+\}", "0" * 32, template)


def _calls(dependant: Dependant) -> Iterator[Callable[..., Any]]:
    for dep in dependant.dependencies:
        if dep.call is not None:
            yield dep.call
        yield from _calls(dep)


@dataclass(frozen=True)
class Walked:
    """One route as served: its full path (router prefixes included), methods and dependencies."""

    path: str
    methods: frozenset[str]
    websocket: bool
    dependant: Dependant


def _routes(client: TestClient) -> list[Walked]:
    """Every HTTP and WebSocket route of the app, included routers flattened."""
    app: Any = client.app
    try:  # FastAPI 0.16x keeps included routers as branches; iter_route_contexts flattens them
        from fastapi.routing import iter_route_contexts

        contexts: list[Any] = list(iter_route_contexts(app.routes))
        pairs = [(c.original_route, c) for c in contexts]
    except ImportError:  # older FastAPI copies the routes into the app
        pairs = [(r, r) for r in app.routes]
    walked = []
    for original, served in pairs:
        if isinstance(original, APIRoute | APIWebSocketRoute):
            methods = frozenset(served.methods or ()) if isinstance(original, APIRoute) else frozenset()
            walked.append(Walked(served.path, methods, isinstance(original, APIWebSocketRoute), served.dependant))
    return walked


def test_every_route_is_either_public_or_authenticated(client: TestClient) -> None:
    seen = set()
    for route in _routes(client):
        seen.add(route.path)
        guards = set(_calls(route.dependant)) & {api_caller, admin}
        if route.path in OPEN:
            assert not guards, f"{route.path} is public but asks for a key"
        else:
            assert guards, f"{route.path} takes none of ApiKeyDep, WorkKeyDep, AdminDep"
    # The walk saw the routes it is meant to protect (a walk over nothing would pass).
    assert {"/transcribe", "/v1/audio/transcriptions", "/v1/jobs/{job_id}", "/v1/samples", "/v1/realtime"} <= seen


@pytest.mark.parametrize(
    "headers",
    [{}, {"Authorization": "Bearer wrong"}, {"Authorization": f"Basic {KEY}"}],
    ids=["none", "wrong", "not-bearer"],
)
def test_http_routes_refuse_without_the_key(client: TestClient, headers: dict[str, str]) -> None:
    checked = 0
    for route in _routes(client):
        if route.websocket or route.path in OPEN:
            continue
        for method in sorted(route.methods - {"HEAD"}):
            r = client.request(method, _path(route.path), headers=headers)
            assert r.status_code == 401, (method, route.path, r.status_code, r.text)
            assert r.json()["error"]["code"] == "unauthorized"
            assert r.headers["www-authenticate"] == "Bearer"
            checked += 1
    assert checked >= 15


def test_the_client_key_does_not_open_the_admin_api(client: TestClient) -> None:
    admin_routes = [r for r in _routes(client) if admin in set(_calls(r.dependant))]
    assert admin_routes
    for route in admin_routes:
        for method in sorted(route.methods - {"HEAD"}):
            r = client.request(method, _path(route.path), headers={"Authorization": f"Bearer {KEY}"})
            assert r.status_code == 401, (method, route.path, r.status_code)
        # ...while the admin token is let through to the handler (which finds nothing).
        for method in sorted(route.methods - {"HEAD"}):
            body = {"text": "a reference"} if method == "PUT" else None
            r = client.request(method, _path(route.path), headers={"Authorization": f"Bearer {ADMIN_TOKEN}"}, json=body)
            assert r.status_code != 401, (method, route.path)


def test_the_key_opens_the_client_routes(client: TestClient, speech_dir: Path) -> None:
    auth = {"Authorization": f"Bearer {KEY}"}
    with open(speech_dir / "fox.wav", "rb") as fh:
        r = client.post("/transcribe", files={"file": fh}, headers=auth)
    assert r.status_code == 200, r.text
    assert client.get("/v1/models", headers=auth).json()["data"][0]["id"] == "whisper-tiny.en"
    assert client.get(f"/v1/jobs/{'0' * 32}", headers=auth).status_code == 404


def test_public_probes_answer_without_a_key(client: TestClient) -> None:
    for path in sorted(PUBLIC_ROUTES):
        assert client.get(path).status_code == 200, path


@pytest.mark.parametrize("headers", [{}, {"Authorization": "Bearer wrong"}], ids=["none", "wrong"])
def test_websocket_routes_refuse_without_the_key(client: TestClient, headers: dict[str, str]) -> None:
    routes = [r for r in _routes(client) if r.websocket]
    assert routes
    for route in routes:
        with client.websocket_connect(f"{route.path}?intent=transcription", headers=headers) as ws:
            event = ws.receive_json()
            assert event["type"] == "error" and event["error"]["code"] == "unauthorized", event
            with pytest.raises(WebSocketDisconnect) as closed:
                ws.receive_json()
        assert closed.value.code == 1008


def test_websocket_with_the_key_opens_a_session(client: TestClient) -> None:
    auth = {"Authorization": f"Bearer {KEY}"}
    with client.websocket_connect("/v1/realtime?intent=transcription", headers=auth) as ws:
        assert ws.receive_json()["type"] == "session.created"


def _client_secret(client: TestClient) -> str:
    r = client.post("/v1/realtime/client_secrets", json={}, headers={"Authorization": f"Bearer {NAMED['alice']}"})
    assert r.status_code == 200, r.text
    value: str = r.json()["value"]
    return value


@pytest.mark.parametrize("token", [KEY, *NAMED.values(), ADMIN_TOKEN], ids=["default", *NAMED, "admin"])
def test_every_kind_of_key_opens_the_client_routes(client: TestClient, speech_dir: Path, token: str) -> None:
    auth = {"Authorization": f"Bearer {token}"}
    with open(speech_dir / "fox.wav", "rb") as fh:
        assert client.post("/transcribe", files={"file": fh}, headers=auth).status_code == 200
    assert client.get("/v1/jobs", headers=auth).status_code == 200
    with client.websocket_connect("/v1/realtime?intent=transcription", headers=auth) as ws:
        assert ws.receive_json()["type"] == "session.created"


def test_http_routes_refuse_a_client_secret(client: TestClient) -> None:
    secret = _client_secret(client)
    checked = 0
    for route in _routes(client):
        if route.websocket or route.path in OPEN:
            continue
        for method in sorted(route.methods - {"HEAD"}):
            r = client.request(method, _path(route.path), headers={"Authorization": f"Bearer {secret}"})
            assert r.status_code == 401, (method, route.path, r.status_code, r.text)
            checked += 1
    assert checked >= 15
    # Refused over HTTP, never spent there: it still opens its one session.
    with client.websocket_connect("/v1/realtime", headers={"Authorization": f"Bearer {secret}"}) as ws:
        assert ws.receive_json()["type"] == "session.created"


@pytest.mark.parametrize("token", [KEY, NAMED["bob"], "client-secret"], ids=["default", "named", "client-secret"])
def test_websocket_routes_take_the_key_as_browsers_send_it(client: TestClient, token: str) -> None:
    token = _client_secret(client) if token == "client-secret" else token
    routes = [r for r in _routes(client) if r.websocket]
    assert routes
    for route in routes:
        protocols = ["realtime", KEY_SUBPROTOCOL + token]
        with client.websocket_connect(f"{route.path}?intent=transcription", subprotocols=protocols) as ws:
            assert ws.accepted_subprotocol == "realtime"  # what browsers require back; never the key
            assert ws.receive_json()["type"] == "session.created"
        token = _client_secret(client) if token.startswith("ek_") else token


def test_a_wrong_subprotocol_key_is_refused_in_a_handshake_browsers_accept(client: TestClient) -> None:
    for route in (r for r in _routes(client) if r.websocket):
        protocols = ["realtime", KEY_SUBPROTOCOL + "wrong"]
        with client.websocket_connect(f"{route.path}?intent=transcription", subprotocols=protocols) as ws:
            # Accepted with "realtime", so that a browser reads the error event instead of a failed handshake.
            assert ws.accepted_subprotocol == "realtime"
            event = ws.receive_json()
            assert event["type"] == "error" and event["error"]["code"] == "unauthorized"
            with pytest.raises(WebSocketDisconnect) as closed:
                ws.receive_json()
        assert closed.value.code == 1008
