"""Detection: every pattern of the core issue, checked against the numbers, not against the code.

The ground truth for "invariant" is numerical: rescaling a detected layer's parameter groups leaves the
training-mode loss unchanged, and rescaling a rejected conv/linear weight changes it.
"""

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import normwatch
from normwatch import Layer


def _loss(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """A fixed random projection of the outputs (|out|² would not see a rescaled BN output at all)."""
    torch.manual_seed(123)  # same dropout masks in every forward
    out = model(x)
    out = out["logits"] if isinstance(out, dict) else out
    projection = torch.randn(out.shape, generator=torch.Generator().manual_seed(7), dtype=out.dtype)
    return (out * projection).sum() + out.sum() ** 2


def _rescaled_loss(model: nn.Module, x: torch.Tensor, names: tuple[str, ...], factors: torch.Tensor,
                   out_axis: int = 0) -> float:
    """Training-mode loss of a copy of ``model`` with parameters ``names`` rescaled per output channel."""
    m = copy.deepcopy(model).double()
    for module in m.modules():
        if hasattr(module, "eps"):
            module.eps = 1e-30  # epsilon breaks exact invariance by ~eps/var: make it negligible here
    params = dict(m.named_parameters())
    with torch.no_grad():
        for name in names:
            p = params[name]
            shape = [1] * p.dim()
            shape[out_axis if p.dim() > 1 else 0] = -1
            p.mul_(factors.view(shape).to(p.dtype))
    return _loss(m, x.double()).item()  # the model's own modes: a frozen BN stays frozen


def _channels(model: nn.Module, weight: str, out_axis: int = 0) -> int:
    return dict(model.named_parameters())[weight].shape[out_axis]


def assert_invariant(model: nn.Module, x: torch.Tensor, layer: Layer) -> None:
    channels = _channels(model, layer.params[0], layer.out_axis)
    base = _rescaled_loss(model, x, layer.params, torch.ones(channels), layer.out_axis)
    per_group = torch.linspace(0.5, 2.0, layer.groups, dtype=torch.float64)
    factors = per_group.repeat_interleave(channels // layer.groups)
    scaled = _rescaled_loss(model, x, layer.params, factors, layer.out_axis)
    assert scaled == pytest.approx(base, rel=1e-9, abs=1e-12), f"{layer} is not invariant numerically"


def assert_not_invariant(model: nn.Module, x: torch.Tensor, weight: str, out_axis: int = 0) -> None:
    channels = _channels(model, weight, out_axis)
    base = _rescaled_loss(model, x, (weight,), torch.ones(channels), out_axis)
    scaled = _rescaled_loss(model, x, (weight,), torch.full((channels,), 2.0, dtype=torch.float64), out_axis)
    assert abs(scaled - base) > 1e-6 * abs(base), f"{weight} is invariant after all"


class Twice(nn.Module):
    """One conv used on two inputs, each through its own BatchNorm."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, bias=False)
        self.bn1, self.bn2 = nn.BatchNorm2d(4), nn.BatchNorm2d(4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.bn1(self.conv(x)) + self.bn2(self.conv(x.flip(-1)))


class PreActivation(nn.Module):
    """A pre-activation residual block: conv outputs join the residual stream before any norm."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 4, 3, padding=1, bias=False)
        self.bn = nn.BatchNorm2d(4)
        self.conv = nn.Conv2d(4, 4, 3, padding=1, bias=False)
        self.head = nn.BatchNorm2d(4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.stem(x)
        return self.head(h + self.conv(F.relu(self.bn(h))))


class TwoPaths(nn.Module):
    """The conv's output reaches the loss through BN and also directly."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, bias=False)
        self.bn = nn.BatchNorm2d(4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv(x)
        return self.bn(h).flatten(1) + 0.1 * h.flatten(1)


class Functional(nn.Module):
    """Raw parameters and functional calls only."""

    def __init__(self) -> None:
        super().__init__()
        self.w = nn.Parameter(torch.randn(4, 3, 3, 3))
        self.gamma = nn.Parameter(torch.ones(4))
        self.fc = nn.Parameter(torch.randn(5, 4))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = F.relu(F.batch_norm(F.conv2d(x, self.w), None, None, self.gamma, None, training=True, eps=1e-30))
        return F.linear(F.adaptive_avg_pool2d(h, 1).flatten(1), self.fc)


class HandBias(nn.Module):
    """A bias added by hand after F.linear, then BatchNorm1d: the weight is still invariant."""

    def __init__(self) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.randn(6, 12))
        self.bias = nn.Parameter(torch.randn(6))
        self.bn = nn.BatchNorm1d(6)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.bn(F.linear(x.flatten(1)[:, :12], self.weight) + self.bias)


class Branchy(nn.Module):
    """Python control flow plus an Inception-style channel concat before BN."""

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Conv2d(3, 2, 3, padding=1, bias=False)
        self.b = nn.Conv2d(3, 3, 1, bias=False)
        self.bn = nn.BatchNorm2d(5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        parts = [self.a(x), self.b(x)] if x.shape[0] > 1 else [self.b(x), self.a(x)]
        return F.relu(self.bn(torch.cat(parts, dim=1)))


class Cached(nn.Module):
    """A conv's output appended to caches that start empty, as transformers' ``DynamicCache`` does: the legacy
    ``torch.tensor([])`` (cat skips it whatever its shape) and an empty slab along the cat axis."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, bias=False)
        self.bn = nn.BatchNorm2d(4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv(x)
        y = torch.cat([torch.tensor([], dtype=y.dtype), y], dim=-2)
        y = torch.cat([y.new_zeros(y.shape[0], y.shape[1], 0, y.shape[3]), y], dim=2)
        return self.bn(y)  # statistics over the cat axis too


def _seq(*modules: nn.Module) -> nn.Module:
    return nn.Sequential(*modules)


def _frozen_bn() -> nn.Module:
    net = _seq(nn.Conv2d(3, 4, 3, bias=False), nn.BatchNorm2d(4))
    net[1].eval()  # frozen BN inside a training model: running statistics
    return net


IMG = (8, 3, 8, 8)
CASES = [
    # id, model factory, input shape, expected [(layer, norm, params, granularity, groups)], rejected weights
    ("conv-bn", lambda: _seq(nn.Conv2d(3, 4, 3, bias=False), nn.BatchNorm2d(4)), IMG,
     [("0", "1", ("0.weight",), "channel", 4)], []),
    ("conv-with-bias-bn", lambda: _seq(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4)), IMG,
     [("0", "1", ("0.weight",), "channel", 4)], []),
    ("conv-relu-bn", lambda: _seq(nn.Conv2d(3, 4, 3, bias=False), nn.ReLU(), nn.BatchNorm2d(4)), IMG,
     [("0", "2", ("0.weight",), "channel", 4)], []),
    ("conv-bias-relu-bn", lambda: _seq(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.BatchNorm2d(4)), IMG,
     [("0", "2", ("0.weight", "0.bias"), "channel", 4)], []),
    ("conv-maxpool-bn", lambda: _seq(nn.Conv2d(3, 4, 3), nn.MaxPool2d(2), nn.BatchNorm2d(4)), IMG,
     [("0", "2", ("0.weight",), "channel", 4)], []),
    ("linear-bn1d", lambda: _seq(nn.Flatten(), nn.Linear(192, 6), nn.BatchNorm1d(6), nn.Linear(6, 2)), IMG,
     [("1", "2", ("1.weight",), "channel", 6)], ["3.weight"]),
    ("depthwise-bn", lambda: _seq(nn.Conv2d(3, 6, 3, groups=3, bias=False), nn.BatchNorm2d(6)), IMG,
     [("0", "1", ("0.weight",), "channel", 6)], []),
    ("conv-groupnorm", lambda: _seq(nn.Conv2d(3, 6, 3), nn.GroupNorm(3, 6)), IMG,
     [("0", "1", ("0.weight", "0.bias"), "group", 3)], []),
    ("conv-layernorm", lambda: _seq(nn.Conv2d(3, 4, 3), nn.LayerNorm([4, 6, 6])), IMG,
     [("0", "1", ("0.weight", "0.bias"), "tensor", 1)], []),
    ("linear-layernorm", lambda: _seq(nn.Flatten(), nn.Linear(192, 6), nn.LayerNorm(6)), IMG,
     [("1", "2", ("1.weight", "1.bias"), "tensor", 1)], []),
    ("conv-dropout-bn", lambda: _seq(nn.Conv2d(3, 4, 3, bias=False), nn.Dropout(0.2), nn.BatchNorm2d(4)), IMG,
     [("0", "2", ("0.weight",), "channel", 4)], []),
    ("used-twice", Twice, IMG, [("conv", "bn1, bn2", ("conv.weight",), "channel", 4)], []),
    ("functional", Functional, IMG, [("w", "<root>", ("w",), "channel", 4)], ["fc"]),
    ("bias-by-hand", HandBias, IMG, [("weight", "bn", ("weight",), "channel", 6)], []),
    ("channel-concat", Branchy, IMG,
     [("a", "bn", ("a.weight",), "channel", 2), ("b", "bn", ("b.weight",), "channel", 3)], []),
    ("empty-cache", Cached, IMG, [("conv", "bn", ("conv.weight",), "channel", 4)], []),
    ("pre-activation", PreActivation, IMG, [], ["stem.weight", "conv.weight"]),
    ("second-path", TwoPaths, IMG, [], ["conv.weight"]),
    ("frozen-bn", _frozen_bn, IMG, [], ["0.weight"]),
    ("gelu-before-bn", lambda: _seq(nn.Conv2d(3, 4, 3), nn.GELU(), nn.BatchNorm2d(4)), IMG, [], ["0.weight"]),
    ("classifier", lambda: _seq(nn.Flatten(), nn.Linear(192, 3)), IMG, [], ["1.weight"]),
]


@pytest.mark.parametrize(("factory", "shape", "expected", "rejected"),
                         [pytest.param(*case[1:], id=case[0]) for case in CASES])
def test_detects_exactly_the_invariant_layers(factory, shape, expected, rejected) -> None:
    """Detection finds the expected layers; each is invariant and each rejected weight is not, numerically."""
    torch.manual_seed(0)
    model = factory()
    x = torch.randn(*shape)
    layers = normwatch.detect(model, x)
    got = [(layer.name, layer.norm, layer.params, layer.granularity, layer.groups) for layer in layers]
    assert got == expected
    assert all(layer.confirmed for layer in layers)
    for layer in layers:
        assert_invariant(model, x, layer)
    for weight in rejected:
        assert_not_invariant(model, x, weight)
    assert not any(layer.name in {w.removesuffix(".weight") for w in rejected} for layer in layers)


def test_bn_affine_parameters_are_never_layers() -> None:
    """BN/LN weights and biases are not conv/linear weights: never reported."""
    model = _seq(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.Flatten(), nn.Linear(144, 5), nn.LayerNorm(5))
    names = {p for layer in normwatch.detect(model, torch.randn(*IMG)) for p in layer.params}
    assert names.isdisjoint({"1.weight", "1.bias", "4.weight", "4.bias"})


def test_detect_leaves_the_model_exactly_as_it_was() -> None:
    """Parameters, BN running statistics, RNG and modes are untouched by detect()."""
    torch.manual_seed(0)
    model = _seq(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.Dropout(0.5), nn.ReLU(), nn.Flatten(),
                 nn.Linear(144, 3))
    model.eval()
    model[2].train()  # a mix of modes must come back as it was
    before = {k: v.clone() for k, v in model.state_dict().items()}
    modes = [m.training for m in model.modules()]
    x = torch.randn(*IMG)
    rng = torch.get_rng_state()
    layers = normwatch.detect(model, x)
    assert [layer.name for layer in layers] == ["0"]
    assert torch.equal(torch.get_rng_state(), rng)
    assert [m.training for m in model.modules()] == modes
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k]), k


def test_detect_runs_in_training_mode() -> None:
    """A model in eval mode is traced as in training: BN uses batch statistics there."""
    model = _seq(nn.Conv2d(3, 4, 3, bias=False), nn.BatchNorm2d(4)).eval()
    assert [layer.name for layer in normwatch.detect(model, torch.randn(*IMG))] == ["0"]
    assert not model.training


class FrozenByTrain(nn.Module):
    """Fine-tuning code's pattern: ``train()`` keeps the BatchNorm frozen (running statistics)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv, self.bn, self.fc = nn.Conv2d(3, 4, 3, bias=False), nn.BatchNorm2d(4), nn.Linear(4, 2)

    def train(self, mode: bool = True) -> "FrozenByTrain":
        super().train(mode)
        self.bn.eval()
        return self

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.bn(self.conv(x)).mean((2, 3)))


def test_detect_trains_the_model_as_a_user_does(tmp_path) -> None:
    """detect() calls model.train() as a training loop does, so a train() that freezes BatchNorm is respected:
    it agrees with attach() and with the numbers, and leaves every module's mode as it found it."""
    torch.manual_seed(0)
    model, x = FrozenByTrain(), torch.randn(*IMG)
    assert normwatch.detect(model, x) == []
    assert all(m.training for m in model.modules())  # fresh from the constructor, as detect found it
    model.train()  # what the user's loop does before training
    assert_not_invariant(model, x, "conv.weight")
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    with pytest.warns(RuntimeWarning, match="no scale-invariant layer"), \
            normwatch.attach(model, opt, logdir=str(tmp_path)) as watch:
        F.cross_entropy(model(x), torch.zeros(len(x), dtype=torch.long)).backward()
        opt.step()
        assert watch.layers == []


def test_detect_on_wrapped_models_uses_original_names() -> None:
    """torch.compile's ``_orig_mod.`` prefix is not part of the names."""
    model = _seq(nn.Conv2d(3, 4, 3, bias=False), nn.BatchNorm2d(4))
    compiled = torch.compile(model, backend="eager")
    layers = normwatch.detect(compiled, torch.randn(*IMG))
    assert [(layer.name, layer.params) for layer in layers] == [("0", ("0.weight",))]


def test_detect_with_keyword_inputs() -> None:
    class KW(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv, self.bn = nn.Conv2d(3, 4, 3, bias=False), nn.BatchNorm2d(4)

        def forward(self, *, pixels: torch.Tensor) -> dict[str, torch.Tensor]:
            return {"logits": self.bn(self.conv(pixels)).mean((2, 3))}

    assert [layer.name for layer in normwatch.detect(KW(), pixels=torch.randn(*IMG))] == ["conv"]


def test_myrtle_resnet9_all_convs_invariant_classifier_not() -> None:
    """The seed's network: all 8 convs (residual add after ReLU) invariant; the classifier is not."""

    def conv_bn(c_in: int, c_out: int, pool: bool = False) -> nn.Sequential:
        layers = [nn.Conv2d(c_in, c_out, 3, padding=1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU(inplace=True)]
        return nn.Sequential(*layers, *([nn.MaxPool2d(2)] if pool else []))

    class Residual(nn.Module):
        def __init__(self, c: int) -> None:
            super().__init__()
            self.res1, self.res2 = conv_bn(c, c), conv_bn(c, c)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x + self.res2(self.res1(x))

    class Mul(nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x * 0.125

    w = 4
    net = nn.Sequential(conv_bn(3, w), conv_bn(w, 2 * w, True), Residual(2 * w), conv_bn(2 * w, 4 * w, True),
                        conv_bn(4 * w, 8 * w, True), Residual(8 * w), nn.AdaptiveMaxPool2d(1), nn.Flatten(),
                        nn.Linear(8 * w, 10, bias=False), Mul())
    x = torch.randn(4, 3, 16, 16)
    layers = normwatch.detect(net, x)
    assert [layer.name for layer in layers] == ["0.0", "1.0", "2.res1.0", "2.res2.0", "3.0", "4.0", "5.res1.0",
                                                "5.res2.0"]
    for layer in layers:
        assert_invariant(net, x, layer)
    assert_not_invariant(net, x, "8.weight")


class ReturnsACache(nn.Module):
    """A transformers-style output: the loss-facing logits, and a key/value cache of the raw projection (as
    some transformers versions return it, flattened into tensors)."""

    def __init__(self) -> None:
        super().__init__()
        self.v_proj, self.head = nn.Linear(8, 8), nn.Linear(8, 3)

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        v = self.v_proj(x)
        return {"logits": self.head(F.layer_norm(v, (8,), eps=1e-9)), "past_key_values": v}


def test_a_key_value_cache_in_the_outputs_is_not_a_leak() -> None:
    """Under w → r·w the logits stay and only the cache, which no loss reads, scales: v_proj is invariant."""
    torch.manual_seed(0)
    model, x = ReturnsACache(), torch.randn(4, 8)
    with torch.no_grad():
        base = model(x)["logits"]
        model.v_proj.weight.mul_(3.0)
        model.v_proj.bias.mul_(3.0)
        assert torch.allclose(model(x)["logits"], base, atol=1e-5)  # the numbers first
        model.v_proj.weight.div_(3.0)
        model.v_proj.bias.div_(3.0)
    assert [(layer.name, layer.confirmed) for layer in normwatch.detect(model, x)] == [("v_proj", True)]
