"""Tests for ``normwatch report``: figures, the equilibrium window, verdicts, CLI, missing data.

Most tests read one report rendered once (module scope) from a hand-made study whose answers
are known (see ``tests/report_fixtures.py``); every number in the verdict table is recomputed
here directly from the float32 values the fixture wrote.
"""

from __future__ import annotations

import json
import math
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from normwatch.__main__ import main
from normwatch.report import (
    INSTALL_HINT,
    TOLERANCES,
    analyse,
    default_out,
    equilibrium_window,
    evaluate,
    find_runs,
    load_run,
    load_runs,
    write_report,
)
from normwatch.report.stats import relaxation_time
from normwatch.report.window import schedule_drift
from tests import report_fixtures as rf

REPO = Path(__file__).resolve().parents[1]
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def assert_png(path: Path, min_bytes: int = 10_000) -> None:
    """A real PNG of a non-trivial size (an empty axis is ~8 kB at this size)."""
    from PIL import Image

    data = path.read_bytes()
    assert data[:8] == PNG_MAGIC, path
    assert len(data) > min_bytes, (path, len(data))
    with Image.open(path) as im:
        assert im.size[0] >= 600 and im.size[1] >= 300


def lag_of(run: rf.SyntheticRun) -> np.ndarray:
    """δ = τ·d ln η/dt with τ = (1−μ)/(4ηλ), by hand (constant λ and μ), on the float32 lr."""
    lr = rf.f32(run.lr)
    with np.errstate(divide="ignore", invalid="ignore"):
        tau = (1 - rf.f32(run.momentum)) / (4 * lr * rf.f32(run.weight_decay))
        return tau * np.gradient(np.log(lr))


def window_of(run: rf.SyntheticRun):
    """The library's window on what the run logged (float32 hyperparameters)."""
    n = run.lr.size
    return equilibrium_window(
        np.arange(n), rf.f32(run.lr), rf.f32(np.full(n, run.weight_decay)), rf.f32(np.full(n, run.momentum))
    )


@pytest.fixture(scope="module")
def study_runs(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, rf.SyntheticRun]]:
    """The hand-made study's event files (no rendering, so no matplotlib needed)."""
    root = tmp_path_factory.mktemp("runs") / "study"
    return root, rf.study(root)


@pytest.fixture(scope="module")
def study(study_runs) -> tuple[Path, dict[str, rf.SyntheticRun], Path]:
    """The study and its report, rendered once."""
    pytest.importorskip("matplotlib")
    root, runs = study_runs
    return root, runs, write_report([root])


@pytest.fixture(scope="module")
def verdicts(study) -> list[dict]:
    return json.loads((study[2].parent / "verdicts.json").read_text())


# ------------------------------------------------------------------------------ the window
def test_window_constant_schedule_opens_after_k_tau():
    """Constant hyperparameters: the window opens at t_peak + 3τ and never closes."""
    win = equilibrium_window(np.arange(200), np.full(200, 0.5), np.full(200, 0.05), np.zeros(200))
    assert win.tau_peak == pytest.approx(10.0)
    assert (win.start, win.stop, win.peak_step, win.n_c) == (30, 199, 0, None)


def test_window_linear_decay_closes_two_n_c_before_the_end():
    """Linear decay to zero over D steps: the window closes 2·n_c steps before the end."""
    n, d, eta0, lam, mu = 4000, 3000, 0.4, 5e-4, 0.9
    t = np.arange(n)
    lr = np.where(t < n - d, eta0, eta0 * (n - 1 - t) / (d - 1))
    win = equilibrium_window(t, lr, np.full(n, lam), np.full(n, mu))
    n_c = math.sqrt((1 - mu) * (d - 1) / (4 * eta0 * lam))
    assert win.n_c == pytest.approx(n_c)
    assert win.start == 375  # 3τ = 3 · 125 steps after the plateau starts at step 0
    assert abs((n - 1 - win.stop) - 2 * n_c) <= 2


