"""SenseVoice's rich output: language, emotion, sound-event and ITN tags before the text.

SenseVoiceSmall emits, for each stretch of speech it decodes,

    <|en|><|NEUTRAL|><|Speech|><|woitn|>hello world

and FunASR's VAD pipeline concatenates one such stretch per (merged) VAD segment. This module
splits that string into pieces, one per language tag, and reads each piece's tags into fields.
Pure Python, so it is usable (and tested) without FunASR.
"""

from __future__ import annotations

import itertools
import re
from collections import Counter
from dataclasses import dataclass, field

LANGUAGE_TAGS = frozenset({"zh", "en", "yue", "ja", "ko", "nospeech"})
EMOTIONS = frozenset({"HAPPY", "SAD", "ANGRY", "NEUTRAL", "FEARFUL", "DISGUSTED", "SURPRISED", "EMO_UNKNOWN"})
EVENTS = frozenset(
    {"Speech", "BGM", "Applause", "Laughter", "Cry", "Sneeze", "Breath", "Cough", "Sing", "Speech_Noise", "Event_UNK"}
)
ITN_TAGS = frozenset({"withitn", "woitn"})
OTHER = "other"

_TAG = re.compile(r"<\|([^|<>]{1,32})\|>")


@dataclass
class RichPiece:
    """One decoded stretch: its tags as fields, its plain text and its raw form."""

    raw: str
    text: str
    language: str | None = None
    emotion: str | None = None
    events: list[str] = field(default_factory=list)


def _piece(raw: str) -> RichPiece:
    tags = _TAG.findall(raw)
    text = " ".join(_TAG.sub(" ", raw).split())
    language = next((t for t in tags if t in LANGUAGE_TAGS), None)
    emotions = [t for t in tags if t in EMOTIONS]
    events = list(dict.fromkeys(t for t in tags if t in EVENTS))
    # Anything else in tag form is unknown to us (a newer model): counted as `other`.
    unknown = [t for t in tags if t not in LANGUAGE_TAGS | EMOTIONS | EVENTS | ITN_TAGS]
    events += [OTHER] if unknown and OTHER not in events else []
    emotion = Counter(emotions).most_common(1)[0][0] if emotions else None
    return RichPiece(raw=raw, text=text, language=language, emotion=emotion, events=events)


def split_rich(raw: str) -> list[RichPiece]:
    """Split SenseVoice output into pieces, each starting at a language tag.

    Text before the first language tag (or output without tags at all) is one piece with
    no language. Pieces with neither text nor tags are dropped.
    """
    starts = [m.start() for m in _TAG.finditer(raw) if m.group(1) in LANGUAGE_TAGS]
    bounds = [0, *(s for s in starts if s > 0), len(raw)]
    pieces = [_piece(raw[a:b]) for a, b in itertools.pairwise(bounds)]
    return [p for p in pieces if p.text or p.emotion or p.events or p.language]
