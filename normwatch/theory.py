"""Equilibrium predictions for scale-invariant weights, one optimizer family at a time.

Every function here is a pure function of hyperparameters (Python floats in, a Python float or
None out). They predict what a scale-invariant weight group ``w`` (one conv filter followed by
BatchNorm, say) does once weight decay and gradient noise have reached equilibrium:

* the *LARS ratio* ``lr * |g| / |w|`` (the step size in scale-invariant units, seed eqs. 6-7);
* the *angle* ``θ`` by which ``w`` rotates in one step, ``θ = atan2(|u⊥|, |w| + u·ŵ)`` with
  ``u = w_{t+1} - w_t``;
* the *equilibrium norm* ``|w*|`` and the *relaxation time* (in steps) with which ``|w|`` reaches it.

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

__all__ = [
    "adam_l2_angle",
    "adam_l2_equilibrium_norm",
    "adamw_angle",
    "adamw_equilibrium_norm",
    "adamw_relaxation_steps",
    "equilibrium",
    "equilibrium_norm",
    "lars_angle",
    "lars_equilibrium_norm",
    "lars_ratio",
    "seed_lars_ratio",
    "sgd_angle",
    "sgd_equilibrium_norm",
    "sgd_lars_ratio",
    "sgd_relaxation_steps",
]

FAMILIES = ("sgd", "adam", "adamw", "lars")


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
        |w*|; ``math.inf`` when ηλ = 0 (the norm grows without bound).

    Raises:
        ValueError: Out-of-range hyperparameters, a negative ``scale_free_grad_sq``, or ηλ so large that
            no stationary state exists.

    Example:
        >>> round(sgd_equilibrium_norm(0.4, 5e-4, 2 * 5e-4 * 0.1 / 0.4, 0.9), 4)
        1.0
    """
    grad_sq = _check_nonneg("scale_free_grad_sq", scale_free_grad_sq)
    ratio_sq, _ = _sgd_stationary(lr, weight_decay, momentum, dampening, nesterov)
    if ratio_sq == 0.0:
        return math.inf
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
        |w*|; ``math.inf`` when ηλ = 0.

    Raises:
        ValueError: Out-of-range hyperparameters (including ``ηλ >= 1``) or ``numel < 1``.
    """
    lr = _check_nonneg("lr", lr)
    x = lr * _check_nonneg("weight_decay", weight_decay)
    beta1 = _check_unit("beta1", beta1)
    numel = _check_positive("numel", numel)
    if x == 0.0:
        return math.inf
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
        return math.inf
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
        |w*|; ``math.inf`` when ηλ = 0.

    Raises:
        ValueError: Out-of-range hyperparameters, ``scale_free_grad_sq <= 0`` or ``numel < 1``.
    """
    beta1 = _check_unit("beta1", beta1)
    return _coupled_adaptive_norm(lr, weight_decay, (1.0 - beta1, 0.0, beta1), scale_free_grad_sq, numel)


