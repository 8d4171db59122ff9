"""Scoring, sampling, the sample store and the hallucination guard, each on its own."""

from __future__ import annotations

import random
import time
from pathlib import Path

import jiwer
import numpy as np
import pytest

from service.audio import DecodedAudio
from service.backends.base import Segment, Transcript, Word
from service.config import QualitySettings
from service.database import Database
from service.metrics import Metrics
from service.quality import hallucination
from service.quality.sampler import Sampler, duration_bucket
from service.quality.scoring import basic_normalize, normalizer_for, score
from service.quality.store import SampleStore


def test_word_errors_equal_jiwer_after_one_normalisation() -> None:
    ref = "The quick brown fox, jumps over the lazy dog!"
    hyp = "the quick brown fox jumped over a lazy dog and"
    result = score(ref, hyp, "fr", "basic")
    out = jiwer.process_words(basic_normalize(ref), basic_normalize(hyp))
    assert result.unit == "word"
    assert result.errors == out.substitutions + out.deletions + out.insertions == 3
    assert result.reference_units == 9
    assert result.rate == pytest.approx(jiwer.wer(basic_normalize(ref), basic_normalize(hyp)))


def test_case_punctuation_and_spacing_are_not_errors() -> None:
    assert score("Hello, World!  It's me.", "hello world its me", "de", "basic").errors == 0


@pytest.mark.parametrize(
    ("language", "ref", "hyp", "errors", "units"),
    [
        ("zh", "今天天气很好。", "今天天汽很好", 1, 6),
        ("ja", "東京は 晴れです", "東京は雨です", 2, 7),
        ("yue", "我哋今日去街", "我哋今日去街", 0, 6),
        ("ko", "안녕하세요 반갑습니다", "안녕하세요 반갑습니다", 0, 10),
    ],
)
def test_chinese_japanese_cantonese_korean_are_scored_by_characters(
    language: str, ref: str, hyp: str, errors: int, units: int
) -> None:
    result = score(ref, hyp, language, "basic")
    assert (result.unit, result.errors, result.reference_units) == ("char", errors, units)


def test_empty_sides_count_every_unit() -> None:
    assert (score("", "thank you", "en", "basic").errors, score("", "", "en", "basic").errors) == (2, 0)
    assert score("three words here", "", "en", "basic").errors == 3


def test_whisper_english_normaliser_unifies_spellings_and_numbers() -> None:
    normalize = normalizer_for("en", "whisper")  # openai-whisper is installed in the test environment
    assert normalize("Mr. Smith paid twenty-five dollars") == normalize("mister smith paid $25")
    assert score("I've got twenty apples", "i have got 20 apples", "en", "whisper").errors == 0
    assert score("I've got twenty apples", "i have got 20 apples", "en", "basic").errors > 0


def _settings(**kw: object) -> QualitySettings:
    base: dict[str, object] = {
        "sample_rate": 0.01,
        "min_per_stratum": 5,
        "flagged_rate": 0.5,
        "dir": Path("/nonexistent"),
    }
    return QualitySettings(**{**base, **kw})


def test_rare_strata_keep_their_floor_common_ones_their_share() -> None:
    sampler = Sampler(_settings(), None, Metrics(), rng=random.Random(3))
    now = time.time()
    rare = [sampler.keep_rate("de", 30.0, False, now) for _ in range(5)]
    assert rare == [1.0] * 5  # five German medium requests a day: every one kept
    common = [sampler.keep_rate("en", 5.0, False, now) for _ in range(5000)]
    assert common[0] == 1.0 and common[-1] == pytest.approx(0.01)
    expected = sum(common)  # expected kept: the floor (~5 in the day) plus 1% of the rest
    assert 5 + 0.01 * 4000 < expected < 5 * (1 + np.log(5000)) + 0.01 * 5000
    assert sampler.keep_rate("en", 5.0, True, now) == 0.5  # flagged requests: flagged_rate
    assert sampler.keep_rate("en", 9999.0, True, now) == 0.0  # longer than max_sample_seconds


