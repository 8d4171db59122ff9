"""The quality loop through the API: requests are sampled, references arrive, the job scores."""

from __future__ import annotations

import asyncio
import csv
import json
import time
from pathlib import Path
from typing import Any

import jiwer
import numpy as np
import pytest

from service.quality.scoring import basic_normalize
from service.quality.store import SampleStore
from tests.conftest import SENTENCES, make_settings, run_cli, running_app, until
from tests.fakes import FakeBackend, factory, fake_beside_real_shadow

pytestmark = pytest.mark.anyio
ADMIN = {"Authorization": "Bearer adm1n"}


def _quality_settings(tmp_path: Path, database: dict[str, Any] | None = None, **quality: object) -> object:
    return make_settings(
        tmp_path,
        quality={"sample_rate": 1.0, "normalizer": "basic", "interval_seconds": 3600, **quality},
        server={"admin_token": "adm1n"},
        database=database or {},
    )


async def _wait_samples(h: object, count: int) -> list[dict[str, object]]:
    for _ in range(200):
        r = await h.client.get("/v1/samples", headers=ADMIN)
        if r.json()["total"] >= count:
            return list(r.json()["items"])
        await asyncio.sleep(0.05)
    raise AssertionError("samples did not appear")


@pytest.mark.slow
async def test_sampled_requests_scored_against_references_match_jiwer(
    tmp_path: Path, speech_dir: Path, database: dict[str, Any]
) -> None:
    async with running_app(_quality_settings(tmp_path, database)) as h:
        for name in SENTENCES:
            path = speech_dir / f"{name}.mp3"
            r = await h.client.post("/transcribe", files={"file": (path.name, path.read_bytes())})
            assert r.status_code == 200
        items = await _wait_samples(h, len(SENTENCES))
        assert {i["status"] for i in items} == {"pending"}
        assert all(set(i) >= {"id", "language", "duration", "hypothesis", "created_at", "status"} for i in items)
        assert h.sample("asr_quality_samples_total", {"language": "en", "stratum": "short"}) == len(SENTENCES)

        # A person listens and writes what was said: the sentence spoken.
        expected_errors = expected_words = 0
        by_hypothesis = {}
        for item in items:
            detail = (await h.client.get(f"/v1/samples/{item['id']}", headers=ADMIN)).json()
            audio = await h.client.get(f"/v1/samples/{item['id']}/audio", headers=ADMIN)
            assert audio.headers["content-type"] == "audio/wav" and audio.content[:4] == b"RIFF"
            reference = _which_sentence(detail["hypothesis"])
            by_hypothesis[item["id"]] = reference
            r = await h.client.put(f"/v1/samples/{item['id']}/reference", json={"text": reference}, headers=ADMIN)
            assert r.status_code == 200 and r.json()["status"] == "referenced"
            out = jiwer.process_words(basic_normalize(reference), basic_normalize(str(item["hypothesis"])))
            expected_errors += out.substitutions + out.deletions + out.insertions
            expected_words += out.hits + out.substitutions + out.deletions

        r = await h.client.post("/v1/samples/score", headers=ADMIN)
        assert r.json()["scored"] == len(SENTENCES)
        assert h.sample("asr_quality_word_errors_total", {"language": "en"}) == expected_errors
        assert h.sample("asr_quality_reference_words_total", {"language": "en"}) == expected_words
        assert h.sample("asr_quality_scored_samples_total", {"language": "en"}) == len(SENTENCES)
        assert h.sample("asr_quality_pending_samples") == 0
        assert time.time() - h.sample("asr_quality_job_last_success_timestamp_seconds") < 60
        # Scored once: a second run adds nothing, and the reference can no longer change.
        assert (await h.client.post("/v1/samples/score", headers=ADMIN)).json()["scored"] == 0
        assert h.sample("asr_quality_word_errors_total", {"language": "en"}) == expected_errors
        some = items[0]["id"]
        r = await h.client.put(f"/v1/samples/{some}/reference", json={"text": "changed"}, headers=ADMIN)
        assert r.status_code == 409
        scored = (await h.client.get("/v1/samples", params={"status": "scored"}, headers=ADMIN)).json()
        assert scored["total"] == len(SENTENCES)

    # A restart restores the counters from the store.
    async with running_app(_quality_settings(tmp_path, database)) as h2:
        assert h2.sample("asr_quality_word_errors_total", {"language": "en"}) == expected_errors
        assert h2.sample("asr_quality_reference_words_total", {"language": "en"}) == expected_words
        assert h2.sample("asr_quality_samples_total", {"language": "en", "stratum": "short"}) == len(SENTENCES)


