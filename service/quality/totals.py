"""The quality loop's running totals: their names, what a kept, scored or shadowed sample adds to
each, and the asr_quality_* counter each one is counted in and restored into.

The sample store keeps totals (name, language, stratum, value) that outlive deleted samples; the
scoring job and shadow scoring count the same amounts live, and at startup the job sets the
counters to the stored totals. All three take the names and amounts from here, so a total cannot
be written under one name and looked for under another. The names are stored data: renaming one
strands the rows stored under the old name, unless a migration (service.migrations) renames them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from service.languages import language_label

if TYPE_CHECKING:
    from collections.abc import Mapping

    from prometheus_client import Counter

    from service.metrics import Metrics

SAMPLES = "samples"  # kept requests; the one total kept per stratum as well as per language
SCORED = "scored"  # samples scored against a person's reference
SHADOW_SCORED = "shadow_scored"  # samples compared with the shadow engine's transcript


@dataclass(frozen=True)
class UnitTotals:
    """The names of one scoring unit's totals (words, or characters for zh, ja, yue and ko)."""

    errors: str
    reference_units: str
    weighted_errors: str
    weighted_reference_units: str
    shadow_errors: str
    shadow_reference_units: str


BY_UNIT = {
    "word": UnitTotals(
        "word_errors",
        "reference_words",
        "weighted_word_errors",
        "weighted_reference_words",
        "shadow_word_errors",
        "shadow_reference_words",
    ),
    "char": UnitTotals(
        "char_errors",
        "reference_chars",
        "weighted_char_errors",
        "weighted_reference_chars",
        "shadow_char_errors",
        "shadow_reference_chars",
    ),
}


def scored(unit: str, errors: int, reference_units: int, weight: float) -> dict[str, float]:
    """What one scored sample adds, by total: its figures raw and weighted by `weight` (1 / its
    inclusion probability), and one scored sample. Raises KeyError for an unknown unit."""
    names = BY_UNIT[unit]
    return {
        names.errors: errors,
        names.reference_units: reference_units,
        names.weighted_errors: errors * weight,
        names.weighted_reference_units: reference_units * weight,
        SCORED: 1,
    }


def shadowed(unit: str, errors: int, units: int, weight: float) -> dict[str, float]:
    """What one shadow-scored sample adds, by total: its disagreement with the shadow engine,
    weighted by `weight`, and one shadowed sample. Raises KeyError for an unknown unit."""
    names = BY_UNIT[unit]
    return {names.shadow_errors: errors * weight, names.shadow_reference_units: units * weight, SHADOW_SCORED: 1}


class TotalCounters:
    """The asr_quality_* counter of every total, in one metrics registry."""

    def __init__(self, metrics: Metrics) -> None:
        m = metrics
        self._by_name: dict[str, Counter] = {
            SAMPLES: m.quality_samples,
            SCORED: m.quality_scored,
            SHADOW_SCORED: m.quality_shadow_scored,
        }
        for unit, names in BY_UNIT.items():
            self._by_name[names.errors] = m.quality_errors[unit]
            self._by_name[names.reference_units] = m.quality_reference_units[unit]
            self._by_name[names.weighted_errors] = m.quality_weighted_errors[unit]
            self._by_name[names.weighted_reference_units] = m.quality_weighted_reference_units[unit]
            self._by_name[names.shadow_errors] = m.quality_shadow_errors[unit]
            self._by_name[names.shadow_reference_units] = m.quality_shadow_reference_units[unit]

    def __contains__(self, name: object) -> bool:
        return name in self._by_name

    def add(self, name: str, language: str, amount: float, stratum: str = "") -> None:
        """Add `amount` to the counter of the total `name`; raises KeyError for an unknown name."""
        counter = self._by_name[name]
        label = language_label(language)
        (counter.labels(label, stratum) if name == SAMPLES else counter.labels(label)).inc(amount)

    def add_all(self, amounts: Mapping[str, float], language: str) -> None:
        """Add each of `amounts` (as `scored` or `shadowed` return them) to its counter."""
        for name, amount in amounts.items():
            self.add(name, language, amount)
