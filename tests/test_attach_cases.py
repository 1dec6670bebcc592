"""Attaching where real code does: mid-run, around torch.compile, to forwards that fail or draw random numbers,
to layers whose tensors sit in different param groups. Each case against a run that needs no special handling."""

import random
import warnings

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import normwatch
from normwatch import discovery as discovery_module
from tests.models import Lion, assert_same_history


def _model(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Conv2d(3, 6, 3, padding=1, bias=False), nn.BatchNorm2d(6), nn.ReLU(), nn.MaxPool2d(2),
                         nn.Conv2d(6, 8, 3, padding=1), nn.GroupNorm(2, 8), nn.ReLU(),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 5))


def _head_and_body(model: nn.Module) -> tuple[list[nn.Parameter], list[nn.Parameter]]:
    """Layer 4's parameters (body), and all the others (head)."""
    body = list(model[4].parameters())
    return [p for p in model.parameters() if all(p is not q for q in body)], body


def _batches(n: int, seed: int = 1):
    gen = torch.Generator().manual_seed(seed)
    return [(torch.randn(16, 3, 8, 8, generator=gen), torch.randint(0, 5, (16,), generator=gen)) for _ in range(n)]


def _step(model, opt, x, y) -> None:
    opt.zero_grad()
    F.cross_entropy(model(x), y).backward()
    opt.step()


def _scaled_step(model, opt, scaler, x, y, overflow: bool = False) -> None:
    """One GradScaler step; ``overflow`` puts an inf in layer 0's gradient, so the step is skipped."""
    opt.zero_grad()
    scaler.scale(F.cross_entropy(model(x), y)).backward()
    if overflow:
        model[0].weight.grad[0, 0, 0, 0] = float("inf")
    scaler.step(opt)
    scaler.update()


def _messages(caught) -> list[str]:
    return [str(w.message) for w in caught if str(w.message).startswith("normwatch")]


# -- attached mid-run ---------------------------------------------------------------------------------------
OPTIMIZERS = {  # the optimizer, and the rate at which the momentum it hides decays (None: it hides none)
    "sgd-nesterov": (lambda p: torch.optim.SGD(p, lr=0.05, momentum=0.5, nesterov=True, weight_decay=5e-3), 0.5),
    "adam-l2": (lambda p: torch.optim.Adam(p, lr=1e-2, betas=(0.6, 0.999), weight_decay=1e-2), 0.6),
    "adamw": (lambda p: torch.optim.AdamW(p, lr=1e-2, weight_decay=5e-2), None),  # m holds gradients alone
    "sgd-no-decay": (lambda p: torch.optim.SGD(p, lr=0.05, momentum=0.5), None),  # so does the buffer
}


@pytest.mark.parametrize("name", OPTIMIZERS)
def test_attaching_mid_run_withholds_only_what_the_optimizer_state_hides(tmp_path, name) -> None:
    """Attached after 6 steps: every value equals the run attached from step 0. The split and grad_autocorr,
    which need the momentum's gradient-only part, start once the unseen part weighs μᵏ ≤ 1e-6 (AdamW's moment
    is gradients alone: nothing waits)."""
    make, mu = OPTIMIZERS[name]
    steps, late = 40, 6
    batches = _batches(steps)
    runs = {}
    for start in (0, late):
        model = _model()
        opt = make(model.parameters())
        step = [0]
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            for i, (x, y) in enumerate(batches):
                if i == start:
                    watch = normwatch.attach(model, opt, logdir=str(tmp_path / str(start)), keep_history=True,
                                             step_fn=lambda step=step: step[0])
                _step(model, opt, x, y)
                step[0] += 1
            watch.close()
        runs[start] = watch.history, _messages(caught)
    (full, _), (partial, messages) = runs[0], runs[late]
    withheld = [m for m in messages if "momentum from steps normwatch did not see" in m]
    assert len(withheld) == (0 if mu is None else 1)
    assert set(partial) == {tag for tag in full if not tag.startswith("normwatch/w_norm2_rel")} | {
        tag for tag in partial if tag.startswith("normwatch/w_norm2_rel")}  # nothing else is missing
    first = late if mu is None else late + next(k for k in range(100) if mu ** (k + 1) <= 1e-6)
    for tag, points in partial.items():
        metric = tag.split("/")[1]
        if metric == "w_norm2_rel":  # |w|²/|w_0|², w_0 the weight at attach by definition
            continue
        recorded = [s for s, _ in points]
        if metric in ("shrink", "growth", "cross", "grad_autocorr"):
            assert recorded == list(range(first, steps)), tag
        else:
            assert recorded == list(range(late, steps)), tag
        expected = dict(full[tag])
        for s, value in points:
            assert value == pytest.approx(expected[s], rel=1e-4, abs=1e-7 * max(1.0, abs(expected[s]))), (tag, s)


