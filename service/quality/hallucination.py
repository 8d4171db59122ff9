"""Reference-free checks for Whisper's known failure shapes, run on every transcript.

- repetition: the same words over and over (the decoder stuck in a loop), or a segment whose
  text compresses better than Whisper's own fallback threshold (2.4);
- silence: text where the audio is near-silent;
- phantom_phrase: a stock phrase from subtitle training data ("Thank you for watching")
  over near-silent audio.

Each flag is counted in asr_suspected_hallucinations_total{kind}, named in the response's
`warnings`, and raises the request's chance of being sampled for review.

Where the guard is sure, it drops the segment instead (`Guard.screen`, as each segment arrives, so
a streamed answer never shows it), counted in asr_segments_dropped_total{kind} and named in
`warnings`:

- past_end: the segment starts at or after the end of the audio the engine was given, or lies
  mostly past it over near-silence (Whisper stamps text it invents over a short padded last
  window 30.0-40.0 s); any other that ends past it is clamped to it;
- silence: its audio is digital silence, or under -60 dBFS and 20 dB quieter than the loudest
  frame within 15 s of it (so that a whole recording made very quietly is never dropped);
- repetition: it repeats earlier text of the same transcript over audio that quiet relative to
  its surroundings and under -45 dBFS: a sentence said twice over real audio stays.
"""

from __future__ import annotations

import re
from dataclasses import replace
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from service.audio import DecodedAudio
    from service.backends.base import Segment, Transcript

SILENCE_DBFS = -45.0  # below this a segment is near-silent (speech sits around -30 to -15)
PHANTOM_DBFS = -40.0
COMPRESSION_LIMIT = 2.4
SURE_SILENCE_DBFS = -60.0  # below this (and well under its surroundings) a segment holds no speech
QUIETER_DB = 20.0  # how far under the loudest frame around it a segment must be to be dropped
AROUND_SECONDS = 15.0
END_TOLERANCE_SECONDS = 1.0  # a segment may end this far past the audio and be clamped to it
MIN_REPEATED_WORDS = 3  # shorter repeats ("yes", "thank you") are too common to judge
_FRAME_SECONDS = 0.1
# Phrases Whisper is known to emit over silence or music, from its subtitle training data.
PHANTOM_PHRASES = frozenset(
    {
        "thank you for watching",
        "thanks for watching",
        "thank you for watching and please subscribe",
        "please subscribe",
        "like and subscribe",
        "subscribe to my channel",
        "thank you so much for watching",
        "see you next time",
        "thank you",
        "subtitles by the amara org community",
        "subtitles by",
        "transcribed by",
        "untertitel der amara org community",
        "untertitel im auftrag des zdf",
        "sous titrage st 501",
        "sous titres réalisés para la communauté d amara org",
        "продолжение следует",
        "ご視聴ありがとうございました",
        "字幕由amara org社区提供",
        "请不吝点赞 订阅 转发 打赏支持明镜与点点栏目",
    }
)
_PUNCT = re.compile(r"[^\w\s]+")
# Chinese and Japanese are written without spaces: each character counts as a unit there.
_CJK = "\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff"
_WORD = re.compile(rf"[{_CJK}]|[^\W{_CJK}]+")


def _plain(text: str) -> str:
    return " ".join(_PUNCT.sub(" ", text.lower()).split())


def segment_dbfs(audio: DecodedAudio, start: float, end: float) -> float:
    """RMS level of [start, end) seconds in dB relative to full scale (-inf for digital silence)."""
    samples = audio.read(int(start * audio.sample_rate), int(end * audio.sample_rate))
    if len(samples) == 0:
        return float("-inf")
    rms = float(np.sqrt(np.mean(np.square(samples, dtype=np.float64))))
    return 20.0 * np.log10(rms) if rms > 0 else float("-inf")


def loudest_dbfs(audio: DecodedAudio, start: float, end: float) -> float:
    """Level of the loudest 100 ms frame within [start, end) seconds, in dBFS (-inf when silent)."""
    frame = int(_FRAME_SECONDS * audio.sample_rate)
    samples = audio.read(max(0, int(start * audio.sample_rate)), int(end * audio.sample_rate))
    frames = len(samples) // frame
    if frames == 0:
        return segment_dbfs(audio, start, end)
    x = samples[: frames * frame].reshape(frames, frame).astype(np.float64)
    peak = float(np.max(np.einsum("ij,ij->i", x, x))) / frame
    return 10.0 * np.log10(peak) if peak > 0 else float("-inf")


