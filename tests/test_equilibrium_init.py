"""normwatch.equilibrium_init: the model computes the same function, and a scale-invariant layer starts at equilibrium.

Three kinds of check, each against an independent computation:

1. Outputs before and after, in training and in eval mode, on a BatchNorm conv net and a LayerNorm/RMSNorm net
   (float64 with a negligible ε, so "unchanged" means float rounding; and float32 with the default ε).
2. The factor against the closed form |w*|⁴ = η(1−τ)E[G²]/(2λ(1−μ)), with E[G²] computed here from separate
   backward passes.
3. The pure-noise toy of tests/test_theory.py (``g = (σ/|w|)·P⊥ξ``, one tensor of C = 1024 elements), stepped by
   the real optimizer: after equilibrium_init |w| stays where it started (within the per-step spread of |w| over
   the window), while the default init drifts, to where equilibrium_init had put it.
"""

from __future__ import annotations

import copy
import math
import random
import warnings

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import normwatch
from normwatch import theory
from normwatch.optim import LARS
from tests.models import seeded_batches, small_bn_net


def _bn_net(tiny_eps: bool = True) -> nn.Sequential:
    """small_bn_net in float64, with running statistics that are not the defaults; layer '4' has a bias that
    BatchNorm cancels (so detection rescales its weight alone)."""
    net = small_bn_net().double()
    for m in net.modules():
        if isinstance(m, nn.BatchNorm2d) and tiny_eps:
            m.eps = 1e-30  # BatchNorm's ε is the one thing that makes rescaling visible: take it away
    for x, _ in _batches(3, seed=9):
        net(x)
    return net


def _batches(n: int, seed: int = 1) -> list[tuple[torch.Tensor, torch.Tensor]]:
    return [(x.double(), y) for x, y in seeded_batches(n, seed)]