def test_a_state_dict_saved_while_withholding_keeps_withholding_after_resume(tmp_path) -> None:
    """Attached at step 6, saved at step 9, resumed: the same points as one watcher attached at step 6."""
    make, mu = OPTIMIZERS["sgd-nesterov"]
    batches, late, save = _batches(30), 6, 9

    def run(resume: bool) -> dict:
        model = _model()
        opt = make(model.parameters())
        step, history = [0], {}

        def train(watch, first: int, last: int) -> None:
            for x, y in batches[first:last]:
                _step(model, opt, x, y)
                step[0] += 1
            watch.close()
            for tag, points in watch.history.items():
                history.setdefault(tag, []).extend(points)

        def attach(name: str):
            return normwatch.attach(model, opt, logdir=str(tmp_path / name), keep_history=True,
                                    step_fn=lambda: step[0])

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            for x, y in batches[:late]:
                _step(model, opt, x, y)
                step[0] += 1
            watch = attach(f"{resume}-a")
            if not resume:
                train(watch, late, 30)
                return history
            for x, y in batches[late:save]:
                _step(model, opt, x, y)
                step[0] += 1
            state = watch.state_dict()  # before close(), which frees the memories
            train(watch, save, save)
            watch = attach(f"{resume}-b")
            watch.load_state_dict(state)
            train(watch, save, 30)
        return history

    one, resumed = run(False), run(True)
    first = late + next(k for k in range(100) if mu ** (k + 1) <= 1e-6)
    assert [s for s, _ in resumed["normwatch/shrink/0"]] == list(range(first, 30))
    assert_same_history(resumed, one, rel=1e-6, abs=1e-12)


def test_unknown_optimizers_start_their_memory_afresh_mid_run(tmp_path) -> None:
    """A third-party optimizer (Lion): no split, and grad_autocorr is normwatch's own moving average from attach
    on, as in a new run."""
    model = _model()
    opt = Lion(model.parameters(), lr=1e-3, weight_decay=1e-2)
    batches = _batches(8)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for x, y in batches[:4]:
            _step(model, opt, x, y)
        with normwatch.attach(model, opt, logdir=str(tmp_path), keep_history=True) as watch:
            for x, y in batches[4:]:
                _step(model, opt, x, y)
    assert not [m for m in _messages(caught) if "did not see" in m]
    assert [s for s, _ in watch.history["normwatch/grad_autocorr/0"]] == [1, 2, 3]  # v = 0 before step 0


def test_steps_an_optimizer_skipped_do_not_count_down_the_unseen_momentum(tmp_path) -> None:
    """Fused SGD under a GradScaler runs step() on overflow and skips inside it: v keeps its unseen share. The
    split starts after the same number of real steps (the x axis does not count skipped ones) as without skips."""
    mu, late, skips = 0.5, 3, (5, 6, 7)
    first = next(k for k in range(100) if mu ** (k + 1) <= 1e-6)
    model = _model()
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=mu, weight_decay=5e-3, fused=True)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**4, growth_interval=1000)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for i, (x, y) in enumerate(_batches(40)):
            if i == late:
                watch = normwatch.attach(model, opt, logdir=str(tmp_path), keep_history=True)
            _scaled_step(model, opt, scaler, x, y, overflow=i in skips)
        watch.close()
    assert watch.step == 40 - late - len(skips)
    assert next(s for s, _ in watch.history["normwatch/shrink/0"]) == first


