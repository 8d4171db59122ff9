"""Every quality total the store writes comes back after a restart, in the counter it was counted
in: a sample kept, scored (by words and by characters) and shadow-scored, then a fresh service on
the same store."""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Any

import pytest

from tests.conftest import make_settings, running_app
from tests.fakes import FakeBackend, factory, fake_beside_real_shadow

if TYPE_CHECKING:
    from pathlib import Path

    from service.metrics import Metrics
    from tests.conftest import AppHandle

pytestmark = pytest.mark.anyio
ADMIN = {"Authorization": "Bearer adm1n"}
# Counted by one process for what it did, never kept in the store: not restored.
PROCESS_LOCAL = {"asr_quality_skipped_samples", "asr_quality_shadow_seconds"}
LANGUAGES = ("en", "zh")  # zh is scored by characters


def _quality_counters(metrics: Metrics) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every non-zero asr_quality_* counter series but the process-local ones."""
    found = {}
    for family in metrics.registry.collect():
        if family.type != "counter" or not family.name.startswith("asr_quality_") or family.name in PROCESS_LOCAL:
            continue
        for sample in family.samples:
            if sample.name.endswith("_total") and sample.value:
                found[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return found


def _over_languages(h: AppHandle, name: str, **labels: str) -> float:
    return sum(h.sample(name, {"language": language, **labels}) for language in LANGUAGES)


def _all_quality_counters(metrics: Metrics) -> set[str]:
    return {
        f"{family.name}_total"
        for family in metrics.registry.collect()
        if family.type == "counter" and family.name.startswith("asr_quality_") and family.name not in PROCESS_LOCAL
    }


async def test_every_quality_total_is_restored_into_the_counter_it_was_counted_in(
    tmp_path: Path, speech_dir: Path, database: dict[str, Any]
) -> None:
    quality = {"sample_rate": 1.0, "normalizer": "basic", "interval_seconds": 3600}
    first = make_settings(
        tmp_path,
        quality=quality,
        server={"admin_token": "adm1n"},
        shadow={"model": "embedded:tiny.en", "interval_seconds": 3600},
        database=database,
    )
    audio = (speech_dir / "fox.wav").read_bytes()
    async with running_app(first, fake_beside_real_shadow(FakeBackend(text="the quick brown cat"))) as h:
        for language in LANGUAGES:
            r = await h.client.post("/transcribe", files={"file": ("fox.wav", audio)}, data={"language": language})
            assert r.status_code == 200
        store = h.app.state.store
        async with asyncio.timeout(10):  # kept after the answer: wait until both are counted
            while _over_languages(h, "asr_quality_samples_total", stratum="short") < 2:
                await asyncio.sleep(0.05)
        with store.database.transaction() as db:  # as if kept with probability 1/2: weight 2
            db.execute("UPDATE samples SET inclusion_probability = 0.5")
        for item in (await h.client.get("/v1/samples", headers=ADMIN)).json()["items"]:
            text = {"en": "a quick brown fox", "zh": "今天天气很好"}[item["language"]]
            r = await h.client.put(f"/v1/samples/{item['id']}/reference", json={"text": text}, headers=ADMIN)
            assert r.status_code == 200
        assert (await h.client.post("/v1/samples/score", headers=ADMIN)).json()["scored"] == 2
        # The startup run loads the shadow model and may be the one that shadows them: wait until
        # both are counted (the store records a sample just before its counters are added).
        async with asyncio.timeout(120):
            while _over_languages(h, "asr_quality_shadow_scored_samples_total") < 2:
                await h.app.state.shadow.run_once()
                await asyncio.sleep(0.05)
        recorded = _quality_counters(h.metrics)
        every_counter = _all_quality_counters(h.metrics)

    # Each counter was counted in (else this test would prove nothing about it) ...
    assert {name for name, _ in recorded} == every_counter
    assert ("asr_quality_char_errors_total", (("language", "zh"),)) in recorded
    # ... and weighted ones are not raw ones.
    en = (("language", "en"),)
    assert (
        recorded[("asr_quality_weighted_word_errors_total", en)] == 2 * recorded[("asr_quality_word_errors_total", en)]
    )

    second = make_settings(tmp_path, quality=quality, server={"admin_token": "adm1n"}, database=database)
    async with running_app(second, factory(FakeBackend())) as h:
        assert _quality_counters(h.metrics) == recorded
