"""Where a job's webhook may go, and what a bad one can do. URLs are parsed strictly when the job
is submitted (422); private, loopback and link-local addresses are refused, on the address the
name resolves to when the webhook is sent; the connection goes to that checked address (the Host
header and TLS server name stay the URL's); clients see coarse error classes; and one delivery
that fails in any way is that delivery's failure, never the runner's."""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import ssl
import subprocess
import threading
from http.server import ThreadingHTTPServer
from typing import TYPE_CHECKING, Any

import httpx
import pytest

from tests.conftest import running_app, until
from tests.fakes import FakeBackend, factory
from tests.test_jobs import Hook, job_settings, wait_status

if TYPE_CHECKING:
    from collections.abc import Iterator
    from pathlib import Path

    from service.jobs.destinations import IPAddress

pytestmark = pytest.mark.anyio

# The receivers in these tests listen on 127.0.0.1: they must be allowed explicitly.
LOOPBACK = {"allowed_networks": "127.0.0.0/8"}

# Each was accepted (202) before, then stopped every webhook (three of them), answered 500 (the
# unclosed bracket) or reached an address on the service's own network.
REFUSED_AT_SUBMIT = [
    "http://0177.0.0.1:1/",  # octal: 127.0.0.1 to the resolver, an error to httpx
    "http://h:abc/",
    "http://xn--zz/",
    "http://[::1",
    "http://127.0.0.1:{port}/done",
    "http://169.254.169.254/latest/meta-data/",
    "http://2130706433/",  # 127.0.0.1 as one number
    "http://127.1/",
    "http://0x7f.0.0.1/",
    "http://[::ffff:127.0.0.1]:{port}/done",
    "http://[::1]:{port}/done",
    "http://10.1.2.3/",
    "http://[fe80::1%25eth0]/",
    "http://0.0.0.0:{port}/",
    "http://hooks.example.org@127.0.0.1:{port}/done",  # the host is 127.0.0.1
    "http://user:pw@hooks.example.org/",
    "http://hooks.example.org:0/",
    "http://hooks.exa mple.org/",
    "http://hooks.example.org\t/x",
    "http://-hooks.example.org/",
    "ftp://hooks.example.org/",
    "http:///nohost",
]


@pytest.fixture
def fox(speech_dir: Path) -> bytes:
    return (speech_dir / "fox.wav").read_bytes()


@pytest.fixture
def hook() -> Iterator[Hook]:
    server = Hook([])
    yield server
    server.server.shutdown()


async def test_webhook_urls_are_parsed_strictly_and_private_addresses_refused_at_submit(
    tmp_path: Path, fox: bytes, hook: Hook
) -> None:
    port = hook.server.server_address[1]
    async with running_app(job_settings(tmp_path), factory(FakeBackend())) as h:
        for template in REFUSED_AT_SUBMIT:
            url = template.format(port=port)
            r = await h.client.post("/v1/jobs", files={"file": ("fox.wav", fox)}, data={"webhook_url": url})
            assert r.status_code == 422, (url, r.status_code, r.text)
            error = r.json()["error"]
            assert error["param"] == "webhook_url" and error["code"] == "invalid_parameter", (url, error)
        ok = await h.client.post(
            "/v1/jobs", files={"file": ("fox.wav", fox)}, data={"webhook_url": "https://Hooks.Example.org:8443/asr?x=1"}
        )
        assert ok.status_code == 202, ok.text
        assert [j["id"] for j in (await h.client.get("/v1/jobs")).json()["items"]] == [ok.json()["id"]]
    assert hook.calls == []


async def test_a_name_that_resolves_to_loopback_is_refused_when_the_webhook_is_sent(
    tmp_path: Path, fox: bytes, hook: Hook
) -> None:
    """`localhost` is a name, so it passes the submit check; what it resolves to is refused."""
    url = f"http://localhost:{hook.server.server_address[1]}/done"
    async with running_app(job_settings(tmp_path), factory(FakeBackend())) as h:
        r = await h.client.post("/v1/jobs", files={"file": ("fox.wav", fox)}, data={"webhook_url": url})
        assert r.status_code == 202, r.text
        job = await wait_webhook(h, r.json()["id"], {"failed"})
        assert job["webhook"] == {"state": "failed", "attempts": 1, "error": "refused_address"}
        assert h.sample("asr_webhook_deliveries_total", {"outcome": "failed"}) == 1
    assert hook.calls == []  # a refused address is never connected to, and not retried