def test_resumed_state_dict_needs_no_withholding(tmp_path) -> None:
    """With normwatch's own state the memory is known: no warning, the split from the first resumed step."""
    model, batches = _model(), _batches(6)
    opt = OPTIMIZERS["sgd-nesterov"][0](model.parameters())
    with normwatch.attach(model, opt, logdir=str(tmp_path / "a")) as watch:
        for x, y in batches[:3]:
            _step(model, opt, x, y)
        state = watch.state_dict()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with normwatch.attach(model, opt, logdir=str(tmp_path / "b"), keep_history=True) as watch:
            watch.load_state_dict(state)
            for x, y in batches[3:]:
                _step(model, opt, x, y)
    assert not [m for m in _messages(caught) if "did not see" in m]
    assert [s for s, _ in watch.history["normwatch/shrink/0"]] == [3, 4, 5]


# -- torch.compile around an attached model -----------------------------------------------------------------
def _eager_history(tmp_path, batches) -> dict:
    model = _model()
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, weight_decay=5e-3)
    with normwatch.attach(model, opt, logdir=str(tmp_path / "eager"), keep_history=True) as watch:
        for x, y in batches:
            _step(model, opt, x, y)
    return watch.history


@pytest.mark.parametrize("order", ["attach-then-compile", "compile-run-then-attach"])
def test_module_compile_in_place_is_recorded_in_either_order(tmp_path, order) -> None:
    """Module.compile() compiles __call__, hooks included: normwatch sets it aside until detection is done."""
    torch._dynamo.reset()
    batches = _batches(4)
    model = _model()
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, weight_decay=5e-3)
    if order == "attach-then-compile":  # the first forward runs compiled, the hook in it a no-op: step 0 is lost
        watch = normwatch.attach(model, opt, logdir=str(tmp_path / "c"), keep_history=True)
        model.compile(backend="eager")
    else:
        model.compile(backend="eager")
        _step(model, opt, *batches[0])  # compiled once without normwatch
        model.load_state_dict(_model().state_dict())
        opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, weight_decay=5e-3)
        watch = normwatch.attach(model, opt, logdir=str(tmp_path / "c"), keep_history=True)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for x, y in batches:
            _step(model, opt, x, y)
        watch.close()
    assert len(_messages(caught)) == (order == "attach-then-compile")  # step 0's momentum went unseen
    assert model._compiled_call_impl is not None  # compiled again after detection, and after close
    assert [layer.name for layer in watch.layers] == ["0", "4"]
    expected = _eager_history(tmp_path, batches)
    if order == "attach-then-compile":
        unseen = ("w_norm2_rel", "shrink", "growth", "cross", "grad_autocorr")  # step 0's momentum went unseen
        expected = {tag: points[1:] for tag, points in expected.items() if tag.split("/")[1] not in unseen}
        assert [s for s, _ in watch.history["normwatch/w_norm2/0"]] == [1, 2, 3]
    assert_same_history({tag: points for tag, points in watch.history.items() if tag in expected}, expected,
                        rel=1e-5, abs=1e-7)


def test_a_model_compiled_after_attach_trains_as_without_and_says_why_nothing_is_recorded(tmp_path) -> None:
    """torch.compile(model, fullgraph=True) after attach traces normwatch's forward hook: it must be a no-op
    there (a graph break would fail fullgraph) and the first step says what to do instead."""
    torch._dynamo.reset()
    batches = _batches(3)
    weights = {}
    for watched in (False, True):
        model = _model()
        opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, weight_decay=5e-3)
        watch = normwatch.attach(model, opt, logdir=str(tmp_path)) if watched else None
        compiled = torch.compile(model, backend="eager", fullgraph=True)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            for x, y in batches:
                _step(compiled, opt, x, y)
        if watch:
            watch.close()
            messages = _messages(caught)
            assert len(messages) == 1 and "normwatch.attach(torch.compile(model), optimizer)" in messages[0]
        weights[watched] = model.state_dict()
    for (name, a), b in zip(weights[False].items(), weights[True].values()):
        assert torch.equal(a, b), name


