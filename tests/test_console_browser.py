"""The web console in a real browser: Debian's Chromium, driven by Playwright, against real servers.

One browser and one tiny.en server for the module (sampling every request, the scoring job every
second, one live stream at most), a second server with ASR_API_KEY for the sign-in path. The tests
run in file order, as a person would use the console: sign-in first, then a file through Try it
(its requests are sampled), the review loop by keyboard alone over those samples, the Quality page
against `samples report`, the XSS samples, then Live with Chromium's fake microphone speaking a
known sentence. Each page is checked with axe-core (no serious or critical violation) and its
screenshot is written to docs/console/, which docs/console.md shows.

Chromium comes from Debian (`/usr/bin/chromium`), since Playwright's own browser download is not
reachable here; Playwright starts it with a fresh profile each launch. Microphone permission is
granted per context (Playwright's `permissions`), so that one browser can also show a denied one.
"""

from __future__ import annotations

import base64
import json
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx
import numpy as np
import pytest
import websockets.sync.client
from axe_playwright_python.sync_playwright import Axe
from playwright.sync_api import Browser, Page, expect, sync_playwright

from service.backends.base import Segment, Transcript
from service.quality.scoring import normalizer_for
from service.quality.store import SampleStore
from tests.conftest import ROOT, SENTENCES, Server, run_cli, serve, wait_until, wer
from tests.prefix_proxy import PrefixProxy

if TYPE_CHECKING:
    from collections.abc import Iterator

pytestmark = pytest.mark.slow

CHROMIUM = "/usr/bin/chromium"
ADMIN_TOKEN = "console-admin-token"
API_KEY = "console-api-key"
SHOTS = ROOT / "docs" / "console"
# espeak-ng's voice through tiny.en: a word or two of a sentence may come out wrong (jump/jumps).
MAX_WER = 0.35
LIVE_TEXT = f"{SENTENCES['fox']} {SENTENCES['weather']}"
XSS = '<img src=x onerror="window.__xss=1">'
ADMIN = {"Authorization": f"Bearer {ADMIN_TOKEN}"}


@dataclass
class Console:
    server: Server
    quality_dir: Path

    def url(self, path: str = "") -> str:
        return f"{self.server.url}/{path}"

    def queue(self) -> list[dict[str, Any]]:
        items: list[dict[str, Any]] = httpx.get(self.url("v1/quality/queue"), headers=ADMIN).json()["items"]
        return items

    def sample(self, sample_id: str) -> httpx.Response:
        return httpx.get(self.url(f"v1/samples/{sample_id}"), headers=ADMIN)


@pytest.fixture(scope="module")
def console(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Console]:
    tmp = tmp_path_factory.mktemp("console")
    env = {
        "ASR_QUALITY_SAMPLE_RATE": "1",
        "ASR_ADMIN_TOKEN": ADMIN_TOKEN,
        "ASR_QUALITY_INTERVAL_SECONDS": "1",
        "ASR_MAX_STREAMS": "1",
    }
    with serve(env, tmp) as server:
        yield Console(server, tmp / "quality")


@pytest.fixture(scope="module")
def keyed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    with serve({"ASR_API_KEY": API_KEY}, tmp_path_factory.mktemp("keyed")) as server:
        yield server


