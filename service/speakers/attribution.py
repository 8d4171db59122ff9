"""A transcript's words and segments given to the speakers who said them, by time.

Each word takes the speaker whose turns overlap it most (the nearest turn when none does: words
at the edge of a turn, or in speech the VAD missed). A segment whose words change speaker is split
there, so that every segment has one speaker; a segment without word timings takes the speaker
of most of its span.
"""

from __future__ import annotations

import bisect
from dataclasses import replace
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from collections.abc import Sequence

    from service.backends.base import Segment, Word
    from service.speakers.base import Turn


def attribute(segments: Sequence[Segment], turns: Sequence[Turn]) -> list[Segment]:
    """`segments` with `speaker` set on each and on its words, split where the speaker changes
    mid-segment, renumbered from 0. Without turns (no speech found) they are returned unchanged."""
    if not turns:
        return list(segments)
    index = _TurnIndex(turns)
    out: list[Segment] = []
    for seg in segments:
        if not seg.words:
            out.append(replace(seg, id=len(out), speaker=index.speaker(seg.start, seg.end)))
            continue
        words = [replace(w, speaker=index.speaker(w.start, w.end)) for w in seg.words]
        for n, run in enumerate(_runs(words)):
            text = "".join(w.word for w in run).strip()
            start, end = (seg.start, seg.end) if len(run) == len(words) else (run[0].start, run[-1].end)
            piece = replace(
                seg, id=len(out), start=start, end=end, speaker=run[0].speaker, words=run, text=text or seg.text
            )
            if n > 0:
                piece.tokens = []  # a segment's tokens are the whole segment's: kept on its first part
            out.append(piece)
    return out


def _runs(words: list[Word]) -> list[list[Word]]:
    runs: list[list[Word]] = []
    for word in words:
        if runs and runs[-1][-1].speaker == word.speaker:
            runs[-1].append(word)
        else:
            runs.append([word])
    return runs


class _TurnIndex:
    def __init__(self, turns: Sequence[Turn]) -> None:
        self.turns = sorted(turns, key=lambda t: t.start)
        self.starts = [t.start for t in self.turns]

    def speaker(self, start: float, end: float) -> str:
        """The speaker holding most of [start, end], or of the nearest turn when none overlaps."""
        end = max(end, start)
        first = max(0, bisect.bisect_right(self.starts, start) - 1)
        held: dict[str, float] = {}
        for turn in self.turns[first:]:
            if turn.start >= end and held:
                break
            overlap = min(end, turn.end) - max(start, turn.start)
            if overlap > 0:
                held[turn.speaker] = held.get(turn.speaker, 0.0) + overlap
            if turn.start > end:
                break
        if held:
            return max(held, key=lambda s: held[s])
        middle = (start + end) / 2
        nearby = self.turns[max(0, first - 1) : first + 2]
        return min(nearby, key=lambda t: _distance(t, middle)).speaker


def _distance(turn: Turn, moment: float) -> float:
    return 0.0 if turn.start <= moment <= turn.end else min(abs(turn.start - moment), abs(turn.end - moment))
