"""Every route but the public probes refuses a missing or wrong key: a walk over app.routes.

New routes are covered without editing this file: the walk finds them, sends each method without
a key, with a wrong one and (for the admin API) with the client key, and expects a refusal
before the handler runs. HTTP answers 401 in the JSON error shape; the Realtime WebSocket an
`error` event with code `unauthorized` and close 1008. A second check reads each route's
dependency tree: auth is part of its signature (ApiKeyDep or AdminDep), not a line in its body.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import pytest
from fastapi.routing import APIRoute, APIWebSocketRoute
from starlette.testclient import TestClient
from starlette.websockets import WebSocketDisconnect

from service.api.deps import admin, api_caller
from service.api.health import PUBLIC_ROUTES
from service.app import create_app
from service.metrics import Metrics
from service.ui.router import UI_ROUTES
from tests.conftest import make_settings
from tests.fakes import FakeBackend, factory

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator
    from pathlib import Path

    from fastapi.dependencies.models import Dependant

KEY, ADMIN_TOKEN = "client-key", "admin-token"
# FastAPI's own documentation routes: they describe the API and hold no data.
DOCS_ROUTES = frozenset({"/openapi.json", "/docs", "/docs/oauth2-redirect", "/redoc"})
# The web console's shell and static files (service/ui): the same HTML and scripts for everyone,
# holding no data; every datum its pages show comes from the API routes below, with the key.
OPEN = PUBLIC_ROUTES | DOCS_ROUTES | UI_ROUTES


@pytest.fixture(scope="module")
def client(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TestClient]:
    tmp = tmp_path_factory.mktemp("auth")
    settings = make_settings(tmp, server={"api_key": KEY, "admin_token": ADMIN_TOKEN}, quality={"sample_rate": 1.0})
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
            assert guards, f"{route.path} takes neither ApiKeyDep nor AdminDep"
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
    assert client.get("/v1/models", headers=auth).json()["data"][0]["id"] == "fake-model"
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
