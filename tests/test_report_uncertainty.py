"""Noise-aware verdicts: hand-made event files whose answer is known (clear win, clear loss, within noise).

Every standard error below is computed here by hand from the accuracies and the test-set size the runs
logged (float32, as add_scalar stores them), not read back from the library.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest

from normwatch.report import analyse, load_runs
from normwatch.report.claims import claim_balance, claim_best_lr, claim_lars_accuracy, claim_lars_dynamics
from normwatch.report.uncertainty import (
    Interval,
    binomial_se,
    judge_near,
    mean_accuracy_se,
    median_se,
)
from tests import report_fixtures as rf


def f32(x: float) -> float:
    return float(np.float32(x))


# ------------------------------------------------------------------------------ the formulas
def test_binomial_se_of_the_cpu_study_test_set():
    """Issue 17: one accuracy on 1,000 test images has a standard error of about 1.3 points."""
    assert binomial_se(0.78, 1000) == pytest.approx(math.sqrt(0.78 * 0.22 / 1000), rel=1e-12)
    assert 0.012 < binomial_se(0.78, 1000) < 0.014
    assert binomial_se(1.0, 50) == 0.0
    with pytest.raises(ValueError, match="n > 0"):
        binomial_se(0.5, 0)


def test_seed_spread_is_floored_by_the_pooled_binomial_error():
    # spread: std([0.80, 0.78], ddof=1)/√2 = 0.01; pooled binomial √(0.79·0.21/2000) = 0.00911.
    assert mean_accuracy_se([0.80, 0.78], 1000) == pytest.approx(0.01, rel=1e-9)
    # identical seeds: the spread is 0, the pooled binomial error √(0.8·0.2/3000) remains.
    assert mean_accuracy_se([0.80] * 3, 1000) == pytest.approx(math.sqrt(0.16 / 3000), rel=1e-9)
    assert mean_accuracy_se([0.80], None) is None
    assert mean_accuracy_se([0.80, 0.70], None) == pytest.approx(0.05, rel=1e-9)


def test_median_se_and_the_three_readings():
    assert median_se([1.1, 0.95]) == pytest.approx(math.sqrt(math.pi / 2) * 0.15 / math.sqrt(2) / math.sqrt(2))
    assert median_se([1.0]) is None
    # ±5 % around 1, se 0.01: the interval ± 0.02 inside, outside, straddling
    assert judge_near(Interval(1.00, 0.01), 1.0, 0.05) == "holds"
    assert judge_near(Interval(1.20, 0.01), 1.0, 0.05) == "does not hold"
    assert judge_near(Interval(0.96, 0.01), 1.0, 0.05) == "inconclusive"
    assert judge_near(Interval(0.96, None), 1.0, 0.05) == "holds"  # no error known: the point decides


# ------------------------------------------------------------------------------ LARS vs SGD, accuracy
def _lars_study(root: Path, acc_sgd: float, acc_lars: float, n: int | None, *, lars_nesterov: bool = True,
                lars_angle: float = 1.0) -> list:
    sgdm = rf.sgd_run(root / "sgdm", part="sgdm", test_acc=acc_sgd, test_images=n, nesterov=True,
                      angle_noise=0.02, **rf.SGDM)
    rf.sgd_run(root / "lars", part="lars", peak_lr=rf.LARS_LR, weight_decay=0.05, momentum=0.9, family="lars",
               log_lars_theory=False, test_acc=acc_lars, test_images=n, nesterov=lars_nesterov, angle_noise=0.02,
               angle_scale=lars_angle, angle_base=np.sqrt(2.0 * sgdm.lr * 0.05 / 1.9), seed=2)
    return load_runs([root])


def _diff_se(a: float, b: float, n: int) -> float:
    a, b = f32(a), f32(b)
    return math.sqrt(a * (1 - a) / n + b * (1 - b) / n)


@pytest.mark.parametrize(("acc_lars", "n", "outcome"), [
    (0.935, 10_000, "holds"),  # 0 ± 0.0070: inside ±1 point
    (0.900, 10_000, "does not hold"),  # −0.035 ± 0.0078: wholly outside
    (0.930, 1_000, "inconclusive"),  # −0.005 ± 0.0224: straddles ±1 point
])
def test_lars_accuracy_reads_its_binomial_interval(tmp_path: Path, acc_lars: float, n: int, outcome: str):
    v = claim_lars_accuracy(analyse(_lars_study(tmp_path, 0.935, acc_lars, n)))
    se = _diff_se(acc_lars, 0.935, n)
    diff = f32(acc_lars) - f32(0.935)
    assert v.outcome == outcome, v
    assert v.se == pytest.approx(se, rel=1e-9)
    assert (v.low, v.high) == pytest.approx((diff - 2 * se, diff + 2 * se), rel=1e-9)
    assert f"[{diff - 2 * se:.3g}, {diff + 2 * se:.3g}]" in v.measured
    if outcome == "inconclusive":
        assert "cannot decide" in v.detail


def test_lars_accuracy_without_a_test_set_size_is_judged_on_its_point(tmp_path: Path):
    v = claim_lars_accuracy(analyse(_lars_study(tmp_path, 0.935, 0.930, None)))
    assert v.outcome == "holds" and v.se is None and "test-set size unknown" in v.measured


# ------------------------------------------------------------------------------ LARS vs SGD, dynamics
def test_rotation_ratio_prediction_is_corrected_for_heavy_ball_against_nesterov(tmp_path: Path):
    """Issue 17's case: heavy-ball LARS rotating 0.80× Nesterov SGD. Theory alone expects
    1/√(1 + 2μ − 2μ³) = 0.863 at μ = 0.9 (leading order), so 0.80 is −7 % of it: holds."""
    runs = _lars_study(tmp_path, 0.935, 0.935, None, lars_nesterov=False, lars_angle=0.80)
    v = claim_lars_dynamics(analyse(runs))
    mu = 0.9
    assert v.expected == pytest.approx(1 / math.sqrt(1 + 2 * mu - 2 * mu**3), rel=0.02)
    assert v.value == pytest.approx(0.80, abs=0.02)
    assert v.outcome == "holds", v
    assert "heavy ball LARS vs Nesterov SGD" in v.prediction


def test_rotation_ratio_of_matching_forms_is_predicted_1(tmp_path: Path):
    """The same 0.80 between two Nesterov runs is 20 % short of 1: does not hold."""
    v = claim_lars_dynamics(analyse(_lars_study(tmp_path, 0.935, 0.935, None, lars_angle=0.80)))
    assert v.expected == 1.0 and v.outcome == "does not hold" and v.detail == "-20% vs prediction"


# ------------------------------------------------------------------------------ dynamics, per-layer spread
def test_balance_with_layers_on_both_sides_of_the_tolerance_is_inconclusive(tmp_path: Path):
    rf.sgd_run(tmp_path / "sgdm", part="sgdm", layer_growth=(1.10, 0.95), **rf.SGDM)
    v = claim_balance(analyse(load_runs([tmp_path / "sgdm"])))
    median, se = (1.10 + 0.95) / 2, math.sqrt(math.pi / 2) * np.std([1.10, 0.95], ddof=1) / math.sqrt(2)
    assert v.value == pytest.approx(median, rel=1e-5)
    assert v.se == pytest.approx(se, rel=1e-4)
    assert v.outcome == "inconclusive"  # [0.837, 1.21] straddles 1 ± 10 %


def test_balance_with_every_layer_off_does_not_hold(tmp_path: Path):
    rf.sgd_run(tmp_path / "sgdm", part="sgdm", layer_growth=(1.30, 1.32), **rf.SGDM)
    v = claim_balance(analyse(load_runs([tmp_path / "sgdm"])))
    assert v.outcome == "does not hold" and v.low > 1.1  # 1.31 ± 0.035


# ------------------------------------------------------------------------------ best lr across architectures
def _sweep(root: Path, accs: dict[str, dict[float, tuple[float, ...]]], n: int | None) -> list:
    for arch, per_lr in accs.items():
        for lr, values in per_lr.items():
            for seed, acc in enumerate(values):
                rf.sweep_run(root / "sweep" / f"{arch}-lr{lr}-s{seed}", arch, lr, seed, acc, test_images=n)
    return load_runs([root])


#: arch a is best at 0.4 and b at 1.6, but each by only 1 point over the other lr.
CLOSE = {"a": {0.1: (0.70,), 0.4: (0.80,), 1.6: (0.79,)}, "b": {0.1: (0.70,), 0.4: (0.79,), 1.6: (0.80,)}}


def test_best_lr_within_noise_is_inconclusive(tmp_path: Path):
    """1 point apart on 1,000 images: the difference's 2 SE is 2·√(2·0.8·0.2/1000) = 3.6 points."""
    assert 2 * _diff_se(0.80, 0.79, 1000) > 0.01
    v = claim_best_lr(analyse(_sweep(tmp_path, CLOSE, 1000)))
    assert v.value == pytest.approx(4.0) and v.per_layer == {"a": 0.4, "b": 1.6}
    assert v.outcome == "inconclusive", v
    assert "0.4/1.6" in v.measured


