r"""The seed's figures (1–8) and two more (9–10), drawn with matplotlib's Agg canvas.

Every figure has the optimizer step on the x-axis (except 8) and one colour per layer, with the
legend right of the axes, where it covers no trace; figures 5 and 7, where every layer tracks the
same prediction, draw one panel per layer instead. Noisy per-step series are drawn as a light raw
trace with a centred moving average over :func:`~normwatch.report.stats.smoothing_window` points
on top; the grey band is the equilibrium window of the run shown. A figure whose data is absent
returns a note instead of a file.

matplotlib is imported inside the functions (it is the optional ``normwatch[report]`` extra) and
only through ``matplotlib.figure.Figure`` and the Agg canvas, so the caller's pyplot backend is
left alone.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from normwatch.report.analysis import Analysis
from normwatch.report.claims import best_lrs, sweep_table
from normwatch.report.document import Block, Heading, Image, Note, Paragraph
from normwatch.report.roles import SGD_LIKE
from normwatch.report.runs import Run, Series, align
from normwatch.report.stats import (
    moving_average,
    norm_over_equilibrium,
    scale_free_grad_sq,
    seed_lars_prediction,
    smoothing_window,
)
from normwatch.report.window import Window

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

#: Resolution of the saved PNGs.
DPI = 110
#: Raw traces and scatters are thinned by a stride to at most this many points per layer.
MAX_POINTS = 5000
#: Above this many layers the legend is replaced by a note: colour runs from first to last layer.
MAX_LEGEND = 12


@dataclass(frozen=True)
class FigureResult:
    """One figure: the PNG written, or why it was skipped.

    Attributes:
        number: the figure's number (1–10).
        title: its title.
        path: the PNG written, ``None`` if skipped.
        caption: what it shows (the run, the series, the smoothing).
        note: why it was skipped, or a caveat (e.g. a stand-in run).
    """

    number: int
    title: str
    path: Path | None
    caption: str = ""
    note: str = ""

    def blocks(self) -> list[Block]:
        """Its place in a report: the heading, then the image and caption, or the note of why it is missing."""
        head: list[Block] = [Heading(3, f"Figure {self.number}. {self.title}")]
        if self.path is None:
            return [*head, Note(self.note)]
        body: list[Block] = [Image(self.path, f"Figure {self.number}"), Paragraph(self.caption)]
        return head + body + ([Note(self.note)] if self.note else [])


TITLES = {
    1: "Shrink of |w|² per step from weight decay",
    2: "Growth of |w|² per step from the gradient",
    3: "Shrink and growth superimposed",
    4: "|w|² normalised to 1 at the start",
    5: "η|g|/|w| per step without momentum, with its equilibrium prediction",
    6: "Correlation of g_t with the moving average of past gradients",
    7: "η|g|/|w| per step with momentum, with its equilibrium prediction",
    8: "Test accuracy against peak learning rate",
    9: "Rotation per step against its equilibrium prediction",
    10: "|w|/|w*|: distance from the equilibrium norm",
}


# ------------------------------------------------------------------------------ drawing helpers
def _new_figure(height: float = 4.4) -> tuple[Figure, Axes]:
    fig, axes = _new_grid(1, 1, 9.0, height)
    return fig, axes[0]


def _new_grid(rows: int, cols: int, width: float, height: float) -> tuple[Figure, list[Axes]]:
    """A figure of rows × cols axes sharing both axes, laid out so that legends outside the axes fit."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(rows, cols, sharex=True, sharey=True, squeeze=False).ravel().tolist()
    for ax in axes:
        ax.grid(True, alpha=0.25, linewidth=0.5)
    return fig, axes


def _colors(n: int) -> list[Any]:
    from matplotlib import colormaps

    if n <= 10:
        return [colormaps["tab10"](i) for i in range(n)]
    if n <= 20:
        return [colormaps["tab20"](i) for i in range(n)]
    return [colormaps["viridis"](i / max(n - 1, 1)) for i in range(n)]


