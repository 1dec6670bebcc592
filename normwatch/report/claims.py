r"""One verdict per claim of the seed, measured on the logged scalars.

Each claim is tested per layer; a claim *holds* when the median layer is within tolerance (the
table also says how many layers are, and the range). Equilibrium claims use each layer's
equilibrium window (:mod:`normwatch.report.window`). The statistics:

============================  =================================================================
claim                         statistic (per layer, then the median over layers)
============================  =================================================================
w·g ≈ 0                       mean over all logged steps of \|cos(w, g)\|
shrink ≈ growth               Σ growth / Σ shrink over the window
η\|g\|/\|w\| ≈ √(2ηλ)          RMS over the window of (η\|g\|/\|w\|) / prediction, μ = 0 run
η\|g\|/\|w\| ≈ √(2ηλ(1−μ))      the same on the momentum run
grad_autocorr ≈ 0             mean over the window of cos(g_t, v_{t−1})
LARS ≈ SGD, accuracy          final test/acc of the LARS run − that of the SGD run
LARS ≈ SGD, dynamics          mean rotation per step over the SGD run's window, LARS ÷ SGD
best peak lr ≈ same           best peak lr (mean test accuracy over seeds) per architecture,
                              largest ÷ smallest
============================  =================================================================

The prediction for η|g|/|w| is normwatch's logged ``lars_theory`` when present (normwatch's
stationary value, the seed's formula up to a relative O(ηλ)), else
:func:`~normwatch.report.stats.seed_lars_prediction` from the logged lr, weight decay and
momentum. Equilibrium balances *means*, so the RMS of η|g|/|w| is what it predicts.

While the lr decays, an equilibrium norm trails its shrinking target: per step growth/shrink and
(η|g|/|w| ÷ prediction)² would be 1/(1 − δ) with δ = τ·d ln η/dt < 0 if the scale-free gradient
norm G stayed constant (:func:`~normwatch.report.window.schedule_drift`). The verdicts test the
seed's prediction, 1, and print this lr-only estimate next to it (Σ shrink/(1 − δ) / Σ shrink and
√mean(1/(1 − δ)) over the window) as context, not as the target: on real runs G drifts too and
partly cancels it (a 1200-step CIFAR run measured Σgrowth/Σshrink = 0.999 where the lr alone
predicts 0.962).
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from normwatch import theory
from normwatch.report.analysis import Analysis
from normwatch.report.runs import Run, Series, align
from normwatch.report.stats import rms, seed_lars_prediction
from normwatch.report.uncertainty import (
    Interval,
    Outcome,
    Z,
    accuracy_interval,
    clearly_apart,
    difference,
    judge_at_most,
    judge_near,
    layer_interval,
)
from normwatch.report.window import Window

#: Tolerances, fixed before looking at any study's numbers. ``cos_wg``: the largest mean
#: |cos(w, g)| still called orthogonal (a random direction in a 576-element conv filter bank
#: has |cos| ≈ 0.03; BN's ε makes exact zero impossible). ``balance``: Σgrowth/Σshrink within
#: ±10 % (a 20 % drift of |w|² over a window of 4 relaxation times moves it by ~5 %).
#: ``lars``: RMS ratio within ±15 % (the seed itself notes a larger discrepancy with momentum).
#: ``autocorr``: |mean cos(g_t, v_{t−1})| ≤ 0.1. ``lars_acc``: final accuracies within one
#: percentage point. ``lars_angle``: rotation ratio within ±15 %. ``best_lr``: best peak lrs
#: within a factor 2 of each other (one step of a doubling grid). ``angle``: a run's mean rotation per step
#: within ±15 % of its optimizer's theory (:mod:`normwatch.report.equilibrium`; as ``lars_angle``).
TOLERANCES: dict[str, float] = {
    "cos_wg": 0.01,
    "balance": 0.10,
    "lars": 0.15,
    "autocorr": 0.10,
    "lars_acc": 0.01,
    "lars_angle": 0.15,
    "best_lr": 2.0,
    "angle": 0.15,
}


@dataclass(frozen=True)
class Verdict:
    """One row of the verdict table.

    Attributes:
        claim: the seed's claim, in words.
        statistic: what was measured.
        run: the run(s) measured (``"—"`` when none fits).
        window: the steps measured on, or why there are none.
        prediction: the predicted value, with its formula.
        measured: the measured value with its spread over layers (``"—"`` with no data).
        tolerance: the tolerance used.
        outcome: ``"holds"``, ``"does not hold"``, ``"inconclusive"`` (the interval straddles the
            tolerance: the data cannot decide) or ``"no data"``.
        detail: by how much the prediction is missed, why it is inconclusive, or which run would be needed.
        value: the headline number (the median over layers), ``None`` with no data.
        expected: the predicted value of ``value`` (``None`` with no data).
        per_layer: the per-layer statistic.
        low: the lower end of ``value``'s interval (:mod:`normwatch.report.uncertainty`), ``None`` with no data.
        high: its upper end.
        se: ``value``'s standard error, ``None`` where none could be estimated.
    """

    claim: str
    statistic: str
    run: str
    window: str
    prediction: str
    measured: str
    tolerance: str
    outcome: Outcome
    detail: str = ""
    value: float | None = None
    expected: float | None = None
    per_layer: dict[str, float] = field(default_factory=dict)
    low: float | None = None
    high: float | None = None
    se: float | None = None

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict."""
        return asdict(self)


