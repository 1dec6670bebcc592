r"""The schedule part's verdicts: AdamW against AdamC (λ_t = λ·η_t/η_max; Defazio 2025, arXiv:2506.02285)
under the same cosine schedule to 0.

Defazio's account: a normalised layer's equilibrium |w*|² ∝ η_t/λ_t, and |g| ∝ G/|w| for a scale-invariant
weight. Under AdamW the decaying η_t drags |w*| down, so |g| rises near the end; AdamC keeps η_t/λ_t, hence
|w*| and |g|, constant. Late in the schedule τ_w = 1/(2η_tλ) outgrows the time the lr takes to fall, the
norm trails its target from above and shrink exceeds growth (equilibrium lost). Statistics (tolerances in
:data:`~normwatch.report.lm_measure.TOLERANCES_LM`):

* rise = mean |g| over the last 10 % of the steps ÷ the lowest mean over 10 % of the steps after warm-up;
  noise from each of the two stretches' block means, combined in quadrature on the ratio.
* fall = |w|² averaged over the last 10 % ÷ |w|² averaged over 10 % centred where η first reaches η_max/2.
* late balance = Σ growth ÷ Σ shrink from the step the layer's equilibrium window closes to the end.
"""

from __future__ import annotations

import math

import numpy as np

from normwatch.report.analysis import Analysis
from normwatch.report.claims import Verdict
from normwatch.report.lm_measure import (
    BLOCKS,
    TAIL,
    TOLERANCES_LM,
    Measure,
    _none,
    _verdict,
    block_noise,
    blocked,
    layer_window,
    median_measure,
    named,
    trainer_series,
)
from normwatch.report.runs import Run, align


def _mean_and_noise(values: np.ndarray) -> Measure:
    return Measure(float(np.mean(values)), block_noise([float(np.mean(c)) for c in np.array_split(values, BLOCKS)]))


def _ratio(a: Measure, b: Measure) -> Measure:
    r = a.value / b.value
    return Measure(r, abs(r) * math.hypot(a.noise / a.value, b.noise / b.value))


def grad_norm_rise(run: Run) -> Measure | None:
    """End-of-training |g| ÷ its lowest 10 % mean after warm-up (train/grad_norm, on optimizer steps)."""
    g = trainer_series(run, "train/grad_norm")
    if g is None:
        return None
    after = g.values[g.steps >= int(run.demo.get("warmup", 0))]
    w = max(BLOCKS, round(TAIL * g.values.size))
    if after.size < 2 * w:
        return None
    means = np.convolve(after, np.ones(w) / w, mode="valid")
    low = int(np.argmin(means))
    return _ratio(_mean_and_noise(after[-w:]), _mean_and_noise(after[low:low + w]))


