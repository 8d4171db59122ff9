"""Job submission at its limits: a full disk under the job table (507, nothing left behind), the
queue limit under concurrent submits (held exactly, on SQLite and PostgreSQL), and a cancel that
lands while the runner claims the job (a clean cancelled job, no traceback)."""

from __future__ import annotations

import asyncio
import logging
import math
import os
import threading
from typing import TYPE_CHECKING, Any

import pytest

from tests.conftest import make_settings, running_app, until
from tests.fakes import FakeBackend, factory
from tests.test_hardening_server import small_tmpfs
from tests.test_jobs import wait_status

if TYPE_CHECKING:
    from pathlib import Path

    from service.jobs.store import JobRecord, JobStore

pytestmark = pytest.mark.anyio
PAGE = 4096


@pytest.fixture
def fox(speech_dir: Path) -> bytes:
    return (speech_dir / "fox.wav").read_bytes()


def leftovers(root: Path) -> list[str]:
    """What the job directory holds besides the job table (and the test's filler)."""
    return sorted(p.name for p in root.iterdir() if not p.name.startswith(("jobs.sqlite3", "filler")))


async def test_a_full_disk_at_the_job_table_write_is_507_and_leaves_no_upload(tmp_path: Path, fox: bytes) -> None:
    """A real full disk: ASR_JOBS_DIR on a small tmpfs, filled so that the upload still fits and
    the job table can still be read (its shared-memory file takes 8 pages), but its write cannot."""
    root = tmp_path / "jobs"
    with small_tmpfs(root, "2m") as mounted:
        assert mounted, "mounting a tmpfs needs root, which the test machines have"
        async with running_app(make_settings(tmp_path), factory(FakeBackend())) as h:
            assert (await h.client.get("/v1/jobs")).status_code == 200
            free = os.statvfs(root).f_bavail * PAGE
            room = (math.ceil(len(fox) / PAGE) + 9) * PAGE
            (root / "filler").write_bytes(b"\0" * (free - room))
            r = await h.client.post("/v1/jobs", files={"file": ("fox.wav", fox)})
            assert r.status_code == 507, r.text
            assert r.json()["error"]["code"] == "insufficient_storage" and "disk is full" in r.text
            assert leftovers(root) == []  # neither the spooled upload nor the job's folder
            assert h.sample("asr_requests_rejected_total", {"reason": "insufficient_storage"}) == 1
            # Space again: the service takes jobs without a restart.
            (root / "filler").unlink()
            r = await h.client.post("/v1/jobs", files={"file": ("fox.wav", fox)})
            assert r.status_code == 202, r.text
            assert (await wait_status(h, r.json()["id"], {"succeeded"}))["status"] == "succeeded"


def test_the_stores_know_a_full_postgresql_disk() -> None:
    """PostgreSQL's own "disk full" (SQLSTATE 53100) cannot be caused here without filling the
    shared test server; the error psycopg raises for it is recognised like SQLite's and ENOSPC."""
    from psycopg import errors

    from service.jobs.store import is_store_full

    assert is_store_full(errors.DiskFull("could not extend file"))
    assert not is_store_full(errors.UniqueViolation("duplicate key"))


async def test_the_queue_limit_holds_under_concurrent_submits(
    tmp_path: Path, fox: bytes, database: dict[str, Any]
) -> None:
    """48 submits at once against a limit of 32 (before: all 48 accepted)."""
    gate = threading.Event()  # windows wait on it: no job ends (and frees a place) meanwhile
    backend = FakeBackend(gate=gate)
    settings = make_settings(tmp_path, jobs={"max_queued": 32}, database=database)
    async with running_app(settings, factory(backend)) as h:
        try:
            answers = await asyncio.gather(
                *(h.client.post("/v1/jobs", files={"file": (f"{i}.wav", fox)}) for i in range(48))
            )
            statuses = sorted(r.status_code for r in answers)
            assert statuses == [202] * 32 + [429] * 16, statuses
            assert all(int(r.headers["retry-after"]) >= 1 for r in answers if r.status_code == 429)
            items = (await h.client.get("/v1/jobs")).json()["items"]
            assert len(items) == 32 and {j["status"] for j in items} <= {"queued", "running"}
            # Each refused submit took its upload away with it.
            assert len(leftovers(settings.jobs.dir)) == 32
        finally:
            gate.set()


async def test_a_cancel_that_lands_while_the_runner_claims_the_job_is_a_clean_cancel(
    tmp_path: Path, fox: bytes, caplog: pytest.LogCaptureFixture
) -> None:
    """The DELETE arrives after the runner took the job's lease and before it opened the upload
    (which the cancel removes): before, an ERROR traceback (FileNotFoundError)."""
    caplog.set_level(logging.INFO)
    async with running_app(make_settings(tmp_path), factory(FakeBackend())) as h:
        runner = h.app.state.jobs
        store: JobStore = runner.store
        loop = asyncio.get_running_loop()
        claimed = asyncio.Event()
        resume = threading.Event()
        claim = store.claim

        def claim_then_wait(owner: str, skip: set[str]) -> JobRecord | None:
            job = claim(owner, skip)
            if job is not None:
                loop.call_soon_threadsafe(claimed.set)
                resume.wait(10)  # the runner holds the lease; the client's DELETE runs now
            return job

        store.claim = claim_then_wait  # type: ignore[method-assign]
        r = await h.client.post("/v1/jobs", files={"file": ("fox.wav", fox)})
        job_id = r.json()["id"]
        await asyncio.wait_for(claimed.wait(), 10)
        cancelled = await h.client.delete(f"/v1/jobs/{job_id}")
        assert cancelled.status_code == 200 and cancelled.json()["status"] == "cancelled"
        resume.set()
        await until(lambda: not runner._tasks and not runner._running, what="the runner lets go of the job")
        view = (await h.client.get(f"/v1/jobs/{job_id}")).json()
        assert view["status"] == "cancelled" and view["error"] is None
        await until(lambda: h.sample("asr_jobs", {"state": "cancelled"}) == 1, what="the cancel counted")
        assert h.sample("asr_jobs", {"state": "failed"}) == 0
    errors = [rec for rec in caplog.records if rec.levelno >= logging.WARNING and rec.name.startswith("service")]
    assert errors == [], [rec.getMessage() for rec in errors]