# -- forwards that fail, run in eval mode, or draw random numbers ---------------------------------------------
def test_detection_retries_after_a_failing_first_forward(tmp_path) -> None:
    batches = _batches(3)
    model = _model()
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, weight_decay=5e-3)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with normwatch.attach(model, opt, logdir=str(tmp_path / "a"), keep_history=True) as watch:
            with pytest.raises(RuntimeError):
                model(torch.randn(16, 4, 8, 8))  # a wrong batch: the user's forward fails too
            for x, y in batches:
                _step(model, opt, x, y)
    messages = _messages(caught)
    assert messages == [m for m in messages if "tries again on the next training forward" in m] and messages
    assert [s for s, _ in watch.history["normwatch/w_norm2/0"]] == [0, 1, 2]


def test_detection_gives_up_after_failing_three_times(tmp_path, monkeypatch) -> None:
    def broken(*args, **kwargs):
        raise RuntimeError("tracer bug")

    monkeypatch.setattr(discovery_module, "scan", broken)
    model = _model()
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, weight_decay=5e-3)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with normwatch.attach(model, opt, logdir=str(tmp_path)) as watch:
            for x, y in _batches(5):
                _step(model, opt, x, y)
    messages = _messages(caught)
    assert len(messages) == 2 and all(m.startswith("normwatch: could not trace") for m in messages)
    assert "tries again" in messages[0] and "nothing will be recorded" in messages[1]
    assert model._forward_pre_hooks == {} and watch.layers == []


def test_a_model_only_called_in_eval_mode_says_so_at_the_first_step(tmp_path) -> None:
    model = _model().eval()
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, weight_decay=5e-3)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with normwatch.attach(model, opt, logdir=str(tmp_path)):
            for x, y in _batches(3):
                _step(model, opt, x, y)
    messages = _messages(caught)
    assert len(messages) == 1 and "in train() mode" in messages[0]
    assert [w.filename for w in caught] == [__file__]  # the user's opt.step() line, not torch's hook code


class _RandomForward(nn.Module):
    """Noise from Python's and NumPy's global generators in the forward."""

    def __init__(self) -> None:
        super().__init__()
        self.body = _model()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x * random.uniform(0.5, 1.5) + float(np.random.standard_normal()))


def test_detection_leaves_python_and_numpy_random_state_as_it_was(tmp_path) -> None:
    weights = {}
    for watched in (False, True):
        random.seed(0)
        np.random.seed(0)
        model = _RandomForward()
        opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, weight_decay=5e-3)
        watch = normwatch.attach(model, opt, logdir=str(tmp_path)) if watched else None
        for x, y in _batches(3):
            _step(model, opt, x, y)
        if watch:
            watch.close()
        weights[watched] = model.state_dict(), random.random(), np.random.random()
    assert weights[False][1:] == weights[True][1:]
    for (name, a), b in zip(weights[False][0].items(), weights[True][0].values()):
        assert torch.equal(a, b), name


