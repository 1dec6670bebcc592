"""Runs, their roles and their equilibrium windows: what the figures and the verdicts share."""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from normwatch.report.roles import Roles, pick_roles
from normwatch.report.runs import Run, Series
from normwatch.report.window import Window, equilibrium_window, schedule_drift

#: Families without a relaxation time from η, λ, μ alone, so without an equilibrium window, and why.
#: Adam with L2 decay relaxes in ≈ σ*/(3ηλ) steps, σ* the equilibrium gradient RMS
#: (:func:`~normwatch.report.stats.relaxation_time`). Every other family gets the window of its own
#: relaxation time (LARS: ((1−μ)/η)², of |w|²; AdamW, Muon: 1/(2ηλ)), or one that says it has none.
NO_RELAXATION_TIME = {
    "adam": "no relaxation-time formula for Adam with L2 weight decay: it depends on the gradient RMS, "
    "not on η, λ alone (AdamW's 1/(2ηλ) does not apply)",
}


@dataclass
class Analysis:
    """The inputs of one report.

    Attributes:
        runs: every run read.
        roles: which run plays which part (see :func:`~normwatch.report.roles.pick_roles`).
        windows: ``windows[run.name][layer]``, the equilibrium window of each layer.
        lags: ``lags[run.name][layer]``, the quasi-static lag δ = τ·d ln(target)/dt per logged step
            (:func:`~normwatch.report.window.schedule_drift`).
    """

    runs: list[Run]
    roles: Roles
    windows: dict[str, dict[str, Window]] = field(default_factory=dict)
    lags: dict[str, dict[str, Series]] = field(default_factory=dict)

    def window(self, run: Run, layer: str) -> Window:
        """The layer's window (empty, with a reason, when its hyperparameters are unknown)."""
        return self.windows.get(run.name, {}).get(layer) or Window(
            None, None, reason=f"no lr / weight decay / momentum logged for {layer}"
        )

    def lag(self, run: Run, layer: str) -> Series | None:
        """The layer's δ per logged step, ``None`` when its hyperparameters are unknown."""
        return self.lags.get(run.name, {}).get(layer)

    def run_window(self, run: Run) -> Window:
        """The window most of the run's layers share (the one figures shade)."""
        per_layer = list(self.windows.get(run.name, {}).values())
        if not per_layer:
            return Window(None, None, reason="no lr / weight decay / momentum logged")
        return Counter(per_layer).most_common(1)[0][0]


def layer_windows(run: Run) -> tuple[dict[str, Window], dict[str, Series]]:
    """Each layer's :func:`~normwatch.report.window.equilibrium_window` and lag δ.

    Layers of one param group log identical hyperparameters, so each distinct schedule is
    computed once.
    """
    windows: dict[str, Window] = {}
    lags: dict[str, Series] = {}
    if run.family in NO_RELAXATION_TIME:
        reason = NO_RELAXATION_TIME[run.family]
        return {layer: Window(None, None, tau_peak=math.nan, reason=reason) for layer in run.layers}, lags
    cache: dict[bytes, tuple[Window, Series]] = {}
    for layer in run.layers:
        hyper = run.hyper(layer)
        if hyper is None:
            continue
        lr, wd, mom = hyper
        key = b"".join(np.ascontiguousarray(a).tobytes() for a in (lr.steps, lr.values, wd.values, mom.values))
        if key not in cache:
            args = (lr.steps, lr.values, wd.values, mom.values)
            window = equilibrium_window(*args, dampening=run.dampening, family=run.family)
            lag = schedule_drift(*args, dampening=run.dampening, family=run.family)
            cache[key] = (window, Series(lr.steps, lag))
        windows[layer], lags[layer] = cache[key]
    return windows, lags


def analyse(runs: Sequence[Run]) -> Analysis:
    """Assign roles and compute every layer's window and lag."""
    analysis = Analysis(runs=list(runs), roles=pick_roles(runs))
    for run in runs:
        if run.has_normwatch:
            analysis.windows[run.name], analysis.lags[run.name] = layer_windows(run)
    return analysis
