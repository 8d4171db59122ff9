"""What the CLI commands do; argument parsing lives in __main__.py."""

from __future__ import annotations

import asyncio
import contextlib
import csv
import json
import logging
import os
import shutil
import sys
import tempfile
from collections import defaultdict
from pathlib import Path
from typing import TYPE_CHECKING, Any

from service.config import ServerSettings, Settings, configuration_markdown
from service.errors import ServiceError
from service.quality.estimate import estimate
from service.quality.report import quality_report

if TYPE_CHECKING:
    import argparse
    from collections.abc import AsyncIterator

    from service.formats import Result
    from service.pipeline import Pipeline, RequestOptions

log = logging.getLogger("service.cli")
AUDIO_SUFFIXES = {".wav", ".mp3", ".flac", ".ogg", ".opus", ".m4a", ".webm", ".mp4", ".aac", ".wma", ".aiff"}


# ---- serve ------------------------------------------------------------------------------


def serve(args: argparse.Namespace) -> int:
    import uvicorn

    from service.connections import listen_backlog, raise_fd_limit
    from service.logs import configure_logging

    base = Settings()
    server = base.server.model_copy(
        update={k: v for k, v in {"host": args.host, "port": args.port}.items() if v is not None}
    )
    settings = base.model_copy(update={"server": server})
    configure_logging(settings.server)
    raise_fd_limit()  # before the guard sizes its connection cap from the limit
    common: dict[str, Any] = {
        "host": server.host,
        "port": server.port,
        "log_config": None,
        "access_log": False,  # the service logs one line per request itself
        # uvicorn's httptools protocol with a connection cap and a request-head deadline.
        "http": "service.connections:GuardedHttpProtocol",
        "backlog": listen_backlog(server),
        "timeout_keep_alive": server.keepalive_seconds,
        "ws": "websockets-sansio",  # the Realtime WebSocket, on websockets' current (non-legacy) API
        # The app drains first (ASR_SHUTDOWN_GRACE_SECONDS, service.lifecycle); by the time uvicorn
        # shuts down only the answers to unfinished requests are left to send.
        "timeout_graceful_shutdown": 5,
    }
    if server.processes == 1:
        from service.app import create_app

        app = create_app(settings, drain_on_signals=True)
        if server.metrics_port is not None:
            start_metrics_server(app.state.metrics, server)
        uvicorn.run(app, **common)
        return 0
    # Checked here too: a worker that fails on it would print a traceback per process, not one line.
    from service.keys import KeyLimits, KeyRing

    KeyRing(server.api_key, server.api_keys, KeyLimits.of(settings.keys))
    _prepare_multiprocess(settings)
    uvicorn.run("service.app:serve_app", factory=True, workers=server.processes, **common)
    return 0


def _prepare_multiprocess(settings: Settings) -> None:
    """Set up prometheus_client's multiprocess mode before any metric exists.

    The directory is emptied first: files of a previous run would be summed into this one.
    The supervising process restores the quality counters once; workers never do (a
    restarted worker's predecessor still has its counter files).
    """
    default = Path(tempfile.gettempdir()) / f"asr-metrics-{os.getuid()}-{settings.server.port}"
    path = Path(os.environ.get("PROMETHEUS_MULTIPROC_DIR") or default)
    shutil.rmtree(path, ignore_errors=True)
    path.mkdir(parents=True)
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = str(path)
    from prometheus_client import multiprocess

    from service.metrics import Metrics

    metrics = Metrics()
    if settings.quality.sample_rate > 0:
        from service.database import open_shared
        from service.quality.job import QualityJob
        from service.quality.store import SampleStore

        q, shared = settings.quality, open_shared(settings.database)
        try:
            QualityJob(SampleStore(q.dir, q.max_samples, q.retention_days, shared), metrics).restore_counters()
        finally:
            if shared is not None:
                shared.close()
    # The supervisor serves no requests: its live gauges (ready 0, in-flight 0) must not be
    # merged with the workers'. Its counter files (the restored totals) stay.
    multiprocess.mark_process_dead(os.getpid(), str(path))
    if settings.server.metrics_port is not None:
        from service.gpu import GpuCollector
        from service.metrics import worker_pids

        metrics.add_collector(GpuCollector(lambda: set(worker_pids(str(path)))))
        start_metrics_server(metrics, settings.server)
    log.info("multiprocess metrics in %s for %d workers", path, settings.server.processes)


