"""Versioned schema migrations, on SQLite and a real PostgreSQL: stores written by the releases
before versioning upgrade with their rows, each step runs once and whole, processes starting
together do not race, and a schema newer than the code is refused."""

from __future__ import annotations

import json
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Any

import numpy as np
import pytest
from prometheus_client import CollectorRegistry

from service.backends.base import Segment, Transcript
from service.database import Database, SQLiteDatabase
from service.jobs import store as job_store
from service.jobs.store import JobStore
from service.metrics import Metrics
from service.migrations import SchemaTooNewError, Step, current_version, migrate
from service.quality import store as sample_store
from service.quality.job import QualityJob
from service.quality.store import SampleStore

if TYPE_CHECKING:
    from pathlib import Path

# The tables exactly as the releases before versioning created them (service/quality/store.py's
# and service/jobs/store.py's _SCHEMA on main when versioning began). No schema_versions table.
TODAY_SAMPLES = """
CREATE TABLE IF NOT EXISTS samples (
    id TEXT PRIMARY KEY,
    created_at DOUBLE PRECISION NOT NULL,
    language TEXT NOT NULL,
    stratum TEXT NOT NULL,
    duration DOUBLE PRECISION NOT NULL,
    backend TEXT NOT NULL,
    model TEXT NOT NULL,
    hypothesis TEXT NOT NULL,
    flags TEXT NOT NULL DEFAULT '',
    request_id TEXT,
    status TEXT NOT NULL DEFAULT 'pending',
    reference TEXT,
    referenced_at DOUBLE PRECISION,
    scored_at DOUBLE PRECISION,
    unit TEXT,
    errors INTEGER,
    reference_units INTEGER,
    skip_reason TEXT,
    inclusion_probability DOUBLE PRECISION,
    shadow_at DOUBLE PRECISION,
    shadow_unit TEXT,
    shadow_errors INTEGER,
    shadow_units INTEGER
);
CREATE INDEX IF NOT EXISTS samples_status ON samples(status, created_at);
CREATE TABLE IF NOT EXISTS totals (
    name TEXT NOT NULL,
    language TEXT NOT NULL,
    stratum TEXT NOT NULL DEFAULT '',
    value DOUBLE PRECISION NOT NULL,
    PRIMARY KEY (name, language, stratum)
);
"""

# The first release's index: without the columns later added in place (inclusion probability,
# shadow agreement). It used REAL on SQLite; DOUBLE PRECISION here so the same text runs on both.
FIRST_RELEASE_SAMPLES = """
CREATE TABLE IF NOT EXISTS samples (
    id TEXT PRIMARY KEY,
    created_at DOUBLE PRECISION NOT NULL,
    language TEXT NOT NULL,
    stratum TEXT NOT NULL,
    duration DOUBLE PRECISION NOT NULL,
    backend TEXT NOT NULL,
    model TEXT NOT NULL,
    hypothesis TEXT NOT NULL,
    flags TEXT NOT NULL DEFAULT '',
    request_id TEXT,
    status TEXT NOT NULL DEFAULT 'pending',
    reference TEXT,
    referenced_at DOUBLE PRECISION,
    scored_at DOUBLE PRECISION,
    unit TEXT,
    errors INTEGER,
    reference_units INTEGER,
    skip_reason TEXT
);
CREATE INDEX IF NOT EXISTS samples_status ON samples(status, created_at);
CREATE TABLE IF NOT EXISTS totals (
    name TEXT NOT NULL,
    language TEXT NOT NULL,
    stratum TEXT NOT NULL DEFAULT '',
    value DOUBLE PRECISION NOT NULL,
    PRIMARY KEY (name, language, stratum)
);
"""

