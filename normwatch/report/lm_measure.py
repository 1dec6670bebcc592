r"""What the LM study's verdicts share: finding its runs, their windows, and a number with its noise.

**Runs.** A run of ``demo/train_lm.py`` has ``part`` ∈ :data:`LM_PARTS` in its ``config.json`` /
``demo/config``. The Trainer logs step s's loss, lr, |g| and weight decay at s + 1 (``train/...``);
:func:`trainer_series` moves them back to the optimizer step s, where normwatch logs.

**Windows.** Each layer's equilibrium window comes from its optimizer's own relaxation time: AdamW and
Muon decay w by ηλ per step with an update whose size does not depend on |w|, so |w|² relaxes in
τ_w = 1/(2ηλ) steps (:func:`normwatch.theory.adamw_relaxation_steps`; τ = 1/(ηλ) of w itself) and the
window opens 3 τ_w after warm-up (:func:`~normwatch.report.window.equilibrium_window` with the decoupled
form); Adam with coupled L2 has no τ set by η, λ alone, so no window.

**Noise.** A statistic measured over a window is also measured on each of :data:`BLOCKS` consecutive
blocks of it; its noise is ``2·std(block values)/√BLOCKS`` (twice the standard error of a block mean,
which counts slow fluctuations that a per-step standard error would miss). Over layers, the claim's
value is the median layer's and its noise the median layer's noise.

**Outcome.** With ``margin`` = how far the value lies inside its tolerance (negative: outside) and
``noise`` as above: *holds* when margin ≥ noise, *does not hold* when margin < −noise, *inconclusive*
in between (the runs cannot tell).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from normwatch.report.analysis import Analysis
from normwatch.report.claims import Verdict
from normwatch.report.runs import Run, Series, align
from normwatch.report.uncertainty import Z, mean_se
from normwatch.report.window import Window, equilibrium_window

#: The demo's parts (demo/train_lm.py's PARTS).
LM_PARTS = ("adamw", "eta-lambda", "muon", "l2", "schedule")
#: Tolerances of the LM claims (the table in :mod:`normwatch.report.lm`), fixed before reading the runs.
TOLERANCES_LM: dict[str, float] = {
    "angle": 0.15, "muon_angle": 0.20, "balance": 0.10, "relax": 2.0, "same_angle": 0.15, "loss_follows": 0.5,
    "l2_loss": 0.05, "rise": 0.25, "w_falls": 0.8, "w_held": 0.20, "late_balance": 0.9,
}
#: Fraction of the steps over which the gradient norm and |w|² are averaged at the run's start and end.
TAIL = 0.1
#: Consecutive blocks a window is cut into to measure a statistic's noise.
BLOCKS = 4
#: The noise is this many standard errors of a block mean (the report's Z).
NOISE_SE = Z


@dataclass(frozen=True)
class Measure:
    """A measured value and its noise (NOISE_SE standard errors; ``inf`` when it cannot be estimated)."""

    value: float
    noise: float


def outcome(margin: float, noise: float) -> str:
    """``"holds"`` when margin ≥ noise, ``"does not hold"`` when margin < −noise, else ``"inconclusive"``."""
    if not math.isfinite(margin):
        return "inconclusive"
    if margin >= noise:
        return "holds"
    if margin < -noise:
        return "does not hold"
    return "inconclusive"


def block_noise(values: Sequence[float]) -> float:
    """NOISE_SE × the standard error of the mean of the block values: ``2·std(v, ddof=1)/√n``."""
    v = np.asarray(values, dtype=np.float64)
    se = mean_se(v[np.isfinite(v)])
    return math.inf if se is None else NOISE_SE * se


def blocked(idx: np.ndarray, stat: Callable[[np.ndarray], float]) -> Measure | None:
    """``stat`` on the indices ``idx`` and on each of BLOCKS consecutive blocks of them (the noise)."""
    if idx.size < 2 * BLOCKS:
        return None
    value = stat(idx)
    if not math.isfinite(value):
        return None
    return Measure(value, block_noise([stat(chunk) for chunk in np.array_split(idx, BLOCKS)]))


def median_measure(per_layer: dict[str, Measure]) -> Measure:
    """The median layer's value and the median layer's noise."""
    return Measure(float(np.median([m.value for m in per_layer.values()])),
                   float(np.median([m.noise for m in per_layer.values()])))


# ---------------------------------------------------------------------------------------------- runs
def is_lm(run: Run) -> bool:
    """A run of the LM study (its demo config names one of its parts)."""
    return run.part in LM_PARTS


def is_lm_study(runs: Sequence[Run]) -> bool:
    """Every run read belongs to the LM study (then the report is the LM study's)."""
    return bool(runs) and all(is_lm(r) for r in runs)


def part_runs(analysis: Analysis, part: str) -> list[Run]:
    """The runs of one part, in the order read."""
    return [r for r in analysis.runs if r.part == part]


def named(analysis: Analysis, part: str, name: str) -> Run | None:
    """The run ``<part>/<name>`` (its demo config's ``name``), if read."""
    return next((r for r in part_runs(analysis, part) if r.demo.get("name") == name), None)


def eta_lambda(run: Run) -> float | None:
    """ηλ at the peak lr, from the demo's config."""
    lr, wd = run.demo.get("lr"), run.demo.get("weight_decay")
    return float(lr) * float(wd) if isinstance(lr, (int, float)) and isinstance(wd, (int, float)) else None


def decoupled(run: Run) -> bool:
    """AdamW or Muon (decay ηλw applied apart from the gradient step); not Adam with coupled L2."""
    return run.demo.get("optimizer") != "adam-l2"


def trainer_series(run: Run, tag: str) -> Series | None:
    """A Trainer scalar (``train/grad_norm``, ...) on optimizer steps: logged at s + 1 for the step taken at s.
    ``eval/loss`` is not moved (at s it is measured after s steps)."""
    s = run.scalars.get(tag)
    if s is None or not len(s):
        return None
    return s if tag.startswith("eval/") else Series(s.steps - 1, s.values)


def val_loss(run: Run) -> Measure | None:
    """The last eval/loss, with the noise of the last three (block_noise of them; their drift counts too)."""
    s = run.scalars.get("eval/loss")
    if s is None or not len(s):
        value = run.result.get("val_loss")
        return Measure(float(value), math.inf) if isinstance(value, (int, float)) else None
    return Measure(s.last(), block_noise(s.values[-3:]))


def layer_window(run: Run, layer: str) -> Window:
    """The layer's equilibrium window from its logged η, λ with the decoupled τ_w = 1/(2ηλ) (none for L2)."""
    if not decoupled(run):
        return Window(None, None, tau_peak=math.nan, reason="Adam with coupled L2: no relaxation time set by η, λ")
    lr, wd = run.series("lr", layer), run.series("weight_decay", layer)
    if lr is None or wd is None:
        return Window(None, None, reason=f"no lr / weight decay logged for {layer}")
    steps, eta, lam = align(lr, wd)
    return equilibrium_window(steps, eta, lam, np.zeros_like(eta), family="adamw")


def windowed(run: Run, layers: Sequence[str], stat: Callable[[Run, str, Window], Measure | None]
             ) -> tuple[dict[str, Measure], Window | None]:
    """``stat`` per layer on its window, the layers where it could be measured, and the first layer's window."""
    out: dict[str, Measure] = {}
    first = None
    for layer in layers:
        win = layer_window(run, layer)
        first = first or win
        if not win.empty and (m := stat(run, layer, win)) is not None:
            out[layer] = m
    return out, first


# ---------------------------------------------------------------------------------------------- verdicts
def _fmt(m: Measure) -> str:
    return f"{m.value:.3g} ± {m.noise:.2g}" if math.isfinite(m.noise) else f"{m.value:.3g} (noise unknown)"


def _verdict(claim: str, stat: str, run: str, window: str, pred: str, tol: str, m: Measure, margin: float,
             expected: float, per_layer: dict[str, Measure] | None = None, detail: str = "", *,
             noise: float | None = None, of: str = "layers") -> Verdict:
    """A judged row: ``margin`` inside the tolerance against ``noise`` (``m.noise`` unless the margin is in other
    units, e.g. ln); ``per_layer`` are the layers' (or, with ``of``, the runs') own measures."""
    per = per_layer or {}
    measured = _fmt(m)
    if len(per) > 1:
        values = [x.value for x in per.values()]
        span = f"{min(values):.3g}–{max(values):.3g}"
        measured += f" (median of {len(per)} layers; range {span})" if of == "layers" else f" ({len(per)} {of}: {span})"
    noise = m.noise if noise is None else noise
    result: Any = outcome(margin, noise)
    if result == "inconclusive" and not detail:
        detail = f"the noise ±{m.noise:.2g} straddles the tolerance's edge"
    elif result == "does not hold" and not detail:
        detail = f"{abs(margin):.3g} beyond the tolerance"
    return Verdict(claim, stat, run, window, pred, measured, tol, result, detail, m.value, expected,
                   {k: x.value for k, x in per.items()})


def _none(claim: str, stat: str, pred: str, tol: str, why: str, run: str = "—") -> Verdict:
    return Verdict(claim, stat, run, "—", pred, "—", tol, "no data", why)


def _window_text(win: Window | None) -> str:
    return win.describe() if win is not None else "—"


