"""normwatch.optim.LARS against a hand-written float64 reference of the documented update."""

from __future__ import annotations

import copy
import math

import pytest
import torch

from normwatch.optim import LARS

SHAPES = [(4, 3, 3, 3), (8,), (10, 5)]


def _ref_step(w, g, buf, *, lr, momentum, weight_decay, lars, eps=1e-12):
    """One LARS step written out by hand: returns (new w, new buffer, trust as a float)."""
    d = g + weight_decay * w
    w_norm = math.sqrt(sum(x * x for x in w.flatten().tolist()))
    d_norm = math.sqrt(sum(x * x for x in d.flatten().tolist()))
    trust = w_norm / d_norm if (lars and w_norm > 0 and d_norm > eps) else 1.0
    v = trust * d
    if momentum != 0:
        buf = v.clone() if buf is None else momentum * buf + v
        v = buf
    return w - lr * v, buf, trust


def _grads(steps, seed=0):
    gen = torch.Generator().manual_seed(seed)
    return [[torch.randn(s, generator=gen, dtype=torch.float64) for s in SHAPES] for _ in range(steps)]


def _params(seed=1):
    gen = torch.Generator().manual_seed(seed)
    return [torch.nn.Parameter(torch.randn(s, generator=gen, dtype=torch.float64)) for s in SHAPES]


def _set_grads(params, grads):
    for p, g in zip(params, grads, strict=True):
        if p.grad is None:
            p.grad = g.clone()
        else:
            p.grad.copy_(g)  # in place, so a buffer aliasing the gradient would be caught


@pytest.mark.parametrize(
    ("momentum", "weight_decay"),
    [(0.9, 5e-4), (0.0, 0.0), (0.9, 0.0), (0.0, 0.01), (0.5, 0.1)],
)
def test_matches_reference_with_plain_group(momentum, weight_decay):
    params = _params()
    ref_w = [p.detach().clone() for p in params]
    ref_buf = [None] * len(params)
    # params[0] and params[2] use LARS; params[1] (a "BN/bias" vector) is plain SGD with its own lr.
    groups = [
        {"params": [params[0], params[2]]},
        {"params": [params[1]], "lars": False, "lr": 0.05},
    ]
    opt = LARS(groups, lr=0.02, momentum=momentum, weight_decay=weight_decay)
    cfg = [(0.02, True), (0.05, False), (0.02, True)]
    for grads in _grads(5):
        _set_grads(params, grads)
        opt.step()
        for i, (lr, lars) in enumerate(cfg):
            ref_w[i], ref_buf[i], trust = _ref_step(
                ref_w[i], grads[i], ref_buf[i], lr=lr, momentum=momentum, weight_decay=weight_decay, lars=lars
            )
            torch.testing.assert_close(params[i].detach(), ref_w[i], rtol=1e-12, atol=1e-14)
            state = opt.state[params[i]]
            assert state["trust_ratio"].item() == pytest.approx(trust, rel=1e-12)
            assert ("momentum_buffer" in state) == (momentum != 0)
        assert opt.state[params[1]]["trust_ratio"].item() == 1.0
        assert opt.state[params[0]]["trust_ratio"].item() != 1.0


def test_trust_ratio_is_a_0dim_tensor_of_the_param_dtype():
    for dtype in (torch.float32, torch.float64):
        p = torch.nn.Parameter(torch.randn(3, 4, dtype=dtype))
        q = torch.nn.Parameter(torch.randn(5, dtype=dtype))
        opt = LARS([{"params": [p]}, {"params": [q], "lars": False}], lr=0.1)
        p.grad, q.grad = torch.randn_like(p), torch.randn_like(q)
        opt.step()
        for x in (p, q):
            trust = opt.state[x]["trust_ratio"]
            assert trust.shape == () and trust.dtype == dtype and trust.device == x.device


def test_low_precision_norms_do_not_overflow():
    # Sum of squares 1e9 is far above float16's max (65504): norms must be accumulated in float32.
    p = torch.nn.Parameter(torch.full((10_000,), 300.0, dtype=torch.float16))
    opt = LARS([p], lr=0.01, momentum=0.0)
    p.grad = torch.full_like(p, 600.0)
    opt.step()
    trust = opt.state[p]["trust_ratio"]
    assert trust.dtype == torch.float16
    assert trust.item() == pytest.approx(0.5, rel=1e-3)
    assert torch.isfinite(p).all()


