"""Check normwatch.theory against the dynamics it describes (derivations: docs/theory.md).

Two kinds of check, both independent of the closed forms in normwatch/theory.py:

1. Stationary second moments from the optimizers' update rules written as a linear state-space
   map ``s' = M s + N g`` (per coordinate, unit-variance white gradient) and solved as a discrete
   Lyapunov equation (docs/theory.md#stationary-second-moments). This checks the algebra of the
   "exact" forms to 1e-9.
2. The pure-noise scale-invariant toy (docs/theory.md#the-pure-noise-toy), stepped by the real
   optimizers: ``w ∈ R^C``, ``g = (σ/|w|)·P⊥ξ``, ``ξ ~ N(0, I/C)`` fresh every step (seeded),
   float64. Many independent runs are rows of one ``(R, C)`` tensor per setting for the
   per-element optimizers (torch SGD, Adam, AdamW), and separate 1-D parameters for the per-tensor
   LARS; norms and angles are per row. Each setting is a param group of one optimizer. Runs start
   at the *leading-order* equilibrium norm, burn in for >= 4 relaxation times, then average the
   per-step ``lr·|g|/|w|``, ``θ = atan2(|u⊥|, |w| + u·ŵ)`` and ``|w|²``.

Tolerances. Over the averaging window the standard error of a setting's mean ratio or angle is
<= 0.12 % (measured across rows), and the per-step means sit a relative ~1/(4C) = 0.1 % below the
stationary second-moment values (Jensen: ``E|ξ⊥| = sqrt(E|ξ⊥|²)(1 - 1/(4C))``), so
``REL_TOL = 0.5 %`` is about 4 standard errors plus that bias. The settings with ηλ = 0.05
separate the exact forms from the leading-order ones by 0.9-1.3 %, above that tolerance. Norms
fluctuate more slowly (their correlation time is the relaxation time), so :func:`_check_norm`
takes its tolerance from the standard error measured across rows (4 of them) and first checks that
this standard error is small enough for the test to have power.
"""

from __future__ import annotations

import math
import re
from pathlib import Path

import numpy as np
import pytest
import torch

from normwatch import theory
from normwatch.optim import LARS

C = 256  # elements per invariant group
SIGMA = 1.0
G2 = SIGMA**2 * (C - 1) / C  # E|g|²|w|² for the toy
REL_TOL = 5e-3


# --------------------------------------------------------------------------------------------
# The toy
# --------------------------------------------------------------------------------------------


def _simulate(make_opt, norms, lrs, *, rows, steps, burn, per_row=False, seed=0, track=False, warm=None):
    """Step the toy with a real optimizer; one param group per setting.

    ``warm(opt, params)`` may preset the optimizer's state before the first step. Returns
    per-(setting, row) means over steps ``burn..steps`` of the angle, ``lr·|g|/|w|`` (times the
    trust ratio for LARS), ``|g|²/C`` and ``|w|²``; optionally the |w|² history.
    """
    gen = torch.Generator().manual_seed(seed)
    k = len(norms)
    w = torch.randn(k, rows, C, generator=gen, dtype=torch.float64)
    w *= torch.tensor(norms, dtype=torch.float64).view(k, 1, 1) / w.norm(dim=-1, keepdim=True)
    # Parameters alias rows/blocks of `w`, so the optimizer's in-place updates land in `w`.
    if per_row:
        groups = [[torch.nn.Parameter(w[i, r]) for r in range(rows)] for i in range(k)]
    else:
        groups = [[torch.nn.Parameter(w[i])] for i in range(k)]
    opt = make_opt(groups)
    flat = [p for ps in groups for p in ps]
    if warm is not None:
        warm(opt, flat)
    lr = torch.tensor(lrs, dtype=torch.float64).view(k, 1)
    acc = {key: torch.zeros(k, rows, dtype=torch.float64) for key in ("theta", "ratio", "g2", "n2")}
    hist = []
    scale = 1.0 / math.sqrt(C)
    for t in range(steps):
        n2 = (w * w).sum(-1, keepdim=True)
        xi = torch.randn(w.shape, generator=gen, dtype=torch.float64).mul_(scale)
        xi -= (xi * w).sum(-1, keepdim=True) / n2 * w  # P⊥ξ
        g = xi.mul_(SIGMA / n2.sqrt())
        g_views = g.view(-1, C) if per_row else g
        for i, p in enumerate(flat):
            p.grad = g_views[i]
        w_old = w.clone()
        opt.step()
        if track:
            hist.append(n2.squeeze(-1).clone())
        if t < burn:
            continue
        n = n2.sqrt()
        u = w - w_old
        u_r = (u * w_old).sum(-1, keepdim=True) / n
        u_perp = u - u_r * (w_old / n)
        acc["theta"] += torch.atan2(u_perp.norm(dim=-1), (n + u_r).squeeze(-1))
        g_norm = g.norm(dim=-1)
        ratio = lr * g_norm / n.squeeze(-1)
        if per_row:
            trust = torch.stack([opt.state[p]["trust_ratio"] for p in flat]).view(k, rows)
            ratio = ratio * trust
        acc["ratio"] += ratio
        acc["g2"] += g_norm**2 / C
        acc["n2"] += n2.squeeze(-1)
    out = {key: v / (steps - burn) for key, v in acc.items()}
    if track:
        out["hist"] = torch.stack(hist)
    return out


def _warm_adam(opt, params, **extra):
    """Preset Adam-type state at its stationary value: v = E[g²] = G²/(C|w|²) per row, m = 0, and a
    large step count so both bias corrections are 1. Started cold, the first bias-corrected steps
    are far larger than stationary ones and their trace in v̂ decays only with the coupled
    (|w|, v̂) mode of time constant 2/(1-β₂) (docs/theory.md#adamw): +0.7 % in |w| after
    1000 steps and +0.3 % after 2500 at β₂ = 0.999."""
    for p in params:
        n2 = (p.detach() * p.detach()).sum(-1, keepdim=True)
        state = opt.state[p]
        state["step"] = torch.tensor(1e6)
        state["exp_avg"] = torch.zeros_like(p)
        state["exp_avg_sq"] = (G2 / C / n2).expand_as(p).clone()
        for key, value in extra.items():
            state[key] = value(p) if callable(value) else torch.tensor(value, dtype=torch.float64)


