"""Diarization from any speaker embedder: find speech, embed windows of it, cluster, smooth.

speech      Silero VAD over the audio (service.speakers.speech), in bounded chunks;
embed       each stretch of speech in overlapping windows (the embedder's own, ~1.6 s);
cluster     spectral, the count from the eigengap, or held to the request's
            bounds (service.speakers.clustering);
smooth      every 10 ms frame of speech takes the speaker whose windows cover it most (windows
            weigh most at their centre), so a change of speaker inside a stretch is found to
            within a fraction of a window; turns shorter than MIN_TURN_SECONDS join a neighbour;
name        speakers whose voice print matches a known speaker's reference take its name, the
            others A, B, ... in order of first appearance (service.speakers.naming).
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

import numpy as np

from service.backends.base import Cancelled
from service.speakers.base import Diarization, Speaker, Turn
from service.speakers.clustering import centroids, cluster
from service.speakers.naming import anonymous_labels, match_known
from service.speakers.speech import speech_regions

if TYPE_CHECKING:
    import threading

    import numpy.typing as npt

    from service.speakers.base import AudioReader, DiarizeOptions, Embedder

log = logging.getLogger(__name__)
FRAME_SECONDS = 0.01
MIN_TURN_SECONDS = 0.5
# A group of windows below this share of all windows is no voice of its own (a cough, a crossover).
MIN_SPEAKER_SHARE = 0.03


class EmbeddingDiarizer:
    """A Diarizer over an Embedder. `similarity`: the cosine similarity of two groups of windows'
    mean voice prints at or above which they are one speaker (service.speakers.clustering);
    `known_threshold`: the similarity a voice needs to a reference to take its name;
    `max_speakers`: the most speakers an estimate may find."""

    def __init__(self, embedder: Embedder, similarity: float, known_threshold: float, max_speakers: int = 10) -> None:
        self.embedder = embedder
        self.name = embedder.name
        self.similarity = similarity
        self.known_threshold = known_threshold
        self.max_speakers = max_speakers

    def voice_print(self, samples: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
        return self.embedder.embed(samples)

    def close(self) -> None:
        self.embedder.close()

    def diarize(
        self, audio: AudioReader, options: DiarizeOptions, cancel: threading.Event | None = None
    ) -> Diarization:
        rate = audio.sample_rate
        regions = speech_regions(audio, options.vad, cancel)
        vectors: list[npt.NDArray[np.float32]] = []
        spans: list[tuple[int, int]] = []  # each window's absolute sample range
        owners: list[int] = []  # the region each window belongs to
        for index, (start, stop) in enumerate(regions):
            if cancel is not None and cancel.is_set():
                raise Cancelled()
            embedded, windows = self.embedder.windows(audio.read(start, stop))
            vectors.append(embedded)
            spans += [(start + a, start + min(b, stop - start)) for a, b in windows]
            owners += [index] * len(windows)
        if not spans:
            return Diarization([], [])
        embeddings = np.concatenate(vectors).astype(np.float32)
        clustered = cluster(
            embeddings,
            self.similarity,
            options.min_speakers,
            options.max_speakers,
            min_share=MIN_SPEAKER_SHARE,
            limit=self.max_speakers,
        )
        # Each window then goes to the nearest speaker's voice print: a window that k-means put
        # with the others of its stretch but that sounds like the next speaker moves the change.
        labels = np.argmax(embeddings @ centroids(embeddings, clustered).T, axis=1).astype(np.int64)
        turns = _turns(regions, spans, owners, labels, rate)
        return self._labelled(turns, embeddings, labels, options)

    def _labelled(
        self,
        turns: list[tuple[float, float, int]],
        embeddings: npt.NDArray[np.float32],
        labels: npt.NDArray[np.int64],
        options: DiarizeOptions,
    ) -> Diarization:
        prints = centroids(embeddings, labels)
        heard = [k for k in dict.fromkeys(k for _, _, k in turns)]  # in order of first appearance
        seconds = {k: sum(e - s for s, e, j in turns if j == k) for k in heard}
        named = match_known(prints[heard], options.known, self.known_threshold)
        names = {heard[row]: name for row, (name, _) in named.items()}
        letters = iter(anonymous_labels(len(heard) - len(names), (k.name for k in options.known)))
        label = {k: names[k] if k in names else next(letters) for k in heard}
        speakers = [Speaker(label[k], prints[k], seconds[k], known=k in names) for k in heard]
        return Diarization([Turn(s, e, label[k]) for s, e, k in turns], speakers)


def _turns(
    regions: list[tuple[int, int]],
    spans: list[tuple[int, int]],
    owners: list[int],
    labels: npt.NDArray[np.int64],
    rate: int,
) -> list[tuple[float, float, int]]:
    """(start, end, speaker) in seconds: each region's frames voted on by its windows, runs of
    one speaker joined, turns too short to be one merged into the longer neighbour."""
    frame = int(FRAME_SECONDS * rate)
    speakers = int(labels.max()) + 1
    by_region: dict[int, list[int]] = {}
    for i, region in enumerate(owners):
        by_region.setdefault(region, []).append(i)
    out: list[tuple[float, float, int]] = []
    for region, members in sorted(by_region.items()):
        start, stop = regions[region]
        frames = max(1, -(-(stop - start) // frame))
        votes = np.zeros((frames, speakers), dtype=np.float64)
        for i in members:
            a, b = (max(0, (spans[i][0] - start) // frame), min(frames, -(-(spans[i][1] - start) // frame)))
            if b <= a:
                continue
            votes[a:b, labels[i]] += np.hanning(b - a + 2)[1:-1]
        chosen = votes.argmax(axis=1)
        runs = _runs(chosen)
        runs = _absorb_short(runs, int(MIN_TURN_SECONDS / FRAME_SECONDS))
        for a, b, k in runs:
            out.append(((start + a * frame) / rate, min(stop, start + b * frame) / rate, k))
    return _join(out)


def _runs(chosen: npt.NDArray[np.int64]) -> list[tuple[int, int, int]]:
    cuts = np.flatnonzero(np.diff(chosen)) + 1
    bounds = [0, *cuts.tolist(), len(chosen)]
    return [(bounds[i], bounds[i + 1], int(chosen[bounds[i]])) for i in range(len(bounds) - 1)]


def _absorb_short(runs: list[tuple[int, int, int]], shortest: int) -> list[tuple[int, int, int]]:
    runs = list(runs)
    while len(runs) > 1:
        lengths = [b - a for a, b, _ in runs]
        i = int(np.argmin(lengths))
        if lengths[i] >= shortest:
            break
        if i == 0:
            j = 1
        elif i == len(runs) - 1:
            j = i - 1
        else:
            j = i - 1 if lengths[i - 1] >= lengths[i + 1] else i + 1
        a, b = min(runs[i][0], runs[j][0]), max(runs[i][1], runs[j][1])
        runs[min(i, j)] = (a, b, runs[j][2])
        del runs[max(i, j)]
        runs = _merge_same(runs)
    return runs


def _merge_same(runs: list[tuple[int, int, int]]) -> list[tuple[int, int, int]]:
    out: list[tuple[int, int, int]] = []
    for a, b, k in runs:
        if out and out[-1][2] == k and out[-1][1] >= a:
            out[-1] = (out[-1][0], b, k)
        else:
            out.append((a, b, k))
    return out


def _join(turns: list[tuple[float, float, int]]) -> list[tuple[float, float, int]]:
    """Neighbouring turns of one speaker that touch (a region cut at a chunk's edge) become one."""
    out: list[tuple[float, float, int]] = []
    for s, e, k in turns:
        if out and out[-1][2] == k and s - out[-1][1] < 1e-6:
            out[-1] = (out[-1][0], e, k)
        else:
            out.append((s, e, k))
    return out
