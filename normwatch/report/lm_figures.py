r"""The LM study's figures, drawn with :mod:`normwatch.report.figures`' helpers (Agg canvas, no pyplot).

1. Rotation per step against its equilibrium theory, one panel per run that recorded invariant layers.
2. Final validation loss against ηλ over the eta-lambda grid, one line per λ.
3. |w|² against its equilibrium: x_eq = growth·|w|²/shrink, the |w|² at which the weight decay's shrink
   (∝ |w|²) would balance the current growth; |w|² follows x_eq in equilibrium and trails it when the lr
   schedule outruns τ.
4. The gradient norm under the decaying schedule, AdamW against AdamC, with η_t.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from normwatch import theory
from normwatch.report.analysis import Analysis
from normwatch.report.figures import FigureResult, _colors, _legend, _new_grid, _raw_and_smooth, _save, _shade
from normwatch.report.lm_measure import eta_lambda, is_lm_study, layer_window, named, part_runs, trainer_series
from normwatch.report.runs import Run, align
from normwatch.report.stats import moving_average, smoothing_window

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

TITLES = {
    1: "Rotation per step against its equilibrium theory",
    2: "Final validation loss against ηλ",
    3: "|w|² against its equilibrium x_eq = growth·|w|²/shrink",
    4: "Gradient norm under a decaying lr: AdamW against AdamC",
}


def _panels(n: int) -> tuple[Figure, list[Axes]]:
    """n panels stacked, sharing the step axis, each with its own y range (the runs differ by orders)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(9.0, 2.6 * n + 0.6), layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(n, 1, sharex=True, squeeze=False).ravel().tolist()
    for ax in axes:
        ax.grid(True, alpha=0.25, linewidth=0.5)
    return fig, axes


def _skip(number: int, why: str) -> FigureResult:
    return FigureResult(number, TITLES[number], None, note=f"Figure {number} skipped: {why}.")


def _theory(run: Run, layer: str) -> tuple[np.ndarray, np.ndarray] | None:
    """The logged angle_theory, else Muon's (Nesterov) from the logged η, λ, μ."""
    logged = run.series("angle_theory", layer)
    if logged is not None:
        return logged.steps, logged.values
    lr, wd, mom = (run.series(m, layer) for m in ("lr", "weight_decay", "momentum"))
    if lr is None or wd is None or mom is None or run.demo.get("optimizer") != "muon":
        return None
    steps, eta, lam = align(lr, wd)
    _, _, mu = align(lr, mom)
    return steps, np.array([theory.muon_angle(e, la, m) for e, la, m in zip(eta, lam, mu, strict=True)])


def figure_rotation(analysis: Analysis, out_dir: Path) -> FigureResult:
    runs = [r for r in analysis.runs if r.layers_with("angle") and r.part in ("adamw", "muon", "l2")
            and "copied_from" not in r.demo]  # a copy of a run shown already
    if not runs:
        return _skip(1, "no run of the adamw, muon or l2 parts recorded angles")
    fig, axes = _panels(len(runs))
    for ax, run in zip(axes, runs, strict=True):
        layers = run.layers_with("angle")
        _shade(ax, layer_window(run, layers[0]))
        for layer, color in zip(layers, _colors(len(layers)), strict=True):
            s = run.series("angle", layer)
            _raw_and_smooth(ax, s.steps, s.values, color, layer)  # type: ignore[union-attr]
            if (t := _theory(run, layer)) is not None:
                ax.plot(*t, color=color, linestyle="--", linewidth=1.0)
        ax.set_title(run.name, fontsize=9)
        _legend(ax, len(layers))
    path = _save(fig, out_dir, 1, TITLES[1], "optimizer step", "rotation per step (rad)")
    return FigureResult(1, TITLES[1], path, "Per layer: light trace raw, solid smoothed, dashed its theory "
                        "(runs copied from another, as muon/adamw, are not repeated) "
                        "(normwatch's angle_theory: AdamW's √(2ηλ(1−β₁)/(1+β₁)); Muon's muon_angle(η, λ, μ)); "
                        "grey: the equilibrium window.")


