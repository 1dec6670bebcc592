"""``write_report``: event files in, ``report.md`` + ``report.html`` + PNGs + ``verdicts.json`` out."""

from __future__ import annotations

import json
import math
import os
import warnings
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from normwatch.report.analysis import Analysis, analyse
from normwatch.report.claims import TOLERANCES, Verdict, evaluate, sweep_table
from normwatch.report.document import Block, Heading, Note, Paragraph, Table, to_html, to_markdown
from normwatch.report.equilibrium import equilibrium_verdicts
from normwatch.report.experiments import experiment_verdicts
from normwatch.report.figures import FigureResult, render_figures
from normwatch.report.lm_document import lm_blocks
from normwatch.report.lm_measure import is_lm, is_lm_study
from normwatch.report.runs import Run, find_runs, load_runs
from normwatch.report.stats import SMOOTHING_FRACTION
from normwatch.report.uncertainty import Z
from normwatch.report.window import RELAXATION_TIMES, TRACKING_MARGIN

#: The one sentence shown when the optional plotting dependency is missing.
INSTALL_HINT = "normwatch report needs matplotlib: pip install 'normwatch[report]'"


class MissingReportDependencyError(ImportError):
    """matplotlib, the ``normwatch[report]`` extra, is not installed."""


def _require_matplotlib() -> None:
    try:
        import matplotlib  # noqa: F401
    except ImportError as err:
        raise MissingReportDependencyError(INSTALL_HINT) from err


def default_out(run_dirs: Sequence[str | Path]) -> Path:
    """``RUN_DIR/report`` for one directory, else ``report/`` in the directories' common parent."""
    paths = [Path(p) for p in run_dirs]
    if len(paths) == 1:
        return paths[0] / "report"
    return Path(os.path.commonpath([str(p.resolve()) for p in paths])) / "report"


WINDOW_TEXT = (
    "Equilibrium claims are measured on each layer's **equilibrium window**, computed from the logged "
    "lr η, weight decay λ and momentum μ at every step, with the relaxation time τ = (1−μ)/(4ηλ) steps "
    "of |w|⁴ (`normwatch.theory.sgd_relaxation_steps`); every other optimizer uses its own relaxation time "
    "(`normwatch.theory.relaxation_steps`: 1/(2ηλ) of |w|² for AdamW, Muon and other decoupled decay, "
    "((1−μ)/η)² of |w|² for LARS; none for Adam with L2 weight decay, whose τ depends on the gradient RMS, so "
    "it gets no window). (1) Warm-up ends at "
    "t_peak, the first step where η reaches its maximum. "
    f"(2) The window opens at the first step by which k = {RELAXATION_TIMES:g} relaxation times have accrued "
    "after t_peak (Σ Δt/τ ≥ k; t_peak + kτ for constant hyperparameters), when the initial distance of |w|⁴ "
    f"from its target has decayed by e^−k. (3) It closes at the first later step where the schedule moves "
    f"faster than the norm can follow: τ·|d ln(η/(λ(1−μ)))/dt| > 1/{TRACKING_MARGIN:g}. The quasi-static lag "
    f"of |w|⁴ behind its target is τ·|d ln η/dt|, so the window ends where that lag reaches "
    f"{1 / TRACKING_MARGIN:.0%} (about 6% in |w|); for a linear decay to zero this is 2·n_c steps before "
    "the end, with n_c = √((1−μ)D/(4η0λ)) the point where equilibrium is lost, and a step drop in the "
    "schedule ends it at the drop. Without weight decay there is no equilibrium and no window."
)


def _window_table(analysis: Analysis) -> Table:
    rows = []
    for run in analysis.runs:
        if not run.has_normwatch:
            continue
        win = analysis.run_window(run)
        rows.append(
            [
                run.name,
                str(win.peak_step) if win.peak_step is not None else "—",
                f"{win.tau_peak:.4g}" if math.isfinite(win.tau_peak) else "—" if math.isnan(win.tau_peak) else "∞",
                win.describe(),
                f"{win.n_c:.0f}" if win.n_c is not None else "—",
            ]
        )
    return Table(["run", "end of warm-up (step)", "τ at peak lr (steps)", "window (most layers)", "n_c (steps)"], rows)


def _roles_of(run: Run, analysis: Analysis) -> str:
    roles = analysis.roles
    names = [
        name
        for name, r in (
            ("primary", roles.primary),
            ("SGD μ=0", roles.sgd),
            ("SGD μ>0", roles.sgdm),
            ("LARS", roles.lars),
        )
        if r is run
    ]
    return ", ".join(names) or "—"