def _rel(measured, predicted):
    return measured / predicted - 1.0


def _check(name, measured_rows, predicted, tol=REL_TOL):
    means = measured_rows.mean(dim=1).tolist()
    bad = [
        f"{name}[{i}]: measured {m:.6g}, predicted {p:.6g} ({100 * _rel(m, p):+.3f} %)"
        for i, (m, p) in enumerate(zip(means, predicted, strict=True))
        if abs(_rel(m, p)) > tol
    ]
    assert not bad, "\n".join(bad)


def _check_norm(name, n2_rows, predicted, bias=0.0, max_se=0.004):
    """Mean |w| = sqrt(mean |w|²) per setting against ``predicted`` |w*|.

    Tolerance: 4 standard errors of the mean across rows (|w|² rows are independent runs) plus a
    stated ``bias``; the standard error itself must stay below ``max_se`` so the check has power.
    """
    means = n2_rows.mean(dim=1)
    se = n2_rows.std(dim=1) / math.sqrt(n2_rows.shape[1]) / means / 2  # relative SE of sqrt(mean)
    bad = []
    for i, (m, s, p) in enumerate(zip(means.sqrt().tolist(), se.tolist(), predicted, strict=True)):
        assert s < max_se, f"{name}[{i}]: standard error {100 * s:.2f} % too large for a test"
        if abs(_rel(m, p)) > 4 * s + bias:
            bad.append(f"{name}[{i}]: measured {m:.6g}, predicted {p:.6g} ({100 * _rel(m, p):+.3f} %, "
                       f"SE {100 * s:.3f} %)")
    assert not bad, "\n".join(bad)


def _sgd_leading_norm(lr, wd, mu, damp):
    """Seed eq. 7 with dampening (docs/theory.md#sgd-family): |w|⁴ = η(1-τ)G²/(2λ(1-μ))."""
    if mu == 0:
        damp = 0.0
    return (lr * (1 - damp) * G2 / (2 * wd * (1 - mu))) ** 0.25


def _fit_time_constant(y, y_star, lo=0.05, hi=0.8):
    """Least-squares slope of log((y - y*)/(y0 - y*)) while that excess is in (lo, hi)."""
    excess = (y - y_star) / (y[0] - y_star)
    idx = torch.nonzero((excess > lo) & (excess < hi)).squeeze(1)
    t = idx.to(torch.float64)
    slope = np.polyfit(t.numpy(), torch.log(excess[idx]).numpy(), 1)[0]
    return -1.0 / slope


# --------------------------------------------------------------------------------------------
# SGD family
# --------------------------------------------------------------------------------------------

# (lr, weight_decay, momentum, dampening, nesterov)
SGD_SETTINGS = [
    (0.1, 5e-3, 0.9, 0.0, False),  # heavy ball
    (0.05, 0.02, 0.5, 0.0, False),
    (0.5, 0.01, 0.0, 0.0, False),  # plain SGD
    (0.1, 5e-3, 0.9, 0.0, True),  # Nesterov
    (0.05, 0.02, 0.5, 0.0, True),
    (1.0, 0.01, 0.9, 0.9, False),  # dampening = momentum (EMA convention)
    (0.1, 0.02, 0.8, 0.5, False),
    (0.5, 0.01, 0.0, 0.5, False),  # torch ignores dampening without momentum
    (1.0, 0.05, 0.0, 0.0, False),  # ηλ = 0.05: exact vs leading order
    (0.2, 0.25, 0.5, 0.0, False),
    (0.2, 0.25, 0.5, 0.0, True),
]
LARGE_ETA_LAMBDA = [8, 9, 10]


@pytest.fixture(scope="module")
def sgd_run():
    norms = [_sgd_leading_norm(*s[:4]) for s in SGD_SETTINGS]
    burn = 1000  # >= 8 relaxation times of the slowest setting (τ_eq = 125 steps)
    assert burn >= 8 * max(theory.sgd_relaxation_steps(*s[:4]) for s in SGD_SETTINGS)

    def make(groups):
        return torch.optim.SGD(
            [
                {"params": ps, "lr": lr, "weight_decay": wd, "momentum": mu, "dampening": dp, "nesterov": ne}
                for ps, (lr, wd, mu, dp, ne) in zip(groups, SGD_SETTINGS, strict=True)
            ],
            lr=0.1,
        )

    return _simulate(make, norms, [s[0] for s in SGD_SETTINGS], rows=8, steps=2500, burn=burn)


def test_sgd_lars_ratio_matches_simulation(sgd_run):
    _check("lr|g|/|w|", sgd_run["ratio"], [theory.sgd_lars_ratio(*s) for s in SGD_SETTINGS])


def test_sgd_angle_matches_simulation(sgd_run):
    _check("theta", sgd_run["theta"], [theory.sgd_angle(*s) for s in SGD_SETTINGS])


def test_sgd_equilibrium_norm_matches_simulation(sgd_run):
    predicted = [theory.sgd_equilibrium_norm(lr, wd, G2, mu, dp, ne) for lr, wd, mu, dp, ne in SGD_SETTINGS]
    _check_norm("|w|", sgd_run["n2"], predicted)


def test_sgd_exact_form_beats_leading_order(sgd_run):
    """At ηλ = 0.05 the seed's sqrt(2ηλ(1-μ)) is visibly off; the shipped form is not."""
    ratio = sgd_run["ratio"].mean(dim=1)
    for i in LARGE_ETA_LAMBDA:
        lr, wd, mu, _, _ = SGD_SETTINGS[i]
        leading = math.sqrt(2 * lr * wd * (1 - mu))
        assert _rel(ratio[i].item(), leading) < -0.008
        assert abs(_rel(ratio[i].item(), theory.sgd_lars_ratio(*SGD_SETTINGS[i]))) < 0.003