def start_metrics_server(metrics: Any, server: ServerSettings) -> None:
    """Serve /metrics on ASR_METRICS_PORT in a daemon thread, off the public listener."""
    import threading
    from socketserver import ThreadingMixIn
    from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

    class _Server(ThreadingMixIn, WSGIServer):
        daemon_threads = True

    class _QuietHandler(WSGIRequestHandler):
        def log_message(self, format: str, *args: Any) -> None:
            pass

    def app(environ: dict[str, Any], start_response: Any) -> list[bytes]:
        if environ.get("PATH_INFO") not in ("/metrics", "/"):
            start_response("404 Not Found", [("Content-Type", "text/plain")])
            return [b"not found\n"]
        body, content_type = metrics.render(environ.get("HTTP_ACCEPT"))
        start_response("200 OK", [("Content-Type", content_type), ("Content-Length", str(len(body)))])
        return [body]

    assert server.metrics_port is not None
    httpd = make_server(server.host, server.metrics_port, app, server_class=_Server, handler_class=_QuietHandler)
    threading.Thread(target=httpd.serve_forever, name="metrics-server", daemon=True).start()
    log.info("metrics on http://%s:%s/metrics", server.host, server.metrics_port)


# ---- transcribe / evaluate --------------------------------------------------------------


@contextlib.asynccontextmanager
async def local_pipeline(settings: Settings) -> AsyncIterator[Pipeline]:
    """The service's pipeline in this process, without HTTP: what `transcribe` and `evaluate` use.

    Exits with status 2 and the reason when the model cannot be loaded.
    """
    from service.metrics import Metrics
    from service.pipeline import build_pipeline

    pipeline = build_pipeline(settings, Metrics())
    await pipeline.start()
    try:
        if await pipeline.loaded() != "ready":
            print(f"error: {pipeline.load_error(detailed=True)}", file=sys.stderr)
            raise SystemExit(2)
        yield pipeline
    finally:
        await pipeline.stop()


async def transcribe_file(pipeline: Pipeline, path: Path, options: RequestOptions) -> Result:
    """One file through the pipeline; raises ServiceError (bad audio, ...) or OSError (unreadable)."""
    from service.decoding import EncodedAudio
    from service.pipeline import Work

    fh = await asyncio.to_thread(open, path, "rb")
    try:
        outcome = await pipeline.transcribe(Work(options, EncodedAudio(fh)))
    finally:
        fh.close()
    outcome.audio.close()
    return outcome.result


def transcribe(args: argparse.Namespace) -> int:
    from service.logs import configure_logging

    settings = Settings()
    configure_logging(settings.server.model_copy(update={"log_level": "WARNING"}))
    return asyncio.run(_transcribe_files(settings, args))


async def _transcribe_files(settings: Settings, args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from service.api.schemas import Transcription
    from service.formats import render_text
    from service.languages import normalize_language
    from service.pipeline import RequestOptions

    options = RequestOptions(
        language=normalize_language(args.language),
        task=args.task,
        word_timestamps=args.word_timestamps,
        diarize=args.diarize,
        fine_segments=args.diarize,
    )
    out_dir = Path(args.output_dir) if args.output_dir else None
    if out_dir:
        out_dir.mkdir(parents=True, exist_ok=True)
    failures = 0
    files = [Path(f) for f in args.files]
    async with local_pipeline(settings) as pipeline:
        for path in tqdm(files, disable=len(files) < 2, unit="file", file=sys.stderr):
            try:
                result = await transcribe_file(pipeline, path, options)
            except (ServiceError, OSError) as exc:
                failures += 1
                print(f"error: {path}: {getattr(exc, 'message', exc)}", file=sys.stderr)
                continue
            if args.format == "json":
                body = {"file": str(path), **Transcription.build(result, verbose=False).body()}
                text = json.dumps(body, ensure_ascii=False) + "\n"
            else:
                text = render_text(result, args.format)
            if out_dir:
                (out_dir / f"{path.stem}.{args.format}").write_text(text, encoding="utf-8")
            else:
                if len(files) > 1 and args.format != "json":
                    sys.stdout.write(f"==> {path} <==\n")
                sys.stdout.write(text)
                sys.stdout.flush()
    return 1 if failures else 0


def evaluate(args: argparse.Namespace) -> int:
    """Score the model on files with references: per language the rate over all files, and a
    95% bootstrap interval over files (how much the figure could move with other files)."""
    from service.logs import configure_logging

    settings = Settings()
    configure_logging(settings.server.model_copy(update={"log_level": "WARNING"}))
    folder = Path(args.dir)
    pairs = [(p, p.with_suffix(".txt")) for p in sorted(folder.iterdir()) if p.suffix.lower() in AUDIO_SUFFIXES]
    pairs = [(a, r) for a, r in pairs if r.is_file()]
    if not pairs:
        print(f"error: no audio file in {folder} has a NAME.txt reference beside it", file=sys.stderr)
        return 2
    totals = asyncio.run(_evaluate_pairs(settings, args, pairs))
    rows: list[dict[str, Any]] = []
    for lang, r in sorted(totals.items()):
        figure = estimate(r["errors"], r["units"])
        rows.append(
            {
                "language": lang,
                "files": figure.samples,
                "metric": "CER" if r["unit"] == "char" else "WER",
                "errors": int(sum(r["errors"])),
                "reference_units": int(sum(r["units"])),
                "rate": _round(figure.rate),
                "ci95": [_round(figure.low), _round(figure.high)],
            }
        )
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    print(f"{'language':<9}{'files':>6}  {'metric':<6}{'errors':>8}{'ref units':>11}{'rate':>9}  95% interval")
    for r in rows:
        rate = _percent(r["rate"])
        interval = f"{_percent(r['ci95'][0])} - {_percent(r['ci95'][1])}"
        print(
            f"{r['language']:<9}{r['files']:>6}  {r['metric']:<6}{r['errors']:>8}{r['reference_units']:>11}"
            f"{rate:>9}  {interval}"
        )
    return 0


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 4)


