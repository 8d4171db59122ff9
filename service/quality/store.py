"""Sample store: kept requests on disk (audio + metadata) with an index in a database.

Layout under ASR_QUALITY_DIR (replicas share the directory):
    index.sqlite3              one row per sample, plus running totals for the counters (unless
                               ASR_DATABASE_URL puts those tables in PostgreSQL)
    samples/<id>/audio.wav     16 kHz mono PCM
    samples/<id>/sample.json   hypothesis, segments, engine and request metadata
    incoming/                  samples being written

A sample is written in incoming/, renamed into samples/ (atomic on one filesystem), and
only then indexed, so an indexed sample always has complete files; a crash leaves at most
an unindexed directory, which the retention sweep removes. Ids are 32 hex digits and are
checked before any path is built from one.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import time
import uuid
import wave
from dataclasses import asdict, dataclass, fields
from typing import TYPE_CHECKING, Any

import numpy as np

from service.database import Database, Row, SQLiteDatabase
from service.migrations import Step, migrate
from service.quality import totals

if TYPE_CHECKING:
    from contextlib import AbstractContextManager
    from pathlib import Path

    import numpy.typing as npt

    from service.backends.base import Transcript
    from service.database import Connection

ID_PATTERN = re.compile(r"^[0-9a-f]{32}$")
STATUSES = ("pending", "referenced", "scored", "skipped")
_ORPHAN_GRACE_SECONDS = 3600.0

# The first release's tables. Its stores are adopted by the steps below (service.migrations):
# this one is a no-op on their tables, the next adds what each lacks.
_FIRST_TABLES = """
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

# Columns added to samples before versioning began (the first release's stores lack them).
_ADDED_COLUMNS = {
    # The probability with which the sampler kept this request (Horvitz-Thompson weight 1/p);
    # NULL for samples kept before it was recorded, weighted 1.
    "inclusion_probability": "DOUBLE PRECISION",
    # The shadow engine's agreement with the served hypothesis (service.quality.shadow).
    "shadow_at": "DOUBLE PRECISION",
    "shadow_unit": "TEXT",
    "shadow_errors": "INTEGER",
    "shadow_units": "INTEGER",
}

# The sample index's schema steps, in order (service.migrations: append, never edit a released one).
MIGRATIONS = (
    Step("samples and running totals", sql=_FIRST_TABLES),
    Step("inclusion probability and shadow agreement per sample", add_columns={"samples": _ADDED_COLUMNS}),
)


class SampleConflictError(Exception):
    """The sample is already scored; its reference can no longer change."""


@dataclass
class SampleRecord:
    id: str
    created_at: float
    language: str
    stratum: str
    duration: float
    backend: str
    model: str
    hypothesis: str
    flags: list[str]
    request_id: str | None
    status: str
    reference: str | None
    scored_at: float | None
    unit: str | None
    errors: int | None
    reference_units: int | None
    skip_reason: str | None
    inclusion_probability: float | None
    shadow_at: float | None
    shadow_unit: str | None
    shadow_errors: int | None
    shadow_units: int | None

    @property
    def weight(self) -> float:
        """How many served requests this sample stands for (1 / its inclusion probability)."""
        p = self.inclusion_probability
        return 1.0 / p if p else 1.0

    def summary(self) -> dict[str, Any]:
        """The fields a review list shows."""
        return {
            "id": self.id,
            "language": self.language,
            "duration": round(self.duration, 3),
            "hypothesis": self.hypothesis,
            "created_at": self.created_at,
            "status": self.status,
        }

    def detail(self) -> dict[str, Any]:
        return asdict(self)


def valid_id(sample_id: str) -> bool:
    return bool(ID_PATTERN.match(sample_id))


