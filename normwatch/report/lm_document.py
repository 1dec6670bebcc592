"""The LM study's report as document blocks: a summary, the verdict table, the runs, the figures."""

from __future__ import annotations

import math

from normwatch.report.analysis import Analysis
from normwatch.report.claims import Verdict
from normwatch.report.document import Block, Heading, Paragraph, Table
from normwatch.report.figures import FigureResult
from normwatch.report.lm_measure import BLOCKS, NOISE_SE, TOLERANCES_LM, eta_lambda, layer_window, val_loss
from normwatch.report.runs import Run

OUTCOMES = ("holds", "does not hold", "inconclusive", "no data")

RULE_TEXT = (
    "Each claim is measured per layer and summarised by the median layer; tolerances were fixed before the "
    "report first judged a run of the study (the table in `normwatch/report/lm.py`). A window's statistic is "
    "also measured on "
    f"each of {BLOCKS} consecutive blocks of it; its noise is {NOISE_SE:g} × std(block values)/√{BLOCKS}, and a "
    "claim **holds** when its value is inside the tolerance by more than the noise, **does not hold** when it "
    "is outside by more than the noise, and is **inconclusive** in between: the runs cannot tell. Final "
    "validation losses take the spread of the last three evaluations as their noise. Windows: each layer's "
    "equilibrium window opens 3 τ_w = 3/(2ηλ) steps after warm-up (AdamW's and Muon's relaxation time of |w|², "
    "half of τ = 1/(ηλ)) and closes where the lr moves faster than |w|² can follow (τ_w·|d ln(η/λ)/dt| > 1/4); "
    "Adam with coupled L2 has none. "
    f"Gradient-norm rise: ≥ {1 + TOLERANCES_LM['rise']:g}× the lowest 10% mean after warm-up."
)


def _cell(v: Verdict) -> str:
    if v.outcome == "no data":
        return f"no data: {v.detail}"
    if v.outcome in ("does not hold", "inconclusive"):
        return f"**{v.outcome}** ({v.detail})" if v.detail else f"**{v.outcome}**"
    return "holds"


def verdict_table(verdicts: list[Verdict]) -> Table:
    """One row per claim: what was measured where, the prediction, the value ± noise, the verdict."""
    return Table(
        ["#", "claim", "statistic", "run", "window", "prediction", "measured ± noise", "tolerance", "verdict"],
        [[str(i), v.claim, v.statistic, v.run, v.window, v.prediction, v.measured, v.tolerance, _cell(v)]
         for i, v in enumerate(verdicts, start=1)],
    )


def _summary(analysis: Analysis, verdicts: list[Verdict]) -> Paragraph:
    from normwatch import __version__

    tally = [f"{sum(v.outcome == o for v in verdicts)} {o}" for o in OUTCOMES]
    recorded = [r.name for r in analysis.runs if r.has_normwatch]
    silent = [r.name for r in analysis.runs if not r.has_normwatch]
    text = (f"{len(analysis.runs)} runs of the LM study (demo/train_lm.py), read from TensorBoard event files by "
            f"normwatch {__version__}: {len(recorded)} with normwatch scalars")
    if silent:
        text += f"; {len(silent)} without (no scale-invariant layer recorded: {', '.join(silent)})"
    return Paragraph(text + f". Of its {len(verdicts)} claims: {', '.join(tally)}.")


def _run_row(run: Run) -> list[str]:
    x = eta_lambda(run)
    layers = run.layers
    win = layer_window(run, layers[0]) if layers else None
    loss = val_loss(run)
    return [
        run.name,
        f"{run.demo.get('arch', '?')}, {run.demo.get('optimizer', '?')}, {run.demo.get('schedule', '?')}"
        + (", λ follows η (AdamC)" if run.demo.get("decay_follows_lr") else ""),
        f"{x:.3g}" if x is not None else "—",
        f"{1 / x:.0f}" if x else "—",
        str(len(layers)),
        win.describe() if win is not None else "—",
        f"{loss.value:.4f}" if loss is not None and math.isfinite(loss.value) else "—",
    ]


def _figure_blocks(figures: list[FigureResult]) -> list[Block]:
    blocks: list[Block] = [Heading(2, "Figures")]
    for fig in figures:
        blocks += fig.blocks()
    return blocks


def lm_blocks(analysis: Analysis, figures: list[FigureResult], verdicts: list[Verdict]) -> list[Block]:
    """The LM study's report."""
    blocks: list[Block] = [
        Heading(1, "normwatch report: the LM study"),
        _summary(analysis, verdicts),
        Heading(2, "Verdicts"),
        verdict_table(verdicts),
        Paragraph(RULE_TEXT),
        Heading(2, "Runs"),
        Table(["run", "arch, optimizer, schedule", "ηλ (peak)", "τ = 1/(ηλ) (|w|² relaxes in τ/2)", "layers recorded",
               "window (first layer)", "final val loss"], [_run_row(r) for r in analysis.runs]),
        *_figure_blocks(figures),
    ]
    per_layer = [Paragraph(f"**{i}. {v.claim}**: " + ", ".join(f"`{k}` {x:.3g}" for k, x in v.per_layer.items()))
                 for i, v in enumerate(verdicts, start=1) if len(v.per_layer) > 1]
    return blocks + ([Heading(2, "Per-layer values"), *per_layer] if per_layer else [])
