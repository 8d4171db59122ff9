"""The job table: jobs, their finished windows, their uploads.

Layout under ASR_JOBS_DIR:
    jobs.sqlite3        one row per job, one per finished window (unless ASR_DATABASE_URL
                        puts those tables in PostgreSQL, shared by every replica)
    <id>/upload         the uploaded file, kept until the job ends (replicas share the directory)

A job is worked on by whoever holds its lease (owner "host:pid:nonce", renewed as windows
finish). A process that dies leaves its lease behind: on the same host it is stale as soon as
the pid is gone (so a restarted service resumes at once); elsewhere when it expires. Each
finished window is committed on its own, so a job interrupted anywhere resumes from its last
finished window.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import socket
import sqlite3
import time
import uuid
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

from service.backends.base import Segment, Word
from service.database import Database, Row, SQLiteDatabase
from service.errors import InsufficientStorageError, is_disk_full
from service.metrics import is_alive
from service.migrations import Step, migrate

if TYPE_CHECKING:
    from collections.abc import Iterator
    from pathlib import Path

    from service.database import Connection

ACTIVE = ("queued", "running")
TERMINAL = ("succeeded", "failed", "cancelled")
LEASE_SECONDS = 60.0

_FIRST_TABLES = """
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

# The job table's schema steps, in order (service.migrations: append, never edit a released one).
# Step 1 is the schema of every release before versioning, so it must stay a no-op on their tables.
MIGRATIONS = (
    Step("jobs and their finished windows", sql=_FIRST_TABLES),
    # The key that submitted each job: a key sees only its own. Rows of earlier releases (and of
    # their replicas during a rolling update) have none: they were made with ASR_API_KEY, "default".
    Step(
        "jobs record the API key that submitted them",
        sql="ALTER TABLE jobs ADD COLUMN owner TEXT; CREATE INDEX IF NOT EXISTS jobs_owner ON jobs(owner, created_at)",
    ),
    # A diarized window's speakers (label, voice print, seconds), so that a job's labels are linked
    # across its windows from what is stored, however often it was resumed.
    Step("speakers of diarized windows", add_columns={"job_windows": {"speakers": "TEXT"}}),
)
# Whose a job without an owner is: the one key the releases before named keys had.
LEGACY_OWNER = "default"


class JobLimitReached(Exception):
    """As many jobs as the limit are queued or running; the new one was not registered."""


@dataclass
class JobRecord:
    id: str
    created_at: float
    status: str
    options: dict[str, Any]
    filename: str | None
    webhook_url: str | None
    duration: float | None
    windows: list[tuple[int, int]] | None  # sample ranges, planned once
    language: str | None
    language_probability: float | None
    audio_done: float
    started_at: float | None
    finished_at: float | None
    error_code: str | None
    error_message: str | None
    webhook_state: str | None
    webhook_attempts: int
    webhook_next: float | None
    webhook_error: str | None
    owner: str | None = None  # the API key's name; None: keys were off, or an earlier release made it


def is_store_full(exc: BaseException) -> bool:
    """Whether `exc` says the disk under the job table or its files is full: ENOSPC, SQLite's
    "database or disk is full" (or its shared-memory file that cannot grow), PostgreSQL's
    disk_full (SQLSTATE 53100)."""
    if is_disk_full(exc):
        return True
    if isinstance(exc, sqlite3.Error):
        return getattr(exc, "sqlite_errorcode", None) in (sqlite3.SQLITE_FULL, sqlite3.SQLITE_IOERR_SHMSIZE)
    return getattr(exc, "sqlstate", None) == "53100"


_FULL = "the job store's disk is full; the job was not accepted"


def new_owner() -> str:
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


def _lease_stale(owner: str | None, until: float | None, now: float) -> bool:
    if owner is None or until is None or until < now:
        return True
    host, _, rest = owner.partition(":")
    pid = rest.partition(":")[0]
    # On this host a dead owner is known at once; another host's is trusted until its lease ends.
    return host == socket.gethostname() and pid.isdigit() and not is_alive(int(pid))