TODAY_JOBS = """
CREATE TABLE IF NOT EXISTS jobs (
    id TEXT PRIMARY KEY,
    created_at DOUBLE PRECISION NOT NULL,
    status TEXT NOT NULL,
    options TEXT NOT NULL,
    filename TEXT,
    webhook_url TEXT,
    duration DOUBLE PRECISION,
    windows TEXT,
    language TEXT,
    language_probability DOUBLE PRECISION,
    audio_done DOUBLE PRECISION NOT NULL DEFAULT 0,
    started_at DOUBLE PRECISION,
    finished_at DOUBLE PRECISION,
    error_code TEXT,
    error_message TEXT,
    lease_owner TEXT,
    lease_until DOUBLE PRECISION,
    webhook_state TEXT,
    webhook_attempts INTEGER NOT NULL DEFAULT 0,
    webhook_next DOUBLE PRECISION,
    webhook_error TEXT
);
CREATE INDEX IF NOT EXISTS jobs_status ON jobs(status, created_at);
CREATE TABLE IF NOT EXISTS job_windows (
    job_id TEXT NOT NULL,
    idx INTEGER NOT NULL,
    start DOUBLE PRECISION NOT NULL,
    stop DOUBLE PRECISION NOT NULL,
    text TEXT NOT NULL,
    segments TEXT NOT NULL,
    PRIMARY KEY (job_id, idx)
);
"""

# Running totals as those releases named them: the names are stored data that restores must find.
LEGACY_TOTALS = [
    ("samples", "en", "short", 3.0),
    ("samples", "zh", "medium", 1.0),
    ("word_errors", "en", "", 4.0),
    ("reference_words", "en", "", 20.0),
    ("weighted_word_errors", "en", "", 40.0),
    ("weighted_reference_words", "en", "", 200.0),
    ("scored", "en", "", 2.0),
    ("char_errors", "zh", "", 1.0),
    ("reference_chars", "zh", "", 6.0),
    ("weighted_char_errors", "zh", "", 1.0),
    ("weighted_reference_chars", "zh", "", 6.0),
    ("scored", "zh", "", 1.0),
    ("shadow_word_errors", "en", "", 30.0),
    ("shadow_reference_words", "en", "", 100.0),
    ("shadow_scored", "en", "", 1.0),
]
RESTORED = [  # each legacy total, as the counter series it is restored into
    ("asr_quality_samples_total", {"language": "en", "stratum": "short"}, 3.0),
    ("asr_quality_samples_total", {"language": "zh", "stratum": "medium"}, 1.0),
    ("asr_quality_word_errors_total", {"language": "en"}, 4.0),
    ("asr_quality_reference_words_total", {"language": "en"}, 20.0),
    ("asr_quality_weighted_word_errors_total", {"language": "en"}, 40.0),
    ("asr_quality_weighted_reference_words_total", {"language": "en"}, 200.0),
    ("asr_quality_scored_samples_total", {"language": "en"}, 2.0),
    ("asr_quality_char_errors_total", {"language": "zh"}, 1.0),
    ("asr_quality_reference_chars_total", {"language": "zh"}, 6.0),
    ("asr_quality_weighted_char_errors_total", {"language": "zh"}, 1.0),
    ("asr_quality_weighted_reference_chars_total", {"language": "zh"}, 6.0),
    ("asr_quality_scored_samples_total", {"language": "zh"}, 1.0),
    ("asr_quality_shadow_word_errors_total", {"language": "en"}, 30.0),
    ("asr_quality_shadow_reference_words_total", {"language": "en"}, 100.0),
    ("asr_quality_shadow_scored_samples_total", {"language": "en"}, 1.0),
]


def _database(tmp_path: Path, shared: Database | None, filename: str) -> Database:
    """Where the store keeps its tables: the shared PostgreSQL, or its SQLite file in tmp_path."""
    return shared if shared is not None else SQLiteDatabase(tmp_path / filename)


def _script(database: Database, sql: str) -> None:
    with database.transaction() as db:
        for statement in filter(None, (s.strip() for s in sql.split(";"))):
            db.execute(statement)


def _insert(database: Database, table: str, rows: list[dict[str, Any]]) -> None:
    with database.transaction() as db:
        for row in rows:
            marks = ", ".join("?" * len(row))
            db.execute(f"INSERT INTO {table} ({', '.join(row)}) VALUES ({marks})", tuple(row.values()))