def test_lazy_modules_initialise_in_the_users_forward_not_in_detection(tmp_path) -> None:
    """LazyLinear draws its initial weights from the global RNG in the first forward; dropout draws after it.
    Detection waits for the second forward, so the RNG stream, and training, stay as without normwatch
    (step 0 is not recorded, and step 1's split waits for step 0's momentum to decay)."""
    weights = {}
    for watched in (False, True):
        torch.manual_seed(0)
        model = nn.Sequential(nn.Conv2d(3, 6, 3, bias=False), nn.BatchNorm2d(6), nn.ReLU(), nn.Dropout(0.2),
                              nn.Flatten(), nn.LazyLinear(5))
        opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, weight_decay=5e-3)  # no dry run
        watch = normwatch.attach(model, opt, logdir=str(tmp_path), keep_history=True) if watched else None
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            for x, y in _batches(3):
                _step(model, opt, x, y)
        if watch:
            watch.close()
            assert [s for s, _ in watch.history["normwatch/w_norm2/0"]] == [1, 2]
            messages = _messages(caught)
            assert len(messages) == 1 and "momentum from steps normwatch did not see" in messages[0]
        weights[watched] = model.state_dict(), torch.rand(1)
    assert torch.equal(weights[False][1], weights[True][1])
    for (name, a), b in zip(weights[False][0].items(), weights[True][0].values()):
        assert torch.equal(a, b), name


def test_closing_from_an_earlier_forward_pre_hook_does_not_break_the_forward(tmp_path) -> None:
    model = _model()
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    watch = normwatch.attach(model, opt, logdir=str(tmp_path))
    model.register_forward_pre_hook(lambda module, args: watch.close(), prepend=True)
    _step(model, opt, *_batches(1)[0])  # torch already holds normwatch's hook for this call
    assert watch.layers == []


# -- step_fn -------------------------------------------------------------------------------------------------
def test_step_fn_must_be_callable_and_a_failing_one_falls_back_to_counting(tmp_path) -> None:
    model = _model()
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, weight_decay=5e-3)
    with pytest.raises(TypeError, match="step_fn"):
        normwatch.attach(model, opt, step_fn=5)
    values = iter([10, None])
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with normwatch.attach(model, opt, logdir=str(tmp_path), keep_history=True,
                              step_fn=lambda: next(values)) as watch:
            for x, y in _batches(3):
                _step(model, opt, x, y)
    assert sum("step_fn failed or returned no int" in m for m in _messages(caught)) == 1
    assert [s for s, _ in watch.history["normwatch/w_norm2/0"]] == [10, 1, 2]


# -- one layer, several param groups --------------------------------------------------------------------------
def test_a_layer_across_param_groups_gets_each_tensors_lr_and_no_theory(tmp_path) -> None:
    """Layer 4 is GroupNorm-normalised: weight and bias are rescaled together. Its bias in a no-decay group
    with another lr: lars_ratio = |(η₁g_w, η₂g_b)|/|(w, b)|, and no equilibrium formula applies."""
    model = _model()
    bias = model[4].bias
    rest = [p for p in model.parameters() if p is not bias]
    opt = torch.optim.SGD([{"params": rest}, {"params": [bias], "lr": 0.2, "weight_decay": 0.0}], lr=0.05,
                          momentum=0.9, weight_decay=5e-3)
    expected = []
    with pytest.warns(UserWarning, match="weight_decay=0"), \
            normwatch.attach(model, opt, logdir=str(tmp_path), keep_history=True) as watch:
        for x, y in _batches(3):
            opt.zero_grad()
            F.cross_entropy(model(x), y).backward()
            w, b = model[4].weight.detach().double(), bias.detach().double()
            gw, gb = model[4].weight.grad.double(), bias.grad.double()
            step = torch.cat([0.05 * gw.flatten(), 0.2 * gb.flatten()])
            expected.append((step.norm() / torch.cat([w.flatten(), b.flatten()]).norm()).item())
            opt.step()
    history = watch.history
    assert [v for _, v in history["normwatch/lars_ratio/4"]] == pytest.approx(expected, rel=1e-5)
    assert "normwatch/lars_theory/4" not in history and "normwatch/lars_theory/0" in history


def test_a_layer_whose_tensors_do_not_all_get_a_gradient_is_skipped_with_a_warning(tmp_path) -> None:
    model = _model()
    model[4].bias.requires_grad_(False)  # weight and bias are only invariant together
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, weight_decay=5e-3)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with normwatch.attach(model, opt, logdir=str(tmp_path), keep_history=True) as watch:
            for x, y in _batches(3):
                _step(model, opt, x, y)
    assert sum("some of them got no gradient" in m for m in _messages(caught)) == 1
    assert "normwatch/w_norm2/4" not in watch.history and len(watch.history["normwatch/w_norm2/0"]) == 3