@pytest.fixture(scope="module")
def live_wav(speech_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Two sentences as one turn (a short gap, below the VAD's 500 ms), then 2.5 s of silence:
    what Chromium's fake microphone says, in a loop."""
    folder = tmp_path_factory.mktemp("live")
    out, first, gap = folder / "speech.wav", folder / "fox.wav", folder / "gap.wav"
    # espeak-ng ends a sentence with ~0.5 s of silence: cut it, so the VAD hears one turn.
    trim = ["reverse", "silence", "1", "0.02", "1%", "reverse"]
    subprocess.run(["sox", str(speech_dir / "fox.wav"), str(first), *trim], check=True)
    subprocess.run(["sox", "-n", "-r", "22050", "-c", "1", "-b", "16", str(gap), "trim", "0", "0.2"], check=True)
    parts = [str(first), str(gap), str(speech_dir / "weather.wav")]
    subprocess.run(["sox", *parts, str(out), "pad", "0.5", "2.5"], check=True)
    return out


STORY = ("fox", "weather", "meeting")


@pytest.fixture(scope="module")
def story_wav(speech_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Three sentences with a second of silence between them: several segments on the timeline."""
    folder = tmp_path_factory.mktemp("story")
    out, pause = folder / "story.wav", folder / "pause.wav"
    subprocess.run(["sox", "-n", "-r", "22050", "-c", "1", "-b", "16", str(pause), "trim", "0", "1.0"], check=True)
    parts = [str(speech_dir / f"{STORY[0]}.wav")]
    for name in STORY[1:]:
        parts += [str(pause), str(speech_dir / f"{name}.wav")]
    subprocess.run(["sox", *parts, str(out)], check=True)
    return out


@pytest.fixture(scope="module")
def browser(live_wav: Path) -> Iterator[Browser]:
    args = [
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--use-fake-device-for-media-stream",
        f"--use-file-for-fake-audio-capture={live_wav}",
        "--autoplay-policy=no-user-gesture-required",
    ]
    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=CHROMIUM, args=args)
        yield chromium
        chromium.close()


@pytest.fixture
def page(browser: Browser) -> Iterator[Page]:
    """A fresh context (nothing remembered) with the microphone allowed; fails the test on any
    uncaught script error."""
    context = browser.new_context(
        viewport={"width": 1200, "height": 860}, permissions=["microphone"], accept_downloads=True
    )
    tab = context.new_page()
    errors: list[str] = []
    tab.on("pageerror", lambda error: errors.append(str(error)))
    yield tab
    context.close()
    assert not errors, f"script errors on the page: {errors}"


def accessible(page: Page, name: str) -> None:
    """axe-core finds no serious or critical violation; the page's screenshot goes to docs/console/."""
    results = Axe().run(page)
    bad = [v for v in results.response["violations"] if v["impact"] in ("serious", "critical")]
    described = [(v["id"], v["impact"], [n["target"] for n in v["nodes"]][:3]) for v in bad]
    assert not bad, f"{name}: {described}"
    SHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SHOTS / f"{name}.png"), full_page=True)


def open_page(page: Page, base: str, name: str) -> None:
    page.goto(f"{base}/ui/{name}")
    page.wait_for_selector(f"body[data-ready={name}]")


def sign_in(page: Page, token: str) -> None:
    """By keyboard: the sign-in form takes the focus; type the token, Enter."""
    page.wait_for_selector(".signin input[type=password]:focus")
    page.keyboard.type(token)
    page.keyboard.press("Enter")


def upload(url: str, clip: Path, fmt: str = "json", headers: dict[str, str] | None = None) -> httpx.Response:
    r = httpx.post(
        f"{url}/transcribe",
        files={"file": (clip.name, clip.read_bytes())},
        data={"response_format": fmt},
        headers=headers,
        timeout=60,
    )
    assert r.status_code == 200, r.text
    return r


# ---- without a token --------------------------------------------------------------------------


def test_review_and_quality_without_the_token_show_the_sign_in_not_data(
    console: Console, page: Page, speech_dir: Path
) -> None:
    upload(console.server.url, speech_dir / "fox.wav")  # a sample that must not show
    wait_until(lambda: console.queue(), 20, "the upload sampled")
    answered: list[tuple[str, int]] = []
    page.on("response", lambda r: answered.append((r.url, r.status)))
    for name in ("review", "quality"):
        open_page(page, console.server.url, name)
        section = page.locator(f"#page-{name}")
        expect(section.locator(".signin input[type=password]")).to_be_focused()
        expect(section.locator("#review-body, #quality-body")).to_be_hidden()
        assert "lazy" not in section.inner_text().lower()
    data = [(u, s) for u, s in answered if "/v1/" in u]
    assert data and all(s == 401 for _, s in data), data  # every data request was refused
    accessible(page, "signin")
    page.keyboard.type("not-the-token")
    page.keyboard.press("Enter")
    expect(page.locator("#page-quality .signin-message")).to_contain_text("refused")
    expect(page.locator("#quality-body")).to_be_hidden()


# ---- Try it ------------------------------------------------------------------------------------


def test_try_it_transcribes_a_dropped_file_and_downloads_srt(console: Console, page: Page, story_wav: Path) -> None:
    clip = story_wav
    page.goto(f"{console.server.url}/ui")  # the bare path redirects to the console's first page
    page.wait_for_selector("body[data-ready=try]")
    assert page.url == f"{console.server.url}/ui/"
    expect(page.locator("#try-model option")).to_have_text(["whisper-tiny.en"])
    dropped = page.evaluate_handle(
        """(b64) => {
            const bytes = Uint8Array.from(atob(b64), (c) => c.charCodeAt(0));
            const data = new DataTransfer();
            data.items.add(new File([bytes], "story.wav", { type: "audio/wav" }));
            return data;
        }""",
        base64.b64encode(clip.read_bytes()).decode(),
    )
    page.dispatch_event("#try-drop", "drop", {"dataTransfer": dropped})
    page.select_option("#try-language", "en")
    page.click("#try-submit")
    expect(page.locator("#try-result")).to_be_visible(timeout=60_000)
    text = page.inner_text("#try-output")
    assert wer(" ".join(SENTENCES[n] for n in STORY), text) <= MAX_WER, text

    segments = page.locator("#try-segments li")
    assert segments.count() >= 2 and page.locator("#try-timeline .block").count() == segments.count()
    page.locator("#try-timeline .block").first.click()  # the timeline plays from the segment's start
    page.wait_for_function("() => !document.getElementById('try-audio').paused")

    with page.expect_download() as download:
        page.click("[data-download=srt]")
    assert download.value.suggested_filename == "story.srt"
    srt = Path(download.value.path()).read_text()
    assert srt == upload(console.server.url, clip, "srt").text  # as the service renders it
    with page.expect_download() as download:
        page.click("[data-download=vtt]")
    assert Path(download.value.path()).read_text().startswith("WEBVTT\n\n00:00:0")
    page.select_option("#try-format", "srt")
    assert page.inner_text("#try-output").strip() == srt.strip()
    page.select_option("#try-format", "text")
    accessible(page, "try")


# ---- Review, by keyboard alone ------------------------------------------------------------------


def _what_was_said(item: dict[str, Any]) -> str:
    """The reference of a sampled request of this module: the story (13 s) or the fox sentence."""
    return " ".join(SENTENCES[n] for n in STORY) if item["duration"] > 8 else SENTENCES["fox"]


def test_the_review_loop_by_keyboard_alone(console: Console, page: Page) -> None:
    wait_until(lambda: len(console.queue()) >= 3, 20, "three samples pending")
    queue = console.queue()
    order = [item["id"] for item in queue]
    said = {item["id"]: _what_was_said(item) for item in queue}
    open_page(page, console.server.url, "review")
    sign_in(page, ADMIN_TOKEN)
    review = page.locator("#page-review")
    expect(review).to_have_attribute("data-loaded", order[0])
    expect(page.locator("#review-editor")).to_be_focused()
    expect(page.locator("#review-why li").first).to_contain_text("rare stratum")
    accessible(page, "review")
    audio = "document.getElementById('review-audio')"

    # The sample plays by itself once the person has pressed a key on the page (signing in did).
    page.wait_for_function(f"() => !{audio}.paused && {audio}.currentTime > 0.5")
    page.keyboard.press("Escape")  # pause
    page.wait_for_function(f"() => {audio}.paused")
    page.keyboard.press("Alt+KeyS")  # slower
    assert page.evaluate(f"{audio}.playbackRate") == 0.75
    before = page.evaluate(f"{audio}.currentTime")
    page.keyboard.press("Alt+KeyJ")  # back 5 s
    assert page.evaluate(f"{audio}.currentTime") < before
    page.keyboard.press("Escape")  # play again
    page.wait_for_function(f"() => !{audio}.paused")

    loops = []
    for _ in range(2):
        sample_id = review.get_attribute("data-loaded")
        assert sample_id in said
        keys = 0
        started = time.monotonic()
        page.keyboard.press("Control+KeyA")
        page.keyboard.type(said[sample_id])
        keys += 1 + len(said[sample_id])
        submitted = time.monotonic()
        page.keyboard.press("Control+Enter")
        keys += 1
        expect(review).not_to_have_attribute("data-loaded", sample_id)
        next_ready = time.monotonic() - submitted
        # The next is the queue's new head: a reference makes its stratum less rare, so the order moves.
        expect(review).to_have_attribute("data-loaded", console.queue()[0]["id"])
        expect(page.locator("#review-editor")).to_be_focused()
        assert console.sample(sample_id).json()["reference"] == said[sample_id]
        loops.append({"keys": keys, "typing_s": submitted - started, "submit_to_next_s": next_ready})
    print("review loop:", json.dumps(loops))
    # The service's part of a loop (save, the next sample's queue and audio) is far below a person's.
    assert all(loop["submit_to_next_s"] < 5 for loop in loops), loops


# ---- Quality ---------------------------------------------------------------------------------------


def _percent(value: float | None) -> str:
    return "n/a" if value is None else f"{value * 100:.2f}%"


def test_the_quality_page_shows_the_figures_of_samples_report(console: Console, page: Page) -> None:
    def scored() -> int:
        report = httpx.get(console.url("v1/quality/report"), headers=ADMIN).json()
        return sum(row["samples"] for row in report["languages"])

    wait_until(lambda: scored() >= 2, 30, "the scoring job scored both references")
    env = {"ASR_QUALITY_DIR": str(console.quality_dir), "PATH": "/usr/bin:/bin"}
    done = run_cli(env, "samples", "report", "--json")
    assert done.returncode == 0, done.stderr
    [row] = json.loads(done.stdout)

    open_page(page, console.server.url, "quality")
    sign_in(page, ADMIN_TOKEN)
    cells = page.locator("#quality-rows tr[data-language=en] > *")
    expect(cells).to_have_count(9)
    shown = cells.all_inner_texts()
    assert shown[:5] == [
        "en",
        row["metric"],
        str(row["samples"]),
        _percent(row["rate"]),
        f"{_percent(row['ci95'][0])} – {_percent(row['ci95'][1])}",
    ]
    assert shown[5] == _percent(row["unweighted"])
    pending = len([i for i in console.queue() if i["language"] == "en"])
    assert shown[8] == str(pending)
    expect(page.locator("#quality-leaning")).to_be_visible(visible=pending > 0)

    # Each diff reads back as the reference the score counted (equal + missed words, normalised).
    recent = httpx.get(console.url("v1/quality/report"), headers=ADMIN).json()["recent"]
    assert len(recent) >= 2
    for sample in recent:
        normalised = normalizer_for("en")(sample["reference"]).split()
        words = page.locator(f"#quality-recent li[data-id='{sample['id']}'] .diff").evaluate(
            """(p) => [...p.querySelectorAll('.diff-equal, del')]
                 .map((e) => [...e.childNodes].filter((n) => n.nodeType === Node.TEXT_NODE)
                 .map((n) => n.textContent).join(''))
                 .join(' ').split(/\\s+/).filter(Boolean)"""
        )
        assert words == normalised
    accessible(page, "quality")


# ---- text stays text --------------------------------------------------------------------------------


def _add_sample(console: Console, hypothesis: str, flags: list[str]) -> str:
    store = SampleStore(console.quality_dir, 10_000, 30)
    transcript = Transcript(hypothesis, "en", 1.0, 2.0, [Segment(0, 0.0, 2.0, hypothesis)])
    audio = (0.1 * np.sin(np.arange(32_000) / 10)).astype(np.float32)
    return store.add(audio, 16_000, transcript, backend="b", model="m", stratum="short", flags=flags, request_id=None)


def test_hypotheses_and_references_are_shown_as_text(console: Console, page: Page) -> None:
    first = _add_sample(console, f"{XSS} hello", ["repetition"])
    second = _add_sample(console, "<script>window.__xss=2</script> world", ["repetition"])
    leftover = [i["id"] for i in console.queue() if i["id"] not in (first, second)]
    open_page(page, console.server.url, "review")
    sign_in(page, ADMIN_TOKEN)
    review = page.locator("#page-review")
    expect(review).to_have_attribute("data-loaded", second)  # flagged first, newest first
    expect(page.locator("#review-why")).to_contain_text("suspected hallucination")
    expect(page.locator("#review-hypothesis")).to_have_text("<script>window.__xss=2</script> world")
    page.keyboard.press("Alt+KeyN")  # skip: to the end of the queue
    expect(review).to_have_attribute("data-loaded", first)
    expect(page.locator("#review-hypothesis")).to_have_text(f"{XSS} hello")
    assert page.input_value("#review-editor") == f"{XSS} hello"
    expect(page.locator(".queue-item").first).to_contain_text(XSS)
    reference = '<b onmouseover="window.__xss=3">hello</b>'
    page.keyboard.press("Control+KeyA")
    page.keyboard.type(reference)
    page.keyboard.press("Control+Enter")
    expect(review).not_to_have_attribute("data-loaded", first)

    # Delete takes Alt+X twice; the rest of the queue goes the same way, leaving it empty.
    for sample_id in [*leftover, second]:
        expect(review).to_have_attribute("data-loaded", sample_id)
        page.keyboard.press("Alt+KeyX")
        expect(page.locator("#review-status")).to_contain_text("again to confirm")
        assert console.sample(sample_id).status_code == 200
        page.keyboard.press("Alt+KeyX")
        wait_until(lambda sample_id=sample_id: console.sample(sample_id).status_code == 404, 10, "deleted")
    expect(page.locator("#review-empty")).to_be_visible()

    wait_until(lambda: console.sample(first).json()["status"] == "scored", 30, "the XSS sample scored")
    page.click("nav a[data-page=quality]")
    page.wait_for_selector("body[data-ready=quality]")
    texts = page.locator(f"#quality-recent li[data-id='{first}'] details")
    texts.locator("summary").click()
    expect(texts).to_contain_text(reference)
    expect(texts).to_contain_text(XSS)
    assert page.locator("img, b, script:not([src])").count() == 0
    assert page.evaluate("window.__xss") is None
    # Trusted Types with no policy: page code cannot turn a string into markup at all.
    assert (
        page.evaluate(
            "() => { try { document.body.innerHTML = '<b>x</b>'; return 'assigned'; } catch (e) { return e.name; } }"
        )
        == "TypeError"
    )


def test_a_page_on_another_site_cannot_act_with_the_token(console: Console, page: Page) -> None:
    target = _add_sample(console, "a sample another site would like to change", [])
    # http://localhost:PORT is another origin than http://127.0.0.1:PORT, as evil.example would be.
    other = console.server.url.replace("127.0.0.1", "localhost")
    page.goto(f"{other}/ui/")
    outcome = page.evaluate(
        """async ([url, token]) => {
            try {
                const r = await fetch(url, { method: "PUT", headers: { Authorization: `Bearer ${token}`,
                    "Content-Type": "application/json" }, body: JSON.stringify({ text: "forged" }) });
                return `answered ${r.status}`;
            } catch (e) { return e.name; }
        }""",
        [console.url(f"v1/samples/{target}/reference"), ADMIN_TOKEN],
    )
    assert outcome == "TypeError"  # the preflight found no CORS grant: the request never left
    assert console.sample(target).json()["status"] == "pending"
    preflight = httpx.options(
        console.url(f"v1/samples/{target}/reference"),
        headers={
            "Origin": other,
            "Access-Control-Request-Method": "PUT",
            "Access-Control-Request-Headers": "authorization",
        },
    )
    assert "access-control-allow-origin" not in preflight.headers
    assert httpx.delete(console.url(f"v1/samples/{target}")).status_code == 401  # no ambient credential


# ---- Live ----------------------------------------------------------------------------------------------


def test_live_shows_partials_then_completed_turns(console: Console, page: Page) -> None:
    open_page(page, console.server.url, "live")
    page.click("#live-start")
    expect(page.locator("#live-status")).to_have_text("Listening: speak now.", timeout=15_000)
    page.wait_for_function("() => document.getElementById('live-level').value > 0.3")
    partial = page.locator(".turn.speaking .partial").first
    expect(partial).not_to_be_empty(timeout=30_000)  # words agreed on while the turn is spoken
    assert partial.evaluate("(e) => getComputedStyle(e).fontStyle") == "italic"
    done = page.locator(".turn.done .final").first
    expect(done).not_to_be_empty(timeout=60_000)
    assert done.evaluate("(e) => getComputedStyle(e).fontStyle") == "normal"
    assert wer(LIVE_TEXT, done.inner_text()) <= MAX_WER, done.inner_text()
    page.wait_for_function(
        "() => document.querySelector('.turn.speaking .partial')?.textContent.trim()", timeout=30_000
    )  # the next turn, still partial, for the screenshot
    accessible(page, "live")
    page.click("#live-stop")
    expect(page.locator("#live-status")).to_have_text("Not listening.")


def test_live_says_when_the_microphone_is_denied(console: Console, browser: Browser) -> None:
    context = browser.new_context()  # no microphone permission: the browser answers NotAllowedError
    page = context.new_page()
    open_page(page, console.server.url, "live")
    page.click("#live-start")
    expect(page.locator("#live-error")).to_contain_text("Microphone access was denied")
    expect(page.locator("#live-start")).to_be_enabled()
    context.close()


def test_live_says_when_every_stream_is_taken(console: Console, page: Page) -> None:
    realtime = console.url("v1/realtime?intent=transcription").replace("http", "ws", 1)
    with websockets.sync.client.connect(realtime) as holder:  # the one stream the limit allows
        assert json.loads(holder.recv(timeout=10))["type"] == "session.created"
        open_page(page, console.server.url, "live")
        page.click("#live-start")
        expect(page.locator("#live-error")).to_contain_text("All live streams of this service are taken")
        expect(page.locator("#live-retry")).to_be_visible()
    # Freed: Reconnect gets the stream (the server may take a moment to see the holder go).
    deadline = time.monotonic() + 20
    while page.inner_text("#live-status") != "Listening: speak now.":
        assert time.monotonic() < deadline, page.inner_text("#live-error")
        if page.locator("#live-retry").is_visible():
            page.click("#live-retry")
        page.wait_for_timeout(300)
    page.click("#live-stop")


# ---- behind a path prefix ----------------------------------------------------------------------------


def test_behind_a_path_prefix_and_through_a_lost_connection(console: Console, page: Page, speech_dir: Path) -> None:
    with PrefixProxy(console.server.port, "/asr").running() as proxy:
        seen: list[str] = []
        page.on("request", lambda r: seen.append(r.url))
        page.goto(f"{proxy.url}/ui")
        page.wait_for_selector("body[data-ready=try]")
        assert page.url == f"{proxy.url}/ui/"
        page.set_input_files("#try-file", str(speech_dir / "weather.wav"))
        page.click("#try-submit")
        expect(page.locator("#try-result")).to_be_visible(timeout=60_000)
        assert wer(SENTENCES["weather"], page.inner_text("#try-output")) <= MAX_WER

        page.click("nav a[data-page=live]")
        page.wait_for_selector("body[data-ready=live]")
        assert page.url == f"{proxy.url}/ui/live"
        sockets = []
        page.on("websocket", lambda ws: sockets.append(ws.url))
        page.click("#live-start")
        expect(page.locator("#live-status")).to_have_text("Listening: speak now.", timeout=15_000)
        proxy.drop_connections()
        expect(page.locator("#live-error")).to_contain_text("The connection was lost")
        expect(page.locator("#live-status")).to_have_text("Listening: speak now.", timeout=20_000)
        expect(page.locator("#live-error")).to_be_hidden()
        assert len(sockets) == 2 and all(s.startswith(proxy.url.replace("http", "ws", 1)) for s in sockets)
        page.click("#live-stop")
    fetched = [u for u in seen if not u.startswith(("blob:", "data:"))]  # blob: is the page's own audio
    elsewhere = [u for u in fetched if not u.startswith(proxy.url)]
    assert fetched and not elsewhere, elsewhere
    assert {r.split()[1].split("?")[0] for r in proxy.requests} >= {"/ui/", "/transcribe", "/v1/realtime"}


# ---- with ASR_API_KEY -----------------------------------------------------------------------------------


def test_with_an_api_key_the_page_asks_for_it(keyed: Server, page: Page, speech_dir: Path) -> None:
    open_page(page, keyed.url, "try")
    expect(page.locator("#try-form")).to_be_hidden()
    expect(page.locator("#try-model option")).to_have_count(0)
    sign_in(page, "wrong-key")
    expect(page.locator("#page-try .signin-message")).to_contain_text("refused")
    page.fill(".signin input[type=password]", API_KEY)
    page.keyboard.press("Enter")
    expect(page.locator("#try-form")).to_be_visible()
    page.set_input_files("#try-file", str(speech_dir / "meeting.wav"))
    page.click("#try-submit")
    expect(page.locator("#try-result")).to_be_visible(timeout=60_000)
    assert wer(SENTENCES["meeting"], page.inner_text("#try-output")) <= MAX_WER

    # Live: browsers cannot send the key as a header on a WebSocket, so the page asks for a
    # short-lived client secret first (OpenAI's POST /v1/realtime/client_secrets).
    key = {"Authorization": f"Bearer {API_KEY}"}
    secrets = httpx.post(f"{keyed.url}/v1/realtime/client_secrets", json={}, headers=key)
    page.click("nav a[data-page=live]")
    page.wait_for_selector("body[data-ready=live]")
    page.click("#live-start")
    if secrets.status_code == 404:  # a service without client secrets says so, instead of failing silently
        expect(page.locator("#live-error")).to_contain_text("cannot give the browser a token")
    else:
        expect(page.locator(".turn.done .final").first).not_to_be_empty(timeout=60_000)
    page.click("#live-stop")