def _snapshot(database: Database, tables: tuple[str, ...]) -> dict[str, Any]:
    """Every table's columns and rows (sorted), to compare a database before and after."""
    found: dict[str, Any] = {}
    with database.transaction() as db:
        for table in tables:
            rows = db.execute(f"SELECT * FROM {table}").fetchall()
            found[table] = (
                sorted(database.columns(db, table)),
                sorted(json.dumps(r, sort_keys=True) for r in rows),
            )
    return found


def _version(database: Database, store: str) -> int:
    with database.transaction() as db:
        return current_version(db, store)


def _set_version(database: Database, store: str, version: int) -> None:
    with database.transaction() as db:
        db.execute("UPDATE schema_versions SET version = ? WHERE store = ?", (version, store))


def _legacy_samples(database: Database, sql: str) -> dict[str, str]:
    """An index as an unversioned release left it: a pending, a scored and (where the release had
    the columns) a shadowed sample, and its totals. Returns the ids by role."""
    _script(database, sql)
    now = time.time()
    ids = {role: uuid.uuid4().hex for role in ("pending", "scored", "shadowed")}
    base = {"language": "en", "stratum": "short", "duration": 1.5, "backend": "faster-whisper", "model": "tiny.en"}
    rows: list[dict[str, Any]] = [
        {"id": ids["pending"], "created_at": now - 30, "hypothesis": "hello world", "request_id": "r1", **base},
        {
            "id": ids["scored"],
            "created_at": now - 20,
            "hypothesis": "the quick brown fox",
            "flags": "repetition",
            "status": "scored",
            "reference": "a quick brown fox",
            "referenced_at": now - 10,
            "scored_at": now - 5,
            "unit": "word",
            "errors": 1,
            "reference_units": 4,
            **base,
        },
    ]
    if "shadow_at" in sql:
        rows.append(
            {
                "id": ids["shadowed"],
                "created_at": now - 10,
                "hypothesis": "good morning",
                "inclusion_probability": 0.25,
                "shadow_at": now - 1,
                "shadow_unit": "word",
                "shadow_errors": 1,
                "shadow_units": 2,
                **base,
            }
        )
    _insert(database, "samples", rows)
    _insert(
        database, "totals", [dict(zip(("name", "language", "stratum", "value"), t, strict=True)) for t in LEGACY_TOTALS]
    )
    return ids


@pytest.mark.parametrize("release", ["today", "first"])
def test_an_unversioned_sample_index_upgrades_keeping_its_rows(
    tmp_path: Path, shared_database: Database | None, release: str
) -> None:
    database = _database(tmp_path, shared_database, "index.sqlite3")
    ids = _legacy_samples(database, TODAY_SAMPLES if release == "today" else FIRST_RELEASE_SAMPLES)

    store = SampleStore(tmp_path, max_samples=100, retention_days=30, database=shared_database)

    latest = len(sample_store.MIGRATIONS)
    assert _version(store.database, "quality") == latest
    pending, scored = store.get(ids["pending"]), store.get(ids["scored"])
    assert pending is not None and scored is not None
    assert (pending.status, pending.hypothesis, pending.request_id) == ("pending", "hello world", "r1")
    assert pending.inclusion_probability is None and pending.weight == 1.0  # older samples weigh 1
    assert (scored.status, scored.reference, scored.errors) == ("scored", "a quick brown fox", 1)
    assert scored.flags == ["repetition"]
    if release == "today":
        shadowed = store.get(ids["shadowed"])
        assert shadowed is not None and (shadowed.weight, shadowed.shadow_errors) == (4.0, 1)
    assert sorted(store.totals()) == sorted(LEGACY_TOTALS)

    # The totals written under the old names are restored into their counters.
    metrics = Metrics(CollectorRegistry())
    QualityJob(store, metrics).restore_counters()
    for name, labels, value in RESTORED:
        assert metrics.registry.get_sample_value(name, labels) == value, (name, labels)

    # The added columns work on the old rows and on new ones.
    assert store.record_shadow(ids["pending"], "en", "word", 1, 2, pending.weight)
    assert store.get(ids["pending"]).shadow_units == 2  # type: ignore[union-attr]
    transcript = Transcript("new sample", "en", 0.9, 1.0, [Segment(id=0, start=0.0, end=1.0, text="new sample")])
    audio = np.zeros(16_000, np.float32)
    options: dict[str, Any] = {"backend": "b", "model": "m", "stratum": "short", "flags": [], "request_id": None}
    new = store.add(audio, 16_000, transcript, **options, inclusion_probability=0.5)
    assert store.get(new).weight == 2.0  # type: ignore[union-attr]

    # Opening it again changes nothing.
    before = _snapshot(store.database, ("samples", "totals", "schema_versions"))
    SampleStore(tmp_path, max_samples=100, retention_days=30, database=shared_database)
    assert _snapshot(store.database, ("samples", "totals", "schema_versions")) == before


