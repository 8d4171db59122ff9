"""Reference against hypothesis, word by word (character by character for CER languages).

The alignment is the one the score counted: the same normalisation of both sides and the same
jiwer alignment as service.quality.scoring, so the substitutions, deletions and insertions a
reader sees add up to the sample's errors.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, cast

import jiwer

from service.quality.scoring import normalizer_for, unit_for

Op = Literal["equal", "substitute", "delete", "insert"]


@dataclass(frozen=True)
class Chunk:
    """A run of one kind: `reference` units the hypothesis matched, replaced or missed, and the
    `hypothesis` units that matched, replaced them or were added."""

    op: Op
    reference: list[str]
    hypothesis: list[str]


def align(reference: str, hypothesis: str, language: str, mode: str = "auto") -> list[Chunk]:
    """The aligned runs of `reference` and `hypothesis` after the scoring's normalisation."""
    normalize = normalizer_for(language, mode)
    ref, hyp = normalize(reference), normalize(hypothesis)
    if unit_for(language) == "char":
        ref_units, hyp_units = list(ref.replace(" ", "")), list(hyp.replace(" ", ""))
    else:
        ref_units, hyp_units = ref.split(), hyp.split()
    if not ref_units or not hyp_units:  # jiwer refuses an empty side; scoring counts all as errors
        if ref_units:
            return [Chunk("delete", ref_units, [])]
        return [Chunk("insert", [], hyp_units)] if hyp_units else []
    out = jiwer.process_words([" ".join(ref_units)], [" ".join(hyp_units)])
    return [
        Chunk(
            cast("Op", chunk.type),
            ref_units[chunk.ref_start_idx : chunk.ref_end_idx],
            hyp_units[chunk.hyp_start_idx : chunk.hyp_end_idx],
        )
        for chunk in out.alignments[0]
    ]