# -- param groups that change during training -----------------------------------------------------------------
def _layer_tags(history: dict, layer: str) -> dict:
    return {tag: points for tag, points in history.items() if tag.endswith(f"/{layer}")}


def test_a_layer_joining_while_the_split_waits_with_skipped_steps(tmp_path) -> None:
    """Fused SGD under a GradScaler, attached mid-run (the split of layer 0 waits), steps 5, 7, 8 skipped, layer
    4's group added at step 6: layer 0 as without the join; layer 4 as a Watcher attached at the join."""
    mu, late, join, skips = 0.5, 3, 6, (5, 7, 8)
    batches = _batches(40)

    def run(mode: str) -> dict:
        model = _model()
        head, body = _head_and_body(model)
        opt = torch.optim.SGD(head, lr=0.05, momentum=mu, weight_decay=5e-3, fused=True)
        scaler = torch.amp.GradScaler("cpu", init_scale=2.0**4, growth_interval=1000)
        step, watch = [0], None
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            for i, (x, y) in enumerate(batches):
                if i == late and mode in ("join", "layer-0-only"):
                    watch = normwatch.attach(model, opt, logdir=str(tmp_path / mode), keep_history=True,
                                             flush_every=2, step_fn=lambda: step[0],
                                             layers=["0"] if mode == "layer-0-only" else None)
                if i == join:
                    opt.add_param_group({"params": body, "lr": 0.1})
                    if mode == "attached-at-join":
                        watch = normwatch.attach(model, opt, logdir=str(tmp_path / mode), keep_history=True,
                                                 flush_every=2, step_fn=lambda: step[0])
                _scaled_step(model, opt, scaler, x, y, overflow=i in skips)
                step[0] += 1
            watch.close()
        return watch.history

    joined, alone, fresh = run("join"), run("layer-0-only"), run("attached-at-join")
    assert_same_history(_layer_tags(joined, "0"), _layer_tags(alone, "0"), rel=1e-6, abs=1e-12)
    assert set(_layer_tags(joined, "0")) == set(_layer_tags(alone, "0"))
    assert_same_history(_layer_tags(joined, "4"), _layer_tags(fresh, "4"), rel=1e-6, abs=1e-12)
    assert set(_layer_tags(joined, "4")) == set(_layer_tags(fresh, "4"))


def test_removing_a_param_group_stops_its_layers_and_keeps_the_others_lr(tmp_path) -> None:
    """Layer 0's group is removed after 2 steps: layer 0 stops, layer 4 (now group 0) keeps its own lr."""
    model = _model()
    first = [model[0].weight]
    rest = [p for p in model.parameters() if p is not model[0].weight]
    opt = torch.optim.SGD([{"params": first, "lr": 0.2}, {"params": rest, "lr": 0.05}], momentum=0.9,
                          weight_decay=5e-3)
    with normwatch.attach(model, opt, logdir=str(tmp_path), keep_history=True) as watch:
        for i, (x, y) in enumerate(_batches(4)):
            if i == 2:
                opt.param_groups.pop(0)
            _step(model, opt, x, y)
    history = watch.history
    assert [s for s, _ in history["normwatch/w_norm2/0"]] == [0, 1]
    assert history["normwatch/lr/4"] == [(0, 0.05), (1, 0.05), (2, 0.05), (3, 0.05)]