def _percent(value: float | None) -> str:
    return "n/a" if value is None else f"{value * 100:.2f}%"


async def _evaluate_pairs(
    settings: Settings, args: argparse.Namespace, pairs: list[tuple[Path, Path]]
) -> dict[str, dict[str, Any]]:
    from tqdm import tqdm

    from service.languages import normalize_language
    from service.pipeline import RequestOptions
    from service.quality.scoring import score

    # Per language, each file's errors and reference units (the bootstrap resamples files).
    totals: dict[str, dict[str, Any]] = defaultdict(lambda: {"errors": [], "units": [], "unit": "word"})
    async with local_pipeline(settings) as pipeline:
        for audio_path, ref_path in tqdm(pairs, disable=len(pairs) < 2, unit="file", file=sys.stderr):
            lang_file = audio_path.with_suffix(".lang")
            code = args.language or (lang_file.read_text().strip() if lang_file.is_file() else None)
            result = await transcribe_file(pipeline, audio_path, RequestOptions(language=normalize_language(code)))
            transcript = result.transcript
            scored = score(
                ref_path.read_text(encoding="utf-8"), transcript.text, transcript.language, settings.quality.normalizer
            )
            row = totals[transcript.language]
            row["errors"].append(scored.errors)
            row["units"].append(scored.reference_units)
            row["unit"] = scored.unit
    return totals


# ---- samples ----------------------------------------------------------------------------


def _store(settings: Settings) -> Any:
    from service.database import open_shared
    from service.quality.store import SampleStore

    q = settings.quality
    return SampleStore(q.dir, q.max_samples, q.retention_days, open_shared(settings.database))


def samples_export(args: argparse.Namespace) -> int:
    settings = Settings()
    store = _store(settings)
    out = Path(args.dir)
    out.mkdir(parents=True, exist_ok=True)
    status = None if args.status == "all" else args.status
    records, _ = store.page(status=status, limit=1_000_000)
    with open(out / "manifest.jsonl", "w", encoding="utf-8") as manifest:
        for record in records:
            audio = store.audio_path(record.id)
            if audio.is_file():
                shutil.copyfile(audio, out / f"{record.id}.wav")
            (out / f"{record.id}.hypothesis.txt").write_text(record.hypothesis + "\n", encoding="utf-8")
            manifest.write(json.dumps(record.summary(), ensure_ascii=False) + "\n")
    print(f"exported {len(records)} samples to {out} (manifest.jsonl, <id>.wav, <id>.hypothesis.txt)")
    return 0


def samples_report(args: argparse.Namespace) -> int:
    """Per language: the scored samples' weighted error rate with its interval, the unweighted
    one, and, on the samples the shadow engine also transcribed, shadow WER beside true WER."""
    rows = quality_report(_store(Settings()).scored())
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    if not rows:
        print("no scored samples yet (import references, then let the quality job run)")
        return 0
    print(
        f"{'language':<9}{'metric':<7}{'samples':>8}{'estimate':>10}  {'95% interval':<18}{'unweighted':>11}"
        f"{'shadowed':>10}{'true':>9}{'shadow':>9}"
    )
    for r in rows:
        interval = f"{_percent(r['ci95'][0])} - {_percent(r['ci95'][1])}"
        print(
            f"{r['language']:<9}{r['metric']:<7}{r['samples']:>8}{_percent(r['rate']):>10}  {interval:<18}"
            f"{_percent(r['unweighted']):>11}{r['shadowed']:>10}{_percent(r['true_on_shadowed']):>9}"
            f"{_percent(r['shadow_on_shadowed']):>9}"
        )
    return 0


