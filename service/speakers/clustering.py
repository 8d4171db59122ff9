"""Voice prints grouped into speakers, and how many speakers there are.

Two steps (scikit-learn's agglomerative clustering, then our own merge):
  groups   windows joined by average linkage up to a small cosine distance (GROUP_DISTANCE): pure
           groups of one voice, several per speaker;
  merge    the two groups whose mean voice prints are most alike are joined while that similarity
           is at least `similarity`. A mean over many windows is steadier than any one window, so
           this is where the count is decided: resemblyzer's window-to-window similarities of one
           voice and of two overlap in their tails (a cut of the average-linkage tree failed on
           either short clips or real voices, measured in bench/speakers.py); their means do not.
Then groups too small to be a voice of their own (fewer than MIN_WINDOWS windows or `min_share`
of them: a cough, the crossover of two turns, noise at a turn's edge) are folded into their
nearest neighbour. The request's bounds on the count always hold where the windows allow it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    import numpy.typing as npt

# More windows than this are pooled in runs of neighbours first: the tree needs n^2 memory
# (2000 windows: about half an hour of speech).
MAX_POINTS = 2000
GROUP_DISTANCE = 0.25
MIN_WINDOWS = 3  # about 2.4 s of speech with resemblyzer's windows


def cluster(
    embeddings: npt.NDArray[np.float32],
    similarity: float,
    min_speakers: int | None = None,
    max_speakers: int | None = None,
    min_share: float = 0.0,
    limit: int = 10,
) -> npt.NDArray[np.int64]:
    """A speaker index per embedding (unit vectors), 0, 1, ... in order of first appearance.

    The count is estimated (at most `limit`), or held between `min_speakers` and `max_speakers`
    where the points allow it. `similarity`: the cosine similarity of two groups' mean voice
    prints at or above which they are one speaker.
    """
    n = len(embeddings)
    if n == 0:
        return np.zeros(0, dtype=np.int64)
    lower = min(n, max(1, min_speakers or 1))
    upper = min(n, max(lower, max_speakers) if max_speakers is not None else limit)
    if n == 1 or upper == 1:
        return np.zeros(n, dtype=np.int64)
    if n > MAX_POINTS:
        return _pooled(embeddings, similarity, min_speakers, max_speakers, min_share, limit)
    labels = _agglomerate(embeddings, threshold=GROUP_DISTANCE)
    if int(labels.max()) + 1 < lower:
        labels = _agglomerate(embeddings, clusters=lower)
    labels = _merge(embeddings, labels, similarity, lower, upper)
    labels = _fold_small(embeddings, labels, max(min_share * n, MIN_WINDOWS), lower)
    return _in_order(labels)


def centroids(embeddings: npt.NDArray[np.float32], labels: npt.NDArray[np.int64]) -> npt.NDArray[np.float32]:
    """The unit-length mean voice print of each label (rows in label order)."""
    count = int(labels.max()) + 1 if len(labels) else 0
    out = np.zeros((count, embeddings.shape[1]), dtype=np.float32)
    for k in range(count):
        members = embeddings[labels == k]
        if len(members):
            out[k] = unit(members.mean(axis=0))
    return out


def unit(vector: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
    """`vector` scaled to length 1 (a zero vector stays zero)."""
    norm = float(np.linalg.norm(vector))
    return (vector / norm).astype(np.float32) if norm > 0 else vector.astype(np.float32)


def _agglomerate(
    embeddings: npt.NDArray[np.float32], threshold: float | None = None, clusters: int | None = None
) -> npt.NDArray[np.int64]:
    from sklearn.cluster import AgglomerativeClustering

    model = AgglomerativeClustering(
        n_clusters=clusters,
        distance_threshold=threshold if clusters is None else None,
        metric="cosine",
        linkage="average",
    )
    return np.asarray(model.fit_predict(embeddings), dtype=np.int64)


def _merge(
    embeddings: npt.NDArray[np.float32], labels: npt.NDArray[np.int64], similarity: float, lower: int, upper: int
) -> npt.NDArray[np.int64]:
    """Join the most alike groups (by mean voice print) while they are alike enough, or while
    there are more than `upper`; never below `lower`."""
    labels = labels.copy()
    while True:
        groups = np.unique(labels)
        if len(groups) <= lower:
            return labels
        means = np.stack([unit(embeddings[labels == k].mean(axis=0)) for k in groups])
        alike = means @ means.T
        np.fill_diagonal(alike, -np.inf)
        i, j = np.unravel_index(int(np.argmax(alike)), alike.shape)
        if alike[i, j] < similarity and len(groups) <= upper:
            return labels
        labels[labels == groups[j]] = groups[i]


def _fold_small(
    embeddings: npt.NDArray[np.float32], labels: npt.NDArray[np.int64], smallest: float, keep: int
) -> npt.NDArray[np.int64]:
    labels = labels.copy()
    while True:
        present, counts = np.unique(labels, return_counts=True)
        if len(present) <= max(keep, 1):
            return labels
        i = int(np.argmin(counts))
        if counts[i] >= smallest:
            return labels
        small = present[i]
        others = [k for k in present if k != small]
        means = np.stack([unit(embeddings[labels == k].mean(axis=0)) for k in others])
        labels[labels == small] = others[int(np.argmax(means @ unit(embeddings[labels == small].mean(axis=0))))]


def _in_order(labels: npt.NDArray[np.int64]) -> npt.NDArray[np.int64]:
    """Relabel so that speakers are numbered in the order they first speak."""
    order: dict[int, int] = {}
    for k in labels.tolist():
        order.setdefault(k, len(order))
    return np.array([order[k] for k in labels.tolist()], dtype=np.int64)


def _pooled(
    embeddings: npt.NDArray[np.float32],
    similarity: float,
    min_speakers: int | None,
    max_speakers: int | None,
    min_share: float,
    limit: int,
) -> npt.NDArray[np.int64]:
    # Runs of consecutive windows (mostly one speaker's) averaged to at most MAX_POINTS points;
    # each window then takes its run's speaker.
    size = -(-len(embeddings) // MAX_POINTS)
    runs = [embeddings[i : i + size] for i in range(0, len(embeddings), size)]
    pooled = np.stack([unit(run.mean(axis=0)) for run in runs])
    run_labels = cluster(pooled, similarity, min_speakers, max_speakers, min_share, limit)
    return np.repeat(run_labels, [len(run) for run in runs])
