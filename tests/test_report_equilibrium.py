"""Equilibrium claims for every optimizer family, on hand-made runs: angle ≈ theory and shrink ≈ growth over
the window that the family's own relaxation time gives (AdamW 1/(2ηλ), LARS ((1−μ)/η)²)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

from normwatch.report import analyse, load_runs, write_report
from normwatch.report.equilibrium import angle_verdict, balance_verdict, equilibrium_verdicts
from tests import report_fixtures as rf

LAYERS = ("blocks.0.attn.q", "blocks.0.mlp.fc")
LR, WD, BETA1 = 0.05, 0.1, 0.9  # AdamW: τ = 1/(2ηλ) = 100 steps
TAU = 1 / (2 * LR * WD)


def adamw_run(path: Path, n: int, off: float = 1.0, seed: int = 0) -> dict[str, np.ndarray]:
    """An AdamW run at constant η, λ: angle = off·θ*·(1 + 2e^(−t/τ))·(1 + 0.05·noise), growth = shrink
    from step 0; θ* any positive constant (the report reads it back as angle_theory)."""
    rng = np.random.default_rng(seed)
    t = np.arange(n, dtype=np.float64)
    theta = 0.03
    scalars, angles = {}, {}
    for i, layer in enumerate(LAYERS):
        angle = off * theta * (1 + 2 * np.exp(-t / TAU)) * (1 + 0.05 * rng.standard_normal(n))
        shrink = 2 * LR * WD * (3.0 + i) * np.ones(n)
        per = {"angle": angle, "angle_theory": np.full(n, theta), "shrink": shrink, "growth": shrink.copy(),
               "w_norm2": np.full(n, 3.0 + i), "lr": np.full(n, LR), "weight_decay": np.full(n, WD),
               "momentum": np.full(n, BETA1)}
        for metric, values in per.items():
            scalars[f"normwatch/{metric}/{layer}"] = values
        angles[layer] = angle
    config = {"optimizer": "AdamW", "family": "adamw",
              "layers": [{"name": layer, "norm": "LayerNorm", "params": 4096} for layer in LAYERS]}
    rf.write_events(path, scalars, {"normwatch/config": config})
    return angles


def test_adamw_angle_settled_at_its_theory_holds_on_its_own_window(tmp_path: Path):
    angles = adamw_run(tmp_path / "adamw", 600)
    (run,) = load_runs([tmp_path / "adamw"])
    analysis = analyse([run])
    v = angle_verdict(analysis, run)
    start = math.ceil(3 * TAU)  # k = 3 relaxation times after the peak (step 0: constant η)
    assert v.window == f"steps {start}–599"
    expected = {layer: np.sum(rf.f32(a)[start:]) / np.sum(rf.f32(np.full(600, 0.03))[start:])
                for layer, a in angles.items()}
    assert v.per_layer == pytest.approx(expected, rel=1e-6)
    assert v.outcome == "holds", v
    assert balance_verdict(analysis, run).outcome == "holds"


def test_adamw_angle_off_by_30_percent_does_not_hold(tmp_path: Path):
    adamw_run(tmp_path / "adamw", 600, off=1.3)
    (run,) = load_runs([tmp_path / "adamw"])
    v = angle_verdict(analyse([run]), run)
    t = np.arange(300, 600)
    transient = 1 + 2 * np.mean(np.exp(-t / TAU))  # the approach's remainder on the window, 1.0315
    assert v.value == pytest.approx(1.3 * transient, abs=0.01)
    assert v.outcome == "does not hold" and v.detail == "+34% vs prediction"


def test_a_run_shorter_than_its_relaxation_time_says_so(tmp_path: Path):
    """200 steps at τ = 100: 1.99 of the 3 relaxation times accrue, so no window, and the row says why."""
    adamw_run(tmp_path / "adamw", 200)
    (run,) = load_runs([tmp_path / "adamw"])
    v = angle_verdict(analyse([run]), run)
    assert v.outcome == "no data"
    assert "only 1.99 of the 3 relaxation times" in v.detail and "τ = 100 steps" in v.detail


def test_lars_window_uses_its_own_relaxation_time(tmp_path: Path):
    """normwatch's LARS relaxes in ((1−μ)/η)² steps: η 0.02, μ 0.9 give τ = 25, so the window opens 75 steps
    after the end of warm-up (step 20 of the fixture's schedule)."""
    rf.sgd_run(tmp_path / "lars", part="lars", peak_lr=0.02, weight_decay=0.05, momentum=0.9, family="lars")
    (run,) = load_runs([tmp_path / "lars"])
    analysis = analyse([run])
    win = analysis.window(run, rf.LAYERS[0])
    assert win.tau_peak == pytest.approx(((1 - 0.9) / 0.02) ** 2, rel=1e-5)
    assert win.start == rf.WARMUP + 75
    assert balance_verdict(analysis, run).outcome == "holds"


def test_the_report_has_a_row_per_run_and_claim(tmp_path: Path):
    pytest.importorskip("matplotlib")
    adamw_run(tmp_path / "study" / "adamw", 600)
    adamw_run(tmp_path / "study" / "adamw-short", 200)
    md = write_report([tmp_path / "study"])
    rows = json.loads((md.parent / "equilibrium.json").read_text())
    assert [(r["run"], r["claim"], r["outcome"]) for r in rows] == [
        ("adamw", "rotation per step ≈ theory (adamw)", "holds"),
        ("adamw", "shrink ≈ growth in equilibrium", "holds"),
        ("adamw-short", "rotation per step ≈ theory (adamw)", "no data"),
        ("adamw-short", "shrink ≈ growth in equilibrium", "no data"),
    ]
    assert "## Equilibrium of every run" in md.read_text()
    assert len(equilibrium_verdicts(analyse(load_runs([tmp_path / "study"])))) == 4