class SampleStore:
    def __init__(self, root: Path, max_samples: int, retention_days: float, database: Database | None = None) -> None:
        """`database`: the shared one (PostgreSQL); by default an SQLite file in `root`."""
        self.root = root
        self.max_samples = max_samples
        self.retention_seconds = retention_days * 86400.0
        (root / "samples").mkdir(parents=True, exist_ok=True)
        (root / "incoming").mkdir(parents=True, exist_ok=True)
        self.database = database if database is not None else SQLiteDatabase(root / "index.sqlite3")
        migrate(self.database, "quality", MIGRATIONS)

    def _db(self) -> AbstractContextManager[Connection]:
        return self.database.transaction()

    def sample_dir(self, sample_id: str) -> Path:
        if not valid_id(sample_id):
            raise ValueError("invalid sample id")
        return self.root / "samples" / sample_id

    # ---- writing ---------------------------------------------------------------------

    def add(
        self,
        audio: npt.NDArray[np.float32],
        sample_rate: int,
        transcript: Transcript,
        *,
        backend: str,
        model: str,
        stratum: str,
        flags: list[str],
        request_id: str | None,
        metadata: dict[str, Any] | None = None,
        inclusion_probability: float | None = None,
    ) -> str:
        """Store one sample atomically and return its id; enforces the count limit."""
        sample_id = uuid.uuid4().hex
        created = time.time()
        work = self.root / "incoming" / sample_id
        work.mkdir()
        try:
            _write_wav(work / "audio.wav", audio, sample_rate)
            document = {
                "id": sample_id,
                "created_at": created,
                "request_id": request_id,
                "backend": backend,
                "model": model,
                "language": transcript.language,
                "language_probability": transcript.language_probability,
                "duration": transcript.duration,
                "hypothesis": transcript.text,
                "segments": [asdict(s) for s in transcript.segments],
                "flags": flags,
                "stratum": stratum,
                "inclusion_probability": inclusion_probability,
                **(metadata or {}),
            }
            with open(work / "sample.json", "w", encoding="utf-8") as fh:
                json.dump(document, fh, ensure_ascii=False)
                fh.flush()
                os.fsync(fh.fileno())
            os.rename(work, self.sample_dir(sample_id))
        except BaseException:
            shutil.rmtree(work, ignore_errors=True)
            raise
        with self._db() as db:
            db.execute(
                "INSERT INTO samples (id, created_at, language, stratum, duration, backend, model, hypothesis,"
                " flags, request_id, inclusion_probability) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    sample_id,
                    created,
                    transcript.language,
                    stratum,
                    transcript.duration,
                    backend,
                    model,
                    transcript.text,
                    ",".join(flags),
                    request_id,
                    inclusion_probability,
                ),
            )
            _add_total(db, totals.SAMPLES, transcript.language, 1, stratum)
        self.enforce_count()
        return sample_id

    def set_reference(self, sample_id: str, text: str) -> SampleRecord | None:
        """Attach a person's reference text; returns the record, None if there is no such sample.

        Raises SampleConflictError when the sample was already scored.
        """
        with self._db() as db:
            row = db.execute("SELECT status FROM samples WHERE id = ?", (sample_id,)).fetchone()
            if row is None:
                return None
            if row["status"] in ("scored", "skipped"):
                raise SampleConflictError(f"sample {sample_id} is already {row['status']}")
            db.execute(
                "UPDATE samples SET reference = ?, referenced_at = ?, status = 'referenced' WHERE id = ?",
                (text, time.time(), sample_id),
            )
        return self.get(sample_id)

    def record_score(
        self, sample_id: str, language: str, unit: str, errors: int, reference_units: int, weight: float = 1.0
    ) -> bool:
        """Mark a sample scored and add its figures to the running totals, in one transaction:
        raw, and weighted by `weight` (1 / inclusion probability) for the population estimate.

        Returns False (and adds nothing) when the sample is no longer waiting to be scored.
        """
        with self._db() as db:
            updated = db.execute(
                "UPDATE samples SET status = 'scored', scored_at = ?, unit = ?, errors = ?, reference_units = ?"
                " WHERE id = ? AND status = 'referenced'",
                (time.time(), unit, errors, reference_units, sample_id),
            ).rowcount
            if not updated:  # deleted or scored meanwhile: count nothing twice
                return False
            for name, amount in totals.scored(unit, errors, reference_units, weight).items():
                _add_total(db, name, language, amount)
        return True

    def record_shadow(self, sample_id: str, language: str, unit: str, errors: int, units: int, weight: float) -> bool:
        """Record the shadow engine's disagreement with the served hypothesis, once per sample."""
        with self._db() as db:
            updated = db.execute(
                "UPDATE samples SET shadow_at = ?, shadow_unit = ?, shadow_errors = ?, shadow_units = ?"
                " WHERE id = ? AND shadow_at IS NULL",
                (time.time(), unit, errors, units, sample_id),
            ).rowcount
            if not updated:
                return False
            for name, amount in totals.shadowed(unit, errors, units, weight).items():
                _add_total(db, name, language, amount)
        return True

    def unshadowed(self, limit: int) -> list[SampleRecord]:
        """Samples the shadow engine has not transcribed yet, newest first (fresh drift matters most)."""
        return self._records(
            "WHERE shadow_at IS NULL AND status != 'skipped' ORDER BY created_at DESC LIMIT ?", (limit,)
        )

    def scored(self) -> list[SampleRecord]:
        """Every scored sample still in the store (for estimates with confidence intervals)."""
        return self._records("WHERE status = 'scored' ORDER BY scored_at")

    def record_skip(self, sample_id: str, reason: str) -> None:
        with self._db() as db:
            db.execute("UPDATE samples SET status = 'skipped', skip_reason = ? WHERE id = ?", (reason, sample_id))

    def delete(self, sample_id: str) -> bool:
        """Delete a sample's row and files; returns whether it existed."""
        with self._db() as db:
            existed = db.execute("DELETE FROM samples WHERE id = ?", (sample_id,)).rowcount > 0
        shutil.rmtree(self.sample_dir(sample_id), ignore_errors=True)
        return existed

    # ---- retention -------------------------------------------------------------------

    def enforce_count(self) -> int:
        """Delete the oldest samples beyond max_samples; returns how many went."""
        with self._db() as db:
            row = db.execute("SELECT COUNT(*) AS n FROM samples").fetchone()
            excess = int(row["n"]) - self.max_samples if row else 0
            if excess <= 0:
                return 0
            rows = db.execute("SELECT id FROM samples ORDER BY created_at LIMIT ?", (excess,)).fetchall()
        for row in rows:
            self.delete(row["id"])
        return len(rows)

    def sweep(self, now: float | None = None) -> int:
        """Apply retention by age and by count, and remove orphaned directories."""
        now = time.time() if now is None else now
        with self._db() as db:
            old = db.execute("SELECT id FROM samples WHERE created_at < ?", (now - self.retention_seconds,)).fetchall()
            known = {row["id"] for row in db.execute("SELECT id FROM samples").fetchall()}
        for row in old:
            self.delete(row["id"])
        removed = len(old) + self.enforce_count()
        for folder in ("samples", "incoming"):
            for path in (self.root / folder).iterdir():
                stale = now - path.stat().st_mtime > _ORPHAN_GRACE_SECONDS
                if path.name not in known and stale:
                    shutil.rmtree(path, ignore_errors=True)
        return removed

    # ---- reading ---------------------------------------------------------------------

    def get(self, sample_id: str) -> SampleRecord | None:
        if not valid_id(sample_id):
            return None
        with self._db() as db:
            row = db.execute("SELECT * FROM samples WHERE id = ?", (sample_id,)).fetchone()
        return _record(row) if row is not None else None

    def page(
        self, status: str | None = None, language: str | None = None, limit: int = 50, offset: int = 0
    ) -> tuple[list[SampleRecord], int]:
        """Return one page of samples (newest first) and the total that match."""
        where, params = _filters(status, language)
        with self._db() as db:
            counted = db.execute(f"SELECT COUNT(*) AS n FROM samples{where}", params).fetchone()
            rows = db.execute(
                f"SELECT * FROM samples{where} ORDER BY created_at DESC LIMIT ? OFFSET ?", (*params, limit, offset)
            ).fetchall()
        return [_record(r) for r in rows], int(counted["n"]) if counted else 0

    def pending(self, limit: int) -> list[SampleRecord]:
        """Up to `limit` samples waiting for a reference, newest first (the review queue's candidates)."""
        return self._records("WHERE status = 'pending' ORDER BY created_at DESC LIMIT ?", (limit,))

    def reference_counts(self) -> dict[tuple[str, str], int]:
        """How many samples of each (language, stratum) have a reference, scored or not yet."""
        with self._db() as db:
            rows = db.execute(
                "SELECT language, stratum, COUNT(*) AS n FROM samples WHERE status IN ('referenced', 'scored')"
                " GROUP BY language, stratum"
            ).fetchall()
        return {(r["language"], r["stratum"]): int(r["n"]) for r in rows}

    def recently_scored(self, limit: int) -> list[SampleRecord]:
        """The `limit` samples scored last, newest first."""
        return self._records("WHERE status = 'scored' ORDER BY scored_at DESC LIMIT ?", (limit,))

    def referenced(self) -> list[SampleRecord]:
        """Samples with a reference that the job has not scored yet, oldest first."""
        return self._records("WHERE status = 'referenced' ORDER BY referenced_at")

    def _records(self, clauses: str, params: tuple[Any, ...] = ()) -> list[SampleRecord]:
        """The samples that `clauses` (WHERE / ORDER BY / LIMIT, our own SQL) select."""
        with self._db() as db:
            rows = db.execute(f"SELECT * FROM samples {clauses}", params).fetchall()
        return [_record(r) for r in rows]

    def count(self, status: str) -> int:
        with self._db() as db:
            row = db.execute("SELECT COUNT(*) AS n FROM samples WHERE status = ?", (status,)).fetchone()
        return int(row["n"]) if row else 0

    def totals(self) -> list[tuple[str, str, str, float]]:
        """Running totals (name, language, stratum, value) that outlive deleted samples."""
        with self._db() as db:
            rows = db.execute("SELECT name, language, stratum, value FROM totals").fetchall()
        return [(r["name"], r["language"], r["stratum"], float(r["value"])) for r in rows]

    def load_document(self, sample_id: str) -> dict[str, Any]:
        """Read a sample's sample.json; raises OSError or ValueError when missing or damaged."""
        with open(self.sample_dir(sample_id) / "sample.json", encoding="utf-8") as fh:
            document: dict[str, Any] = json.load(fh)
        if document.get("id") != sample_id or not isinstance(document.get("hypothesis"), str):
            raise ValueError("sample.json does not describe this sample")
        return document

    def audio_path(self, sample_id: str) -> Path:
        return self.sample_dir(sample_id) / "audio.wav"