def test_window_step_drop_closes_it_and_warmup_delays_it():
    lr = np.concatenate([np.linspace(0, 1.0, 11)[1:], np.full(90, 1.0), np.full(100, 0.1)])
    win = equilibrium_window(np.arange(200), lr, np.full(200, 0.05), np.zeros(200))
    assert win.peak_step == 9 and win.start == 9 + 15  # τ = 1/(4·1·0.05) = 5 steps
    assert win.stop in (98, 99)  # the drop at step 100 breaks tracking


@pytest.mark.parametrize(
    ("wd", "n", "reason"),
    [
        pytest.param(0.0, 100, "no weight decay", id="no-weight-decay"),
        pytest.param(1e-4, 100, "relaxation times needed accrue", id="too-short"),
        pytest.param(0.05, 2, "fewer than 3", id="too-few-steps"),
    ],
)
def test_window_empty_says_why(wd: float, n: int, reason: str):
    win = equilibrium_window(np.arange(n), np.full(n, 0.1), np.full(n, wd), np.full(n, 0.9))
    assert win.empty and reason in win.reason


def test_relaxation_time_only_for_decoupled_adam():
    """AdamW: 1/(2ηλ) of |w|²; Adam with L2 decay relaxes at a gradient-RMS-dependent rate, so none."""
    assert float(relaxation_time(0.01, 0.1, 0.9, family="adamw")) == pytest.approx(1 / (2 * 0.01 * 0.1))
    assert np.isnan(relaxation_time([0.01, 0.02], 0.1, 0.9, family="adam")).all()
    assert np.isnan(schedule_drift(np.arange(10), np.linspace(0.1, 0.01, 10), 0.1, 0.9, family="adam")).all()
    win = equilibrium_window(np.arange(200), np.full(200, 0.01), np.full(200, 0.1), np.zeros(200), family="adam")
    assert win.empty and "no relaxation-time formula" in win.reason


def test_adam_l2_run_gets_no_window_and_says_why(tmp_path: Path):
    path = tmp_path / "adam"
    rf.sgd_run(path, part="sgdm", family="adam", **rf.SGDM)
    (run,) = load_runs([path])
    analysis = analyse([run])
    assert run.family == "adam" and run.layers
    for layer in run.layers:
        win = analysis.window(run, layer)
        assert win.empty and "Adam with L2 weight decay" in win.reason and "gradient RMS" in win.reason
        assert math.isnan(win.tau_peak) and analysis.lag(run, layer) is None


# ------------------------------------------------------------------------------ reading runs
def test_find_runs_expands_a_study_and_rejects_bad_paths(study_runs, tmp_path: Path):
    root = study_runs[0]
    dirs = find_runs([root])
    names = sorted(d.relative_to(root).as_posix() for d in dirs)
    assert names[:3] == ["lars", "sgd", "sgdm"] and len(names) == 3 + 12
    assert find_runs([root / "sgdm"]) == [root / "sgdm"]
    with pytest.raises(FileNotFoundError, match="not a directory"):
        find_runs([tmp_path / "missing"])
    with pytest.raises(ValueError, match="No TensorBoard event files"):
        find_runs([tmp_path])


def test_load_run_reads_tags_config_and_new_style_scalars(study_runs, tmp_path: Path):
    root, runs = study_runs
    run = load_run(root / "sgdm")
    assert run.layers == list(rf.LAYERS)
    assert run.family == "sgd" and run.momentum == pytest.approx(0.9) and run.part == "sgdm"
    s = run.series("lars_theory", "layer2.res1.conv")
    np.testing.assert_array_equal(s.values, rf.f32(runs["sgdm"].metrics["lars_theory"]["layer2.res1.conv"]))
    assert run.final_test_acc == pytest.approx(0.935)

    from torch.utils.tensorboard import SummaryWriter

    w = SummaryWriter(str(tmp_path / "new"))
    for step in (2, 0, 1):
        w.add_scalar("normwatch/angle/a.b", step / 10, step, new_style=True)
    w.close()
    angle = load_run(tmp_path / "new").series("angle", "a.b")
    assert angle.steps.tolist() == [0, 1, 2]
    np.testing.assert_allclose(angle.values, [0.0, 0.1, 0.2], rtol=1e-6)