def _verdict_cell(v: Verdict) -> str:
    if v.outcome == "no data":
        return f"no data: {v.detail}"
    if v.outcome == "does not hold":
        return f"**does not hold** ({v.detail})" if v.detail else "**does not hold**"
    if v.outcome == "inconclusive":
        return f"inconclusive ({v.detail})" if v.detail else "inconclusive"
    return "holds"


def _per_layer_blocks(verdicts: list[Verdict]) -> list[Block]:
    blocks: list[Block] = []
    for i, v in enumerate(verdicts, start=1):
        if len(v.per_layer) > 1:
            cells = ", ".join(f"`{k}` {val:.3g}" for k, val in v.per_layer.items())
            blocks.append(Paragraph(f"**{i}. {v.claim}** ({v.statistic}): {cells}."))
    return blocks


def _numbers(verdicts: list[Verdict], outcome: str) -> list[str]:
    return [str(i) for i, v in enumerate(verdicts, start=1) if v.outcome == outcome]


def _summary(analysis: Analysis, verdicts: list[Verdict]) -> Paragraph:
    """The opening paragraph: what was read, and how the seed's claims fared."""
    from normwatch import __version__

    sweep = analysis.roles.sweep
    main = [r.name for r in analysis.runs if r.has_normwatch]
    read = f"{len(main)} run(s) with normwatch scalars ({', '.join(main)})" if main else "no normwatch run"
    if sweep:
        read += f" and a learning-rate sweep of {len(sweep)} runs"
    held, failed, unsure, missing = (
        _numbers(verdicts, o) for o in ("holds", "does not hold", "inconclusive", "no data")
    )
    failures = "; ".join(f"{i}: {verdicts[int(i) - 1].detail}" for i in failed)
    tally = [f"{len(held)} hold" + (f" ({', '.join(held)})" if held else "")]
    if failed:
        tally.append(f"{len(failed)} {'does' if len(failed) == 1 else 'do'} not ({failures})")
    if unsure:
        tally.append(f"{len(unsure)} {'is' if len(unsure) == 1 else 'are'} inconclusive ({', '.join(unsure)})")
    if missing:
        tally.append(f"{len(missing)} lack data ({', '.join(missing)})")
    return Paragraph(
        f"{read}, read from TensorBoard event files by normwatch {__version__}. Of the {len(verdicts)} claims "
        f"of Myrtle's “How to Train Your ResNet 6: Weight Decay” tested below, {', '.join(tally)}. Each row says "
        "which run and which steps it measured; the runs, their equilibrium windows and the figures follow "
        "(1–8 in the seed's order, 9–10 beyond it)."
    )


TOLERANCE_TEXT = (
    "Each claim is measured per layer and summarised by the median layer; **holds** means the median "
    "layer is within the tolerance, and the measured column says how many layers are and over what "
    "range. Tolerances were fixed before looking at any run: "
    f"|cos(w,g)| ≤ {TOLERANCES['cos_wg']:g}; Σgrowth/Σshrink within ±{TOLERANCES['balance']:.0%}; "
    f"RMS of η|g|/|w| over its prediction within ±{TOLERANCES['lars']:.0%}; "
    f"|mean cos(g_t, v_(t−1))| ≤ {TOLERANCES['autocorr']:g}; LARS vs SGD final accuracy within one "
    f"percentage point and rotation per step within ±{TOLERANCES['lars_angle']:.0%}; best peak lrs "
    f"within a factor {TOLERANCES['best_lr']:g}. Where the data says a claim fails, the verdict "
    "says by how much. For the two equilibrium ratios the prediction column also says what the lr "
    "schedule alone would do to them on the window (the quasi-static lag δ = τ·d ln η/dt of a norm "
    "trailing its target, at constant scale-free gradient norm G); it is context, not the target. "
    f"Every verdict reads its statistic's interval, the estimate ± {Z:g} standard errors "
    "(`normwatch.report.uncertainty`): a test accuracy's binomial error √(p(1−p)/n) from the test-set size n, "
    "the spread over seeds where there are several, the spread over layers of a median over layers "
    "(√(π/2)·s/√L). A claim **holds** when the whole interval lies within the tolerance, **does not hold** "
    "when it lies wholly outside, and is **inconclusive** when it straddles an edge: the data cannot decide. "
    "The measured column shows the interval; one layer, or an unknown test-set size, gives none."
)


def _verdict_table(verdicts: list[Verdict]) -> Table:
    return Table(
        ["#", "claim", "statistic", "run", "window", "prediction", "measured", "tolerance", "verdict"],
        [
            [str(i), v.claim, v.statistic, v.run, v.window, v.prediction, v.measured, v.tolerance, _verdict_cell(v)]
            for i, v in enumerate(verdicts, start=1)
        ],
    )


