"""Reference-free checks for Whisper's known failure shapes, run on every transcript.

- repetition: the same words over and over (the decoder stuck in a loop), or a segment whose
  text compresses better than Whisper's own fallback threshold (2.4);
- silence: text where the audio is near-silent;
- phantom_phrase: a stock phrase from subtitle training data ("Thank you for watching")
  over near-silent audio.

Each flag is counted in asr_suspected_hallucinations_total{kind}, named in the response's
`warnings`, and raises the request's chance of being sampled for review.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from service.audio import DecodedAudio
    from service.backends.base import Segment, Transcript

SILENCE_DBFS = -45.0  # below this a segment is near-silent (speech sits around -30 to -15)
PHANTOM_DBFS = -40.0
COMPRESSION_LIMIT = 2.4
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