def _which_sentence(hypothesis: str) -> str:
    return min(SENTENCES.values(), key=lambda s: jiwer.wer(basic_normalize(s), basic_normalize(hypothesis)))


async def test_chinese_samples_are_scored_by_characters(
    tmp_path: Path, speech_dir: Path, database: dict[str, Any]
) -> None:
    backend = FakeBackend(text="今天天汽很好", language="zh")
    async with running_app(_quality_settings(tmp_path, database), factory(backend)) as h:
        r = await h.client.post(
            "/transcribe", files={"file": ("a.wav", (speech_dir / "fox.wav").read_bytes())}, data={"language": "zh"}
        )
        assert r.status_code == 200
        [item] = await _wait_samples(h, 1)
        await h.client.put(f"/v1/samples/{item['id']}/reference", json={"text": "今天天气很好。"}, headers=ADMIN)
        await h.client.post("/v1/samples/score", headers=ADMIN)
        assert h.sample("asr_quality_char_errors_total", {"language": "zh"}) == 1
        assert h.sample("asr_quality_reference_chars_total", {"language": "zh"}) == 6
        assert h.sample("asr_quality_word_errors_total", {"language": "zh"}) == 0


async def test_damaged_or_missing_files_are_skipped_counted_and_the_job_goes_on(
    tmp_path: Path, speech_dir: Path, database: dict[str, Any]
) -> None:
    async with running_app(_quality_settings(tmp_path, database), factory(FakeBackend(text="hello world"))) as h:
        for _ in range(4):
            await h.client.post("/transcribe", files={"file": ("a.wav", (speech_dir / "fox.wav").read_bytes())})
        items = await _wait_samples(h, 4)
        for item in items:
            await h.client.put(f"/v1/samples/{item['id']}/reference", json={"text": "hello there world"}, headers=ADMIN)
        samples = tmp_path / "quality" / "samples"
        (samples / str(items[0]["id"]) / "audio.wav").unlink()
        wav = samples / str(items[1]["id"]) / "audio.wav"
        wav.write_bytes(wav.read_bytes()[:100])
        (samples / str(items[2]["id"]) / "sample.json").write_text("{not json")
        report = (await h.client.post("/v1/samples/score", headers=ADMIN)).json()
        assert report["scored"] == 1
        assert report["skipped"] == {"missing_audio": 1, "damaged_audio": 1, "missing_record": 1}
        for reason in ("missing_audio", "damaged_audio", "missing_record"):
            assert h.sample("asr_quality_skipped_samples_total", {"reason": reason}) == 1
        assert h.sample("asr_quality_word_errors_total", {"language": "en"}) == 1  # the one whole sample
        skipped = (await h.client.get("/v1/samples", params={"status": "skipped"}, headers=ADMIN)).json()
        assert skipped["total"] == 3


async def test_one_replica_at_a_time_shadow_scores_a_store(
    tmp_path: Path, speech_dir: Path, database: dict[str, Any]
) -> None:
    settings = make_settings(
        tmp_path,
        quality={"sample_rate": 1.0, "normalizer": "basic", "interval_seconds": 3600},
        shadow={"model": "embedded:tiny.en", "interval_seconds": 3600},
        database=database,
    )
    async with running_app(settings, fake_beside_real_shadow(FakeBackend(text="the quick brown fox"))) as h:
        shadow, store = h.app.state.shadow, h.app.state.store

        # The run at startup (with nothing to shadow yet) ends before the sample arrives.
        await until(lambda: shadow.runs >= 1, what="the startup run")
        r = await h.client.post("/transcribe", files={"file": ("fox.wav", (speech_dir / "fox.wav").read_bytes())})
        assert r.status_code == 200
        async with asyncio.timeout(10):
            while store.count("pending") < 1:
                await asyncio.sleep(0.05)
        # Another replica holds the store's shadow lock (its own connection, or its own open of
        # the lock file): this one leaves the sample to it.
        with store.database.exclusive("shadow", wait=False) as elsewhere:
            assert elsewhere
            report = await shadow.run_once()
        assert (report.stopped, report.scored) == ("elsewhere", 0)
        assert store.unshadowed(10)
        report = await shadow.run_once()
        assert (report.stopped, report.scored) == ("", 1)
        assert not store.unshadowed(10)
        assert h.sample("asr_quality_shadow_scored_samples_total", {"language": "en"}) == 1


