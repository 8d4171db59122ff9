"""The partial policy on its own: which words of a turn's hypotheses are sent, and where the next
partial decode begins (service.streaming.partials). Real decodes are in tests/test_streaming.py."""

from __future__ import annotations

from service.backends.base import Segment, Transcript, Word
from service.streaming.partials import Heard, Partials
from service.streaming.session import _heard


def words(*spec: tuple[str, float, float] | tuple[str, float, float, float]) -> list[Heard]:
    return [Heard(w[0], w[1], w[2], w[3] if len(w) > 3 else 0.9) for w in spec]


def test_the_first_word_is_sent_from_one_hypothesis_once_its_timing_is_stable() -> None:
    p = Partials(stable_seconds=0.3)
    # Heard up to 1.0 s: "The" ended at 0.35 (stable), "quick" at 0.8 (too close to the end).
    assert p.update(words(("The", 0.1, 0.35), ("quick", 0.4, 0.8)), heard_end=1.0) == "The"
    assert p.sent == ["The"] and p.sent_range == (0, 1)
    # A short turn is heard whole: the next decode still begins at the turn's start.
    assert p.cut == 0.0 and p.prompt == ""


def test_a_word_at_the_end_of_the_audio_waits_for_a_second_hypothesis_to_agree() -> None:
    p = Partials(stable_seconds=0.3)
    assert p.update(words(("quick", 0.4, 0.8), ("brown", 0.85, 0.95)), heard_end=1.0) == ""
    # The next hypothesis (more audio) agrees on "quick": sent, though "brown" is still the newest last word.
    assert p.update(words(("quick", 0.4, 0.8), ("brown", 0.85, 1.1)), heard_end=1.15) == "quick"
    assert p.update(words(("brown", 0.85, 1.1), ("fox", 1.15, 1.5)), heard_end=2.0) == " brown fox"
    assert p.sent == ["quick", "brown", "fox"]


def test_an_unsure_word_is_not_sent_from_one_hypothesis() -> None:
    p = Partials(stable_seconds=0.3)
    assert p.update(words(("Dee", 0.1, 0.3, 0.2), ("weather", 0.35, 0.6)), heard_end=1.5) == ""
    # Agreement still sends it, and then the stable word after it.
    assert p.update(words(("Dee", 0.1, 0.3, 0.2), ("weather", 0.35, 0.6)), heard_end=2.0) == "Dee weather"


def test_words_already_sent_are_not_sent_again_when_the_next_decode_hears_them() -> None:
    p = Partials(stable_seconds=0.3)
    assert p.update(words(("over", 0.1, 0.4), ("the", 0.45, 0.55)), heard_end=1.2) == "over the"
    # The same audio again, and more: the sent words begin before the last sent word's end.
    assert p.update(words(("over", 0.1, 0.4), ("the", 0.45, 0.55), ("lazy", 0.6, 0.9)), heard_end=1.5) == " lazy"
    assert p.sent == ["over", "the", "lazy"]
    assert p.sent_range == (2, 3)  # the delta's words in that hypothesis (for their logprobs)
    # A sent word timed later by another decode is still recognised by its text.
    assert p.update(words(("lazy", 0.85, 1.0), ("dog", 1.1, 1.4)), heard_end=2.0) == " dog"
    assert p.sent_range == (1, 2)


def test_a_long_turn_moves_the_cut_after_the_last_confirmed_word() -> None:
    p = Partials(stable_seconds=0.3, keep_seconds=2.0)
    assert p.update(words(("one", 0.1, 0.5), ("two", 0.6, 1.0)), heard_end=1.6) == "one two"
    assert p.cut == 0.0  # 1.6 s heard: under keep_seconds, the turn is heard whole
    first = words(("one", 0.1, 0.5), ("two", 0.6, 1.0), ("three", 1.2, 1.8), ("four", 2.0, 2.8))
    assert p.update(first, heard_end=3.0) == " three"
    # Past keep_seconds: the next decode begins between "three" and "four", with what is before
    # the cut as its prompt.
    assert p.cut == (1.8 + 2.0) / 2
    assert p.prompt == "one two three"
    # Its words come with times from the turn's start (the session adds the cut).
    assert p.update(words(("four", 2.0, 2.8), ("five", 3.0, 3.4)), heard_end=4.0) == " four five"
    assert " ".join(p.sent) == "one two three four five"


def test_a_longer_agreement_needs_that_many_hypotheses() -> None:
    p = Partials(agreement=3, stable_seconds=5.0)  # timing never stable enough: agreement only
    hypothesis = words(("a", 0.1, 0.2), ("b", 0.3, 0.4), ("c", 0.5, 0.6))
    assert p.update(hypothesis, 1.0) == ""
    assert p.update(hypothesis, 1.5) == ""
    assert p.update(hypothesis, 2.0) == "a b"  # three agree; the newest's last word waits


def test_the_final_completes_or_revises_what_was_sent() -> None:
    p = Partials()
    p.update(words(("The", 0.1, 0.3), ("quick", 0.4, 0.6)), heard_end=2.0)
    assert p.finish("The quick brown fox.") == (" brown fox.", False)
    q = Partials()
    q.update(words(("But", 0.1, 0.3)), heard_end=2.0)
    assert q.finish("The weather today.") == ("", True)


def test_a_word_whisper_timed_in_pieces_is_one_word_of_the_text() -> None:
    # Whisper's word timings split "o'clock" into " o" and "'clock."; the text has one word.
    pieces = [Word(0.0, 0.4, " before", 0.9), Word(0.5, 0.6, " 8", 0.9), Word(0.6, 0.7, " o", 0.8)]
    segment = Segment(0, 0.0, 1.0, "before 8 o'clock.", words=[*pieces, Word(0.7, 1.0, "'clock.", 0.75)])
    heard = _heard(Transcript("before 8 o'clock.", "en", 1.0, 1.0, [segment]), offset=2.0)
    assert [h.word for h in heard] == ["before", "8", "o'clock."]
    assert (heard[2].start, heard[2].end, heard[2].probability) == (2.6, 3.0, 0.75)
    p = Partials(stable_seconds=0.3)
    assert p.update(heard, heard_end=4.0) == "before 8 o'clock."
    assert p.finish("Before 8 o'clock.") == ("", False)  # nothing taken back
