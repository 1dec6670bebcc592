"""The Watcher's lifecycle and robustness: it must not disturb, must not lose a step, must clean up."""

import copy
import json
import math
import subprocess
import sys
import textwrap
import warnings
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from torch import nn
from torch.overrides import TorchFunctionMode

import normwatch
from normwatch import chunk
from tests.models import assert_same_history, optimizer_step


def _model(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Conv2d(3, 6, 3, padding=1, bias=False), nn.BatchNorm2d(6), nn.ReLU(), nn.Dropout(0.1),
                         nn.MaxPool2d(2), nn.Conv2d(6, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8), nn.ReLU(),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 5))


def _batches(n: int, seed: int = 1):
    gen = torch.Generator().manual_seed(seed)
    return [(torch.randn(16, 3, 8, 8, generator=gen), torch.randint(0, 5, (16,), generator=gen)) for _ in range(n)]


def _sgd(model: nn.Module) -> torch.optim.Optimizer:
    return torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, nesterov=True, weight_decay=5e-3)


def _train(model, opt, batches, scaler=None) -> None:
    for x, y in batches:
        loss = F.cross_entropy(model(x), y)
        opt.zero_grad()
        optimizer_step(loss, opt, scaler)


def _scalars(logdir: Path) -> dict[str, list[tuple[int, float]]]:
    acc = EventAccumulator(str(logdir), size_guidance={"scalars": 0, "tensors": 0})
    acc.Reload()
    return {tag: [(e.step, e.value) for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}


def _hooks(model: nn.Module, opt: torch.optim.Optimizer) -> tuple[int, ...]:
    counts = [len(opt._optimizer_step_pre_hooks), len(opt._optimizer_step_post_hooks)]
    for m in model.modules():
        counts += [len(m._forward_pre_hooks), len(m._forward_hooks), len(m._backward_hooks)]
    return tuple(counts)


# -- the observer does not disturb -------------------------------------------------------------------------
@pytest.mark.parametrize(("make_opt", "fused"), [
    pytest.param(_sgd, False, id="sgd-nesterov"),
    pytest.param(_sgd, True, id="sgd-nesterov-fused"),
    pytest.param(lambda m: torch.optim.AdamW(m.parameters(), lr=1e-2, weight_decay=0.05), False, id="adamw"),
    pytest.param(lambda m: normwatch.optim.LARS(m.parameters(), lr=0.02, weight_decay=5e-3), False, id="lars"),
])
def test_training_is_bitwise_identical_with_and_without_normwatch(tmp_path, make_opt, fused) -> None:
    batches = _batches(8)
    plain = _model()
    torch.manual_seed(5)
    _train(plain, make_opt(plain), batches)
    watched = _model()
    opt = make_opt(watched)
    torch.manual_seed(5)
    with normwatch.attach(watched, opt, logdir=str(tmp_path), fused=fused, keep_history=True) as watch:
        _train(watched, opt, batches)
    assert len(watch.layers) == 2 and len(watch.history["normwatch/w_norm2/0"]) == len(batches)
    for (name, a), b in zip(plain.state_dict().items(), watched.state_dict().values()):
        assert torch.equal(a, b), name


class _Restless(nn.Module):
    """A forward with side effects on its state: it replaces a buffer and changes its input in place."""

    def __init__(self) -> None:
        super().__init__()
        self.body = _model()
        self.register_buffer("seen", torch.zeros(()))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.seen = 0.5 * self.seen + 0.5 * x.mean()  # a new tensor object each call
        return self.body(x.mul_(2.0))


def test_a_forward_that_replaces_buffers_and_changes_its_input_is_not_disturbed(tmp_path) -> None:
    """Detection runs extra forwards: they must leave the user's input and the module's state untouched."""
    runs = {}
    for watched in (False, True):
        model, batches = _Restless(), _batches(4)
        opt = _sgd(model)
        watch = normwatch.attach(model, opt, logdir=str(tmp_path), keep_history=True) if watched else None
        torch.manual_seed(5)
        _train(model, opt, batches)
        if watch:
            watch.close()
            assert [layer.name for layer in watch.layers] == ["body.0", "body.5"]
            assert all(layer.confirmed for layer in watch.layers)
        runs[watched] = model.state_dict(), [x for x, _ in batches]
    for (name, a), b in zip(runs[False][0].items(), runs[True][0].values()):
        assert torch.equal(a, b), name
    for a, b in zip(runs[False][1], runs[True][1]):  # each batch doubled once
        assert torch.equal(a, b)


def test_fused_falls_back_to_eager_with_one_warning_when_compiling_fails(tmp_path, monkeypatch) -> None:
    def no_compiler():
        raise RuntimeError("no C++ compiler")

    monkeypatch.setattr(chunk, "_compiled", no_compiler)
    monkeypatch.setattr(chunk, "_compile_failed", False)  # restored afterwards: later fused tests compile
    batches = _batches(4)
    runs = {}
    for fused in (False, True):
        model = _model()
        opt = _sgd(model)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            with normwatch.attach(model, opt, logdir=str(tmp_path / str(fused)), fused=fused,
                                  keep_history=True) as runs[fused]:
                _train(model, opt, batches)
        failed = [w for w in caught if "torch.compile of the per-step statistics failed" in str(w.message)]
        assert len(failed) == fused  # one warning, and only when fused
    assert runs[True].history == runs[False].history  # the same eager computation, every step recorded


def test_fused_statistics_compile_once_for_every_tensor_shape(tmp_path) -> None:
    """3×3 and 1×1 convs, a linear layer: under error_on_recompile the fused path must not fall back."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 6, 3, padding=1, bias=False), nn.BatchNorm2d(6), nn.ReLU(),
                          nn.Conv2d(6, 6, 1, bias=False), nn.BatchNorm2d(6), nn.ReLU(), nn.Flatten(),
                          nn.Linear(6 * 64, 12, bias=False), nn.BatchNorm1d(12), nn.Linear(12, 5))
    plain = copy.deepcopy(model)
    histories = []
    for net, fused in ((plain, False), (model, True)):
        opt = torch.optim.SGD(net.parameters(), lr=0.05, momentum=0.9, weight_decay=5e-3)
        with warnings.catch_warnings(), torch._dynamo.config.patch(error_on_recompile=True):
            warnings.filterwarnings("error", message="normwatch: torch.compile")
            with normwatch.attach(net, opt, logdir=str(tmp_path / str(fused)), fused=fused,
                                  keep_history=True) as watch:
                _train(net, opt, _batches(4))
        histories.append(watch.history)
    assert len(watch.layers) == 3
    assert_same_history(histories[1], histories[0], rel=1e-5, abs=1e-7)


def test_close_removes_every_hook_and_is_idempotent(tmp_path) -> None:
    model, batches = _model(), _batches(3)
    opt = _sgd(model)
    before = _hooks(model, opt)
    attrs = (set(vars(model)), set(vars(opt)))
    watch = normwatch.attach(model, opt, logdir=str(tmp_path))
    assert _hooks(model, opt) != before
    _train(model, opt, batches)
    watch.close()
    watch.close()
    assert _hooks(model, opt) == before
    assert (set(vars(model)), set(vars(opt))) == attrs
    normwatch.attach(model, opt, logdir=str(tmp_path / "again")).close()  # attaching anew works after close


def test_close_before_any_forward_removes_the_forward_hook(tmp_path) -> None:
    model = _model()
    opt = _sgd(model)
    before = _hooks(model, opt)
    normwatch.attach(model, opt, logdir=str(tmp_path)).close()
    assert _hooks(model, opt) == before


def test_attaching_twice_to_one_optimizer_is_an_error(tmp_path) -> None:
    model = _model()
    opt = _sgd(model)
    with normwatch.attach(model, opt, logdir=str(tmp_path)), pytest.raises(RuntimeError, match="already attached"):
        normwatch.attach(model, opt, logdir=str(tmp_path))


@pytest.mark.parametrize(("kwargs", "match"), [
    ({"every": 0}, "positive int"), ({"every": 1.5}, "positive int"), ({"flush_every": 0}, "positive int"),
    ({"ema_beta": 1.0}, r"\[0, 1\)"), ({"logdir": "a", "writer": object()}, "either"),
])
def test_bad_arguments_say_what_is_wrong(kwargs, match) -> None:
    model = _model()
    with pytest.raises((ValueError, TypeError), match=match):
        normwatch.attach(model, _sgd(model), **kwargs)


def test_hooks_do_not_read_device_values_back(tmp_path) -> None:
    """No .item()/bool()/tolist()/cpu() inside optimizer.step() beyond what the optimizer itself does."""
    syncs = {"item", "tolist", "__bool__", "__float__", "__int__", "cpu", "numpy", "is_nonzero", "_local_scalar_dense"}

    class Spy(TorchFunctionMode):
        def __init__(self) -> None:
            super().__init__()
            self.seen: list[str] = []

        def __torch_function__(self, func, types, args=(), kwargs=None):
            name = getattr(func, "__name__", "")
            if name in syncs:
                self.seen.append(name)
            return func(*args, **(kwargs or {}))

    def steps(attach: bool) -> list[str]:
        model = _model()
        opt = _sgd(model)
        watch = normwatch.attach(model, opt, logdir=str(tmp_path / str(attach)), flush_every=1000) if attach else None
        seen = []
        for x, y in _batches(4):
            F.cross_entropy(model(x), y).backward()
            spy = Spy()
            with spy:
                opt.step()
            opt.zero_grad()
            seen += spy.seen
        if watch:
            watch.close()
        return seen

    assert steps(True) == steps(False)


def test_compiled_model_has_no_recompiles_and_the_same_metrics(tmp_path) -> None:
    torch._dynamo.reset()
    batches = _batches(5)
    eager = _model()
    opt = _sgd(eager)
    with normwatch.attach(eager, opt, logdir=str(tmp_path / "eager"), keep_history=True) as w_eager:
        _train(eager, opt, batches)
    compiled_model = _model()
    compiled = torch.compile(compiled_model, backend="eager")
    opt = _sgd(compiled_model)
    with torch._dynamo.config.patch(error_on_recompile=True), \
            normwatch.attach(compiled, opt, logdir=str(tmp_path / "compiled"), keep_history=True) as w_comp:
        _train(compiled, opt, batches)
    assert [layer.name for layer in w_comp.layers] == ["0", "5"]
    assert_same_history(w_comp.history, w_eager.history, rel=1e-5, abs=1e-7)


# -- what is written ----------------------------------------------------------------------------------------
def test_event_files_hold_every_metric_the_layout_and_the_config(tmp_path) -> None:
    model, batches = _model(), _batches(5)
    opt = _sgd(model)
    with normwatch.attach(model, opt, logdir=str(tmp_path), keep_history=True) as watch:
        _train(model, opt, batches)
    scalars = _scalars(tmp_path)
    metrics = ("w_norm2", "w_norm2_rel", "cos_wg", "shrink", "growth", "cross", "radial", "tangential", "angle",
               "lars_ratio", "lars_theory", "angle_theory", "grad_autocorr", "lr", "weight_decay", "momentum")
    for layer in ("0", "5"):
        for metric in metrics:
            tag = f"normwatch/{metric}/{layer}"
            assert tag in scalars, tag
            expected = [0, 1, 2, 3, 4] if metric != "grad_autocorr" else [1, 2, 3, 4]
            assert [s for s, _ in scalars[tag]] == expected, tag
            assert [v for _, v in scalars[tag]] == pytest.approx([v for _, v in watch.history[tag]], rel=1e-6)
    assert scalars["normwatch/lr/0"][0][1] == pytest.approx(0.05)
    assert scalars["normwatch/w_norm2_rel/0"][0][1] == pytest.approx(1.0)
    acc = EventAccumulator(str(tmp_path), size_guidance={"tensors": 0})
    acc.Reload()
    config = json.loads(acc.Tensors("normwatch/config/text_summary")[0].tensor_proto.string_val[0])
    assert config["family"] == "sgd" and config["nesterov"] is True
    assert [layer["name"] for layer in config["layers"]] == ["0", "5"]
    layout = acc.Tensors("custom_scalars__config__")
    assert layout, "custom scalars layout missing"


def test_default_logdir_is_under_runs(tmp_path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    model = _model()
    opt = _sgd(model)
    with normwatch.attach(model, opt):
        _train(model, opt, _batches(2))
    (run,) = (tmp_path / "runs").iterdir()
    assert "normwatch/w_norm2/0" in _scalars(run)


def test_an_existing_writer_is_used_and_not_closed(tmp_path) -> None:
    from torch.utils.tensorboard import SummaryWriter

    writer = SummaryWriter(str(tmp_path))
    model = _model()
    opt = _sgd(model)
    with normwatch.attach(model, opt, writer=writer):
        _train(model, opt, _batches(2))
    writer.add_scalar("mine", 1.0, 0)  # still open
    writer.close()
    scalars = _scalars(tmp_path)
    assert "mine" in scalars and "normwatch/angle/5" in scalars


# -- nothing is lost --------------------------------------------------------------------------------------
def test_an_exception_leaving_the_with_block_flushes_every_step(tmp_path) -> None:
    model = _model()
    opt = _sgd(model)
    with pytest.raises(KeyboardInterrupt), normwatch.attach(model, opt, logdir=str(tmp_path), flush_every=1000):
        _train(model, opt, _batches(5))
        raise KeyboardInterrupt
    assert [s for s, _ in _scalars(tmp_path)["normwatch/w_norm2/0"]] == [0, 1, 2, 3, 4]


def test_interpreter_exit_flushes_every_step(tmp_path) -> None:
    script = textwrap.dedent(f"""
        import torch, torch.nn as nn, torch.nn.functional as F, normwatch
        model = nn.Sequential(nn.Conv2d(3, 4, 3, bias=False), nn.BatchNorm2d(4), nn.Flatten(), nn.Linear(144, 2))
        opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-3)
        watch = normwatch.attach(model, opt, logdir={str(tmp_path)!r}, flush_every=1000)
        for _ in range(3):
            F.cross_entropy(model(torch.randn(8, 3, 8, 8)), torch.randint(0, 2, (8,))).backward()
            opt.step(); opt.zero_grad()
    """)  # no close(): the atexit hook must flush
    subprocess.run([sys.executable, "-c", script], check=True)
    assert [s for s, _ in _scalars(tmp_path)["normwatch/w_norm2/0"]] == [0, 1, 2]


def test_resume_continues_the_same_curves(tmp_path) -> None:
    """6 steps + state_dict + 6 steps = 12 uninterrupted steps: same steps, same values, no gap or overlap."""
    batches = _batches(12)
    straight = _model()
    opt = _sgd(straight)
    torch.manual_seed(3)
    with normwatch.attach(straight, opt, logdir=str(tmp_path / "straight"), keep_history=True) as w_straight:
        _train(straight, opt, batches)

    first = _model()
    opt1 = _sgd(first)
    torch.manual_seed(3)
    with normwatch.attach(first, opt1, logdir=str(tmp_path / "resumed")) as watch:
        _train(first, opt1, batches[:6])
        checkpoint = copy.deepcopy({"model": first.state_dict(), "opt": opt1.state_dict(), "nw": watch.state_dict(),
                                    "rng": torch.get_rng_state()})
    second = _model(seed=99)
    second.load_state_dict(checkpoint["model"])
    opt2 = _sgd(second)
    opt2.load_state_dict(checkpoint["opt"])
    torch.set_rng_state(checkpoint["rng"])
    with normwatch.attach(second, opt2, logdir=str(tmp_path / "resumed")) as watch2:
        watch2.load_state_dict(checkpoint["nw"])
        _train(second, opt2, batches[6:])
    assert watch2.step == 12
    resumed = _scalars(tmp_path / "resumed")
    assert_same_history(resumed, w_straight.history, rel=1e-5, abs=1e-8)


def test_unwritable_logdir_warns_once_trains_and_keeps_the_metrics(tmp_path) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    model = _model()
    opt = _sgd(model)
    with pytest.warns(RuntimeWarning, match="cannot create a TensorBoard writer") as record:
        watch = normwatch.attach(model, opt, logdir=str(blocker / "run"))
        _train(model, opt, _batches(3))
        watch.close()
    assert sum("TensorBoard" in str(w.message) for w in record) == 1
    assert [s for s, _ in watch.history["normwatch/w_norm2/0"]] == [0, 1, 2]


def test_a_failing_writer_warns_once_and_loses_nothing(tmp_path) -> None:
    class Broken:
        def add_scalar(self, *args, **kwargs):
            raise OSError("disk full")

        def add_custom_scalars(self, layout):
            pass

        def add_text(self, *args, **kwargs):
            pass

        def flush(self):
            pass

    model = _model()
    opt = _sgd(model)
    with pytest.warns(RuntimeWarning) as record, normwatch.attach(model, opt, writer=Broken(), flush_every=2) as watch:
        _train(model, opt, _batches(5))
    messages = [str(w.message) for w in record]
    assert len(messages) == 2 and "disk full" in messages[0]
    assert "recorded steps (steps 0 to 4) never reached the TensorBoard event file" in messages[1]
    assert [s for s, _ in watch.history["normwatch/w_norm2/0"]] == [0, 1, 2, 3, 4]


# -- bad input ----------------------------------------------------------------------------------------------
def test_a_model_without_invariant_layers_warns_and_trains(tmp_path) -> None:
    model = nn.Sequential(nn.Flatten(), nn.Linear(192, 5))
    opt = torch.optim.SGD(model.parameters(), lr=0.1, weight_decay=1e-3)
    with pytest.warns(RuntimeWarning, match="no scale-invariant layer"), \
            normwatch.attach(model, opt, logdir=str(tmp_path)) as watch:
        _train(model, opt, _batches(3))
    assert watch.layers == [] and watch.step == 3  # steps are counted, nothing is recorded


def test_non_finite_gradients_write_no_bogus_point(tmp_path) -> None:
    model = _model()
    opt = _sgd(model)
    batches = _batches(6)
    with pytest.warns(RuntimeWarning, match="non-finite"), \
            normwatch.attach(model, opt, logdir=str(tmp_path), keep_history=True) as watch:
        for i, (x, y) in enumerate(batches):
            F.cross_entropy(model(x), y).backward()
            if i == 3:
                model[0].weight.grad[0, 0, 0, 0] = float("nan")
            opt.step()
            opt.zero_grad()
    assert watch.step == 6
    steps = [s for s, _ in watch.history["normwatch/w_norm2/0"]]
    assert steps == [0, 1, 2]  # the NaN reached the weights at step 3: nothing after it is finite
    for points in _scalars(tmp_path).values():
        assert all(math.isfinite(v) for _, v in points)


def test_steps_a_grad_scaler_skips_are_not_steps(tmp_path) -> None:
    """Non-fused optimizer under GradScaler: the overflowing step is skipped and not counted."""
    model = _model()
    opt = _sgd(model)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**4)
    batches = _batches(6)
    with normwatch.attach(model, opt, logdir=str(tmp_path), keep_history=True) as watch:
        for i, (x, y) in enumerate(batches):
            loss = F.cross_entropy(model(x), y)
            opt.zero_grad()
            scaler.scale(loss).backward()
            if i == 2:
                model[5].weight.grad[0, 0, 0, 0] = float("inf")
            scaler.step(opt)
            scaler.update()
    assert watch.step == 5
    assert [s for s, _ in watch.history["normwatch/w_norm2/0"]] == [0, 1, 2, 3, 4]


@pytest.mark.parametrize(("device", "fused"), [
    pytest.param("cpu", True, id="cpu-fused"),
    pytest.param("cuda", False, id="cuda", marks=pytest.mark.skipif(not torch.cuda.is_available(), reason="no GPU")),
    pytest.param("cuda", True, id="cuda-fused",
                 marks=pytest.mark.skipif(not torch.cuda.is_available(), reason="no GPU")),
])
def test_grad_scaler_skipped_steps_are_dropped_and_metrics_use_unscaled_gradients(tmp_path, device, fused) -> None:
    """A fused optimizer's step() runs even on overflow: normwatch drops that step and counts on."""
    model = _model().to(device)
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, weight_decay=5e-3, fused=fused)
    scaler = torch.amp.GradScaler(device, init_scale=2.0**10)
    reference = []
    with normwatch.attach(model, opt, logdir=str(tmp_path), keep_history=True) as watch:
        for i, (x, y) in enumerate(_batches(6)):
            with torch.autocast(device, dtype=torch.float16, enabled=device == "cuda"):
                loss = F.cross_entropy(model(x.to(device)), y.to(device))
            opt.zero_grad()
            scaler.scale(loss).backward()
            if i == 2:
                model[5].weight.grad[0, 0, 0, 0] = float("inf")
            w = model[0].weight.detach().clone()
            g = model[0].weight.grad.detach().clone() / scaler.get_scale()
            scaler.step(opt)
            scaler.update()
            if i != 2:
                reference.append((0.05 * g.norm() / w.norm()).item())
    assert watch.step == 5
    ratios = watch.history["normwatch/lars_ratio/0"]
    assert [s for s, _ in ratios] == [0, 1, 2, 3, 4]
    assert [v for _, v in ratios] == pytest.approx(reference, rel=1e-4)