def _no_data(claim: str, statistic: str, prediction: str, tolerance: str, why: str, run: str = "—") -> Verdict:
    return Verdict(claim, statistic, run, "—", prediction, "—", tolerance, "no data", why)


def _fmt(x: float) -> str:
    return f"{x:.3g}"


def _measured(per_layer: dict[str, float], ok: Callable[[str, float], bool]) -> tuple[Interval, str]:
    """The median over layers with its interval (:func:`~normwatch.report.uncertainty.layer_interval`)
    and the measured column's text."""
    values = np.array(list(per_layer.values()))
    interval = layer_interval(values)
    if len(values) == 1:
        return interval, f"{_fmt(interval.value)} ({next(iter(per_layer))})"
    inside = sum(ok(layer, v) for layer, v in per_layer.items())
    return interval, (
        f"{interval.text()} (median of {len(values)} layers; range {_fmt(values.min())}–{_fmt(values.max())}; "
        f"{inside}/{len(values)} within tolerance)"
    )


def _straddles(interval: Interval, lo: float, hi: float) -> str:
    return (f"the interval [{_fmt(interval.low)}, {_fmt(interval.high)}] straddles an edge of "
            f"[{_fmt(lo)}, {_fmt(hi)}]: the data cannot decide")


def _windows_text(analysis: Analysis, run: Run, layers: list[str]) -> str:
    wins = {analysis.window(run, layer) for layer in layers}
    if len(wins) == 1:
        win = next(iter(wins))
        return win.describe()
    spans = [w for w in wins if not w.empty]
    return (
        f"per layer, steps {min(w.start for w in spans)}–{max(w.stop for w in spans)}"  # type: ignore[type-var]
        if spans
        else "none"
    )


def _empty_window_reason(analysis: Analysis, run: Run, layers: list[str]) -> str:
    reasons = {analysis.window(run, layer).reason for layer in layers}
    return f"no equilibrium window in run {run.name}: " + "; ".join(sorted(reasons))


def _ratio_detail(value: float, target: float) -> str:
    return f"{(value / target - 1) * 100:+.0f}% vs prediction"


