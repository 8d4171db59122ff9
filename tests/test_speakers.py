"""The speaker stage's parts, each on its own: clustering, giving words to speakers, naming, linking
a job's windows, the subtitle formats, OpenAI's speaker fields, and the embedder registry. The real
embedder on real speech runs in tests/test_speakers_server.py."""

from __future__ import annotations

import base64
import itertools

import numpy as np
import pytest

from service.api.speaker_fields import check_names, check_references, reference_bytes
from service.backends.base import Segment, Word
from service.config import DiarizationSettings, Settings
from service.formats import to_srt, to_vtt
from service.speakers.attribution import attribute
from service.speakers.base import KnownVoice, Turn
from service.speakers.clustering import cluster, unit
from service.speakers.linking import Voice, link_parts, relabel
from service.speakers.naming import anonymous_labels, letters, match_known
from service.speakers.registry import missing


def _voices(rng: np.random.Generator, centres: list[np.ndarray], counts: list[int], spread: float) -> np.ndarray:
    rows = [
        unit(c + rng.normal(0, spread, c.shape).astype(np.float32))
        for c, n in zip(centres, counts, strict=True)
        for _ in range(n)
    ]
    return np.stack(rows).astype(np.float32)


def _centres(rng: np.random.Generator, count: int, dim: int = 32) -> list[np.ndarray]:
    return [unit(rng.normal(0, 1, dim).astype(np.float32)) for _ in range(count)]


@pytest.mark.parametrize("speakers", [1, 2, 3, 4])
def test_clustering_finds_how_many_voices_there_are(speakers: int) -> None:
    rng = np.random.default_rng(speakers)
    counts = [20 + 5 * i for i in range(speakers)]
    points = _voices(rng, _centres(rng, speakers), counts, spread=0.08)
    labels = cluster(points, similarity=0.8)
    assert labels.max() + 1 == speakers
    # Each voice's windows share one label, and labels are numbered by first appearance.
    bounds = np.cumsum([0, *counts])
    assert [len(set(labels[a:b].tolist())) for a, b in itertools.pairwise(bounds)] == [1] * speakers
    assert labels[0] == 0


def test_clustering_keeps_to_the_bounds_asked_for() -> None:
    rng = np.random.default_rng(7)
    points = _voices(rng, _centres(rng, 3), [20, 20, 20], spread=0.08)
    assert cluster(points, 0.8, max_speakers=2).max() + 1 == 2
    assert cluster(points, 0.8, min_speakers=4).max() + 1 == 4
    assert cluster(points[:1], 0.8).tolist() == [0]
    assert cluster(points[:0], 0.8).tolist() == []


def test_a_handful_of_stray_windows_is_no_speaker_of_its_own() -> None:
    rng = np.random.default_rng(3)
    a, b, stray = _centres(rng, 3)
    points = np.concatenate(
        [_voices(rng, [a], [40], 0.08), _voices(rng, [stray], [2], 0.01), _voices(rng, [b], [40], 0.08)]
    )
    assert cluster(points, 0.8, min_share=0.03).max() + 1 == 2


def test_words_take_the_speaker_of_their_time_and_segments_split_where_it_changes() -> None:
    words = [Word(0.0, 0.5, " Hello", 0.9), Word(0.5, 1.0, " there.", 0.9), Word(1.2, 1.6, " Hi", 0.9)]
    segments = [
        Segment(id=0, start=0.0, end=1.6, text="Hello there. Hi", words=words, tokens=[1, 2]),
        Segment(id=1, start=2.0, end=3.0, text="No words here"),
    ]
    turns = [Turn(0.0, 1.1, "A"), Turn(1.1, 1.8, "B"), Turn(1.9, 3.0, "A")]
    out = attribute(segments, turns)
    assert [(s.id, s.text, s.speaker) for s in out] == [
        (0, "Hello there.", "A"),
        (1, "Hi", "B"),
        (2, "No words here", "A"),
    ]
    assert [w.speaker for w in out[0].words or []] == ["A", "A"]
    assert (out[1].start, out[1].end, out[1].tokens) == (1.2, 1.6, [])  # tokens stay with the first part
    # A word outside every turn takes the nearest one's speaker; no turns: nothing changes.
    lone = attribute([Segment(id=0, start=5.0, end=5.5, text="late")], turns)
    assert lone[0].speaker == "A"
    assert attribute(segments, []) == segments