def test_sweep_runs_with_result_json_are_read_without_their_events(tmp_path: Path):
    """With a main run present, a sweep run's config.json + result.json are enough (fast sweeps)."""
    root = tmp_path / "s"
    rf.sgd_run(root / "sgdm", part="sgdm", **rf.SGDM)
    for lr, acc in ((0.2, 0.91), (0.4, 0.93)):
        run = root / "sweep" / f"x-lr{lr}-s0"
        rf.write_events(run, {"test/acc": np.array([0.5])}, {})  # deliberately different from result.json
        (run / "config.json").write_text(json.dumps({"part": "sweep", "arch": "x", "peak_lr": lr, "seed": 0}))
        (run / "result.json").write_text(json.dumps({"test_acc": acc}))
    runs = {r.name: r for r in load_runs([root])}
    assert runs["sweep/x-lr0.4-s0"].final_test_acc == 0.93 and not runs["sweep/x-lr0.4-s0"].scalars
    assert runs["sgdm"].has_normwatch
    described = runs["sweep/x-lr0.4-s0"].describe()
    assert "result.json" in described and "no normwatch scalars" not in described


def test_default_out(tmp_path: Path):
    assert default_out([tmp_path / "r"]) == tmp_path / "r" / "report"
    assert default_out([tmp_path / "s" / "a", tmp_path / "s" / "b"]) == (tmp_path / "s" / "report").resolve()


# ------------------------------------------------------------------------------ the study report
def test_all_ten_figures_are_written_and_inlined(study):
    out = study[2].parent
    for i in range(1, 11):
        assert_png(out / f"fig{i:02d}.png")
    md = study[2].read_text()
    assert "skipped" not in md
    html = (out / "report.html").read_text()
    assert html.count('src="data:image/png;base64,') == 10
    assert "fig01.png" not in html  # self-contained


def test_report_opens_with_the_summary_and_the_verdict_table(study, verdicts):
    md = study[2].read_text()
    blocks = md.split("\n\n")
    assert blocks[0] == "# normwatch report"
    summary = blocks[1]
    held = [str(i) for i, v in enumerate(verdicts, start=1) if v["outcome"] == "holds"]
    assert held == ["1", "2", "4", "5", "6", "7"]  # each verdict is checked by hand below
    assert summary.startswith("3 run(s) with normwatch scalars (lars, sgd, sgdm) and a learning-rate sweep of 12 runs")
    assert "6 hold (1, 2, 4, 5, 6, 7), 2 do not (3: +30% vs prediction; 8: best lrs differ by 4×)" in summary
    assert "\n" not in summary  # one paragraph
    assert blocks[2] == "## Verdicts on the seed's claims" and blocks[3].startswith("| # | claim |")
    assert len(blocks[3].splitlines()) == 2 + 8
    assert md.index("## Runs") > md.index("| # | claim |") and "Equilibrium window" in md


def test_the_runs_table_folds_the_sweep_into_a_row_per_architecture(study):
    md = study[2].read_text()
    runs = md[md.index("## Runs"):md.index("## Equilibrium window")]
    rows = [line for line in runs.splitlines() if line.startswith("| ") and not line.startswith("| run |")]
    assert [row.split(" | ")[0] for row in rows] == ["| lars", "| sgd", "| sgdm", "| sweep: a (6 runs)",
                                                      "| sweep: b (6 runs)"]
    # rf.SWEEP: a's accuracies span 0.89–0.94, its best mean (0.94 + 0.93) / 2 at peak lr 0.4; b's 0.85–0.93.
    assert rows[3].endswith("| sweep | peak lr 0.1–1.6 (3 values), seed(s) 0, 1; final test acc 0.89–0.94, "
                            "best 0.935 at peak lr 0.4 |")
    assert "best 0.925 at peak lr 1.6" in rows[4] and "0.85–0.93" in rows[4]
    assert "sweep/a-lr0.1-s0" not in md


