"""The WER estimate under stratified sampling: a simulated stream with known error rates through
the real sampler, store and scoring job; and the estimator's interval on its own."""

from __future__ import annotations

import asyncio
import random
from typing import TYPE_CHECKING

import numpy as np
import pytest

from service.audio import DecodedAudio
from service.backends.base import Transcript
from service.cli import quality_report
from service.config import QualitySettings
from service.formats import Result
from service.metrics import Metrics
from service.outcome import Outcome
from service.quality.estimate import estimate
from service.quality.job import QualityJob
from service.quality.sampler import Sampler
from service.quality.store import SampleStore

if TYPE_CHECKING:
    from pathlib import Path

WORDS = 20
# (requests, duration s, flagged, true word error rate): common short requests that the engine
# gets mostly right, rare long ones (floored to 20 samples a day) and flagged ones (kept at 0.5)
# that it gets badly wrong. Both rare kinds are oversampled, and both are worse than the rest.
STRATA = [(3000, 5.0, False, 0.05), (150, 90.0, False, 0.25), (150, 5.0, True, 0.60)]


def _request(rng: random.Random, duration: float, flagged: bool, rate: float) -> tuple[Outcome, str, int]:
    reference = [f"w{i}" for i in range(WORDS)]
    errors = sum(rng.random() < rate for _ in range(WORDS))
    hypothesis = ["x"] * errors + reference[errors:]  # `errors` substitutions
    transcript = Transcript(" ".join(hypothesis), "en", 1.0, duration, [])
    audio = DecodedAudio.from_array(np.zeros(160, dtype=np.float32))
    outcome = Outcome(Result(transcript, "fake", "fake", 0.1), audio, ["repetition"] if flagged else [])
    return outcome, " ".join(reference), errors


def test_weighted_wer_estimates_what_users_got_and_the_unweighted_does_not(tmp_path: Path) -> None:
    rng = random.Random(7)
    stream = [(d, f, r) for n, d, f, r in STRATA for _ in range(n)]
    rng.shuffle(stream)
    settings = QualitySettings(sample_rate=0.02, min_per_stratum=20, flagged_rate=0.5, dir=tmp_path)
    store = SampleStore(tmp_path, max_samples=100_000, retention_days=30)
    metrics = Metrics()
    sampler = Sampler(settings, store, metrics, rng=random.Random(11))
    references: dict[str, str] = {}
    true_errors = 0

    async def serve_all() -> None:
        nonlocal true_errors
        for duration, flagged, rate in stream:
            outcome, reference, errors = _request(rng, duration, flagged, rate)
            true_errors += errors
            if (sample_id := await sampler.offer(outcome)) is not None:
                references[sample_id] = reference

    asyncio.run(serve_all())
    for sample_id, reference in references.items():  # a reviewer writes every kept sample's reference
        store.set_reference(sample_id, reference)
    QualityJob(store, metrics, "basic").run_once()

    def counter(name: str) -> float:
        value = metrics.registry.get_sample_value(name, {"language": "en"})
        assert value is not None
        return value

    true_wer = true_errors / (len(stream) * WORDS)
    weighted = counter("asr_quality_weighted_word_errors_total") / counter("asr_quality_weighted_reference_words_total")
    raw = counter("asr_quality_word_errors_total") / counter("asr_quality_reference_words_total")
    [row] = quality_report(store.scored())
    low, high = row["ci95"]
    print(
        f"true {true_wer:.4f}, weighted {weighted:.4f} [{low:.4f}, {high:.4f}], unweighted {raw:.4f}, "
        f"{len(references)} samples of {len(stream)} requests"
    )
    # The exported counters and the report agree on the estimate.
    assert row["rate"] == pytest.approx(weighted, abs=1e-4) and row["unweighted"] == pytest.approx(raw, abs=1e-4)
    # The tolerance is the estimate's own 95% bootstrap interval over the kept samples: the true
    # rate lies in it; the unweighted rate, dominated by oversampled bad requests, lies far outside.
    assert low <= true_wer <= high
    assert not low <= raw <= high
    assert abs(weighted - true_wer) * 5 < abs(raw - true_wer)


def test_the_interval_narrows_with_more_samples_and_weights_move_the_estimate() -> None:
    rng = np.random.default_rng(3)
    few = estimate(list(rng.binomial(20, 0.1, 20)), [20] * 20)
    many = estimate(list(rng.binomial(20, 0.1, 2000)), [20] * 2000)
    assert few.low is not None and few.high is not None and many.low is not None and many.high is not None
    assert few.low <= 0.1 <= few.high and many.low <= 0.1 <= many.high
    assert many.high - many.low < (few.high - few.low) / 5
    # Two samples, one standing for 9 requests: the estimate follows the weights, not the count.
    weighted = estimate([0, 10], [10, 10], [9.0, 1.0])
    assert weighted.rate == pytest.approx(0.1) and weighted.unweighted == pytest.approx(0.5)
    assert estimate([], []).rate is None and estimate([1], [0]).rate is None