def _sweep_rows(sweep: list[Run]) -> list[list[str]]:
    """One row per architecture of the sweep: its peak lrs, seeds and accuracies."""
    rows = []
    for arch, per_lr in sorted(sweep_table(sweep).items()):
        runs = [r for r in sweep if (r.arch or "(unnamed)") == arch]
        lrs, accs = sorted(per_lr), [a for values in per_lr.values() for a in values]
        seeds = sorted({str(r.demo.get("seed", "?")) for r in runs})
        best = max(lrs, key=lambda lr: float(np.mean(per_lr[lr])))
        rows.append([
            f"sweep: {arch} ({len(runs)} runs)",
            "sweep",
            f"peak lr {lrs[0]:g}–{lrs[-1]:g} ({len(lrs)} values), seed(s) {', '.join(seeds)}; final test acc "
            f"{min(accs):.4g}–{max(accs):.4g}, best {float(np.mean(per_lr[best])):.4g} at peak lr {best:g}",
        ])
    return rows


def _runs_blocks(analysis: Analysis, skipped: list[Run]) -> list[Block]:
    sweep = {id(r) for r in analysis.roles.sweep}
    rows = [[r.name, _roles_of(r, analysis), r.describe()] for r in analysis.runs if id(r) not in sweep]
    blocks: list[Block] = [
        Heading(2, "Runs"),
        Table(["run", "role", "what it is"], rows + _sweep_rows(analysis.roles.sweep)),
    ]
    if skipped:
        blocks.append(Note(f"Skipped, holding no normwatch scalars: {', '.join(r.name for r in skipped)}."))
    return blocks


def _figure_blocks(figures: list[FigureResult]) -> list[Block]:
    blocks: list[Block] = [
        Heading(2, "Figures"),
        Paragraph(
            "One colour per layer (figures 5 and 7: one panel per layer); the grey band is the equilibrium "
            "window of the run shown. Noisy "
            "series are drawn as a light raw trace under a centred moving average over "
            f"{SMOOTHING_FRACTION:.0%} of the logged steps."
        ),
    ]
    for fig in figures:
        blocks += fig.blocks()
    return blocks


#: A further table of verdicts: (file stem, heading, paragraph, rows).
Section = tuple[str, str, str, list[Verdict]]

EQUILIBRIUM_TEXT = (
    "The two equilibrium claims asked of every run that logged what they need, whatever its optimizer: its "
    "mean rotation per step against normwatch's `angle_theory` for its optimizer, and Σgrowth/Σshrink, each "
    "over the window that the optimizer's own relaxation time gives (see the Equilibrium window section). "
    "`normwatch.report.equilibrium.angle_verdict` judges one run."
)


EXPERIMENTS_TEXT = (
    "The demo's eqinit, large-batch and smooth parts (`normwatch.report.experiments`). Each row compares two "
    "groups of runs (one run per seed) and reads the difference's interval, the estimate ± "
    f"{Z:g} standard errors: **holds** when it lies above 0, **does not hold** when below, **inconclusive** "
    "when it contains 0. A test accuracy's error is binomial on the logged test-set size, and the mean over "
    "seeds is floored by it; steps to equilibrium use the spread over seeds alone."
)


def sections(analysis: Analysis) -> list[Section]:
    """The verdict tables after the seed's claims (empty ones left out)."""
    out: list[Section] = [
        ("equilibrium", "Equilibrium of every run", EQUILIBRIUM_TEXT, equilibrium_verdicts(analysis)),
        ("experiments", "Equilibrium init, large batches, smoothed LARS", EXPERIMENTS_TEXT,
         experiment_verdicts(analysis)),
    ]
    return [section for section in out if section[3]]


def _section_blocks(extra: list[Section]) -> list[Block]:
    blocks: list[Block] = []
    for _, heading, text, rows in extra:
        blocks += [Heading(2, heading), Paragraph(text), _verdict_table(rows)]
    return blocks


def _blocks(
    analysis: Analysis, figures: list[FigureResult], verdicts: list[Verdict], skipped: list[Run],
    extra: list[Section] | None = None,
) -> list[Block]:
    """The report: the summary and the verdicts first, then the further verdict tables, the runs, the windows,
    the figures; an LM study's own document instead."""
    if is_lm_study(analysis.runs):
        return lm_blocks(analysis, figures, verdicts) + _section_blocks(extra or [])
    blocks: list[Block] = [
        Heading(1, "normwatch report"),
        _summary(analysis, verdicts),
        Heading(2, "Verdicts on the seed's claims"),
        _verdict_table(verdicts),
        Paragraph(TOLERANCE_TEXT),
        *_section_blocks(extra or []),
        *_runs_blocks(analysis, skipped),
        Heading(2, "Equilibrium window"),
        Paragraph(WINDOW_TEXT),
        _window_table(analysis),
        *_figure_blocks(figures),
    ]
    per_layer = _per_layer_blocks(verdicts)
    if per_layer:
        blocks += [Heading(2, "Per-layer values"), *per_layer]
    return blocks


