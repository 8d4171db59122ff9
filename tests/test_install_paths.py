"""Every shipped install path, each in a fresh virtualenv that holds exactly what it installs.

- `make run`: the Makefile's own recipes (`$(VENV)/.python`, `$(VENV)/.core`: `pip install .`) into a
  new venv, then `make run` itself.
- The image: the Dockerfile, read now, so that the two cannot drift. The build stage's COPY lines
  choose the source files, its RUN lines run in order (the venv, `pip install '.[postgres]'`, the
  model assembly), the runtime stage's ENV, WORKDIR and CMD start the server. The image's paths
  (/opt/venv, /opt/models, /src, /var/lib/asr) are mapped into a temporary directory.

Both install from a copy of the source (never the checkout, so build artefacts stay out of it),
with pip's cache and the machine's pip config. Each serves the default model (embedded:base) and
is used as a client would: an upload, a Realtime turn, a job. The core install also imports every
module of `service`, and each optional extra, chosen but missing, fails with one message naming it.
No image is built or run here (no Docker engine): docs/testing.md says what that leaves unproven.
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import httpx
import openai
import pytest

from deploy.local_stack import free_port
from service.quality.scoring import score
from tests.conftest import ROOT, SENTENCES, Server

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator

pytestmark = pytest.mark.slow

DOCKERFILE = ROOT / "Dockerfile"
CLIP = "weather"  # 12 words, the longest sentence: one clip, but enough words to tell a broken decode
# base scored 0.033-0.093 over the 4-sentence corpus (docs/testing.md); one clip has fewer words to
# average over, so one more slip is allowed. A broken decoder or resampler sends WER towards 1.
CLIP_WER = 0.2
# Packages of the test venv (the dev extra) that no shipped install may need or hold.
DEV_ONLY = ("pytest", "openai", "aiosmtpd")


@dataclass
class Install:
    """One install path's venv, built, and how that path starts the service."""

    name: str
    root: Path
    python: Path
    command: list[str]  # what starts the server
    cwd: Path  # where it starts (which decides where `python -m service` finds `service`)
    env: dict[str, str]  # the path's own configuration (the image's runtime ENV), over a clean environment
    built_seconds: float = 0.0
    model_dir: Path | None = None  # the embedded model assembled at build time (the image), if any


def clean_env() -> dict[str, str]:
    """This process's environment without what would leak the test venv or its settings into a
    fresh one: PYTHONPATH, the venv's bin on PATH, ASR_* variables, and the flags of the `make test`
    that may be running us."""
    drop = {"PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV", "PROMETHEUS_MULTIPROC_DIR", "MAKEFLAGS", "MFLAGS", "MAKELEVEL"}
    env = {k: v for k, v in os.environ.items() if k not in drop and not k.startswith("ASR_")}
    own_bin = str(Path(sys.prefix) / "bin")
    env["PATH"] = os.pathsep.join(p for p in env.get("PATH", "").split(os.pathsep) if p != own_bin)
    return env


def _run(command: list[str], cwd: Path, env: dict[str, str], timeout: float = 420) -> str:
    """Run one install step; fail with its output when it fails."""
    done = subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    output = done.stdout + done.stderr
    assert done.returncode == 0, f"{shlex.join(command)} failed ({done.returncode}):\n{output[-6000:]}"
    return output