def _thin(steps: np.ndarray, values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    stride = max(1, int(np.ceil(steps.size / MAX_POINTS)))
    return steps[::stride], values[::stride]


def _raw_and_smooth(
    ax: Axes, steps: np.ndarray, values: np.ndarray, color: Any, label: str | None, linestyle: str = "-"
) -> None:
    ts, vs = _thin(steps, values)
    ax.plot(ts, vs, color=color, alpha=0.22, linewidth=0.6)
    smooth = moving_average(values, smoothing_window(values.size))
    ts, vs = _thin(steps, smooth)
    ax.plot(ts, vs, color=color, linewidth=1.5, label=label, linestyle=linestyle)


def _shade(ax: Axes, window: Window) -> None:
    if not window.empty:
        ax.axvspan(
            window.start,
            window.stop,
            color="0.85",
            alpha=0.5,
            linewidth=0,
            zorder=0,
            label="equilibrium window",
        )


def _legend(ax: Axes, n_layers: int, **kwargs: Any) -> None:
    """The legend right of the axes, where it covers no trace (a colour note instead for many layers)."""
    if n_layers <= MAX_LEGEND:
        ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0.0, **kwargs)
    else:
        ax.text(1.01, 1.0, f"{n_layers} layers;\ncolour runs from\nthe first (purple)\nto the last (yellow)",
                transform=ax.transAxes, fontsize=7, va="top")


def _log_y(ax: Axes) -> None:
    """A log y axis labelled in plain numbers at 1, 2, 5 × 10^k (matplotlib's default labels short ranges
    in scientific notation, such as 4×10⁰)."""
    from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

    ax.set_yscale("log")
    ax.yaxis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
    ax.yaxis.set_major_formatter(FuncFormatter(lambda value, _: f"{value:g}"))
    ax.yaxis.set_minor_formatter(NullFormatter())


def _save(fig: Figure, out_dir: Path, number: int, title: str, xlabel: str, ylabel: str) -> Path:
    if len(fig.axes) == 1:
        ax = fig.axes[0]
        ax.set_title(f"Figure {number}. {title}", fontsize=10)
        ax.set_xlabel(xlabel)
        ax.set_ylabel(ylabel)
    else:
        fig.suptitle(f"Figure {number}. {title}", fontsize=10)
        fig.supxlabel(xlabel, fontsize=9)
        fig.supylabel(ylabel, fontsize=9)
    path = out_dir / f"fig{number:02d}.png"
    fig.savefig(path, dpi=DPI)
    return path


def _w0_sq(run: Run, layer: str) -> float | None:
    """|w_0|² = |w_t|² / (|w_t|²/|w_0|²) at the first step both were logged, else |w|² at its first step."""
    w2, rel = run.series("w_norm2", layer), run.series("w_norm2_rel", layer)
    if w2 is not None and rel is not None:
        _, a, b = align(w2, rel)
        ok = b > 0
        if ok.any():
            return float(a[ok][0] / b[ok][0])
    if w2 is not None and w2.values[0] > 0:
        return float(w2.values[0])
    return None


def _skip(number: int, why: str) -> FigureResult:
    return FigureResult(number, TITLES[number], None, note=f"Figure {number} skipped: {why}.")


# ------------------------------------------------------------------------------ figures 1–4
def _per_layer_figure(
    analysis: Analysis,
    out_dir: Path,
    number: int,
    metrics: Sequence[str],
    draw: Callable[[Axes, Run, str, Any], None],
    ylabel: str,
    caption: str,
) -> FigureResult:
    run = analysis.roles.primary
    if run is None:
        return _skip(number, "no run logged normwatch scalars")
    layers = run.layers_with(*metrics)
    if not layers:
        names = " and ".join(f"`{m}`" for m in metrics)
        return _skip(number, f"run {run.name} logged no {names} scalars")
    fig, ax = _new_figure()
    _shade(ax, analysis.run_window(run))
    for layer, color in zip(layers, _colors(len(layers)), strict=True):
        draw(ax, run, layer, color)
    _legend(ax, len(layers))
    path = _save(fig, out_dir, number, TITLES[number], "optimizer step", ylabel)
    return FigureResult(number, TITLES[number], path, f"Run {run.name}. {caption}")


def _normalised(run: Run, metric: str, layer: str) -> tuple[Series, bool]:
    s = run.series(metric, layer)
    assert s is not None
    w0 = _w0_sq(run, layer)
    return (Series(s.steps, s.values / w0), True) if w0 else (s, False)