async def test_review_api_auth_and_ids(tmp_path: Path, speech_dir: Path) -> None:
    secret = tmp_path / "secret.txt"
    secret.write_text("do not serve me")
    async with running_app(_quality_settings(tmp_path), factory(FakeBackend())) as h:
        await h.client.post("/transcribe", files={"file": ("a.wav", (speech_dir / "fox.wav").read_bytes())})
        [item] = await _wait_samples(h, 1)
        for headers in ({}, {"Authorization": "Bearer nope"}):
            assert (await h.client.get("/v1/samples", headers=headers)).status_code == 401
            assert (await h.client.get(f"/v1/samples/{item['id']}/audio", headers=headers)).status_code == 401
            assert (await h.client.delete(f"/v1/samples/{item['id']}", headers=headers)).status_code == 401
        for bad in ("..%2F..%2Fsecret.txt", "%2e%2e", "abc", "A" * 32, str(item["id"]) + "0", "0" * 32):
            for suffix in ("", "/audio"):
                r = await h.client.get(f"/v1/samples/{bad}{suffix}", headers=ADMIN)
                assert r.status_code == 404 and b"do not serve me" not in r.content
            r = await h.client.put(f"/v1/samples/{bad}/reference", json={"text": "x"}, headers=ADMIN)
            assert r.status_code == 404
        r = await h.client.put(f"/v1/samples/{item['id']}/reference", json={"text": ""}, headers=ADMIN)
        assert r.status_code == 422
        assert (await h.client.delete(f"/v1/samples/{item['id']}", headers=ADMIN)).status_code == 204
        assert (await h.client.get(f"/v1/samples/{item['id']}", headers=ADMIN)).status_code == 404
        assert not (tmp_path / "quality" / "samples" / str(item["id"])).exists()

    off = make_settings(tmp_path / "off", quality={"sample_rate": 1.0})
    async with running_app(off, factory(FakeBackend())) as h:
        r = await h.client.get("/v1/samples", headers=ADMIN)
        assert r.status_code == 403 and "ASR_ADMIN_TOKEN" in r.json()["error"]["message"]