def _check_isolated(python: Path, cwd: Path) -> None:
    """The venv imports `service` from its own site-packages and holds none of the test venv's packages."""
    code = (
        "import importlib.util, json, service; "
        f"print(json.dumps([service.__file__, [m for m in {DEV_ONLY!r} if importlib.util.find_spec(m)]]))"
    )
    out = subprocess.run([str(python), "-c", code], cwd=cwd, env=clean_env(), capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    where, leaked = json.loads(out.stdout)
    assert Path(where).is_relative_to(python.parent.parent), where
    assert leaked == [], f"{python} holds test-only packages: {leaked}"


# ---- the Dockerfile, read as the image build reads it -------------------------------------------


def dockerfile_stages(text: str) -> dict[str, list[tuple[str, str]]]:
    """Each named stage (`FROM ... AS name`) as its instructions, (KEYWORD, argument), with
    continuation lines joined and comments dropped, as BuildKit parses them."""
    logical: list[str] = []
    pending = ""
    for line in text.splitlines():
        if line.lstrip().startswith("#") or not (pending or line.strip()):
            continue
        if line.rstrip().endswith("\\"):
            pending += line.rstrip()[:-1]
            continue
        logical.append(pending + line)
        pending = ""
    stages: dict[str, list[tuple[str, str]]] = {}
    current: list[tuple[str, str]] = []
    for instruction in logical:
        keyword, _, argument = instruction.strip().partition(" ")
        if keyword.upper() == "FROM":
            words = argument.split()
            current = stages.setdefault(words[2] if len(words) == 3 and words[1].upper() == "AS" else "", [])
        else:
            current.append((keyword.upper(), argument.strip()))
    return stages


def env_assignments(argument: str, env: dict[str, str]) -> dict[str, str]:
    """The variables an `ENV A=1 B=$PATH` instruction sets, $VAR / ${VAR} expanded from `env` (as
    in Docker, from the values before the instruction)."""
    out: dict[str, str] = {}
    for word in shlex.split(argument):
        key, _, value = word.partition("=")
        out[key] = re.sub(r"\$\{?(\w+)\}?", lambda m: env.get(m[1], ""), value)
    return out


class ImagePaths:
    """The image's absolute paths, mapped into a directory of this machine."""

    def __init__(self, root: Path) -> None:
        self.places = {
            "/opt/venv": root / "venv",
            "/opt/models": root / "models",
            "/src": root / "src",
            "/var/lib/asr": root / "home",
        }
        # The image's interpreter (python3.11 in both base images) is the one running the tests.
        self.interpreter = ("python3.11", sys.executable)

    def __call__(self, text: str) -> str:
        for image, here in self.places.items():
            text = re.sub(rf"{re.escape(image)}(?![\w.-])", str(here), text)
        return re.sub(rf"(?<![\w/.-]){re.escape(self.interpreter[0])}(?![\w.-])", self.interpreter[1], text)


def build_image_venv(root: Path) -> Install:
    """Run the Dockerfile's build stage here (COPY, ENV, WORKDIR, every RUN), then read how its
    runtime stage starts the service. Unknown instructions fail the test: teach it what they do."""
    stages = dockerfile_stages(DOCKERFILE.read_text())
    assert {"build", "runtime"} <= stages.keys(), f"the Dockerfile's stages changed: {sorted(stages)}"
    here = ImagePaths(root)
    env, workdir, runs = clean_env(), root, []
    for keyword, argument in stages["build"]:
        if keyword == "ENV":
            env.update(env_assignments(here(argument), env))
            # The image keeps no pip cache; here the cache saves CI minutes and changes nothing installed.
            env.pop("PIP_NO_CACHE_DIR", None)
        elif keyword == "WORKDIR":
            workdir = Path(here(argument))
            workdir.mkdir(parents=True, exist_ok=True)
        elif keyword == "COPY":
            *sources, destination = shlex.split(argument)
            assert not any(s.startswith("--") for s in sources), argument
            for source in sources:
                target = (
                    workdir / destination / Path(source).name if destination.endswith("/") else workdir / destination
                )
                if (ROOT / source).is_dir():
                    shutil.copytree(ROOT / source, target, ignore=shutil.ignore_patterns("__pycache__"))
                else:
                    target.parent.mkdir(parents=True, exist_ok=True)
                    shutil.copyfile(ROOT / source, target)
        elif keyword == "RUN":
            _run(["sh", "-c", here(argument)], workdir, env)
            runs.append(argument)
        else:
            raise AssertionError(f"the build stage has {keyword} {argument}: say here what it does to the venv")
    assert any(r.startswith("pip install ") for r in runs), f"no `RUN pip install` in the build stage: {runs}"
    assert any("embedded_model_path('embedded:base'" in r for r in runs), f"no model assembly in the build: {runs}"

    run_env, cwd, command = clean_env(), root, ["python", "-m", "service", "serve"]
    for keyword, argument in stages["runtime"]:
        if keyword == "ENV":
            run_env.update(env_assignments(here(argument), run_env))
        elif keyword == "WORKDIR":
            cwd = Path(here(argument))
            cwd.mkdir(parents=True, exist_ok=True)
        elif keyword == "CMD":
            command = json.loads(argument)
        elif keyword == "COPY":  # the venv and the models, from the build stage: here they already are there
            *options, source, destination = shlex.split(argument)
            assert options == ["--from=build"] and source == destination, argument
        elif keyword == "RUN":  # the non-root user the image runs as; not needed to run the service here
            assert argument.startswith("useradd "), argument
        elif keyword not in ("USER", "EXPOSE", "HEALTHCHECK"):
            raise AssertionError(f"the runtime stage has {keyword} {argument}: say here what it does")
    models = Path(run_env["ASR_CACHE_DIR"])
    assert list(models.glob("models/whisper-base-*/model.bin")), (
        f"the build assembled no model where it serves from: {models}"
    )
    executable = shutil.which(command[0], path=run_env["PATH"])
    assert executable is not None and Path(executable).is_relative_to(here.places["/opt/venv"]), executable
    return Install(
        "Dockerfile",
        root,
        here.places["/opt/venv"] / "bin" / "python",
        [executable, *command[1:]],
        cwd,
        {k: v for k, v in run_env.items() if k.startswith("ASR_") or k == "PATH"},
        model_dir=models,
    )


# ---- `make run`, through the Makefile's own recipes -----------------------------------------------


def build_make_venv(root: Path) -> Install:
    """A fresh checkout's `make run`: the Dockerfile's source files plus the Makefile, `make
    $(VENV)/.core` (the venv and `pip install .`), then `make run` starts the service."""
    src, venv = root / "src", root / "venv"
    src.mkdir(parents=True)
    for name in ("pyproject.toml", "README.md", "Makefile"):
        shutil.copyfile(ROOT / name, src / name)
    shutil.copytree(ROOT / "service", src / "service", ignore=shutil.ignore_patterns("__pycache__"))
    make = ["make", "--no-print-directory", "-C", str(src), f"VENV={venv}"]  # and the Makefile's PYTHON (python3)
    _run([*make, f"{venv}/.core"], src, clean_env())
    data = root / "data"
    env = {
        "ASR_CACHE_DIR": str(data / "cache"),
        "ASR_QUALITY_DIR": str(data / "quality"),
        "ASR_JOBS_DIR": str(data / "jobs"),
    }
    return Install("make run", root, venv / "bin" / "python", [*make, "run"], src, env)


def _build(build: Callable[[Path], Install], root: Path) -> Install:
    """The install `build` makes in `root`, checked to hold only its own packages."""
    started = time.monotonic()
    install = build(root)
    install.built_seconds = time.monotonic() - started
    print(f"{install.name}: venv built in {install.built_seconds:.0f} s")
    _check_isolated(install.python, root)
    return install


@pytest.fixture(scope="module")
def builds(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Future[Install]]]:
    """Both install paths, built at once: pip works on one core, CI has two. Their venvs and
    models (about 0.8 GB each) are removed afterwards, their server logs kept."""
    roots = {"make run": tmp_path_factory.mktemp("make-run"), "Dockerfile": tmp_path_factory.mktemp("image")}
    builders = {"make run": build_make_venv, "Dockerfile": build_image_venv}
    with ThreadPoolExecutor(max_workers=2) as pool:
        try:
            yield {name: pool.submit(_build, builders[name], root) for name, root in roots.items()}
        finally:
            pool.shutdown(wait=True)
            for child in (c for root in roots.values() for c in root.iterdir() if c.is_dir()):
                shutil.rmtree(child, ignore_errors=True)