def test_verdict_orthogonality_and_balance(study, verdicts):
    _, runs, _ = study
    sgdm = runs["sgdm"]
    cos = [np.mean(np.abs(rf.f32(sgdm.metrics["cos_wg"][layer]))) for layer in rf.LAYERS]
    assert verdicts[0]["outcome"] == "holds"
    assert verdicts[0]["value"] == pytest.approx(np.median(cos), rel=1e-9)

    win = window_of(sgdm)
    assert verdicts[1]["window"] == f"steps {win.start}–{win.stop}"
    m = win.mask(np.arange(rf.N_STEPS))
    ratios = [
        np.sum(rf.f32(sgdm.metrics["growth"][la])[m]) / np.sum(rf.f32(sgdm.metrics["shrink"][la])[m])
        for la in rf.LAYERS
    ]
    assert verdicts[1]["outcome"] == "holds"
    assert verdicts[1]["value"] == pytest.approx(np.median(ratios), rel=1e-9)
    assert verdicts[1]["value"] == pytest.approx(1.0, abs=1e-6)
    # The prediction is the seed's 1; the lr decay inside the window (steps 200–267) is shown as context.
    drifted = [
        np.sum(rf.f32(sgdm.metrics["shrink"][la])[m] / (1 - lag_of(sgdm)[m]))
        / np.sum(rf.f32(sgdm.metrics["shrink"][la])[m])
        for la in rf.LAYERS
    ]
    assert verdicts[1]["expected"] == 1.0
    assert 0.9 < np.median(drifted) < 0.99
    assert (
        verdicts[1]["prediction"]
        == f"1 (the lr's drift alone, at constant G, would make it {np.median(drifted):.3g} on this window)"
    )


def test_verdict_lars_ratio_without_momentum_fails_by_the_known_amount(study, verdicts):
    """The sgd run logs η|g|/|w| = 1.3·√(2ηλ) (± a sine) and no lars_theory."""
    _, runs, _ = study
    sgd = runs["sgd"]
    win = window_of(sgd)
    m = win.mask(np.arange(rf.N_STEPS))
    lr, lam = rf.f32(sgd.lr), rf.f32(np.full(rf.N_STEPS, sgd.weight_decay))
    predicted = np.sqrt(2 * lr * lam)
    expected = [math.sqrt(np.mean((rf.f32(sgd.metrics["lars_ratio"][la])[m] / predicted[m]) ** 2)) for la in rf.LAYERS]
    v = verdicts[2]
    assert v["run"] == "sgd" and v["outcome"] == "does not hold"
    assert v["value"] == pytest.approx(np.median(expected), rel=1e-9)
    assert v["value"] == pytest.approx(1.3, abs=0.01)
    assert v["expected"] == 1.0 and v["detail"] == "+30% vs prediction"
    drifted = math.sqrt(np.mean(1 / (1 - lag_of(sgd)[m])))
    assert v["prediction"].startswith(f"1 (the lr's drift alone, at constant G, would make it {drifted:.3g} ")
    assert "from logged lr, weight decay, momentum" in v["prediction"]


def test_verdict_lars_ratio_with_momentum_holds(study, verdicts):
    _, runs, _ = study
    sgdm = runs["sgdm"]
    m = window_of(sgdm).mask(np.arange(rf.N_STEPS))
    expected = [
        math.sqrt(
            np.mean((rf.f32(sgdm.metrics["lars_ratio"][la])[m] / rf.f32(sgdm.metrics["lars_theory"][la])[m]) ** 2)
        )
        for la in rf.LAYERS
    ]
    v = verdicts[3]
    assert v["run"] == "sgdm" and v["outcome"] == "holds" and "logged lars_theory" in v["prediction"]
    assert v["value"] == pytest.approx(np.median(expected), rel=1e-9)