def figure_shrink(analysis: Analysis, out_dir: Path) -> FigureResult:
    """Figure 1: shrink (the weight-decay part of Δ|w|²) per step, in units of |w_0|²."""

    def draw(ax: Axes, run: Run, layer: str, color: Any) -> None:
        s, _ = _normalised(run, "shrink", layer)
        ts, vs = _thin(s.steps, s.values)
        ax.plot(ts, vs, color=color, linewidth=1.2, label=layer)

    return _per_layer_figure(
        analysis,
        out_dir,
        1,
        ["shrink"],
        draw,
        "shrink per step / |w₀|²",
        "Weight-decay part of Δ|w|² per step (positive: decay reduces |w|²), divided by each layer's initial |w|².",
    )


def figure_growth(analysis: Analysis, out_dir: Path) -> FigureResult:
    """Figure 2: growth (the gradient part of Δ|w|²) per step, in units of |w_0|²."""

    def draw(ax: Axes, run: Run, layer: str, color: Any) -> None:
        s, _ = _normalised(run, "growth", layer)
        _raw_and_smooth(ax, s.steps, s.values, color, layer)

    return _per_layer_figure(
        analysis,
        out_dir,
        2,
        ["growth"],
        draw,
        "growth per step / |w₀|²",
        "Gradient part of Δ|w|² per step divided by each layer's initial |w|²: "
        "light trace raw, solid line a centred moving average.",
    )


def figure_superimposed(analysis: Analysis, out_dir: Path) -> FigureResult:
    """Figure 3: figures 1 and 2 on one axis (growth smoothed, dashed)."""

    def draw(ax: Axes, run: Run, layer: str, color: Any) -> None:
        if "growth (dashed, smoothed)" not in ax.get_legend_handles_labels()[1]:  # the line-style key, once
            ax.plot([], [], color="0.2", linewidth=1.2, label="shrink (solid)")
            ax.plot([], [], color="0.2", linewidth=1.2, linestyle="--", label="growth (dashed, smoothed)")
        s, _ = _normalised(run, "shrink", layer)
        g, _ = _normalised(run, "growth", layer)
        ts, vs = _thin(s.steps, s.values)
        ax.plot(ts, vs, color=color, linewidth=1.2, label=layer)
        smooth = moving_average(g.values, smoothing_window(len(g)))
        ts, vs = _thin(g.steps, smooth)
        ax.plot(ts, vs, color=color, linewidth=1.2, linestyle="--")

    return _per_layer_figure(
        analysis,
        out_dir,
        3,
        ["shrink", "growth"],
        draw,
        "per step / |w₀|²",
        "Solid: shrink (figure 1); dashed: growth (figure 2, smoothed). In equilibrium the two coincide.",
    )


def figure_norm(analysis: Analysis, out_dir: Path) -> FigureResult:
    """Figure 4: |w|²/|w_0|² per layer (``w_norm2_rel``, else ``w_norm2`` over its first value)."""
    run = analysis.roles.primary
    metric = "w_norm2_rel"
    if run is not None and not run.layers_with(metric):
        metric = "w_norm2"

    def draw(ax: Axes, run: Run, layer: str, color: Any) -> None:
        s = run.series(metric, layer)
        assert s is not None
        values = s.values if metric == "w_norm2_rel" else s.values / s.values[0]
        ts, vs = _thin(s.steps, values)
        ax.plot(ts, vs, color=color, linewidth=1.2, label=layer)

    return _per_layer_figure(
        analysis,
        out_dir,
        4,
        [metric],
        draw,
        "|w|² / |w₀|²",
        "Squared weight norm of each layer, normalised to 1 at the first logged step.",
    )


# ------------------------------------------------------------------------------ figures 5 and 7
def _draw_theory(ax: Axes, theories: list[Series], label: str) -> float:
    """Draw prediction lines in black: one line if every layer's prediction is the same."""
    same = len(theories) > 0 and all(
        t.steps.shape == theories[0].steps.shape and np.allclose(t.values, theories[0].values, rtol=1e-6)
        for t in theories
    )
    top = 0.0
    for i, theory in enumerate(theories[:1] if same else theories):
        ax.plot(
            theory.steps,
            theory.values,
            color="black",
            linewidth=1.3,
            linestyle="-" if same else ":",
            label=label if i == 0 else None,
        )
        top = max(top, float(np.nanmax(theory.values)))
    return top


