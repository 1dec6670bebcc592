"""Equilibrium predictions for scale-invariant weights, one optimizer family at a time.

Every function here is a pure function of hyperparameters (Python floats in, a Python float or
None out). They predict what a scale-invariant weight group ``w`` (one conv filter followed by
BatchNorm, say) does once weight decay and gradient noise have reached equilibrium:

* the *LARS ratio* ``lr * |g| / |w|`` (the step size in scale-invariant units, seed eqs. 6-7);
* the *angle* ``θ`` by which ``w`` rotates in one step, ``θ = atan2(|u⊥|, |w| + u·ŵ)`` with
  ``u = w_{t+1} - w_t``;
* the *equilibrium norm* ``|w*|`` and the *relaxation time* (in steps) with which ``|w|`` reaches it.

The dispatchers :func:`equilibrium`, :func:`equilibrium_norm`, :func:`relaxation_steps` and
:func:`equilibrium_grad_ratio` take an optimizer family name (:data:`FAMILIES`, one per torch
optimizer with weight decay: docs/theory.md#optimizer-families) and return None wherever no formula
applies.

Notation (docs/theory.md#notation): η = lr, λ = weight_decay, μ = momentum, τ = dampening,
β₁/β₂ = Adam's betas, C = elements per group, G = |g|·|w| the scale-free gradient norm.

Common assumptions (the pure-noise toy, docs/theory.md#the-pure-noise-toy): ``w·g = 0`` (scale
invariance); gradients uncorrelated across steps (``E[g_t | past] = 0``); constant hyperparameters;
many elements C per group, so per-step values concentrate on their means (corrections O(1/C)).

How exact the formulas are (docs/theory.md#stationary-second-moments). For the linear optimizers
(the torch SGD family; Adam-type optimizers once ``sqrt(v̂)`` has settled) the update is a linear
recursion in ``w`` driven by the gradients, e.g. for heavy ball
``w_{t+1} = (1 + μ - ηλ) w_t - μ w_{t-1} - η g_t``. Because ``E[w_s·g_t] = 0`` for ``s <= t`` and
``E[g_s·g_t] = 0`` for ``s != t``, the stationary second moments ``E|w|²``, ``E[w_t·w_{t+1}]`` and
``E|g|²`` follow *exactly*, to all orders in ηλ. The functions return those stationary values: the
angle as ``acos(E[w_t·w_{t+1}] / E|w|²)``, the ratio as ``sqrt(η² E|g|² / E|w|²)`` and the norm as
``sqrt(E|w|²)``. They agree with the seed's leading-order forms up to a relative O(ηλ) (1.3 % at
ηλ = 0.05, simulated); the per-step averages a monitor measures agree with them up to O(1/C)
(-0.1 % at C = 256, simulated). tests/test_theory.py checks each formula against a state-space
(Lyapunov) computation written from torch's update rules and against simulations with the real
optimizers.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

__all__ = [
    "FAMILIES",
    "adafactor_angle",
    "adafactor_equilibrium_norm",
    "adafactor_norm_factor",
    "adafactor_relative_step",
    "adam_l2_angle",
    "adam_l2_equilibrium_norm",
    "adam_l2_relaxation_steps",
    "adamw_angle",
    "adamw_equilibrium_norm",
    "adamw_relaxation_steps",
    "asgd_lr",
    "corrected_weight_decay",
    "ema_timescale_steps",
    "equilibrium",
    "equilibrium_grad_ratio",
    "equilibrium_norm",
    "lars_angle",
    "lars_equilibrium_norm",
    "lars_ratio",
    "lars_relaxation_steps",
    "muon_angle",
    "muon_equilibrium_norm",
    "muon_lr_factor",
    "nadam_angle",
    "nadam_equilibrium_norm",
    "nadam_momentum",
    "radam_rectification",
    "relaxation_steps",
    "rmsprop_angle",
    "rmsprop_equilibrium_norm",
    "seed_lars_ratio",
    "sgd_angle",
    "sgd_equilibrium_norm",
    "sgd_lars_ratio",
    "sgd_relaxation_steps",
]

# --------------------------------------------------------------------------------------------
# Validation and the two stationary engines (docs/theory.md#stationary-second-moments)
# --------------------------------------------------------------------------------------------


def _check_nonneg(name: str, value: float) -> float:
    number = float(value)
    if not number >= 0.0:  # also rejects NaN
        raise ValueError(f"Expected {name} >= 0, got {value}")
    return number


def _check_positive(name: str, value: float) -> float:
    number = float(value)
    if not number > 0.0:
        raise ValueError(f"Expected {name} > 0, got {value}")
    return number


def _check_unit(name: str, value: float, *, closed: bool = False) -> float:
    number = float(value)
    ok = 0.0 <= number <= 1.0 if closed else 0.0 <= number < 1.0
    if not ok:
        bound = "<= 1" if closed else "< 1"
        raise ValueError(f"Expected 0 <= {name} {bound}, got {value}")
    return number


def _angle_from_one_minus_cos(one_minus_cos: float) -> float:
    """θ = acos(1 - x), computed as 2·asin(sqrt(x/2)) to avoid cancellation at small θ."""
    return 2.0 * math.asin(math.sqrt(max(one_minus_cos, 0.0) / 2.0))


def _coupled_stationary(x: float, a: float, b: float, mu: float) -> tuple[float, float]:
    """(η²E|g|²/E|w|², 1 - cos θ) for coupled decay, exactly (docs/theory.md#coupled-kernel).

    The update ``u_t = w_{t+1} - w_t`` obeys ``u_t - μ u_{t-1} = -η (A d_t - B d_{t-1})`` with
    ``d_t = g_t + λ w_t`` and white ``g``; ``x = ηλ``. Both results depend on ``x`` alone.
    """
    if not a > b:
        raise ValueError("No equilibrium: the optimizer's memory feeds no gradient into the update")
    # Stationarity of the AR(2) part w_{t+1} = (1 + μ - xA) w_t - (μ - xB) w_{t-1} + noise.
    if not (x * (a + b) < 2.0 * (1.0 + mu) and abs(mu - x * b) < 1.0):
        raise ValueError(f"No stationary state: lr*weight_decay={x} is too large for this momentum")
    den = (a - b) * (1.0 + mu) + x * b * (a + b)
    ratio_sq = x * (1.0 - mu + x * b) * (2.0 * (1.0 + mu) - x * (a + b)) / den
    one_minus_cos = x * (a * a - 2.0 * a * b * mu + b * b + x * a * b * (a + b)) / den
    return ratio_sq, one_minus_cos


def _decoupled_stationary(x: float, a: float, b: float, r: float) -> tuple[float, float, float]:
    """(1 - cos θ, amplification, update variance) for decoupled decay (docs/theory.md#decoupled-kernel).

    ``w_{t+1} = (1 - x) w_t - η_u U_t`` with ``U_t - r U_{t-1} = A ĝ_t - B ĝ_{t-1}`` (ĝ white, unit
    variance per element). Returns ``1 - cos θ``, ``E|w|² / (η_u² E|U|²)`` and ``E|U|²`` per
    element; successive updates correlate as ``ρ_k = r^{k-1} D/γ₀`` (k >= 1).
    """
    if not 0.0 < x < 1.0:
        raise ValueError(f"No stationary state: lr*weight_decay={x} must be in (0, 1)")
    if not abs(r) < 1.0:
        raise ValueError(f"Expected |r| < 1, got {r}")
    decay = 1.0 - x
    tail = a * r - b  # weight of ĝ_{t-j}, j >= 1, is tail·r^{j-1}
    gamma0 = a * a + tail * tail / (1.0 - r * r)
    if not gamma0 > 0.0:
        raise ValueError("No equilibrium: the update carries no gradient")
    lag = a * tail + tail * tail * r / (1.0 - r * r)  # E[U_t·U_{t-1}] per element
    s1 = lag / (gamma0 * (1.0 - decay * r))  # Σ_k a^k ρ_{k+1}
    one_minus_cos = x * (1.0 - x * s1) / (1.0 + 2.0 * decay * s1)
    amplification = (1.0 + 2.0 * decay * s1) / (x * (2.0 - x))
    return one_minus_cos, amplification, gamma0


def _sgd_kernel(momentum: float, dampening: float, nesterov: bool) -> tuple[float, float]:
    """Coefficients (A, B) of torch SGD's update kernel.

    With ``d_t = g_t + λ w_t`` and ``u_t = w_{t+1} - w_t``, every torch.optim.SGD variant obeys
    ``u_t - μ u_{t-1} = -η (A d_t - B d_{t-1})`` after its first step:
    heavy ball ``A = 1 - τ, B = 0``; Nesterov ``A = 1 + μ(1 - τ), B = μ``; ``μ = 0`` (torch keeps
    no buffer and ignores dampening and nesterov) ``A = 1, B = 0``.
    """
    if momentum == 0.0:
        return 1.0, 0.0
    if nesterov:
        return 1.0 + momentum * (1.0 - dampening), momentum
    return 1.0 - dampening, 0.0


def _sgd_stationary(
    lr: float, weight_decay: float, momentum: float, dampening: float, nesterov: bool
) -> tuple[float, float]:
    """(η²E|g|²/E|w|², 1 - E[w_t·w_{t+1}]/E|w|²) for torch SGD in the pure-noise toy, exactly."""
    lr = _check_nonneg("lr", lr)
    weight_decay = _check_nonneg("weight_decay", weight_decay)
    momentum = _check_unit("momentum", momentum)
    dampening = _check_unit("dampening", dampening, closed=True)
    a, b = _sgd_kernel(momentum, dampening, bool(nesterov))
    if a <= b:
        raise ValueError(
            f"No equilibrium: dampening={dampening} with momentum={momentum} feeds no gradient "
            "into the buffer"
        )
    return _coupled_stationary(lr * weight_decay, a, b, momentum)


# --------------------------------------------------------------------------------------------
# SGD family (docs/theory.md#sgd-family)
# --------------------------------------------------------------------------------------------


def sgd_lars_ratio(
    lr: float, weight_decay: float, momentum: float = 0.0, dampening: float = 0.0, nesterov: bool = False
) -> float:
    """Equilibrium ``lr·|g|/|w|`` of a scale-invariant group under torch.optim.SGD.

    Leading order ``sqrt(2ηλ(1-μ)/(1-τ))`` for heavy ball (seed eq. 6 for μ = 0, eq. 7 with
    momentum; dampening derived in docs/theory.md#sgd-family) and ``sqrt(2ηλ(1-μ)/(1-μτ))`` for
    Nesterov (the two agree at τ = 0, the only dampening torch accepts with Nesterov). Returned
    exactly (stationary second moments of the toy), e.g. heavy ball with dampening:
    ``sqrt(ηλ(1-μ)(2(1+μ) - η(1-τ)λ) / ((1-τ)(1+μ)))``, which for μ = 0 is ``sqrt(2ηλ - η²λ²)``.
    Nesterov, τ = 0: ``sqrt(x(1-μ+xμ)(2(1+μ) - x(1+2μ)) / (1+μ + xμ(1+2μ)))``, x = ηλ. With
    ``momentum == 0`` torch ignores dampening and nesterov, and so does this.

    Assumptions: w·g = 0, gradients uncorrelated across steps, constant hyperparameters; the
    per-step mean differs from this by O(1/C). Returns 0 for λ = 0 (the limit; no equilibrium
    is ever reached, the norm grows without bound).

    Source: seed eqs. 6-7 (leading order); exact form derived in
    docs/theory.md#coupled-kernel, checked by simulation in tests/test_theory.py.

    Args:
        lr: Learning rate η.
        weight_decay: Coupled weight decay λ (torch SGD adds λw to the gradient).
        momentum: Momentum μ, ``0 <= μ < 1``.
        dampening: Dampening τ, ``0 <= τ < 1`` when ``μ > 0``.
        nesterov: Nesterov momentum (torch semantics: ``d = d + μ·buf``).

    Returns:
        The predicted mean of ``lr·|g|/|w|`` per step.

    Raises:
        ValueError: Out-of-range hyperparameters, or ηλ so large that no stationary state exists.
    """
    ratio_sq, _ = _sgd_stationary(lr, weight_decay, momentum, dampening, nesterov)
    return math.sqrt(ratio_sq)


def seed_lars_ratio(lr: float, weight_decay: float, momentum: float = 0.0, dampening: float = 0.0) -> float:
    """The seed's equilibrium ``lr·|g|/|w|`` under SGD, to leading order in ηλ: ``sqrt(2ηλ(1-μ)/(1-τ))``.

    For μ = 0 this is the seed's eq. 6, ``sqrt(2ηλ)``; with momentum its eq. 7. Equilibrium balances the
    *means* of shrink and growth (``2ηλ|w|² ≈ η²|g|²`` for μ = 0), so this predicts the root mean square of
    ``lr·|g|/|w|``. :func:`sgd_lars_ratio` gives the exact stationary value, Nesterov included.

    Assumptions: w·g = 0, gradients uncorrelated across steps, constant hyperparameters, ηλ ≪ (1-μ).

    Source: the seed, eqs. 6-7; dampening τ derived in docs/theory.md#sgd-family.

    Args:
        lr: Learning rate η.
        weight_decay: Coupled weight decay λ.
        momentum: Momentum μ, ``0 <= μ < 1``.
        dampening: Dampening τ, ``0 <= τ < 1``.

    Returns:
        The predicted root mean square of ``lr·|g|/|w|`` per step.

    Raises:
        ValueError: Out-of-range hyperparameters.

    Example:
        >>> round(seed_lars_ratio(0.4, 5e-4, 0.9), 5)
        0.00632
    """
    lr = _check_nonneg("lr", lr)
    weight_decay = _check_nonneg("weight_decay", weight_decay)
    momentum = _check_unit("momentum", momentum)
    dampening = _check_unit("dampening", dampening)
    return math.sqrt(2.0 * lr * weight_decay * (1.0 - momentum) / (1.0 - dampening))


def sgd_equilibrium_norm(lr: float, weight_decay: float, scale_free_grad_sq: float, momentum: float = 0.0,
                         dampening: float = 0.0, nesterov: bool = False) -> float:
    """Equilibrium norm ``|w*|`` of a scale-invariant group under torch.optim.SGD: ``|w*|⁴ = η²E[G²]/R``.

    ``G = |g|·|w|`` is the scale-free gradient norm (unchanged by rescaling a scale-invariant group) and
    ``R = η²E|g|²/E|w|²`` the exact stationary ratio of :func:`sgd_lars_ratio`; with ``|g|² = G²/|w|²``
    that gives ``|w*|⁴ = η²E[G²]/R``. To leading order in ηλ this is ``|w*|⁴ = η(1-τ)E[G²]/(2λ(1-μ))``
    (seed eq. 7), the rest point of the mean-field equation of :func:`sgd_relaxation_steps`; Nesterov
    has the same leading order.

    Assumptions: w·g = 0, gradients uncorrelated across steps, constant hyperparameters; |w|
    concentrates on its mean (relative corrections O(1/C)).

    Source: docs/theory.md#sgd-family (derived there), checked by simulation in tests/test_theory.py.

    Args:
        lr: Learning rate η.
        weight_decay: Coupled weight decay λ.
        scale_free_grad_sq: E[G²] = E[(|g|·|w|)²].
        momentum: Momentum μ, ``0 <= μ < 1``.
        dampening: Dampening τ, ``0 <= τ < 1`` when ``μ > 0``.
        nesterov: Nesterov momentum.

    Returns:
        |w*|; ``math.inf`` when λ = 0 (the norm grows without bound), 0 when η = 0 (the limit).

    Raises:
        ValueError: Out-of-range hyperparameters, a negative ``scale_free_grad_sq``, or ηλ so large that
            no stationary state exists.

    Example:
        >>> round(sgd_equilibrium_norm(0.4, 5e-4, 2 * 5e-4 * 0.1 / 0.4, 0.9), 4)
        1.0
    """
    grad_sq = _check_nonneg("scale_free_grad_sq", scale_free_grad_sq)
    ratio_sq, _ = _sgd_stationary(lr, weight_decay, momentum, dampening, nesterov)
    if float(weight_decay) == 0.0:
        return math.inf
    if ratio_sq == 0.0:  # lr = 0: the limit of η(1-τ)E[G²]/(2λ(1-μ))
        return 0.0
    return (float(lr) ** 2 * grad_sq / ratio_sq) ** 0.25


def sgd_angle(
    lr: float, weight_decay: float, momentum: float = 0.0, dampening: float = 0.0, nesterov: bool = False
) -> float:
    """Equilibrium rotation per step (radians) of a scale-invariant group under torch.optim.SGD.

    Heavy ball with dampening, exactly: ``cos θ = 1 - η(1-τ)λ/(1+μ)``, i.e.
    ``θ ≈ sqrt(2η(1-τ)λ/(1+μ))`` (for μ = 0 the exact ``cos θ = 1 - ηλ``).
    Nesterov: leading order ``sqrt(2ηλ(1+2μ-2μ³)/(1+μ))``; exactly
    ``1 - cos θ = x(1+2μ-2μ³ + xμ(1+μ)(1+2μ)) / (1+μ + xμ(1+2μ))``, x = ηλ. Nesterov rotates
    faster than heavy ball (×1.158 at μ = 0.9) although its LARS ratio is the same.
    With ``momentum == 0`` torch ignores dampening and nesterov, and so does this.

    Assumptions: w·g = 0, gradients uncorrelated across steps, constant hyperparameters; the
    per-step mean differs from this by O(1/C). Depends on (η, λ, μ, τ) only, not on |g|.

    Source: heavy ball at leading order as in Kosson et al. 2024 (``sgdm_etar_func`` in the
    authors' code); Nesterov, dampening and the exact forms derived in docs/theory.md#sgd-family,
    checked by simulation in tests/test_theory.py.

    Args:
        lr: Learning rate η.
        weight_decay: Coupled weight decay λ.
        momentum: Momentum μ, ``0 <= μ < 1``.
        dampening: Dampening τ, ``0 <= τ < 1`` when ``μ > 0``.
        nesterov: Nesterov momentum.

    Returns:
        The predicted mean rotation angle per step, in radians.

    Raises:
        ValueError: Out-of-range hyperparameters, or ηλ so large that no stationary state exists.
    """
    _, one_minus_cos = _sgd_stationary(lr, weight_decay, momentum, dampening, nesterov)
    return _angle_from_one_minus_cos(one_minus_cos)


def sgd_relaxation_steps(
    lr: float, weight_decay: float, momentum: float = 0.0, dampening: float = 0.0
) -> float:
    """Time constant, in steps, of ``|w|⁴`` approaching equilibrium under torch.optim.SGD.

    ``τ_eq = (1-μ)/(4η(1-τ)λ)``: with ``η_e = η(1-τ)/(1-μ)`` the mean-field norm equation
    ``d|w|⁴/dt = -4η_eλ|w|⁴ + 2η_e²G²`` is linear in ``|w|⁴``, so
    ``|w_t|⁴ = |w*|⁴ + (|w_0|⁴ - |w*|⁴)·exp(-t/τ_eq)``. Nesterov has the same τ_eq. With
    ``momentum == 0`` torch ignores dampening, and so does this: ``1/(4ηλ)``.

    Assumptions: w·g = 0, gradients uncorrelated across steps, constant hyperparameters, scale-
    invariant gradient norm (|g| = G/|w| with constant G), and ``ηλ ≪ (1-μ)²`` so that momentum
    is fast compared with the relaxation (the exact slowest mode is faster by a relative
    ``≈ ηλμ/(1-μ)²``; simulated from 3× the equilibrium norm at μ = 0.9: -1.2 % at ηλ = 1e-4,
    -3 % at ηλ = 2.5e-4; within 0.2 % without momentum).

    Source: derived in docs/theory.md#relaxation-times, checked by simulation in
    tests/test_theory.py.

    Args:
        lr: Learning rate η.
        weight_decay: Coupled weight decay λ.
        momentum: Momentum μ, ``0 <= μ < 1``.
        dampening: Dampening τ, ``0 <= τ <= 1``.

    Returns:
        τ_eq in steps; ``math.inf`` when ``η(1-τ)λ == 0``.

    Raises:
        ValueError: Out-of-range hyperparameters.
    """
    lr = _check_nonneg("lr", lr)
    weight_decay = _check_nonneg("weight_decay", weight_decay)
    momentum = _check_unit("momentum", momentum)
    dampening = _check_unit("dampening", dampening, closed=True)
    if momentum == 0.0:
        dampening = 0.0
    rate = 4.0 * lr * (1.0 - dampening) * weight_decay
    return math.inf if rate == 0.0 else (1.0 - momentum) / rate


# --------------------------------------------------------------------------------------------
# normwatch.optim.LARS (docs/theory.md#lars)
# --------------------------------------------------------------------------------------------


def _lars_ell(lr: float, momentum: float) -> float:
    """ℓ = κ/sqrt(1+κ²), κ = λ|w|/|g|, of normwatch.optim.LARS at equilibrium (see ``lars_angle``).

    The positive root of ``2ημℓ² + 2(1-μ²)ℓ - η(1+μ) = 0``; ``η/2`` for μ = 0.
    """
    lr = _check_nonneg("lr", lr)
    momentum = _check_unit("momentum", momentum)
    if momentum == 0.0:
        return lr / 2.0
    one_minus_mu_sq = 1.0 - momentum * momentum
    disc = one_minus_mu_sq**2 + 2.0 * lr * lr * momentum * (1.0 + momentum)
    # Root of 2ημℓ² + 2(1-μ²)ℓ - η(1+μ) = 0, written without cancellation.
    return lr * (1.0 + momentum) / (one_minus_mu_sq + math.sqrt(disc))


def lars_ratio(lr: float, momentum: float) -> float:
    """Equilibrium ``lr_eff·|g|/|w|`` under normwatch.optim.LARS, with ``lr_eff = lr·trust``.

    ``lr·trust·|g|/|w| = η|g|/|g + λw| = η/sqrt(1 + κ²) = η·sqrt(1 - ℓ²)`` with ``κ = λ|w|/|g|`` and
    ``ℓ = κ/sqrt(1+κ²)`` the effective decay that equilibrium fixes (``lars_angle``:
    ``2ημℓ² + 2(1-μ²)ℓ - η(1+μ) = 0``). Leading order η, i.e. the LARS step size in scale-invariant
    units is its lr; the exact value is below it by a relative ``≈ η²/(8(1-μ)²)`` for small η
    (0.5 % at η = 0.02, μ = 0.9; 9.1 % at η = 0.1, μ = 0.9). For μ = 0: ``η·sqrt(1 - η²/4)``.

    Assumptions: weight decay λ > 0 (its value does not enter; with λ = 0 the ratio is exactly η
    but there is no equilibrium), w·g = 0, gradients uncorrelated across steps, constant
    hyperparameters; the per-step mean differs from this by O(1/C).

    Source: seed eq. 4 (definition of LARS; leading order); exact form derived in
    docs/theory.md#lars (the heavy-ball stationary ratio at decay ℓ equals ``η·sqrt(1 - ℓ²)``),
    checked against a state-space computation and by simulation in tests/test_theory.py.

    Args:
        lr: LARS learning rate η (the seed's λ_LARS).
        momentum: Momentum μ, ``0 <= μ < 1``.

    Returns:
        The predicted mean of ``lr·trust·|g|/|w|`` per step.

    Raises:
        ValueError: Out-of-range hyperparameters.
    """
    ell = _lars_ell(lr, momentum)
    return lr * math.sqrt((1.0 - ell) * (1.0 + ell))


def lars_angle(lr: float, momentum: float) -> float:
    """Equilibrium rotation per step (radians) of a ``lars=True`` group under normwatch.optim.LARS.

    Leading order ``θ = η/sqrt(1-μ²)``: every LARS step has length ``η|w|`` before momentum, so the
    rotation is set by η and μ alone; weight decay only sets the radius. Returned in the
    stationary form: LARS is heavy ball on ``|w|(ĝ + κŵ)/sqrt(1+κ²)``, i.e. with an effective
    decay ``ℓ = κ/sqrt(1+κ²)`` that equilibrium fixes at the root of
    ``2ημℓ² + 2(1-μ²)ℓ - η(1+μ) = 0`` (``ℓ ≈ η/(2(1-μ))``), and ``cos θ = 1 - ηℓ/(1+μ)``.
    For μ = 0 that is ``cos θ = 1 - η²/2``. The two differ by a relative O((η/(2(1-μ)))²).

    Assumptions: weight decay λ > 0 (the value of λ does not enter), w·g = 0, gradients
    uncorrelated across steps, constant hyperparameters. Without weight decay the norm grows
    geometrically (|w|² by a factor ``≈ 1 + η²/(1-μ)²`` per step for small η) and the momentum
    buffer then sums shorter past steps, so the angle falls below this value; see ``equilibrium``.

    Source: derived in docs/theory.md#lars, checked by simulation in tests/test_theory.py.

    Args:
        lr: LARS learning rate η.
        momentum: Momentum μ, ``0 <= μ < 1``.

    Returns:
        The predicted mean rotation angle per step, in radians.

    Raises:
        ValueError: Out-of-range hyperparameters.
    """
    ell = _lars_ell(lr, momentum)
    return _angle_from_one_minus_cos(lr * ell / (1.0 + momentum))


def lars_equilibrium_norm(lr: float, weight_decay: float, scale_free_grad_sq: float, momentum: float) -> float:
    """Equilibrium norm ``|w*|`` of a ``lars=True`` group under normwatch.optim.LARS: ``|w*|² = Gℓ/(λ√(1-ℓ²))``.

    Equilibrium fixes ``ℓ = κ/sqrt(1+κ²)`` (:func:`lars_angle`), i.e. ``κ = ℓ/sqrt(1-ℓ²)``, and
    ``κ = λ|w|/|g| = λ|w|²/G`` because ``|g| = G/|w|``; so ``|w*|² = Gκ/λ``. Leading order
    ``|w*|² = ηG/(2λ(1-μ))``: like SGD's, ``|w*| ∝ sqrt(G)``, but ``∝ λ^{-1/2}`` where SGD's is
    ``∝ λ^{-1/4}``.

    Assumptions: as :func:`lars_angle`; ``G = sqrt(E[G²])`` (the trust ratio uses each step's |g|, so
    G's fluctuations enter at O(1/C)).

    Source: derived in docs/theory.md#lars, checked by simulation in tests/test_theory.py.

    Args:
        lr: LARS learning rate η.
        weight_decay: Weight decay λ (added to the gradient before the trust ratio).
        scale_free_grad_sq: E[G²] = E[(|g|·|w|)²].
        momentum: Momentum μ, ``0 <= μ < 1``.

    Returns:
        |w*|; ``math.inf`` when λ = 0.

    Raises:
        ValueError: Out-of-range hyperparameters or a negative ``scale_free_grad_sq``.
    """
    weight_decay = _check_nonneg("weight_decay", weight_decay)
    grad = math.sqrt(_check_nonneg("scale_free_grad_sq", scale_free_grad_sq))
    ell = _lars_ell(lr, momentum)
    if weight_decay == 0.0:
        return math.inf
    kappa = ell / math.sqrt((1.0 - ell) * (1.0 + ell))
    return math.sqrt(grad * kappa / weight_decay)


# --------------------------------------------------------------------------------------------
# AdamW and Adam with L2 (docs/theory.md#adamw, docs/theory.md#adam-with-l2)
# --------------------------------------------------------------------------------------------


def adamw_angle(lr: float, weight_decay: float, beta1: float) -> float:
    """Equilibrium rotation per step (radians) under torch.optim.AdamW (decoupled decay).

    With ``a = 1 - ηλ``: ``cos θ = (a + β₁)/(1 + aβ₁)``, equivalently
    ``sin θ = sqrt((1-a²)(1-β₁²))/(1 + aβ₁)``; ``θ ≈ sqrt(2ηλ(1-β₁)/(1+β₁))``. (Wen et al. 2025 give the
    ``sin θ`` expression as the per-step rotation; the difference is a relative O(θ²), below anything
    measurable, but this returns the angle itself.)

    Assumptions: E[w·g] = 0 (all that is used), gradients uncorrelated across steps, Adam's
    second moment tracks the per-coordinate gradient variance (``sqrt(v̂) ≈ RMS(g)``, so β₂ long
    compared with the rate at which |g| changes and ``eps`` negligible), constant hyperparameters,
    past the bias-correction transient. The size of the update does not enter, so the angle holds
    with ``amsgrad`` too.

    Source: leading order as in Kosson et al. 2024 (``adamw_etar_func`` in the authors' code); exact
    stationary form derived in docs/theory.md#adamw, checked against a state-space computation and
    by simulation in tests/test_theory.py.

    Args:
        lr: Learning rate η.
        weight_decay: Decoupled weight decay λ (AdamW multiplies w by ``1 - ηλ``).
        beta1: First-moment coefficient β₁, ``0 <= β₁ < 1``.

    Returns:
        The predicted mean rotation angle per step, in radians.

    Raises:
        ValueError: Out-of-range hyperparameters (including ``ηλ >= 1``).
    """
    lr = _check_nonneg("lr", lr)
    weight_decay = _check_nonneg("weight_decay", weight_decay)
    beta1 = _check_unit("beta1", beta1)
    x = lr * weight_decay
    if x >= 1.0:
        raise ValueError(f"No stationary state: lr*weight_decay={x} must be < 1")
    a = 1.0 - x
    return _angle_from_one_minus_cos(x * (1.0 - beta1) / (1.0 + a * beta1))


def adamw_equilibrium_norm(lr: float, weight_decay: float, beta1: float, numel: int) -> float:
    """Equilibrium norm ``|w*|`` under torch.optim.AdamW: ``|w*|² = η²C(1-β₁)(1+aβ₁)/((1+β₁)(1-a²)(1-aβ₁))``.

    ``a = 1 - ηλ``, C = ``numel``. Each element's normalised update ``m̂/sqrt(v̂)`` has variance
    ``(1-β₁)/(1+β₁)`` and lag-k correlation ``β₁^k``; summing the decayed updates
    ``w_t = -η Σ_k a^k U_{t-1-k}`` gives the stationary ``E|w|²`` above. Leading order
    ``|w*|² = ηC/(2λ)`` (RMS ``sqrt(η/(2λ))`` per element), independent of the gradient scale.

    Assumptions: as :func:`adamw_angle`, and ``eps`` negligible against ``sqrt(v̂)``. ``v̂``'s own
    noise lowers ``E[g²/v̂]`` by ``≈ 2(1-β₂)β₂/(1+β₂)`` for Gaussian gradients (|w*| by 0.05 % at
    β₂ = 0.999, 0.5 % at β₂ = 0.99). For a scale-invariant group |w| and ``v̂`` adjust to each other
    with a slow mode of time constant ``2/(1-β₂)`` steps (docs/theory.md#adamw), so the first
    steps' transient lingers that long. With ``amsgrad`` the update is smaller and this is an upper
    bound.

    Source: leading order as in Kosson et al. 2024; exact form derived in docs/theory.md#adamw
    (it matches the table of Wen et al. 2025), checked against a state-space computation and by
    simulation in tests/test_theory.py.

    Args:
        lr: Learning rate η.
        weight_decay: Decoupled weight decay λ.
        beta1: First-moment coefficient β₁, ``0 <= β₁ < 1``.
        numel: Number of elements C in the group.

    Returns:
        |w*|; ``math.inf`` when λ = 0, 0 when η = 0.

    Raises:
        ValueError: Out-of-range hyperparameters (including ``ηλ >= 1``) or ``numel < 1``.
    """
    lr = _check_nonneg("lr", lr)
    x = lr * _check_nonneg("weight_decay", weight_decay)
    beta1 = _check_unit("beta1", beta1)
    numel = _check_positive("numel", numel)
    if x == 0.0:
        return math.inf if weight_decay == 0.0 else 0.0
    _, amplification, gamma0 = _decoupled_stationary(x, 1.0 - beta1, 0.0, beta1)
    return lr * math.sqrt(numel * gamma0 * amplification)


def adamw_relaxation_steps(lr: float, weight_decay: float) -> float:
    """Time constant, in steps, of ``|w|²`` approaching equilibrium under torch.optim.AdamW.

    ``1/(2ηλ)``: the update's size does not depend on |w|, so
    ``|w_t|² = |w*|² + (|w_0|² - |w*|²)(1-ηλ)^{2t}`` (exact rate ``-2 ln(1-ηλ)``). The same holds for
    every decoupled optimizer whose update has a size independent of |w| (NAdamW, RAdamW, Muon,
    a declared decoupled optimizer).

    Assumptions: gradients uncorrelated across steps, Adam's ``sqrt(v̂)`` tracks the gradient
    RMS (so the normalised update has constant size), constant hyperparameters, ``ηλ ≪ 1``.
    For a scale-invariant group ``|g| ∝ 1/|w|`` changes while |w| relaxes, and ``sqrt(v̂)``
    follows only if ``1/(1-β₂) ≪ 1/(2ηλ)``. Simulated from 3× the equilibrium norm at
    τ = 250-500 steps: within 1-2 % with β₂ = 0.95, but 35-60 % *slower* with torch's default
    β₂ = 0.999, whose lagging ``v̂`` inflates the steps as |w| shrinks.

    Source: derived in docs/theory.md#relaxation-times (as in Kosson et al. 2024 and Su Jianlin,
    kexue.fm/archives/11307), checked by simulation in tests/test_theory.py.

    Args:
        lr: Learning rate η.
        weight_decay: Decoupled weight decay λ.

    Returns:
        The time constant in steps; ``math.inf`` when ``ηλ == 0``.

    Raises:
        ValueError: Negative hyperparameters.
    """
    rate = 2.0 * _check_nonneg("lr", lr) * _check_nonneg("weight_decay", weight_decay)
    return math.inf if rate == 0.0 else 1.0 / rate


def adam_l2_angle(lr: float, weight_decay: float, beta1: float, grad_rms: float) -> float:
    """Equilibrium rotation per step (radians) under torch.optim.Adam with coupled L2 weight decay.

    Adam with ``sqrt(v̂) ≈ grad_rms`` is torch SGD with lr ``η/grad_rms``, momentum β₁ and
    dampening β₁, so ``cos θ = 1 - ηλ(1-β₁)/((1+β₁)·grad_rms)``, i.e.
    ``θ ≈ sqrt(2ηλ(1-β₁)/((1+β₁)·grad_rms))``. It depends on the gradient scale, so groups with
    different gradient RMS rotate at different rates.

    Assumptions: w·g = 0, gradients uncorrelated across steps, constant hyperparameters,
    ``sqrt(v̂) ≈ grad_rms`` per coordinate (β₂ long, eps negligible) and ``λ|w| ≪ |g|`` inside v.
    The last one holds automatically near equilibrium: there ``(λ|w|/|g|)² ≈
    θ²(1+β₁)/(4(1-β₁))``, e.g. 0.4 % for θ = 0.03, β₁ = 0.9.

    Source: derived in docs/theory.md#adam-with-l2 (mapping onto SGD with dampening), checked by
    simulation in tests/test_theory.py.

    Args:
        lr: Learning rate η.
        weight_decay: Coupled L2 coefficient λ (torch Adam's ``weight_decay``).
        beta1: First-moment coefficient β₁, ``0 <= β₁ < 1``.
        grad_rms: Per-coordinate RMS of the loss gradient, ``|g|/sqrt(C)`` (without the λw term).

    Returns:
        The predicted mean rotation angle per step, in radians.

    Raises:
        ValueError: Out-of-range hyperparameters or ``grad_rms <= 0``.
    """
    grad_rms = _check_positive("grad_rms", grad_rms)
    lr = _check_nonneg("lr", lr)
    return sgd_angle(lr / grad_rms, weight_decay, beta1, beta1)


def _coupled_adaptive_norm(lr: float, weight_decay: float, kernel: tuple[float, float, float],
                           scale_free_grad_sq: float, numel: int) -> float:
    """|w*| of a coupled adaptive optimizer: SGD with lr ``η/σ`` on ``kernel = (A, B, μ)``, ``σ = G/(|w|√C)``.

    With ``x = ηλ/σ = ηλ|w|√C/G`` the stationary ratio gives ``R(x) = η²C/|w|²``, i.e.
    ``x²R(x) = (η²λC/G)²``; solved for x by bisection on the rising branch, then ``|w*| = xG/(ηλ√C)``.
    """
    lr = _check_nonneg("lr", lr)
    weight_decay = _check_nonneg("weight_decay", weight_decay)
    grad = math.sqrt(_check_positive("scale_free_grad_sq", scale_free_grad_sq))
    numel = _check_positive("numel", numel)
    a, b, mu = kernel
    if lr * weight_decay == 0.0:
        return math.inf if weight_decay == 0.0 else 0.0
    target = (lr * lr * weight_decay * numel / grad) ** 2
    lo, hi = 0.0, 1.5 * (1.0 + mu) / (a + b)  # x²R(x) rises up to ~3/4 of the stationarity bound

    def excess(x: float) -> float:
        return x * x * _coupled_stationary(x, a, b, mu)[0] - target

    if excess(hi) < 0.0:
        raise ValueError("No stationary state: lr*weight_decay is too large for this gradient scale")
    for _ in range(200):
        mid = 0.5 * (lo + hi)
        lo, hi = (mid, hi) if excess(mid) < 0.0 else (lo, mid)
        if hi - lo <= 1e-15 * hi:
            break
    return 0.5 * (lo + hi) * grad / (lr * weight_decay * math.sqrt(numel))


def adam_l2_equilibrium_norm(lr: float, weight_decay: float, beta1: float, scale_free_grad_sq: float,
                             numel: int) -> float:
    """Equilibrium norm ``|w*|`` under torch.optim.Adam with coupled L2: ``|w*|³ ≈ η√C·G/(2λ)``.

    Adam with ``sqrt(v̂) ≈ σ = G/(|w|√C)`` is SGD with lr ``η/σ``, momentum and dampening β₁
    (:func:`adam_l2_angle`); its exact stationary ratio ``R(x)``, ``x = ηλ/σ``, equals
    ``η²C/|w|²`` because ``|g|/σ = √C``. Solved for |w| (a one-dimensional root); the leading order
    is ``|w*|³ = η√C·G/(2λ)``, so ``|w*| ∝ (ηG/λ)^{1/3}``.

    Assumptions: as :func:`adam_l2_angle`, with ``G = sqrt(E[G²])``; the λw term inside v̂ is
    neglected (a relative O(θ²) correction, the same order as the gap to the leading form).

    Source: derived in docs/theory.md#adam-with-l2, checked by simulation in tests/test_theory.py.

    Args:
        lr: Learning rate η.
        weight_decay: Coupled L2 coefficient λ.
        beta1: First-moment coefficient β₁, ``0 <= β₁ < 1``.
        scale_free_grad_sq: E[G²] = E[(|g|·|w|)²], > 0.
        numel: Number of elements C in the group.

    Returns:
        |w*|; ``math.inf`` when λ = 0, 0 when η = 0.

    Raises:
        ValueError: Out-of-range hyperparameters, ``scale_free_grad_sq <= 0`` or ``numel < 1``.
    """
    beta1 = _check_unit("beta1", beta1)
    return _coupled_adaptive_norm(lr, weight_decay, (1.0 - beta1, 0.0, beta1), scale_free_grad_sq, numel)


def adam_l2_relaxation_steps(lr: float, weight_decay: float, grad_rms: float) -> float:
    """Time constant, in steps, of ``|w|²`` approaching equilibrium under Adam with coupled L2: ``σ/(3ηλ)``.

    Adam with ``sqrt(v̂) ≈ σ`` is SGD with lr ``η/σ``: ``d|w|²/dt = -2ηλ|w|²/σ + η²C`` with
    ``σ = G/(|w|√C)``, i.e. ``dy/dt = -k y^{3/2} + c`` for ``y = |w|²``; linearised at equilibrium it
    relaxes at ``3ηλ/σ*``. σ* is the equilibrium gradient RMS, so pass the measured one. Far shorter
    than AdamW's ``1/(2ηλ)``.

    Assumptions: as :func:`adam_l2_angle`; small deviations from equilibrium (from far away the
    approach is not exponential: the rate grows with |w|).

    Source: derived in docs/theory.md#relaxation-times, checked by simulation in tests/test_theory.py.

    Args:
        lr: Learning rate η.
        weight_decay: Coupled L2 coefficient λ.
        grad_rms: Per-coordinate RMS σ of the loss gradient near equilibrium, > 0.

    Returns:
        The time constant in steps; ``math.inf`` when ``ηλ == 0``.

    Raises:
        ValueError: Negative hyperparameters or ``grad_rms <= 0``.
    """
    grad_rms = _check_positive("grad_rms", grad_rms)
    rate = 3.0 * _check_nonneg("lr", lr) * _check_nonneg("weight_decay", weight_decay)
    return math.inf if rate == 0.0 else grad_rms / rate


# --------------------------------------------------------------------------------------------
# NAdam, RAdam, RMSprop, ASGD (docs/theory.md#nadam, #radam, #rmsprop, #asgd)
# --------------------------------------------------------------------------------------------


def nadam_momentum(beta1: float, momentum_decay: float = 4e-3, step: float | None = None) -> float:
    """NAdam's scheduled momentum ``μ_t = β₁(1 - 0.5·0.96^{tψ})`` at step t, ψ = ``momentum_decay``.

    torch.optim.NAdam weights the newest gradient by ``1 - μ_t`` and its first moment by ``μ_{t+1}``.
    μ_t rises from ``β₁/2`` towards β₁ on a scale of ``1/(ψ·ln(1/0.96)) ≈ 6100`` steps at the default
    ψ = 0.004: ``μ_t = 0.58β₁`` at step 1000, ``0.9β₁`` only near step 9900. ``step=None`` gives the
    limit β₁.

    Source: torch.optim.NAdam (``mu = beta1 * (1 - 0.5 * 0.96 ** (step * momentum_decay))``);
    docs/theory.md#nadam.

    Args:
        beta1: NAdam's β₁, ``0 <= β₁ < 1``.
        momentum_decay: ψ, ``>= 0``.
        step: The optimizer's step count t (1 for its first step), or None for t → ∞.

    Returns:
        μ_t.

    Raises:
        ValueError: Out-of-range arguments.
    """
    beta1 = _check_unit("beta1", beta1)
    psi = _check_nonneg("momentum_decay", momentum_decay)
    if step is None:
        return beta1
    return beta1 * (1.0 - 0.5 * 0.96 ** (_check_nonneg("step", step) * psi))


def _nadam_kernel(beta1: float, momentum_decay: float, step: float | None) -> tuple[float, float, float]:
    """(A, B, β₁) of NAdam's update ``c₀g_t + c₁m_t``, ``c₀ = 1 - μ_t``, ``c₁ = μ_{t+1}`` (products of μ → 0)."""
    mu_t = nadam_momentum(beta1, momentum_decay, step)
    mu_next = nadam_momentum(beta1, momentum_decay, None if step is None else float(step) + 1.0)
    c0, c1 = 1.0 - mu_t, mu_next
    return c0 + c1 * (1.0 - beta1), c0 * beta1, beta1


def nadam_angle(lr: float, weight_decay: float, beta1: float, *, grad_rms: float | None = None,
                decoupled: bool = False, momentum_decay: float = 4e-3, step: float | None = None) -> float:
    """Equilibrium rotation per step (radians) under torch.optim.NAdam, coupled L2 or decoupled.

    NAdam's step is ``-η(c₀g_t + c₁m_t)/sqrt(v̂)`` with ``c₀ = 1 - μ_t``, ``c₁ = μ_{t+1}``
    (:func:`nadam_momentum`) and ``m_t = β₁m_{t-1} + (1-β₁)g_t``, so ``U_t - β₁U_{t-1} = A g_t - B g_{t-1}``
    with ``A = c₀ + c₁(1-β₁)``, ``B = c₀β₁``. Decoupled (NAdamW, ``decoupled_weight_decay=True``): the
    decoupled kernel with that filter; no gradient scale enters. Coupled (L2): the coupled kernel
    with lr ``η/grad_rms``. At ``μ_t = β₁`` the filter is ``(1-β₁)g + β₁m``, a Nesterov look-ahead: NAdam
    rotates faster than Adam/AdamW at the same β₁, and with the default schedule (``μ_t ≈ β₁/2`` for
    thousands of steps) faster still.

    Assumptions: as :func:`adamw_angle` (decoupled) or :func:`adam_l2_angle` (coupled); μ_t changes
    slowly compared with the relaxation time (quasi-static); the products of μ in NAdam's bias
    corrections have vanished (they fall below 1e-6 within ~20 steps).

    Source: torch.optim.NAdam's update rule; derived in docs/theory.md#nadam, checked by simulation
    in tests/test_theory.py.

    Args:
        lr: Learning rate η.
        weight_decay: Weight decay λ.
        beta1: β₁, ``0 <= β₁ < 1``.
        grad_rms: Per-coordinate gradient RMS σ (coupled only), > 0.
        decoupled: NAdam's ``decoupled_weight_decay``.
        momentum_decay: ψ.
        step: The optimizer's step count, or None for the limit ``μ_t = β₁``.

    Returns:
        The predicted mean rotation angle per step, in radians.

    Raises:
        ValueError: Out-of-range arguments, a missing ``grad_rms`` for the coupled form, or no
            stationary state.
    """
    lr = _check_nonneg("lr", lr)
    x = lr * _check_nonneg("weight_decay", weight_decay)
    a, b, r = _nadam_kernel(beta1, momentum_decay, step)
    if decoupled:
        return 0.0 if x == 0.0 else _angle_from_one_minus_cos(_decoupled_stationary(x, a, b, r)[0])
    if grad_rms is None:
        raise ValueError("Expected grad_rms for NAdam with coupled weight decay, got None")
    x /= _check_positive("grad_rms", grad_rms)
    return _angle_from_one_minus_cos(_coupled_stationary(x, a, b, r)[1])


def nadam_equilibrium_norm(lr: float, weight_decay: float, beta1: float, numel: int, *,
                           scale_free_grad_sq: float | None = None, decoupled: bool = False,
                           momentum_decay: float = 4e-3, step: float | None = None) -> float:
    """Equilibrium norm ``|w*|`` under torch.optim.NAdam, coupled L2 or decoupled.

    Decoupled: ``|w*|² = η²Cγ₀(1 + 2aS)/(1 - a²)`` with NAdam's filter (:func:`nadam_angle`; ``γ₀`` the
    per-element update variance, ``S`` the decayed sum of its correlations); no G needed. Coupled: the
    root of ``x²R(x) = (η²λC/G)²`` as for Adam with L2, with NAdam's kernel.

    Assumptions and source: as :func:`nadam_angle`; docs/theory.md#nadam.

    Args:
        lr: Learning rate η.
        weight_decay: Weight decay λ.
        beta1: β₁.
        numel: Number of elements C.
        scale_free_grad_sq: E[G²] (coupled only), > 0.
        decoupled: NAdam's ``decoupled_weight_decay``.
        momentum_decay: ψ.
        step: The optimizer's step count, or None for ``μ_t = β₁``.

    Returns:
        |w*|; ``math.inf`` when λ = 0, 0 when η = 0.

    Raises:
        ValueError: Out-of-range arguments or a missing ``scale_free_grad_sq`` for the coupled form.
    """
    lr = _check_nonneg("lr", lr)
    x = lr * _check_nonneg("weight_decay", weight_decay)
    numel = _check_positive("numel", numel)
    kernel = _nadam_kernel(beta1, momentum_decay, step)
    if x == 0.0:
        return math.inf if weight_decay == 0.0 else 0.0
    if decoupled:
        _, amplification, gamma0 = _decoupled_stationary(x, *kernel)
        return lr * math.sqrt(numel * gamma0 * amplification)
    if scale_free_grad_sq is None:
        raise ValueError("Expected scale_free_grad_sq for NAdam with coupled weight decay, got None")
    return _coupled_adaptive_norm(lr, weight_decay, kernel, scale_free_grad_sq, numel)


def radam_rectification(beta2: float, step: float | None = None) -> float | None:
    """RAdam's rectification factor ``r_t`` at step t, or None while torch skips the adaptive step.

    ``ρ_∞ = 2/(1-β₂) - 1``, ``ρ_t = ρ_∞ - 2tβ₂ᵗ/(1-β₂ᵗ)``; for ``ρ_t > 5``
    ``r_t = sqrt((ρ_t-4)(ρ_t-2)ρ_∞/((ρ_∞-4)(ρ_∞-2)ρ_t))``, else torch steps ``-η m̂`` without ``sqrt(v̂)``
    (the first 5-6 steps) and this returns None. ``r_t`` rises to 1 over a few ``1/(1-β₂)`` steps
    (0.65 at t = 1000, β₂ = 0.999): RAdam's built-in warmup. ``step=None`` gives the limit 1.

    Source: torch.optim.RAdam; docs/theory.md#radam.

    Args:
        beta2: β₂, ``0 <= β₂ < 1``.
        step: The optimizer's step count t (1 for its first step), or None for t → ∞.

    Returns:
        r_t, or None in the unrectified steps.

    Raises:
        ValueError: Out-of-range arguments.
    """
    beta2 = _check_unit("beta2", beta2)
    if step is None:
        return 1.0
    step = _check_positive("step", step)
    rho_inf = 2.0 / (1.0 - beta2) - 1.0
    decay = beta2**step
    rho_t = rho_inf - 2.0 * step * decay / (1.0 - decay)
    if not rho_t > 5.0:
        return None
    return math.sqrt((rho_t - 4.0) * (rho_t - 2.0) * rho_inf / ((rho_inf - 4.0) * (rho_inf - 2.0) * rho_t))


def _rmsprop_scale(alpha: float, centered: bool) -> float:
    """sqrt(v̂)/σ for white gradients: 1, or ``sqrt(2α/(1+α))`` when centered (v - ḡ², E ḡ² = σ²(1-α)/(1+α))."""
    alpha = _check_unit("alpha", alpha)
    return math.sqrt(2.0 * alpha / (1.0 + alpha)) if centered else 1.0


def rmsprop_angle(lr: float, weight_decay: float, grad_rms: float, momentum: float = 0.0,
                  alpha: float = 0.99, centered: bool = False) -> float:
    """Equilibrium rotation per step (radians) under torch.optim.RMSprop (coupled L2).

    With ``sqrt(v) ≈ cσ`` RMSprop is heavy-ball SGD (no dampening) with lr ``η/(cσ)``, so
    ``cos θ = 1 - ηλ/((1+μ)cσ)`` exactly in the kernel; ``c = 1``, or ``sqrt(2α/(1+α))`` when
    ``centered`` (it subtracts the squared gradient average, which for white noise is
    ``σ²(1-α)/(1+α)``). Unlike Adam it keeps no bias correction, so v settles after ~``1/(1-α)`` steps.

    Assumptions: as :func:`adam_l2_angle`, with ``eps`` negligible.

    Source: torch.optim.RMSprop's update rule; derived in docs/theory.md#rmsprop, checked by
    simulation in tests/test_theory.py.

    Args:
        lr: Learning rate η.
        weight_decay: Coupled L2 coefficient λ.
        grad_rms: Per-coordinate gradient RMS σ, > 0.
        momentum: Momentum μ, ``0 <= μ < 1``.
        alpha: RMSprop's smoothing constant α.
        centered: RMSprop's ``centered``.

    Returns:
        The predicted mean rotation angle per step, in radians.

    Raises:
        ValueError: Out-of-range arguments or no stationary state.
    """
    scale = _check_positive("grad_rms", grad_rms) * _rmsprop_scale(alpha, centered)
    return sgd_angle(_check_nonneg("lr", lr) / scale, weight_decay, momentum)


def rmsprop_equilibrium_norm(lr: float, weight_decay: float, scale_free_grad_sq: float, numel: int,
                             momentum: float = 0.0, alpha: float = 0.99, centered: bool = False) -> float:
    """Equilibrium norm ``|w*|`` under torch.optim.RMSprop (coupled L2).

    The Adam-with-L2 root (docs/theory.md#adam-with-l2) with the heavy-ball kernel ``(1, 0, μ)`` and lr
    ``η/c``; to leading order ``|w*|³ = η√C·G/(2λc(1-μ))``.

    Assumptions and source: as :func:`rmsprop_angle`; docs/theory.md#rmsprop.

    Args:
        lr: Learning rate η.
        weight_decay: Coupled L2 coefficient λ.
        scale_free_grad_sq: E[G²], > 0.
        numel: Number of elements C.
        momentum: Momentum μ.
        alpha: RMSprop's α.
        centered: RMSprop's ``centered``.

    Returns:
        |w*|; ``math.inf`` when ηλ = 0.

    Raises:
        ValueError: Out-of-range arguments or no stationary state.
    """
    momentum = _check_unit("momentum", momentum)
    lr = _check_nonneg("lr", lr) / _rmsprop_scale(alpha, centered)
    return _coupled_adaptive_norm(lr, weight_decay, (1.0, 0.0, momentum), scale_free_grad_sq, numel)


def asgd_lr(lr: float, lambd: float = 1e-4, alpha: float = 0.75, step: float | None = None) -> float:
    """The step size η_t torch.optim.ASGD uses in its step t: ``η/(1 + λ_a·η·(t-1))^α``.

    ASGD's step is ``w ← (1 - λ_aη_t)w - η_t(g + λw)``, i.e. plain SGD with lr η_t and coupled decay
    ``λ + λ_a`` (its ``lambd`` decays the weights even when ``weight_decay`` is 0). ``step=None``
    returns η (the first step). The averaged iterate ``ax`` does not feed back into w.

    Source: torch.optim.ASGD; docs/theory.md#asgd.

    Args:
        lr: ASGD's lr η.
        lambd: ASGD's ``lambd`` λ_a.
        alpha: ASGD's ``alpha`` (the power).
        step: The optimizer's step count t (1 for its first step), or None.

    Returns:
        η_t.

    Raises:
        ValueError: Negative arguments.
    """
    lr = _check_nonneg("lr", lr)
    lambd = _check_nonneg("lambd", lambd)
    alpha = _check_nonneg("alpha", alpha)
    if step is None:
        return lr
    return lr / (1.0 + lambd * lr * max(_check_positive("step", step) - 1.0, 0.0)) ** alpha


# --------------------------------------------------------------------------------------------
# Muon and Adafactor: decoupled decay with an update of fixed size (docs/theory.md#muon, #adafactor)
# --------------------------------------------------------------------------------------------


def muon_lr_factor(shape: tuple[int, int], adjust_lr_fn: str | None = None) -> float:
    """The factor torch.optim.Muon multiplies its lr by for the orthogonalised step of a (rows, cols) matrix.

    ``sqrt(max(1, rows/cols))`` for ``adjust_lr_fn`` None or ``"original"`` (Keller Jordan's), and
    ``0.2·sqrt(max(rows, cols))`` for ``"match_rms_adamw"`` (Moonshot's). The decay ``1 - ηλ`` uses the
    unadjusted lr.

    Source: torch.optim._muon._adjust_lr; docs/theory.md#muon.

    Args:
        shape: The parameter's shape (rows, cols); Muon takes 2-D parameters only.
        adjust_lr_fn: Muon's ``adjust_lr_fn``.

    Returns:
        The factor.

    Raises:
        ValueError: A shape that is not two positive sizes, or an unknown ``adjust_lr_fn``.
    """
    if len(shape) != 2 or not all(int(n) >= 1 for n in shape):
        raise ValueError(f"Expected a 2-D shape (rows, cols), got {tuple(shape)}")
    rows, cols = (int(n) for n in shape)
    if adjust_lr_fn in (None, "original"):
        return math.sqrt(max(1.0, rows / cols))
    if adjust_lr_fn == "match_rms_adamw":
        return 0.2 * math.sqrt(max(rows, cols))
    raise ValueError(f"Expected adjust_lr_fn None, 'original' or 'match_rms_adamw', got {adjust_lr_fn!r}")


def _muon_kernel(momentum: float, nesterov: bool) -> tuple[float, float, float]:
    """(A, B, r) of the matrix Muon orthogonalises: ``buf = μbuf + (1-μ)g``; Nesterov ``(1-μ)g + μbuf``."""
    momentum = _check_unit("momentum", momentum)
    if momentum == 0.0:
        return 1.0, 0.0, 0.0
    if nesterov:
        return 1.0 - momentum * momentum, momentum * (1.0 - momentum), momentum
    return 1.0 - momentum, 0.0, momentum


def muon_angle(lr: float, weight_decay: float, momentum: float = 0.95, nesterov: bool = True) -> float:
    """Equilibrium rotation per step (radians) under torch.optim.Muon.

    Decoupled decay with an update of fixed Frobenius norm: by docs/theory.md#decoupled-kernel the angle
    depends only on ηλ and on how successive updates correlate, ``1 - cos θ = x(1 - xS)/(1 + 2aS)``.
    Without momentum ``cos θ = 1 - ηλ`` exactly. With momentum this assumes the orthogonalised updates
    correlate as the momentum matrices fed to Newton-Schulz do, a linear filter of the gradients
    (``A = 1-μ, B = 0`` heavy ball, ``A = 1-μ², B = μ(1-μ)`` Nesterov, memory μ). Orthogonalisation can
    only lower those correlations (for Gaussian inputs it is an odd function, whose correlation
    ``Σ hₙcⁿ`` with ``hₙ >= 0, Σhₙ = 1`` is at most c), so this is a *lower bound* on θ and
    ``muon_angle(lr, weight_decay, 0)`` an upper one. Simulated at μ = 0.9-0.95: +2-3 % above this for
    shapes with aspect ratio <= 1/4, +13-19 % for square matrices (16×16, 32×32).

    Assumptions: pure-noise toy with the whole matrix scale-invariant (e.g. a linear layer followed
    by LayerNorm over its outputs), constant hyperparameters; Adjust-lr and the Newton-Schulz norm do
    not enter.

    Source: torch.optim.Muon's update rule; Wen et al. 2025 (same correlation structure as AdamW,
    assumed there); derived in docs/theory.md#muon, checked by simulation in tests/test_theory.py.

    Args:
        lr: Learning rate η (unadjusted).
        weight_decay: Decoupled weight decay λ.
        momentum: Muon's momentum μ, ``0 <= μ < 1``.
        nesterov: Muon's ``nesterov``.

    Returns:
        The predicted mean rotation angle per step, in radians.

    Raises:
        ValueError: Out-of-range arguments or ``ηλ >= 1``.
    """
    x = _check_nonneg("lr", lr) * _check_nonneg("weight_decay", weight_decay)
    kernel = _muon_kernel(momentum, nesterov)
    return 0.0 if x == 0.0 else _angle_from_one_minus_cos(_decoupled_stationary(x, *kernel)[0])


def muon_equilibrium_norm(lr: float, weight_decay: float, shape: tuple[int, int], momentum: float = 0.95,
                          nesterov: bool = True, adjust_lr_fn: str | None = None, ortho_sq: float = 1.0) -> float:
    """Equilibrium norm ``|w*|`` under torch.optim.Muon: ``|w*|² = (ηf)²·s²·min(rows, cols)·(1 + 2aS)/(1 - a²)``.

    f = :func:`muon_lr_factor`, ``s² = ortho_sq`` the mean squared singular value of the orthogonalised
    update (1 for an exact polar factor, so ``|O|² = min(rows, cols)``), S as in :func:`muon_angle`.
    torch's 5-step quintic Newton-Schulz (in bfloat16) does not converge to 1 for small singular
    values: on Gaussian (noise-dominated) matrices ``s² ≈ 0.7-0.95`` depending on shape (measured in
    tests/test_theory.py), so with the default 1 this overestimates |w*| by up to ~20 %; pass the
    measured ``|u_g|²/((ηf)²·min(rows, cols))`` where available. With momentum this is an upper bound
    (see :func:`muon_angle`; measured 2-5 % above for aspect ratio <= 1/4, 11-13 % for square
    matrices at μ = 0.9-0.95).

    Assumptions and source: as :func:`muon_angle`; docs/theory.md#muon (Wen et al. 2025 give the
    same norm with ``s² = 1``).

    Args:
        lr: Learning rate η (unadjusted).
        weight_decay: Decoupled weight decay λ.
        shape: The parameter's shape (rows, cols).
        momentum: Muon's momentum μ.
        nesterov: Muon's ``nesterov``.
        adjust_lr_fn: Muon's ``adjust_lr_fn``.
        ortho_sq: Mean squared singular value s² of the orthogonalised update, > 0.

    Returns:
        |w*|; ``math.inf`` when λ = 0, 0 when η = 0.

    Raises:
        ValueError: Out-of-range arguments or ``ηλ >= 1``.
    """
    lr = _check_nonneg("lr", lr)
    x = lr * _check_nonneg("weight_decay", weight_decay)
    step_sq = (lr * muon_lr_factor(shape, adjust_lr_fn)) ** 2 * _check_positive("ortho_sq", ortho_sq)
    kernel = _muon_kernel(momentum, nesterov)
    if x == 0.0:
        return math.inf if weight_decay == 0.0 else 0.0
    _, amplification, _ = _decoupled_stationary(x, *kernel)
    return math.sqrt(step_sq * min(int(n) for n in shape) * amplification)


def adafactor_relative_step(lr: float, step: float) -> float:
    """ρ_t = min(η, 1/sqrt(t)), torch.optim.Adafactor's relative step size at step t.

    torch's Adafactor steps ``w ← (1 - ηλ)w - ρ_t·max(ε₂, RMS(w))·Û`` with ``Û`` the update clipped to
    RMS <= d: the step is *relative* to the weights' RMS, and lr enters twice, as the cap of ρ_t and
    in the decoupled decay ``1 - ηλ``.

    Source: torch.optim.Adafactor; docs/theory.md#adafactor.

    Args:
        lr: Adafactor's lr η.
        step: The optimizer's step count t (1 for its first step).

    Returns:
        ρ_t.

    Raises:
        ValueError: ``lr < 0`` or ``step <= 0``.
    """
    return min(_check_nonneg("lr", lr), 1.0 / math.sqrt(_check_positive("step", step)))


def adafactor_angle(lr: float, weight_decay: float, step: float, weight_rms: float | None = None,
                    eps2: float = 1e-3, update_rms: float = 1.0) -> float:
    """Rotation per step (radians) under torch.optim.Adafactor: ``tan θ = ρ_t·r·max(1, ε₂/RMS(w))/(1 - ηλ)``.

    The decay scales w by ``a = 1 - ηλ`` and the update, of length ``ρ_t·max(ε₂, RMS(w))·r·√C``
    (``r = RMS(Û)``), is orthogonal to w on average, so ``tan θ = ρ_t r/a`` whenever ``RMS(w) >= ε₂``
    (the usual case): a per-step identity, no equilibrium needed, and weight decay enters only
    through a. ``r = min(RMS(U), d)``: with √V̂ tracking the gradient ``RMS(U) ≈ 1``, so ``r ≈ 1`` for the
    default ``d = 1``, lower by O(1/√C) where clipping trims fluctuations. Below ``ε₂`` the step is
    absolute and ``tan θ = ρ_t r ε₂/(a·RMS(w))``.

    Assumptions: E[w·Û] = 0 (scale invariance, symmetric noise); ``weight_rms=None`` means RMS(w) >= ε₂.

    Source: torch.optim.Adafactor's update rule; derived in docs/theory.md#adafactor, checked by
    simulation in tests/test_theory.py.

    Args:
        lr: Adafactor's lr η.
        weight_decay: Decoupled weight decay λ.
        step: The optimizer's step count t.
        weight_rms: RMS(w) = |w|/√C before the step, or None.
        eps2: Adafactor's ``eps[1]``.
        update_rms: r = RMS(Û), ``0 < r <= d``.

    Returns:
        The predicted rotation angle of the step, in radians.

    Raises:
        ValueError: Out-of-range arguments or ``ηλ >= 1``.
    """
    x = _check_nonneg("lr", lr) * _check_nonneg("weight_decay", weight_decay)
    if x >= 1.0:
        raise ValueError(f"No stationary state: lr*weight_decay={x} must be < 1")
    relative = adafactor_relative_step(lr, step) * _check_positive("update_rms", update_rms)
    if weight_rms is not None:
        relative *= max(1.0, _check_nonneg("eps2", eps2) / _check_positive("weight_rms", weight_rms))
    return math.atan2(relative, 1.0 - x)


def adafactor_norm_factor(lr: float, weight_decay: float, step: float, update_rms: float = 1.0) -> float:
    """Per-step factor of ``E|w|²`` under torch.optim.Adafactor (RMS(w) >= ε₂): ``(1 - ηλ)² + ρ_t²r²``.

    The step is relative, so ``|w_{t+1}|² = (a² + ρ_t²r²)|w_t|²`` on average: the norm has no equilibrium,
    it grows geometrically if ``ρ_t r > sqrt(1 - a²) ≈ sqrt(2ηλ)`` and shrinks otherwise until
    ``RMS(w)`` reaches ε₂ (:func:`adafactor_equilibrium_norm`). With ρ_t = η (the first ``1/η²`` steps)
    that is ``η > 2λ``: torch's default lr 0.01 with weight decay 0.01 shrinks |w|² by ≈ 1e-4 per step.

    Assumptions and source: as :func:`adafactor_angle`; docs/theory.md#adafactor.

    Args:
        lr: Adafactor's lr η.
        weight_decay: Decoupled weight decay λ.
        step: The optimizer's step count t.
        update_rms: r = RMS(Û).

    Returns:
        The expected ratio ``|w_{t+1}|²/|w_t|²``.

    Raises:
        ValueError: Out-of-range arguments.
    """
    a = 1.0 - _check_nonneg("lr", lr) * _check_nonneg("weight_decay", weight_decay)
    relative = adafactor_relative_step(lr, step) * _check_positive("update_rms", update_rms)
    return a * a + relative * relative


def adafactor_equilibrium_norm(lr: float, weight_decay: float, step: float, numel: int, eps2: float = 1e-3,
                               update_rms: float = 1.0) -> float:
    """Equilibrium norm ``|w*|`` under torch.optim.Adafactor: ``ε₂ρ_t r√C/sqrt(1 - a²)``, or ``inf``.

    Only below ``RMS(w) = ε₂`` is the step absolute (``ε₂ρ_t·Û``), a fixed-size uncorrelated update, whose
    equilibrium is ``|w*|² = ε₂²ρ_t²r²C/(1 - a²)``; it is consistent (RMS below ε₂) exactly when
    ``ρ_t r < sqrt(1 - a²)``, the same condition under which the relative regime shrinks
    (:func:`adafactor_norm_factor`). Otherwise the norm grows without bound and this returns ``inf``.
    Quasi-static in ρ_t.

    Assumptions and source: as :func:`adafactor_angle`; docs/theory.md#adafactor.

    Args:
        lr: Adafactor's lr η.
        weight_decay: Decoupled weight decay λ.
        step: The optimizer's step count t.
        numel: Number of elements C.
        eps2: Adafactor's ``eps[1]``.
        update_rms: r = RMS(Û).

    Returns:
        |w*|, or ``math.inf``.

    Raises:
        ValueError: Out-of-range arguments.
    """
    a = 1.0 - _check_nonneg("lr", lr) * _check_nonneg("weight_decay", weight_decay)
    relative = adafactor_relative_step(lr, step) * _check_positive("update_rms", update_rms)
    room = 1.0 - a * a
    if not relative * relative < room:
        return math.inf
    return _check_nonneg("eps2", eps2) * relative * math.sqrt(_check_positive("numel", numel) / room)


def lars_relaxation_steps(lr: float, momentum: float) -> float:
    """Time constant, in steps, of ``|w|²`` approaching equilibrium under normwatch.optim.LARS: ``≈ (1-μ)²/η²``.

    Mean field with ``η_e = η/(1-μ)``: ``d ln|w|²/dt = -2η_eℓ + η_e²(1 - ℓ²)`` with ``ℓ = κ/sqrt(1+κ²)``,
    ``κ = λ|w|²/G``. Linearised at its root (``ℓ ≈ η_e/2``) it relaxes at ``≈ η_e²``. Weight decay
    does not enter.

    Assumptions: as :func:`lars_angle`; λ > 0; η ≪ 1 - μ.

    Source: derived in docs/theory.md#relaxation-times, checked by simulation in tests/test_theory.py.

    Args:
        lr: LARS learning rate η.
        momentum: Momentum μ, ``0 <= μ < 1``.

    Returns:
        The time constant in steps; ``math.inf`` when η = 0.

    Raises:
        ValueError: Out-of-range arguments.
    """
    lr = _check_nonneg("lr", lr)
    momentum = _check_unit("momentum", momentum)
    return math.inf if lr == 0.0 else ((1.0 - momentum) / lr) ** 2


# --------------------------------------------------------------------------------------------
# Schedules (docs/theory.md#schedules)
# --------------------------------------------------------------------------------------------


def ema_timescale_steps(lr: float, weight_decay: float) -> float:
    """Wang & Aitchison's EMA timescale ``τ_iter = 1/(ηλ)`` of decoupled weight decay, in steps.

    ``w_t = (1 - ηλ)w_{t-1} - ηU_t`` makes w an exponential moving average of ``-U/λ`` over the last
    ``≈ 1/(ηλ)`` steps (exactly ``-1/ln(1 - ηλ)``); divide by the steps per epoch for ``τ_epoch``, which
    they find roughly constant at the optimum as model and data size change. Twice AdamW's
    relaxation time of |w|² (:func:`adamw_relaxation_steps`).

    Source: Wang & Aitchison 2024 (abstract and introduction read); derived in
    docs/theory.md#schedules.

    Args:
        lr: Learning rate η.
        weight_decay: Decoupled weight decay λ.

    Returns:
        τ_iter in steps; ``math.inf`` when ηλ = 0.

    Raises:
        ValueError: Negative arguments.
    """
    rate = _check_nonneg("lr", lr) * _check_nonneg("weight_decay", weight_decay)
    return math.inf if rate == 0.0 else 1.0 / rate


def corrected_weight_decay(weight_decay: float, lr: float, peak_lr: float) -> float:
    """Defazio's corrected weight decay for a learning-rate schedule: ``λ_t = λ·η_t/η_max``.

    Equilibrium depends on η and λ through ``ηλ`` (the angle, the relaxation rate) and ``η/λ`` (the
    norm: ``|w*|² ≈ ηC/(2λ)`` for AdamW, ``|w*|⁴ ≈ ηE[G²]/(2λ(1-μ))`` for SGD). A decaying η_t at fixed
    λ shrinks |w*| and so raises ``|g|/|w| = G/|w*|²`` (:func:`equilibrium_grad_ratio`): Defazio's
    late-training gradient-norm rise. Scaling λ with the schedule keeps ``η_t/λ_t = η_max/λ``, hence
    |w*| and the equilibrium ``|g|/|w|``, constant; the product ``η_tλ_t = λη_t²/η_max`` then falls
    like η_t², so the angle falls like η_t (not ``sqrt(η_t)``) and the relaxation time grows like
    ``1/η_t²``. (torch multiplies its ``weight_decay`` by lr, so this is the value to set as
    ``weight_decay`` at each step.)

    Source: Defazio 2025, arXiv:2506.02285 (AdamC / SGDC; abstract and introduction read, the rule as
    described in secondary sources); what it keeps constant derived in docs/theory.md#schedules,
    checked by simulation in tests/test_theory.py.

    Args:
        weight_decay: The base weight decay λ.
        lr: The scheduled learning rate η_t.
        peak_lr: The schedule's maximum η_max, > 0.

    Returns:
        λ_t.

    Raises:
        ValueError: Negative arguments or ``peak_lr <= 0``.
    """
    return _check_nonneg("weight_decay", weight_decay) * _check_nonneg("lr", lr) / _check_positive(
        "peak_lr", peak_lr)


# --------------------------------------------------------------------------------------------
# Dispatchers: one param group of a given optimizer family (docs/theory.md#optimizer-families)
# --------------------------------------------------------------------------------------------


def _required(name: str, value: float | None) -> float:
    """A keyword a family needs: positive, or a ValueError (which the dispatchers turn into None)."""
    return _check_positive(name, math.nan if value is None else value)


@dataclass(frozen=True)
class _Hyper:
    """The keyword arguments shared by the dispatchers (documented in :func:`equilibrium`)."""

    lr: float
    weight_decay: float
    momentum: float = 0.0
    dampening: float = 0.0
    nesterov: bool = False
    beta1: float = 0.9
    beta2: float = 0.999
    grad_rms: float | None = None
    scale_free_grad_sq: float | None = None
    numel: int | None = None
    step: float | None = None
    amsgrad: bool = False
    momentum_decay: float = 4e-3
    alpha: float | None = None
    centered: bool = False
    lambd: float = 1e-4
    shape: tuple[int, int] | None = None
    adjust_lr_fn: str | None = None
    ortho_sq: float = 1.0
    eps2: float = 1e-3
    update_rms: float = 1.0
    weight_rms: float | None = None

    def rms(self) -> float:
        return _required("grad_rms", self.grad_rms)

    def g2(self) -> float:
        return _required("scale_free_grad_sq", self.scale_free_grad_sq)

    def c(self) -> float:
        return _required("numel", self.numel)

    def t(self) -> float:
        return _required("step", self.step)

    def adam(self) -> None:
        """Adam's formulas assume ``sqrt(v̂) ≈ σ``; with amsgrad the denominator is a running maximum."""
        if self.amsgrad:
            raise ValueError("amsgrad's denominator is a running maximum, not the gradient RMS")

    def rect(self) -> float:
        """RAdam's r_t; a ValueError in its unrectified first steps."""
        r = radam_rectification(self.beta2, self.step)
        if r is None:
            raise ValueError("RAdam's unrectified steps have no equilibrium")
        return r

    def asgd(self) -> tuple[float, float]:
        """ASGD as plain SGD: (η_t, λ + λ_a)."""
        alpha = 0.75 if self.alpha is None else self.alpha
        return asgd_lr(self.lr, self.lambd, alpha, self.step), self.weight_decay + self.lambd

    def rmsprop(self) -> tuple[float, bool]:
        return (0.99 if self.alpha is None else self.alpha), self.centered

    def nadam_gain(self) -> float:
        """NAdam's total weight of one gradient relative to Adam's, ``(A - B)/(1 - β₁) = c₀ + c₁``."""
        a, b, r = _nadam_kernel(self.beta1, self.momentum_decay, self.step)
        return (a - b) / (1.0 - r)


def _angle_of(family: str, h: _Hyper) -> float | None:
    """θ for ``family`` (docs/theory.md#optimizer-families); None where none is given."""
    lr, wd, b1 = h.lr, h.weight_decay, h.beta1
    if family == "sgd":
        return sgd_angle(lr, wd, h.momentum, h.dampening, h.nesterov)
    if family == "lars":
        return lars_angle(lr, h.momentum)
    if family in ("adam", "radam"):
        h.adam()
        return adam_l2_angle(lr * (h.rect() if family == "radam" else 1.0), wd, b1, h.rms())
    if family in ("adamw", "radamw"):
        if family == "radamw":
            h.rect()  # r_t scales the update only, which the angle does not depend on
        return adamw_angle(lr, wd, b1)
    if family in ("nadam", "nadamw"):
        decoupled = family == "nadamw"
        return nadam_angle(lr, wd, b1, grad_rms=None if decoupled else h.rms(), decoupled=decoupled,
                           momentum_decay=h.momentum_decay, step=h.step)
    if family == "rmsprop":
        return rmsprop_angle(lr, wd, h.rms(), h.momentum, *h.rmsprop())
    if family == "asgd":
        return sgd_angle(*h.asgd())
    if family == "adafactor":
        return adafactor_angle(lr, wd, h.t(), h.weight_rms, h.eps2, h.update_rms)
    if family == "muon":
        return muon_angle(lr, wd, h.momentum, h.nesterov)
    return None  # adamax, adagrad, adadelta, decoupled (docs/theory.md#no-formula)


def _norm_of(family: str, h: _Hyper) -> float | None:
    """|w*| for ``family``; None where none is given."""
    lr, wd, b1 = h.lr, h.weight_decay, h.beta1
    if family == "sgd":
        return sgd_equilibrium_norm(lr, wd, h.g2(), h.momentum, h.dampening, h.nesterov)
    if family == "lars":
        return lars_equilibrium_norm(lr, wd, h.g2(), h.momentum)
    if family in ("adam", "radam"):
        h.adam()
        return adam_l2_equilibrium_norm(lr * (h.rect() if family == "radam" else 1.0), wd, b1, h.g2(), h.c())
    if family in ("adamw", "radamw"):
        h.adam()  # with amsgrad the update is smaller: the formula is only an upper bound
        return (h.rect() if family == "radamw" else 1.0) * adamw_equilibrium_norm(lr, wd, b1, h.c())
    if family in ("nadam", "nadamw"):
        decoupled = family == "nadamw"
        return nadam_equilibrium_norm(lr, wd, b1, h.c(), scale_free_grad_sq=None if decoupled else h.g2(),
                                      decoupled=decoupled, momentum_decay=h.momentum_decay, step=h.step)
    if family == "rmsprop":
        return rmsprop_equilibrium_norm(lr, wd, h.g2(), h.c(), h.momentum, *h.rmsprop())
    if family == "asgd":
        return sgd_equilibrium_norm(*h.asgd(), h.g2())
    if family == "adafactor":
        return adafactor_equilibrium_norm(lr, wd, h.t(), h.c(), h.eps2, h.update_rms)
    if family == "muon":
        shape = h.shape if h.shape is not None else ()
        return muon_equilibrium_norm(lr, wd, shape, h.momentum, h.nesterov, h.adjust_lr_fn, h.ortho_sq)
    return None


def _relaxation_of(family: str, h: _Hyper) -> float | None:
    """Relaxation time in steps for ``family``; None where |w| has no equilibrium to relax to."""
    lr, wd = h.lr, h.weight_decay
    if family == "sgd":
        return sgd_relaxation_steps(lr, wd, h.momentum, h.dampening)
    if family == "lars":
        return lars_relaxation_steps(lr, h.momentum)
    if family in ("adam", "radam", "nadam"):
        h.adam()
        gain = h.rect() if family == "radam" else h.nadam_gain() if family == "nadam" else 1.0
        return adam_l2_relaxation_steps(lr * gain, wd, h.rms())
    if family in ("adamw", "nadamw", "radamw", "muon", "decoupled"):
        if family == "radamw":
            h.rect()
        return adamw_relaxation_steps(lr, wd)
    if family == "rmsprop":
        alpha, centered = h.rmsprop()
        lr_e = lr / ((1.0 - _check_unit("momentum", h.momentum)) * _rmsprop_scale(alpha, centered))
        return adam_l2_relaxation_steps(lr_e, wd, h.rms())
    if family == "asgd":
        return sgd_relaxation_steps(*h.asgd())
    if family == "adafactor":  # only the absolute regime below ε₂ has an equilibrium norm
        floor = h.weight_rms is not None and h.weight_rms < h.eps2
        if floor and math.isfinite(adafactor_equilibrium_norm(lr, wd, h.t(), 1, h.eps2, h.update_rms)):
            return adamw_relaxation_steps(lr, wd)
    return None


FAMILIES = ("sgd", "lars", "adam", "adamw", "nadam", "nadamw", "radam", "radamw", "adamax", "rmsprop",
            "adagrad", "adadelta", "asgd", "adafactor", "muon", "decoupled")


def _dispatch(compute, family: str, hyper: dict) -> float | None:
    """``compute(family, h)`` as a float; None for an unknown family, no decay, or a ValueError."""
    if family not in FAMILIES:
        return None
    try:
        h = _Hyper(**hyper)
        decays = h.weight_decay + h.lambd > 0.0 if family == "asgd" else h.weight_decay > 0.0
        if not (decays or family == "adafactor"):  # Adafactor's angle is a per-step identity
            return None
        value = compute(family, h)
    except (TypeError, ValueError):
        return None
    return None if value is None else float(value)


def _ratio_of(family: str, h: _Hyper) -> float | None:
    """lr·|g|/|w| where the optimizer steps along g itself (SGD, LARS, ASGD); None elsewhere."""
    if family == "sgd":
        return sgd_lars_ratio(h.lr, h.weight_decay, h.momentum, h.dampening, h.nesterov)
    if family == "lars":
        return lars_ratio(h.lr, h.momentum)
    if family == "asgd":
        return sgd_lars_ratio(*h.asgd())
    return None


def _grad_ratio_of(family: str, h: _Hyper) -> float | None:
    """|g|/|w| at equilibrium: ``G/|w*|²``; for SGD, ASGD and LARS without G (docs/theory.md#schedules)."""
    if family in ("sgd", "asgd"):
        lr = h.asgd()[0] if family == "asgd" else h.lr
        return _ratio_of(family, h) / _check_positive("lr", lr)
    if family == "lars":  # κ = λ|w|/|g| = ℓ/sqrt(1 - ℓ²)
        ell = _lars_ell(h.lr, h.momentum)
        return h.weight_decay * math.sqrt((1.0 - ell) * (1.0 + ell)) / _check_positive("lr", ell)
    norm = _norm_of(family, h)
    return None if norm is None else math.sqrt(h.g2()) / norm**2


def equilibrium(
    family: str,
    *,
    lr: float,
    weight_decay: float,
    momentum: float = 0.0,
    dampening: float = 0.0,
    nesterov: bool = False,
    beta1: float = 0.9,
    grad_rms: float | None = None,
    beta2: float = 0.999,
    scale_free_grad_sq: float | None = None,
    numel: int | None = None,
    step: float | None = None,
    amsgrad: bool = False,
    momentum_decay: float = 4e-3,
    alpha: float | None = None,
    centered: bool = False,
    lambd: float = 1e-4,
    shape: tuple[int, int] | None = None,
    adjust_lr_fn: str | None = None,
    ortho_sq: float = 1.0,
    eps2: float = 1e-3,
    update_rms: float = 1.0,
    weight_rms: float | None = None,
) -> tuple[float | None, float | None]:
    """Predicted ``(lars_ratio, angle)`` per step for one param group of a given optimizer family.

    ``lars_ratio`` (``lr·|g|/|w|``) exists for ``"sgd"``, ``"lars"`` and ``"asgd"``, the optimizers that
    step along g itself; ``angle`` for every family of docs/theory.md#optimizer-families except
    ``"adamax"``, ``"adagrad"``, ``"adadelta"`` and ``"decoupled"`` (docs/theory.md#no-formula). Both are
    None wherever no formula applies: an unknown family, ``weight_decay == 0`` (no equilibrium; ASGD
    decays with ``weight_decay + lambd``; Adafactor's angle is a per-step identity and is given
    anyway), a missing input the family needs, and hyperparameters with no stationary state.

    Families and the functions they use: ``"sgd"`` (:func:`sgd_angle`, torch SGD), ``"lars"``
    (normwatch.optim.LARS, ``lars=True`` groups; ``lars=False`` groups are ``"sgd"``), ``"adam"``
    (coupled L2, :func:`adam_l2_angle`), ``"adamw"`` (Adam/AdamW with decoupled decay,
    :func:`adamw_angle`), ``"nadam"``/``"nadamw"`` (:func:`nadam_angle`), ``"radam"``/``"radamw"`` (the
    Adam forms with lr ``η·r_t``, :func:`radam_rectification`), ``"rmsprop"`` (:func:`rmsprop_angle`),
    ``"asgd"`` (SGD at ``η_t``, ``λ + lambd``: :func:`asgd_lr`), ``"adafactor"`` (:func:`adafactor_angle`),
    ``"muon"`` (:func:`muon_angle`), ``"decoupled"`` (a third-party ``w ← (1 - ηλ)w - ηU``: no angle,
    because it depends on how successive U correlate; :func:`relaxation_steps` applies).

    Args:
        family: One of :data:`FAMILIES`.
        lr: The group's lr η (ASGD: its base lr; Muon: unadjusted).
        weight_decay: The group's weight decay λ.
        momentum: Momentum μ (SGD, LARS, RMSprop, Muon).
        dampening: Dampening τ (SGD).
        nesterov: Nesterov flag (SGD, Muon).
        beta1: β₁ (Adam family).
        grad_rms: Measured per-coordinate gradient RMS ``|g|/sqrt(C)`` (coupled adaptive families:
            adam, nadam, radam, rmsprop).
        beta2: β₂ (RAdam's rectification).
        scale_free_grad_sq: E[G²] = E[(|g|·|w|)²] (norms of SGD, LARS, ASGD and coupled adaptive
            families).
        numel: Elements C of the group (norms of Adam-type families and Adafactor).
        step: The optimizer's step count t (NAdam's μ_t, RAdam's r_t, ASGD's η_t, Adafactor's ρ_t;
            required for Adafactor; None elsewhere means the t → ∞ limit).
        amsgrad: Adam/AdamW's amsgrad (coupled forms and the AdamW norm then give None).
        momentum_decay: NAdam's ψ.
        alpha: RMSprop's α (default 0.99) or ASGD's power α (default 0.75).
        centered: RMSprop's ``centered``.
        lambd: ASGD's ``lambd``.
        shape: Muon's matrix shape (rows, cols) (its norm).
        adjust_lr_fn: Muon's ``adjust_lr_fn`` (its norm).
        ortho_sq: Muon's mean squared singular value of the orthogonalised update (its norm).
        eps2: Adafactor's ``eps[1]``.
        update_rms: Adafactor's RMS of the clipped update.
        weight_rms: Adafactor's RMS(w) before the step (its absolute regime below eps2).

    Returns:
        ``(lars_theory, angle_theory)``, each a float or None.
    """
    hyper = {key: value for key, value in locals().items() if key != "family"}
    return _dispatch(_ratio_of, family, hyper), _dispatch(_angle_of, family, hyper)


def equilibrium_norm(
    family: str,
    *,
    lr: float,
    weight_decay: float,
    momentum: float = 0.0,
    dampening: float = 0.0,
    nesterov: bool = False,
    beta1: float = 0.9,
    scale_free_grad_sq: float | None = None,
    numel: int | None = None,
    grad_rms: float | None = None,
    beta2: float = 0.999,
    step: float | None = None,
    amsgrad: bool = False,
    momentum_decay: float = 4e-3,
    alpha: float | None = None,
    centered: bool = False,
    lambd: float = 1e-4,
    shape: tuple[int, int] | None = None,
    adjust_lr_fn: str | None = None,
    ortho_sq: float = 1.0,
    eps2: float = 1e-3,
    update_rms: float = 1.0,
    weight_rms: float | None = None,
) -> float | None:
    """Predicted equilibrium norm ``|w*|`` of one scale-invariant group of a given optimizer family.

    Needs ``scale_free_grad_sq`` (E[G²]) for ``"sgd"``, ``"lars"``, ``"asgd"`` and the coupled adaptive
    families (``"adam"``, ``"nadam"``, ``"radam"``, ``"rmsprop"``); ``numel`` (C) for every Adam-type
    family and ``"adafactor"`` (which also needs ``step``); ``shape`` for ``"muon"``. Decoupled
    Adam-type norms do not depend on the gradient scale. None wherever no formula applies: an unknown
    family or one without a formula (``"adamax"``, ``"adagrad"``, ``"adadelta"``, ``"decoupled"``), no
    weight decay, ``lr == 0``, a missing input, no stationary state, and no equilibrium at all
    (Adafactor above its ε₂ floor when its steps outgrow the decay). Used to rescale a layer to |w*|
    before training and for the |w|/|w*| figure.

    Args:
        family: One of :data:`FAMILIES`.
        lr, weight_decay, momentum, dampening, nesterov, beta1, scale_free_grad_sq, numel, grad_rms,
        beta2, step, amsgrad, momentum_decay, alpha, centered, lambd, shape, adjust_lr_fn, ortho_sq,
        eps2, update_rms, weight_rms: As in :func:`equilibrium`.

    Returns:
        |w*| as a float, or None.
    """
    hyper = {key: value for key, value in locals().items() if key != "family"}
    value = _dispatch(_norm_of, family, hyper)
    return value if value is not None and math.isfinite(value) and lr > 0.0 else None


def relaxation_steps(
    family: str,
    *,
    lr: float,
    weight_decay: float,
    momentum: float = 0.0,
    dampening: float = 0.0,
    nesterov: bool = False,
    beta1: float = 0.9,
    grad_rms: float | None = None,
    beta2: float = 0.999,
    scale_free_grad_sq: float | None = None,
    numel: int | None = None,
    step: float | None = None,
    amsgrad: bool = False,
    momentum_decay: float = 4e-3,
    alpha: float | None = None,
    centered: bool = False,
    lambd: float = 1e-4,
    shape: tuple[int, int] | None = None,
    adjust_lr_fn: str | None = None,
    ortho_sq: float = 1.0,
    eps2: float = 1e-3,
    update_rms: float = 1.0,
    weight_rms: float | None = None,
) -> float | None:
    """Time constant, in steps, with which |w| approaches its equilibrium, for one param group.

    ``"sgd"``: :func:`sgd_relaxation_steps` (of |w|⁴); ``"lars"``: :func:`lars_relaxation_steps`;
    decoupled families with an update of fixed size (``"adamw"``, ``"nadamw"``, ``"radamw"``, ``"muon"``,
    ``"decoupled"``): ``1/(2ηλ)`` (:func:`adamw_relaxation_steps`); coupled adaptive families
    (``"adam"``, ``"nadam"``, ``"radam"``, ``"rmsprop"``): ``σ/(3η_eλ)`` (:func:`adam_l2_relaxation_steps`;
    needs ``grad_rms``); ``"asgd"``: SGD's at η_t; ``"adafactor"``: ``1/(2ηλ)`` only in its absolute
    regime below ε₂ (``weight_rms < eps2``), else None: its relative steps have no equilibrium norm,
    but its angle holds at every step without any window. ``math.inf`` where nothing relaxes (lr 0),
    None where no formula applies (as in :func:`equilibrium`). The report uses it to choose the
    windows over which the equilibrium claims are judged (docs/theory.md#relaxation-times).

    Args:
        family: One of :data:`FAMILIES`.
        lr, weight_decay, momentum, dampening, nesterov, beta1, grad_rms, beta2, scale_free_grad_sq,
        numel, step, amsgrad, momentum_decay, alpha, centered, lambd, shape, adjust_lr_fn, ortho_sq,
        eps2, update_rms, weight_rms: As in :func:`equilibrium`.

    Returns:
        The time constant in steps, or None.
    """
    hyper = {key: value for key, value in locals().items() if key != "family"}
    return _dispatch(_relaxation_of, family, hyper)


def equilibrium_grad_ratio(
    family: str,
    *,
    lr: float,
    weight_decay: float,
    momentum: float = 0.0,
    dampening: float = 0.0,
    nesterov: bool = False,
    beta1: float = 0.9,
    grad_rms: float | None = None,
    beta2: float = 0.999,
    scale_free_grad_sq: float | None = None,
    numel: int | None = None,
    step: float | None = None,
    amsgrad: bool = False,
    momentum_decay: float = 4e-3,
    alpha: float | None = None,
    centered: bool = False,
    lambd: float = 1e-4,
    shape: tuple[int, int] | None = None,
    adjust_lr_fn: str | None = None,
    ortho_sq: float = 1.0,
    eps2: float = 1e-3,
    update_rms: float = 1.0,
    weight_rms: float | None = None,
) -> float | None:
    """Predicted ``|g|/|w|`` at equilibrium, ``G/|w*|²``: what Defazio's gradient-norm rise follows.

    For SGD and ASGD it needs no G: ``|g|/|w| = (lr·|g|/|w|)/η ≈ sqrt(2λ(1-μ)/(η(1-τ)))`` (Defazio's
    ``sqrt(2λ/η)`` for μ = 0); for LARS ``λ·sqrt(1-ℓ²)/ℓ ≈ 2λ(1-μ)/η``. Elsewhere ``sqrt(E[G²])/|w*|²``
    with :func:`equilibrium_norm` (AdamW: ``≈ 2λG/(ηC)``). Evaluated at the scheduled (η_t, λ_t) it is
    the quasi-static prediction under a schedule, valid while the schedule is slow compared with
    :func:`relaxation_steps` (docs/theory.md#schedules). None where no norm formula applies.

    Args:
        family: One of :data:`FAMILIES`.
        lr, weight_decay, momentum, dampening, nesterov, beta1, grad_rms, beta2, scale_free_grad_sq,
        numel, step, amsgrad, momentum_decay, alpha, centered, lambd, shape, adjust_lr_fn, ortho_sq,
        eps2, update_rms, weight_rms: As in :func:`equilibrium`.

    Returns:
        |g|/|w| as a float, or None.
    """
    hyper = {key: value for key, value in locals().items() if key != "family"}
    value = _dispatch(_grad_ratio_of, family, hyper)
    return value if value is not None and math.isfinite(value) else None