def test_matches_torch_sgd_for_plain_groups():
    """lars=False is heavy-ball SGD with coupled weight decay: compare with torch.optim.SGD."""
    params = _params()
    twins = [torch.nn.Parameter(p.detach().clone()) for p in params]
    opt = LARS([{"params": params, "lars": False}], lr=0.1, momentum=0.9, weight_decay=5e-4)
    sgd = torch.optim.SGD(twins, lr=0.1, momentum=0.9, weight_decay=5e-4)
    for grads in _grads(6, seed=3):
        _set_grads(params, grads)
        _set_grads(twins, grads)
        opt.step()
        sgd.step()
    for p, q in zip(params, twins, strict=True):
        torch.testing.assert_close(p, q, rtol=1e-12, atol=1e-14)


def test_lr_scheduler_changes_the_step():
    params = _params()
    ref_w = [p.detach().clone() for p in params]
    ref_buf = [None] * len(params)
    opt = LARS(params, lr=0.1, momentum=0.9, weight_decay=1e-3)
    sched = torch.optim.lr_scheduler.ExponentialLR(opt, gamma=0.5)
    for t, grads in enumerate(_grads(4, seed=4)):
        _set_grads(params, grads)
        opt.step()
        sched.step()
        lr = 0.1 * 0.5**t  # the lr that step t must have used
        for i in range(len(params)):
            ref_w[i], ref_buf[i], _ = _ref_step(
                ref_w[i], grads[i], ref_buf[i], lr=lr, momentum=0.9, weight_decay=1e-3, lars=True
            )
            torch.testing.assert_close(params[i].detach(), ref_w[i], rtol=1e-12, atol=1e-14)
    assert opt.param_groups[0]["lr"] == pytest.approx(0.1 * 0.5**4)


def test_closure_is_evaluated_with_grad_and_its_loss_returned():
    torch.manual_seed(0)
    model = torch.nn.Linear(6, 3, bias=False).double()
    ref_model = copy.deepcopy(model)
    x, y = torch.randn(16, 6, dtype=torch.float64), torch.randn(16, 3, dtype=torch.float64)
    opt = LARS(model.parameters(), lr=0.05, momentum=0.9, weight_decay=1e-2)

    def closure():
        opt.zero_grad()
        loss = torch.nn.functional.mse_loss(model(x), y)
        loss.backward()
        return loss

    w, buf = ref_model.weight.detach().clone(), None
    for _ in range(3):
        w_leaf = w.clone().requires_grad_(True)
        expected_loss = torch.nn.functional.mse_loss(x @ w_leaf.T, y)
        (grad,) = torch.autograd.grad(expected_loss, [w_leaf])
        loss = opt.step(closure)
        assert loss.item() == pytest.approx(expected_loss.item(), rel=1e-12)
        w, buf, _ = _ref_step(w, grad, buf, lr=0.05, momentum=0.9, weight_decay=1e-2, lars=True)
        torch.testing.assert_close(model.weight.detach(), w, rtol=1e-12, atol=1e-14)
    assert opt.step() is None  # without a closure


def test_zero_weights_get_trust_one():
    p = torch.nn.Parameter(torch.zeros(5, 4, dtype=torch.float64))
    opt = LARS([p], lr=0.1, momentum=0.9, weight_decay=0.5)
    g = torch.randn(5, 4, dtype=torch.float64)
    p.grad = g.clone()
    opt.step()
    assert opt.state[p]["trust_ratio"].item() == 1.0
    torch.testing.assert_close(p.detach(), -0.1 * g)  # d = g + λ·0 = g, trust 1


def test_vanishing_update_direction_gets_trust_one():
    p = torch.nn.Parameter(torch.randn(7, dtype=torch.float64))
    before = p.detach().clone()
    opt = LARS([p], lr=0.1, momentum=0.9, weight_decay=0.0)
    p.grad = torch.zeros_like(p)  # d = 0: no blow-up to a full-size step
    opt.step()
    assert opt.state[p]["trust_ratio"].item() == 1.0
    torch.testing.assert_close(p.detach(), before)
    p.grad = torch.full_like(p, 1e-14)  # |d| < eps as well
    opt.step()
    assert opt.state[p]["trust_ratio"].item() == 1.0


