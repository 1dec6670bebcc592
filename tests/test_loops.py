"""Training-loop realities through plain ``normwatch.attach``, each against an independent computation.

(test_watcher.py covers GradScaler skips with fused SGD, accumulation with clipping, param groups,
schedulers, None gradients and ``torch.compile(model)``.) Here: bf16 autocast, channels_last,
``zero_grad(set_to_none=False)``, frozen parameters, a layer whose param group is added later, fused Adam/AdamW with
and without a GradScaler, and a compiled optimizer step.

The float64 reference is plain SGD without momentum, where every metric has a closed form in w_t, g and
w_{t+1} (u = −η(g + λw), u_wd = −ηλw, u_g = −ηg): see ``_reference``.
"""

import math
import warnings

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import normwatch
from tests.models import assert_same_history, seeded_batches, small_bn_net

LR, WD = 0.05, 5e-3


_net, _batches = small_bn_net, seeded_batches


def _flat(model: nn.Module, names, grad: bool = False) -> torch.Tensor:
    params = dict(model.named_parameters())
    return torch.cat([(params[n].grad if grad else params[n]).detach().double().flatten() for n in names])


def _train(model, opt, batches, *, layers=("0",), bf16=False, cache=True, scaler=None, step=None, set_to_none=True,
           inf_at=None):
    """Train, capturing (w_t, g, w_{t+1}) in float64 for the weight of each layer in ``layers``.

    ``bf16``: forward under CPU autocast (``cache``: its weight-cast cache, which Lightning turns off).
    """
    captured: dict[str, list[tuple[torch.Tensor, ...]]] = {layer: [] for layer in layers}
    params = {layer: [f"{layer}.weight"] for layer in layers}
    for i, (x, y) in enumerate(batches):
        if _is_channels_last(model):
            x = x.to(memory_format=torch.channels_last)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16, cache_enabled=cache):
            loss = F.cross_entropy(model(x), y)
        (scaler.scale(loss) if scaler else loss).backward()
        if inf_at == i:
            model[4].weight.grad[0, 0, 0, 0] = math.inf
        scale = scaler.get_scale() if scaler else 1.0
        before = {layer: (_flat(model, names), _flat(model, names, grad=True) / scale)
                  for layer, names in params.items()}
        if scaler:
            scaler.step(opt)
            scaler.update()
        else:
            (step or opt.step)()
        opt.zero_grad(set_to_none=set_to_none)
        if inf_at != i:
            for layer, (w, g) in before.items():
                captured[layer].append((w, g, _flat(model, params[layer])))
    return captured


def _is_channels_last(model: nn.Module) -> bool:
    return model[0].weight.is_contiguous(memory_format=torch.channels_last) and not model[0].weight.is_contiguous()


def _reference(captured, lr: float = LR, wd: float = WD) -> dict[str, list[float]]:
    """Every metric of plain SGD (no momentum) from w_t, g and w_{t+1}, in float64.

    Closed forms where the update's own rounding does not matter (shrink, lars_ratio, cos_wg); growth and
    cross from the measured update u = w_{t+1} − w_t, as defined, since w·u_g nearly cancels.
    """
    out: dict[str, list[float]] = {}
    for w, g, w_next in captured:
        u = w_next - w
        u_g = u + lr * wd * w
        ww, wg, gg = w @ w, w @ g, g @ g
        u_r = (w @ u) / ww.sqrt()
        tangential = u @ u - (w @ u) ** 2 / ww
        values = {
            "w_norm2": ww, "cos_wg": wg / (ww * gg).sqrt(), "lars_ratio": lr * gg.sqrt() / ww.sqrt(),
            "radial": 2 * (w @ u) + u_r**2, "tangential": tangential,
            "angle": torch.atan2(tangential.clamp(min=0).sqrt(), ww.sqrt() + u_r),
            "shrink": (2 * lr * wd - (lr * wd) ** 2) * ww,  # -(2 w·u_wd + |u_wd|²), u_wd = -ηλw
            "growth": 2 * (w @ u_g) + u_g @ u_g,  # u_g = u - u_wd (= -ηg up to the optimizer's float32 rounding)
            "cross": -2 * lr * wd * (w @ u_g),  # 2 u_wd·u_g
        }
        for metric, value in values.items():
            out.setdefault(metric, []).append(value.item())
    return out


def _assert_matches(history, layer: str, reference: dict[str, list[float]], rel: float, steps=None) -> None:
    for metric, expected in reference.items():
        points = history[f"normwatch/{metric}/{layer}"]
        if steps is not None:
            assert [s for s, _ in points] == steps, metric
        assert [v for _, v in points] == pytest.approx(expected, rel=rel, abs=1e-6 if metric == "cos_wg" else 1e-10), \
            metric


def _sgd(params, **kwargs) -> torch.optim.Optimizer:
    return torch.optim.SGD(params, lr=LR, weight_decay=WD, **kwargs)


