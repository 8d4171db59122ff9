"""The console's server side without a browser: its files and their headers, the review queue's
order, the quality report route against `samples report`, and the word alignment it shows.

The pages themselves run in a real Chromium in tests/test_console_browser.py.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING

import numpy as np
import pytest
from starlette.testclient import TestClient

from service.app import create_app
from service.backends.base import Segment, Transcript
from service.metrics import Metrics
from service.quality.diff import align
from service.quality.report import quality_report
from service.quality.scoring import score
from service.quality.store import SampleStore
from service.ui.router import PAGES
from tests.conftest import ADMIN, ADMIN_TOKEN, ROOT, make_settings
from tests.fakes import FakeBackend, factory

if TYPE_CHECKING:
    from collections.abc import Iterator
    from pathlib import Path

STATIC = ROOT / "service" / "ui" / "static"


@pytest.fixture
def client(tmp_path: Path) -> Iterator[TestClient]:
    settings = make_settings(tmp_path, server={"admin_token": ADMIN_TOKEN}, quality={"sample_rate": 1.0})
    app = create_app(settings, backend_factory=factory(FakeBackend()), metrics=Metrics())
    with TestClient(app, base_url="http://asr.test") as test_client:
        yield test_client


def _store(client: TestClient) -> SampleStore:
    store: SampleStore = client.app.state.store  # type: ignore[attr-defined]
    return store


def _add(store: SampleStore, text: str, stratum: str = "short", flags: list[str] | None = None) -> str:
    transcript = Transcript(text, "en", 1.0, 2.0, [Segment(0, 0.0, 2.0, text)])
    return store.add(
        np.zeros(32_000, np.float32),
        16_000,
        transcript,
        backend="b",
        model="m",
        stratum=stratum,
        flags=flags or [],
        request_id=None,
    )


# ---- the files ----------------------------------------------------------------------------------


def test_the_shell_and_its_files_carry_a_policy_without_inline_script(client: TestClient) -> None:
    bare = client.get("/ui", follow_redirects=False)
    # Relative, so that /prefix/ui lands on /prefix/ui/ behind a proxy.
    assert (bare.status_code, bare.headers["location"]) == (307, "ui/")
    for path in ["/ui/", *(f"/ui/{page}" for page in PAGES), "/ui/static/app.js"]:
        r = client.get(path)
        assert r.status_code == 200, path
        policy = r.headers["content-security-policy"]
        assert "script-src 'self'" in policy and "unsafe" not in policy, policy
        assert "frame-ancestors 'none'" in policy and "require-trusted-types-for 'script'" in policy
        assert r.headers["x-content-type-options"] == "nosniff"
    assert client.get("/ui/").headers["content-type"].startswith("text/html")
    assert client.get("/ui/static/app.js").headers["content-type"].startswith("text/javascript")


def _references() -> set[str]:
    """Every file the shell and the scripts load: <script src>, <link href>, imports, worklets."""
    shell = (STATIC / "index.html").read_text()
    names = set(re.findall(r'(?:src|href)="static/([^"]+)"', shell))
    for script in STATIC.glob("*.js"):
        text = script.read_text()
        names |= set(re.findall(r'(?:from |import\()"\./([^"]+)"', text))
        names |= set(re.findall(r'new URL\("([^"./][^"]*)", import\.meta\.url\)', text))
    return names


def test_every_file_the_console_loads_is_served_and_every_shipped_file_is_used(client: TestClient) -> None:
    loaded = _references()
    assert {"app.js", "console.css", "try.js", "live.js", "pcm-worklet.js", "review.js", "quality.js"} <= loaded
    for name in loaded:
        assert client.get(f"/ui/static/{name}").status_code == 200, name
    shipped = {p.name for p in STATIC.iterdir()} - {"index.html"}
    assert shipped == loaded, shipped ^ loaded


def test_no_markup_is_built_from_strings() -> None:
    shell = (STATIC / "index.html").read_text()
    assert not re.search(r"<script(?![^>]*\bsrc=)[^>]*>", shell)  # no inline script
    assert not re.search(r"\son[a-z]+=", shell) and " style=" not in shell  # no inline handlers or styles
    for script in STATIC.glob("*.js"):
        text = re.sub(r"//[^\n]*|/\*.*?\*/", "", script.read_text(), flags=re.DOTALL)  # code, not comments
        for sink in ("innerHTML", "outerHTML", "insertAdjacentHTML", "document.write", "eval(", "new Function"):
            assert sink not in text, f"{script.name} uses {sink}"


def test_the_console_names_only_relative_urls() -> None:
    # Nothing is fetched from elsewhere, and a path prefix in front of the service is kept.
    for path in STATIC.iterdir():
        text = path.read_text().replace('xmlns="http://www.w3.org/2000/svg"', "")  # a name, never fetched
        assert not re.search(r"""(src|href)=["'](https?:)?//|["'`]/(v1|ui|transcribe)""", text), path.name
        assert "http://" not in text and "https://" not in text, path.name


@pytest.mark.parametrize(
    "path", ["/ui/admin", "/ui/static/nope.js", "/ui/static/..%2Frouter.py", "/ui/static/index.html", "/ui/static/x.py"]
)
def test_other_paths_are_not_found(client: TestClient, path: str) -> None:
    r = client.get(path)
    assert r.status_code == 404 and r.json()["error"]["code"] == "not_found", (path, r.text)


def test_cross_origin_requests_get_no_grant(client: TestClient) -> None:
    # No CORS middleware: a preflight from another site finds no Access-Control-Allow-Origin, so
    # the browser never sends its PUT; and no cookie is ever set, so nothing ambient is sent either.
    headers = {"Origin": "http://evil.example", "Access-Control-Request-Method": "PUT"}
    preflight = client.options("/v1/samples/" + "0" * 32 + "/reference", headers=headers)
    assert "access-control-allow-origin" not in preflight.headers
    page = client.get("/ui/", headers={"Origin": "http://evil.example"})
    assert "access-control-allow-origin" not in page.headers and "set-cookie" not in page.headers


# ---- the review queue -----------------------------------------------------------------------------


def test_the_queue_puts_the_most_useful_reference_first(client: TestClient) -> None:
    store = _store(client)
    for i in range(3):  # a well-covered stratum: three references already
        store.set_reference(_add(store, f"covered {i}"), f"covered {i}")
    plain = _add(store, "plain")
    rare = _add(store, "rare", stratum="long")
    flagged = _add(store, "flagged", flags=["repetition"])
    disputed = _add(store, "disputed")
    assert store.record_shadow(disputed, "en", "word", 5, 10, 1.0)

    r = client.get("/v1/quality/queue", headers=ADMIN)
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["pending"] == 4
    order = [item["id"] for item in body["items"]]
    # flagged: 1 + 1/4; rare: 1/(1+0); disputed: 1/4 + 0.5; plain: 1/4
    assert order == [flagged, rare, disputed, plain]
    reasons = {item["id"]: item["reasons"] for item in body["items"]}
    assert reasons[flagged] == ["suspected hallucination: repeated text"]
    assert reasons[rare] == ["rare stratum (en, long): 0 references so far"]
    assert reasons[disputed] == ["the shadow model disagrees on 50% of the words"]
    assert reasons[plain] == []
    assert client.get("/v1/quality/queue?limit=2", headers=ADMIN).json()["items"][1]["id"] == rare


# ---- the quality report ---------------------------------------------------------------------------


def test_the_report_has_the_figures_of_samples_report_and_the_alignment_of_each_score(client: TestClient) -> None:
    store = _store(client)
    pairs = {"the cat sat on the mat": "the cat sat on mat", "hello world": "hello big world", "one two": "one two"}
    for hypothesis, reference in pairs.items():
        sample = _add(store, hypothesis)
        assert client.put(f"/v1/samples/{sample}/reference", json={"text": reference}, headers=ADMIN).status_code == 200
    assert client.post("/v1/samples/score", headers=ADMIN).json()["scored"] == 3

    extra = _add(store, "still waiting")
    report = client.get("/v1/quality/report", headers=ADMIN).json()
    # The CLI's function, same figures; and how many of the language still wait for a reference.
    assert [{k: v for k, v in row.items() if k != "pending"} for row in report["languages"]] == quality_report(
        store.scored()
    )
    assert [row["pending"] for row in report["languages"]] == [1]
    store.delete(extra)
    assert len(report["recent"]) == 3
    for sample in report["recent"]:
        wrong = [c for c in sample["alignment"] if c["op"] != "equal"]
        counted = sum(max(len(c["reference"]), len(c["hypothesis"])) for c in wrong)
        assert counted == sample["errors"] == score(sample["reference"], sample["hypothesis"], "en").errors
    assert client.get("/v1/quality/report?recent=1", headers=ADMIN).json()["recent"][0]["hypothesis"] == "one two"


def test_align_follows_the_score() -> None:
    chunks = align("The quick brown fox.", "the quack brown fox jumps", "en", "basic")
    assert [(c.op, c.reference, c.hypothesis) for c in chunks] == [
        ("equal", ["the"], ["the"]),
        ("substitute", ["quick"], ["quack"]),
        ("equal", ["brown", "fox"], ["brown", "fox"]),
        ("insert", [], ["jumps"]),
    ]
    assert [c.op for c in align("我爱你", "我恨你", "zh")] == ["equal", "substitute", "equal"]  # by characters
    assert [(c.op, c.reference) for c in align("said this", "", "en")] == [("delete", ["said", "this"])]
    assert align("", "", "en") == []