def test_params_without_grad_are_skipped():
    params = _params()
    before = params[1].detach().clone()
    opt = LARS(params, lr=0.1, momentum=0.9, weight_decay=1e-3)
    grads = _grads(1)[0]
    params[0].grad, params[2].grad = grads[0].clone(), grads[2].clone()
    opt.step()
    torch.testing.assert_close(params[1].detach(), before, rtol=0, atol=0)
    assert len(opt.state[params[1]]) == 0
    assert "trust_ratio" in opt.state[params[0]]


def test_state_dict_round_trip_continues_identically():
    params, twins = _params(), _params()
    opt = LARS([{"params": params[:2]}, {"params": params[2:], "lars": False}], lr=0.1, weight_decay=1e-3)
    grads = _grads(4, seed=5)
    for g in grads[:2]:
        _set_grads(params, g)
        opt.step()
    for p, q in zip(params, twins, strict=True):
        q.data.copy_(p.detach())
    twin_opt = LARS([{"params": twins[:2]}, {"params": twins[2:], "lars": False}], lr=0.1, weight_decay=1e-3)
    twin_opt.load_state_dict(copy.deepcopy(opt.state_dict()))  # as if saved to disk
    for g in grads[2:]:
        _set_grads(params, g)
        _set_grads(twins, g)
        opt.step()
        twin_opt.step()
    for p, q in zip(params, twins, strict=True):
        torch.testing.assert_close(p, q, rtol=0, atol=0)
    assert twin_opt.param_groups[1]["lars"] is False


def test_sparse_gradients_are_rejected():
    emb = torch.nn.Embedding(10, 3, sparse=True)
    opt = LARS(emb.parameters(), lr=0.1)
    emb(torch.tensor([1, 2])).sum().backward()
    with pytest.raises(RuntimeError, match="LARS does not support sparse gradients"):
        opt.step()


@pytest.mark.parametrize(
    ("kwargs", "error", "message"),
    [
        ({"lr": -1}, ValueError, "Expected lr >= 0, got -1"),
        ({"lr": 0.1, "momentum": 1.0}, ValueError, "Expected 0 <= momentum < 1, got 1.0"),
        ({"lr": 0.1, "momentum": -0.1}, ValueError, "Expected 0 <= momentum < 1, got -0.1"),
        ({"lr": 0.1, "weight_decay": -1e-4}, ValueError, "Expected weight_decay >= 0, got -0.0001"),
        ({"lr": 0.1, "eps": -1.0}, ValueError, "Expected eps >= 0, got -1.0"),
        ({"lr": float("nan")}, ValueError, "Expected lr >= 0, got nan"),
        ({"lr": torch.tensor(0.1)}, TypeError, "float lr"),
    ],
)
def test_bad_arguments_raise(kwargs, error, message):
    with pytest.raises(error, match=message):
        LARS([torch.nn.Parameter(torch.zeros(2))], **kwargs)


def test_bad_group_arguments_raise():
    p, q = torch.nn.Parameter(torch.zeros(2)), torch.nn.Parameter(torch.zeros(2))
    with pytest.raises(ValueError, match=r"Expected lr >= 0, got -0\.5"):
        LARS([{"params": [p]}, {"params": [q], "lr": -0.5}], lr=0.1)
    with pytest.raises(TypeError, match="Expected lars to be a bool, got str"):
        LARS([{"params": [p], "lars": "no"}], lr=0.1)
    opt = LARS([p], lr=0.1)
    with pytest.raises(ValueError, match="Expected 0 <= momentum < 1, got 2"):
        opt.add_param_group({"params": [q], "momentum": 2})
    assert len(opt.param_groups) == 1