@pytest.fixture(scope="module")
def make_install(builds: dict[str, Future[Install]]) -> Install:
    return builds["make run"].result()


@pytest.fixture(scope="module")
def image_install(builds: dict[str, Future[Install]]) -> Install:
    return builds["Dockerfile"].result()


# ---- serving from an install ---------------------------------------------------------------------


@contextlib.contextmanager
def serve_install(
    install: Install, env: dict[str, str] | None = None, until: str = "ready", timeout: float = 180
) -> Iterator[Server]:
    """Start the install's server on a free loopback port, with its own configuration and `env`;
    yield once /readyz says `until` (ready: 200; failed: the model did not load)."""
    port = free_port()
    log_path = install.root / f"server-{port}.log"
    full_env = {**clean_env(), **install.env, **(env or {}), "ASR_HOST": "127.0.0.1", "ASR_PORT": str(port)}
    with open(log_path, "wb") as log:
        process = subprocess.Popen(
            install.command, cwd=install.cwd, env=full_env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
    server = Server(f"http://127.0.0.1:{port}", port, process, log_path)
    try:
        deadline = time.monotonic() + timeout
        while True:
            assert process.poll() is None, f"{install.name}: the server exited:\n{server.log()}"
            with contextlib.suppress(httpx.HTTPError):
                ready = httpx.get(server.url + "/readyz", timeout=2)
                if (ready.status_code == 200 and until == "ready") or ready.json().get("status") == until:
                    break
                assert ready.json().get("status") != "failed", f"{install.name}: {ready.text}\n{server.log()}"
            assert time.monotonic() < deadline, f"{install.name}: not {until} in {timeout} s:\n{server.log()}"
            time.sleep(0.2)
        yield server
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()


@pytest.fixture(scope="module", params=["make run", "Dockerfile"])
def install(request: pytest.FixtureRequest) -> Install:
    fixture = {"make run": "make_install", "Dockerfile": "image_install"}[request.param]
    chosen: Install = request.getfixturevalue(fixture)
    return chosen


@pytest.fixture(scope="module")
def server(install: Install) -> Iterator[Server]:
    started = time.monotonic()
    with serve_install(install) as running:
        print(f"{install.name}: ready in {time.monotonic() - started:.1f} s")
        yield running


@pytest.fixture(scope="module")
def turn(speech_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> bytes:
    """The clip as raw 24 kHz PCM16 (the Realtime API's default format), with 1.5 s of silence after."""
    raw = tmp_path_factory.mktemp("turn") / "turn.raw"
    pcm = ["-r", "24000", "-b", "16", "-e", "signed", "-t", "raw"]
    subprocess.run(["sox", str(speech_dir / f"{CLIP}.wav"), *pcm, str(raw), "pad", "0.3", "1.5"], check=True)
    return raw.read_bytes()


def _assert_words(text: str, where: str) -> None:
    rate = score(SENTENCES[CLIP], text, "en", "basic").rate
    print(f"{where}: WER {rate:.3f}: {text!r}")
    assert rate <= CLIP_WER, f"{where}: {text!r}"


# ---- what a user does with each install ----------------------------------------------------------


def test_the_default_model_transcribes_an_upload(install: Install, server: Server, speech_dir: Path) -> None:
    clip = speech_dir / f"{CLIP}.mp3"
    r = httpx.post(server.url + "/transcribe", files={"file": (clip.name, clip.read_bytes())}, timeout=120)
    assert r.status_code == 200, r.text
    body = r.json()
    assert (body["model"], body["language"]) == ("whisper-base", "en")  # the default, and it found English
    _assert_words(body["text"], f"{install.name} upload")
    assembled_now = "assembled embedded model whisper-base" in server.log()
    # `make run` joins the model on first start; the image joined it at build time, where it serves from.
    assert assembled_now == (install.model_dir is None), server.log()


def test_a_realtime_stream_completes_a_turn(install: Install, server: Server, turn: bytes) -> None:
    client = openai.OpenAI(base_url=server.url + "/v1", api_key="not-needed", max_retries=0)
    session = {
        "type": "transcription",
        "audio": {
            "input": {
                "format": {"type": "audio/pcm", "rate": 24000},
                "transcription": {"model": "whisper-1", "language": "en"},
                "turn_detection": {"type": "server_vad", "silence_duration_ms": 500},
            }
        },
    }
    kinds: list[str] = []
    completed = None
    with client.realtime.connect(extra_query={"intent": "transcription"}) as conn:
        watchdog = threading.Timer(60, conn.close)  # a turn that never completes ends the loop below
        watchdog.start()
        conn.session.update(session=session)
        step = 4800  # 100 ms frames, sent as fast as the socket takes them: the turn ends on audio time
        for i in range(0, len(turn), step):
            conn.input_audio_buffer.append(audio=base64.b64encode(turn[i : i + step]).decode())
        for event in conn:
            kinds.append(event.type)
            assert event.type != "error", event
            if event.type == "conversation.item.input_audio_transcription.completed":
                completed = event
                break
        watchdog.cancel()
    assert completed is not None, f"the stream ended without a completed turn: {kinds}"
    assert kinds[:2] == ["session.created", "session.updated"] and "input_audio_buffer.committed" in kinds
    _assert_words(completed.transcript, f"{install.name} realtime")


def test_a_job_runs_to_its_result(install: Install, server: Server, speech_dir: Path) -> None:
    clip = speech_dir / f"{CLIP}.m4a"
    r = httpx.post(server.url + "/v1/jobs", files={"file": (clip.name, clip.read_bytes())}, timeout=60)
    assert r.status_code == 202, r.text
    job = r.json()
    deadline = time.monotonic() + 120
    while (status := httpx.get(server.url + job["status_url"], timeout=10).json())["status"] != "succeeded":
        assert status["status"] in ("queued", "running"), status
        assert time.monotonic() < deadline, status
        time.sleep(0.2)
    result = httpx.get(server.url + job["result_url"], timeout=10)
    assert result.status_code == 200, result.text
    _assert_words(result.json()["text"], f"{install.name} job")


def test_the_console_is_served(install: Install, server: Server) -> None:
    """The web console's files are package data (service/ui/static): the install serves every one."""
    static = ROOT / "service" / "ui" / "static"
    shell = httpx.get(server.url + "/ui/", timeout=10)
    assert shell.status_code == 200 and 'src="static/app.js"' in shell.text, shell.text[:300]
    for path in sorted(p for p in static.iterdir() if p.name != "index.html"):
        r = httpx.get(f"{server.url}/ui/static/{path.name}", timeout=10)
        assert (r.status_code, r.content) == (200, path.read_bytes()), f"{install.name}: {path.name} {r.status_code}"


def test_speakers_without_their_extra_are_a_422_naming_it(install: Install, server: Server, speech_dir: Path) -> None:
    # Neither shipped install holds the `diarization` extra: asking for speakers says what to install.
    clip = speech_dir / f"{CLIP}.wav"
    asks = [
        ("/transcribe", {"diarize": "true"}),
        ("/v1/audio/transcriptions", {"model": "gpt-4o-transcribe-diarize", "response_format": "diarized_json"}),
    ]
    for route, data in asks:
        r = httpx.post(server.url + route, files={"file": (clip.name, clip.read_bytes())}, data=data, timeout=60)
        assert r.status_code == 422, r.text
        error = r.json()["error"]
        assert error["code"] == "unsupported_feature", error
        assert "pip install 'asr-service[diarization]'" in error["message"], error


# ---- the core install alone: every module, and the extras it lacks -------------------------------


def test_every_module_imports_with_the_core_install(make_install: Install) -> None:
    code = (
        "import importlib, json, pkgutil, service\n"
        "failed = {}\n"
        "for m in pkgutil.walk_packages(service.__path__, 'service.'):\n"
        "    try:\n"
        "        importlib.import_module(m.name)\n"
        "    except Exception as exc:\n"
        "        failed[m.name] = f'{type(exc).__name__}: {exc}'\n"
        "print(json.dumps([sorted(m.name for m in pkgutil.walk_packages(service.__path__, 'service.')), failed]))"
    )
    out = subprocess.run(
        [str(make_install.python), "-c", code], cwd=make_install.root, env=clean_env(), capture_output=True, text=True
    )
    assert out.returncode == 0, out.stderr
    modules, failed = json.loads(out.stdout)
    shipped = {
        p.relative_to(ROOT).with_suffix("").as_posix().replace("/", ".") for p in (ROOT / "service").rglob("*.py")
    }
    assert {m.removesuffix(".__init__") for m in shipped} - {"service"} <= set(modules)  # the walk saw them all
    assert failed == {}


@pytest.mark.parametrize("backend", ["sensevoice", "openai-whisper"])
def test_an_engine_without_its_extra_names_the_extra(make_install: Install, backend: str) -> None:
    env = {"ASR_BACKEND": backend, "ASR_ADMIN_TOKEN": "install-paths"}
    with serve_install(make_install, env, until="failed") as server:
        readiness = httpx.get(server.url + "/readyz", headers={"Authorization": "Bearer install-paths"}).json()
        log = server.log()
    missing = "funasr" if backend == "sensevoice" else "torch"
    message = f"backend {backend!r} needs the optional dependency {missing!r}: pip install 'asr-service[{backend}]'"
    assert readiness == {"status": "failed", "error": f"MissingExtraError: {message}"}
    # One line in the log says it, and no traceback buries it.
    [line] = [line for line in log.splitlines() if "asr-service[" in line]
    assert line.endswith(f"failed to load: MissingExtraError: {message}"), log
    assert "Traceback" not in log, log


def test_a_database_url_without_psycopg_names_the_extra(make_install: Install) -> None:
    env = {**clean_env(), **make_install.env, "ASR_DATABASE_URL": "postgresql://asr@127.0.0.1:1/asr"}
    out = subprocess.run(
        make_install.command, cwd=make_install.cwd, env=env, capture_output=True, text=True, timeout=60
    )
    lines = [line for line in (out.stdout + out.stderr).splitlines() if "asr-service[" in line]
    assert lines == [
        "error: ASR_DATABASE_URL is set, which needs the optional dependency 'psycopg': "
        "pip install 'asr-service[postgres]'"
    ], out.stdout + out.stderr
    assert "Traceback" not in out.stderr and out.returncode != 0