def _lars_theory(run: Run, layer: str) -> Series | None:
    """normwatch's ``lars_theory`` where logged, else the seed's √(2ηλ(1−μ)) from the logged hyperparameters."""
    theory = run.series("lars_theory", layer)
    if theory is None and (hyper := run.hyper(layer)) is not None:
        lr, wd, mom = hyper
        theory = Series(lr.steps, seed_lars_prediction(lr.values, wd.values, mom.values, run.dampening))
    return theory if theory is not None and np.any(theory.values > 0) else None


def _lars_panel(ax: Axes, run: Run, layer: str, color: Any, window: Window) -> tuple[float, bool]:
    """One layer's η|g|/|w| (light dots, and their moving RMS in colour) with its prediction in black;
    returns the top of the y range it needs and whether a prediction was drawn."""
    s = run.series("lars_ratio", layer)
    assert s is not None
    _shade(ax, window)
    ts, vs = _thin(s.steps, s.values)
    ax.scatter(ts, vs, s=4, color=color, alpha=0.2, linewidths=0)
    moving_rms = np.sqrt(moving_average(s.values**2, smoothing_window(len(s))))
    ts, vs = _thin(s.steps, moving_rms)
    ax.plot(ts, vs, color=color, linewidth=1.4, label="η|g|/|w|, moving RMS")
    theory = _lars_theory(run, layer)
    if theory is not None:
        ax.plot(theory.steps, theory.values, color="black", linewidth=1.1, label="equilibrium prediction")
    ax.set_title(layer, fontsize=8)
    ax.tick_params(labelsize=7)
    top = float(np.nanpercentile(s.values, 99.5))
    if theory is not None:
        top = max(top, 1.6 * float(np.nanmax(theory.values)))
    return top, theory is not None