def test_verdict_autocorr_and_lars(study, verdicts):
    _, runs, _ = study
    sgdm, lars = runs["sgdm"], runs["lars"]
    m = window_of(sgdm).mask(np.arange(rf.N_STEPS))
    auto = [np.mean(rf.f32(sgdm.metrics["grad_autocorr"][la])[m]) for la in rf.LAYERS]
    assert verdicts[4]["outcome"] == "holds"
    assert verdicts[4]["value"] == pytest.approx(np.median(auto), rel=1e-9)

    assert verdicts[5]["outcome"] == "holds" and verdicts[5]["run"] == "lars vs sgdm"
    assert verdicts[5]["value"] == pytest.approx(float(np.float32(0.93)) - float(np.float32(0.935)))

    angle = [
        np.mean(rf.f32(lars.metrics["angle"][la])[m]) / np.mean(rf.f32(sgdm.metrics["angle"][la])[m])
        for la in rf.LAYERS
    ]
    assert verdicts[6]["outcome"] == "holds"
    assert verdicts[6]["value"] == pytest.approx(np.median(angle), rel=1e-9)


def test_verdict_best_lr_from_the_sweep(study, verdicts):
    v = verdicts[7]
    assert v["run"] == "12 sweep runs" and v["outcome"] == "does not hold"
    assert v["value"] == pytest.approx(1.6 / 0.4)
    assert v["per_layer"] == {"a": 0.4, "b": 1.6}
    assert TOLERANCES["best_lr"] < v["value"]


# ------------------------------------------------------------------------------ missing data
@pytest.fixture(scope="module")
def lone_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """One momentum run without grad_autocorr, shrink/growth 1.25 apart; no sweep, no LARS."""
    pytest.importorskip("matplotlib")
    path = tmp_path_factory.mktemp("lone") / "run"
    rf.sgd_run(path, part="sgdm", autocorr=False, growth_factor=1.25, **rf.SGDM)
    return path, write_report([path])


def test_missing_data_figures_are_skipped_with_a_note(lone_run):
    path, md_path = lone_run
    assert md_path == path / "report" / "report.md"
    out = md_path.parent
    md = md_path.read_text()
    assert not (out / "fig06.png").exists() and not (out / "fig08.png").exists()
    assert "> Figure 6 skipped: run run logged no `grad_autocorr` scalars." in md
    assert "> Figure 8 skipped: no learning-rate sweep" in md
    # Figure 5 is the seed's run without momentum: none here, so no stand-in under its title.
    assert not (out / "fig05.png").exists()
    assert ("> Figure 5 skipped: no SGD run without momentum among the inputs (the demo's runs/<study>/sgd); "
            "figure 7 shows the run with momentum.") in md
    for i in (1, 2, 3, 4, 7, 9, 10):
        assert_png(out / f"fig{i:02d}.png")


def test_missing_data_verdicts_say_which_run_is_needed(lone_run):
    verdicts = json.loads((lone_run[1].parent / "verdicts.json").read_text())
    outcome = {i: (v["outcome"], v["detail"]) for i, v in enumerate(verdicts, start=1)}
    assert outcome[2] == ("does not hold", "+25% vs prediction")
    assert verdicts[1]["value"] == pytest.approx(1.25, rel=1e-6)
    assert outcome[3] == ("no data", "needs an SGD run with momentum 0 (the demo's runs/<study>/sgd)")
    assert outcome[5] == ("no data", "no run logged grad_autocorr")
    assert outcome[6][0] == outcome[7][0] == "no data" and "needs a LARS run" in outcome[6][1]
    assert outcome[8][0] == "no data" and "learning-rate sweep" in outcome[8][1]
    md = lone_run[1].read_text()
    assert "no data: needs an SGD run with momentum 0" in md


def test_no_weight_decay_means_no_window(tmp_path: Path):
    path = tmp_path / "nowd"
    rf.sgd_run(path, part="sgdm", peak_lr=0.2, weight_decay=0.0, momentum=0.9)
    verdicts = evaluate(analyse(load_runs([path])))
    assert verdicts[1].outcome == "no data"
    assert "no weight decay" in verdicts[1].detail
    assert verdicts[4].outcome == "holds" and verdicts[4].window.startswith("all logged steps")