def test_an_unversioned_job_table_upgrades_and_its_jobs_resume(
    tmp_path: Path, shared_database: Database | None
) -> None:
    database = _database(tmp_path, shared_database, "jobs.sqlite3")
    _script(database, TODAY_JOBS)
    now = time.time()
    segments = json.dumps([{"id": 0, "start": 0.0, "end": 2.0, "text": "first window"}])
    _insert(
        database,
        "jobs",
        [
            {"id": "done", "created_at": now - 60, "status": "succeeded", "options": "{}", "finished_at": now - 50},
            {  # interrupted mid-way by a process that is gone (an expired lease)
                "id": "half",
                "created_at": now - 40,
                "status": "running",
                "options": json.dumps({"language": "en"}),
                "filename": "talk.mp3",
                "duration": 60.0,
                "windows": json.dumps([[0, 480_000], [480_000, 960_000]]),
                "audio_done": 30.0,
                "started_at": now - 39,
                "lease_owner": "gone-host:1:abcdef12",
                "lease_until": now - 1,
                "webhook_attempts": 0,
            },
        ],
    )
    _insert(
        database,
        "job_windows",
        [{"job_id": "half", "idx": 0, "start": 0.0, "stop": 30.0, "text": "first window", "segments": segments}],
    )

    jobs = JobStore(tmp_path, shared_database)

    assert _version(jobs.database, "jobs") == len(job_store.MIGRATIONS)
    assert jobs.counts() == {"succeeded": 1, "running": 1}
    claimed = jobs.claim("here:1:00000000", set())
    assert claimed is not None and claimed.id == "half"
    assert (claimed.windows, claimed.audio_done, claimed.filename) == (
        [(0, 480_000), (480_000, 960_000)],
        30.0,
        "talk.mp3",
    )
    [(index, start, [segment], text)] = jobs.windows("half")
    assert (index, start, segment.text, text) == (0, 0.0, "first window", "first window")
    # Step 2's speakers column: empty on the old window, kept for a new diarized one.
    assert jobs.window_speakers("half") == {}
    voice = {"label": "A", "embedding": [0.6, 0.8], "seconds": 2.0}
    assert jobs.add_window("half", "here:1:00000000", 1, 30.0, 60.0, [], "", speakers=[voice])
    assert jobs.window_speakers("half") == {1: [voice]}

    before = _snapshot(jobs.database, ("jobs", "job_windows", "schema_versions"))
    JobStore(tmp_path, shared_database)
    assert _snapshot(jobs.database, ("jobs", "job_windows", "schema_versions")) == before