def test_step_needs_no_host_sync():
    """On the meta device any .item()/bool() of a tensor raises, so a step that runs there reads no
    tensor value on the host (the trust ratio stays on the parameter's device)."""
    p = torch.nn.Parameter(torch.empty(4, 3, device="meta"))
    q = torch.nn.Parameter(torch.empty(3, device="meta"))
    opt = LARS([{"params": [p]}, {"params": [q], "lars": False}], lr=0.1, weight_decay=1e-3)
    p.grad, q.grad = torch.empty_like(p), torch.empty_like(q)
    opt.step()
    opt.step()
    assert opt.state[p]["trust_ratio"].device.type == "meta"
    with pytest.raises(RuntimeError):
        bool(opt.state[p]["trust_ratio"] > 0)


# -- the options: per-channel trust, Nesterov, the raw-gradient guard, smoothed gradient norms ------------------
OPTION_SHAPES = [(4, 3, 3, 3), (8,), (6, 5)]


def _rows(x, per_channel):
    return x.reshape(x.shape[0], -1).tolist() if per_channel else [x.flatten().tolist()]


def _ref_option_step(w, g, mem, *, lr, momentum, weight_decay, trust="tensor", nesterov=False, guard=None,
                     beta=0.0, eps=1e-12, lars=True):
    """One step of the documented update, written out by hand in float64.

    ``mem`` holds this tensor's buffer ``b`` and gradient-norm averages ``n̄`` (one per row); returns
    (new w, trust as a list of per-row floats)."""
    d = g + weight_decay * w
    per_channel = trust == "channel" and w.dim() >= 2
    x = g if guard is not None else d
    trusts = []
    for i, (w_row, x_row) in enumerate(zip(_rows(w, per_channel), _rows(x, per_channel), strict=True)):
        w_norm = math.sqrt(sum(v * v for v in w_row))
        n = math.sqrt(sum(v * v for v in x_row))
        if beta > 0:
            avg = mem.setdefault("avg", {})
            avg[i] = n if i not in avg else beta * avg[i] + (1 - beta) * n
            n = avg[i]
        den = n + (guard or 0.0)
        trusts.append(w_norm / den if (lars and w_norm > 0 and den > eps) else 1.0)
    shape = (-1,) + (1,) * (w.dim() - 1) if per_channel else ()
    s = torch.tensor(trusts, dtype=torch.float64).reshape(shape) * d
    step = s
    if momentum != 0:
        mem["buf"] = s.clone() if "buf" not in mem else momentum * mem["buf"] + s
        step = s + momentum * mem["buf"] if nesterov else mem["buf"]
    return w - lr * step, trusts


def _option_grads(steps, seed=7):
    """Gradients whose size changes from step to step and from row to row (so smoothing, per-channel norms and
    a guard of 1e-2 all matter)."""
    gen = torch.Generator().manual_seed(seed)
    out = []
    for t in range(steps):
        step_scale = 10.0 ** (-2.5 + 0.5 * t)
        grads = []
        for s in OPTION_SHAPES:
            row_scale = torch.logspace(-1, 1, s[0], dtype=torch.float64).reshape((-1,) + (1,) * (len(s) - 1))
            grads.append(step_scale * row_scale * torch.randn(s, generator=gen, dtype=torch.float64))
        out.append(grads)
    return out


def _option_params(seed=8):
    gen = torch.Generator().manual_seed(seed)
    return [torch.nn.Parameter(torch.randn(s, generator=gen, dtype=torch.float64)) for s in OPTION_SHAPES]


OPTIONS = [
    {"trust": "channel"},
    {"nesterov": True},
    {"guard": 1e-2},
    {"guard": 0.0},
    {"grad_norm_beta": 0.8},
    {"trust": "channel", "nesterov": True, "guard": 1e-2},  # Myrtle's LARS_update
    {"trust": "channel", "grad_norm_beta": 0.5, "guard": 1e-2},
    {"trust": "channel", "nesterov": True, "grad_norm_beta": 0.9},
]