# ------------------------------------------------------------------------------ CLI and extras
def test_cli_module_entry(study_runs, tmp_path: Path):
    pytest.importorskip("matplotlib")
    out = tmp_path / "cli-out"
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.run(
        [sys.executable, "-m", "normwatch", "report", str(study_runs[0] / "sgdm"), "--out", str(out)],
        capture_output=True,
        text=True,
        env=env,
        cwd=REPO,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == str(out / "report.html")
    assert (out / "report.html").exists() and (out / "fig01.png").exists()


def test_cli_bad_directory_exits_1(tmp_path: Path, capsys: pytest.CaptureFixture[str]):
    assert main(["report", str(tmp_path / "nope")]) == 1
    assert "not a directory" in capsys.readouterr().err


def test_without_matplotlib_the_hint_is_raised_and_printed(
    study_runs, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
):
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # makes `import matplotlib` raise ImportError
    with pytest.raises(ImportError, match=r"pip install 'normwatch\[report\]'"):
        write_report([study_runs[0] / "sgdm"])
    assert main(["report", str(study_runs[0] / "sgdm")]) == 2
    assert capsys.readouterr().err.strip() == INSTALL_HINT


# ------------------------------------------------------------------------------ runs it cannot judge
def _plain_run(path: Path) -> Path:
    """A TensorBoard run of someone else's: a loss curve, no normwatch scalars."""
    rf.write_events(path, {"train/loss": np.linspace(2.0, 1.0, 5)}, {})
    return path


def test_a_run_without_normwatch_scalars_is_refused_in_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]):
    pytest.importorskip("matplotlib")
    run = _plain_run(tmp_path / "plain")
    with pytest.raises(ValueError, match=r"holds normwatch scalars \(normwatch/<metric>/<layer>\), so there is"):
        write_report([run])
    assert main(["report", str(run)]) == 1
    err = capsys.readouterr().err
    assert err == (f"normwatch report: the run in {run} holds normwatch scalars (normwatch/<metric>/<layer>), so "
                   "there is nothing to report: point it at runs written by normwatch.attach(...) or the demo's "
                   "study directory.\n")
    assert not (run / "report").exists()
    _plain_run(tmp_path / "plain2")
    assert main(["report", str(tmp_path)]) == 1
    assert f"none of the 2 runs under {tmp_path} holds normwatch scalars" in capsys.readouterr().err


def test_runs_without_normwatch_scalars_are_named_and_skipped(tmp_path: Path, capsys: pytest.CaptureFixture[str]):
    pytest.importorskip("matplotlib")
    rf.sgd_run(tmp_path / "study" / "sgdm", part="sgdm", **rf.SGDM)
    _plain_run(tmp_path / "study" / "baseline")
    assert main(["report", str(tmp_path / "study")]) == 0
    captured = capsys.readouterr()
    assert captured.err == ("normwatch report: skipped 1 of 2 runs, which hold no normwatch scalars: "
                            "baseline.\n")
    assert captured.out == f"{(tmp_path / 'study' / 'report' / 'report.html').resolve()}\n"
    md = (tmp_path / "study" / "report" / "report.md").read_text()
    assert "> Skipped, holding no normwatch scalars: baseline." in md
    assert "1 run(s) with normwatch scalars (sgdm), read from" in md


def test_a_sweep_alone_is_reported_from_its_hparams_metric(tmp_path: Path):
    """The demo's sweep runs hold only sweep/test_acc (and demo/config): enough for figure 8 and claim 8."""
    pytest.importorskip("matplotlib")
    for arch, per_lr in rf.SWEEP.items():
        for lr, accs in per_lr.items():
            demo = {"part": "sweep", "arch": arch, "peak_lr": lr, "seed": 0, "optimizer": "sgd"}
            rf.write_events(tmp_path / "sweep" / f"{arch}-lr{lr}", {"sweep/test_acc": np.array([np.nan, accs[0]])},
                            {"demo/config": demo})
    md_path = write_report([tmp_path / "sweep"])
    assert_png(md_path.parent / "fig08.png")
    verdicts = json.loads((md_path.parent / "verdicts.json").read_text())
    assert verdicts[7]["per_layer"] == {"a": 0.4, "b": 1.6}  # a: 0.94 at 0.4; b: 0.92 at 1.6 (first seeds)