def _judged(claim: str, statistic: str, run: str, window: str, prediction: str, measured: str, tolerance: str,
            outcome: Outcome, detail: str, interval: Interval, expected: float,
            per_layer: dict[str, float] | None = None) -> Verdict:
    """A verdict with data, its outcome read from ``interval`` by the caller."""
    return Verdict(claim, statistic, run, window, prediction, measured, tolerance, outcome, detail,
                   interval.value, expected, per_layer or {}, interval.low, interval.high, interval.se)


def _near(claim: str, statistic: str, run: str, window: str, prediction: str, measured: str, tolerance: str,
          interval: Interval, target: float, tol: float, miss: str,
          per_layer: dict[str, float] | None = None) -> Verdict:
    """A verdict for "value ≈ target within ±tol" read from ``interval``; ``miss`` is the detail of a failure."""
    outcome = judge_near(interval, target, tol)
    detail = {"holds": "", "does not hold": miss}.get(outcome) or _straddles(interval, target - tol, target + tol)
    return _judged(claim, statistic, run, window, prediction, measured, tolerance, outcome, detail, interval,
                   target, per_layer)


# ---------------------------------------------------------------------------------- claims
def claim_orthogonal(analysis: Analysis) -> Verdict:
    """w·g ≈ 0 for scale-invariant layers: median over layers of mean |cos(w, g)|."""
    claim, stat, pred = "w·g ≈ 0 for scale-invariant layers", "mean |cos(w, g)| over all steps", "0"
    tol = TOLERANCES["cos_wg"]
    tol_s = f"≤ {tol:g}"
    candidates = [analysis.roles.primary, *analysis.runs]
    run = next((r for r in candidates if r is not None and r.layers_with("cos_wg")), None)
    if run is None:
        return _no_data(claim, stat, pred, tol_s, "no run logged cos_wg")
    per_layer = {
        layer: float(np.mean(np.abs(s.values)))
        for layer in run.layers_with("cos_wg")
        if (s := run.series("cos_wg", layer)) is not None
    }
    interval, measured = _measured(per_layer, lambda _, v: v <= tol)
    outcome = judge_at_most(interval, tol)
    detail = {"holds": "", "does not hold": f"{interval.value / tol:.1f}× the tolerance"}.get(outcome)
    return _judged(claim, stat, run.name, "all logged steps", pred, measured, tol_s, outcome,
                   _straddles(interval, 0.0, tol) if detail is None else detail, interval, 0.0, per_layer)


def _windowed_per_layer(
    analysis: Analysis, run: Run, layers: list[str], fn: Callable[[str, Window], float | None]
) -> dict[str, float]:
    out: dict[str, float] = {}
    for layer in layers:
        win = analysis.window(run, layer)
        if win.empty:
            continue
        value = fn(layer, win)
        if value is not None and math.isfinite(value):
            out[layer] = value
    return out


def _on_steps(series: Series | None, steps: np.ndarray) -> np.ndarray:
    """``series`` read at ``steps`` (NaN where it was not logged)."""
    out = np.full(steps.shape, np.nan)
    if series is not None:
        _, idx_out, idx_series = np.intersect1d(steps, series.steps, assume_unique=True, return_indices=True)
        out[idx_out] = series.values[idx_series]
    return out


def _drift_text(drifted: float) -> str:
    if abs(drifted - 1.0) < 0.005:
        return "1"
    return f"1 (the lr's drift alone, at constant G, would make it {_fmt(drifted)} on this window)"


def _ratio_verdict(
    claim: str,
    stat: str,
    run: Run,
    analysis: Analysis,
    per_layer: dict[str, float],
    drifted: dict[str, float],
    tolerance: str,
    prediction_suffix: str = "",
) -> Verdict:
    """Verdict for a ratio predicted to be 1; ``drifted`` is the lr-drift estimate shown as context."""
    tol = TOLERANCES[tolerance]
    interval, measured = _measured(per_layer, lambda _, v: abs(v - 1) <= tol)
    return _near(claim, stat, run.name, _windows_text(analysis, run, list(per_layer)),
                 _drift_text(float(np.median(list(drifted.values())))) + prediction_suffix, measured, f"±{tol:.0%}",
                 interval, 1.0, tol, _ratio_detail(interval.value, 1.0), per_layer)