class SkippedRunsWarning(UserWarning):
    """Some of the runs read hold nothing the report can use (no normwatch scalars, not a sweep point)."""


def _names(runs: list[Run], most: int = 6) -> str:
    names = [r.name for r in runs[:most]]
    return ", ".join(names) + (f" and {len(runs) - most} more" if len(runs) > most else "")


def usable_runs(runs: list[Run], paths: Sequence[str | Path]) -> tuple[list[Run], list[Run]]:
    """Split runs into those the report uses (normwatch scalars, or a sweep point) and those it skips.

    Raises:
        ValueError: none is usable (one sentence naming the paths).
    """
    kept = [r for r in runs if r.has_normwatch or r.is_sweep_point or is_lm(r)]  # an LM run says what it lacks
    skipped = [r for r in runs if not (r.has_normwatch or r.is_sweep_point or is_lm(r))]
    if not kept:
        where = ", ".join(str(p) for p in paths)
        what = f"the run in {where} holds" if len(runs) == 1 else f"none of the {len(runs)} runs under {where} holds"
        raise ValueError(
            f"{what} normwatch scalars (normwatch/<metric>/<layer>), so there is nothing to report: point it at "
            "runs written by normwatch.attach(...) or the demo's study directory."
        )
    return kept, skipped


def write_report(run_dirs: Sequence[str | Path], out: str | Path | None = None) -> Path:
    """Read normwatch runs and write the report: figures, ``report.md``, ``report.html``.

    Args:
        run_dirs: run directories (holding event files) or study directories (whose
            subdirectories, at any depth, are runs).
        out: output directory; defaults to ``RUN_DIR/report`` for one directory and to
            ``report/`` in the common parent of several.

    Returns:
        The path of ``report.md``. Next to it: ``report.html`` (self-contained), ``figNN.png``
        for each figure drawn, ``verdicts.json`` (the table as data) and one JSON file per further table
        (``equilibrium.json``: :func:`~normwatch.report.equilibrium.equilibrium_verdicts`).

    Raises:
        ImportError: matplotlib is not installed (the message says how to install it).
        FileNotFoundError: a directory does not exist.
        ValueError: a directory holds no event files, or no run holds normwatch scalars or a sweep
            point.

    Warns:
        SkippedRunsWarning: some runs hold no normwatch scalars (they are named, and left out).

    Example::

        from normwatch.report import write_report
        path = write_report(["runs/study"])  # runs/study/report/report.md
    """
    if isinstance(run_dirs, (str, Path)):
        run_dirs = [run_dirs]
    if not run_dirs:
        raise ValueError("Expected at least one run directory, but got none.")
    find_runs(run_dirs)  # a mistyped path is reported before a missing extra
    _require_matplotlib()
    out_dir = Path(out) if out is not None else default_out(run_dirs)
    runs, skipped = usable_runs(load_runs(run_dirs), run_dirs)
    if skipped:
        warnings.warn(f"skipped {len(skipped)} of {len(runs) + len(skipped)} runs, which hold no normwatch "
                      f"scalars: {_names(skipped)}.", SkippedRunsWarning, stacklevel=2)
    analysis = analyse(runs)
    out_dir.mkdir(parents=True, exist_ok=True)
    for stale in out_dir.glob("fig[0-9][0-9].png"):
        stale.unlink()
    figures = render_figures(analysis, out_dir)
    verdicts = evaluate(analysis)
    extra = sections(analysis)
    blocks = _blocks(analysis, figures, verdicts, skipped, extra)
    md_path = out_dir / "report.md"
    md_path.write_text(to_markdown(blocks), encoding="utf-8")
    (out_dir / "report.html").write_text(to_html(blocks, "normwatch report"), encoding="utf-8")
    (out_dir / "verdicts.json").write_text(
        json.dumps([v.to_dict() for v in verdicts], indent=2, ensure_ascii=False), encoding="utf-8"
    )
    for stem, _, _, rows in extra:
        (out_dir / f"{stem}.json").write_text(
            json.dumps([v.to_dict() for v in rows], indent=2, ensure_ascii=False), encoding="utf-8"
        )
    return md_path