def test_nesterov_rotates_faster_at_the_same_ratio(sgd_run):
    theta = sgd_run["theta"].mean(dim=1)
    ratio = sgd_run["ratio"].mean(dim=1)
    assert theta[3] / theta[0] > 1.1  # μ = 0.9: the factor 1.158 of docs/theory.md#sgd-family
    assert abs(ratio[3] / ratio[0] - 1) < 0.01


def _lyapunov(m, n):
    """Stationary covariance Σ = MΣMᵀ + NNᵀ of s' = M s + N g with unit-variance white g."""
    d = m.shape[0]
    sigma = np.linalg.solve(np.eye(d * d) - np.kron(m, m), np.outer(n, n).ravel()).reshape(d, d)
    return sigma, m @ sigma


def _sgd_state_space(lr, wd, mu, damp, nesterov):
    """torch.optim.SGD per coordinate on state (w_t, b_{t-1}), written from its documented rule."""
    if mu == 0:
        return np.array([[1 - lr * wd, 0.0], [0.0, 0.0]]), np.array([-lr, 0.0])
    c = 1 - damp
    b_row, b_g = np.array([c * wd, mu]), c  # b' = μb + (1-τ)(g + λw)
    if nesterov:  # step = (g + λw) + μb'
        s_row, s_g = np.array([wd, 0.0]) + mu * b_row, 1 + mu * b_g
    else:  # step = b'
        s_row, s_g = b_row, b_g
    m = np.vstack([np.array([1.0, 0.0]) - lr * s_row, b_row])
    return m, np.array([-lr * s_g, b_g])


@pytest.mark.parametrize(
    "setting",
    [
        (0.1, 5e-3, 0.9, 0.0, False),
        (0.4, 5e-4, 0.9, 0.0, True),
        (1.0, 0.05, 0.0, 0.0, False),
        (0.3, 0.1, 0.7, 0.3, False),
        (0.2, 0.25, 0.5, 0.0, True),
        (0.3, 0.1, 0.7, 0.3, True),  # Nesterov with dampening: torch refuses it, the algebra holds
        (0.5, 0.01, 0.0, 0.5, True),  # no momentum: dampening and nesterov ignored
        (0.5, 0.3, 0.95, 0.0, False),  # strongly underdamped
    ],
)
def test_sgd_closed_forms_match_state_space(setting):
    sigma, cross = _lyapunov(*_sgd_state_space(*setting))
    lr = setting[0]
    ratio = math.sqrt(lr**2 / sigma[0, 0])  # η² E|g|² / E|w|², E g² = 1
    angle = math.acos(cross[0, 0] / sigma[0, 0])  # E[w_{t+1} w_t] / E w²
    assert theory.sgd_lars_ratio(*setting) == pytest.approx(ratio, rel=1e-9)
    assert theory.sgd_angle(*setting) == pytest.approx(angle, rel=1e-6)
    # E|w|² = Σ·E|g|² with E|g|² = G²/E|w|², so |w*|⁴ = Σ·G².
    lr, wd, mu, damp, nesterov = setting
    norm = theory.sgd_equilibrium_norm(lr, wd, 0.37, mu, damp, nesterov)
    assert norm**4 == pytest.approx(sigma[0, 0] * 0.37, rel=1e-9)


def test_sgd_leading_order_and_myrtle_numbers():
    """Leading-order forms (docs/theory.md#sgd-family) and Myrtle numbers (η=0.4, λ=5e-4, μ=0.9)."""
    lr, wd, mu = 0.4, 5e-4, 0.9
    assert theory.sgd_angle(lr, wd, mu) == pytest.approx(math.sqrt(2 * lr * wd / (1 + mu)), rel=1e-3)
    assert theory.sgd_angle(lr, wd, mu) == pytest.approx(0.0145, abs=1e-4)
    assert theory.sgd_angle(lr, wd, mu, nesterov=True) == pytest.approx(0.0168, abs=1e-4)
    nesterov_lead = math.sqrt(2 * lr * wd * (1 + 2 * mu - 2 * mu**3) / (1 + mu))
    assert theory.sgd_angle(lr, wd, mu, nesterov=True) == pytest.approx(nesterov_lead, rel=1e-3)
    for nesterov in (False, True):
        assert theory.sgd_lars_ratio(lr, wd, mu, nesterov=nesterov) == pytest.approx(0.00632, abs=1e-5)
    assert theory.sgd_relaxation_steps(lr, wd, mu) == pytest.approx(125.0)
    # Dampening: η → η(1-τ) in the angle, ratio sqrt(2ηλ(1-μ)/(1-τ)).
    assert theory.sgd_angle(1e-3, 0.1, 0.9, 0.5) == pytest.approx(math.sqrt(1e-4 / 1.9), rel=1e-4)
    assert theory.sgd_lars_ratio(1e-3, 0.1, 0.9, 0.5) == pytest.approx(math.sqrt(2e-5 / 0.5), rel=1e-4)
    # μ = 0 exact forms (docs/theory.md#sgd-family): cos θ = 1 - ηλ, ratio sqrt(2ηλ - η²λ²).
    assert math.cos(theory.sgd_angle(1.0, 0.05)) == pytest.approx(0.95, rel=1e-12)
    assert theory.sgd_lars_ratio(1.0, 0.05) == pytest.approx(math.sqrt(0.1 - 0.0025), rel=1e-12)
    # Without momentum torch ignores dampening; so do the formulas.
    assert theory.sgd_angle(0.5, 0.01, 0.0, 0.5) == theory.sgd_angle(0.5, 0.01)
    assert theory.sgd_relaxation_steps(0.5, 0.01, 0.0, 0.5) == theory.sgd_relaxation_steps(0.5, 0.01)