@pytest.mark.parametrize(("argv", "says"), [
    (["--frobnicate"], "normwatch: error: unrecognized arguments: --frobnicate (see normwatch --help)"),
    ([], "normwatch: error: expected a command: report (see normwatch --help)"),
    (["report"], "normwatch report: error: the following arguments are required: RUN_DIR"),
    (["report", "x", "--frobnicate"], "normwatch: error: unrecognized arguments: --frobnicate"),
    (["publish"], "normwatch: error: argument COMMAND: invalid choice: 'publish'"),
])
def test_cli_bad_command_lines_are_one_line_and_exit_2(argv, says, capsys: pytest.CaptureFixture[str]):
    with pytest.raises(SystemExit) as exit_:
        main(argv)
    err = capsys.readouterr().err
    assert exit_.value.code == 2 and err.startswith(says) and err.count("\n") == 1, err


def test_cli_out_that_cannot_be_a_folder(study_runs, tmp_path: Path, capsys: pytest.CaptureFixture[str]):
    pytest.importorskip("matplotlib")
    (tmp_path / "file").write_text("")
    with pytest.raises(SystemExit):
        main(["report", str(study_runs[0] / "sgdm"), "--out", str(tmp_path / "file")])
    assert f"--out {tmp_path / 'file'} is a file" in capsys.readouterr().err
    assert main(["report", str(study_runs[0] / "sgdm"), "--out", str(tmp_path / "file" / "sub")]) == 1
    says = f"normwatch report: cannot write into {tmp_path / 'file' / 'sub'}: Not a directory.\n"
    assert capsys.readouterr().err == says


def test_the_real_cli_shows_no_traceback(tmp_path: Path):
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    for argv in (["--frobnicate"], ["report", str(tmp_path / "nope")], ["report", str(_plain_run(tmp_path / "p"))]):
        proc = subprocess.run([sys.executable, "-m", "normwatch", *argv], capture_output=True, text=True, env=env,
                              cwd=REPO, timeout=120)
        assert proc.returncode in (1, 2) and len(proc.stderr.splitlines()) == 1 and "Traceback" not in proc.stderr


# ------------------------------------------------------------------------------ how the figures read
@pytest.fixture(scope="module")
def drawn(study_runs, tmp_path_factory: pytest.TempPathFactory) -> dict[int, object]:
    """The study's figures as matplotlib Figures, caught on their way to disk."""
    pytest.importorskip("matplotlib")
    from normwatch.report import figures

    caught: dict[int, object] = {}
    save = figures._save

    def spy(fig, out_dir, number, *args):
        caught[number] = fig
        return save(fig, out_dir, number, *args)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(figures, "_save", spy)
        write_report([study_runs[0]], tmp_path_factory.mktemp("drawn"))
    return caught


def test_no_legend_covers_an_axes(drawn):
    assert sorted(drawn) == list(range(1, 11))
    for number, fig in drawn.items():
        fig.canvas.draw()
        legends = [ax.get_legend() for ax in fig.axes if ax.get_legend()] + list(fig.legends)
        assert legends, number
        for legend in legends:
            box = legend.get_window_extent()
            assert box.x1 <= fig.bbox.x1 + 1, number  # inside the image
            for ax in fig.axes:
                if ax.get_visible():
                    assert not box.overlaps(ax.get_window_extent()), (number, legend, ax)


def test_figures_5_and_7_have_one_panel_per_layer(drawn):
    for number in (5, 7):
        panels = [ax for ax in drawn[number].axes if ax.get_visible()]
        assert [ax.get_title() for ax in panels] == list(rf.LAYERS)
        for ax in panels:  # one layer's dots and its moving RMS (one colour), and the black prediction
            colours = {tuple(line.get_color()) for line in ax.get_lines() if line.get_color() != "black"}
            assert len(colours) == 1 and len(ax.collections) >= 1