class _NormNet(nn.Module):
    """Linear+bias → LayerNorm and Linear+bias → ReLU → RMSNorm (each weight and bias invariant jointly)."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(3)
        self.a, self.ln = nn.Linear(10, 16), nn.LayerNorm(16, eps=1e-30)
        self.b, self.rms = nn.Linear(16, 12), nn.RMSNorm(12, eps=1e-30)
        self.head = nn.Linear(12, 5)
        self.double()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.rms(torch.relu(self.b(torch.relu(self.ln(self.a(x)))))))


def _norm_batches(n: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    gen = torch.Generator().manual_seed(4)
    return [(torch.randn(32, 10, generator=gen, dtype=torch.float64), torch.randint(0, 5, (32,), generator=gen))
            for _ in range(n)]


def _outputs(net: nn.Module, x: torch.Tensor, train: bool) -> torch.Tensor:
    net = copy.deepcopy(net)  # a training forward updates running statistics: keep the original as it is
    net.train(train)
    with torch.no_grad():
        return net(x)


def _sgd(net: nn.Module, **kw) -> torch.optim.SGD:
    return torch.optim.SGD(net.parameters(), **{"lr": 0.4, "momentum": 0.9, "weight_decay": 5e-4, **kw})


# -- 1. the function the model computes ------------------------------------------------------------------------
@pytest.mark.parametrize("train", [True, False], ids=["train", "eval"])
def test_bn_net_computes_the_same_function(train):
    net, batches = _bn_net(), _batches(4)
    before = copy.deepcopy(net)
    scales = normwatch.equilibrium_init(net, _sgd(net, nesterov=True), batches)
    assert sorted(scales) == ["0", "4"]
    assert all(abs(s.factor - 1) > 0.5 for s in scales.values())  # a real rescaling, or this proves nothing
    for x, _ in _batches(2, seed=5):
        expected = _outputs(before, x, train)
        torch.testing.assert_close(_outputs(net, x, train), expected, rtol=1e-12, atol=1e-12 * expected.abs().max())


def test_bn_running_statistics_follow_the_rescaled_inputs():
    """BatchNorm '1' sees r·x: mean r·m, var r²·v. BatchNorm '5' sees r·(x − b) + b (the bias of conv '4' is
    not rescaled): mean r·m + (1−r)·b, var r²·v."""
    net, batches = _bn_net(), _batches(4)
    before = copy.deepcopy(net)
    scales = normwatch.equilibrium_init(net, _sgd(net), batches)
    r0, r4 = scales["0"].factor, scales["4"].factor
    torch.testing.assert_close(net[1].running_mean, r0 * before[1].running_mean, rtol=1e-9, atol=1e-12)
    torch.testing.assert_close(net[1].running_var, r0**2 * before[1].running_var, rtol=1e-9, atol=1e-12)
    bias = before[4].bias.detach()
    torch.testing.assert_close(net[5].running_mean, r4 * before[5].running_mean + (1 - r4) * bias, rtol=1e-9,
                               atol=1e-12)
    torch.testing.assert_close(net[5].running_var, r4**2 * before[5].running_var, rtol=1e-9, atol=1e-12)
    assert torch.equal(net[4].bias, before[4].bias)
    torch.testing.assert_close(net[4].weight, r4 * before[4].weight, rtol=1e-15, atol=0)


def test_default_eps_float32_net_changes_by_eps_only():
    """With BatchNorm's default ε = 1e-5 in float32 the outputs move by about ε/σ², in both modes, while the
    weights alone (without the running statistics) would change eval-mode outputs by far more."""
    net = small_bn_net()
    for x, _ in seeded_batches(3, seed=9):
        net(x)
    before = copy.deepcopy(net)
    scales = normwatch.equilibrium_init(net, _sgd(net), seeded_batches(4))
    x = seeded_batches(1, seed=5)[0][0]
    for train in (True, False):
        expected = _outputs(before, x, train)
        assert (_outputs(net, x, train) - expected).abs().max() <= 1e-3 * expected.abs().max()
    weights_only = copy.deepcopy(before)
    with torch.no_grad():
        weights_only[0].weight.mul_(scales["0"].factor)
        weights_only[4].weight.mul_(scales["4"].factor)
    expected = _outputs(before, x, False)
    assert (_outputs(weights_only, x, False) - expected).abs().max() > 1e-1 * expected.abs().max()


@pytest.mark.parametrize("train", [True, False], ids=["train", "eval"])
def test_layernorm_rmsnorm_net_computes_the_same_function(train):
    net, batches = _NormNet(), _norm_batches(4)
    before = copy.deepcopy(net)
    scales = normwatch.equilibrium_init(net, _sgd(net, lr=0.1), batches)
    assert sorted(scales) == ["a", "b"] and all(abs(s.factor - 1) > 0.5 for s in scales.values())
    torch.testing.assert_close(net.a.bias, scales["a"].factor * before.a.bias, rtol=1e-15, atol=0)  # jointly
    x = _norm_batches(5)[-1][0]
    expected = _outputs(before, x, train)
    torch.testing.assert_close(_outputs(net, x, train), expected, rtol=1e-12, atol=1e-12 * expected.abs().max())


# -- 2. the factor, against the closed form --------------------------------------------------------------------
def _expected_grad_sq(net: nn.Module, batches, params: list[str]) -> float:
    """E[|g|²·|w|²] over the batches from plain backward passes on a copy, in training mode."""
    total = 0.0
    for x, y in batches:
        twin = copy.deepcopy(net).train()
        F.cross_entropy(twin(x), y).backward()
        named = dict(twin.named_parameters())
        g2 = sum((named[n].grad.double() ** 2).sum().item() for n in params)
        w2 = sum((named[n].detach().double() ** 2).sum().item() for n in params)
        total += g2 * w2
    return total / len(batches)


@pytest.mark.parametrize(
    ("kw", "lr_arg", "eta", "tau", "mu"),
    [
        ({"nesterov": True}, None, 0.4, 0.0, 0.9),
        ({"dampening": 0.5}, None, 0.4, 0.5, 0.9),
        ({"momentum": 0.0, "dampening": 0.5}, None, 0.4, 0.0, 0.0),  # torch ignores dampening without momentum
        ({}, 2.0, 2.0, 0.0, 0.9),  # lr= in place of the group's
    ],
)
def test_factor_matches_the_closed_form(kw, lr_arg, eta, tau, mu):
    """The layer lands at theory's |w*| for the E[G²] measured here; that is the seed's closed form
    |w*|⁴ = η(1−τ)E[G²]/(2λ(1−μ)) to leading order in ηλ (theory's exact form differs by O(ηλ))."""
    net, batches = _bn_net(), _batches(3)
    net.eval()  # a model in eval mode is measured in training mode (where it is scale-invariant), left in eval
    before = copy.deepcopy(net)
    scales = normwatch.equilibrium_init(net, _sgd(net, **kw), batches, lr=lr_arg)
    assert not net.training and not any(m.training for m in net.modules())
    nesterov = kw.get("nesterov", False)
    for name, param in (("0", "0.weight"), ("4", "4.weight")):
        grad_sq = _expected_grad_sq(before, batches, [param])
        target = theory.sgd_equilibrium_norm(eta, 5e-4, grad_sq, mu, tau if mu else 0.0, nesterov and mu > 0)
        leading = (eta * (1 - tau) * grad_sq / (2 * 5e-4 * (1 - mu))) ** 0.25
        norm = before.get_parameter(param).detach().norm().item()
        assert scales[name].scale_free_grad_sq == pytest.approx(grad_sq, rel=1e-10)
        assert scales[name].factor == pytest.approx(target / norm, rel=1e-10)
        assert net.get_parameter(param).detach().norm().item() == pytest.approx(target, rel=1e-10)
        assert target == pytest.approx(leading, rel=2 * eta * 5e-4 / (1 - mu) + 1e-6)


class _Mixed(nn.Module):
    """A conv under a frozen BatchNorm (running statistics: not invariant) beside one under a live BatchNorm and
    dropout (invariant; the dropout draws from torch's generator, the forward from Python's and NumPy's)."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.frozen = nn.Sequential(nn.Conv2d(3, 4, 3, bias=False), nn.BatchNorm2d(4))
        self.live = nn.Sequential(nn.Conv2d(3, 4, 3, bias=False), nn.BatchNorm2d(4), nn.ReLU(), nn.Dropout(0.3))
        self.head = nn.Linear(2 * 4 * 6 * 6, 5)
        self.double()
        self.frozen[1].eval()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.draws = (random.random(), np.random.rand())  # a forward that also draws from Python and NumPy
        return self.head(torch.cat([self.frozen(x), self.live(x)], dim=1).flatten(1))


def test_everything_else_is_left_as_it_was():
    """Gradients, optimizer state, other parameters and buffers, the random generators and every mode."""
    model = _Mixed()
    opt = _sgd(model)
    x, y = _batches(1)[0]
    F.cross_entropy(model(x), y).backward()
    opt.step()
    model.head.bias.grad = None
    state = copy.deepcopy(model.state_dict())
    grads = {n: None if p.grad is None else p.grad.clone() for n, p in model.named_parameters()}
    opt_state = copy.deepcopy(opt.state_dict())
    modes = [m.training for m in model.modules()]
    random.seed(1)
    np.random.seed(1)
    rng = (torch.get_rng_state(), random.getstate(), np.random.get_state()[1].copy())
    with pytest.warns(UserWarning, match="live.0 that the optimizer has already stepped"):
        scales = normwatch.equilibrium_init(model, opt, _batches(2))
    assert list(scales) == ["live.0"] and abs(scales["live.0"].factor - 1) > 0.1
    for name, value in model.state_dict().items():
        if name not in ("live.0.weight", "live.1.running_mean", "live.1.running_var"):
            assert torch.equal(value, state[name]), name
    for n, p in model.named_parameters():
        assert (p.grad is None) == (grads[n] is None) and (p.grad is None or torch.equal(p.grad, grads[n])), n
    after = opt.state_dict()
    assert after["param_groups"] == opt_state["param_groups"]
    assert all(torch.equal(after["state"][k]["momentum_buffer"], v["momentum_buffer"])
               for k, v in opt_state["state"].items())
    assert [m.training for m in model.modules()] == modes
    assert torch.equal(torch.get_rng_state(), rng[0]) and random.getstate() == rng[1]
    assert np.array_equal(np.random.get_state()[1], rng[2])


def test_layers_without_weight_decay_or_optimizer_are_left_with_a_warning():
    net, batches = _bn_net(), _batches(2)
    before = copy.deepcopy(net)
    opt = torch.optim.SGD([{"params": [net[0].weight], "weight_decay": 0.0},
                           {"params": [p for n, p in net.named_parameters() if n not in ("0.weight", "4.weight")]}],
                          lr=0.4, momentum=0.9, weight_decay=5e-4)
    with pytest.warns(UserWarning, match=r"left 2 layer\(s\) as they were: 0 \(no weight decay.*4 \(not trained"):
        scales = normwatch.equilibrium_init(net, opt, batches)
    assert [(s.factor, s.skipped) for s in scales.values()] == [
        (1.0, "no weight decay, so no equilibrium"), (1.0, "not trained by the optimizer")]
    assert all(torch.equal(a, b) for a, b in zip(net.state_dict().values(), before.state_dict().values()))


def test_a_stepped_optimizer_gets_a_warning():
    net, batches = _bn_net(), _batches(2)
    opt = _sgd(net)
    F.cross_entropy(net(batches[0][0]), batches[0][1]).backward()
    opt.step()
    with pytest.warns(UserWarning, match="already stepped; their momentum buffers keep the old scale"):
        normwatch.equilibrium_init(net, opt, batches)


# -- errors ----------------------------------------------------------------------------------------------------
def test_errors():
    net, batches = _bn_net(), _batches(1)
    with pytest.raises(ValueError, match=r"no equilibrium norm for Adagrad \(rule adagrad\); normwatch.theory has one"):
        normwatch.equilibrium_init(net, torch.optim.Adagrad(net.parameters(), weight_decay=1e-4), batches)
    with pytest.raises(ValueError, match="no equilibrium theory for LARS with trust='channel', a guard"):
        normwatch.equilibrium_init(net, LARS(net.parameters(), lr=0.1, weight_decay=1e-3, trust="channel"), batches)
    with pytest.raises(ValueError, match="at least one"):
        normwatch.equilibrium_init(net, _sgd(net), [])
    with pytest.raises(ValueError, match="Expected lr > 0, got -1"):
        normwatch.equilibrium_init(net, _sgd(net), batches, lr=-1)
    with pytest.raises(ValueError, match="has lr 0, where the equilibrium norm is 0; pass lr="):
        normwatch.equilibrium_init(net, _sgd(net, lr=0.0), batches)
    before = copy.deepcopy(net.state_dict())
    assert all(torch.equal(a, b) for a, b in zip(net.state_dict().values(), before.values()))


def test_lars_groups_without_lars_use_sgds_theory():
    net = _bn_net()
    plain = LARS(net.parameters(), lr=0.4, momentum=0.9, weight_decay=5e-4)
    plain.param_groups[0]["lars"] = False  # plain SGD groups use SGD's theory
    assert set(normwatch.equilibrium_init(net, plain, _batches(1))) == {"0", "4"}


# -- 3. the pure-noise toy -------------------------------------------------------------------------------------
SIDE = 32  # the toy's weight is SIDE × SIDE: C = 1024 elements, one scale-invariant group


class _Toy(nn.Module):
    """``out = sqrt(C)·Wᵀ/|W|`` (an RMSNorm over the whole weight), so ``loss = σ·⟨ξ, Ŵᵀ⟩`` has gradient
    ``(σ/|W|)·P⊥ξ``: the pure-noise toy, found by detection."""

    def __init__(self, seed: int) -> None:
        super().__init__()
        torch.manual_seed(seed)
        self.lin = nn.Linear(SIDE, SIDE, bias=False).double()

    def forward(self, eye: torch.Tensor) -> torch.Tensor:
        h = self.lin(eye)
        return F.rms_norm(h.reshape(1, -1), (h.numel(),), eps=1e-300)


def _toy_loss(out: torch.Tensor, xi: torch.Tensor) -> torch.Tensor:
    return (out.flatten() * xi).sum() / math.sqrt(out.numel())  # σ = 1


def _toy_batches(n: int, gen: torch.Generator) -> list[tuple[torch.Tensor, torch.Tensor]]:
    eye = torch.eye(SIDE, dtype=torch.float64)
    return [(eye, torch.randn(SIDE * SIDE, generator=gen, dtype=torch.float64)) for _ in range(n)]


def _toy_norms(make_opt, init: bool, steps: int, seed: int = 0) -> torch.Tensor:
    toy = _Toy(seed)
    opt = make_opt(toy.parameters())
    gen = torch.Generator().manual_seed(100 + seed)
    if init:
        normwatch.equilibrium_init(toy, opt, _toy_batches(8, gen), loss_fn=_toy_loss)
    norms = [toy.lin.weight.norm().item()]
    for eye, xi in _toy_batches(steps, gen):
        opt.zero_grad()
        _toy_loss(toy(eye), xi).backward()
        opt.step()
        norms.append(toy.lin.weight.norm().item())
    return torch.tensor(norms, dtype=torch.float64)


def _assert_lands_at_equilibrium(make_opt, steps: int, burn: int) -> None:
    """After equilibrium_init the mean |w| over steps burn..steps is its start, within 3 per-step spreads of |w|
    over that window plus 1 % (the leading-order norms' own error at these ηλ, measured: 0.1-0.9 %); the default
    init moves by more than 10 %, at least half of the way to where equilibrium_init starts."""
    init, default = _toy_norms(make_opt, True, steps), _toy_norms(make_opt, False, steps)
    window = init[burn:] / init[0]
    assert abs(window.mean().item() - 1) < 3 * window.std().item() + 1e-2
    assert abs(default[burn:].mean().item() / default[0].item() - 1) > 0.1
    start_gap = abs(default[0].item() - init[0].item())
    assert abs(default[-50:].mean().item() - init[0].item()) < 0.5 * start_gap


def test_toy_sgd_lands_at_equilibrium():
    torch.manual_seed(0)
    gen = torch.Generator().manual_seed(7)
    toy = _Toy(0)
    batches = _toy_batches(8, gen)
    w = toy.lin.weight.detach().T.flatten()
    grad_sq = np.mean([(xi @ xi - (xi @ w / w.norm()) ** 2).item() for _, xi in batches])  # σ²|P⊥ξ|²
    opt = torch.optim.SGD(toy.parameters(), lr=0.1, momentum=0.9, nesterov=True, weight_decay=1e-2)
    scales = normwatch.equilibrium_init(toy, opt, batches, loss_fn=_toy_loss)
    assert scales["lin"].scale_free_grad_sq == pytest.approx(grad_sq, rel=1e-10)
    target = theory.sgd_equilibrium_norm(0.1, 1e-2, grad_sq, 0.9, 0.0, True)
    assert toy.lin.weight.norm().item() == pytest.approx(target, rel=1e-10)
    assert target == pytest.approx((0.1 * grad_sq / (2 * 1e-2 * 0.1)) ** 0.25, rel=2 * 0.1 * 1e-2 / 0.1)
    _assert_lands_at_equilibrium(
        lambda p: torch.optim.SGD(p, lr=0.1, momentum=0.9, nesterov=True, weight_decay=1e-2), 300, 100)
    _assert_lands_at_equilibrium(
        lambda p: torch.optim.SGD(p, lr=0.2, momentum=0.9, dampening=0.5, weight_decay=1e-2), 300, 100)


@pytest.mark.parametrize(
    "make_opt",
    [
        lambda p: LARS(p, lr=0.02, momentum=0.9, weight_decay=1e-2),
        lambda p: LARS(p, lr=0.02, momentum=0.9, weight_decay=1e-2, nesterov=True),
        lambda p: torch.optim.AdamW(p, lr=0.002, betas=(0.9, 0.95), weight_decay=1.0),
        lambda p: torch.optim.Adam(p, lr=0.02, betas=(0.5, 0.9), weight_decay=0.1),
    ],
    ids=["lars", "lars-nesterov", "adamw", "adam-l2"],
)
def test_toy_lands_at_equilibrium_with_the_theory_dispatcher(make_opt):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        _assert_lands_at_equilibrium(make_opt, 500, 150)


# -- DDP -------------------------------------------------------------------------------------------------------
def _gn_model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1, bias=False), nn.GroupNorm(2, 8), nn.ReLU(),
                         nn.Conv2d(8, 8, 3, padding=1), nn.GroupNorm(4, 8), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
                         nn.Flatten(), nn.Linear(8, 5)).double()


def _ddp_worker(rank: int, port: int, out: str) -> None:
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)
    try:
        torch.set_num_threads(1)
        model = nn.parallel.DistributedDataParallel(_gn_model())
        batches = [(x.chunk(2)[rank], y.chunk(2)[rank]) for x, y in _batches(3)]
        scales = normwatch.equilibrium_init(model, _sgd(model), batches)
        torch.save({name: s.factor for name, s in scales.items()}, f"{out}/rank{rank}.pt")
        dist.barrier()
    finally:
        dist.destroy_process_group()


def test_ddp_averages_the_ranks_gradients_as_training_does(tmp_path):
    """GroupNorm normalises each sample alone, so the mean of the two ranks' half-batch gradients is the gradient
    of the whole batch: both ranks must find the factors one process finds on whole batches."""
    import socket

    import torch.distributed as dist
    import torch.multiprocessing as mp

    if not dist.is_available() or not dist.is_gloo_available():
        pytest.skip("needs gloo")
    single = _gn_model()
    expected = {name: s.factor for name, s in normwatch.equilibrium_init(single, _sgd(single), _batches(3)).items()}
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    mp.spawn(_ddp_worker, args=(port, str(tmp_path)), nprocs=2, join=True)
    for rank in range(2):
        got = torch.load(tmp_path / f"rank{rank}.pt")
        assert sorted(got) == sorted(expected) == ["0", "3"]
        assert got == pytest.approx(expected, rel=1e-10)