def test_sgd_relaxation_steps_matches_simulation():
    # (lr, wd, momentum, dampening, nesterov); ηλ ≪ (1-μ)² so the leading form applies (±1 %).
    settings = [
        (0.1, 1e-3, 0.9, 0.0, False),
        (0.1, 1e-2, 0.0, 0.0, False),
        (0.2, 5e-3, 0.5, 0.5, False),
        (0.1, 1e-3, 0.9, 0.0, True),
    ]
    taus = [theory.sgd_relaxation_steps(*s[:4]) for s in settings]
    # Equilibrium |w*|⁴ = η²G²/ratio² (checked above); the fit starts 80 |w*|⁴ above it.
    w_star4 = [s[0] ** 2 * G2 / theory.sgd_lars_ratio(*s) ** 2 for s in settings]

    def make(groups):
        return torch.optim.SGD(
            [
                {"params": ps, "lr": lr, "weight_decay": wd, "momentum": mu, "dampening": dp, "nesterov": ne}
                for ps, (lr, wd, mu, dp, ne) in zip(groups, settings, strict=True)
            ],
            lr=0.1,
        )

    steps = int(4 * max(taus))
    out = _simulate(
        make,
        [3 * y**0.25 for y in w_star4],
        [s[0] for s in settings],
        rows=4,
        steps=steps,
        burn=steps,
        track=True,
        seed=1,
    )
    for i, tau in enumerate(taus):
        fitted = _fit_time_constant((out["hist"][:, i] ** 2).mean(dim=1), w_star4[i])
        # The leading-order τ_eq is off by ≈ ηλμ/(1-μ)² ≈ 1 % here, plus mean-field error.
        assert abs(_rel(fitted, tau)) < 0.03, (settings[i], fitted, tau)


# --------------------------------------------------------------------------------------------
# Adam / AdamW
# --------------------------------------------------------------------------------------------

# (lr, weight_decay, beta1)
ADAMW_SETTINGS = [
    (0.01, 0.2, 0.9),
    (0.02, 0.1, 0.0),
    (0.01, 0.3, 0.5),
    (0.004, 0.5, 0.95),
    (0.05, 1.0, 0.9),  # ηλ = 0.05: exact vs leading order
]


def _adamw_stationary_sq_norm(lr, wd, beta1):
    """Wen et al.'s table: |W|² = η²C (1-β1)/(1+β1) (1+aβ1)/((1-a²)(1-aβ1)), a = 1 - ηλ."""
    a = 1 - lr * wd
    return lr**2 * C * (1 - beta1) / (1 + beta1) * (1 + a * beta1) / ((1 - a * a) * (1 - a * beta1))


def test_adamw_angle_matches_simulation():
    # Start at Wen et al.'s stationary norm with Adam's state warm (any error in either relaxes
    # away within the burn-in of >= 4 relaxation times).
    norms = [math.sqrt(_adamw_stationary_sq_norm(*s)) for s in ADAMW_SETTINGS]
    burn = 1000
    assert burn >= 4 * max(theory.adamw_relaxation_steps(lr, wd) for lr, wd, _ in ADAMW_SETTINGS)

    def make(groups):
        return torch.optim.AdamW(
            [
                {"params": ps, "lr": lr, "weight_decay": wd, "betas": (b1, 0.999)}
                for ps, (lr, wd, b1) in zip(groups, ADAMW_SETTINGS, strict=True)
            ],
            eps=1e-30,
        )

    out = _simulate(make, norms, [s[0] for s in ADAMW_SETTINGS], rows=8, steps=2500, burn=burn, seed=2,
                    warm=_warm_adam)
    _check("theta", out["theta"], [theory.adamw_angle(*s) for s in ADAMW_SETTINGS])
    # v̂'s own noise lowers E[g²/v̂] by ≈ 2(1-β₂)β₂/(1+β₂) = 0.1 %, i.e. |w| by 0.05 %: allowed as 0.1 %.
    _check_norm("|w|", out["n2"], [theory.adamw_equilibrium_norm(*s, C) for s in ADAMW_SETTINGS], bias=1e-3)
    lr, wd, b1 = ADAMW_SETTINGS[-1]
    leading = math.sqrt(2 * lr * wd * (1 - b1) / (1 + b1))
    assert _rel(out["theta"][-1].mean().item(), leading) > 0.008


def test_adamw_closed_form_matches_state_space():
    for lr, wd, b1 in [(0.01, 0.2, 0.9), (0.05, 1.0, 0.9), (0.3, 1.0, 0.5), (0.1, 0.1, 0.0)]:
        # state (w_t, m_{t-1}); m' = β1 m + (1-β1) g; w' = a w - η m'  (sqrt(v) = RMS(g) = 1)
        a = 1 - lr * wd
        m = np.array([[a, -lr * b1], [0.0, b1]])
        n = np.array([-lr * (1 - b1), 1 - b1])
        sigma, cross = _lyapunov(m, n)
        assert theory.adamw_angle(lr, wd, b1) == pytest.approx(math.acos(cross[0, 0] / sigma[0, 0]), rel=1e-6)
        assert sigma[0, 0] * C == pytest.approx(_adamw_stationary_sq_norm(lr, wd, b1), rel=1e-9)
        assert theory.adamw_equilibrium_norm(lr, wd, b1, C) ** 2 == pytest.approx(sigma[0, 0] * C, rel=1e-9)
        # Wen et al.'s expression (docs/theory.md#adamw) is sin θ, not θ.
        s = math.sqrt((1 - a * a) * (1 - b1 * b1)) / (1 + a * b1)
        assert math.sin(theory.adamw_angle(lr, wd, b1)) == pytest.approx(s, rel=1e-9)