def test_the_day_count_decays_so_a_quiet_stratum_regains_its_floor() -> None:
    sampler = Sampler(_settings(), None, Metrics())
    now = time.time()
    for _ in range(1000):
        sampler.keep_rate("en", 5.0, False, now)
    assert sampler.keep_rate("en", 5.0, False, now) == pytest.approx(0.01)
    assert sampler.keep_rate("en", 5.0, False, now + 7 * 86400) == 1.0  # a week later: rare again


def test_sampling_off_keeps_nothing() -> None:
    sampler = Sampler(_settings(sample_rate=0.0), None, Metrics())
    assert sampler.keep_rate("de", 5.0, True) == 0.0


def test_duration_buckets() -> None:
    assert [duration_bucket(s) for s in (1, 9.99, 10, 59, 60, 3000)] == [
        "short",
        "short",
        "medium",
        "medium",
        "long",
        "long",
    ]


def _transcript(text: str = "hello world", language: str = "en", duration: float = 1.0) -> Transcript:
    return Transcript(text, language, 1.0, duration, [Segment(0, 0.0, duration, text)])


def _add(store: SampleStore, text: str = "hello world", language: str = "en") -> str:
    audio = np.zeros(16_000, np.float32)
    return store.add(
        audio, 16_000, _transcript(text, language), backend="b", model="m", stratum="short", flags=[], request_id="r"
    )


def test_retention_by_count_removes_the_oldest(tmp_path: Path, shared_database: Database | None) -> None:
    store = SampleStore(tmp_path, max_samples=3, retention_days=30, database=shared_database)
    ids = [_add(store, f"sample {i}") for i in range(5)]
    kept, total = store.page(limit=10)
    assert total == 3 and {r.id for r in kept} == set(ids[2:])
    assert sorted(p.name for p in (tmp_path / "samples").iterdir()) == sorted(ids[2:])


def test_retention_by_age_and_orphans(tmp_path: Path, shared_database: Database | None) -> None:
    store = SampleStore(tmp_path, max_samples=100, retention_days=1, database=shared_database)
    old = _add(store)
    orphan = tmp_path / "incoming" / ("f" * 32)  # as a crash mid-write would leave it
    orphan.mkdir()
    assert store.sweep(now=time.time() + 600) == 0 and orphan.exists()  # too fresh to be sure
    assert store.sweep(now=time.time() + 2 * 86400) == 1
    assert store.get(old) is None and not (tmp_path / "samples" / old).exists() and not orphan.exists()


def test_totals_outlive_deleted_samples(tmp_path: Path, shared_database: Database | None) -> None:
    store = SampleStore(tmp_path, max_samples=100, retention_days=30, database=shared_database)
    sample = _add(store)
    store.set_reference(sample, "hello world")
    assert store.record_score(sample, "en", "word", 1, 2)
    assert not store.record_score(sample, "en", "word", 1, 2)  # scored once only
    store.delete(sample)
    assert ("word_errors", "en", "", 1.0) in store.totals()
    assert ("samples", "en", "short", 1.0) in store.totals()


def _audio(samples: np.ndarray) -> DecodedAudio:
    return DecodedAudio.from_array(samples.astype(np.float32))


def test_guard_flags_repetition() -> None:
    speech = _audio(np.random.default_rng(0).normal(0, 0.1, 16_000 * 10))
    looped = _transcript("I'm going to go. I'm going to go. I'm going to go. I'm going to go.", duration=10)
    assert hallucination.inspect(looped, speech) == ["repetition"]
    fine = _transcript("The quick brown fox jumps over the lazy dog.", duration=10)
    assert hallucination.inspect(fine, speech) == []


def test_guard_flags_text_over_silence_and_phantom_phrases() -> None:
    silence = _audio(np.random.default_rng(0).normal(0, 0.0005, 16_000 * 5))  # about -66 dBFS
    assert hallucination.inspect(_transcript("some words appeared", duration=5), silence) == ["silence"]
    assert hallucination.inspect(_transcript("Thank you for watching!", duration=5), silence) == ["phantom_phrase"]
    speech = _audio(np.random.default_rng(0).normal(0, 0.1, 16_000 * 5))
    assert hallucination.inspect(_transcript("Thank you for watching!", duration=5), speech) == []


