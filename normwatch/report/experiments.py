r"""Verdicts on the demo's parts beyond the seed's study (issue 17): eqinit, large-batch and smooth.

Runs are grouped by what the demo's ``config.json`` says of them (``part``, ``optimizer``, ``init``,
``batch_size``, ``grad_norm_beta``; one run per seed). Each row compares two groups and reads the
difference's interval (:mod:`normwatch.report.uncertainty`; the mean over seeds with its spread, and for
accuracies the binomial error on the logged test-set size): **holds** when it lies above 0, **does not
hold** when below, **inconclusive** when it contains 0.

* eqinit: the steps a run takes until η|g|/|w| settles within ±10 % of normwatch's ``lars_theory``
  (:func:`settle_step`; for LARS, whose trust ratio sets η|g|/|w| to its theory from the first step, its
  rotation per step against ``angle_theory``), default init − equilibrium init; and the test accuracy,
  equilibrium − default.
* large-batch, per batch size: test accuracy LARS − SGD, and SGD with equilibrium init − SGD; then whether
  LARS clearly wins at some batch size.
* smooth: test accuracy of LARS with |g| averaged over batches − plain LARS.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Sequence

import numpy as np

from normwatch.report.analysis import Analysis
from normwatch.report.claims import Verdict
from normwatch.report.runs import Run, align
from normwatch.report.stats import moving_average, smoothing_window
from normwatch.report.uncertainty import (
    Interval,
    Outcome,
    Z,
    accuracy_interval,
    difference,
    judge_greater,
    mean_se,
)

#: η|g|/|w| has settled when the median layer's smoothed ratio to lars_theory is within this fraction of 1 ...
SETTLE_TOL = 0.10
#: ... and stays there for this fraction of the run's logged steps (a passing crossing does not count).
SETTLE_HOLD = 0.10

__all__ = ["SETTLE_TOL", "experiment_verdicts", "settle_step"]


def settle_pair(run: Run) -> tuple[str, str]:
    """The measured metric and its theory that :func:`settle_step` compares: (lars_ratio, lars_theory), or for
    LARS, whose trust ratio makes lars_ratio equal lars_theory at every step, (angle, angle_theory)."""
    return ("angle", "angle_theory") if run.family == "lars" else ("lars_ratio", "lars_theory")


def settle_step(run: Run) -> int | None:
    r"""The first logged step t from which :math:`|\mathrm{median}_l\,\overline{r_l} - 1| \le` SETTLE_TOL holds on
    the next ⌈SETTLE_HOLD·n⌉ logged steps (n the run's logged steps), with :math:`r_l` the measured metric over
    its theory (:func:`settle_pair`) and the bar a centred moving average over
    :func:`~normwatch.report.stats.smoothing_window` points; ``None`` if it never does (or nothing was logged).
    """
    curves = []
    metric, prediction = settle_pair(run)
    for layer in run.layers_with(metric, prediction):
        steps, ratio, theory = align(run.series(metric, layer), run.series(prediction, layer))  # type: ignore[arg-type]
        with np.errstate(divide="ignore", invalid="ignore"):
            r = np.where(theory > 0, ratio / np.where(theory > 0, theory, 1.0), np.nan)
        curves.append((steps, moving_average(r, smoothing_window(r.size))))
    if not curves:
        return None
    common = curves[0][0]
    for steps, _ in curves[1:]:
        common = np.intersect1d(common, steps)
    stacked = np.stack([values[np.searchsorted(steps, common)] for steps, values in curves])
    with np.errstate(all="ignore"):
        median = np.nanmedian(stacked, axis=0) if stacked.size else np.array([])
    ok = np.abs(median - 1.0) <= SETTLE_TOL
    hold = max(1, int(np.ceil(SETTLE_HOLD * ok.size)))
    # inside[i]: steps i .. i+hold−1 are all within the band (a window sum of ok)
    counts = np.convolve(ok.astype(int), np.ones(hold, dtype=int), mode="valid")
    inside = np.nonzero(counts == hold)[0]
    return int(common[inside[0]]) if inside.size else None


def _last_step(run: Run) -> int:
    s = run.series("lars_ratio", run.layers_with("lars_ratio")[0]) if run.layers_with("lars_ratio") else None
    return int(s.steps[-1]) if s is not None else 0


def _groups(runs: Sequence[Run], part: str, key: Callable[[Run], tuple]) -> dict[tuple, list[Run]]:
    out: dict[tuple, list[Run]] = defaultdict(list)
    for run in runs:
        if run.part == part:
            out[key(run)].append(run)
    return dict(out)


def _accuracy(runs: list[Run]) -> Interval | None:
    accs = [a for r in runs if (a := r.final_test_acc) is not None]
    if not accs:
        return None
    sizes = [n for r in runs if (n := r.test_images)]
    return accuracy_interval([a / 100.0 if a > 1.0 else a for a in accs], min(sizes) if sizes else None)


def _row(claim: str, statistic: str, runs: str, prediction: str, interval: Interval | None, why: str = "") -> Verdict:
    """A row for "the difference is above 0" read with :func:`~normwatch.report.uncertainty.judge_greater`."""
    if interval is None:
        return Verdict(claim, statistic, runs, "—", prediction, "—", "interval above 0", "no data", why)
    outcome: Outcome = judge_greater(interval)
    detail = {
        "holds": "",
        "does not hold": f"clearly below 0 (±{Z:g} SE)",
        "inconclusive": f"the interval [{interval.low:.3g}, {interval.high:.3g}] contains 0: the data cannot decide",
    }[outcome]
    return Verdict(claim, statistic, runs, "final logged step" if "accuracy" in statistic else "all logged steps",
                   prediction, interval.text(), "interval above 0", outcome, detail, interval.value, 0.0, {},
                   interval.low, interval.high, interval.se)


def _names(*groups: list[Run]) -> str:
    return " vs ".join(f"{len(g)} run(s) ({', '.join(r.name for r in g[:2])}{', …' if len(g) > 2 else ''})"
                       for g in groups)


def _settle_interval(runs: list[Run]) -> tuple[Interval, int]:
    """Mean settle step over seeds with its spread; a run that never settles counts as its length."""
    steps, never = [], 0
    for run in runs:
        t = settle_step(run)
        if t is None:
            never += 1
            t = _last_step(run) + 1
        steps.append(float(t))
    se = mean_se(steps)
    return Interval(float(np.mean(steps)), se, f"{len(steps)} seeds" if se is not None else ""), never


def eqinit_verdicts(runs: Sequence[Run]) -> list[Verdict]:
    """Per optimizer of the eqinit part: settle steps (default − equilibrium) and accuracy (equilibrium − default)."""
    groups = _groups(runs, "eqinit", lambda r: (str(r.demo.get("optimizer")), str(r.demo.get("init", "default"))))
    rows: list[Verdict] = []
    for opt in sorted({o for o, _ in groups}):
        default, eq = groups.get((opt, "default"), []), groups.get((opt, "equilibrium"), [])
        if not default or not eq:
            continue
        label = f"{opt}, {'Nesterov' if default[0].nesterov else 'heavy ball'}"
        names = _names(default, eq)
        metric, prediction = settle_pair(default[0])
        has_theory = all(r.layers_with(metric, prediction) for r in default + eq)
        stat = (f"steps until the median layer's smoothed {metric} ÷ {prediction} settles within ±{SETTLE_TOL:.0%} "
                f"of 1 (for {SETTLE_HOLD:.0%} of the run's steps), default − equilibrium init (mean over seeds; a "
                "run that never does counts as its length)")
        if has_theory:
            (d, never_d), (e, never_e) = _settle_interval(default), _settle_interval(eq)
            diff = difference(d, e)
            row = _row(f"equilibrium init reaches {_quantity(metric)} ≈ theory sooner ({label})", stat, names, "> 0",
                       diff)
            note = f"default {d.text()}, equilibrium {e.text()}"
            if never_d or never_e:
                note += f"; never within ±{SETTLE_TOL:.0%}: {never_d} default, {never_e} equilibrium run(s)"
            rows.append(_with_measured(row, f"{row.measured} ({note})"))
        else:
            rows.append(_row(f"equilibrium init reaches {_quantity(metric)} ≈ theory sooner ({label})", stat, names,
                             "> 0", None, f"the runs logged no {prediction} (normwatch has no theory for this form)"))
        a_d, a_e = _accuracy(default), _accuracy(eq)
        acc = difference(a_e, a_d) if a_d is not None and a_e is not None else None
        rows.append(_row(f"equilibrium init raises test accuracy ({label})",
                         "final test accuracy, equilibrium − default init (mean over seeds)", names, "> 0", acc,
                         "no test accuracy logged"))
    return rows


def _quantity(metric: str) -> str:
    return "η|g|/|w|" if metric == "lars_ratio" else "the rotation per step"


def _with_measured(v: Verdict, measured: str) -> Verdict:
    d = v.to_dict()
    d["measured"] = measured
    return Verdict(**d)


def large_batch_verdicts(runs: Sequence[Run]) -> list[Verdict]:
    """Per batch size: LARS − SGD and SGD with equilibrium init − SGD (test accuracy); then "LARS clearly wins
    at some batch size": holds if one LARS row holds, does not hold if every one is clearly below, else
    inconclusive."""
    groups = _groups(runs, "large-batch", lambda r: (int(r.demo.get("batch_size", 0)), str(r.demo.get("optimizer")),
                                                     str(r.demo.get("init", "default"))))
    rows: list[Verdict] = []
    lars_rows: list[Verdict] = []
    for b in sorted({k[0] for k in groups}):
        sgd, sgd_eq = groups.get((b, "sgd", "default"), []), groups.get((b, "sgd", "equilibrium"), [])
        lars = groups.get((b, "lars", "default"), [])
        stat = "final test accuracy, difference of the means over seeds"
        if sgd and lars:
            a, s = _accuracy(lars), _accuracy(sgd)
            row = _row(f"LARS beats SGD at batch {b}", "LARS − SGD " + stat, _names(lars, sgd), "> 0",
                       difference(a, s) if a and s else None, "no test accuracy logged")
            rows.append(row)
            lars_rows.append(row)
        if sgd and sgd_eq:
            a, s = _accuracy(sgd_eq), _accuracy(sgd)
            rows.append(_row(f"equilibrium init closes SGD's gap at batch {b}",
                             "SGD with equilibrium init − SGD " + stat, _names(sgd_eq, sgd), "> 0",
                             difference(a, s) if a and s else None, "no test accuracy logged"))
    judged = [r for r in lars_rows if r.outcome != "no data"]
    if judged:
        outcomes = {r.outcome for r in judged}
        outcome: Outcome = ("holds" if "holds" in outcomes else
                            "does not hold" if outcomes == {"does not hold"} else "inconclusive")
        wins = [r.claim.rsplit(" ", 1)[-1] for r in judged if r.outcome == "holds"]
        rows.append(Verdict("LARS clearly wins at some batch size", "the rows LARS beats SGD at batch …",
                            f"{len(judged)} batch sizes", "final logged step", "some batch", ", ".join(
                                f"{r.claim.rsplit(' ', 1)[-1]}: {r.outcome}" for r in judged), "one row holds",
                            outcome, f"at batch {', '.join(wins)}" if wins else "", None, None))
    return rows


def smooth_verdicts(runs: Sequence[Run]) -> list[Verdict]:
    """Smoothed − plain LARS test accuracy, per β of the smooth part."""
    groups = _groups(runs, "smooth", lambda r: (float(r.demo.get("grad_norm_beta", 0.0) or 0.0),))
    plain = groups.get((0.0,), [])
    rows: list[Verdict] = []
    for (beta,), smoothed in sorted(groups.items()):
        if beta == 0.0 or not plain:
            continue
        a, p = _accuracy(smoothed), _accuracy(plain)
        rows.append(_row(f"averaging |g| over batches (β = {beta:g}) raises LARS's test accuracy",
                         "final test accuracy, smoothed − plain LARS (mean over seeds)", _names(smoothed, plain), "> 0",
                         difference(a, p) if a and p else None, "no test accuracy logged"))
    return rows


def experiment_verdicts(analysis: Analysis) -> list[Verdict]:
    """Every row of the eqinit, large-batch and smooth parts present among the analysis's runs."""
    return [*eqinit_verdicts(analysis.runs), *large_batch_verdicts(analysis.runs), *smooth_verdicts(analysis.runs)]
