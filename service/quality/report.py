"""The quality figures per language: what `samples report` prints and the console's Quality page shows.

One function for both, so that the page and the CLI cannot disagree: per language, the scored
samples' weighted error rate with its bootstrap interval (service.quality.estimate), the unweighted
rate, and, on the samples the shadow engine also transcribed, shadow WER beside true WER.
"""

from __future__ import annotations

from collections import defaultdict
from typing import TYPE_CHECKING, Any

from service.quality.estimate import estimate

if TYPE_CHECKING:
    from collections.abc import Callable

    from service.quality.estimate import Estimate
    from service.quality.store import SampleRecord


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 4)


def _estimate(
    records: list[SampleRecord],
    errors: Callable[[SampleRecord], int | None],
    units: Callable[[SampleRecord], int | None],
) -> Estimate:
    return estimate(
        [float(errors(r) or 0) for r in records], [float(units(r) or 0) for r in records], [r.weight for r in records]
    )


def quality_report(records: list[SampleRecord]) -> list[dict[str, Any]]:
    """The figures of `samples report`, one row per language (records: scored SampleRecords)."""
    by_language: dict[str, list[SampleRecord]] = defaultdict(list)
    for record in records:
        by_language[record.language].append(record)
    rows = []
    for language, group in sorted(by_language.items()):
        figure = _estimate(group, lambda r: r.errors, lambda r: r.reference_units)
        both = [r for r in group if r.shadow_at is not None and r.shadow_unit == r.unit]
        true = _estimate(both, lambda r: r.errors, lambda r: r.reference_units)
        shadow = _estimate(both, lambda r: r.shadow_errors, lambda r: r.shadow_units)
        rows.append(
            {
                "language": language,
                "metric": "CER" if group[0].unit == "char" else "WER",
                "samples": figure.samples,
                "rate": _round(figure.rate),
                "ci95": [_round(figure.low), _round(figure.high)],
                "unweighted": _round(figure.unweighted),
                "shadowed": len(both),
                "true_on_shadowed": _round(true.rate),
                "shadow_on_shadowed": _round(shadow.rate),
            }
        )
    return rows