def test_best_lr_clearly_apart_does_not_hold(tmp_path: Path):
    """The same accuracies on 100,000 images: 2 SE = 0.36 points, so 1 point is clear."""
    assert 2 * _diff_se(0.80, 0.79, 100_000) < 0.01
    v = claim_best_lr(analyse(_sweep(tmp_path, CLOSE, 100_000)))
    assert v.outcome == "does not hold" and v.detail == "best lrs differ by 4×"


def test_best_lr_clearly_the_same_holds(tmp_path: Path):
    accs = {"a": {0.1: (0.70,), 0.4: (0.80,), 1.6: (0.60,)}, "b": {0.1: (0.65,), 0.4: (0.78,), 1.6: (0.62,)}}
    v = claim_best_lr(analyse(_sweep(tmp_path, accs, 1000)))
    assert v.outcome == "holds" and v.value == 1.0


def test_best_lr_uses_the_spread_over_seeds(tmp_path: Path):
    """Two seeds per point, no test-set size: a's 0.4 vs 1.6 is 0.80 ± 0.01 vs 0.70 ± 0.01 (clear);
    b's 1.6 vs 0.4 is 0.80 ± 0.05 vs 0.79 ± 0.05 (the seeds disagree by 0.1: within noise)."""
    accs = {"a": {0.4: (0.81, 0.79), 1.6: (0.71, 0.69)}, "b": {0.4: (0.74, 0.84), 1.6: (0.75, 0.85)}}
    v = claim_best_lr(analyse(_sweep(tmp_path, accs, None)))
    assert v.per_layer == {"a": 0.4, "b": 1.6}
    assert v.outcome == "inconclusive"