# -- real training loops --------------------------------------------------------------------------------------
def test_accumulation_and_clipping_use_the_gradient_the_step_used(tmp_path) -> None:
    """One record per optimizer step; g is the accumulated, clipped gradient."""
    model = _model()
    opt = _sgd(model)
    expected = []
    batches = _batches(12)
    with normwatch.attach(model, opt, logdir=str(tmp_path), keep_history=True) as watch:
        for i in range(0, 12, 3):
            for x, y in batches[i:i + 3]:
                (F.cross_entropy(model(x), y) / 3).backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), max_norm=0.05)
            w, g = model[0].weight.detach().clone(), model[0].weight.grad.clone()
            expected.append((0.05 * g.norm() / w.norm()).item())
            opt.step()
            opt.zero_grad()
    assert watch.step == 4
    assert [v for _, v in watch.history["normwatch/lars_ratio/0"]] == pytest.approx(expected, rel=1e-5)


def test_param_groups_schedulers_and_frozen_steps(tmp_path) -> None:
    """Per-group hyperparameters, an LR schedule, and a layer whose gradient is None for a step."""
    model = _model()
    convs = [model[0].weight, model[5].weight]
    others = [p for p in model.parameters() if all(p is not c for c in convs)]
    opt = torch.optim.SGD([{"params": [convs[0]], "lr": 0.1}, {"params": [convs[1]], "weight_decay": 1e-2},
                           {"params": others, "weight_decay": 0.0}], lr=0.05, momentum=0.9, weight_decay=5e-3)
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=1, gamma=0.5)
    with normwatch.attach(model, opt, logdir=str(tmp_path), keep_history=True) as watch:
        for i, (x, y) in enumerate(_batches(4)):
            F.cross_entropy(model(x), y).backward()
            if i == 2:
                model[5].weight.grad = None  # not updated this step
            opt.step()
            sched.step()
            opt.zero_grad()
    h = watch.history
    assert [v for _, v in h["normwatch/lr/0"]] == pytest.approx([0.1, 0.05, 0.025, 0.0125])
    assert [s for s, _ in h["normwatch/lr/5"]] == [0, 1, 3]
    assert {v for _, v in h["normwatch/weight_decay/5"]} == {1e-2}