def check_wav(path: Path) -> float:
    """Return the duration of a stored sample's audio; raises OSError / wave.Error if damaged."""
    with wave.open(str(path), "rb") as wav:
        frames = wav.getnframes()
        if wav.getnchannels() != 1 or wav.getsampwidth() != 2 or frames == 0:
            raise wave.Error("not 16-bit mono audio")
        expected = 44 + frames * 2
        if path.stat().st_size < expected:
            raise wave.Error("audio data shorter than its header says")
        return frames / wav.getframerate()


def _write_wav(path: Path, audio: npt.NDArray[np.float32], sample_rate: int) -> None:
    pcm = (np.clip(audio, -1.0, 1.0) * 32767.0).astype("<i2")
    with wave.open(str(path), "wb") as wav:
        wav.setnchannels(1)
        wav.setsampwidth(2)
        wav.setframerate(sample_rate)
        wav.writeframes(pcm.tobytes())


def _add_total(db: Connection, name: str, language: str, value: float, stratum: str = "") -> None:
    db.execute(
        "INSERT INTO totals (name, language, stratum, value) VALUES (?, ?, ?, ?)"
        " ON CONFLICT(name, language, stratum) DO UPDATE SET value = totals.value + excluded.value",
        (name, language, stratum, value),
    )


def _filters(status: str | None, language: str | None) -> tuple[str, tuple[str, ...]]:
    clauses, params = [], []
    if status is not None:
        clauses.append("status = ?")
        params.append(status)
    if language is not None:
        clauses.append("language = ?")
        params.append(language)
    return (" WHERE " + " AND ".join(clauses) if clauses else ""), tuple(params)


def _record(row: Row) -> SampleRecord:
    values = {f.name: row[f.name] for f in fields(SampleRecord)}
    values["flags"] = [f for f in row["flags"].split(",") if f]
    return SampleRecord(**values)
