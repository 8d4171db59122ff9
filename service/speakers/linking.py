"""One set of speakers across parts diarized apart: a job's windows, a live session's turns.

A Roster holds the voices heard so far, each a running voice print (the mean of its parts',
weighted by their seconds). A new part's speakers are matched to them one-to-one (the Hungarian
assignment on cosine similarity, pairs at or above `threshold`); a speaker that matches nobody
is a new voice with the next free letter. The order parts are offered in decides the letters, so
a job links its windows in window order and gets the same labels however often it was resumed.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

import numpy as np

from service.speakers.clustering import unit
from service.speakers.naming import letters

if TYPE_CHECKING:
    from collections.abc import Sequence

    import numpy.typing as npt

    from service.backends.base import Segment
    from service.speakers.base import Diarization


@dataclass
class Voice:
    """A speaker as a part reports it: its label there, voice print and seconds."""

    label: str
    embedding: npt.NDArray[np.float32]
    seconds: float


class Roster:
    """The voices of one job or session, labelled A, B, ... in the order they first appear."""

    def __init__(self, threshold: float) -> None:
        self.threshold = threshold
        self.labels: list[str] = []
        self._sums: list[npt.NDArray[np.float64]] = []
        self.seconds: list[float] = []

    def __len__(self) -> int:
        return len(self.labels)

    def prints(self) -> npt.NDArray[np.float32]:
        """The voice print of every voice, in label order."""
        if not self._sums:
            return np.zeros((0, 0), dtype=np.float32)
        return np.stack([unit(s.astype(np.float32)) for s in self._sums])

    def add(self, voices: Sequence[Voice]) -> dict[str, str]:
        """Match one part's voices (all different people) to the roster; returns {their label:
        the roster's}. Unmatched ones join it, in the part's order."""
        mapping: dict[str, str] = {}
        taken: set[int] = set()
        if self.labels and voices:
            from scipy.optimize import linear_sum_assignment

            similarity = np.stack([unit(v.embedding) for v in voices]) @ self.prints().T
            rows, cols = linear_sum_assignment(-similarity)
            for r, c in zip(rows.tolist(), cols.tolist(), strict=True):
                if similarity[r, c] >= self.threshold:
                    mapping[voices[r].label] = self.labels[c]
                    self._grow(c, voices[r])
                    taken.add(r)
        for r in sorted(set(range(len(voices))) - taken):
            voice = voices[r]
            self.labels.append(letters(len(self.labels)))
            self._sums.append(np.zeros(len(voice.embedding), dtype=np.float64))
            self.seconds.append(0.0)
            self._grow(len(self.labels) - 1, voice)
            mapping[voice.label] = self.labels[-1]
        return mapping

    def _grow(self, index: int, voice: Voice) -> None:
        weight = max(voice.seconds, 0.1)
        self._sums[index] += unit(voice.embedding).astype(np.float64) * weight
        self.seconds[index] += voice.seconds

    def merge_to(self, count: int) -> dict[str, str]:
        """Join the most similar voices until at most `count` remain (a job's max_speakers);
        returns {old label: surviving label} for the voices that were joined."""
        merged: dict[str, str] = {}
        while len(self.labels) > max(1, count):
            prints = self.prints()
            similarity = prints @ prints.T
            np.fill_diagonal(similarity, -np.inf)
            a, b = sorted(np.unravel_index(int(np.argmax(similarity)), similarity.shape))
            self._sums[a] += self._sums[b]
            self.seconds[a] += self.seconds[b]
            merged[self.labels[b]] = self.labels[a]
            for old, new in merged.items():
                if new == self.labels[b]:
                    merged[old] = self.labels[a]
            del self.labels[b], self._sums[b], self.seconds[b]
        return merged


def link_parts(
    parts: Sequence[Sequence[Voice]], threshold: float, max_speakers: int | None = None
) -> list[dict[str, str]]:
    """For each part (in order), {its label: the label across all parts}; at most `max_speakers`
    speakers in all when given (the most similar are joined)."""
    roster = Roster(threshold)
    mappings = [roster.add(part) for part in parts]
    if max_speakers is not None and len(roster) > max_speakers:
        merged = roster.merge_to(max_speakers)
        mappings = [{k: merged.get(v, v) for k, v in m.items()} for m in mappings]
    # The letters follow first appearance (parts in order, each part's voices in its order),
    # whatever the merges left.
    order: dict[str, str] = {}
    for part, mapping in zip(parts, mappings, strict=True):
        for voice in part:
            order.setdefault(mapping[voice.label], letters(len(order)))
    return [{k: order[v] for k, v in m.items()} for m in mappings]


def window_voices(diarization: Diarization) -> list[dict[str, Any]]:
    """A part's speakers as a store keeps them (JSON: label, voice print, seconds)."""
    return [
        {"label": s.label, "embedding": [round(float(x), 5) for x in s.embedding], "seconds": round(s.seconds, 3)}
        for s in diarization.speakers
    ]


def stored_voices(rows: Sequence[dict[str, Any]]) -> list[Voice]:
    """What window_voices stored, back as Voices."""
    return [Voice(r["label"], np.asarray(r["embedding"], dtype=np.float32), float(r["seconds"])) for r in rows]


def relabel(segments: Sequence[Segment], labels: dict[str, str]) -> list[Segment]:
    """`segments` (and their words) with their speakers renamed by `labels`."""
    if not labels:
        return list(segments)
    out = []
    for seg in segments:
        words = [replace(w, speaker=labels.get(w.speaker, w.speaker) if w.speaker else None) for w in seg.words or []]
        speaker = labels.get(seg.speaker, seg.speaker) if seg.speaker else None
        out.append(replace(seg, speaker=speaker, words=words if seg.words is not None else None))
    return out
