r"""The equilibrium claims for every run, whatever its optimizer: angle ≈ theory and shrink ≈ growth.

The seed's claims (:mod:`normwatch.report.claims`) are about SGD and LARS runs in given roles. These rows
ask the same two questions of each run that logged what they need, by the tags present:

* **angle ≈ theory**: per layer, :math:`\bar\theta / \bar\theta^*` = mean ``angle`` ÷ mean
  ``angle_theory`` over the layer's equilibrium window (normwatch logs ``angle_theory`` for every
  optimizer family its theory covers: SGD, LARS in the seed's form, AdamW, Muon, ...);
* **shrink ≈ growth**: per layer, Σ ``growth`` ÷ Σ ``shrink`` over the window
  (:func:`~normwatch.report.claims.balance_verdict`).

The window is the run's own (:mod:`normwatch.report.window`), from the relaxation time of its family
(:func:`normwatch.theory.relaxation_steps`: SGD (1−μ)/(4ηλ), AdamW and Muon 1/(2ηλ), LARS ((1−μ)/η)²). A run
too short for k of its relaxation times gets "no data", with the window's reason. Each row is judged on the
median over layers with the per-layer spread (:mod:`normwatch.report.uncertainty`).
"""

from __future__ import annotations

import numpy as np

from normwatch.report.analysis import Analysis
from normwatch.report.claims import (
    TOLERANCES,
    Verdict,
    _empty_window_reason,
    _measured,
    _near,
    _no_data,
    _ratio_detail,
    _windowed_per_layer,
    _windows_text,
    balance_verdict,
)
from normwatch.report.runs import Run, align
from normwatch.report.window import Window

__all__ = ["angle_verdict", "balance_verdict", "equilibrium_verdicts"]


def angle_verdict(analysis: Analysis, run: Run) -> Verdict:
    r"""Rotation per step ≈ its optimizer's theory for one run: the median over layers of
    :math:`\sum_{t\in W}\theta_t / \sum_{t\in W}\theta^*_t` (W the layer's window), within ±``TOLERANCES["angle"]``.

    Args:
        analysis: the report's runs and windows (:func:`~normwatch.report.analysis.analyse`).
        run: any run of it.

    Returns:
        The verdict; "no data" (with the reason) where the run logged no ``angle_theory`` or no layer has
        a window.
    """
    claim = f"rotation per step ≈ theory ({run.family})"
    stat = "mean angle ÷ mean angle_theory over the window"
    tol = TOLERANCES["angle"]
    tol_s = f"±{tol:.0%}"
    layers = run.layers_with("angle", "angle_theory")
    if not layers:
        return _no_data(claim, stat, "1", tol_s, f"run {run.name} logged no angle_theory (no formula for family "
                        f"{run.family} or its variant)", run.name)

    def ratio(layer: str, win: Window) -> float | None:
        a, b = run.series("angle", layer), run.series("angle_theory", layer)
        assert a is not None and b is not None
        steps, measured, predicted = align(a, b)
        m = win.mask(steps)
        total = float(np.sum(predicted[m])) if m.any() else 0.0
        return float(np.sum(measured[m])) / total if total > 0 else None

    per_layer = _windowed_per_layer(analysis, run, layers, ratio)
    if not per_layer:
        return _no_data(claim, stat, "1", tol_s, _empty_window_reason(analysis, run, layers), run.name)
    interval, measured = _measured(per_layer, lambda _, v: abs(v - 1) <= tol)
    return _near(claim, stat, run.name, _windows_text(analysis, run, list(per_layer)), "1 (logged angle_theory)",
                 measured, tol_s, interval, 1.0, tol, _ratio_detail(interval.value, 1.0), per_layer)


def equilibrium_verdicts(analysis: Analysis) -> list[Verdict]:
    """For every run with normwatch scalars, in the analysis's order: its angle row where it logged
    ``angle_theory``, and its balance row where it logged ``shrink`` and ``growth``."""
    rows: list[Verdict] = []
    for run in analysis.runs:
        if not run.has_normwatch:
            continue
        if run.layers_with("angle", "angle_theory"):
            rows.append(angle_verdict(analysis, run))
        if run.layers_with("shrink", "growth"):
            rows.append(balance_verdict(analysis, run))
    return rows
