"""Which sampled request a reviewer should write a reference for next.

A reference is worth most where it changes what we know. Three things say so, each a term in
[0, 1], added up (ties: the newest first):

- a rare stratum: `1 / (1 + references so far)` in the sample's (language, duration bucket). The
  first reference of a stratum gives its error rate a value at all; the hundredth moves it little.
- a suspected hallucination (service.quality.hallucination flagged it): 1. These are the likeliest
  to be wrong, and the guard's own precision is measured by exactly these references.
- shadow disagreement: the share of words on which the shadow engine disagreed with the served
  hypothesis (service.quality.shadow), capped at 1. Where two engines disagree, at least one is wrong.

So a flagged sample in a stratum with no references comes first, a clean, shadow-agreed sample of
a well-covered stratum last. Each item says why it ranks where it does, in words a reviewer reads.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from service.quality.store import SampleRecord

_FLAG_TEXT = {
    "repetition": "suspected hallucination: repeated text",
    "silence": "suspected hallucination: text over silence",
    "phantom_phrase": "suspected hallucination: a phrase models invent",
}


@dataclass(frozen=True)
class Ranked:
    record: SampleRecord
    priority: float
    reasons: list[str]


def disagreement(record: SampleRecord) -> float | None:
    """The shadow engine's error rate against the served hypothesis, None when not shadowed."""
    if record.shadow_at is None or not record.shadow_units:
        return None
    return min(1.0, (record.shadow_errors or 0) / record.shadow_units)


def rank(records: list[SampleRecord], references: dict[tuple[str, str], int]) -> list[Ranked]:
    """`records` (pending samples) most useful first; `references`: count per (language, stratum)."""
    ranked = []
    for record in records:
        reasons = []
        have = references.get((record.language, record.stratum), 0)
        rarity = 1.0 / (1 + have)
        if have < 3:
            reasons.append(f"rare stratum ({record.language}, {record.stratum}): {have} references so far")
        flagged = 1.0 if record.flags else 0.0
        reasons += [_FLAG_TEXT.get(flag, f"flagged: {flag}") for flag in record.flags]
        shadow = disagreement(record)
        if shadow:
            reasons.append(f"the shadow model disagrees on {shadow:.0%} of the words")
        ranked.append(Ranked(record, round(rarity + flagged + (shadow or 0.0), 4), reasons))
    ranked.sort(key=lambda r: (-r.priority, -r.record.created_at))
    return ranked
