"""``normwatch report``: the seed's figures and a verdict on each of its claims, from any run.

Reads the TensorBoard event files of normwatch runs (``normwatch/<metric>/<layer>`` scalars) and
writes PNG figures, ``report.md``, a self-contained ``report.html`` and ``verdicts.json``.
Figures 1–8 follow Myrtle's *How to train your ResNet 6: weight decay*; 9 (rotation per step) and
10 (|w|/|w*|) go beyond it. matplotlib is the optional extra ``normwatch[report]``.

Example::

    from normwatch.report import write_report
    write_report(["runs/study"], out="runs/study/report")

Modules: :mod:`~normwatch.report.runs` (reading), :mod:`~normwatch.report.window` (the
equilibrium window), :mod:`~normwatch.report.stats` (formulas), :mod:`~normwatch.report.claims`
(verdicts), :mod:`~normwatch.report.figures`, :mod:`~normwatch.report.document` (Markdown/HTML).
"""

from normwatch.report.analysis import Analysis, analyse
from normwatch.report.build import (
    INSTALL_HINT,
    MissingReportDependencyError,
    SkippedRunsWarning,
    default_out,
    usable_runs,
    write_report,
)
from normwatch.report.claims import TOLERANCES, Verdict, evaluate
from normwatch.report.runs import Run, Series, find_runs, load_run, load_runs
from normwatch.report.window import Window, equilibrium_window

__all__ = [
    "INSTALL_HINT",
    "TOLERANCES",
    "Analysis",
    "MissingReportDependencyError",
    "Run",
    "Series",
    "SkippedRunsWarning",
    "Verdict",
    "Window",
    "analyse",
    "default_out",
    "equilibrium_window",
    "evaluate",
    "find_runs",
    "load_run",
    "load_runs",
    "usable_runs",
    "write_report",
]