def test_guard_counts_characters_in_chinese_and_japanese() -> None:
    speech = _audio(np.random.default_rng(0).normal(0, 0.1, 16_000 * 5))
    assert hallucination.inspect(_transcript("去" * 40, duration=5), speech) == ["repetition"]
    assert hallucination.inspect(_transcript("谢谢观看" * 5, duration=5), speech) == ["repetition"]
    assert hallucination.inspect(_transcript("今天天气很好，我们去公园散步吧。", duration=5), speech) == []


def _levels(*spans: tuple[float, float]) -> DecodedAudio:
    """Audio of consecutive (seconds, dBFS) spans of Gaussian noise; -inf for digital silence."""
    rng = np.random.default_rng(0)
    parts = [rng.normal(0, 10 ** (dbfs / 20), int(seconds * 16_000)) for seconds, dbfs in spans]
    return _audio(np.concatenate(parts))


def test_guard_drops_what_it_is_sure_was_invented_and_keeps_real_speech() -> None:
    said = "The committee will meet before Friday afternoon."
    # speech 0-4 s, a pause 4-6 s, speech 6-10 s, digital silence 10-12, -70 dBFS 12-14, speech 14-18,
    # room noise at -50 dBFS 18-20: the audio ends at 20 s.
    audio = _levels((4, -20), (2, -75), (4, -20), (2, float("-inf")), (2, -70), (4, -20), (2, -50))
    guard = hallucination.Guard(audio)
    words = [Word(19.0, 19.6, " Tail", 0.9), Word(19.6, 20.3, " words.", 0.9), Word(20.3, 20.5, " Gone", 0.9)]
    segments = [
        Segment(0, 0.0, 4.0, said),
        Segment(1, 6.0, 10.0, said),  # said again over real speech: kept
        Segment(2, 10.0, 12.0, "Something new appeared here."),  # over digital silence
        Segment(3, 12.2, 13.8, said),  # over -70 dBFS, 50 dB under the speech around it
        Segment(4, 14.0, 18.0, "The bakery sells rye bread."),
        Segment(5, 18.1, 19.9, said),  # over room noise: a repeat of earlier text
        Segment(6, 18.1, 19.0, "A brand new sentence here."),  # over room noise, new text: only flagged
        Segment(7, 19.0, 20.5, "Tail words. Gone", words=words),  # ends a little past the end: clamped
        Segment(8, 20.0, 30.0, said),  # starts at the end
        Segment(9, 19.5, 28.0, "Mostly past the end."),  # 8 s past the end, over room noise inside
        Segment(10, 17.0, 25.0, "Stamped late."),  # as far past, but speech inside (17-18 s): clamped
    ]
    kept = [guard.screen(seg, audio.duration) for seg in segments]
    assert [s.id for s in kept if s is not None] == [0, 1, 4, 6, 7, 10]
    assert guard.dropped == ["silence", "silence", "repetition", "past_end", "past_end"]
    tail, late = kept[7], kept[10]
    assert tail is not None and tail.end == 20.0 and late is not None and late.end == 20.0
    assert tail.words == [Word(19.0, 19.6, " Tail", 0.9), Word(19.6, 20.0, " words.", 0.9)]
    assert hallucination.inspect(_transcript(said, duration=2), _levels((2, -50))) == ["silence"]  # as before


def test_guard_drops_nothing_from_a_quiet_recording_that_says_a_sentence_twice() -> None:
    """Speech recorded at -62 dBFS is under every absolute threshold, yet no quieter than what
    surrounds it: flagged (text over near-silent audio), never dropped."""
    said = "The committee will meet before Friday afternoon."
    audio = _levels((4, -62), (1, -80), (4, -62))
    guard = hallucination.Guard(audio)
    segments = [Segment(0, 0.0, 4.0, said), Segment(1, 5.0, 9.0, said)]
    assert [guard.screen(seg, audio.duration) for seg in segments] == segments
    assert guard.dropped == []
    transcript = Transcript(f"{said} {said}", "en", 1.0, 9.0, segments)
    assert hallucination.inspect(transcript, audio) == ["silence"]