# -- precision and memory layout ----------------------------------------------------------------------------------
@pytest.mark.parametrize("cache", [True, False], ids=["cache", "no-cache"])
def test_bf16_autocast_metrics_match_a_float64_computation(tmp_path, cache) -> None:
    model = _net()
    opt = _sgd(model.parameters())
    with normwatch.attach(model, opt, logdir=str(tmp_path), keep_history=True) as watch:
        captured = _train(model, opt, _batches(5), layers=("0", "4"), bf16=True, cache=cache)
    assert [layer.name for layer in watch.layers] == ["0", "4"]
    for layer in ("0", "4"):
        _assert_matches(watch.history, layer, _reference(captured[layer]), rel=1e-3, steps=[0, 1, 2, 3, 4])


def test_bf16_autocast_confirms_detection_without_a_warning(tmp_path) -> None:
    model = _net()
    opt = _sgd(model.parameters())
    with warnings.catch_warnings():
        warnings.filterwarnings("error", message=".*looks scale-invariant.*")
        with normwatch.attach(model, opt, logdir=str(tmp_path)) as watch:
            _train(model, opt, _batches(1), bf16=True, cache=False)
    assert all(layer.confirmed for layer in watch.layers)


def test_channels_last_model_matches_float64_and_the_contiguous_model(tmp_path) -> None:
    batches = _batches(4)
    runs = {}
    for layout in (torch.contiguous_format, torch.channels_last):
        model = _net().to(memory_format=layout)
        opt = _sgd(model.parameters())
        with normwatch.attach(model, opt, logdir=str(tmp_path / str(layout)), keep_history=True) as watch:
            captured = _train(model, opt, batches, layers=("0", "4"))
        runs[layout] = watch.history
    assert _is_channels_last(model)
    for layer in ("0", "4"):
        _assert_matches(runs[torch.channels_last], layer, _reference(captured[layer]), rel=1e-4, steps=[0, 1, 2, 3])
    for tag, points in runs[torch.contiguous_format].items():
        assert [v for _, v in runs[torch.channels_last][tag]] == pytest.approx([v for _, v in points], rel=1e-4,
                                                                               abs=1e-6), tag


# -- gradients that are zero, absent or frozen -------------------------------------------------------------------
def test_zero_grad_set_to_none_false_gives_the_same_metrics(tmp_path) -> None:
    batches = _batches(4)
    runs = {}
    for set_to_none in (True, False):
        model = _net()
        opt = _sgd(model.parameters(), momentum=0.9)
        with normwatch.attach(model, opt, logdir=str(tmp_path / str(set_to_none)), keep_history=True) as watch:
            _train(model, opt, batches, set_to_none=set_to_none)
        runs[set_to_none] = watch.history
    assert runs[True].keys() == runs[False].keys()
    assert_same_history(runs[False], runs[True], rel=1e-6, abs=1e-12)


def test_an_all_zero_gradient_step_is_still_recorded(tmp_path) -> None:
    model = _net()
    opt = _sgd(model.parameters())
    batches = _batches(3)
    with normwatch.attach(model, opt, logdir=str(tmp_path), keep_history=True) as watch:
        for i, (x, y) in enumerate(batches):
            F.cross_entropy(model(x), y).backward()
            if i == 1:
                model[0].weight.grad.zero_()  # e.g. a branch this batch did not use
            opt.step()
            opt.zero_grad(set_to_none=False)
    shrink = watch.history["normwatch/shrink/0"]
    assert [s for s, _ in shrink] == [0, 1, 2]
    # zero up to the rounding of the fp32 update itself (about eps·|w| per element)
    w_norm2 = watch.history["normwatch/w_norm2/0"][1][1]
    assert watch.history["normwatch/growth/0"][1][1] == pytest.approx(0.0, abs=1e-6 * w_norm2)
    assert shrink[1][1] == pytest.approx((1 - (1 - LR * WD) ** 2) * w_norm2, rel=1e-5)  # seed (1′): decay still acts


@pytest.mark.parametrize("in_optimizer", [pytest.param(False, id="excluded"), pytest.param(True, id="grad-None")])
def test_frozen_conv_is_not_recorded_and_the_others_are_exact(tmp_path, in_optimizer) -> None:
    model = _net()
    model[0].requires_grad_(False)
    params = model.parameters() if in_optimizer else (p for p in model.parameters() if p.requires_grad)
    opt = _sgd(params)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with normwatch.attach(model, opt, logdir=str(tmp_path), keep_history=True) as watch:
            captured = _train(model, opt, _batches(4), layers=("4",))
    assert not any(tag.endswith("/0") for tag in watch.history)
    if not in_optimizer:
        assert any("layer '0' is recorded from the step its parameters join" in str(w.message) for w in caught)
    _assert_matches(watch.history, "4", _reference(captured["4"]), rel=1e-5, steps=[0, 1, 2, 3])