def test_a_job_table_from_before_named_keys_gives_its_jobs_to_the_default_key(
    tmp_path: Path, shared_database: Database | None
) -> None:
    database = _database(tmp_path, shared_database, "jobs.sqlite3")
    migrate(database, "jobs", job_store.MIGRATIONS[:1])  # the release before jobs had owners
    now = time.time()
    _insert(database, "jobs", [{"id": "old", "created_at": now - 60, "status": "succeeded", "options": "{}"}])

    jobs = JobStore(tmp_path, shared_database)

    assert _version(jobs.database, "jobs") == len(job_store.MIGRATIONS)
    old = jobs.get("old")
    assert old is not None and old.owner is None and old.status == "succeeded"
    # Made when ASR_API_KEY was the only key: "default"'s, and no named key's.
    assert jobs.get("old", "default") is not None and jobs.get("old", "alice") is None
    # A replica of the previous release, during a rolling update, still inserts without an owner.
    _insert(database, "jobs", [{"id": "during", "created_at": now - 30, "status": "queued", "options": "{}"}])
    upload = tmp_path / ".upload-new"
    upload.write_bytes(b"audio")
    new = jobs.create(upload, {}, "new.wav", None, owner="alice")
    assert [j.id for j in jobs.recent(owner="default")] == ["during", "old"]
    assert [j.id for j in jobs.recent(owner="alice")] == [new.id]
    assert jobs.count_active() == 2


def test_a_schema_newer_than_the_code_is_refused_and_left_alone(
    tmp_path: Path, shared_database: Database | None
) -> None:
    store = SampleStore(tmp_path, max_samples=100, retention_days=30, database=shared_database)
    jobs = JobStore(tmp_path / "jobs", shared_database)
    latest = len(sample_store.MIGRATIONS)
    _set_version(store.database, "quality", latest + 1)
    _set_version(jobs.database, "jobs", len(job_store.MIGRATIONS) + 1)
    before = _snapshot(store.database, ("samples", "totals", "schema_versions"))

    with pytest.raises(SchemaTooNewError, match=rf"quality store's tables are at schema version {latest + 1}.*newer"):
        SampleStore(tmp_path, max_samples=100, retention_days=30, database=shared_database)
    with pytest.raises(SchemaTooNewError, match="jobs store"):
        JobStore(tmp_path / "jobs", shared_database)
    assert _snapshot(store.database, ("samples", "totals", "schema_versions")) == before


def test_a_failing_step_leaves_nothing_behind(tmp_path: Path, shared_database: Database | None) -> None:
    database = _database(tmp_path, shared_database, "steps.sqlite3")
    good = Step("a table", sql="CREATE TABLE first_table (x INTEGER)")
    broken = Step("half a step", sql="CREATE TABLE second_table (x INTEGER); INSERT INTO no_such_table VALUES (1)")

    with pytest.raises(Exception, match="no_such_table"):
        migrate(database, "test", [good, broken])

    assert _version(database, "test") == 1  # the first step stays done, the second is wholly undone
    with database.transaction() as db:
        assert database.columns(db, "first_table") == {"x"}
        assert database.columns(db, "second_table") == set()
    fixed = Step("the step, fixed", sql="CREATE TABLE second_table (x INTEGER)")
    assert migrate(database, "test", [good, fixed]) == 2


def test_processes_starting_together_apply_each_step_once(tmp_path: Path, shared_database: Database | None) -> None:
    # None of these steps can run twice: a second CREATE or ADD COLUMN fails, a second INSERT counts.
    steps = [
        Step("a table", sql="CREATE TABLE started (n INTEGER)"),
        Step("a row", sql="INSERT INTO started (n) VALUES (1)"),
        Step("a column", sql="ALTER TABLE started ADD COLUMN m INTEGER"),
    ]
    starters = 6
    barrier = threading.Barrier(starters)

    def start() -> int:
        # Each its own Database object, as separate processes would have (PostgreSQL: the pool
        # gives each its own session).
        database = shared_database if shared_database is not None else SQLiteDatabase(tmp_path / "race.sqlite3")
        barrier.wait(timeout=30)
        return migrate(database, "race", steps)

    with ThreadPoolExecutor(starters) as pool:
        assert list(pool.map(lambda _: start(), range(starters))) == [3] * starters
    database = _database(tmp_path, shared_database, "race.sqlite3")
    with database.transaction() as db:
        assert db.execute("SELECT COUNT(*) AS n FROM started").fetchone() == {"n": 1}
        assert database.columns(db, "started") == {"n", "m"}