async def test_storing_happens_after_the_answer(
    tmp_path: Path, speech_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    slow_add = SampleStore.add

    def add(self: SampleStore, *args: object, **kwargs: object) -> str:
        time.sleep(0.6)
        return slow_add(self, *args, **kwargs)

    monkeypatch.setattr(SampleStore, "add", add)
    async with running_app(_quality_settings(tmp_path), factory(FakeBackend())) as h:
        r = await h.client.post("/transcribe", files={"file": ("a.wav", (speech_dir / "fox.wav").read_bytes())})
        assert r.status_code == 200
        await _wait_samples(h, 1)
        served = h.sample("asr_http_request_duration_seconds_sum", {"method": "POST", "route": "/transcribe"})
    assert served < 0.5  # the 0.6 s write came after the last byte of the answer


async def test_flagged_hallucinations_are_reported_counted_and_sampled(tmp_path: Path) -> None:
    import io
    import wave

    buf = io.BytesIO()
    with wave.open(buf, "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(16_000)
        w.writeframes((np.random.default_rng(1).normal(0, 3, 16_000 * 3)).astype("<i2").tobytes())  # near-silent
    settings = make_settings(
        tmp_path,
        quality={"sample_rate": 0.0001, "min_per_stratum": 0, "flagged_rate": 1.0},
        server={"admin_token": "adm1n"},
    )
    async with running_app(settings, factory(FakeBackend(text="Thank you for watching!"))) as h:
        r = await h.client.post("/transcribe", files={"file": ("quiet.wav", buf.getvalue())})
        assert r.json()["warnings"] == ["suspected hallucination: a stock phrase over near-silent audio"]
        assert h.sample("asr_suspected_hallucinations_total", {"kind": "phantom_phrase"}) == 1
        [item] = await _wait_samples(h, 1)  # kept despite a 0.01% sample rate
        detail = (await h.client.get(f"/v1/samples/{item['id']}", headers=ADMIN)).json()
        assert detail["flags"] == ["phantom_phrase"]


@pytest.mark.slow
def test_cli_export_import_and_evaluate(tmp_path: Path, speech_dir: Path) -> None:
    quality_dir = tmp_path / "quality"
    store = SampleStore(quality_dir, 100, 30)
    from service.backends.base import Segment, Transcript

    ids = [
        store.add(
            np.zeros(8000, np.float32),
            16_000,
            Transcript(t, "en", 1, 0.5, [Segment(0, 0, 0.5, t)]),
            backend="b",
            model="m",
            stratum="short",
            flags=[],
            request_id=None,
        )
        for t in ("first hypothesis", "second hypothesis", "third hypothesis")
    ]
    env = {
        "ASR_QUALITY_DIR": str(quality_dir),
        "ASR_MODEL": "embedded:tiny.en",
        "ASR_CACHE_DIR": str(tmp_path),
        "PATH": "/usr/bin:/bin",
    }

    out = tmp_path / "review"
    assert run_cli(env, "samples", "export", str(out)).returncode == 0
    manifest = [json.loads(line) for line in (out / "manifest.jsonl").read_text().splitlines()]
    assert {m["id"] for m in manifest} == set(ids)
    assert (out / f"{ids[0]}.wav").read_bytes()[:4] == b"RIFF"
    assert (out / f"{ids[0]}.hypothesis.txt").read_text() == "first hypothesis\n"

    with open(tmp_path / "refs.csv", "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["id", "text"])
        writer.writerow([ids[0], "first reference"])
    (tmp_path / "refs.jsonl").write_text(json.dumps({"id": ids[1], "text": "second reference"}) + "\n")
    assert run_cli(env, "samples", "import-references", str(tmp_path / "refs.csv")).returncode == 0
    run = run_cli(env, "samples", "import-references", str(tmp_path / "refs.jsonl"))
    assert run.returncode == 0 and "imported 1" in run.stdout
    run = run_cli(env, "samples", "import-references", str(tmp_path / "refs.csv"))  # again: ids[0] is referenced, fine
    assert run.returncode == 0
    assert store.get(ids[0]).reference == "first reference"
    assert store.get(ids[1]).status == "referenced"
    (tmp_path / "bad.jsonl").write_text(json.dumps({"id": "../../etc", "text": "x"}) + "\n")
    run = run_cli(env, "samples", "import-references", str(tmp_path / "bad.jsonl"))
    assert run.returncode == 1 and "invalid id" in run.stderr

    folder = tmp_path / "eval"
    folder.mkdir()
    for name, text in SENTENCES.items():
        (folder / f"{name}.ogg").write_bytes((speech_dir / f"{name}.ogg").read_bytes())
        (folder / f"{name}.txt").write_text(text)
    run = run_cli(env, "evaluate", "--dir", str(folder), "--json")
    assert run.returncode == 0, run.stderr
    [row] = json.loads(run.stdout)
    assert row["language"] == "en" and row["files"] == len(SENTENCES) and row["metric"] == "WER"
    assert 0 <= row["rate"] <= 0.2
    # The interval over files contains the figure (and is wide on 4 files).
    low, high = row["ci95"]
    assert (low <= row["rate"] <= high and high > low) or row["rate"] == 0
    table = run_cli(env, "evaluate", "--dir", str(folder)).stdout
    header = ["language", "files", "metric", "errors", "ref", "units", "rate", "95%", "interval"]
    assert table.splitlines()[0].split() == header