def test_a_resumed_state_reaches_layers_that_join_after_detection(tmp_path) -> None:
    """Saved with both layers recorded; resumed where layer 4's group comes back only after the first step:
    layer 4 continues its curves (|w_0|², memory) instead of starting over from the optimizer's state."""
    model = _model()
    head, body = _head_and_body(model)
    opt = torch.optim.SGD([{"params": head}, {"params": body}], lr=0.05, momentum=0.9, weight_decay=5e-3)
    batches = _batches(8)
    with normwatch.attach(model, opt, logdir=str(tmp_path / "a"), keep_history=True) as watch:
        for x, y in batches:
            _step(model, opt, x, y)
        straight = watch.history
    model = _model()
    head, body = _head_and_body(model)
    opt = torch.optim.SGD([{"params": head}, {"params": body}], lr=0.05, momentum=0.9, weight_decay=5e-3)
    with normwatch.attach(model, opt, logdir=str(tmp_path / "b")) as watch:
        for x, y in batches[:4]:
            _step(model, opt, x, y)
        saved = watch.state_dict()
    body_group = opt.param_groups.pop(1)  # resumed without it at first: layer 4 is frozen for one step
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with normwatch.attach(model, opt, logdir=str(tmp_path / "c"), keep_history=True) as watch:
            watch.load_state_dict(saved)
            _step(model, opt, *batches[4])
            opt.add_param_group(body_group)
            for x, y in batches[5:]:
                _step(model, opt, x, y)
    assert not [m for m in _messages(caught) if "did not see" in m]
    resumed = watch.history
    assert [s for s, _ in resumed["normwatch/shrink/4"]] == [5, 6, 7]  # its memory restored: nothing waits
    w0_norm2 = straight["normwatch/w_norm2/4"][0][1]  # |w_0|² of the first run, not of the join
    assert [v for _, v in resumed["normwatch/w_norm2_rel/4"]] == pytest.approx(
        [v / w0_norm2 for _, v in resumed["normwatch/w_norm2/4"]], rel=1e-6)


def test_a_joining_group_without_weight_decay_gets_its_note(tmp_path) -> None:
    model = _model()
    head, body = _head_and_body(model)
    opt = torch.optim.SGD(head, lr=0.05, momentum=0.9, weight_decay=5e-3)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with normwatch.attach(model, opt, logdir=str(tmp_path), keep_history=True) as watch:
            _step(model, opt, *_batches(1)[0])
            opt.add_param_group({"params": body, "weight_decay": 0.0})
            for x, y in _batches(2, seed=2):
                _step(model, opt, x, y)
    assert any("param group 1 of SGD has weight_decay=0" in m and "no theory tags for 4" in m
               for m in _messages(caught))
    assert "normwatch/lars_theory/4" not in watch.history and "normwatch/w_norm2/4" in watch.history


def test_a_group_swapped_for_another_of_the_same_size_is_noticed(tmp_path) -> None:
    """Group 0 (layer 0) popped and one holding layer 4's two tensors added, also in place: whatever ids
    CPython reuses, layer 0 stops and layer 4 starts at step 2."""
    for how in ("replace", "in-place"):
        model = _model()
        body = list(model[4].parameters())
        other = [p for p in model.parameters() if p is not model[0].weight and all(p is not q for q in body)]
        opt = torch.optim.SGD([{"params": [model[0].weight, other[0]]}, {"params": other[1:]}], lr=0.05,
                              momentum=0.9, weight_decay=5e-3)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            with normwatch.attach(model, opt, logdir=str(tmp_path / how), keep_history=True) as watch:
                for i, (x, y) in enumerate(_batches(4)):
                    if i == 2 and how == "replace":
                        opt.param_groups.pop(0)
                        opt.add_param_group({"params": body})
                    elif i == 2:
                        opt.param_groups[0]["params"][:] = body
                    _step(model, opt, x, y)
        assert [s for s, _ in watch.history["normwatch/w_norm2/0"]] == [0, 1], how
        assert [s for s, _ in watch.history["normwatch/w_norm2/4"]] == [2, 3], how


