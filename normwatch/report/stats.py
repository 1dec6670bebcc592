r"""Numpy helpers the report uses: smoothing, and the formulas of :mod:`normwatch.theory` per step.

Notation: η is the learning rate, λ the weight decay, μ the momentum and τ_d the dampening (the
seed writes λ, α, ρ for η, λ, μ). The formulas live once, as scalar functions, in
:mod:`normwatch.theory`; the functions here apply them to arrays of per-step hyperparameters and
return arrays of the broadcast shape. None of them reads event files or draws anything, so the
verdicts and the figures compute each quantity once, here.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable

import numpy as np
from numpy.typing import ArrayLike, NDArray

from normwatch import theory

FloatArray = NDArray[np.float64]

#: A noisy series is smoothed over about this fraction of its logged points (see
#: :func:`smoothing_window`).
SMOOTHING_FRACTION = 1.0 / 50.0


def smoothing_window(n: int) -> int:
    """Width, in logged points, of the centred moving average used for noisy series.

    Args:
        n: number of logged points in the series.

    Returns:
        ``max(1, round(n · SMOOTHING_FRACTION))`` made odd, so the average is centred.

    Example:
        >>> smoothing_window(2000), smoothing_window(10)
        (41, 1)
    """
    width = max(1, round(n * SMOOTHING_FRACTION))
    return width if width % 2 == 1 else width + 1


def moving_average(values: ArrayLike, window: int) -> FloatArray:
    r"""Centred moving average that ignores NaNs and shrinks at the edges.

    .. math:: \bar x_i = \frac{\sum_{j \in J_i} x_j}{|J_i|}, \quad
        J_i = \{j : |j-i| \le h,\ x_j \text{ finite}\}, \quad h = \lfloor \text{window}/2 \rfloor

    Args:
        values: the series, shape ``(n,)``.
        window: width in points (odd; an even width is widened by one).

    Returns:
        The smoothed series, shape ``(n,)``; NaN where no finite point lies within ``h``.

    Example:
        >>> moving_average([1.0, 2.0, 3.0, float("nan"), 5.0], 3).tolist()
        [1.5, 2.0, 2.5, 4.0, 5.0]
    """
    x = np.asarray(values, dtype=np.float64)
    half = max(int(window), 1) // 2
    finite = np.isfinite(x)
    padded_sum = np.concatenate([[0.0], np.cumsum(np.where(finite, x, 0.0))])
    padded_cnt = np.concatenate([[0], np.cumsum(finite)])
    idx = np.arange(x.size)
    lo = np.clip(idx - half, 0, x.size)
    hi = np.clip(idx + half + 1, 0, x.size)
    total = padded_sum[hi] - padded_sum[lo]
    count = padded_cnt[hi] - padded_cnt[lo]
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(count > 0, total / np.maximum(count, 1), np.nan)


def _each(formula: Callable[..., float], *args: ArrayLike, fallback: float = np.nan) -> FloatArray:
    """``formula`` (a scalar function of :mod:`normwatch.theory`) on every element of the broadcast
    ``args``, each distinct combination once; ``fallback`` where it raises ``ValueError`` (out of range)."""
    arrays = np.broadcast_arrays(*(np.asarray(a, dtype=np.float64) for a in args))
    rows = np.stack([a.ravel() for a in arrays], axis=-1)
    combos, inverse = np.unique(rows, axis=0, return_inverse=True)
    out = np.full(len(combos), fallback, dtype=np.float64)
    for i, combo in enumerate(combos):
        with contextlib.suppress(ValueError):
            out[i] = formula(*(float(x) for x in combo))
    return out[np.ravel(inverse)].reshape(arrays[0].shape)


#: Families whose weight decay is decoupled (w ← (1 − ηλ)w − ηU): |w|² relaxes towards a target ∝ η/λ.
DECOUPLED = ("adamw", "nadamw", "radamw", "muon", "decoupled")


def relaxation_time(
    lr: ArrayLike,
    weight_decay: ArrayLike,
    momentum: ArrayLike,
    dampening: float = 0.0,
    family: str = "sgd",
) -> FloatArray:
    r"""Relaxation time of the weight norm towards its equilibrium, in optimizer steps, per step:
    :func:`normwatch.theory.relaxation_steps` for the run's family on each step's η, λ, μ.

    .. math:: \tau = \frac{1-\mu}{4\,\eta(1-\tau_d)\,\lambda}\ (\text{SGD, of } |w|^4), \qquad
        \frac{1}{2\eta\lambda}\ (\text{AdamW, Muon, other decoupled, of } |w|^2), \qquad
        \Big(\frac{1-\mu}{\eta}\Big)^2\ (\text{LARS, of } |w|^2)

    (docs/theory.md, "Relaxation times"; the SGD form is the mean-field equation :math:`d|w|^4/dt = -4\eta_e\lambda
    |w|^4 + 2\eta_e^2G^2` with :math:`\eta_e = \eta(1-\tau_d)/(1-\mu)`). Unknown families use the SGD form.

    Coupled adaptive families (``"adam"``, ``"nadam"``, ``"radam"``, ``"rmsprop"``) get NaN: their steps
    have size η/RMS(g), so the shrink term :math:`2\eta\lambda|w|^2/\mathrm{RMS}(g) \propto |w|^3` and |w|²
    relaxes in :math:`\approx \sigma^*/(3\eta\lambda)` steps, with :math:`\sigma^*` the equilibrium gradient
    RMS (simulated 25–60× faster than :math:`1/(2\eta\lambda)` in tests/test_theory.py), which the
    hyperparameters do not fix. So do families without a formula.

    Args:
        lr: learning rate η per step.
        weight_decay: weight decay λ per step.
        momentum: momentum μ per step (0 for plain SGD; β₁ for Adam-type optimizers, which it does not use).
        dampening: SGD dampening τ_d.
        family: normwatch's optimizer family.

    Returns:
        τ per step; ``inf`` where ηλ = 0 (no equilibrium) or the hyperparameters admit none; NaN where
        the family has no formula.

    Example:
        >>> round(float(relaxation_time(0.4, 5e-4, 0.9)), 9)
        125.0
        >>> round(float(relaxation_time(0.01, 5e-4, 0.9, family="lars")), 6)
        100.0
    """
    fam = "sgd" if family == "unknown" else family
    if theory.relaxation_steps(fam, lr=0.1, weight_decay=0.1, momentum=0.5) is None:
        shape = np.broadcast(np.asarray(lr), np.asarray(weight_decay), np.asarray(momentum)).shape
        return np.full(shape, np.nan)

    def tau(e: float, la: float, m: float) -> float:
        if fam in DECOUPLED:
            m = 0.0  # β₁ is no momentum of the norm's equation
        value = theory.relaxation_steps(fam, lr=e, weight_decay=la, momentum=m, dampening=dampening)
        return math.inf if value is None else value

    return _each(tau, lr, weight_decay, momentum, fallback=np.inf)


def seed_lars_prediction(
    lr: ArrayLike, weight_decay: ArrayLike, momentum: ArrayLike, dampening: float = 0.0
) -> FloatArray:
    r"""The seed's equilibrium value of η|g|/|w| (its eqs. 6 and 7), per step:
    :func:`normwatch.theory.seed_lars_ratio` on each step's hyperparameters.

    .. math:: \eta\frac{|g|}{|w|} \approx \sqrt{\frac{2\eta\lambda(1-\mu)}{1-\tau_d}}

    Equilibrium balances the *means* of shrink and growth, so this predicts the root mean square
    of η|g|/|w|.

    Args:
        lr: learning rate η.
        weight_decay: weight decay λ.
        momentum: momentum μ.
        dampening: SGD dampening τ_d.

    Returns:
        The prediction, shape of the broadcast inputs; NaN where the hyperparameters are out of
        range (negative, or μ ≥ 1).

    Example:
        >>> round(float(seed_lars_prediction(0.4, 5e-4, 0.9)), 5)
        0.00632
    """
    return _each(lambda e, la, m: theory.seed_lars_ratio(e, la, m, dampening), lr, weight_decay, momentum)


def scale_free_grad_sq(lars_ratio: ArrayLike, w_norm2: ArrayLike, lr: ArrayLike) -> FloatArray:
    r"""Squared scale-free gradient norm G² per step, from logged scalars.

    normwatch logs ``lars_ratio`` = η|g|/|w| and ``w_norm2`` = |w|², so

    .. math:: G = |g|\,|w| = \frac{\text{lars\_ratio}}{\eta}\,|w|^2,
        \qquad G^2 = \Big(\frac{\text{lars\_ratio}\cdot|w|^2}{\eta}\Big)^2

    This assumes the effective learning rate inside ``lars_ratio`` is the logged ``lr``, which
    holds for the SGD family.

    Args:
        lars_ratio: η|g|/|w| per step.
        w_norm2: |w|² per step.
        lr: η per step.

    Returns:
        G² per step; NaN where η ≤ 0.

    Example:
        >>> round(float(scale_free_grad_sq(0.01, 4.0, 0.1)), 12)
        0.16
    """
    ratio = np.asarray(lr, dtype=np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        g = np.asarray(lars_ratio, dtype=np.float64) * np.asarray(w_norm2, dtype=np.float64)
        g = np.where(ratio > 0, g / np.where(ratio > 0, ratio, 1.0), np.nan)
    return g * g


def norm_over_equilibrium(
    w_norm2: ArrayLike,
    mean_grad_sq: ArrayLike,
    lr: ArrayLike,
    weight_decay: ArrayLike,
    momentum: ArrayLike,
    dampening: float = 0.0,
) -> FloatArray:
    r"""|w|/|w*|: the distance of the weight norm from its SGD-family equilibrium |w*|, which is
    :func:`normwatch.theory.sgd_equilibrium_norm` on each step's η, λ, E[G²], μ.

    .. math:: |w^*|^4 = \frac{\eta(1-\tau_d)\,E[G^2]}{2\lambda(1-\mu)}\,(1 + O(\eta\lambda))

    Args:
        w_norm2: |w|² per step.
        mean_grad_sq: E[G²] per step (the report uses a centred moving average of
            :func:`scale_free_grad_sq`).
        lr: η per step.
        weight_decay: λ per step.
        momentum: μ per step.
        dampening: SGD dampening τ_d.

    Returns:
        |w|/|w*| per step; NaN where η, λ or E[G²] is not positive (no finite, non-zero |w*|).

    Example (E[G²] at the leading-order equilibrium of |w| = 1; the rest is O(ηλ) = 2e-4):
        >>> round(float(norm_over_equilibrium(1.0, 2 * 5e-4 * 0.1 / 0.4, 0.4, 5e-4, 0.9)), 4)
        1.0
    """
    target = _each(lambda e, la, g2, m: theory.sgd_equilibrium_norm(e, la, g2, m, dampening),
                   lr, weight_decay, mean_grad_sq, momentum)
    target = np.where(np.isfinite(target) & (target > 0), target, np.nan)
    return np.sqrt(np.asarray(w_norm2, dtype=np.float64)) / target


def rms(values: ArrayLike) -> float:
    r"""Root mean square of the finite entries, :math:`\sqrt{\tfrac1n\sum_i x_i^2}`; NaN if none.

    Example:
        >>> rms([3.0, 4.0, float("nan")]) == (12.5) ** 0.5
        True
    """
    x = np.asarray(values, dtype=np.float64)
    x = x[np.isfinite(x)]
    return float(np.sqrt(np.mean(x * x))) if x.size else float("nan")