def test_a_layer_whose_param_group_is_added_later_is_recorded_from_then_on(tmp_path) -> None:
    """Progressive unfreezing: layer 4 joins the optimizer at step 2 with its own lr. From then on it is
    recorded exactly; layer 0 is unaffected; the custom-scalars layout is rewritten with both layers."""
    model = _net()
    late = list(model[4].parameters())
    opt = _sgd([p for p in model.parameters() if all(p is not q for q in late)])
    batches = _batches(5)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with normwatch.attach(model, opt, logdir=str(tmp_path), keep_history=True) as watch:
            early = _train(model, opt, batches[:2], layers=("0",))
            opt.add_param_group({"params": late, "lr": 0.1})
            rest = _train(model, opt, batches[2:], layers=("0", "4"))
    assert sum("layer '4' is recorded from the step its parameters join" in str(w.message) for w in caught) == 1
    assert [layer.name for layer in watch.layers] == ["0", "4"]
    _assert_matches(watch.history, "0", _reference(early["0"] + rest["0"]), rel=1e-5, steps=[0, 1, 2, 3, 4])
    _assert_matches(watch.history, "4", _reference(rest["4"], lr=0.1), rel=1e-5, steps=[2, 3, 4])
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(tmp_path), size_guidance={"tensors": 0})
    events.Reload()
    layouts = [e.tensor_proto.string_val[0] for e in events.Tensors("custom_scalars__config__")]
    assert len(layouts) == 2 and b"normwatch: 4" not in layouts[0] and b"normwatch: 4" in layouts[1]


# -- fused optimizers and AMP scaling --------------------------------------------------------------------------------
@pytest.mark.parametrize("make_opt", [
    pytest.param(lambda params, **kw: torch.optim.AdamW(params, lr=1e-2, weight_decay=0.05, **kw), id="adamw"),
    pytest.param(lambda params, **kw: torch.optim.Adam(params, lr=1e-2, weight_decay=5e-3, **kw), id="adam-l2"),
])
def test_fused_adam_with_and_without_grad_scaler(tmp_path, make_opt) -> None:
    """Fused = foreach; with a GradScaler the skipped step is dropped and the rest equal a run without it."""
    batches = _batches(6)

    def run(name, batches, fused, scaler=None, inf_at=None):
        model = _net()
        opt = make_opt(model.parameters(), fused=fused) if fused else make_opt(model.parameters(), foreach=True)
        with normwatch.attach(model, opt, logdir=str(tmp_path / name), keep_history=True) as watch:
            captured = _train(model, opt, batches, scaler=scaler, inf_at=inf_at)
        return watch, captured["0"]

    foreach, _ = run("foreach", batches, fused=False)
    fused, captured = run("fused", batches, fused=True)
    for tag, points in foreach.history.items():
        assert [v for _, v in fused.history[tag]] == pytest.approx([v for _, v in points], rel=1e-4, abs=1e-7), tag
    measured = _reference(captured)
    for metric in ("w_norm2", "radial", "tangential", "angle"):  # optimizer-agnostic: from w_t, w_{t+1}
        assert [v for _, v in fused.history[f"normwatch/{metric}/0"]] == pytest.approx(measured[metric], rel=1e-4)
    if isinstance(fused._optimizer, torch.optim.AdamW):  # decoupled decay: u_wd = -ηλw exactly
        shrink = [(2 * 1e-2 * 0.05 - (1e-2 * 0.05) ** 2) * (w @ w).item() for w, _, _ in captured]
        assert [v for _, v in fused.history["normwatch/shrink/0"]] == pytest.approx(shrink, rel=1e-5)

    scaled, _ = run("scaled", batches, fused=True, scaler=torch.amp.GradScaler("cpu", init_scale=2.0**10), inf_at=2)
    unscaled, _ = run("without-2", batches[:2] + batches[3:], fused=True)
    assert scaled.step == 5
    assert_same_history(scaled.history, unscaled.history, rel=1e-5, abs=1e-9)


# -- torch.compile of the optimizer step ----------------------------------------------------------------------------
def test_compiled_optimizer_step_adds_no_graph_or_recompile_and_gives_eager_metrics(tmp_path) -> None:
    """``torch.compile`` of ``opt.step`` (it recompiles once by itself, when the state fills): same graphs."""
    from torch._dynamo.utils import counters

    batches = _batches(4)

    def run(name, compiled: bool, watch: bool):
        torch._dynamo.reset()
        counters.clear()
        model = _net()
        opt = _sgd(model.parameters(), momentum=0.9)
        step = torch.compile(opt.step, backend="eager") if compiled else opt.step
        watcher = normwatch.attach(model, opt, logdir=str(tmp_path / name), keep_history=True) if watch else None
        _train(model, opt, batches, step=step)
        stats = dict(counters["stats"])  # unique_graphs: every compile and recompile makes one
        if watcher is not None:
            watcher.close()
            return stats, watcher.history
        return stats, None

    eager_stats, eager = run("eager", compiled=False, watch=True)
    plain_stats, _ = run("compiled-plain", compiled=True, watch=False)
    stats, compiled = run("compiled", compiled=True, watch=True)
    assert eager_stats.get("unique_graphs", 0) == 0 and plain_stats["unique_graphs"] > 0
    assert stats["unique_graphs"] == plain_stats["unique_graphs"]
    assert stats["calls_captured"] == plain_stats["calls_captured"]
    assert compiled.keys() == eager.keys()
    assert_same_history(compiled, eager, rel=1e-5, abs=1e-9)
