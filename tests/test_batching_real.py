"""Batched decoding of several requests' clips on real Whisper models: the same text as alone.

The batched call (service.backends.whisper_batch) re-does faster-whisper's per-clip steps around
batched encoder and decoder calls; these tests hold it to the unbatched path's output on real
speech (text, segment and word timings, language), and check that requests sent together
through the service are batched (asr_batch_size) and answered as they are one at a time.
"""

from __future__ import annotations

import asyncio
import subprocess
import threading
from dataclasses import asdict
from typing import TYPE_CHECKING

import numpy as np
import pytest

from service.audio import load_file
from service.backends.base import Cancelled, TranscribeOptions, Transcript
from service.backends.faster_whisper import FasterWhisperBackend
from service.config import ModelSettings, Settings
from tests.conftest import SENTENCES, make_settings, running_app

if TYPE_CHECKING:
    from pathlib import Path

    import numpy.typing as npt

pytestmark = [pytest.mark.anyio, pytest.mark.slow]


def _clips(speech_dir: Path) -> list[npt.NDArray[np.float32]]:
    sentences = [load_file(speech_dir / f"{name}.wav").read() for name in SENTENCES]
    noise = np.random.default_rng(0).normal(0.0, 0.01, 32_000).astype(np.float32)
    return [*sentences, np.concatenate(sentences), np.zeros(48_000, np.float32), noise]


def _shape(t: Transcript) -> tuple[object, ...]:
    """What a client sees of a transcript: text, language, segments with timings, words."""
    segments = [(s.text, s.start, s.end, s.seek, [asdict(w) for w in s.words or []]) for s in t.segments]
    return t.text, t.language, round(t.duration, 3), segments


def _backend(model: str, tmp_path: Path) -> FasterWhisperBackend:
    return FasterWhisperBackend(Settings(model=ModelSettings(model=model, cache_dir=tmp_path / "cache")))


@pytest.mark.parametrize("words", [False, True])
def test_a_batch_transcribes_each_clip_as_it_is_alone(tmp_path: Path, speech_dir: Path, words: bool) -> None:
    backend = _backend("embedded:tiny.en", tmp_path)
    clips = _clips(speech_dir)
    options = [
        TranscribeOptions(word_timestamps=words, language="en"),
        TranscribeOptions(word_timestamps=words),
        TranscribeOptions(word_timestamps=words, initial_prompt="Apples, oranges and the market."),
        TranscribeOptions(
            word_timestamps=words, initial_prompt="Some earlier text of the stream.", prompt_is_context=True
        ),
        TranscribeOptions(word_timestamps=words),
        TranscribeOptions(word_timestamps=words),
        TranscribeOptions(word_timestamps=words),
    ]
    assert len({backend.batch_key(o, 3.0) for o in options}) == 1  # language and prompt are per clip
    alone = [backend.transcribe(clip, o) for clip, o in zip(clips, options, strict=True)]
    together = backend.transcribe_batch(clips, options, [threading.Event() for _ in clips])
    assert [_shape(t) for t in together if isinstance(t, Transcript)] == [_shape(t) for t in alone]
    assert "fox" in alone[0].text.lower() and "market" in alone[3].text.lower()


def test_options_that_change_the_decode_never_share_a_call(tmp_path: Path) -> None:
    backend = _backend("embedded:tiny.en", tmp_path)
    base = backend.batch_key(TranscribeOptions(), 3.0)
    assert base is not None
    for other in (
        TranscribeOptions(beam_size=1),
        TranscribeOptions(task="translate"),
        TranscribeOptions(word_timestamps=True),
        TranscribeOptions(temperature=0.4),
    ):
        assert backend.batch_key(other, 3.0) not in (None, base)
    assert backend.batch_key(TranscribeOptions(batched=True), 3.0) is None  # a long file's own batching
    assert backend.batch_key(TranscribeOptions(vad_filter=True), 3.0) is None


def test_a_cancelled_clip_leaves_the_batch_and_the_rest_finish(tmp_path: Path, speech_dir: Path) -> None:
    backend = _backend("embedded:tiny.en", tmp_path)
    clips = _clips(speech_dir)[:3]
    cancels = [threading.Event() for _ in clips]
    cancels[1].set()
    out = backend.transcribe_batch(clips, [TranscribeOptions()] * 3, cancels)
    assert isinstance(out[1], Cancelled)
    assert isinstance(out[0], Transcript) and "fox" in out[0].text.lower()
    assert isinstance(out[2], Transcript) and out[2].text


def test_a_multilingual_batch_finds_each_clips_language(tmp_path: Path) -> None:
    """Whisper base: a German and an English clip in one call, neither naming its language."""
    said = {"de": "Das Wetter ist heute sonnig und es weht ein leichter Wind.", "en": SENTENCES["weather"]}
    clips = []
    for language, text in said.items():
        wav = tmp_path / f"{language}.wav"
        voice = "de" if language == "de" else "en-us"
        subprocess.run(["espeak-ng", "-v", voice, "-s", "140", "-w", str(wav), text], check=True)
        clips.append(load_file(wav).read())
    backend = _backend("embedded:base", tmp_path)
    alone = [backend.transcribe(clip, TranscribeOptions()) for clip in clips]
    together = backend.transcribe_batch(clips, [TranscribeOptions()] * 2, [threading.Event()] * 2)
    assert [t.language for t in alone] == ["de", "en"]
    assert [_shape(t) for t in together if isinstance(t, Transcript)] == [_shape(t) for t in alone]


async def test_requests_sent_together_are_batched_and_answered_as_alone(tmp_path: Path, speech_dir: Path) -> None:
    """One worker: the first request runs alone, the three that wait behind it share one call;
    every answer equals the one the service gives with batching off (ASR_BATCH_MAX_SIZE=1)."""
    names = list(SENTENCES)

    async def answers(batch_max_size: int) -> tuple[list[str], float, float]:
        settings = make_settings(tmp_path, scheduler={"workers": 1, "batch_max_size": batch_max_size})
        async with running_app(settings) as h:
            posts = [
                h.client.post("/transcribe", files={"file": (f"{n}.wav", (speech_dir / f"{n}.wav").read_bytes())})
                for n in names
            ]
            replies = await asyncio.gather(*posts)
            assert all(r.status_code == 200 for r in replies), [r.text for r in replies]
            labels = {"backend": "faster-whisper", "model": "whisper-tiny.en"}
            calls = h.sample("asr_batch_size_count", labels)
            clips = h.sample("asr_batch_size_sum", labels)
        return [r.json()["text"] for r in replies], calls, clips

    batched, calls, clips = await answers(8)
    alone, calls_off, _ = await answers(1)
    assert batched == alone
    assert clips == len(names) and calls < clips  # some call held more than one request
    assert calls_off == 0  # batching off: nothing is observed as a batch