def test_layers_patterns_select_drop_and_add(tmp_path) -> None:
    def layers(patterns):
        model = _model()
        opt = _sgd(model)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            with normwatch.attach(model, opt, logdir=str(tmp_path), layers=patterns) as watch:
                _train(model, opt, _batches(1))
        return [layer.name for layer in watch.layers], [str(w.message) for w in caught]

    assert layers(["5"])[0] == ["5"]
    assert layers(["-0"])[0] == ["5"]
    assert layers(["+10"])[0] == ["0", "5", "10"]
    names, messages = layers(["conv*"])
    assert names == [] and len(messages) == 2  # what matched nothing, and that nothing is left
    assert "matches no detected layer" in messages[0] and "leave none of the 2 detected layers" in messages[1]


def test_repr_reports_the_extra_memory(tmp_path) -> None:
    model = _model()
    opt = _sgd(model)
    with normwatch.attach(model, opt, logdir=str(tmp_path), flush_every=8) as watch:
        _train(model, opt, _batches(1))
        # snapshot and memory, each tensor in whole blocks of 1,024 floats; ring: 8 steps × 2 tensors × 14 sums
        padded = sum(-(-model[i].weight.numel() // 1024) * 1024 for i in (0, 5))
        assert watch.extra_memory_bytes == 2 * 4 * padded + 8 * 2 * 14 * 4
        assert "MiB" in repr(watch) and "layers=2" in repr(watch)


def test_forward_inside_step_closure_is_recorded_from_the_first_step(tmp_path) -> None:
    """Lightning calls optimizer.step(closure): detection happens inside the step; step 0 is still exact."""
    batches = _batches(4)
    plain_loop = _model()
    opt = _sgd(plain_loop)
    with normwatch.attach(plain_loop, opt, logdir=str(tmp_path / "a"), keep_history=True) as expected:
        _train(plain_loop, opt, batches)
    closure_loop = _model()
    opt = _sgd(closure_loop)
    with normwatch.attach(closure_loop, opt, logdir=str(tmp_path / "b"), keep_history=True) as watch:
        for x, y in batches:
            def closure(x=x, y=y):
                opt.zero_grad()
                loss = F.cross_entropy(closure_loop(x), y)
                loss.backward()
                return loss
            opt.step(closure)
    assert_same_history(watch.history, expected.history, rel=1e-5, abs=1e-8)


def test_warnings_as_errors_cannot_kill_the_writer_thread(tmp_path, capfd) -> None:
    """Under -W error a warning raised on the writer thread is printed; flush() and close() still return."""
    import threading

    model = _model()
    opt = _sgd(model)
    done = threading.Event()

    def run() -> None:
        with warnings.catch_warnings():
            warnings.simplefilter("error", RuntimeWarning)
            watch = normwatch.attach(model, opt, logdir=str(tmp_path), flush_every=1)
            for i, (x, y) in enumerate(_batches(3)):
                F.cross_entropy(model(x), y).backward()
                if i == 1:
                    model[0].weight.grad.fill_(float("nan"))  # the writer thread warns about it
                opt.step()
                opt.zero_grad()
            watch.flush()
            watch.close()
        done.set()

    worker = threading.Thread(target=run, daemon=True)
    worker.start()
    worker.join(timeout=60)
    assert done.is_set(), "flush() or close() hung: the writer thread died"
    assert "non-finite" in capfd.readouterr().err
