"""Which run plays which part in the seed's figures and claims.

The seed uses an SGD-with-momentum run (figures 1–4, 6, 7), an SGD-without-momentum run
(figure 5), a LARS run and a learning-rate sweep over architectures (figure 8). Given any set of
runs, :func:`pick_roles` assigns them by what the runs logged, preferring the demo's labels
(``part``) when present, so the report also works on runs that are not the demo's.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from normwatch.report.runs import Run

#: Families whose update normwatch treats with the SGD rules (unknown: no config was logged).
SGD_LIKE = ("sgd", "unknown")
#: The demo's parts beyond the seed's study (issue 17): their runs take a seed role only when no other run fits.
EXPERIMENT_PARTS = ("eqinit", "large-batch", "smooth")


@dataclass(frozen=True)
class Roles:
    """Runs assigned to the seed's experiments (``None`` where no run fits).

    Attributes:
        primary: the run for the single-run figures (1–4, 6, 9, 10) and claims: the SGD-with-
            momentum run if any, else the SGD run, else the first run with normwatch scalars.
        sgd: SGD without momentum (μ = 0).
        sgdm: SGD with momentum (μ > 0).
        lars: a LARS run.
        sweep: runs of a learning-rate sweep (each with a peak lr and a final test accuracy).
    """

    primary: Run | None
    sgd: Run | None
    sgdm: Run | None
    lars: Run | None
    sweep: list[Run] = field(default_factory=list)


def _rank(run: Run) -> tuple[int, int, int, str]:
    # The seed's runs first (not the sweep's, nor issue 17's parts'), then runs whose family normwatch knew, then
    # by name.
    return (run.part == "sweep", run.part in EXPERIMENT_PARTS, run.family == "unknown", run.name)


def pick_roles(runs: Sequence[Run]) -> Roles:
    """Assign runs to roles.

    * ``sgd`` / ``sgdm``: an SGD-family run (or one of unknown family) whose momentum is 0 / > 0;
      among several, a non-sweep run whose family is known wins, then the first by name.
    * ``lars``: family ``"lars"`` (normwatch config or the demo's ``optimizer``).
    * ``sweep``: runs with the demo's ``part == "sweep"``; if there are none, all runs with
      neither a demo part nor a LARS optimizer that have a peak lr and a final test accuracy,
      provided their peak lrs differ.
    """
    nw = [r for r in runs if r.has_normwatch]
    sgd_like = sorted((r for r in nw if r.family in SGD_LIKE and r.momentum is not None), key=_rank)
    sgd = next((r for r in sgd_like if r.momentum == 0), None)
    sgdm = next((r for r in sgd_like if (r.momentum or 0) > 0), None)
    lars = next((r for r in sorted(nw, key=_rank) if r.family == "lars"), None)
    if lars is None:
        lars = next((r for r in sorted(runs, key=_rank) if r.family == "lars"), None)
    primary = sgdm or sgd or next(iter(sorted(nw, key=_rank)), None)

    sweep = [r for r in runs if r.part == "sweep" and r.final_test_acc is not None and r.peak_lr is not None]
    if not sweep:
        loose = [
            r
            for r in runs
            if r.part is None and r.family != "lars" and r.final_test_acc is not None and r.peak_lr is not None
        ]
        if len({r.peak_lr for r in loose}) >= 2:
            sweep = loose
    return Roles(primary=primary, sgd=sgd, sgdm=sgdm, lars=lars, sweep=sweep)
