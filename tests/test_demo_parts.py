"""Issue 17's demo parts (eqinit, large-batch, smooth): a two-step run of each on a fake CIFAR-10 copy, what
each run writes, and the optimizers and scaling rules they use."""

from __future__ import annotations

import contextlib
import io
import json
import math
from pathlib import Path

import pytest

from normwatch.optim import LARS
from tests.test_demo import SMOKE, _events, demo, write_fake_cifar

CONVS = 8  # ResNet-9's conv layers, each followed by BatchNorm


@pytest.fixture(scope="module")
def parts(tmp_path_factory) -> tuple[Path, str]:
    data = tmp_path_factory.mktemp("data")
    write_fake_cifar(data)
    out = tmp_path_factory.mktemp("study")
    args = [*SMOKE, "--data-dir", str(data), "--out", str(out), "--parts", "eqinit,large-batch,smooth",
            "--part-seeds", "1", "--part-epochs", "3"]
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        assert demo.main(args) == 0
    return out, buf.getvalue()


def _config(out: Path, name: str) -> dict:
    return json.loads((out / name / "config.json").read_text())


def _curves(out: Path, name: str) -> dict:
    return json.loads((out / name / "curves.json").read_text())["scalars"]


def test_each_part_writes_its_runs_curves_and_one_accuracy_point(parts):
    out, _ = parts
    names = sorted(p.parent.relative_to(out).as_posix() for p in out.rglob("result.json"))
    assert names == sorted([f"eqinit/{o}-{i}-s0" for o in ("sgd", "lars") for i in ("default", "equilibrium")]
                           + [f"large-batch/b{b}-{v}-s0" for b in (25, 100) for v in ("sgd", "sgd-eqinit", "lars")]
                           + ["smooth/beta0-s0", "smooth/beta0.9-s0"])
    for name in names:
        part = name.split("/")[0]
        result = json.loads((out / name / "result.json").read_text())
        assert result["steps"] == 2 and result["normwatch_layers"] == CONVS
        acc = _events(out / name)
        assert acc.Tags()["scalars"] == [f"{part}/test_acc"]  # nothing per step in TensorBoard
        assert [(e.step, e.value) for e in acc.Scalars(f"{part}/test_acc")] == [(1, pytest.approx(result["test_acc"]))]
        curves = _curves(out, name)
        ratio = [tag for tag in curves if tag.startswith("normwatch/lars_ratio/")]
        assert len(ratio) == CONVS and all(curves[tag][0] == [0, 1] for tag in ratio)
        assert {t.split("/")[1] for t in curves} >= {"lars_ratio", "angle", "shrink", "growth", "lr"}
        assert _config(out, name)["epochs"] == 3  # --part-epochs


def test_eqinit_runs_have_the_theory_the_verdict_needs_and_rescale_at_equilibrium(parts):
    out, printed = parts
    for name in ("eqinit/sgd-default-s0", "eqinit/lars-equilibrium-s0"):
        assert sum(t.startswith("normwatch/lars_theory/") for t in _curves(out, name)) == CONVS
    assert (_config(out, "eqinit/lars-default-s0")["nesterov"], _config(out, "eqinit/sgd-default-s0")["nesterov"]) \
        == (False, True)
    assert _config(out, "eqinit/sgd-equilibrium-s0")["init"] == "equilibrium"
    assert printed.count(f"equilibrium init ({CONVS} layers rescaled)") == 2 + 2  # eqinit's two, large-batch's two


def test_large_batch_scales_the_batch_and_the_lr(parts):
    out, _ = parts
    small, big = _config(out, "large-batch/b25-sgd-s0"), _config(out, "large-batch/b100-sgd-s0")
    assert (small["batch_size"], big["batch_size"]) == (25, 100)
    assert (small["steps_per_epoch"], big["steps_per_epoch"]) == (4, 1)  # 100 training images
    assert big["peak_lr"] == pytest.approx(4 * small["peak_lr"])  # η ∝ batch size
    lars = _config(out, "large-batch/b100-lars-s0")
    assert lars["lars_peak_lr"] == pytest.approx(math.sqrt(2 * 1.6 * 5e-4 * 0.1))  # √(2ηλ(1−μ)) of the scaled η


def test_smooth_runs_lars_with_and_without_averaged_gradient_norms(parts):
    out, _ = parts
    assert [_config(out, f"smooth/beta{b}-s0")["grad_norm_beta"] for b in ("0", "0.9")] == [0.0, 0.9]
    run = next(r for r, _ in demo.plan(demo.parse_args(["--parts", "smooth", "--device", "cpu"])[0])
               if r.grad_norm_beta)
    opt, _ = demo.make_optimizer(demo.build("resnet9", 0.125), run, steps_per_epoch=10, epochs=4)
    assert isinstance(opt, LARS) and opt.param_groups[0]["grad_norm_beta"] == 0.9
    assert opt.param_groups[0]["nesterov"] is True


def test_the_lars_part_runs_the_momentum_form_of_its_sgd():
    cfg, _ = demo.parse_args(["--parts", "sgdm,lars", "--device", "cpu"])
    (sgdm, _), (lars, _) = demo.plan(cfg)
    assert sgdm.nesterov and lars.nesterov
    opt, _ = demo.make_optimizer(demo.build("resnet9", 0.125), lars, steps_per_epoch=10, epochs=4)
    assert all(group["nesterov"] for group in opt.param_groups)


def test_the_report_judges_the_parts(parts):
    pytest.importorskip("matplotlib")
    from normwatch.report import write_report

    out, _ = parts
    md = write_report([out], out / "report")
    rows = json.loads((md.parent / "experiments.json").read_text())
    claims = [r["claim"] for r in rows]
    assert "equilibrium init reaches η|g|/|w| ≈ theory sooner (sgd, Nesterov)" in claims
    assert "LARS beats SGD at batch 100" in claims and "LARS clearly wins at some batch size" in claims
    assert any(c.startswith("averaging |g| over batches (β = 0.9)") for c in claims)
    assert all(r["outcome"] in ("holds", "does not hold", "inconclusive", "no data") for r in rows)