def test_labels_run_like_spreadsheet_columns_and_skip_known_names() -> None:
    assert [letters(i) for i in (0, 1, 25, 26, 27)] == ["A", "B", "Z", "AA", "AB"]
    assert anonymous_labels(3, taken=["B"]) == ["A", "C", "D"]


def test_a_known_voice_names_one_speaker_and_a_stranger_nobody() -> None:
    rng = np.random.default_rng(11)
    a, b, stranger = _centres(rng, 3)
    prints = np.stack([a, b])
    known = [KnownVoice("bob", unit(b + 0.05)), KnownVoice("zed", stranger)]
    assert {k: name for k, (name, _) in match_known(prints, known, 0.75).items()} == {1: "bob"}


def test_a_jobs_windows_link_to_one_set_of_labels_in_window_order() -> None:
    rng = np.random.default_rng(5)
    x, y, z = _centres(rng, 3)
    parts = [
        [Voice("A", x, 10), Voice("B", y, 8)],
        [Voice("A", y, 9)],  # the second window starts with the first window's B
        [Voice("A", z, 4), Voice("B", x, 7)],
    ]
    assert link_parts(parts, 0.75) == [{"A": "A", "B": "B"}, {"A": "B"}, {"A": "C", "B": "A"}]
    # Linked again (a resumed job's result), the answer is the same; at most 2 voices when asked.
    assert link_parts(parts, 0.75) == link_parts(parts, 0.75)
    assert len({v for m in link_parts(parts, 0.75, max_speakers=2) for v in m.values()}) == 2
    seg = Segment(id=0, start=0, end=1, text="hi", speaker="A", words=[Word(0, 1, " hi", 1.0, speaker="A")])
    [moved] = relabel([seg], {"A": "C"})
    assert (moved.speaker, moved.words[0].speaker if moved.words else None) == ("C", "C")


def test_subtitles_carry_the_speaker() -> None:
    segments = [
        Segment(id=0, start=0.0, end=1.0, text="Hello <there> & all", speaker="Ann & Bo"),
        Segment(id=1, start=1.0, end=2.0, text="plain"),
    ]
    srt = to_srt(segments)
    assert "Ann & Bo: Hello <there> & all" in srt and "\nplain\n" in srt
    vtt = to_vtt(segments)
    assert "<v Ann &amp; Bo>Hello &lt;there&gt; &amp; all</v>" in vtt and "\nplain\n" in vtt


def _url(payload: bytes) -> str:
    return "data:audio/wav;base64," + base64.b64encode(payload).decode()


def test_openai_speaker_fields_refuse_what_cannot_be_a_known_speaker() -> None:
    assert check_names([" alice ", "bob"]) == ["alice", "bob"]
    for names, said in (
        (["a", "a"], "named twice"),
        (["x" * 65], "longer than 64"),
        ([""], "empty"),
        (["a\nb"], "control"),
    ):
        with pytest.raises(ValueError, match=said):
            check_names(names)
    assert reference_bytes(_url(b"RIFF1234"), 0) == b"RIFF1234"
    for reference, said in (
        ("https://example.org/a.wav", "not a base64 data URL"),
        ("data:audio/wav;base64,@@@", "invalid base64"),
        ("data:audio/wav;base64,", "empty"),
    ):
        with pytest.raises(ValueError, match=said):
            reference_bytes(reference, 0)
    with pytest.raises(ValueError, match="2 reference"):
        check_references([_url(b"a"), _url(b"b")], ["only one"])


def test_the_registry_says_which_extra_is_missing() -> None:
    pyannote = Settings(diarization=DiarizationSettings(embedder="pyannote"))
    reason = missing(pyannote)
    assert reason is not None and "pyannote.audio" in reason and "asr-service[diarization]" in reason