def claim_balance(analysis: Analysis) -> Verdict:
    """shrink ≈ growth in equilibrium, on the primary run (:func:`balance_verdict`)."""
    return balance_verdict(analysis, analysis.roles.primary)


def balance_verdict(analysis: Analysis, run: Run | None) -> Verdict:
    """shrink ≈ growth in equilibrium for one run of any optimizer whose split normwatch logged: median over
    layers of Σgrowth/Σshrink over each layer's window (the run's family's own relaxation time)."""
    claim, stat = "shrink ≈ growth in equilibrium", "Σ growth / Σ shrink over the window"
    pred, tol_s = "1", f"±{TOLERANCES['balance']:.0%}"
    if run is None:
        return _no_data(claim, stat, pred, tol_s, "no run with normwatch scalars")
    layers = run.layers_with("shrink", "growth")
    if not layers:
        why = (
            f"run {run.name} logged no shrink/growth (normwatch cannot split the update of its optimizer, "
            f"family {run.family})"
        )
        return _no_data(claim, stat, pred, tol_s, why, run.name)
    drifted: dict[str, float] = {}

    def ratio(layer: str, win: Window) -> float | None:
        steps, s, g = align(run.series("shrink", layer), run.series("growth", layer))  # type: ignore[arg-type]
        m = win.mask(steps)
        total = float(np.sum(s[m]))
        if not m.any() or total == 0:
            return None
        lag = np.nan_to_num(_on_steps(analysis.lag(run, layer), steps[m]))
        drifted[layer] = float(np.sum(s[m] / (1.0 - lag))) / total
        return float(np.sum(g[m])) / total

    per_layer = _windowed_per_layer(analysis, run, layers, ratio)
    if not per_layer:
        return _no_data(claim, stat, pred, tol_s, _empty_window_reason(analysis, run, layers), run.name)
    return _ratio_verdict(claim, stat, run, analysis, per_layer, drifted, "balance")


def _lars_prediction(run: Run, layer: str) -> tuple[Series, str] | None:
    theory = run.series("lars_theory", layer)
    if theory is not None:
        return theory, "logged lars_theory"
    hyper = run.hyper(layer)
    if hyper is None:
        return None
    lr, wd, mom = hyper
    pred = seed_lars_prediction(lr.values, wd.values, mom.values, run.dampening)
    return Series(lr.steps, pred), "from logged lr, weight decay, momentum"


def claim_lars_ratio(analysis: Analysis, momentum: bool) -> Verdict:
    """η|g|/|w| ≈ √(2ηλ(1−μ)): median over layers of the windowed RMS of ratio / prediction."""
    formula = "√(2ηλ(1−μ))" if momentum else "√(2ηλ)"
    claim = f"η|g|/|w| ≈ {formula} " + ("with momentum" if momentum else "without momentum")
    stat = f"RMS over the window of (η|g|/|w|) ÷ {formula}"
    tol_s = f"±{TOLERANCES['lars']:.0%}"
    run = analysis.roles.sgdm if momentum else analysis.roles.sgd
    if run is None:
        need = (
            "an SGD run with momentum > 0 (the demo's runs/<study>/sgdm)"
            if momentum
            else "an SGD run with momentum 0 (the demo's runs/<study>/sgd)"
        )
        return _no_data(claim, stat, "1", tol_s, f"needs {need}")
    layers = run.layers_with("lars_ratio")
    if not layers:
        return _no_data(claim, stat, "1", tol_s, f"run {run.name} logged no lars_ratio", run.name)
    sources: set[str] = set()
    peak_values: list[float] = []
    drifted: dict[str, float] = {}

    def ratio(layer: str, win: Window) -> float | None:
        got = _lars_prediction(run, layer)
        lars = run.series("lars_ratio", layer)
        if got is None or lars is None:
            return None
        theory, source = got
        steps, measured, predicted = align(lars, theory)
        m = win.mask(steps) & (predicted > 0)
        if not m.any():
            return None
        sources.add(source)
        if win.peak_step is not None and np.any(steps >= win.peak_step):
            peak_values.append(float(predicted[steps >= win.peak_step][0]))
        lag = np.nan_to_num(_on_steps(analysis.lag(run, layer), steps[m]))
        drifted[layer] = math.sqrt(float(np.mean(1.0 / (1.0 - lag))))
        return rms(measured[m] / predicted[m])

    per_layer = _windowed_per_layer(analysis, run, layers, ratio)
    if not per_layer:
        return _no_data(claim, stat, "1", tol_s, _empty_window_reason(analysis, run, layers), run.name)
    suffix = f"; {formula} = {_fmt(float(np.median(peak_values)))} at the peak lr" if peak_values else ""
    suffix += f" ({', '.join(sorted(sources))})"
    return _ratio_verdict(claim, stat, run, analysis, per_layer, drifted, "lars", suffix)