def _read_references(path: Path) -> list[tuple[str, str]]:
    if path.suffix.lower() == ".csv":
        with open(path, newline="", encoding="utf-8") as fh:
            return [(row["id"].strip(), row["text"]) for row in csv.DictReader(fh)]
    pairs = []
    with open(path, encoding="utf-8") as fh:
        for line in fh:
            if line.strip():
                item = json.loads(line)
                pairs.append((str(item["id"]).strip(), str(item["text"])))
    return pairs


def samples_import(args: argparse.Namespace) -> int:
    from service.quality.store import SampleConflictError, valid_id

    store = _store(Settings())
    try:
        pairs = _read_references(Path(args.file))
    except (OSError, KeyError, ValueError) as exc:
        print(
            f"error: cannot read {args.file}: expected CSV with columns id,text or JSONL with id and text ({exc})",
            file=sys.stderr,
        )
        return 2
    done, problems = 0, []
    for sample_id, text in pairs:
        if not valid_id(sample_id) or not text.strip():
            problems.append(f"{sample_id[:40]!r}: invalid id or empty text")
            continue
        try:
            record = store.set_reference(sample_id, text.strip())
        except SampleConflictError as exc:
            problems.append(str(exc))
            continue
        if record is None:
            problems.append(f"{sample_id}: no such sample")
        else:
            done += 1
    for problem in problems:
        print(f"skipped: {problem}", file=sys.stderr)
    print(f"imported {done} references ({len(problems)} skipped)")
    return 0 if not problems else 1


def print_config(args: argparse.Namespace) -> int:
    sys.stdout.write(configuration_markdown())
    return 0


# ---- keys -------------------------------------------------------------------------------


def _keys_file(args: argparse.Namespace) -> Path | None:
    return Path(args.file) if args.file else ServerSettings().api_keys


def keys_add(args: argparse.Namespace) -> int:
    """Make a random key NAME, append its hash to the keys file, print the key (once, on stdout)."""
    from service.keys import KeyLimits, KeysFileError, hash_key, key_table, new_key, parse_keys

    path = _keys_file(args)
    if path is None:
        print("error: name the keys file with --file or ASR_API_KEYS", file=sys.stderr)
        return 2
    text = path.read_text() if path.exists() else ""
    limits = {"max_in_flight": args.max_in_flight, "audio_seconds_per_hour": args.audio_seconds_per_hour}
    key = new_key()
    table = key_table(args.name, hash_key(key), {k: v for k, v in limits.items() if v is not None})
    try:
        if args.name in {k.name for k in parse_keys(text, KeyLimits(), str(path))}:
            print(f"error: {path} has a key named {args.name!r} already", file=sys.stderr)
            return 1
        combined = (text.rstrip("\n") + "\n\n" if text.strip() else "") + table
        parse_keys(combined, KeyLimits(), str(path))  # the name and limits are valid
    except KeysFileError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    # Written whole and moved into place: the service never reads half a file.
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as out:
        out.write(combined)
    os.replace(temporary, path)
    print(key)
    print(f"added key {args.name!r} to {path}: this is the only time the key is shown", file=sys.stderr)
    return 0


def keys_hash(args: argparse.Namespace) -> int:
    """Print the SHA-256 of the key read from stdin, as the keys file stores it."""
    from service.keys import hash_key

    key = sys.stdin.readline().strip()
    if not key:
        print('error: give the key on stdin, e.g. `printf %s "$KEY" | python -m service keys hash`', file=sys.stderr)
        return 2
    print(hash_key(key))
    return 0


def keys_list(args: argparse.Namespace) -> int:
    """Print the accepted keys' names and limits (never their hashes)."""
    from service.keys import KeyLimits, KeyRing, KeysFileError

    server = ServerSettings()
    try:
        ring = KeyRing(server.api_key, _keys_file(args), KeyLimits.of(Settings().keys))
    except KeysFileError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    for key in ring.accepted():
        limits = key.limits
        in_flight = limits.max_in_flight or "unlimited"
        audio = f"{limits.audio_seconds_per_hour:g}" if limits.audio_seconds_per_hour else "unlimited"
        print(f"{key.name}\tin flight: {in_flight}\taudio seconds per hour: {audio}")
    return 0