@pytest.mark.parametrize(("beta2", "tol"), [(0.95, 0.04)])
def test_adamw_relaxation_steps_matches_simulation(beta2, tol):
    # β2 = 0.95 keeps sqrt(v̂) within ~20 steps of the changing gradient RMS (τ = 250-500).
    settings = [(0.01, 0.2, 0.9), (0.01, 0.1, 0.0)]
    taus = [theory.adamw_relaxation_steps(lr, wd) for lr, wd, _ in settings]
    w_star2 = [_adamw_stationary_sq_norm(*s) for s in settings]

    def make(groups):
        return torch.optim.AdamW(
            [
                {"params": ps, "lr": lr, "weight_decay": wd, "betas": (b1, beta2)}
                for ps, (lr, wd, b1) in zip(groups, settings, strict=True)
            ],
            eps=1e-30,
        )

    steps = int(4 * max(taus))
    out = _simulate(
        make,
        [3 * math.sqrt(y) for y in w_star2],
        [s[0] for s in settings],
        rows=4,
        steps=steps,
        burn=steps,
        track=True,
        seed=3,
    )
    for i, tau in enumerate(taus):
        # lo = 0.1: the v̂-noise bias of |w*|² (~2 % at β2 = 0.95) stays < 3 % of the fitted excess.
        fitted = _fit_time_constant(out["hist"][:, i].mean(dim=1), w_star2[i], lo=0.1)
        assert abs(_rel(fitted, tau)) < tol, (settings[i], fitted, tau)


def test_adamw_relaxation_is_slower_when_beta2_lags():
    """Documented limit: with the default β2 = 0.999 (memory 1000 steps > τ = 250) sqrt(v̂) lags
    the growing gradient RMS of a shrinking scale-invariant weight, and |w|² relaxes much slower."""
    lr, wd, b1 = 0.01, 0.2, 0.9
    tau = theory.adamw_relaxation_steps(lr, wd)
    w_star2 = _adamw_stationary_sq_norm(lr, wd, b1)

    def make(groups):
        return torch.optim.AdamW(groups[0], lr=lr, weight_decay=wd, betas=(b1, 0.999), eps=1e-30)

    steps = int(4 * tau)
    out = _simulate(make, [3 * math.sqrt(w_star2)], [lr], rows=4, steps=steps, burn=steps, track=True, seed=3)
    fitted = _fit_time_constant(out["hist"][:, 0].mean(dim=1), w_star2, lo=0.1)
    assert fitted > 1.2 * tau


def test_adamw_relaxation_does_not_apply_to_adam_l2():
    """Why the report gives Adam with L2 decay no relaxation time: its steps have size η/RMS(g), so
    the shrink term 2ηλ|w|²/RMS(g) ∝ |w|³ and |w|² relaxes in ~RMS(g*)/(3ηλ) steps, far below the
    AdamW 1/(2ηλ) (β2 = 0.9 so that sqrt(v̂) keeps up)."""
    settings = [(0.01, 0.01, 0.9), (0.003, 0.03, 0.0)]
    w_star = [(lr * math.sqrt(C * G2) / (2 * wd)) ** (1 / 3) for lr, wd, _ in settings]  # leading order

    def make(groups):
        return torch.optim.Adam(
            [
                {"params": ps, "lr": lr, "weight_decay": wd, "betas": (b1, 0.9)}
                for ps, (lr, wd, b1) in zip(groups, settings, strict=True)
            ],
            eps=1e-30,
        )

    out = _simulate(
        make,
        [math.sqrt(3) * w for w in w_star],
        [s[0] for s in settings],
        rows=4,
        steps=1500,
        burn=1000,
        track=True,
        seed=7,
    )
    for i, (lr, wd, _) in enumerate(settings):
        n2 = out["hist"][:, i].mean(dim=1)
        fitted = _fit_time_constant(n2, n2[-500:].mean().item(), lo=0.1)
        assert fitted < 0.1 * theory.adamw_relaxation_steps(lr, wd), (settings[i], fitted)


# (lr, weight_decay, beta1); equilibrium θ 0.02-0.05, so |w| relaxes within ~100 steps
ADAM_SETTINGS = [
    (0.01, 0.05, 0.9),
    (0.003, 0.1, 0.5),
    (0.002, 0.1, 0.0),
    (0.02, 0.01, 0.95),
]


def test_adam_l2_angle_matches_simulation():
    # Leading-order norm (docs/theory.md#adam-with-l2): |w|³ = η sqrt(C) G / (2λ).
    norms = [(lr * math.sqrt(C * G2) / (2 * wd)) ** (1 / 3) for lr, wd, _ in ADAM_SETTINGS]

    def make(groups):
        return torch.optim.Adam(
            [
                {"params": ps, "lr": lr, "weight_decay": wd, "betas": (b1, 0.999)}
                for ps, (lr, wd, b1) in zip(groups, ADAM_SETTINGS, strict=True)
            ],
            eps=1e-30,
        )

    out = _simulate(make, norms, [s[0] for s in ADAM_SETTINGS], rows=8, steps=2000, burn=800, seed=4)
    grad_rms = out["g2"].mean(dim=1).sqrt().tolist()  # measured, as a monitor would
    _check(
        "theta",
        out["theta"],
        [theory.adam_l2_angle(*s, r) for s, r in zip(ADAM_SETTINGS, grad_rms, strict=True)],
    )
    for (lr, wd, b1), r in zip(ADAM_SETTINGS, grad_rms, strict=True):
        lead = math.sqrt(2 * lr * wd * (1 - b1) / ((1 + b1) * r))
        assert theory.adam_l2_angle(lr, wd, b1, r) == pytest.approx(lead, rel=2e-3)
    # Allowed bias 0.1 %: v̂'s own noise (-0.05 % in |w|, see the AdamW test) and the λw term inside v̂
    # (a relative O(θ²) the formula neglects).
    _check_norm("|w|", out["n2"], [theory.adam_l2_equilibrium_norm(*s, G2, C) for s in ADAM_SETTINGS], bias=1e-3)


# --------------------------------------------------------------------------------------------
# normwatch LARS
# --------------------------------------------------------------------------------------------