def claim_autocorr(analysis: Analysis) -> Verdict:
    """Successive gradients nearly orthogonal: median over layers of the windowed mean grad_autocorr."""
    claim = "gradients of successive batches nearly orthogonal"
    stat = "mean over the window of cos(g_t, v_{t−1})"
    pred, tol = "0", TOLERANCES["autocorr"]
    tol_s = f"|·| ≤ {tol:g}"
    candidates = [analysis.roles.primary, *analysis.runs]
    run = next((r for r in candidates if r is not None and r.layers_with("grad_autocorr")), None)
    if run is None:
        return _no_data(claim, stat, pred, tol_s, "no run logged grad_autocorr")
    layers = run.layers_with("grad_autocorr")

    def mean(layer: str, win: Window) -> float | None:
        s = run.series("grad_autocorr", layer)
        assert s is not None
        m = win.mask(s.steps)
        return float(np.mean(s.values[m])) if m.any() else None

    per_layer = _windowed_per_layer(analysis, run, layers, mean)
    window = _windows_text(analysis, run, list(per_layer)) if per_layer else ""
    if not per_layer:
        # No equilibrium window (e.g. no weight decay): orthogonality is still testable.
        per_layer = {layer: float(np.mean(s.values)) for layer in layers if (s := run.series("grad_autocorr", layer))}
        window = "all logged steps (" + _empty_window_reason(analysis, run, layers) + ")"
    interval, measured = _measured(per_layer, lambda _, v: abs(v) <= tol)
    return _near(claim, stat, run.name, window, pred, measured, tol_s, interval, 0.0, tol,
                 f"{abs(interval.value) - tol:.2g} beyond the tolerance", per_layer)


def _lars_pair(analysis: Analysis) -> tuple[Run, Run] | str:
    """The LARS run and the SGD run to compare it with: the closest momentum, then the same momentum form
    (Nesterov or heavy ball) where both exist."""
    roles = analysis.roles
    if roles.lars is None:
        return "needs a LARS run (the demo's runs/<study>/lars)"
    refs = [r for r in (roles.sgdm, roles.sgd) if r is not None]
    if not refs:
        return "needs an SGD run to compare the LARS run with"
    lars = roles.lars
    mu = lars.momentum or 0.0
    ref = min(refs, key=lambda r: (abs((r.momentum or 0.0) - mu), r.nesterov != lars.nesterov))
    return lars, ref


def _form(run: Run) -> str:
    return "Nesterov" if run.nesterov and (run.momentum or 0) > 0 else "heavy ball"