class JobStore:
    def __init__(self, root: Path, database: Database | None = None) -> None:
        """`database`: the shared one (PostgreSQL); by default an SQLite file in `root`."""
        self.root = root
        root.mkdir(parents=True, exist_ok=True)
        self.database = database if database is not None else SQLiteDatabase(root / "jobs.sqlite3")
        migrate(self.database, "jobs", MIGRATIONS)

    @contextlib.contextmanager
    def _db(self, exclusive: str | None = None) -> Iterator[Connection]:
        """One transaction; a full disk is InsufficientStorageError (507), like a full upload disk."""
        try:
            with self.database.transaction(exclusive) as db:
                yield db
        except Exception as exc:
            if is_store_full(exc):
                raise InsufficientStorageError(_FULL) from exc
            raise

    def upload_path(self, job_id: str) -> Path:
        return self.root / job_id / "upload"

    # ---- submitting and reading ---------------------------------------------------------

    def create(
        self,
        upload: Path,
        options: dict[str, Any],
        filename: str | None,
        webhook_url: str | None,
        owner: str | None = None,
        *,
        limit: int | None = None,
    ) -> JobRecord:
        """Register a queued job whose upload was written to `upload` (moved into the store);
        `owner`: the name of the key that submitted it.

        With `limit`, only while fewer jobs are queued or running: counted and inserted in one
        transaction that no other submit runs beside (JobLimitReached otherwise). On any failure
        the upload is removed; a full disk is InsufficientStorageError."""
        job_id = uuid.uuid4().hex
        folder = self.root / job_id
        try:
            folder.mkdir()
            os.replace(upload, folder / "upload")
            with self._db(exclusive="jobs.submit" if limit is not None else None) as db:
                if limit is not None and _active(db) >= limit:
                    raise JobLimitReached()
                db.execute(
                    "INSERT INTO jobs (id, created_at, status, options, filename, webhook_url, owner)"
                    " VALUES (?, ?, 'queued', ?, ?, ?, ?)",
                    (job_id, time.time(), json.dumps(options), filename, webhook_url, owner),
                )
        except Exception as exc:
            shutil.rmtree(folder, ignore_errors=True)
            upload.unlink(missing_ok=True)
            if is_store_full(exc):
                raise InsufficientStorageError(_FULL) from exc
            raise
        record = self.get(job_id)
        assert record is not None
        return record

    def get(self, job_id: str, owner: str | None = None) -> JobRecord | None:
        """The job, or None; with `owner`, only if that key submitted it (a job of another is as
        absent as one that never was)."""
        clause, params = _owned_by(owner)
        with self._db() as db:
            row = db.execute(f"SELECT * FROM jobs WHERE id = ?{clause}", [job_id, *params]).fetchone()
        return _record(row) if row is not None else None

    def recent(self, limit: int = 100, owner: str | None = None) -> list[JobRecord]:
        """The newest jobs first; with `owner`, only that key's."""
        clause, params = _owned_by(owner)
        with self._db() as db:
            rows = db.execute(
                f"SELECT * FROM jobs WHERE 1 = 1{clause} ORDER BY created_at DESC LIMIT ?", [*params, limit]
            ).fetchall()
        return [_record(r) for r in rows]

    def count_active(self) -> int:
        with self._db() as db:
            return _active(db)

    def counts(self) -> dict[str, int]:
        with self._db() as db:
            rows = db.execute("SELECT status, COUNT(*) AS n FROM jobs GROUP BY status").fetchall()
        return {row["status"]: int(row["n"]) for row in rows}

    def windows(self, job_id: str) -> list[tuple[int, float, list[Segment], str]]:
        """Finished windows (index, start seconds, segments with times from the audio's start, text)."""
        with self._db() as db:
            rows = db.execute(
                "SELECT idx, start, segments, text FROM job_windows WHERE job_id = ? ORDER BY idx", (job_id,)
            ).fetchall()
        return [(r["idx"], r["start"], [_segment(s) for s in json.loads(r["segments"])], r["text"]) for r in rows]

    def window_speakers(self, job_id: str) -> dict[int, list[dict[str, Any]]]:
        """The speakers of each diarized finished window: {index: [{label, embedding, seconds}]}."""
        with self._db() as db:
            rows = db.execute(
                "SELECT idx, speakers FROM job_windows WHERE job_id = ? AND speakers IS NOT NULL ORDER BY idx",
                (job_id,),
            ).fetchall()
        return {r["idx"]: json.loads(r["speakers"]) for r in rows}

    # ---- working -------------------------------------------------------------------------

    def claim(self, owner: str, skip: set[str]) -> JobRecord | None:
        """Take the lease on the oldest active job nobody holds (and not in `skip`); None if none."""
        now = time.time()
        with self._db(exclusive="jobs.claim") as db:
            rows = db.execute(
                "SELECT id, lease_owner, lease_until FROM jobs"
                " WHERE status IN ('queued', 'running') ORDER BY created_at"
            ).fetchall()
            for row in rows:
                if row["id"] in skip or not _lease_stale(row["lease_owner"], row["lease_until"], now):
                    continue
                db.execute(
                    "UPDATE jobs SET lease_owner = ?, lease_until = ?, status = 'running',"
                    " started_at = COALESCE(started_at, ?) WHERE id = ?",
                    (owner, now + LEASE_SECONDS, now, row["id"]),
                )
                job_id = row["id"]
                break
            else:
                return None
        return self.get(job_id)

    def holds(self, job_id: str, owner: str) -> bool:
        """Whether `owner` still works on the job (not cancelled, deleted or taken over)."""
        with self._db() as db:
            row = db.execute(
                "SELECT 1 AS held FROM jobs WHERE id = ? AND lease_owner = ? AND status = 'running'", (job_id, owner)
            ).fetchone()
        return row is not None

    def renew(self, job_id: str, owner: str) -> bool:
        """Extend the lease; False when `owner` no longer holds it (or the job ended)."""
        with self._db() as db:
            return (
                db.execute(
                    "UPDATE jobs SET lease_until = ? WHERE id = ? AND lease_owner = ? AND status = 'running'",
                    (time.time() + LEASE_SECONDS, job_id, owner),
                ).rowcount
                == 1
            )

    def release(self, job_id: str, owner: str) -> None:
        """Give the lease up without ending the job (draining: another process, or this one after a
        restart, resumes it)."""
        with self._db() as db:
            db.execute(
                "UPDATE jobs SET lease_owner = NULL, lease_until = NULL WHERE id = ? AND lease_owner = ?",
                (job_id, owner),
            )

    def plan(self, job_id: str, duration: float, windows: list[tuple[int, int]]) -> None:
        with self._db() as db:
            db.execute(
                "UPDATE jobs SET duration = ?, windows = ? WHERE id = ?", (duration, json.dumps(windows), job_id)
            )

    def set_language(self, job_id: str, language: str, probability: float) -> None:
        with self._db() as db:
            db.execute(
                "UPDATE jobs SET language = ?, language_probability = ? WHERE id = ?", (language, probability, job_id)
            )

    def add_window(
        self,
        job_id: str,
        owner: str,
        index: int,
        start: float,
        stop: float,
        segments: list[Segment],
        text: str,
        speakers: list[dict[str, Any]] | None = None,
    ) -> bool:
        """Record a finished window (and the audio it covered) in one transaction, with its
        speakers when it was diarized; False when the lease was lost meanwhile (nothing recorded)."""
        with self._db() as db:
            held = db.execute(
                "UPDATE jobs SET audio_done = audio_done + ?, lease_until = ? WHERE id = ? AND lease_owner = ?"
                " AND status = 'running'",
                (stop - start, time.time() + LEASE_SECONDS, job_id, owner),
            ).rowcount
            if not held:
                return False
            db.execute(
                "INSERT INTO job_windows (job_id, idx, start, stop, text, segments, speakers)"
                " VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT (job_id, idx) DO UPDATE SET start = excluded.start,"
                " stop = excluded.stop, text = excluded.text, segments = excluded.segments,"
                " speakers = excluded.speakers",
                (
                    job_id,
                    index,
                    start,
                    stop,
                    text,
                    json.dumps([asdict(s) for s in segments]),
                    json.dumps(speakers) if speakers is not None else None,
                ),
            )
        return True

    def finish(
        self,
        job_id: str,
        status: str,
        *,
        error: tuple[str, str] | None = None,
        webhook: bool = False,
        owner: str | None = None,
    ) -> bool:
        """Move an active job to a terminal status (and its webhook to pending); its upload goes.

        With `owner`, only while that owner holds the lease. Returns whether the job changed.
        """
        code, message = error if error is not None else (None, None)
        query = (
            "UPDATE jobs SET status = ?, finished_at = ?, error_code = ?, error_message = ?, lease_owner = NULL,"
            " lease_until = NULL, webhook_state = ?, webhook_next = ? WHERE id = ? AND status IN ('queued', 'running')"
        )
        params: list[Any] = [status, time.time(), code, message, "pending" if webhook else None, time.time(), job_id]
        if owner is not None:
            query += " AND lease_owner = ?"
            params.append(owner)
        with self._db() as db:
            changed = db.execute(query, params).rowcount == 1
        if changed:
            self.upload_path(job_id).unlink(missing_ok=True)
        return changed

    # ---- webhooks ------------------------------------------------------------------------

    def due_webhooks(self, now: float) -> list[JobRecord]:
        with self._db() as db:
            rows = db.execute(
                "SELECT * FROM jobs WHERE webhook_state = 'pending' AND webhook_next <= ? ORDER BY webhook_next", (now,)
            ).fetchall()
        return [_record(r) for r in rows]

    def webhook_attempted(self, job_id: str, state: str, next_at: float | None, error: str | None) -> None:
        with self._db() as db:
            db.execute(
                "UPDATE jobs SET webhook_state = ?, webhook_attempts = webhook_attempts + 1, webhook_next = ?,"
                " webhook_error = ? WHERE id = ?",
                (state, next_at, error, job_id),
            )

    # ---- retention -----------------------------------------------------------------------

    def delete(self, job_id: str) -> bool:
        with self._db() as db:
            existed = db.execute("DELETE FROM jobs WHERE id = ?", (job_id,)).rowcount > 0
            db.execute("DELETE FROM job_windows WHERE job_id = ?", (job_id,))
        shutil.rmtree(self.root / job_id, ignore_errors=True)
        return existed

    def sweep(self, retention_seconds: float, now: float | None = None) -> int:
        """Delete jobs that ended more than `retention_seconds` ago (delivered or given-up webhooks)."""
        now = time.time() if now is None else now
        with self._db() as db:
            rows = db.execute(
                "SELECT id FROM jobs WHERE status IN ('succeeded', 'failed', 'cancelled') AND finished_at < ?"
                " AND (webhook_state IS NULL OR webhook_state != 'pending')",
                (now - retention_seconds,),
            ).fetchall()
        for row in rows:
            self.delete(row["id"])
        return len(rows)


def _owned_by(owner: str | None) -> tuple[str, list[Any]]:
    """The condition (to append after a WHERE) for jobs of `owner`; none when `owner` is None."""
    if owner is None:
        return "", []
    if owner == LEGACY_OWNER:  # written so that the (owner, created_at) index serves it
        return " AND (owner = ? OR owner IS NULL)", [owner]
    return " AND owner = ?", [owner]


def _active(db: Connection) -> int:
    row = db.execute("SELECT COUNT(*) AS n FROM jobs WHERE status IN ('queued', 'running')").fetchone()
    return int(row["n"]) if row else 0


def _record(row: Row) -> JobRecord:
    values = dict(row)
    values.pop("lease_owner")
    values.pop("lease_until")
    values["options"] = json.loads(values["options"])
    values["windows"] = [tuple(w) for w in json.loads(values["windows"])] if values["windows"] else None
    return JobRecord(**values)


def _segment(data: dict[str, Any]) -> Segment:
    words = data.pop("words", None)
    segment = Segment(**data)
    if words is not None:
        segment.words = [Word(**w) for w in words]
    return segment
