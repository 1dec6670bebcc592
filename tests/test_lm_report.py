"""The LM study's report on hand-made runs (tests/lm_fixtures.py) whose answers are computed here by hand."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from normwatch import theory
from normwatch.report import analyse, load_runs, write_report
from normwatch.report.claims import evaluate
from normwatch.report.window import equilibrium_window
from tests.lm_fixtures import LAYERS, WARMUP, N, lm_run, lr_schedule, relaxing_norm, wobble_noise

pytest.importorskip("matplotlib")


def test_outcome_rule_and_block_noise_by_hand():
    from normwatch.report.lm_measure import block_noise, outcome

    # blocks 1, 3, 1, 3: std (ddof 1) = √(4/3), so 2·std/√4 = √(4/3)
    assert block_noise([1.0, 3.0, 1.0, 3.0]) == pytest.approx(math.sqrt(4 / 3))
    assert block_noise([2.0]) == math.inf
    assert outcome(0.11, 0.01) == "holds" and outcome(-0.2, 0.01) == "does not hold"
    assert outcome(-0.01, 0.04) == "inconclusive" and outcome(0.01, 0.04) == "inconclusive"
    assert outcome(0.0, 0.0) == "holds" and outcome(math.nan, 0.0) == "inconclusive"


def _rows(root) -> dict[str, object]:
    """The verdicts by claim."""
    return {v.claim: v for v in evaluate(analyse(load_runs([root])))}


def _f32(x):
    return np.asarray(x, dtype=np.float32).astype(np.float64)


@pytest.fixture(scope="module")
def adamw_part(tmp_path_factory):
    root = tmp_path_factory.mktemp("lm")
    lm_run(root, "adamw", "qwen3", arch="qwen3", angle_factor=1.04, angle_wobble=0.01, balance=0.95,
           balance_wobble=0.02)
    lm_run(root, "adamw", "olmo2", arch="olmo2", angle_factor=1.16, angle_wobble=0.03, balance=0.8,
           w_norm2=relaxing_norm(ramp=51))
    lm_run(root, "adamw", "llama", arch="llama", layers=())
    return root


def test_adamw_angle_holds_inside_the_tolerance_and_is_inconclusive_within_the_noise_of_its_edge(adamw_part):
    rows = _rows(adamw_part)
    qwen = rows["qwen3: rotation per step ≈ AdamW's angle_theory √(2ηλ(1−β₁)/(1+β₁))"]
    # window: warm-up ends at step 10, 3 τ_w = 3/(2·0.01) = 150 steps later it opens: 160–199
    assert qwen.window == "steps 160–199" and qwen.outcome == "holds"
    assert qwen.value == pytest.approx(1.04, rel=1e-5)
    assert qwen.measured.startswith(f"1.04 ± {1.04 * wobble_noise(0.01):.2g}")
    olmo = rows["olmo2: rotation per step ≈ AdamW's angle_theory √(2ηλ(1−β₁)/(1+β₁))"]
    # 1.16 is 0.01 outside ±15 %, its noise 1.16·0.03·2/√3 = 0.040: the runs cannot tell
    assert olmo.value == pytest.approx(1.16, rel=1e-5) and 1.16 * wobble_noise(0.03) > 0.01
    assert olmo.outcome == "inconclusive"


def test_adamw_balance_and_settling_time_against_hand_computations(adamw_part):
    rows = _rows(adamw_part)
    qwen = rows["qwen3: shrink ≈ growth in equilibrium"]
    assert qwen.value == pytest.approx(0.95, rel=1e-5) and qwen.outcome == "holds"
    assert set(qwen.per_layer) == set(LAYERS)
    assert rows["olmo2: shrink ≈ growth in equilibrium"].outcome == "does not hold"
    # |w|² goes from 1 to 2 in a straight line over 101 steps after warm-up: within 5 % of 2 (|x/2 − 1| ≤ 0.05)
    # from 91 steps on; AdamW predicts ln(|1/2 − 1|/0.05)/(2ηλ) = ln(10)/0.02 = 115.13 steps
    predicted = math.log(10) / (2 * 0.01)
    settle = rows["qwen3: |w|² reaches equilibrium on the time scale τ = 1/(ηλ)"]
    assert settle.value == pytest.approx(91 / predicted, rel=1e-4) and settle.outcome == "holds"
    fast = rows["olmo2: |w|² reaches equilibrium on the time scale τ = 1/(ηλ)"]
    assert fast.value == pytest.approx(46 / predicted, rel=1e-4)  # over 51 steps: 46 < 115/2
    assert fast.outcome == "does not hold"


def test_llama_control_holds_without_layers_and_fails_when_something_is_recorded(adamw_part, tmp_path):
    claim = "llama (pre-norm, no QK-norm): no scale-invariant layer, and normwatch records none"
    row = _rows(adamw_part)[claim]
    assert (row.outcome, row.measured) == ("holds", "0") and row.run.endswith("llama")
    lm_run(tmp_path, "adamw", "llama", arch="llama", layers=("model.layers.0.mlp.down_proj",))
    bogus = _rows(tmp_path)[claim]
    assert bogus.outcome == "does not hold" and "model.layers.0.mlp.down_proj" in bogus.detail


def _grid(root, jitter: float = 0.0) -> None:
    """η, λ × 1/2 and 2 around (0.01, 1): two runs at ηλ = 0.01, one at 0.0025, one at 0.04."""
    cells = {(0.5, 0.5): (1.0, 2.6), (2, 0.5): (1.0, 2.0), (0.5, 2): (1.1, 2.1), (2, 2): (0.9, 2.4)}
    for (a, b), (factor, loss) in cells.items():
        lm_run(root, "eta-lambda", f"lr{0.01 * a:g}-wd{b:g}", lr=0.01 * a, wd=b, angle_factor=factor,
               val_losses=(4.0, loss + jitter, loss - jitter, loss))


def test_eta_lambda_rotation_at_fixed_product_and_theory_where_it_moves(tmp_path):
    _grid(tmp_path)
    rows = _rows(tmp_path)
    same = rows["invariant layers settle at the same rotation when ηλ is fixed (η, λ × 1/4 … 4)"]
    # the two runs at ηλ = 0.01 share AdamW's angle; theirs are 1.1 and 1.0 times it
    assert same.value == pytest.approx(1.1, rel=1e-5) and same.outcome == "holds"
    moved = rows["rotation follows AdamW's theory where ηλ moves"]
    # ηλ = 0.0025: τ_w = 200 steps, no window in 200; ηλ = 0.04: a window, angle 0.9 × theory
    assert moved.run.endswith("lr0.02-wd2") and moved.value == pytest.approx(0.9, rel=1e-5) and moved.outcome == "holds"


def test_eta_lambda_loss_follows_the_product_or_is_inconclusive_when_evaluations_scatter(tmp_path):
    claim = "final validation loss follows ηλ"
    _grid(tmp_path / "steady")
    row = _rows(tmp_path / "steady")[claim]
    # at ηλ = 0.01: 2.0 and 2.1; over the grid 2.0 … 2.6: (2.1 − 2.0)/(2.6 − 2.0)
    assert row.value == pytest.approx(0.1 / 0.6, rel=1e-5) and row.outcome == "holds"
    _grid(tmp_path / "noisy", jitter=0.15)
    noisy = _rows(tmp_path / "noisy")[claim]
    sigma = 2 * float(np.std([0.15, -0.15, 0.0], ddof=1)) / math.sqrt(3)  # each run's last three evaluations
    noise = math.sqrt(2) * sigma / 0.6 * (1 + 0.1 / 0.6)
    assert noisy.value == pytest.approx(0.1 / 0.6, rel=1e-5) and noise > 0.5 - 0.1 / 0.6
    assert noisy.outcome == "inconclusive"


def test_muon_angle_against_muons_own_theory(tmp_path):
    lm_run(tmp_path, "muon", "muon", optimizer="muon", momentum=0.95, log_theory=False,
           angle_of=lambda eta, lam: 1.1 * np.array([theory.muon_angle(e, la, 0.95) for e, la in zip(eta, lam)]))
    lm_run(tmp_path, "muon", "adamw")
    row = _rows(tmp_path)["Muon on the matrices: rotation per step ≈ Muon's theory (a lower bound)"]
    assert row.run.endswith("muon") and row.value == pytest.approx(1.1, rel=1e-4) and row.outcome == "holds"


def test_coupled_l2_measured_against_adamw(tmp_path):
    lm_run(tmp_path, "l2", "adam-l2", optimizer="adam-l2", angle_factor=0.5, val_losses=(4.0, 3.0, 2.5, 2.5, 2.5))
    lm_run(tmp_path, "l2", "adamw")
    rows = _rows(tmp_path)
    angle = rows["Adam with coupled L2 rotates invariant layers as AdamW does at the same nominal λ"]
    assert angle.value == pytest.approx(0.5, rel=1e-5) and angle.outcome == "does not hold"
    loss = rows["Adam with coupled L2 reaches AdamW's validation loss at the same nominal λ"]
    assert loss.value == pytest.approx(0.3, rel=1e-5) and loss.outcome == "does not hold"


@pytest.fixture(scope="module")
def schedule_part(tmp_path_factory):
    root = tmp_path_factory.mktemp("schedule")
    wd = 5.0  # ηλ = 0.05 at the peak: τ_w = 10 steps, so a window opens before the cosine outruns it
    eta = _f32(lr_schedule(0.01, "cosine"))
    stop = equilibrium_window(np.arange(N), eta, _f32(np.full(N, wd)), np.zeros(N), family="adamw").stop
    rising = np.where(np.arange(N) >= N - 20, 1.5, 1.0)
    lm_run(root, "schedule", "adamw", wd=wd, schedule="cosine", grad_norm=rising, w_norm2=1 + eta / eta.max(),
           growth_after=(stop, 0.7))
    flat = np.where(np.arange(N) >= N - 20, 1.1, 1.0)
    lm_run(root, "schedule", "adamc", wd=wd, schedule="cosine", adamc=True, grad_norm=flat, w_norm2=np.full(N, 2.0))
    return root, eta, stop


def test_schedule_gradient_norm_rise_with_adamw_and_none_with_adamc(schedule_part):
    rows = _rows(schedule_part[0])
    # the last 10 % (20 steps) at 1.5 and 1.1 over a floor of 1.0
    adamw = rows["AdamW, cosine to 0: the gradient norm rises near the end"]
    assert adamw.value == pytest.approx(1.5, rel=1e-6) and adamw.outcome == "holds"
    adamc = rows["AdamC, same schedule: the end-of-training rise vanishes"]
    assert adamc.value == pytest.approx(1.1, rel=1e-6) and adamc.outcome == "holds"


def test_schedule_norm_falls_with_adamw_is_held_with_adamc_and_equilibrium_is_lost_late(schedule_part):
    root, eta, stop = schedule_part
    rows = _rows(root)
    x = _f32(1 + eta / eta.max())
    half = int(np.nonzero((np.arange(N) > WARMUP) & (eta <= eta.max() / 2))[0][0])
    expected = x[-20:].mean() / x[half - 10:half + 10].mean()
    fall = rows["AdamW: |w|² falls with the lr (|w*|² ∝ η_t/λ), so |g| ∝ 1/|w| rises"]
    assert fall.value == pytest.approx(expected, rel=1e-5) and expected < 0.8 and fall.outcome == "holds"
    held = rows["AdamC: |w|² is held (|w*|² ∝ η_t/λ_t constant)"]
    assert held.value == pytest.approx(1.0, rel=1e-6) and held.outcome == "holds"
    late = rows["AdamW: equilibrium is lost once the schedule outruns τ (shrink exceeds growth)"]
    assert WARMUP < stop < N - 20 and late.window.startswith(f"steps {stop + 1}")
    assert late.value == pytest.approx(0.7, rel=1e-5) and late.outcome == "holds"


def test_missing_parts_are_no_data_with_the_command_that_makes_them(adamw_part):
    rows = _rows(adamw_part)
    grid = rows["final validation loss follows ηλ"]
    assert grid.outcome == "no data" and "--parts eta-lambda" in grid.detail
    assert rows["AdamW, cosine to 0: the gradient norm rises near the end"].outcome == "no data"


def test_write_report_renders_the_lm_study(adamw_part, schedule_part, tmp_path):
    out = tmp_path / "report"
    md = write_report([adamw_part, schedule_part[0]], out)
    text = md.read_text()
    assert text.startswith("# normwatch report: the LM study") and "**inconclusive**" in text
    assert sorted(p.name for p in out.glob("fig*.png")) == ["fig01.png", "fig03.png", "fig04.png"]  # no grid
    verdicts = json.loads((out / "verdicts.json").read_text())
    assert {v["outcome"] for v in verdicts} == {"holds", "does not hold", "inconclusive", "no data"}