def _lars_prescription(lars: Run, ref: Run) -> str:
    """η_LARS actually used (the invariant layers' logged peak lr) vs the seed's √(2ηλ(1−μ)) from
    the SGD run's peak hyperparameters."""
    used = [float(np.max(s.values)) for layer in lars.layers if (s := lars.series("lr", layer)) is not None]
    peak = float(np.median(used)) if used else lars.peak_lr
    text = f"η_LARS = {_fmt(peak)} at its peak" if peak is not None else "η_LARS unknown"
    hyper = _peak_hyper(ref)
    if hyper is not None:
        seed = float(seed_lars_prediction(*hyper))
        text += f"; the seed's √(2ηλ(1−μ)) from {ref.name} = {_fmt(seed)}"
    return text


def _peak_hyper(run: Run) -> tuple[float, float, float] | None:
    """(η, λ, μ) of the run's first invariant layer at its peak lr, or None."""
    layers = run.layers
    hyper = run.hyper(layers[0]) if layers else None
    if hyper is None:
        return None
    lr, wd, mom = hyper
    i = int(np.argmax(lr.values))
    return float(lr.values[i]), float(wd.values[i]), float(mom.values[i])


def variant_factor(lars: Run, ref: Run) -> float:
    r"""The rotation per step that theory expects of the LARS run over that of the SGD run, from their
    momentum forms alone: :math:`\theta_{SGD}(\eta,\lambda,\mu;\ \text{LARS's form}) /
    \theta_{SGD}(\eta,\lambda,\mu;\ \text{SGD's form})` at the SGD run's peak hyperparameters
    (:func:`normwatch.theory.sgd_angle`; LARS in equilibrium takes the steps of SGD of its own form).
    1 when the forms match; heavy ball over Nesterov is ≈ 0.86 at μ = 0.9.
    """
    hyper = _peak_hyper(ref)
    if hyper is None or lars.nesterov == ref.nesterov or hyper[2] == 0:
        return 1.0
    try:
        own = theory.sgd_angle(*hyper, nesterov=lars.nesterov)
        other = theory.sgd_angle(*hyper, nesterov=ref.nesterov)
    except ValueError:
        return 1.0
    return own / other


def _fraction(acc: float, percent: bool) -> float:
    return acc / 100.0 if percent else acc


def claim_lars_accuracy(analysis: Analysis) -> Verdict:
    """LARS trains like SGD (accuracy): final test accuracy, LARS − SGD, with the binomial interval of the
    difference (:mod:`normwatch.report.uncertainty`)."""
    claim = "LARS with η_LARS = √(2ηλ(1−μ)) trains like SGD: accuracy"
    stat, tol = "final test/acc, LARS − SGD", TOLERANCES["lars_acc"]
    tol_s = "±1 percentage point"
    pair = _lars_pair(analysis)
    if isinstance(pair, str):
        return _no_data(claim, stat, "0", tol_s, pair)
    lars, ref = pair
    a_lars, a_ref = lars.final_test_acc, ref.final_test_acc
    runs = f"{lars.name} vs {ref.name}"
    pred = "0 (" + _lars_prescription(lars, ref) + ")"
    if lars.nesterov != ref.nesterov:
        pred += f"; not like with like: {lars.name} has {_form(lars)} momentum, {ref.name} {_form(ref)}"
    if a_lars is None or a_ref is None:
        missing = lars.name if a_lars is None else ref.name
        return _no_data(claim, stat, pred, tol_s, f"run {missing} logged no test/acc", runs)
    percent = max(a_lars, a_ref) > 1.0
    diff = difference(accuracy_interval([_fraction(a_lars, percent)], lars.test_images),
                      accuracy_interval([_fraction(a_ref, percent)], ref.test_images))
    measured = f"{diff.text()} ({_fmt(_fraction(a_lars, percent))} vs {_fmt(_fraction(a_ref, percent))})"
    return _near(claim, stat, runs, "final logged step", pred, measured, tol_s, diff, 0.0, tol,
                 f"{abs(diff.value) * 100:.2g} percentage points apart")