@pytest.mark.parametrize(
    ("options", "momentum", "weight_decay"),
    [pytest.param(o, m, wd, id=",".join(f"{k}={v}" for k, v in o.items()) + f"-mu={m}-wd={wd}")
     for o in OPTIONS for m, wd in [(0.9, 5e-3), (0.5, 0.0), (0.0, 0.1)] if m > 0 or not o.get("nesterov")],
)
def test_options_match_reference(options, momentum, weight_decay):
    params = _option_params()
    ref_w = [p.detach().clone() for p in params]
    mems = [{} for _ in params]
    ref_opts = {"trust": "tensor", "nesterov": False, "guard": None, "beta": 0.0}
    ref_opts.update({("beta" if k == "grad_norm_beta" else k): v for k, v in options.items()})
    groups = [{"params": [params[0], params[2]]}, {"params": [params[1]], "lars": False, "lr": 0.05}]
    opt = LARS(groups, lr=0.02, momentum=momentum, weight_decay=weight_decay, **options)
    cfg = [(0.02, True), (0.05, False), (0.02, True)]
    for grads in _option_grads(6):
        _set_grads(params, grads)
        opt.step()
        for i, (lr, lars) in enumerate(cfg):
            ref_w[i], trusts = _ref_option_step(ref_w[i], grads[i], mems[i], lr=lr, momentum=momentum,
                                                weight_decay=weight_decay, lars=lars, **ref_opts)
            torch.testing.assert_close(params[i].detach(), ref_w[i], rtol=1e-12, atol=1e-14)
            trust = opt.state[params[i]]["trust_ratio"]
            per_channel = lars and options.get("trust") == "channel" and params[i].dim() >= 2
            assert trust.shape == ((params[i].shape[0],) + (1,) * (params[i].dim() - 1) if per_channel else ())
            assert trust.flatten().tolist() == pytest.approx(trusts, rel=1e-12)
            assert ("momentum_buffer" in opt.state[params[i]]) == (momentum != 0)
            assert ("grad_norm_avg" in opt.state[params[i]]) == (lars and options.get("grad_norm_beta", 0) > 0)


def _myrtle_lars_update(w, dw, v, lr, weight_decay, momentum):
    """Myrtle's cifar10-fast ``LARS_update`` and ``nesterov_update`` as published (torch_backend.py), in float64:
    the lr (times the per-row trust from the raw gradient) lives inside the buffer, which starts at zero."""
    rows = lambda x: torch.linalg.vector_norm(x.reshape(x.size(0), -1), dim=1)[:, None, None, None]  # noqa: E731
    lr = lr * (rows(w) / (rows(dw) + 1e-2))
    dw = (dw + weight_decay * w) * -lr
    v = momentum * v + dw
    return w + dw + momentum * v, v


def test_myrtle_code_form_matches_its_lars_update():
    """trust="channel", nesterov=True, guard=1e-2 is Myrtle's LARS_update at a constant lr."""
    gen = torch.Generator().manual_seed(11)
    w0 = torch.randn(8, 4, 3, 3, generator=gen, dtype=torch.float64)
    p = torch.nn.Parameter(w0.clone())
    opt = LARS([p], lr=0.4, momentum=0.9, weight_decay=5e-4, trust="channel", nesterov=True, guard=1e-2)
    w, v = w0.clone(), torch.zeros_like(w0)
    for t in range(8):
        g = 10.0 ** (-3 + 0.5 * t) * torch.randn(8, 4, 3, 3, generator=gen, dtype=torch.float64)
        p.grad = g.clone()
        opt.step()
        w, v = _myrtle_lars_update(w, g.clone(), v, 0.4, 5e-4, 0.9)
        torch.testing.assert_close(p.detach(), w, rtol=1e-12, atol=1e-14)


def test_plain_groups_with_nesterov_match_torch_sgd():
    params = _params()
    twins = [torch.nn.Parameter(p.detach().clone()) for p in params]
    opt = LARS([{"params": params, "lars": False}], lr=0.1, momentum=0.9, weight_decay=5e-4, nesterov=True)
    sgd = torch.optim.SGD(twins, lr=0.1, momentum=0.9, weight_decay=5e-4, nesterov=True)
    for grads in _grads(6, seed=3):
        _set_grads(params, grads)
        _set_grads(twins, grads)
        opt.step()
        sgd.step()
    for p, q in zip(params, twins, strict=True):
        torch.testing.assert_close(p, q, rtol=1e-12, atol=1e-14)