# (lr, weight_decay, momentum)
LARS_SETTINGS = [
    (0.01, 5e-3, 0.9),
    (0.02, 0.01, 0.9),
    (0.05, 0.01, 0.5),
    (0.1, 0.05, 0.0),
    (0.1, 0.05, 0.9),  # η/(2(1-μ)) = 0.5: the leading form is 9 % off
]


def test_lars_matches_simulation():
    # Leading-order norm (docs/theory.md#lars): |w|² = ηG/(2λ(1-μ)); |w|² relaxes at ≈ η²/(1-μ)² per step.
    norms = [math.sqrt(lr * math.sqrt(G2) / (2 * wd * (1 - mu))) for lr, wd, mu in LARS_SETTINGS]
    burn = 800
    assert burn >= 8 * max((1 - mu) ** 2 / lr**2 for lr, _, mu in LARS_SETTINGS)

    def make(groups):
        return LARS(
            [
                {"params": ps, "lr": lr, "weight_decay": wd, "momentum": mu}
                for ps, (lr, wd, mu) in zip(groups, LARS_SETTINGS, strict=True)
            ],
            lr=0.1,
        )

    out = _simulate(
        make, norms, [s[0] for s in LARS_SETTINGS], rows=6, steps=2000, burn=burn, per_row=True, seed=5
    )
    _check("theta", out["theta"], [theory.lars_angle(lr, mu) for lr, _, mu in LARS_SETTINGS])
    _check("lr*trust*|g|/|w|", out["ratio"], [theory.lars_ratio(lr, mu) for lr, _, mu in LARS_SETTINGS])
    # The trust ratio sees each step's |g|, whose fluctuations bias |w*| by ≈ -0.4/C (measured -0.6 %,
    # -0.15 %, -0.04 % at C = 64, 256, 1024): allowed as 1/C.
    predicted = [theory.lars_equilibrium_norm(lr, wd, G2, mu) for lr, wd, mu in LARS_SETTINGS]
    _check_norm("|w|", out["n2"], predicted, bias=1.0 / C)
    # Where η/(2(1-μ)) is not small the leading forms fail (documented): ratio η -9 %, angle -9 %.
    lr, _, mu = LARS_SETTINGS[-1]
    assert _rel(out["ratio"][-1].mean().item(), lr) < -0.05
    assert _rel(out["theta"][-1].mean().item(), lr / math.sqrt(1 - mu**2)) < -0.05


def _lars_state_space(lr, mu):
    """LARS at equilibrium as heavy ball with lr η and decay ℓ on the gradient |w|·sqrt(1-ℓ²)·ĝ.

    ℓ = κ/sqrt(1+κ²) is fixed by self-consistency: the heavy-ball stationary E g²/E w² (unit g)
    must be 1 - ℓ². Solved by bisection on the Lyapunov solution, not on a closed form.
    Returns (ℓ, Σ, MΣ).
    """

    def excess(ell):
        sigma, _ = _lyapunov(*_sgd_state_space(lr, ell, mu, 0.0, False))
        return 1.0 / sigma[0, 0] - (1.0 - ell * ell)

    lo, hi = 1e-12, 1.0 - 1e-12
    for _ in range(200):
        mid = 0.5 * (lo + hi)
        lo, hi = (mid, hi) if excess(mid) < 0 else (lo, mid)
    ell = 0.5 * (lo + hi)
    return ell, *_lyapunov(*_sgd_state_space(lr, ell, mu, 0.0, False))


@pytest.mark.parametrize(("lr", "mu"), [(0.006, 0.9), (0.02, 0.9), (0.1, 0.9), (0.05, 0.5), (0.05, 0.0), (0.3, 0.0)])
def test_lars_closed_forms_match_state_space(lr, mu):
    ell, sigma, cross = _lars_state_space(lr, mu)
    assert theory.lars_ratio(lr, mu) == pytest.approx(lr * math.sqrt(1 - ell * ell), rel=1e-9)
    assert theory.lars_angle(lr, mu) == pytest.approx(math.acos(cross[0, 0] / sigma[0, 0]), rel=1e-6)
    # κ = λ|w|²/G = ℓ/sqrt(1 - ℓ²) at that ℓ.
    wd, grad_sq = 0.01, 0.37
    norm_sq = math.sqrt(grad_sq) * ell / math.sqrt(1 - ell * ell) / wd
    assert theory.lars_equilibrium_norm(lr, wd, grad_sq, mu) ** 2 == pytest.approx(norm_sq, rel=1e-9)


def test_lars_without_weight_decay_has_no_equilibrium():
    """Why equilibrium("lars", weight_decay=0) is (None, None): the norm grows geometrically and the
    angle drifts below lars_angle (simulated 11 % low at η = 0.02, μ = 0.9)."""
    lr, mu = 0.02, 0.9

    def make(groups):
        return LARS(groups[0], lr=lr, momentum=mu, weight_decay=0.0)

    out = _simulate(make, [1.0], [lr], rows=4, steps=300, burn=100, per_row=True, track=True, seed=6)
    n2 = out["hist"][:, 0].mean(dim=1)
    assert n2[-1] > 1e3 * n2[0]
    assert (n2[100:] / n2[:-100]).min() > 5  # still growing geometrically, no equilibrium
    assert _rel(out["theta"].mean().item(), theory.lars_angle(lr, mu)) < -0.05
    assert out["ratio"].mean().item() == pytest.approx(lr, rel=1e-9)  # λ = 0: trust·|g| = |w|
    assert theory.equilibrium("lars", lr=lr, weight_decay=0.0, momentum=mu) == (None, None)