def norm_fall(run: Run, layer: str) -> Measure | None:
    """|w|² over the last 10 % ÷ |w|² over 10 % of the steps centred where η first reaches η_max/2."""
    w2, lr = run.series("w_norm2", layer), run.series("lr", layer)
    if w2 is None or lr is None:
        return None
    _, x, eta = align(w2, lr)
    peak = int(np.argmax(eta))
    half = np.nonzero((np.arange(eta.size) > peak) & (eta <= eta[peak] / 2))[0]
    w = max(BLOCKS, round(TAIL * x.size))
    if not half.size or x.size < 2 * w:
        return None
    lo = max(0, int(half[0]) - w // 2)
    return _ratio(_mean_and_noise(x[-w:]), _mean_and_noise(x[lo:lo + w]))


def late_balance(run: Run, layer: str) -> tuple[Measure | None, int | None]:
    """Σ growth ÷ Σ shrink after the layer's window closes, and the step it closes."""
    s, g = run.series("shrink", layer), run.series("growth", layer)
    win = layer_window(run, layer)
    if s is None or g is None or win.empty:
        return None, None
    steps, vs, vg = align(s, g)
    idx = np.nonzero(steps > win.stop)[0]
    m = blocked(idx, lambda i: float(np.sum(vg[i]) / np.sum(vs[i])) if np.sum(vs[i]) > 0 else math.nan)
    return m, win.stop


def _rise_claims(adamw: Run | None, adamc: Run | None) -> list[Verdict]:
    stat = "mean |g| over the last 10% of steps ÷ lowest 10% mean after warm-up"
    tol = 1 + TOLERANCES_LM["rise"]
    out = []
    for run, claim, want_rise in ((adamw, "AdamW, cosine to 0: the gradient norm rises near the end", True),
                                  (adamc, "AdamC, same schedule: the end-of-training rise vanishes", False)):
        tol_s = f"≥ {tol:g}" if want_rise else f"< {tol:g}"
        m = grad_norm_rise(run) if run is not None else None
        if m is None:
            why = "needs the schedule part (demo/train_lm.py --parts schedule) with train/grad_norm"
            out.append(_none(claim, stat, tol_s, tol_s, why, run.name if run else "—"))
            continue
        margin = m.value - tol if want_rise else tol - m.value
        out.append(_verdict(claim, stat, run.name, "after warm-up", tol_s, tol_s, m, margin, tol))  # type: ignore[union-attr]
    return out


def _fall_claims(adamw: Run | None, adamc: Run | None) -> list[Verdict]:
    stat = "|w|² over the last 10% ÷ |w|² where η first reaches η_max/2 (median layer)"
    out = []
    for run, claim, falls in ((adamw, "AdamW: |w|² falls with the lr (|w*|² ∝ η_t/λ), so |g| ∝ 1/|w| rises", True),
                              (adamc, "AdamC: |w|² is held (|w*|² ∝ η_t/λ_t constant)", False)):
        tol = TOLERANCES_LM["w_falls"] if falls else TOLERANCES_LM["w_held"]
        tol_s, pred = (f"≤ {tol:g}", "0 if |w|² followed η_t") if falls else (f"±{tol:.0%}", "1")
        per = {} if run is None else {layer: m for layer in run.layers_with("w_norm2", "lr")
                                      if (m := norm_fall(run, layer)) is not None}
        if not per:
            why = "needs the schedule part with normwatch's w_norm2 (a run whose invariant layers were recorded)"
            out.append(_none(claim, stat, pred, tol_s, why, run.name if run else "—"))
            continue
        m = median_measure(per)
        margin = tol - m.value if falls else tol - abs(m.value - 1)
        out.append(_verdict(claim, stat, run.name, "mid-decay vs the end", pred, tol_s, m, margin,  # type: ignore[union-attr]
                            0.0 if falls else 1.0, per))
    return out


def _late_claim(adamw: Run | None) -> Verdict:
    claim = "AdamW: equilibrium is lost once the schedule outruns τ (shrink exceeds growth)"
    stat = "Σ growth ÷ Σ shrink from where the window closes (τ_w·|d ln η/dt| > 1/4) to the end (median layer)"
    tol = TOLERANCES_LM["late_balance"]
    per: dict[str, Measure] = {}
    closes: list[int] = []
    for layer in adamw.layers_with("shrink", "growth") if adamw is not None else []:
        m, stop = late_balance(adamw, layer)  # type: ignore[arg-type]
        if m is not None and stop is not None:
            per[layer] = m
            closes.append(stop)
    if not per:
        why = "needs the schedule part's AdamW run with shrink/growth and an equilibrium window that closes"
        return _none(claim, stat, "< 1", f"≤ {tol:g}", why, adamw.name if adamw else "—")
    m = median_measure(per)
    return _verdict(claim, stat, adamw.name, f"steps {min(closes) + 1}– (after the window)",  # type: ignore[union-attr]
                    "< 1", f"≤ {tol:g}", m, tol - m.value, 1.0, per)


def schedule_claims(analysis: Analysis) -> list[Verdict]:
    """The schedule part's rows: the rise with AdamW and without it with AdamC, and |w|² explaining why."""
    adamw, adamc = named(analysis, "schedule", "adamw"), named(analysis, "schedule", "adamc")
    return [*_rise_claims(adamw, adamc), *_fall_claims(adamw, adamc), _late_claim(adamw)]
