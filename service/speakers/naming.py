"""Labels for speakers: a known speaker's name where a voice matches its reference, else A, B, ...

Matching is one-to-one (the Hungarian assignment on cosine similarity between each speaker's
voice print and each reference's), and a pair counts only above `threshold`: a reference of
someone who never speaks names nobody, and two speakers never get one name.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from collections.abc import Iterable, Sequence

    import numpy.typing as npt

    from service.speakers.base import KnownVoice


def letters(index: int) -> str:
    """The index-th anonymous label: A ... Z, then AA, AB, ... (as spreadsheet columns)."""
    label = ""
    index += 1
    while index:
        index, rest = divmod(index - 1, 26)
        label = chr(ord("A") + rest) + label
    return label


def anonymous_labels(count: int, taken: Iterable[str] = ()) -> list[str]:
    """`count` letter labels in order, skipping any that a known speaker's name already uses."""
    used = set(taken)
    out: list[str] = []
    index = 0
    while len(out) < count:
        label = letters(index)
        index += 1
        if label not in used:
            out.append(label)
    return out


def match_known(
    prints: npt.NDArray[np.float32], known: Sequence[KnownVoice], threshold: float
) -> dict[int, tuple[str, float]]:
    """Which speakers (rows of `prints`, unit vectors) are which known voices: {row: (name,
    similarity)} for the one-to-one pairs at or above `threshold`."""
    if len(prints) == 0 or not known:
        return {}
    from scipy.optimize import linear_sum_assignment

    references = np.stack([k.embedding for k in known])
    similarity = prints @ references.T
    rows, cols = linear_sum_assignment(-similarity)
    return {
        int(r): (known[c].name, float(similarity[r, c]))
        for r, c in zip(rows, cols, strict=True)
        if similarity[r, c] >= threshold
    }