async def test_clients_see_coarse_webhook_errors_only(
    tmp_path: Path, fox: bytes, caplog: pytest.LogCaptureFixture
) -> None:
    """An open port that answers 418 and a closed one: classes in the job view, details in the log."""
    teapot = Hook([418])
    closed = Hook([])
    closed_url = closed.url
    closed.server.shutdown()
    closed.server.server_close()
    caplog.set_level(logging.INFO, logger="service.jobs")
    settings = job_settings(tmp_path, webhook={**LOOPBACK, "max_attempts": 1})
    try:
        async with running_app(settings, factory(FakeBackend())) as h:
            views = []
            for url in (teapot.url, closed_url):
                r = await h.client.post("/v1/jobs", files={"file": ("fox.wav", fox)}, data={"webhook_url": url})
                assert r.status_code == 202, r.text
                views.append(await wait_webhook(h, r.json()["id"], {"failed"}))
    finally:
        teapot.server.shutdown()
    assert [v["webhook"]["error"] for v in views] == ["http_error", "connection_failed"]
    logged = "\n".join(rec.getMessage() for rec in caplog.records)
    assert "418" in logged and "ConnectError" in logged


async def test_one_broken_webhook_never_stops_the_others_the_sweep_or_the_gauges(
    tmp_path: Path, fox: bytes, hook: Hook, caplog: pytest.LogCaptureFixture
) -> None:
    """Rows a previous release let in (these URLs are refused at submit now) fail alone, at once."""
    broken = ["http://0177.0.0.1:1/", "http://h:abc/", "http://xn--zz/"]
    caplog.set_level(logging.INFO)
    async with running_app(job_settings(tmp_path, webhook=LOOPBACK), factory(FakeBackend())) as h:
        store = h.app.state.jobs.store
        old = []
        for i, url in enumerate(broken):
            spooled = tmp_path / f"old-{i}.wav"
            spooled.write_bytes(fox)
            old.append(store.create(spooled, {}, "old.wav", url).id)
            h.app.state.jobs.wake()
        for job_id in old:
            view = await wait_webhook(h, job_id, {"failed"}, timeout=15)
            assert view["status"] == "succeeded" and view["webhook"]["error"] == "invalid_url", view
            assert view["webhook"]["attempts"] == 1
        r = await h.client.post("/v1/jobs", files={"file": ("fox.wav", fox)}, data={"webhook_url": hook.url})
        assert r.status_code == 202
        good = await wait_webhook(h, r.json()["id"], {"delivered"})
        assert good["webhook"] == {"state": "delivered", "attempts": 1, "error": None}
        assert len(hook.calls) == 1
        # The runner's cycle goes on: the gauges follow the table (nothing left running).
        await until(lambda: h.sample("asr_jobs", {"state": "succeeded"}) == 4, what="the four jobs counted")
        assert h.sample("asr_jobs", {"state": "running"}) == 0
        assert h.sample("asr_webhook_deliveries_total", {"outcome": "failed"}) == 3
    assert not [rec.getMessage() for rec in caplog.records if "runner" in rec.getMessage()]
    assert not [rec.getMessage() for rec in caplog.records if rec.exc_info], "no traceback for a bad URL"


async def wait_webhook(h: Any, job_id: str, states: set[str], timeout: float = 30) -> dict[str, Any]:
    """The job's view once it has ended and its webhook is in one of `states`."""
    async with asyncio.timeout(timeout):
        while True:
            view = await wait_status(h, job_id, {"succeeded", "failed", "cancelled"}, timeout)
            if view["webhook"] is not None and view["webhook"]["state"] in states:
                return view
            await asyncio.sleep(0.05)


def test_the_address_policy_sees_through_embedded_ipv4_and_takes_explicit_allowances() -> None:
    from pydantic import ValidationError

    from service.config import WebhookSettings
    from service.jobs.destinations import AddressPolicy

    def verdicts(policy: AddressPolicy, addresses: list[str]) -> list[bool]:
        return [policy.allows(ipaddress.ip_address(a)) for a in addresses]

    refused = ["127.0.0.1", "10.0.0.1", "172.16.5.4", "192.168.1.1", "169.254.169.254", "100.64.0.1", "0.0.0.0"]
    refused += ["224.0.0.1", "::1", "fe80::1", "fc00::1", "::ffff:127.0.0.1", "64:ff9b::a9fe:a9fe", "2002:7f00:1::"]
    public = ["93.184.216.34", "2606:2800:220:1:248:1893:25c8:1946", "::ffff:93.184.216.34"]
    default = AddressPolicy.of(allow_private=False, networks="")
    assert verdicts(default, refused) == [False] * len(refused)
    assert verdicts(default, public) == [True] * len(public)
    loopback = AddressPolicy.of(allow_private=False, networks="127.0.0.0/8, 10.1.0.0/16")
    assert verdicts(loopback, ["127.0.0.1", "::ffff:127.0.0.1", "10.1.2.3", "10.2.0.1", "::1"]) == [
        True,
        True,
        True,
        False,
        False,
    ]
    assert verdicts(AddressPolicy.of(allow_private=True, networks=""), refused) == [True] * len(refused)
    with pytest.raises(ValidationError, match="allowed_networks"):
        WebhookSettings(allowed_networks="10.0.0.0/33")


