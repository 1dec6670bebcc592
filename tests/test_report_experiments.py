"""Verdicts on the demo's eqinit, large-batch and smooth parts, from hand-made runs with known answers.

A run's η|g|/|w| ÷ lars_theory is 0.5 before step S and 1 from S on. The report smooths it over
smoothing_window(300) = 7 points (3 either side), so the smoothed value at t is 0.5 + 0.5·c/7 with c the points
≥ S in [t−3, t+3]; it first reaches 0.9 (within 10 % of 1) at c = 6, i.e. t = S + 2.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

from normwatch.report import analyse, load_runs
from normwatch.report.experiments import (
    eqinit_verdicts,
    large_batch_verdicts,
    settle_step,
    smooth_verdicts,
)
from tests import report_fixtures as rf

N = 300


def part_run(path: Path, demo: dict, acc: float, settle: int | None = N) -> None:
    """A run of a demo part: lars_ratio/lars_theory 0.5 before ``settle`` and 1 from it on (``None``: never),
    config.json (with 1,000 test images unless ``demo`` says otherwise) and result.json."""
    t = np.arange(N)
    theory = np.full(N, 0.01)
    ratio = np.where(t < (N if settle is None else settle), 0.5, 1.0) * theory
    scalars = {}
    for layer in rf.LAYERS:
        scalars[f"normwatch/lars_ratio/{layer}"] = ratio
        scalars[f"normwatch/lars_theory/{layer}"] = theory
    rf.write_events(path, scalars, {"normwatch/config": {"family": "sgd", "optimizer": "SGD", "nesterov": True}})
    (path / "config.json").write_text(json.dumps({"test_images": 1000, **demo}))
    (path / "result.json").write_text(json.dumps({"test_acc": acc}))


def test_a_passing_crossing_is_not_settling(tmp_path: Path):
    """The ratio is 0.5, then 1 on steps 40–49, 3 on 50–199 and 1 again from 200: the 10 steps at 1 are fewer
    than the 30 (10 % of 300) needed, so the run settles after step 200, where the smoothed 3 − 2c/7 (c of the 7
    points at 1) first is ≤ 1.1, at c = 7: step 203."""
    t = np.arange(N)
    ratio = np.where(t < 40, 0.5, np.where(t < 50, 1.0, np.where(t < 200, 3.0, 1.0))) * 0.01
    scalars = {f"normwatch/{m}/{layer}": v for layer in rf.LAYERS
               for m, v in (("lars_ratio", ratio), ("lars_theory", np.full(N, 0.01)))}
    rf.write_events(tmp_path / "r", scalars, {"normwatch/config": {"family": "sgd"}})
    assert settle_step(load_runs([tmp_path / "r"])[0]) == 203


def test_lars_settles_on_its_rotation(tmp_path: Path):
    """LARS's trust ratio makes lars_ratio its theory from step 0; its angle falls from 2× to its theory at step 100,
    so the smoothed 2 − c/7 is first ≤ 1.1 at c = 7: step 103."""
    t = np.arange(N)
    scalars = {}
    for layer in rf.LAYERS:
        scalars |= {f"normwatch/lars_ratio/{layer}": np.full(N, 0.01),
                    f"normwatch/lars_theory/{layer}": np.full(N, 0.01),
                    f"normwatch/angle/{layer}": np.where(t < 100, 2.0, 1.0) * 0.02,
                    f"normwatch/angle_theory/{layer}": np.full(N, 0.02)}
    rf.write_events(tmp_path / "r", scalars, {"normwatch/config": {"family": "lars"}})
    assert settle_step(load_runs([tmp_path / "r"])[0]) == 103


def eqinit(root: Path, settles: dict[str, tuple[int | None, ...]], accs: dict[str, tuple[float, ...]]) -> list:
    for init in ("default", "equilibrium"):
        for seed, (s, a) in enumerate(zip(settles[init], accs[init])):
            demo = {"part": "eqinit", "optimizer": "sgd", "init": init, "seed": seed, "nesterov": True}
            part_run(root / "eqinit" / f"sgd-{init}-s{seed}", demo, a, s)
    return load_runs([root])


def test_settle_step_is_two_steps_after_the_jump(tmp_path: Path):
    part_run(tmp_path / "r", {"part": "eqinit"}, 0.8, settle=150)
    assert settle_step(load_runs([tmp_path / "r"])[0]) == 152
    part_run(tmp_path / "never", {"part": "eqinit"}, 0.8, settle=None)
    assert settle_step(load_runs([tmp_path / "never"])[0]) is None


def test_eqinit_settles_sooner_and_trains_better(tmp_path: Path):
    runs = eqinit(tmp_path, {"default": (150, 160), "equilibrium": (40, 50)},
                  {"default": (0.70, 0.72), "equilibrium": (0.80, 0.78)})
    steps, acc = eqinit_verdicts(runs)
    # settle steps 152, 162 vs 42, 52: difference 110; each mean's se = std(ddof=1)/√2 = 5
    assert steps.value == pytest.approx(110.0) and steps.se == pytest.approx(math.hypot(5.0, 5.0))
    assert steps.outcome == "holds" and "sgd, Nesterov" in steps.claim
    # accuracies: spread se 0.01 each, floored by √(p(1−p)/2000): 0.01015 (p = 0.71) and 0.00911 (p = 0.79)
    se = math.hypot(math.sqrt(0.71 * 0.29 / 2000), 0.01)
    assert acc.value == pytest.approx(0.08, abs=1e-6) and acc.se == pytest.approx(se, rel=1e-3)
    assert acc.outcome == "holds"


def test_eqinit_that_settles_later_and_accuracy_within_noise(tmp_path: Path):
    runs = eqinit(tmp_path, {"default": (40,), "equilibrium": (150,)}, {"default": (0.80,), "equilibrium": (0.79,)})
    steps, acc = eqinit_verdicts(runs)
    assert steps.value == pytest.approx(-110.0) and steps.se is None and steps.outcome == "does not hold"
    se = math.hypot(math.sqrt(0.8 * 0.2 / 1000), math.sqrt(0.79 * 0.21 / 1000))  # binomial, n = 1000
    assert acc.se == pytest.approx(se, rel=1e-6) and acc.outcome == "inconclusive"


def test_a_run_that_never_settles_counts_as_its_length(tmp_path: Path):
    runs = eqinit(tmp_path, {"default": (None,), "equilibrium": (50,)}, {"default": (0.8,), "equilibrium": (0.8,)})
    steps, _ = eqinit_verdicts(runs)
    assert steps.value == pytest.approx(N - 52) and "never within ±10%: 1 default" in steps.measured


def large_batch(root: Path, accs: dict[tuple[int, str], float], n: int = 1000) -> list:
    for (b, variant), acc in accs.items():
        opt, init = ("sgd", "equilibrium") if variant == "sgd-eqinit" else (variant, "default")
        demo = {"part": "large-batch", "optimizer": opt, "init": init, "batch_size": b, "seed": 0, "test_images": n}
        part_run(root / "large-batch" / f"b{b}-{variant}-s0", demo, acc)
    return load_runs([root])


def test_large_batch_lars_wins_only_at_the_large_batch(tmp_path: Path):
    runs = large_batch(tmp_path, {(128, "sgd"): 0.80, (128, "lars"): 0.79, (128, "sgd-eqinit"): 0.80,
                                  (512, "sgd"): 0.60, (512, "lars"): 0.75, (512, "sgd-eqinit"): 0.61})
    rows = {v.claim: v for v in large_batch_verdicts(runs)}
    # batch 128: −0.01 ± 2·0.0180 (binomial, n = 1000): within noise
    small = rows["LARS beats SGD at batch 128"]
    assert small.se == pytest.approx(math.hypot(math.sqrt(0.79 * 0.21 / 1000), math.sqrt(0.16 / 1000)), rel=1e-6)
    assert small.outcome == "inconclusive"
    assert rows["LARS beats SGD at batch 512"].outcome == "holds"  # +0.15 ± 0.041
    assert rows["equilibrium init closes SGD's gap at batch 512"].outcome == "inconclusive"  # +0.01 ± 0.044
    summary = rows["LARS clearly wins at some batch size"]
    assert summary.outcome == "holds" and summary.detail == "at batch 512"


def test_large_batch_where_sgd_clearly_wins_everywhere(tmp_path: Path):
    runs = large_batch(tmp_path, {(128, "sgd"): 0.80, (128, "lars"): 0.60, (512, "sgd"): 0.70, (512, "lars"): 0.50})
    rows = {v.claim: v for v in large_batch_verdicts(runs)}
    assert rows["LARS clearly wins at some batch size"].outcome == "does not hold"


@pytest.mark.parametrize(("smoothed", "n", "outcome"), [(0.80, 1000, "inconclusive"), (0.85, 100_000, "holds"),
                                                         (0.75, 100_000, "does not hold")])
def test_smooth_reads_its_interval(tmp_path: Path, smoothed: float, n: int, outcome: str):
    for beta, acc in ((0.0, 0.80), (0.9, smoothed)):
        demo = {"part": "smooth", "optimizer": "lars", "grad_norm_beta": beta, "seed": 0, "test_images": n}
        part_run(tmp_path / "smooth" / f"beta{beta:g}-s0", demo, acc)
    (row,) = smooth_verdicts(analyse(load_runs([tmp_path])).runs)
    assert row.outcome == outcome and "β = 0.9" in row.claim
    a, b = float(np.float64(smoothed)), 0.80
    assert row.se == pytest.approx(math.hypot(math.sqrt(a * (1 - a) / n), math.sqrt(b * (1 - b) / n)), rel=1e-9)