def test_a_momentum_buffer_used_again_after_a_pause_withholds_instead_of_guessing(tmp_path) -> None:
    """SGD's momentum set to 0 at step 3 (its buffer stays, unused) and back to 0.9 at step 6: the buffer then
    holds decay from before the pause, which normwatch's memory (a moving average meanwhile) never saw, so the
    split waits (0.9ᵏ ≤ 1e-6) rather than being wrong; without momentum (steps 3–5) it is exact."""
    model = _model()
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, weight_decay=5e-3)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with normwatch.attach(model, opt, logdir=str(tmp_path), keep_history=True) as watch:
            for i, (x, y) in enumerate(_batches(10)):
                if i in (3, 6):
                    opt.param_groups[0]["momentum"] = 0.0 if i == 3 else 0.9
                _step(model, opt, x, y)
    messages = _messages(caught)
    assert sum("did not see" in m for m in messages) == 1
    assert [s for s, _ in watch.history["normwatch/shrink/0"]] == [0, 1, 2, 3, 4, 5]  # waiting from 6
    assert [s for s, _ in watch.history["normwatch/w_norm2/0"]] == list(range(10))


def test_a_checkpoint_taken_while_a_layer_waits_keeps_its_loaded_state(tmp_path) -> None:
    """Resumed without layer 4's group, saved again before it returns, resumed from that: layer 4 still gets
    its first run's |w_0|² and memory (no waiting split, w_norm2_rel against the first run's w_0)."""
    model = _model()
    head, body = _head_and_body(model)
    opt = torch.optim.SGD([{"params": head}, {"params": body}], lr=0.05, momentum=0.9, weight_decay=5e-3)
    batches = _batches(8)
    with normwatch.attach(model, opt, logdir=str(tmp_path / "a"), keep_history=True) as watch:
        for x, y in batches[:4]:
            _step(model, opt, x, y)
        first, w0_norm2 = watch.state_dict(), watch.history["normwatch/w_norm2/4"][0][1]
    body_group = opt.param_groups.pop(1)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with normwatch.attach(model, opt, logdir=str(tmp_path / "b")) as watch:
            watch.load_state_dict(first)
            _step(model, opt, *batches[4])
            second = watch.state_dict()
        with normwatch.attach(model, opt, logdir=str(tmp_path / "c"), keep_history=True) as watch:
            watch.load_state_dict(second)
            opt.add_param_group(body_group)
            for x, y in batches[5:]:
                _step(model, opt, x, y)
    assert torch.equal(second["memory"]["4.weight"], first["memory"]["4.weight"])
    assert not [m for m in _messages(caught) if "did not see" in m]
    history = watch.history
    assert [s for s, _ in history["normwatch/shrink/4"]] == [5, 6, 7]
    assert [v for _, v in history["normwatch/w_norm2_rel/4"]] == pytest.approx(
        [v / w0_norm2 for _, v in history["normwatch/w_norm2/4"]], rel=1e-6)


def test_a_loaded_memory_goes_stale_when_its_tensor_steps_while_the_layer_waits(tmp_path) -> None:
    """Resumed with 4.weight stepping but 4.bias not yet in the optimizer: when the bias joins, 4.weight's saved
    memory is steps old, so it starts from the optimizer's buffer and its split waits, instead of being wrong."""
    model = _model()
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, weight_decay=5e-3)
    batches = _batches(8)
    with normwatch.attach(model, opt, logdir=str(tmp_path / "a")) as watch:
        for x, y in batches[:4]:
            _step(model, opt, x, y)
        saved = watch.state_dict()
    opt.param_groups[0]["params"] = [p for p in opt.param_groups[0]["params"] if p is not model[4].bias]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with normwatch.attach(model, opt, logdir=str(tmp_path / "b"), keep_history=True) as watch:
            watch.load_state_dict(saved)
            for i, (x, y) in enumerate(batches[4:], start=4):
                if i == 6:
                    opt.add_param_group({"params": [model[4].bias]})
                _step(model, opt, x, y)
    assert sum("did not see" in m and "of 4 are withheld" in m for m in _messages(caught)) == 1
    assert "normwatch/shrink/4" not in watch.history and [s for s, _ in watch.history["normwatch/w_norm2/4"]] == [6, 7]
    assert [s for s, _ in watch.history["normwatch/shrink/0"]] == [4, 5, 6, 7]  # layer 0's memory was fresh