def claim_lars_dynamics(analysis: Analysis) -> Verdict:
    """LARS trains like SGD (dynamics): rotation per step, LARS ÷ SGD, over the SGD run's window; the
    prediction is :func:`variant_factor` (1 for matching momentum forms)."""
    claim = "LARS with η_LARS = √(2ηλ(1−μ)) trains like SGD: dynamics"
    stat = "mean rotation per step (angle) over the SGD run's window, LARS ÷ SGD"
    tol = TOLERANCES["lars_angle"]
    tol_s = f"±{tol:.0%}"
    pair = _lars_pair(analysis)
    if isinstance(pair, str):
        return _no_data(claim, stat, "1", tol_s, pair)
    lars, ref = pair
    runs = f"{lars.name} vs {ref.name}"
    factor = variant_factor(lars, ref)
    pred = f"{_fmt(factor)} (" + _lars_prescription(lars, ref)
    if lars.nesterov != ref.nesterov:
        pred += (f"; {_form(lars)} LARS vs {_form(ref)} SGD: theory's θ ratio of the two momentum forms, "
                 f"normwatch.theory.sgd_angle")
    pred += ")"
    layers = [layer for layer in ref.layers_with("angle") if lars.series("angle", layer) is not None]
    if not layers:
        return _no_data(claim, stat, pred, tol_s, "the two runs share no layer that logged angle", runs)

    def ratio(layer: str, win: Window) -> float | None:
        a, b = lars.series("angle", layer), ref.series("angle", layer)
        assert a is not None and b is not None
        steps, va, vb = align(a, b)
        m = win.mask(steps)
        denom = float(np.mean(vb[m])) if m.any() else 0.0
        return float(np.mean(va[m])) / denom if denom > 0 else None

    per_layer = _windowed_per_layer(analysis, ref, layers, ratio)
    if not per_layer:
        return _no_data(claim, stat, pred, tol_s, _empty_window_reason(analysis, ref, layers), runs)
    interval, measured = _measured(per_layer, lambda _, v: abs(v / factor - 1) <= tol)
    return _near(claim, stat, runs, _windows_text(analysis, ref, list(per_layer)) + f" of {ref.name}", pred,
                 measured, tol_s + " of the prediction", interval, factor, tol * factor,
                 _ratio_detail(interval.value, factor), per_layer)


def sweep_table(runs: list[Run]) -> dict[str, dict[float, list[float]]]:
    """``table[arch][peak_lr]`` = final test accuracies (one per seed) of a sweep's runs."""
    table: dict[str, dict[float, list[float]]] = defaultdict(lambda: defaultdict(list))
    for run in runs:
        if run.peak_lr is not None and run.final_test_acc is not None:
            table[run.arch or "(unnamed)"][run.peak_lr].append(run.final_test_acc)
    return {arch: dict(per_lr) for arch, per_lr in table.items()}


def best_lrs(table: dict[str, dict[float, list[float]]]) -> dict[str, float]:
    """Per architecture, the peak lr with the highest mean accuracy over seeds."""
    return {arch: max(per_lr, key=lambda lr: float(np.mean(per_lr[lr]))) for arch, per_lr in table.items()}


def candidate_best_lrs(table: dict[str, dict[float, list[float]]], test_images: int | None) -> dict[str, list[float]]:
    """Per architecture, the peak lrs whose mean accuracy is not clearly below the best one's: the best lr
    and every lr whose difference from it lies within Z standard errors
    (:func:`~normwatch.report.uncertainty.clearly_apart`, seeds' spread and binomial error on
    ``test_images``)."""
    out: dict[str, list[float]] = {}
    for arch, per_lr in table.items():
        intervals = {lr: accuracy_interval(accs, test_images) for lr, accs in per_lr.items()}
        best = max(intervals, key=lambda lr: intervals[lr].value)
        out[arch] = sorted(lr for lr, iv in intervals.items() if lr == best or not clearly_apart(intervals[best], iv))
    return out


