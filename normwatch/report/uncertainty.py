r"""The uncertainty of a verdict's statistic, and the three-way reading of a claim from its interval.

A verdict's statistic is either a test accuracy (or a difference of two) or the median over layers of a
per-layer dynamics ratio. Its standard error comes from the data the report has, once, here:

* one test accuracy p on n test images: the binomial :math:`\sqrt{p(1-p)/n}` (:func:`binomial_se`);
* the mean of k ≥ 2 seeds: the seeds' spread :math:`s/\sqrt k`, never below the binomial error of the
  k·n predictions pooled (:func:`mean_accuracy_se`; two or three seeds can agree by chance);
* the median of L ≥ 2 layers: :math:`\sqrt{\pi/2}\,s/\sqrt L` (:func:`median_se`, the large-sample
  standard error of a median of normal values), s the spread over layers;
* a difference of two independent estimates: :math:`\sqrt{se_a^2 + se_b^2}` (:func:`difference`).

The interval is the estimate ± :data:`Z` standard errors. A claim "x ≈ target within ±tol" then
*holds* when the whole interval lies inside [target − tol, target + tol], *does not hold* when it lies
wholly outside, and is *inconclusive* when it straddles an edge (:func:`judge_near`): the data cannot
decide. An estimate without a known error (a single layer, an unknown test-set size) has the interval
[x, x], so it is read as before, on its point value.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np

Outcome = Literal["holds", "does not hold", "inconclusive", "no data"]

#: Half-width of an interval, in standard errors (≈ 95 % for a normal estimate).
Z = 2.0


@dataclass(frozen=True)
class Interval:
    """An estimate and its standard error.

    Attributes:
        value: the estimate.
        se: its standard error; ``None`` where none could be estimated (the interval is then [value, value]).
        source: where ``se`` comes from, in a few words (``"binomial, n = 1000"``, ``"spread over 3 seeds"``).
    """

    value: float
    se: float | None = None
    source: str = ""

    @property
    def low(self) -> float:
        """value − Z·se (value without an se)."""
        return self.value - Z * (self.se or 0.0)

    @property
    def high(self) -> float:
        """value + Z·se (value without an se)."""
        return self.value + Z * (self.se or 0.0)

    def text(self, digits: int = 3) -> str:
        """``"0.78 [0.754, 0.806] (±2 SE, binomial, n = 1000)"``, or just the value without an se."""
        if self.se is None:
            return f"{self.value:.{digits}g}" + (f" ({self.source})" if self.source else "")
        return (f"{self.value:.{digits}g} [{self.low:.{digits}g}, {self.high:.{digits}g}] "
                f"(±{Z:g} SE{', ' + self.source if self.source else ''})")


def binomial_se(accuracy: float, n: int) -> float:
    r"""Standard error of a test accuracy p measured on n independent images, :math:`\sqrt{p(1-p)/n}`.

    Example:
        >>> round(binomial_se(0.8, 1000), 5)
        0.01265
    """
    if n <= 0:
        raise ValueError(f"Expected a test-set size n > 0, got {n}")
    p = min(max(float(accuracy), 0.0), 1.0)
    return math.sqrt(p * (1.0 - p) / n)


def mean_se(values: Sequence[float]) -> float | None:
    r"""Standard error of the mean of k ≥ 2 values, :math:`s/\sqrt k` with s the sample standard
    deviation (ddof 1); ``None`` for fewer than 2.

    Example:
        >>> round(mean_se([0.90, 0.92]), 6)
        0.01
    """
    x = np.asarray(values, dtype=np.float64)
    if x.size < 2:
        return None
    return float(np.std(x, ddof=1) / math.sqrt(x.size))


def median_se(values: Sequence[float]) -> float | None:
    r"""Standard error of the median of L ≥ 2 values, :math:`\sqrt{\pi/2}\;s/\sqrt L` (s the sample
    standard deviation, ddof 1: the large-sample error of a normal sample's median); ``None`` for fewer than 2.

    Example:
        >>> round(median_se([1.0, 1.2]), 6)
        0.125331
    """
    se = mean_se(values)
    return None if se is None else math.sqrt(math.pi / 2.0) * se


def mean_accuracy_se(accuracies: Sequence[float], n: int | None) -> float | None:
    r"""Standard error of the mean test accuracy of k seeds, each on the same n test images.

    k = 1: :math:`\sqrt{p(1-p)/n}`. k ≥ 2: :math:`\max(s/\sqrt k,\ \sqrt{\bar p(1-\bar p)/(kn)})`, the
    spread over seeds floored by the binomial error of the k·n predictions pooled. ``None`` where
    neither is known (one seed and no n).

    Example:
        >>> round(mean_accuracy_se([0.80], 1000), 5), round(mean_accuracy_se([0.80, 0.80], 1000), 5)
        (0.01265, 0.00894)
    """
    k = len(accuracies)
    if k == 0:
        return None
    spread = mean_se(accuracies)
    floor = binomial_se(float(np.mean(accuracies)), k * n) if n else None
    known = [se for se in (spread, floor) if se is not None]
    return max(known) if known else None


def accuracy_interval(accuracies: Sequence[float], n: int | None) -> Interval:
    """The mean of k seeds' test accuracies with :func:`mean_accuracy_se` (fractions in [0, 1])."""
    k = len(accuracies)
    se = mean_accuracy_se(accuracies, n)
    if se is None:
        source = "test-set size unknown: no sampling error"
    elif k == 1:
        source = f"binomial, n = {n}"
    else:
        source = f"{k} seeds" + (f", n = {n}" if n else "")
    return Interval(float(np.mean(accuracies)), se, source)


def layer_interval(per_layer: Sequence[float]) -> Interval:
    """The median over layers with :func:`median_se` (no se for a single layer)."""
    x = list(per_layer)
    se = median_se(x)
    return Interval(float(np.median(x)), se, f"spread over {len(x)} layers" if se is not None else "")


def difference(a: Interval, b: Interval) -> Interval:
    r"""a − b with :math:`se = \sqrt{se_a^2 + se_b^2}` (independent estimates); no se if either has none.

    Example:
        >>> d = difference(Interval(0.80, 0.03), Interval(0.78, 0.04))
        >>> round(d.value, 6), round(d.se, 6)
        (0.02, 0.05)
    """
    se = math.hypot(a.se, b.se) if a.se is not None and b.se is not None else None
    source = a.source if a.source == b.source else "; ".join(s for s in (a.source, b.source) if s)
    return Interval(a.value - b.value, se, source)


def judge_near(interval: Interval, target: float, tolerance: float) -> Outcome:
    """"holds" when [low, high] ⊂ [target − tol, target + tol]; "does not hold" when the interval lies
    wholly outside it; else "inconclusive".

    Example:
        >>> [judge_near(Interval(v, 0.01), 0.0, 0.05) for v in (0.0, 0.2, 0.05)]
        ['holds', 'does not hold', 'inconclusive']
    """
    lo, hi = target - tolerance, target + tolerance
    if lo <= interval.low and interval.high <= hi:
        return "holds"
    if interval.low > hi or interval.high < lo:
        return "does not hold"
    return "inconclusive"


def judge_at_most(interval: Interval, bound: float) -> Outcome:
    """"holds" when high ≤ bound, "does not hold" when low > bound, else "inconclusive"."""
    if interval.high <= bound:
        return "holds"
    if interval.low > bound:
        return "does not hold"
    return "inconclusive"


def clearly_apart(a: Interval, b: Interval) -> bool:
    """Whether a − b is further than Z standard errors of the difference from 0 (False without an se
    only when the values are equal)."""
    d = difference(a, b)
    return d.low > 0 or d.high < 0


def judge_greater(interval: Interval, bound: float = 0.0) -> Outcome:
    """"holds" when low > bound (clearly above), "does not hold" when high < bound (clearly below), else
    "inconclusive".

    Example:
        >>> [judge_greater(Interval(v, 0.01)) for v in (0.05, -0.05, 0.01)]
        ['holds', 'does not hold', 'inconclusive']
    """
    if interval.low > bound:
        return "holds"
    if interval.high < bound:
        return "does not hold"
    return "inconclusive"