def has_repetition(text: str) -> bool:
    """Whether one n-gram of units (words; characters in Chinese and Japanese) repeats back to
    back: 6+ times for single units, 4+ times otherwise."""
    words = _WORD.findall(text.lower())
    for n in range(1, 11):
        needed = 6 if n == 1 else 4
        if len(words) < n * needed:
            break
        for offset in range(n):
            run = 1
            for i in range(offset + n, len(words) - n + 1, n):
                run = run + 1 if words[i : i + n] == words[i - n : i] else 1
                if run >= needed:
                    return True
    return False


def _is_phantom(seg: Segment) -> bool:
    return _plain(seg.text) in PHANTOM_PHRASES


def inspect(transcript: Transcript, audio: DecodedAudio) -> list[str]:
    """Return the hallucination kinds this transcript shows (empty when none)."""
    kinds: set[str] = set()
    if has_repetition(transcript.text) or any(
        (s.compression_ratio or 0.0) > COMPRESSION_LIMIT and len(_WORD.findall(s.text)) >= 8
        for s in transcript.segments
    ):
        kinds.add("repetition")
    for seg in transcript.segments:
        if not _WORD.search(seg.text):
            continue
        level = segment_dbfs(audio, seg.start, seg.end)
        if _is_phantom(seg) and (level < PHANTOM_DBFS or (seg.no_speech_prob or 0.0) >= 0.5):
            kinds.add("phantom_phrase")
        elif level < SILENCE_DBFS:
            kinds.add("silence")
    return sorted(kinds)


def clamp_to(seg: Segment, end: float) -> Segment:
    """`seg` ending no later than `end` seconds (its words too): itself when it already does."""
    if seg.end <= end:
        return seg
    words = None
    if seg.words is not None:
        words = [replace(w, end=min(w.end, end)) for w in seg.words if w.start < end]
    return replace(seg, end=end, words=words)


class Guard:
    """The guard's sure cases, judged segment by segment as the engine produces them.

    One per transcription: it remembers the text kept so far (for repetition) and what it dropped
    (`dropped`, one kind per segment, in order). Runs in the worker thread.
    """

    def __init__(self, audio: DecodedAudio) -> None:
        self._audio = audio
        self._said = " "  # plain text kept so far, space-separated, for whole-word matching
        self.dropped: list[str] = []

    def screen(self, seg: Segment, heard_end: float) -> Segment | None:
        """Return `seg` to keep (clamped to `heard_end`, the end in seconds of the audio the engine
        was given for it), or None when it was invented; a dropped segment's kind is in `dropped`."""
        kind = "past_end" if self._past_end(seg, heard_end) else None
        kept = clamp_to(seg, heard_end)
        kind = kind or self._invented(kept)
        if kind is not None:
            self.dropped.append(kind)
            return None
        plain = _plain(kept.text)
        if plain:
            self._said += f"{plain} "
        return kept

    def _past_end(self, seg: Segment, end: float) -> bool:
        """Whether `seg` starts at or after `end`, or lies mostly past it (more than
        END_TOLERANCE_SECONDS out, more of it outside than inside) over near-silence inside: Whisper
        stamps a real last segment a little late at times, and that one holds speech."""
        if seg.start >= end:
            return True
        outside = seg.end - end
        if outside <= END_TOLERANCE_SECONDS or outside <= end - seg.start:
            return False
        return segment_dbfs(self._audio, seg.start, end) < SILENCE_DBFS

    def _invented(self, seg: Segment) -> str | None:
        if not _WORD.search(seg.text):
            return None
        level = segment_dbfs(self._audio, seg.start, seg.end)
        if level >= SILENCE_DBFS:
            return None
        if level == float("-inf"):
            return "silence"  # digital silence: nothing there to hear
        around = loudest_dbfs(self._audio, seg.start - AROUND_SECONDS, seg.end + AROUND_SECONDS)
        if around - level < QUIETER_DB:
            return None  # as loud as its surroundings: a quiet recording, not a gap in one
        if level < SURE_SILENCE_DBFS:
            return "silence"
        return "repetition" if self._repeats(seg.text) else None

    def _repeats(self, text: str) -> bool:
        plain = _plain(text)
        return len(_WORD.findall(plain)) >= MIN_REPEATED_WORDS and f" {plain} " in self._said