# ---- the transport: resolve once, check, connect to what was checked ---------------------------


def resolver(answers: dict[str, list[str]], calls: list[str]) -> Any:
    """A resolver with fixed answers (a DNS server that rebinds cannot run here), counting its calls."""

    async def resolve(host: str, port: int) -> list[IPAddress]:
        calls.append(host)
        return [ipaddress.ip_address(a) for a in answers[host]]

    return resolve


async def test_the_connection_goes_to_the_checked_address_with_the_urls_host(hook: Hook) -> None:
    from service.jobs.destinations import AddressPolicy
    from service.jobs.transport import PinnedTransport, RefusedAddressError

    port = hook.server.server_address[1]
    calls: list[str] = []
    # `rebind.test` exists only in this resolver: a request that resolved the name again (as an
    # unpinned client would, after the check) could not connect at all.
    answers = {"rebind.test": ["10.9.8.7", "127.0.0.1"], "inside.test": ["10.9.8.7", "192.168.1.1"]}
    policy = AddressPolicy.of(allow_private=False, networks="127.0.0.0/8")
    transport = PinnedTransport(policy, resolve=resolver(answers, calls))
    async with httpx.AsyncClient(transport=transport) as client:
        r = await client.post(f"http://rebind.test:{port}/done", content=b"{}")
        assert r.status_code == 200
        with pytest.raises(RefusedAddressError):
            await client.post(f"http://inside.test:{port}/done", content=b"{}")
    assert calls == ["rebind.test", "inside.test"]  # once per request: nothing left to rebind
    assert len(hook.calls) == 1 and hook.calls[0][0]["Host"] == f"rebind.test:{port}"


@pytest.fixture(scope="module")
def certificate(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A self-signed certificate for hooks.test (key, cert), made by openssl."""
    folder = tmp_path_factory.mktemp("tls")
    key, cert = folder / "key.pem", folder / "cert.pem"
    subprocess.run(
        [
            *("openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=hooks.test"),
            *("-addext", "subjectAltName=DNS:hooks.test", "-keyout", str(key), "-out", str(cert)),
        ],
        check=True,
        capture_output=True,
    )
    return key, cert


async def test_https_keeps_the_server_name_and_checks_the_certificate_against_it(
    certificate: tuple[Path, Path],
) -> None:
    from service.jobs.destinations import AddressPolicy
    from service.jobs.transport import PinnedTransport

    key, cert = certificate
    names: list[str | None] = []
    server_side = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_side.load_cert_chain(cert, key)
    server_side.sni_callback = lambda sock, name, ctx: names.append(name)  # type: ignore[assignment,func-returns-value]
    hook = Hook([])
    hook.server.shutdown()
    https = ThreadingHTTPServer(("127.0.0.1", 0), hook.server.RequestHandlerClass)
    https.socket = server_side.wrap_socket(https.socket, server_side=True)
    threading.Thread(target=https.serve_forever, daemon=True).start()
    port = https.server_address[1]
    calls: list[str] = []
    answers = {"hooks.test": ["127.0.0.1"], "other.test": ["127.0.0.1"]}
    policy = AddressPolicy.of(allow_private=False, networks="127.0.0.1/32")
    trusted = ssl.create_default_context(cafile=str(cert))
    transport = PinnedTransport(policy, resolve=resolver(answers, calls), verify=trusted)
    try:
        async with httpx.AsyncClient(transport=transport) as client:
            r = await client.post(f"https://hooks.test:{port}/done", content=b"{}")
            assert r.status_code == 200
            # The certificate is checked against the URL's name, not against the address.
            with pytest.raises(httpx.ConnectError, match="certificate verify failed"):
                await client.post(f"https://other.test:{port}/done", content=b"{}")
    finally:
        https.shutdown()
    assert names[:2] == ["hooks.test", "other.test"]
    assert len(hook.calls) == 1 and hook.calls[0][0]["Host"] == f"hooks.test:{port}"