def test_log_axes_are_labelled_in_plain_numbers():
    pytest.importorskip("matplotlib")
    from normwatch.report.figures import _log_y, _new_figure

    for low, high in ((0.6, 4.5), (0.05, 30.0), (1.0, 3.5)):
        fig, ax = _new_figure()
        ax.plot([0, 1], [low, high])
        _log_y(ax)
        ax.set_ylim(low, high)
        fig.canvas.draw()
        labels = [t.get_text() for t in ax.get_yticklabels(minor=False) + ax.get_yticklabels(minor=True)
                  if t.get_text() and low <= t.get_position()[1] <= high]
        assert len(labels) >= 2 and all(re.fullmatch(r"\d+(\.\d+)?", text) for text in labels), labels
    # what matplotlib alone writes on (0.6, 4.5): a scientific label such as 4×10⁰
    fig, ax = _new_figure()
    ax.plot([0, 1], [0.6, 4.5])
    ax.set_yscale("log")
    ax.set_ylim(0.6, 4.5)
    fig.canvas.draw()
    assert any("times" in t.get_text() for t in ax.get_yticklabels(minor=True))


# ------------------------------------------------------------------------------ a real run
def test_report_from_a_real_normwatch_run(tmp_path: Path):
    """Train conv→BN→ReLU for 40 SGD steps under normwatch.attach, then render its report."""
    import torch
    from torch import nn

    import normwatch

    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1, bias=False),
        nn.BatchNorm2d(8),
        nn.ReLU(),
        nn.Conv2d(8, 8, 3, padding=1, bias=False),
        nn.BatchNorm2d(8),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(8, 4),
    )
    # τ = (1−μ)/(4ηλ) = 5 steps, so the window opens at step 15 of 40.
    opt = torch.optim.SGD(model.parameters(), lr=0.5, momentum=0.5, weight_decay=0.05)
    x, y = torch.randn(64, 3, 8, 8), torch.randint(0, 4, (64,))
    watcher = normwatch.attach(model, opt, logdir=tmp_path / "run")
    for step in range(40):
        idx = torch.arange(16) + 16 * (step % 4)
        loss = nn.functional.cross_entropy(model(x[idx]), y[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
    watcher.close()

    md_path = write_report([tmp_path / "run"])
    out = md_path.parent
    for i in (1, 2, 3, 4, 6, 7, 9, 10):
        assert_png(out / f"fig{i:02d}.png")
    assert not (out / "fig05.png").exists() and not (out / "fig08.png").exists()  # μ = 0.5, no sweep
    verdicts = {i: v for i, v in enumerate(json.loads((out / "verdicts.json").read_text()), start=1)}
    for i in (1, 2, 4, 5):  # w·g, balance, η|g|/|w| with momentum, autocorrelation
        # judged on data (40 noisy steps on two layers may leave a claim inconclusive, never "no data")
        assert verdicts[i]["outcome"] in ("holds", "does not hold", "inconclusive"), verdicts[i]
        assert sorted(verdicts[i]["per_layer"]) == ["0", "3"]  # the two convs followed by BN
    assert verdicts[2]["window"] == "steps 15–39"  # t_peak 0 + 3τ, τ = (1−0.5)/(4·0.5·0.05) = 5
    assert [verdicts[i]["outcome"] for i in (3, 6, 7, 8)] == ["no data"] * 4

    run = load_run(tmp_path / "run")
    cos = {layer: float(np.mean(np.abs(run.series("cos_wg", layer).values))) for layer in ("0", "3")}
    assert verdicts[1]["per_layer"] == pytest.approx(cos, rel=1e-12)
    g = {
        layer: run.series("growth", layer).between(15, 39).values.sum()
        / run.series("shrink", layer).between(15, 39).values.sum()
        for layer in ("0", "3")
    }
    assert verdicts[2]["per_layer"] == pytest.approx(g, rel=1e-12)