def _lars_figure(analysis: Analysis, out_dir: Path, number: int, run: Run) -> FigureResult:
    """η|g|/|w| against its prediction, one panel per layer (a shared colour key cannot separate eight layers
    that all track the same line)."""
    layers = run.layers_with("lars_ratio")
    if not layers:
        return _skip(number, f"run {run.name} logged no `lars_ratio` scalars")
    cols = min(len(layers), 4 if len(layers) <= 16 else 6)
    rows = -(-len(layers) // cols)
    fig, axes = _new_grid(rows, cols, 9.0, 1.0 + (1.9 if len(layers) <= 16 else 1.3) * rows)
    window = analysis.run_window(run)
    drawn = [_lars_panel(ax, run, layer, color, window)
             for ax, layer, color in zip(axes, layers, _colors(len(layers)))]
    for ax in axes[len(layers):]:
        ax.set_visible(False)
    top = max(t for t, _ in drawn)
    if top > 0:
        axes[0].set_ylim(0, top * 1.05)
    handles, labels = axes[0].get_legend_handles_labels()
    fig.legend(handles, labels, fontsize=7, loc="outside right upper")
    path = _save(fig, out_dir, number, TITLES[number], "optimizer step", "η|g|/|w|")
    caption = (
        f"Run {run.name} (momentum {run.momentum:g}), one panel per layer. Light dots: η|g|/|w| at each step; "
        "coloured line: its centred moving root mean square (equilibrium predicts the RMS); black: the "
        "equilibrium value √(2ηλ(1−μ)) (normwatch's `lars_theory` where logged); grey band: the equilibrium window."
    )
    note = "" if any(d for _, d in drawn) else "No prediction drawn: no weight decay or unknown optimizer."
    return FigureResult(number, TITLES[number], path, caption, note)


def figure_lars_sgd(analysis: Analysis, out_dir: Path) -> FigureResult:
    """Figure 5: η|g|/|w| with its prediction on the SGD-without-momentum run."""
    if analysis.roles.sgd is None:
        return _skip(5, "no SGD run without momentum among the inputs (the demo's runs/<study>/sgd); figure 7 "
                        "shows the run with momentum")
    return _lars_figure(analysis, out_dir, 5, analysis.roles.sgd)


def figure_lars_sgdm(analysis: Analysis, out_dir: Path) -> FigureResult:
    """Figure 7: as figure 5 for the momentum run."""
    if analysis.roles.sgdm is None:
        return _skip(7, "no SGD run with momentum > 0 among the inputs (the demo's runs/<study>/sgdm)")
    return _lars_figure(analysis, out_dir, 7, analysis.roles.sgdm)


# ------------------------------------------------------------------------------ figure 6
def figure_autocorr(analysis: Analysis, out_dir: Path) -> FigureResult:
    """Figure 6: cos(g_t, v_{t−1}) per layer, raw and smoothed, with the zero line."""

    def draw(ax: Axes, run: Run, layer: str, color: Any) -> None:
        s = run.series("grad_autocorr", layer)
        assert s is not None
        _raw_and_smooth(ax, s.steps, s.values, color, layer)
        ax.axhline(0.0, color="black", linewidth=0.8)

    return _per_layer_figure(
        analysis,
        out_dir,
        6,
        ["grad_autocorr"],
        draw,
        r"$\cos(g_t,\, v_{t-1})$",
        "Cosine between each step's gradient and an exponential moving average of the "
        "previous gradients; light trace raw, solid line smoothed.",
    )


# ------------------------------------------------------------------------------ figure 8
def figure_sweep(analysis: Analysis, out_dir: Path) -> FigureResult:
    """Figure 8: final test accuracy against peak lr, one line per architecture (mean over seeds)."""
    table = sweep_table(analysis.roles.sweep)
    lrs = {lr for per_lr in table.values() for lr in per_lr}
    if len(lrs) < 2:
        return _skip(
            8,
            'no learning-rate sweep among the inputs (runs with the demo\'s part "sweep", or runs '
            "that differ in peak lr, each with a final test/acc)",
        )
    fig, ax = _new_figure()
    best = best_lrs(table)
    for (arch, per_lr), color in zip(sorted(table.items()), _colors(len(table)), strict=True):
        xs = sorted(per_lr)
        means = [float(np.mean(per_lr[x])) for x in xs]
        for x in xs:
            ax.scatter([x] * len(per_lr[x]), per_lr[x], s=14, color=color, alpha=0.35, linewidths=0)
        ax.plot(xs, means, color=color, marker="o", markersize=4, linewidth=1.5, label=arch)
        ax.scatter(
            [best[arch]],
            [max(means)],
            s=120,
            marker="*",
            color=color,
            edgecolors="black",
            linewidths=0.6,
            zorder=5,
        )
    if max(lrs) / min(lrs) >= 4:
        ax.set_xscale("log")
    _legend(ax, len(table))
    path = _save(fig, out_dir, 8, TITLES[8], "peak learning rate", "final test accuracy")
    n_seeds = max(len(v) for per_lr in table.values() for v in per_lr.values())
    caption = (
        f"{len(analysis.roles.sweep)} sweep runs. Lines: mean over seeds (up to {n_seeds}); light dots: "
        "each run; star: each architecture's best peak lr."
    )
    return FigureResult(8, TITLES[8], path, caption)


# ------------------------------------------------------------------------------ figure 9
def figure_angle(analysis: Analysis, out_dir: Path) -> FigureResult:
    """Figure 9: rotation per step (``angle``), raw and smoothed, against ``angle_theory``."""
    run = analysis.roles.primary
    if run is None:
        return _skip(9, "no run logged normwatch scalars")
    layers = run.layers_with("angle")
    if not layers:
        return _skip(9, f"run {run.name} logged no `angle` scalars")
    fig, ax = _new_figure()
    _shade(ax, analysis.run_window(run))
    theories: list[Series] = []
    for layer, color in zip(layers, _colors(len(layers)), strict=True):
        s = run.series("angle", layer)
        assert s is not None
        _raw_and_smooth(ax, s.steps, s.values, color, layer)
        theory = run.series("angle_theory", layer)
        if theory is not None:
            theories.append(theory)
    _draw_theory(ax, theories, "equilibrium prediction")
    _legend(ax, len(layers))
    path = _save(fig, out_dir, 9, TITLES[9], "optimizer step", "rotation per step (rad)")
    caption = (
        f"Run {run.name}. Angle between w_t and w_(t+1): light trace raw, solid line smoothed; black: "
        "normwatch's equilibrium prediction `angle_theory` (√(2ηλ/(1+μ)) for heavy-ball SGD)."
    )
    note = (
        ""
        if theories
        else ("No `angle_theory` was logged (no weight decay or unknown optimizer), so no prediction is drawn.")
    )
    return FigureResult(9, TITLES[9], path, caption, note)


# ------------------------------------------------------------------------------ figure 10
def norm_ratio_series(run: Run, layer: str) -> Series | None:
    """|w|/|w*| per step for one layer, with E[G²] a centred moving average of G² (see stats)."""
    lars, w2, hyper = run.series("lars_ratio", layer), run.series("w_norm2", layer), run.hyper(layer)
    if lars is None or w2 is None or hyper is None:
        return None
    lr, wd, mom = hyper
    steps, lars_v, w2_v = align(lars, w2)
    keep = np.isin(lr.steps, steps)
    steps2 = lr.steps[keep]
    sel = np.isin(steps, steps2)
    steps, lars_v, w2_v = steps[sel], lars_v[sel], w2_v[sel]
    eta, lam, mu = lr.values[keep], wd.values[keep], mom.values[keep]
    if steps.size == 0:
        return None
    g2 = scale_free_grad_sq(lars_v, w2_v, eta)
    mean_g2 = moving_average(g2, smoothing_window(g2.size))
    return Series(steps, norm_over_equilibrium(w2_v, mean_g2, eta, lam, mu, run.dampening))


def figure_equilibrium_norm(analysis: Analysis, out_dir: Path) -> FigureResult:
    """Figure 10: |w|/|w*| per layer, log scale, with the window and its end marked."""
    run = analysis.roles.primary
    if run is None:
        return _skip(10, "no run logged normwatch scalars")
    if run.family not in SGD_LIKE:
        return _skip(
            10,
            f"run {run.name} uses family {run.family}; G = |g|·|w| is recoverable from "
            "`lars_ratio` only for the SGD family",
        )
    curves = {layer: s for layer in run.layers if (s := norm_ratio_series(run, layer)) is not None}
    curves = {k: v for k, v in curves.items() if np.any(np.isfinite(v.values))}
    if not curves:
        return _skip(10, f"run {run.name} lacks `lars_ratio`, `w_norm2` or a positive lr and weight decay")
    fig, ax = _new_figure()
    window = analysis.run_window(run)
    _shade(ax, window)
    for (layer, s), color in zip(curves.items(), _colors(len(curves)), strict=True):
        ts, vs = _thin(s.steps, s.values)
        ax.plot(ts, vs, color=color, linewidth=1.2, label=layer)
    ax.axhline(1.0, color="black", linewidth=0.9)
    finite = np.concatenate([s.values[np.isfinite(s.values)] for s in curves.values()])
    if finite.max() / finite.min() > 3.0:
        _log_y(ax)
    if not window.empty:
        ax.axvline(window.stop, color="0.3", linestyle=":", linewidth=1.0)
    _legend(ax, len(curves))
    path = _save(fig, out_dir, 10, TITLES[10], "optimizer step", "|w| / |w*|")
    extra = f" n_c = {window.n_c:.0f} steps for this schedule." if window.n_c is not None else ""
    caption = (
        f"Run {run.name}. |w*|⁴ = η(1−τ_d)E[G²]/(2λ(1−μ)) with G = |g|·|w| = (lars_ratio/η)·|w|² per step "
        f"and E[G²] its centred moving average over {smoothing_window(max(len(s) for s in curves.values()))} "
        "logged steps. 1 is equilibrium; above 1 the norm lags behind a shrinking target (the end of "
        f"the schedule). Dotted: where the equilibrium window ends.{extra}"
    )
    return FigureResult(10, TITLES[10], path, caption)


FIGURES: tuple[Callable[[Analysis, Path], FigureResult], ...] = (
    figure_shrink,
    figure_growth,
    figure_superimposed,
    figure_norm,
    figure_lars_sgd,
    figure_autocorr,
    figure_lars_sgdm,
    figure_sweep,
    figure_angle,
    figure_equilibrium_norm,
)


def render_figures(analysis: Analysis, out_dir: Path) -> list[FigureResult]:
    """Draw figures 1–10 into ``out_dir`` (``figNN.png``), in order (the LM study's own: :mod:`.lm_figures`)."""
    from normwatch.report.lm_figures import render_lm_figures  # it draws with this module's helpers
    if lm_figures := render_lm_figures(analysis, out_dir):
        return lm_figures
    return [draw(analysis, out_dir) for draw in FIGURES]
