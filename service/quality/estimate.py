"""Error rates from scored samples: the weighted (population) estimate and its uncertainty.

A sample kept with probability p stands for 1/p requests. The error rate of all requests is
estimated by the ratio of weighted sums, sum(errors / p) / sum(reference units / p) (the
Horvitz-Thompson totals of errors and words, whose ratio is the Hajek estimator); the unweighted
ratio is the error rate of the samples themselves, biased towards whatever was oversampled.

The confidence interval is a percentile bootstrap over samples: resample the scored samples with
replacement, recompute the ratio, take the 2.5th and 97.5th percentiles. It reflects which
requests happened to be sampled and referenced, not the references' own mistakes.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

BOOTSTRAP_ROUNDS = 2000


@dataclass(frozen=True)
class Estimate:
    samples: int
    rate: float | None  # weighted (population) estimate
    low: float | None  # 95% bootstrap interval of `rate`
    high: float | None
    unweighted: float | None  # the samples' own error rate


def _ratio(errors: np.ndarray, units: np.ndarray) -> np.ndarray:
    """Row-wise sum(errors) / sum(units) of a 2-D resample (NaN where no units)."""
    total = units.sum(axis=-1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(total > 0, errors.sum(axis=-1) / total, np.nan)


def estimate(errors: list[float], units: list[float], weights: list[float] | None = None, seed: int = 0) -> Estimate:
    """The weighted error rate of these samples with a 95% bootstrap interval."""
    n = len(errors)
    if n == 0 or sum(units) == 0:
        return Estimate(n, None, None, None, None)
    e, u = np.asarray(errors, dtype=float), np.asarray(units, dtype=float)
    w = np.ones(n) if weights is None else np.asarray(weights, dtype=float)
    rate = float(_ratio(e * w, u * w))
    unweighted = float(_ratio(e, u))
    picks = np.random.default_rng(seed).integers(0, n, size=(BOOTSTRAP_ROUNDS, n))
    rates = _ratio((e * w)[picks], (u * w)[picks])
    rates = rates[~np.isnan(rates)]
    low, high = (float(x) for x in np.percentile(rates, (2.5, 97.5)))
    return Estimate(n, rate, low, high, unweighted)