def claim_best_lr(analysis: Analysis) -> Verdict:
    """The best peak lr is about the same across architectures: largest ÷ smallest best lr, noise-aware.

    holds: every candidate best lr of every architecture (:func:`candidate_best_lrs`) lies within the
    factor; does not hold: two architectures' candidate sets are further apart than the factor;
    inconclusive otherwise (the accuracies at the candidates are within noise)."""
    claim = "the best peak learning rate is about the same across architectures"
    stat = "best peak lr per architecture (mean test accuracy over seeds), largest ÷ smallest"
    tol = TOLERANCES["best_lr"]
    tol_s = f"≤ {tol:g}×"
    sweep = analysis.roles.sweep
    if not sweep:
        return _no_data(
            claim,
            stat,
            "1",
            tol_s,
            "needs a learning-rate sweep (the demo's runs/<study>/sweep/<arch>-lr<peak>-s<seed>)",
        )
    table = {a: t for a, t in sweep_table(sweep).items() if len(t) >= 2}
    if len(table) < 2:
        return _no_data(
            claim,
            stat,
            "1",
            tol_s,
            "needs a sweep over at least 2 architectures with at least 2 peak lrs each",
            f"{len(sweep)} sweep runs",
        )
    sizes = {r.test_images for r in sweep if r.test_images}
    n = min(sizes) if sizes else None
    if any(acc > 1.0 for per_lr in table.values() for accs in per_lr.values() for acc in accs):
        table = {a: {lr: [x / 100.0 for x in accs] for lr, accs in t.items()} for a, t in table.items()}
    best = best_lrs(table)
    cands = candidate_best_lrs(table, n)
    value = max(best.values()) / min(best.values())
    widest = max(max(c) for c in cands.values()) / min(min(c) for c in cands.values())
    closest = max(min(c) for c in cands.values()) / min(max(c) for c in cands.values())
    outcome: Outcome = "holds" if widest <= tol else "does not hold" if closest > tol else "inconclusive"
    measured = f"{_fmt(value)} (" + ", ".join(f"{a}: {_fmt(lr)}" for a, lr in sorted(best.items())) + ")"
    if any(len(c) > 1 for c in cands.values()):
        measured += "; within noise of the best: " + ", ".join(
            f"{a}: {'/'.join(_fmt(x) for x in c)}" for a, c in sorted(cands.items()))
    noise = f"seeds' spread and binomial error on n = {n}" if n else "seeds' spread (test-set size unknown)"
    details = {
        "holds": "",
        "does not hold": f"best lrs differ by {_fmt(value)}×"
        + (f" (at least {_fmt(closest)}× within noise)" if closest < value else ""),
        "inconclusive": (f"best lrs differ by {_fmt(value)}×, but accuracies within noise ({noise}, ±{Z:g} SE) "
                         f"of each best span {_fmt(closest)}–{_fmt(widest)}×"),
    }
    return Verdict(claim, stat, f"{len(sweep)} sweep runs", "final logged step", "1", measured, tol_s, outcome,
                   details[outcome], value, 1.0, best, closest, widest, None)


def evaluate(analysis: Analysis) -> list[Verdict]:
    """Every claim's verdict, in the seed's order (the LM study's claims for its runs: :mod:`.lm`)."""
    from normwatch.report.lm import evaluate_lm  # lm imports Verdict from here
    if lm_rows := evaluate_lm(analysis):
        return lm_rows
    return [
        claim_orthogonal(analysis),
        claim_balance(analysis),
        claim_lars_ratio(analysis, momentum=False),
        claim_lars_ratio(analysis, momentum=True),
        claim_autocorr(analysis),
        claim_lars_accuracy(analysis),
        claim_lars_dynamics(analysis),
        claim_best_lr(analysis),
    ]