def _frozen_default_step(p, state, lr, momentum, weight_decay, eps=1e-12):
    """The default update as normwatch shipped it before the options existed, op for op."""
    d = p.grad.add(p, alpha=weight_decay) if weight_decay != 0 else p.grad
    acc = torch.float32 if p.dtype in (torch.float16, torch.bfloat16) else None
    w_norm, d_norm = torch.linalg.vector_norm(p, dtype=acc), torch.linalg.vector_norm(d, dtype=acc)
    ok = (w_norm > 0) & (d_norm > eps)
    one = torch.ones_like(w_norm)
    step_dir = d * torch.where(ok, w_norm / torch.where(ok, d_norm, one), one).to(p.dtype)
    if momentum != 0:
        if "buf" not in state:
            state["buf"] = step_dir.clone()
        else:
            state["buf"].mul_(momentum).add_(step_dir)
        step_dir = state["buf"]
    p.add_(step_dir, alpha=-lr)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize(("momentum", "weight_decay"), [(0.9, 5e-4), (0.0, 0.0)])
def test_defaults_are_bitwise_the_original_update(dtype, momentum, weight_decay):
    gen = torch.Generator().manual_seed(5)
    params = [torch.nn.Parameter(torch.randn(s, generator=gen).to(dtype)) for s in OPTION_SHAPES]
    twins = [p.detach().clone() for p in params]
    states = [{} for _ in params]
    opt = LARS(params, lr=0.1, momentum=momentum, weight_decay=weight_decay)
    for _ in range(4):
        for p, q, state in zip(params, twins, states, strict=True):
            g = torch.randn(p.shape, generator=gen).to(dtype)
            p.grad, q.grad = g.clone(), g.clone()
            _frozen_default_step(q, state, 0.1, momentum, weight_decay)
        opt.step()
        for p, q in zip(params, twins, strict=True):
            assert torch.equal(p.detach(), q)


def test_channel_trust_gives_a_zero_row_trust_one():
    w = torch.randn(3, 4, dtype=torch.float64)
    w[1] = 0.0
    p = torch.nn.Parameter(w)
    opt = LARS([p], lr=0.1, momentum=0.0, trust="channel", guard=1e-2)
    p.grad = torch.randn(3, 4, dtype=torch.float64)
    opt.step()
    trust = opt.state[p]["trust_ratio"].flatten().tolist()
    assert trust[1] == 1.0 and trust[0] != 1.0 and trust[2] != 1.0


def test_channel_norms_of_low_precision_do_not_overflow():
    p = torch.nn.Parameter(torch.full((2, 10_000), 300.0, dtype=torch.float16))
    opt = LARS([p], lr=0.01, momentum=0.0, trust="channel", grad_norm_beta=0.5)
    p.grad = torch.full_like(p, 600.0)
    opt.step()
    assert opt.state[p]["trust_ratio"].dtype == torch.float16
    assert opt.state[p]["trust_ratio"].flatten().tolist() == pytest.approx([0.5, 0.5], rel=1e-3)
    assert opt.state[p]["grad_norm_avg"].dtype == torch.float32
    assert torch.isfinite(p).all()


def test_options_state_dict_round_trip_continues_identically():
    options = {"trust": "channel", "nesterov": True, "guard": 1e-2, "grad_norm_beta": 0.7}
    params, twins = _option_params(), _option_params()
    opt = LARS(params, lr=0.1, weight_decay=1e-3, **options)
    grads = _option_grads(5)
    for g in grads[:2]:
        _set_grads(params, g)
        opt.step()
    for p, q in zip(params, twins, strict=True):
        q.data.copy_(p.detach())
    twin_opt = LARS(twins, lr=0.1, weight_decay=1e-3)  # the options come back from the state dict
    twin_opt.load_state_dict(copy.deepcopy(opt.state_dict()))
    for g in grads[2:]:
        _set_grads(params, g)
        _set_grads(twins, g)
        opt.step()
        twin_opt.step()
    for p, q in zip(params, twins, strict=True):
        torch.testing.assert_close(p, q, rtol=0, atol=0)