# --------------------------------------------------------------------------------------------
# Dispatchers
# --------------------------------------------------------------------------------------------


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
) -> tuple[float | None, float | None]:
    """Predicted ``(lars_ratio, angle)`` per step for one param group of a given optimizer family.

    * ``"sgd"``: ``(sgd_lars_ratio, sgd_angle)`` with the group's momentum, dampening, nesterov.
    * ``"adamw"``: ``(None, adamw_angle)``; the ratio is not set by hyperparameters
      (it is ``ηG/|w|²`` with G the scale-free gradient norm). ``momentum`` is ignored.
    * ``"adam"`` (coupled L2): ``(None, adam_l2_angle)``; the angle needs ``grad_rms``.
    * ``"lars"`` (normwatch.optim.LARS, ``lars=True`` groups): ``(lars_ratio(lr, momentum),
      lars_angle(lr, momentum))``. Plain ``lars=False`` groups are heavy-ball SGD: use ``"sgd"``.

    ``None`` wherever no formula applies: ``weight_decay == 0`` for every family (no
    equilibrium: SGD norms grow like ``t^{1/4}``, Adam/AdamW norms like ``t^{1/2}``, LARS norms
    geometrically, and the LARS angle then falls below ``lars_angle``: simulated 11 % low at
    η = 0.02, μ = 0.9 and 2 % low at η = 0.0063, μ = 0.9),
    an unknown family, the Adam/AdamW ratio, the Adam angle when ``grad_rms`` is None or 0, and
    hyperparameters for which no stationary state exists (e.g. ``momentum >= 1``, dampening 1).

    Assumptions and sources: see the individual functions and docs/theory.md#sources.

    Args:
        family: One of ``"sgd"``, ``"adam"``, ``"adamw"``, ``"lars"``.
        lr: The group's learning rate.
        weight_decay: The group's weight decay.
        momentum: The group's momentum (SGD, LARS).
        dampening: The group's dampening (SGD).
        nesterov: The group's nesterov flag (SGD).
        beta1: Adam's first beta (Adam, AdamW).
        grad_rms: Measured per-coordinate gradient RMS ``|g|/sqrt(C)`` of the group (Adam only).

    Returns:
        ``(lars_theory, angle_theory)``, each a float or None.
    """
    if family not in FAMILIES or not weight_decay > 0.0:
        return None, None
    try:
        if family == "sgd":
            return (
                sgd_lars_ratio(lr, weight_decay, momentum, dampening, nesterov),
                sgd_angle(lr, weight_decay, momentum, dampening, nesterov),
            )
        if family == "adamw":
            return None, adamw_angle(lr, weight_decay, beta1)
        if family == "adam":
            if grad_rms is None or not grad_rms > 0.0:
                return None, None
            return None, adam_l2_angle(lr, weight_decay, beta1, grad_rms)
        return lars_ratio(lr, momentum), lars_angle(lr, momentum)
    except ValueError:
        return None, None


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
) -> float | None:
    """Predicted equilibrium norm ``|w*|`` of one scale-invariant group of a given optimizer family.

    * ``"sgd"``: :func:`sgd_equilibrium_norm`; needs ``scale_free_grad_sq`` (E[G²], G = |g|·|w|).
    * ``"lars"``: :func:`lars_equilibrium_norm`; needs ``scale_free_grad_sq``.
    * ``"adamw"``: :func:`adamw_equilibrium_norm`; needs ``numel`` (not G: AdamW's |w*| does not
      depend on the gradient scale).
    * ``"adam"`` (coupled L2): :func:`adam_l2_equilibrium_norm`; needs both.

    ``None`` wherever no formula applies: an unknown family, ``weight_decay == 0`` (no equilibrium;
    the norm grows without bound), a missing or non-positive input the family needs, and
    hyperparameters with no stationary state. Used to rescale a layer to |w*| before training
    and for the |w|/|w*| figure.

    Assumptions and sources: see the individual functions and docs/theory.md#sources.

    Args:
        family: One of ``"sgd"``, ``"adam"``, ``"adamw"``, ``"lars"``.
        lr: The group's learning rate η.
        weight_decay: The group's weight decay λ.
        momentum: The group's momentum μ (SGD, LARS).
        dampening: The group's dampening τ (SGD).
        nesterov: The group's nesterov flag (SGD).
        beta1: Adam's first beta β₁ (Adam, AdamW).
        scale_free_grad_sq: E[G²] of the group, e.g. a moving average of ``(|g|·|w|)²`` (SGD, LARS,
            Adam).
        numel: Number of elements C in the group (Adam, AdamW).

    Returns:
        |w*| as a float, or None.
    """
    if family not in FAMILIES or not weight_decay > 0.0:
        return None
    has_g = scale_free_grad_sq is not None and scale_free_grad_sq > 0.0
    has_c = numel is not None and numel > 0
    try:
        if family == "sgd" and has_g:
            return sgd_equilibrium_norm(lr, weight_decay, scale_free_grad_sq, momentum, dampening, nesterov)
        if family == "lars" and has_g:
            return lars_equilibrium_norm(lr, weight_decay, scale_free_grad_sq, momentum)
        if family == "adamw" and has_c:
            return adamw_equilibrium_norm(lr, weight_decay, beta1, numel)
        if family == "adam" and has_g and has_c:
            return adam_l2_equilibrium_norm(lr, weight_decay, beta1, scale_free_grad_sq, numel)
    except ValueError:
        return None
    return None