def test_lars_closed_forms():
    # μ = 0: ℓ = η/2 (2(1-0)ℓ = η), so the ratio is η·sqrt(1 - η²/4); leading order η for small η.
    assert theory.lars_ratio(0.1, 0.0) == pytest.approx(0.1 * math.sqrt(1 - 0.1**2 / 4), rel=1e-12)
    assert theory.lars_ratio(0.0063, 0.9) == pytest.approx(0.0063, rel=1e-3)
    assert theory.lars_ratio(0.0, 0.9) == 0.0
    assert theory.lars_angle(0.01, 0.9) == pytest.approx(0.01 / math.sqrt(1 - 0.81), rel=2e-3)
    assert math.cos(theory.lars_angle(0.1, 0.0)) == pytest.approx(1 - 0.1**2 / 2, rel=1e-12)
    assert theory.lars_angle(0.0, 0.9) == 0.0


# --------------------------------------------------------------------------------------------
# equilibrium() dispatch and edge cases
# --------------------------------------------------------------------------------------------


def test_equilibrium_dispatch():
    kw = {"lr": 0.1, "weight_decay": 5e-4}
    assert theory.equilibrium("sgd", **kw, momentum=0.9, nesterov=True) == (
        theory.sgd_lars_ratio(0.1, 5e-4, 0.9, 0.0, True),
        theory.sgd_angle(0.1, 5e-4, 0.9, 0.0, True),
    )
    assert theory.equilibrium("sgd", **kw, momentum=0.8, dampening=0.8) == (
        theory.sgd_lars_ratio(0.1, 5e-4, 0.8, 0.8),
        theory.sgd_angle(0.1, 5e-4, 0.8, 0.8),
    )
    # Adam/AdamW: momentum is ignored, beta1 is used; the ratio is never set.
    assert theory.equilibrium("adamw", **kw, momentum=0.5, beta1=0.95) == (
        None,
        theory.adamw_angle(0.1, 5e-4, 0.95),
    )
    assert theory.equilibrium("adamw", **kw) == (None, theory.adamw_angle(0.1, 5e-4, 0.9))
    assert theory.equilibrium("adam", **kw, momentum=0.5, grad_rms=0.01) == (
        None,
        theory.adam_l2_angle(0.1, 5e-4, 0.9, 0.01),
    )
    assert theory.equilibrium("lars", **kw, momentum=0.9) == (
        theory.lars_ratio(0.1, 0.9),
        theory.lars_angle(0.1, 0.9),
    )


@pytest.mark.parametrize("family", ["sgd", "adam", "adamw", "lars"])
def test_equilibrium_none_without_weight_decay(family):
    assert theory.equilibrium(family, lr=0.1, weight_decay=0.0, momentum=0.9, grad_rms=0.01) == (None, None)


def test_equilibrium_none_cases():
    assert theory.equilibrium("rmsprop", lr=0.1, weight_decay=5e-4) == (None, None)
    assert theory.equilibrium("SGD", lr=0.1, weight_decay=5e-4) == (None, None)
    assert theory.equilibrium("adam", lr=0.1, weight_decay=5e-4) == (None, None)
    assert theory.equilibrium("adam", lr=0.1, weight_decay=5e-4, grad_rms=0.0) == (None, None)
    # No stationary state: momentum 1, a buffer that never sees a gradient, ηλ too large.
    assert theory.equilibrium("sgd", lr=0.1, weight_decay=5e-4, momentum=1.0) == (None, None)
    assert theory.equilibrium("sgd", lr=0.1, weight_decay=5e-4, momentum=0.9, dampening=1.0) == (None, None)
    assert theory.equilibrium("sgd", lr=10.0, weight_decay=0.5) == (None, None)
    assert theory.equilibrium("adamw", lr=10.0, weight_decay=0.5) == (None, None)
    # lr = 0 (start of a warmup): nothing moves.
    assert theory.equilibrium("sgd", lr=0.0, weight_decay=5e-4, momentum=0.9) == (0.0, 0.0)


def test_relaxation_steps_edge_cases():
    assert theory.sgd_relaxation_steps(0.1, 0.0, 0.9) == math.inf
    assert theory.sgd_relaxation_steps(0.1, 1e-3, 0.9, 1.0) == math.inf
    assert theory.adamw_relaxation_steps(0.0, 0.1) == math.inf
    assert theory.adamw_relaxation_steps(1e-3, 0.1) == pytest.approx(5000.0)
    assert theory.sgd_relaxation_steps(0.1, 1e-3, 0.9, 0.5) == pytest.approx(0.1 / (4 * 0.1 * 0.5 * 1e-3))


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda: theory.sgd_angle(-1, 0.1), "Expected lr >= 0, got -1"),
        (lambda: theory.sgd_lars_ratio(0.1, -0.1), "Expected weight_decay >= 0, got -0.1"),
        (lambda: theory.sgd_angle(0.1, 0.1, 1.0), "Expected 0 <= momentum < 1, got 1.0"),
        (lambda: theory.sgd_angle(0.1, 0.1, 0.9, 1.5), "Expected 0 <= dampening <= 1, got 1.5"),
        (lambda: theory.adamw_angle(0.1, 0.1, 1.0), "Expected 0 <= beta1 < 1, got 1.0"),
        (lambda: theory.adam_l2_angle(0.1, 0.1, 0.9, 0.0), "Expected grad_rms > 0, got 0.0"),
        (lambda: theory.lars_angle(0.1, -0.5), "Expected 0 <= momentum < 1, got -0.5"),
        (lambda: theory.lars_ratio(-0.1, 0.9), "Expected lr >= 0, got -0.1"),
        (lambda: theory.sgd_angle(10.0, 0.5), "No stationary state"),
    ],
)
def test_invalid_arguments_raise(call, message):
    with pytest.raises(ValueError, match=message.replace("(", r"\(")):
        call()


# --------------------------------------------------------------------------------------------
# The seed's leading-order ratio and the SGD equilibrium norm, against their closed forms and each other
# --------------------------------------------------------------------------------------------
@pytest.mark.parametrize(("lr", "wd", "mu", "tau"),
                         [(0.4, 5e-4, 0.9, 0.0), (0.1, 1e-3, 0.0, 0.0), (0.05, 2e-3, 0.5, 0.3)])