def test_a_state_dict_saved_before_the_options_loads_with_the_defaults():
    params = _params()
    opt = LARS(params, lr=0.1, weight_decay=1e-3)
    _set_grads(params, _grads(1)[0])
    opt.step()
    saved = copy.deepcopy(opt.state_dict())
    for group in saved["param_groups"]:
        for key in ("trust", "nesterov", "guard", "grad_norm_beta"):
            del group[key]
    twin = LARS(params, lr=0.1, weight_decay=1e-3, trust="channel")
    twin.load_state_dict(saved)
    assert {k: twin.param_groups[0][k] for k in ("trust", "nesterov", "guard", "grad_norm_beta")} == {
        "trust": "tensor", "nesterov": False, "guard": None, "grad_norm_beta": 0.0}
    _set_grads(params, _grads(1)[0])
    twin.step()


def test_options_need_no_host_sync():
    p = torch.nn.Parameter(torch.empty(4, 3, 2, device="meta"))
    opt = LARS([p], lr=0.1, weight_decay=1e-3, trust="channel", nesterov=True, guard=1e-2, grad_norm_beta=0.9)
    p.grad = torch.empty_like(p)
    opt.step()
    opt.step()
    assert opt.state[p]["trust_ratio"].shape == (4, 1, 1)


@pytest.mark.parametrize(
    ("kwargs", "error", "message"),
    [
        ({"trust": "layer"}, ValueError, "Expected trust to be 'tensor' or 'channel', got 'layer'"),
        ({"nesterov": "yes"}, TypeError, "Expected nesterov to be a bool, got str"),
        ({"nesterov": True, "momentum": 0.0}, ValueError, "Nesterov momentum needs momentum > 0"),
        ({"guard": -0.01}, ValueError, "Expected guard to be None or a number >= 0, got -0.01"),
        ({"guard": "1e-2"}, ValueError, "Expected guard to be None or a number >= 0, got '1e-2'"),
        ({"guard": float("nan")}, ValueError, "Expected guard to be None or a number >= 0, got nan"),
        ({"grad_norm_beta": 1.0}, ValueError, "Expected 0 <= grad_norm_beta < 1, got 1.0"),
        ({"grad_norm_beta": -0.1}, ValueError, "Expected 0 <= grad_norm_beta < 1, got -0.1"),
        ({"grad_norm_beta": True}, ValueError, "Expected 0 <= grad_norm_beta < 1, got True"),
    ],
)
def test_bad_options_raise(kwargs, error, message):
    with pytest.raises(error, match=message):
        LARS([torch.nn.Parameter(torch.zeros(2))], lr=0.1, **kwargs)


def test_bad_group_options_raise():
    p, q = torch.nn.Parameter(torch.zeros(2)), torch.nn.Parameter(torch.zeros(2))
    with pytest.raises(ValueError, match="Expected trust to be 'tensor' or 'channel', got 'row'"):
        LARS([{"params": [p]}, {"params": [q], "trust": "row"}], lr=0.1)
    opt = LARS([p], lr=0.1)
    with pytest.raises(ValueError, match="Nesterov momentum needs momentum > 0"):
        opt.add_param_group({"params": [q], "nesterov": True, "momentum": 0.0})
    assert len(opt.param_groups) == 1


def test_channel_trust_shapes_and_one_dimensional_tensors():
    """Per-channel trust is (C, 1, ..., 1) for conv and linear weights; 1-D tensors keep one per-tensor ratio."""
    gen = torch.Generator().manual_seed(12)
    params = [torch.nn.Parameter(torch.randn(s, generator=gen, dtype=torch.float64)) for s in OPTION_SHAPES]
    opt = LARS(params, lr=0.1, momentum=0.0, trust="channel", guard=0.0)
    grads = [torch.randn(s, generator=gen, dtype=torch.float64) for s in OPTION_SHAPES]
    bias = params[1].detach().clone()
    _set_grads(params, grads)
    opt.step()
    shapes = [tuple(opt.state[p]["trust_ratio"].shape) for p in params]
    assert shapes == [(4, 1, 1, 1), (), (6, 1)]
    expected = math.sqrt((bias**2).sum().item() / (grads[1] ** 2).sum().item())
    assert opt.state[params[1]]["trust_ratio"].item() == pytest.approx(expected, rel=1e-12)
