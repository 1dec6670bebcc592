r"""The equilibrium window: the steps on which the seed's equilibrium claims are tested.

Definition (docs/theory.md, "Relaxation times"). With η_t, λ_t, μ_t the logged lr, weight decay and momentum at step
t, the relaxation time of |w|⁴ is

.. math:: \tau_t = \frac{1-\mu_t}{4\,\eta_t\,\lambda_t} \text{ steps}

(with dampening τ_d, η becomes η(1 − τ_d)); every other optimizer family uses its own relaxation time from
:func:`normwatch.theory.relaxation_steps` (AdamW and Muon 1/(2ηλ), LARS ((1−μ)/η)²), and Adam with L2 decay
has no window, its τ depending on the gradient RMS: see :func:`~normwatch.report.stats.relaxation_time`.

1. **End of warm-up**, t_peak: the first logged step where η_t ≥ (1 − 10⁻⁴)·max η.
2. **Start**, t_a: the first logged step t ≥ t_peak by which k = :data:`RELAXATION_TIMES`
   relaxation times have accrued since t_peak, :math:`\sum_{t_{peak} \le t_i < t}
   (t_{i+1}-t_i)/\tau_{t_i} \ge k`. For constant hyperparameters t_a = t_peak + kτ; the initial
   distance of |w|⁴ from its target has then decayed by :math:`e^{-k}` (5 % for k = 3).
3. **End**, t_b: the last step of the unbroken run of steps from t_a on which the norm can
   follow its moving target :math:`|w^*|^4 \propto \eta/(\lambda(1-\mu))`:

   .. math:: \tau_t \,\Big|\frac{d}{dt}\ln\frac{\eta_t}{\lambda_t(1-\mu_t)}\Big| \le \frac1c,
      \qquad c = \text{TRACKING\_MARGIN} = 4

   (derivative by central differences over the logged steps). The quasi-static lag of |w|⁴
   behind its target is δ = τ·d ln η/dt (:func:`schedule_drift`), so the margin keeps it
   ≤ 25 % (≤ 6 % in |w|, ≤ 12 % in η|g|/|w|) at the window's last step and less inside it; the
   verdicts print its effect next to their predictions. For a linear decay to zero over
   D steps from η0 this ends the window :math:`2n_c` steps before the end, with the theory
   sheet's :math:`n_c = \sqrt{(1-\mu)D/(4\eta_0\lambda)}` (where the lag reaches 100 %); a step
   drop in the schedule ends it at the drop; a constant schedule never ends it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from numpy.typing import ArrayLike

from normwatch.report.stats import DECOUPLED, relaxation_time

#: k: relaxation times that must accrue after warm-up before the window opens.
RELAXATION_TIMES = 3.0
#: c: the window closes once τ·|d ln(target)/dt| exceeds 1/c.
TRACKING_MARGIN = 4.0
#: A step belongs to the plateau of the peak when η ≥ (1 − PEAK_RTOL)·max η.
PEAK_RTOL = 1e-4


@dataclass(frozen=True)
class Window:
    """Equilibrium window of one layer of one run.

    Attributes:
        start: first step in the window (inclusive), ``None`` if the window is empty.
        stop: last step in the window (inclusive), ``None`` if the window is empty.
        peak_step: t_peak, the end of warm-up (``None`` if no lr was logged).
        tau_peak: τ at t_peak in steps (``inf`` without weight decay).
        n_c: the theory sheet's n_c for a linear decay to zero (``None`` if the schedule does not
            end below 5 % of its peak).
        reason: why the window is empty, or ``""``.
    """

    start: int | None
    stop: int | None
    peak_step: int | None = None
    tau_peak: float = math.inf
    n_c: float | None = None
    reason: str = ""

    @property
    def empty(self) -> bool:
        """True when no step qualifies."""
        return self.start is None or self.stop is None

    def describe(self) -> str:
        """``"steps a–b (n steps)"`` or the reason it is empty."""
        if self.empty:
            return f"none: {self.reason}"
        return f"steps {self.start}–{self.stop}"

    def mask(self, steps: ArrayLike) -> np.ndarray:
        """Boolean mask of ``steps`` inside the window."""
        s = np.asarray(steps)
        if self.empty:
            return np.zeros(s.shape, dtype=bool)
        return (s >= self.start) & (s <= self.stop)


def schedule_drift(
    steps: ArrayLike,
    lr: ArrayLike,
    weight_decay: ArrayLike,
    momentum: ArrayLike,
    *,
    dampening: float = 0.0,
    family: str = "sgd",
) -> np.ndarray:
    r"""The quasi-static lag of the norm behind its moving equilibrium target, per step.

    .. math:: \delta_t = \tau_t\,\frac{d}{dt}\ln T_t, \qquad
        T = \frac{\eta}{\lambda(1-\mu)} \ (\text{SGD family: } |w^*|^4 \propto T), \quad
        T = \frac{\eta}{\lambda} \ (\text{AdamW: } |w^*|^2 \propto T)

    (derivative by central differences over the logged steps). The norm relaxes as
    :math:`\dot x = -(x - x^*)/\tau` with x = |w|⁴ (|w|² for AdamW), so a norm that follows its target
    quasi-statically has :math:`x \approx x^*(1 - \delta)`, and then, per step,

    .. math:: \frac{\text{growth}}{\text{shrink}} = \frac{x^*}{x} = \frac{1}{1-\delta}, \qquad
        \Big(\frac{\eta|g|/|w|}{\text{prediction}}\Big)^2 = \frac{x^*}{x} = \frac{1}{1-\delta}.

    δ = 0 at constant hyperparameters and δ < 0 while the lr decays. On Myrtle's schedule a
    mean-field simulation gives Σgrowth/Σshrink = 0.880 over the window against 0.860 from this
    first-order form (and 0.837 from 1 + δ).

    Args:
        steps: logged optimizer steps, increasing, shape ``(n,)``.
        lr: η at those steps.
        weight_decay: λ at those steps.
        momentum: μ at those steps.
        dampening: SGD dampening τ_d.
        family: normwatch's optimizer family.

    Returns:
        δ per step; NaN where η or λ is not positive (no target), and for ``"adam"`` (no τ).

    Example:
        Linear decay η_t = 0.4(100 − t)/100 at t = 50: τ = 1/(4·0.2·0.05) = 25 and d ln η/dt = −1/50.

        >>> t = np.arange(100)
        >>> round(float(schedule_drift(t, 0.4 * (100 - t) / 100, 0.05, 0.0)[50]), 3)
        -0.5
    """
    t = np.asarray(steps, dtype=np.float64)
    eta = np.asarray(lr, dtype=np.float64)
    lam = np.broadcast_to(np.asarray(weight_decay, dtype=np.float64), t.shape)
    mu = np.broadcast_to(np.asarray(momentum, dtype=np.float64), t.shape)
    tau = relaxation_time(eta, lam, mu, dampening, family)
    with np.errstate(divide="ignore", invalid="ignore"):
        target = np.log(eta) - np.log(lam)
        if family not in DECOUPLED:
            target = target - np.log1p(-mu)
        target = np.where((eta > 0) & (lam > 0) & (mu < 1), target, np.nan)
        drift = np.gradient(target, t) if t.size >= 2 else np.full(t.shape, np.nan)
        return np.where(np.isfinite(tau), tau * drift, np.nan)


def equilibrium_window(
    steps: ArrayLike,
    lr: ArrayLike,
    weight_decay: ArrayLike,
    momentum: ArrayLike,
    *,
    dampening: float = 0.0,
    family: str = "sgd",
    k: float = RELAXATION_TIMES,
    margin: float = TRACKING_MARGIN,
) -> Window:
    """Equilibrium window from the logged hyperparameters (see the module docstring).

    Args:
        steps: logged optimizer steps, increasing, shape ``(n,)``.
        lr: η at those steps.
        weight_decay: λ at those steps.
        momentum: μ at those steps.
        dampening: SGD dampening τ_d (scales η in τ).
        family: normwatch's optimizer family, whose own relaxation time sets τ
            (:func:`~normwatch.report.stats.relaxation_time`): decoupled families (AdamW, Muon, ...)
            τ = 1/(2ηλ) with the target |w*|² ∝ η/λ; LARS ((1−μ)/η)²; ``"adam"`` (L2 decay) has no τ
            formula, so its window is empty.
        k: relaxation times to wait after warm-up.
        margin: c in the tracking condition.

    Returns:
        The :class:`Window`; empty, with a reason, when no step qualifies.

    Example:
        >>> w = equilibrium_window(range(100), [0.5] * 100, [0.05] * 100, [0.0] * 100)
        >>> (w.start, w.stop, w.tau_peak)
        (30, 99, 10.0)
    """
    t = np.asarray(steps, dtype=np.float64)
    eta = np.asarray(lr, dtype=np.float64)
    lam = np.broadcast_to(np.asarray(weight_decay, dtype=np.float64), t.shape)
    mu = np.broadcast_to(np.asarray(momentum, dtype=np.float64), t.shape)
    if t.size < 3 or not np.any(eta > 0):
        return Window(None, None, reason="fewer than 3 logged steps with a positive lr")
    peak = int(np.argmax(eta >= (1.0 - PEAK_RTOL) * np.max(eta)))
    tau = relaxation_time(eta, lam, mu, dampening, family)
    if np.isnan(tau).all():
        return Window(None, None, tau_peak=math.nan, reason=f"no relaxation-time formula for family {family!r}")
    tau_peak = float(tau[peak])
    n_c = _n_c(t, eta, lam, mu, peak)
    base = {"peak_step": int(t[peak]), "tau_peak": tau_peak, "n_c": n_c}
    if not np.any(lam > 0):
        return Window(None, None, reason="no weight decay (λ = 0), so there is no equilibrium norm", **base)

    accrued = _accrued(t, tau, peak)
    # The relative slack absorbs float32 rounding of logged hyperparameters (t_peak + kτ exactly).
    ready = np.nonzero((np.arange(t.size) >= peak) & (accrued >= k * (1.0 - 1e-6)))[0]
    if ready.size == 0:
        return Window(
            None,
            None,
            reason=(
                f"only {math.floor(accrued[-1] * 100) / 100:g} of the {k:g} relaxation times needed accrue "
                f"between the end of warm-up (step {int(t[peak])}) and the last logged step ({int(t[-1])}); "
                f"τ = {tau_peak:.4g} steps at the peak lr"
            ),
            **base,
        )
    start = int(ready[0])

    lag = schedule_drift(t, eta, lam, mu, dampening=dampening, family=family)
    tracking = np.isfinite(lag) & (np.abs(lag) <= 1.0 / margin)
    if not tracking[start]:
        return Window(
            None,
            None,
            reason=(
                f"the schedule moves faster than the norm can follow (τ·|d ln η/dt| > 1/{margin:g}) "
                f"by step {int(t[start])}, when {k:g} relaxation times have accrued"
            ),
            **base,
        )
    broken = np.nonzero(~tracking[start:])[0]
    stop = start + int(broken[0]) - 1 if broken.size else t.size - 1
    return Window(int(t[start]), int(t[stop]), **base)


def _accrued(t: np.ndarray, tau: np.ndarray, peak: int) -> np.ndarray:
    """Relaxation times accrued since the peak step, Σ Δt/τ, at each logged step (0 up to the peak)."""
    accrued = np.zeros(t.size)
    accrued[peak + 1 :] = np.cumsum(np.diff(t[peak:]) / tau[peak:-1])
    return accrued


def _n_c(t: np.ndarray, eta: np.ndarray, lam: np.ndarray, mu: np.ndarray, peak: int) -> float | None:
    """n_c = sqrt((1−μ)D/(4η0λ)) when the schedule ends below 5 % of its peak, else None."""
    if eta[-1] > 0.05 * eta[peak] or lam[peak] <= 0:
        return None
    plateau = np.nonzero(eta >= (1.0 - PEAK_RTOL) * eta[peak])[0]
    decay_steps = float(t[-1] - t[plateau[-1]])
    if decay_steps <= 0:
        return None
    return math.sqrt((1.0 - mu[peak]) * decay_steps / (4.0 * eta[peak] * lam[peak]))
