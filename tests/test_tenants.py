"""Keys are tenants: a job is seen, fetched and deleted only by the key that submitted it (the admin
sees all; another key gets the 404 of a job that never existed), on SQLite and on PostgreSQL; and
client secrets open one session each, whichever process redeems them."""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Any

import pytest

from service.client_secrets import MAX_UNUSED_PER_KEY, ClientSecretStore, TooManySecretsError
from service.database import SQLiteDatabase
from service.jobs.store import JobStore
from tests.conftest import running_app, until
from tests.fakes import FakeBackend, factory
from tests.test_keys import ADMIN_TOKEN, DEFAULT_KEY, KEYS, bearer, key_settings

if TYPE_CHECKING:
    from pathlib import Path

    from service.database import Database


@pytest.mark.anyio
async def test_a_key_sees_only_its_own_jobs_and_the_admin_sees_all(
    tmp_path: Path, speech_dir: Path, database: dict[str, Any]
) -> None:
    settings = key_settings(tmp_path, database=database)
    alice, bob, admin, default = (bearer(k) for k in (KEYS["alice"], KEYS["bob"], ADMIN_TOKEN, DEFAULT_KEY))
    audio = (speech_dir / "fox.wav").read_bytes()
    async with running_app(settings, factory(FakeBackend())) as h:

        async def submit(headers: dict[str, str]) -> str:
            r = await h.client.post("/v1/jobs", files={"file": audio}, headers=headers)
            assert r.status_code == 202, r.text
            job_id: str = r.json()["id"]

            async def done() -> bool:
                return (await h.client.get(f"/v1/jobs/{job_id}", headers=headers)).json()["status"] == "succeeded"

            await until(done, 30, f"job {job_id}")
            return job_id

        alices, bobs = await submit(alice), await submit(bob)

        async def listed(headers: dict[str, str]) -> set[str]:
            return {j["id"] for j in (await h.client.get("/v1/jobs", headers=headers)).json()["items"]}

        assert await listed(alice) == {alices} and await listed(bob) == {bobs}
        assert await listed(admin) == {alices, bobs} and await listed(default) == set()
        # Bob's every verb on alice's job answers as for a job that never existed: it is not revealed.
        never = "f" * 32
        for method, path in (("GET", "/v1/jobs/{}"), ("GET", "/v1/jobs/{}/result"), ("DELETE", "/v1/jobs/{}")):
            theirs = await h.client.request(method, path.format(alices), headers=bob)
            absent = await h.client.request(method, path.format(never), headers=bob)
            assert theirs.status_code == absent.status_code == 404, (method, path, theirs.text)
            assert theirs.json()["error"]["code"] == absent.json()["error"]["code"] == "not_found"
        # ...and changed nothing: alice's job and its result are still hers.
        assert (await h.client.get(f"/v1/jobs/{alices}/result", headers=alice)).json()["text"] == "hello world"
        assert (await h.client.get(f"/v1/jobs/{alices}", headers=admin)).status_code == 200
        assert (await h.client.delete(f"/v1/jobs/{alices}", headers=bob)).status_code == 404
        assert (await h.client.delete(f"/v1/jobs/{alices}", headers=alice)).status_code == 204
        assert await listed(admin) == {bobs}
        # The admin may act on anyone's job.
        assert (await h.client.delete(f"/v1/jobs/{bobs}", headers=admin)).status_code == 204
        assert await listed(bob) == set()


def _upload(tmp_path: Path, name: str) -> Path:
    path = tmp_path / f".upload-{name}"
    path.write_bytes(b"audio")
    return path


def test_the_store_filters_jobs_by_owner(tmp_path: Path, shared_database: Database | None) -> None:
    store = JobStore(tmp_path / "jobs", shared_database)
    alices = store.create(_upload(tmp_path, "a"), {}, "a.wav", None, owner="alice")
    bobs = store.create(_upload(tmp_path, "b"), {}, "b.wav", None, owner="bob")
    open_ = store.create(_upload(tmp_path, "n"), {}, "n.wav", None)  # keys off, or an earlier release
    assert store.get(alices.id, "alice") is not None and store.get(alices.id, "bob") is None
    assert store.get(alices.id) is not None  # no filter: the admin
    assert [j.id for j in store.recent(owner="alice")] == [alices.id]
    assert [j.id for j in store.recent(owner="bob")] == [bobs.id]
    # A job without an owner was made with the only key there was, ASR_API_KEY: "default".
    assert [j.id for j in store.recent(owner="default")] == [open_.id]
    assert store.get(open_.id, "default") is not None and store.get(open_.id, "alice") is None
    assert {j.id for j in store.recent()} == {alices.id, bobs.id, open_.id}
    assert (store.get(alices.id) or alices).owner == "alice"


def _secrets(tmp_path: Path, shared: Database | None, clock: Any = time.time) -> ClientSecretStore:
    return ClientSecretStore(shared if shared is not None else SQLiteDatabase(tmp_path / "jobs.sqlite3"), clock)


def test_a_client_secret_opens_one_session_then_none(tmp_path: Path, shared_database: Database | None) -> None:
    store = _secrets(tmp_path, shared_database)
    session = {"type": "transcription", "audio": {"input": {"transcription": {"language": "en"}}}}
    token, expires_at = store.mint("alice", False, session, 60)
    assert token.startswith("ek_") and expires_at == pytest.approx(time.time() + 60, abs=5)
    with store.database.transaction() as db:  # only its hash is kept
        assert token not in str(db.execute("SELECT * FROM client_secrets").fetchall())
    # Redeemed by many at once (threads here, processes or replicas in service): exactly one gets it.
    with ThreadPoolExecutor(8) as pool:
        results = list(pool.map(lambda _: store.redeem(token), range(8)))
    won = [r for r in results if r is not None]
    assert len(won) == 1 and (won[0].key, won[0].admin, won[0].session) == ("alice", False, session)
    assert store.redeem(token) is None and store.redeem("ek_never-minted") is None


def test_a_client_secret_expires_and_a_key_holds_a_bounded_number(
    tmp_path: Path, shared_database: Database | None
) -> None:
    now = [1_000_000.0]
    store = _secrets(tmp_path, shared_database, clock=lambda: now[0])
    token, _ = store.mint("alice", False, None, 30)
    now[0] += 31
    assert store.redeem(token) is None
    for _ in range(MAX_UNUSED_PER_KEY):
        store.mint("bob", False, None, 30)
    with pytest.raises(TooManySecretsError):
        store.mint("bob", False, None, 30)
    store.mint("alice", False, None, 30)  # another key's are its own
    assert store.unused("bob") == MAX_UNUSED_PER_KEY
    now[0] += 31  # expired ones stop counting (and are deleted at the next mint)
    store.mint("bob", False, None, 30)
    assert store.unused("bob") == 1