def figure_grid_loss(analysis: Analysis, out_dir: Path) -> FigureResult:
    runs = [r for r in part_runs(analysis, "eta-lambda") if eta_lambda(r) and r.scalars.get("eval/loss")]
    if len(runs) < 2:
        return _skip(2, "needs the eta-lambda part's runs with eval/loss")
    fig, axes = _new_grid(1, 1, 8.0, 4.2)
    ax = axes[0]
    by_wd: dict[float, list[tuple[float, float, float]]] = {}
    for r in runs:
        by_wd.setdefault(float(r.demo["weight_decay"]), []).append(
            (eta_lambda(r), r.scalars["eval/loss"].last(), float(r.demo["lr"])))  # type: ignore[arg-type]
    for (wd, points), color in zip(sorted(by_wd.items()), _colors(len(by_wd)), strict=True):
        points.sort()
        ax.plot([p[0] for p in points], [p[1] for p in points], "o-", color=color, label=f"λ = {wd:g}")
        for x, y, lr in points:
            ax.annotate(f"η {lr:g}", (x, y), fontsize=7, xytext=(3, 3), textcoords="offset points")
    ax.set_xscale("log")
    _legend(ax, len(by_wd))
    path = _save(fig, out_dir, 2, TITLES[2], "ηλ at the peak lr", "final validation loss (nats/char)")
    return FigureResult(2, TITLES[2], path, "Each point a run of the grid (η and λ × 1/4, 1, 4); runs at the same "
                        "ηλ sit on one vertical line: if the product sets the loss, they sit at one height.")


def figure_equilibrium(analysis: Analysis, out_dir: Path) -> FigureResult:
    candidates = [named(analysis, "adamw", "qwen3"), named(analysis, "adamw", "olmo2"),
                  named(analysis, "schedule", "adamw"), named(analysis, "schedule", "adamc")]
    runs = [r for r in candidates if r is not None and r.layers_with("w_norm2", "shrink", "growth")]
    if not runs:
        return _skip(3, "no adamw or schedule run recorded |w|², shrink and growth")
    fig, axes = _panels(len(runs))
    for ax, run in zip(axes, runs, strict=True):
        layers = run.layers_with("w_norm2", "shrink", "growth")
        _shade(ax, layer_window(run, layers[0]))
        for layer, color in zip(layers, _colors(len(layers)), strict=True):
            w2 = run.series("w_norm2", layer)
            steps, s, g = align(run.series("shrink", layer), run.series("growth", layer))  # type: ignore[arg-type]
            _, x, _ = align(w2, run.series("shrink", layer))  # type: ignore[arg-type]
            width = smoothing_window(steps.size) * 2 + 1
            with np.errstate(divide="ignore", invalid="ignore"):
                eq = moving_average(g, width) * x / moving_average(s, width)
            ax.plot(w2.steps, w2.values, color=color, linewidth=1.4, label=layer)  # type: ignore[union-attr]
            ax.plot(steps, eq, color=color, linestyle="--", linewidth=0.9)
        ax.set_yscale("log")
        ax.set_title(run.name, fontsize=9)
        _legend(ax, len(layers))
    path = _save(fig, out_dir, 3, TITLES[3], "optimizer step", "|w|² (log scale)")
    return FigureResult(3, TITLES[3], path, "Solid: |w|² per layer; dashed: x_eq = growth·|w|²/shrink (both "
                        "smoothed), the |w|² at which decay and gradient would balance. In equilibrium the two "
                        "meet; where the lr falls faster than τ, |w|² trails x_eq from above.")


def figure_grad_norm(analysis: Analysis, out_dir: Path) -> FigureResult:
    runs = [r for r in (named(analysis, "schedule", "adamw"), named(analysis, "schedule", "adamc"))
            if r is not None and trainer_series(r, "train/grad_norm") is not None]
    if not runs:
        return _skip(4, "needs the schedule part's runs with train/grad_norm")
    fig, axes = _new_grid(1, 1, 9.0, 4.2)
    ax = axes[0]
    for run, color in zip(runs, _colors(len(runs)), strict=True):
        g = trainer_series(run, "train/grad_norm")
        _raw_and_smooth(ax, g.steps, g.values, color, run.name)  # type: ignore[union-attr]
    lr = trainer_series(runs[0], "train/learning_rate")
    if lr is not None:
        twin = ax.twinx()
        twin.plot(lr.steps, lr.values, color="0.4", linestyle=":", label="η_t")
        twin.set_ylabel("η_t (dotted)", fontsize=8)
    ax.legend(fontsize=7, loc="upper left")  # inside: the right edge holds η_t's axis
    path = _save(fig, out_dir, 4, TITLES[4], "optimizer step", "|g| (train/grad_norm, before clipping)")
    return FigureResult(4, TITLES[4], path, "The Trainer's gradient norm per step, raw and smoothed; dotted: the "
                        "cosine lr η_t. Defazio (arXiv:2506.02285): with AdamW |g| rises as η_t → 0, with AdamC "
                        "(λ_t = λ·η_t/η_max) it should not.")


FIGURES = (figure_rotation, figure_grid_loss, figure_equilibrium, figure_grad_norm)


def render_lm_figures(analysis: Analysis, out_dir: Path) -> list[FigureResult]:
    """The LM study's figures 1–4 (``[]`` when the runs are not the LM study's)."""
    if not is_lm_study(analysis.runs):
        return []
    return [draw(analysis, out_dir) for draw in FIGURES]