def test_seed_ratio_and_equilibrium_norm_agree_with_the_balance_of_shrink_and_growth(lr, wd, mu, tau):
    """To leading order |w*| is the rest point of the mean-field balance 4η_eλ|w|⁴ = 2η_e²G²
    (η_e = η(1−τ)/(1−μ)); the exact |w*| differs by a relative ≈ η(1−τ)λ/(8(1+μ)) (≤ 1e-5 here).
    At that rest point η|g|/|w| = η·G/|w*|² is the seed's ratio √(2ηλ(1−μ)/(1−τ))."""
    grad_sq = 0.37
    eta_e = lr * (1 - tau) / (1 - mu)
    norm = (2 * eta_e**2 * grad_sq / (4 * eta_e * wd)) ** 0.25
    assert theory.sgd_equilibrium_norm(lr, wd, grad_sq, mu, tau) == pytest.approx(norm, rel=2e-5)
    # η|g|/|w| at |w*| with |g| = G/|w*| is the seed's ratio
    assert lr * math.sqrt(grad_sq) / norm**2 == pytest.approx(theory.seed_lars_ratio(lr, wd, mu, tau), rel=1e-12)
    assert theory.seed_lars_ratio(lr, wd, mu, tau) == pytest.approx(math.sqrt(2 * lr * wd * (1 - mu) / (1 - tau)))


def test_equilibrium_norm_without_weight_decay_is_unbounded_and_bad_input_is_refused():
    assert theory.sgd_equilibrium_norm(0.1, 0.0, 1.0) == math.inf
    assert theory.adamw_equilibrium_norm(0.1, 0.0, 0.9, 10) == math.inf
    assert theory.lars_equilibrium_norm(0.1, 0.0, 1.0, 0.9) == math.inf
    assert theory.adam_l2_equilibrium_norm(0.0, 0.1, 0.9, 1.0, 10) == math.inf
    with pytest.raises(ValueError, match="momentum"):
        theory.seed_lars_ratio(0.1, 1e-3, 1.0)
    with pytest.raises(ValueError, match="scale_free_grad_sq"):
        theory.sgd_equilibrium_norm(0.1, 1e-3, -1.0)


# --------------------------------------------------------------------------------------------
# equilibrium_norm() dispatch
# --------------------------------------------------------------------------------------------


def test_equilibrium_norm_dispatch():
    kw = {"lr": 0.1, "weight_decay": 5e-4, "scale_free_grad_sq": 0.3, "numel": 64}
    assert theory.equilibrium_norm("sgd", **kw, momentum=0.9, nesterov=True) == theory.sgd_equilibrium_norm(
        0.1, 5e-4, 0.3, 0.9, 0.0, True)
    assert theory.equilibrium_norm("lars", **kw, momentum=0.9) == theory.lars_equilibrium_norm(0.1, 5e-4, 0.3, 0.9)
    assert theory.equilibrium_norm("adamw", **kw, beta1=0.95) == theory.adamw_equilibrium_norm(0.1, 5e-4, 0.95, 64)
    assert theory.equilibrium_norm("adam", **kw) == theory.adam_l2_equilibrium_norm(0.1, 5e-4, 0.9, 0.3, 64)
    # AdamW needs no G; the others do; Adam and AdamW need C.
    assert theory.equilibrium_norm("adamw", lr=0.1, weight_decay=5e-4, numel=64) is not None
    for family in ("sgd", "lars", "adam"):
        assert theory.equilibrium_norm(family, lr=0.1, weight_decay=5e-4, numel=64) is None
        assert theory.equilibrium_norm(family, **{**kw, "scale_free_grad_sq": 0.0}) is None
    assert theory.equilibrium_norm("adamw", lr=0.1, weight_decay=5e-4, scale_free_grad_sq=0.3) is None
    assert theory.equilibrium_norm("adam", lr=0.1, weight_decay=5e-4, scale_free_grad_sq=0.3) is None
    # No equilibrium or no formula: None, never an exception.
    assert theory.equilibrium_norm("sgd", **{**kw, "weight_decay": 0.0}) is None
    assert theory.equilibrium_norm("rprop", **kw) is None
    assert theory.equilibrium_norm("sgd", **kw, momentum=1.0) is None
    assert theory.equilibrium_norm("adamw", **{**kw, "lr": 10.0, "weight_decay": 0.5}) is None


def test_adam_l2_equilibrium_norm_tends_to_the_leading_order():
    """|w*|³ = η√C·G/(2λ) as ηλ/σ → 0 (docs/theory.md#adam-with-l2); the exact root sits above it."""
    lr, wd, grad_sq, numel = 1e-4, 1e-3, 0.5, 1000
    lead = (lr * math.sqrt(numel * grad_sq) / (2 * wd)) ** (1 / 3)
    assert theory.adam_l2_equilibrium_norm(lr, wd, 0.9, grad_sq, numel) == pytest.approx(lead, rel=1e-5)
    assert theory.adam_l2_equilibrium_norm(0.02, 0.05, 0.9, grad_sq, numel) > (
        0.02 * math.sqrt(numel * grad_sq) / (2 * 0.05)) ** (1 / 3)


def test_docs_anchors_cited_in_code_exist():
    """Every ``docs/theory.md#<anchor>`` cited by theory.py or these tests is a heading of docs/theory.md
    (GitHub's anchor: lower case, punctuation dropped, spaces to hyphens)."""
    root = Path(__file__).resolve().parents[1]
    doc = (root / "docs" / "theory.md").read_text(encoding="utf-8")
    anchors = {
        re.sub(r"[^\w\- ]", "", line.lstrip("#").strip().lower()).replace(" ", "-")
        for line in doc.splitlines()
        if line.startswith("#")
    }
    cited = set()
    for path in (root / "normwatch" / "theory.py", Path(__file__)):
        cited |= set(re.findall(r"docs/theory\.md#([\w-]+)", path.read_text(encoding="utf-8")))
    assert cited, "no anchors cited"
    assert cited <= anchors, sorted(cited - anchors)
