"""Detection of normalisations written by hand, one rule at a time, against the numerical ground truth.

Each case is a small model built to exercise one rule of the tracer's algebra (homogeneity degrees, groups
followed through reshapes, epsilons, shifts). ``Truth`` (tests/ground_truth.py) decides without the tracer
which conv/linear modules are scale-invariant; the test checks first that the case is what its name says,
then that detection agrees module by module, with the finest granularity the numbers allow.
"""

from __future__ import annotations

from collections.abc import Callable
from fractions import Fraction

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import normwatch
from normwatch.flow import Flow, indexed, positions, probe, reshaped
from tests.ground_truth import Truth, assert_granularity

D, HEADS, KV_HEADS, HEAD_DIM = 16, 4, 2, 4
TOKENS = (3, 5, D)  # (batch, tokens, width)
IMAGES = (6, 3, 6, 6)


# -- normalisations written by hand ----------------------------------------------------------------------
class RMSNorm(nn.Module):
    """LLaMA's: x · rsqrt(mean(x²) + ε) over the last axis, times a gain."""

    def __init__(self, width: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.weight, self.eps = nn.Parameter(torch.ones(width)), eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.weight * (x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps))


class Standardise(nn.Module):
    """(x − mean)/sqrt(var + ε) over ``axes`` (LayerNorm, InstanceNorm or BatchNorm by hand, no affine)."""

    def __init__(self, axes: tuple[int, ...], eps: float = 1e-5) -> None:
        super().__init__()
        self.axes, self.eps = axes, eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        mean = x.mean(self.axes, keepdim=True)
        var = (x - mean).pow(2).mean(self.axes, keepdim=True)
        return (x - mean) / torch.sqrt(var + self.eps)


class GroupStandardise(nn.Module):
    """GroupNorm by hand: statistics of x.view(N, groups, −1)."""

    def __init__(self, groups: int, eps: float = 1e-5) -> None:
        super().__init__()
        self.groups, self.eps = groups, eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        g = x.view(x.shape[0], self.groups, -1)
        return ((g - g.mean(-1, keepdim=True)) / (g.var(-1, keepdim=True, unbiased=False) + self.eps).sqrt()).view_as(x)


class Fn(nn.Module):
    """A normalisation given as a function of the tensor (no parameters)."""

    def __init__(self, fn: Callable[[torch.Tensor], torch.Tensor]) -> None:
        super().__init__()
        self.fn = fn

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fn(x)


class Normed(nn.Module):
    """proj → ``norm`` → head: proj is invariant exactly when ``norm`` removes its scale."""

    def __init__(self, norm: nn.Module, bias: bool = False, conv: bool = False) -> None:
        super().__init__()
        self.proj = nn.Conv2d(3, 6, 3, bias=bias) if conv else nn.Linear(D, D, bias=bias)
        self.norm = norm
        self.head = nn.Linear(6 * 16 if conv else D, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.norm(self.proj(x))
        return self.head(h.flatten(1) if h.dim() == 4 else h)


class MixedStatistic(nn.Module):
    """The statistic is taken over the projection's channels and the input's together: not invariant."""

    def __init__(self) -> None:
        super().__init__()
        self.proj, self.norm, self.head = nn.Linear(D, D), RMSNorm(2 * D), nn.Linear(2 * D, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.norm(torch.cat([self.proj(x), x], dim=-1)))


class OtherStatistic(nn.Module):
    """a(x) divided by the norm of b(x): neither a nor b is invariant."""

    def __init__(self) -> None:
        super().__init__()
        self.a, self.b, self.head = nn.Linear(D, D), nn.Linear(D, D), nn.Linear(D, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.a(x) / self.b(x).norm(dim=-1, keepdim=True))


class PostNormMLP(nn.Module):
    """OLMo2's post-norm: h + norm(down(relu(up(h)))): up and down are invariant, the head is not."""

    def __init__(self) -> None:
        super().__init__()
        self.up, self.down = nn.Linear(D, 2 * D), nn.Linear(2 * D, D, bias=False)  # a bias here would break up's
        self.norm, self.head = RMSNorm(D), nn.Linear(D, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(x + self.norm(self.down(F.relu(self.up(x)))))


class QKNormAttention(nn.Module):
    """Attention with RMSNorm on each head of q and k (Qwen3, Gemma3), GQA, a residual: q_proj and k_proj are
    invariant head by head; v_proj and o_proj are not.

    Args:
        layout: ``"qwen3"`` (norm on (B, T, H, d), then transpose), ``"gemma3"`` (transpose, then norm),
            ``"permute"`` (permute, then norm), ``"heads-axis"`` (the statistic over the heads: whole q_proj only).
        repeat: how k and v reach the query heads: ``"expand"`` (repeat_kv), ``"interleave"`` or ``"sdpa"``.
        eager: attention written out (softmax(q kᵀ) v) instead of scaled_dot_product_attention.
    """

    def __init__(self, layout: str = "qwen3", repeat: str = "expand", eager: bool = False) -> None:
        super().__init__()
        self.layout, self.repeat, self.eager, self.eps = layout, repeat, eager, 1e-6
        self.q_proj = nn.Linear(D, HEADS * HEAD_DIM, bias=False)
        self.k_proj = nn.Linear(D, KV_HEADS * HEAD_DIM, bias=False)
        self.v_proj = nn.Linear(D, KV_HEADS * HEAD_DIM, bias=False)
        self.o_proj = nn.Linear(HEADS * HEAD_DIM, D, bias=False)
        self.q_norm, self.k_norm = RMSNorm(HEAD_DIM), RMSNorm(HEAD_DIM)
        self.head = nn.Linear(D, 3)

    def _heads(self, h: torch.Tensor, norm: nn.Module) -> torch.Tensor:
        """(B, T, H·d) → (B, H, T, d), normalised per head as ``layout`` says."""
        b, t, _ = h.shape
        h = h.view(b, t, -1, HEAD_DIM)
        if self.layout == "qwen3":
            return norm(h).transpose(1, 2)
        if self.layout == "gemma3":
            return norm(h.transpose(1, 2))
        if self.layout == "permute":
            return norm(h.permute(0, 2, 1, 3))
        return (h * torch.rsqrt(h.pow(2).mean(2, keepdim=True) + self.eps)).transpose(1, 2)  # over the heads

    def _repeat(self, h: torch.Tensor) -> torch.Tensor:
        b, kv, t, d = h.shape
        if self.repeat == "expand":  # transformers' repeat_kv
            return h[:, :, None].expand(b, kv, HEADS // kv, t, d).reshape(b, HEADS, t, d)
        return h.repeat_interleave(HEADS // kv, dim=1) if self.repeat == "interleave" else h

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, _ = x.shape
        q, k = self._heads(self.q_proj(x), self.q_norm), self._heads(self.k_proj(x), self.k_norm)
        k, v = self._repeat(k), self._repeat(self.v_proj(x).view(b, t, KV_HEADS, HEAD_DIM).transpose(1, 2))
        if self.eager:
            weights = torch.softmax(q @ k.transpose(-1, -2) / HEAD_DIM**0.5, dim=-1)
            out = weights @ v
        else:
            out = F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=self.repeat == "sdpa")
        return self.head(x + self.o_proj(out.transpose(1, 2).reshape(b, t, -1)))


class NormedAndAttended(nn.Module):
    """q's output is normalised on one path and enters attention's softmax un-normalised on another."""

    def __init__(self) -> None:
        super().__init__()
        self.q_proj, self.norm, self.head = nn.Linear(D, D, bias=False), RMSNorm(D), nn.Linear(D, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        q = self.q_proj(x)
        return self.head(self.norm(q) + F.scaled_dot_product_attention(q, x, x))


def _normed(norm: nn.Module, **kw: bool) -> Callable[[], nn.Module]:
    return lambda: Normed(norm, **kw)


QK = {"q_proj", "k_proj"}
CASES = [
    # id, model factory, input shape, the modules that are invariant by construction
    ("rmsnorm", _normed(RMSNorm(D)), TOKENS, {"proj"}),
    ("layernorm", _normed(Standardise((-1,)), bias=True), TOKENS, {"proj"}),
    ("F.normalize", _normed(Fn(lambda h: F.normalize(h, dim=-1))), TOKENS, {"proj"}),
    ("divide-by-norm", _normed(Fn(lambda h: h / h.norm(dim=-1, keepdim=True))), TOKENS, {"proj"}),
    ("divide-by-vector-norm", _normed(Fn(lambda h: h / torch.linalg.vector_norm(h, dim=(1, 2), keepdim=True)),
                                      bias=True), TOKENS, {"proj"}),
    ("batchnorm-by-hand", _normed(Standardise((0, 2, 3)), bias=True, conv=True), IMAGES, {"proj"}),
    ("instancenorm-by-hand", _normed(Standardise((2, 3)), bias=True, conv=True), IMAGES, {"proj"}),
    ("groupnorm-by-hand", _normed(GroupStandardise(3), bias=True, conv=True), IMAGES, {"proj"}),
    ("layernorm-over-channels", _normed(Standardise((1, 2, 3)), bias=True, conv=True), IMAGES, {"proj"}),
    ("post-norm", PostNormMLP, TOKENS, {"up", "down"}),
    ("qk-norm", QKNormAttention, TOKENS, QK),
    ("qk-norm-after-transpose", lambda: QKNormAttention("gemma3", "interleave"), TOKENS, QK),
    ("qk-norm-permute-sdpa-gqa", lambda: QKNormAttention("permute", "sdpa"), TOKENS, QK),
    ("qk-norm-eager", lambda: QKNormAttention(eager=True), TOKENS, QK),
    # honest negatives
    ("stat-over-heads-axis", lambda: QKNormAttention("heads-axis"), TOKENS, QK),  # invariant only as a whole
    ("detached-statistic", _normed(Fn(lambda h: h / h.norm(dim=-1, keepdim=True).detach())), TOKENS, set()),
    ("centred-not-divided", _normed(Fn(lambda h: h - h.mean(-1, keepdim=True))), TOKENS, set()),
    ("large-eps", _normed(Fn(lambda h: h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + 1.0))), TOKENS, set()),
    ("stat-mixes-other-values", MixedStatistic, TOKENS, set()),
    ("stat-of-another-tensor", OtherStatistic, TOKENS, set()),
    ("softmax-sees-the-scale", NormedAndAttended, TOKENS, set()),
    ("gelu-before-norm", _normed(Fn(lambda h: F.normalize(F.gelu(h), dim=-1))), TOKENS, set()),
]


@pytest.mark.parametrize(("factory", "shape", "expected"), [pytest.param(*c[1:], id=c[0]) for c in CASES])
def test_detection_agrees_with_the_numbers(factory, shape, expected) -> None:
    """Detected layers are exactly the invariant modules, each with the finest invariant groups and the
    parameters that must be rescaled together (the weight alone when its bias is removed by the norm)."""
    torch.manual_seed(0)
    model, x = factory(), torch.randn(*shape)
    truth = Truth(model, x)
    assert truth.invariant_modules() == expected  # the case is built as its name says
    layers = normwatch.detect(model, x)
    assert {layer.name for layer in layers} == expected
    for layer in layers:
        assert layer.confirmed
        assert_agrees(truth, layer)


def assert_agrees(truth: Truth, layer: normwatch.Layer) -> None:
    """The layer's parameters are invariant with the finest groups the numbers allow; reported jointly with its
    bias only when the weight alone is not invariant."""
    assert_granularity(truth, layer)
    weight, *bias = layer.params
    if bias:
        assert not truth.invariant([weight])
    elif f"{layer.name}.bias" in truth.params:  # the norm removes the bias: the weight alone is invariant
        assert truth.invariant([weight])


class CosineHead(nn.Module):
    """A cosine classifier: scale · cos(x, w_c) for each class c (weights normalised row by row)."""

    def __init__(self) -> None:
        super().__init__()
        self.proj = nn.Linear(D, D)
        self.weight = nn.Parameter(torch.randn(3, D))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return 10 * F.linear(F.normalize(self.proj(x), dim=-1), F.normalize(self.weight, dim=-1))


def test_cosine_layer_weights_are_invariant_row_by_row() -> None:
    """A weight normalised itself (never a conv/linear parameter as such) is found, one group per row."""
    torch.manual_seed(0)
    model, x = CosineHead(), torch.randn(*TOKENS)
    truth = Truth(model, x)
    layers = {layer.name: layer for layer in normwatch.detect(model, x)}
    assert set(layers) == {"proj", "weight"}
    assert truth.invariant(layers["proj"].params) and truth.invariant(["weight"])
    for layer in layers.values():
        assert_granularity(truth, layer)
    assert layers["weight"].granularity == "channel"


def test_weight_norm_direction_is_invariant_row_by_row() -> None:
    """weight_norm's w = g·v/|v|: the direction v is invariant row by row, the magnitude g is not."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.utils.parametrizations.weight_norm(nn.Linear(D, D)), nn.ReLU(), nn.Linear(D, 3))
    x = torch.randn(*TOKENS)
    truth = Truth(model, x)
    layers = normwatch.detect(model, x)
    direction, magnitude = "0.parametrizations.weight.original1", "0.parametrizations.weight.original0"
    assert [layer.params for layer in layers] == [(direction,)]
    assert truth.invariant([direction]) and not truth.invariant([magnitude])
    assert_granularity(truth, layers[0])


class NormFn(nn.Module):
    """``fn(x, eps)`` with ``eps`` an attribute: the ground truth makes it negligible unless told not to."""

    def __init__(self, fn: Callable[[torch.Tensor, float], torch.Tensor], eps: float) -> None:
        super().__init__()
        self.fn, self.eps = fn, eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fn(x, self.eps)


def _standardised(axes: tuple[int, ...]) -> Callable[[torch.Tensor, float], torch.Tensor]:
    return lambda h, eps: Standardise(axes, eps)(h)


NATIVE_AND_BY_HAND = [
    # id, the F.* call, its hand-written equivalent, whether the layer before is a conv (else a linear)
    ("layer_norm-last-axis", lambda h, eps: F.layer_norm(h, h.shape[-1:], eps=eps), _standardised((-1,)), False),
    ("layer_norm-chw", lambda h, eps: F.layer_norm(h, h.shape[1:], eps=eps), _standardised((1, 2, 3)), True),
    ("layer_norm-width-only", lambda h, eps: F.layer_norm(h, h.shape[-1:], eps=eps), _standardised((-1,)), True),
    ("rms_norm", lambda h, eps: F.rms_norm(h, h.shape[-1:], eps=eps),
     lambda h, eps: h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + eps), False),
    ("batch_norm", lambda h, eps: F.batch_norm(h, None, None, training=True, eps=eps), _standardised((0, 2, 3)),
     True),
    ("instance_norm", lambda h, eps: F.instance_norm(h, eps=eps), _standardised((2, 3)), True),
    ("group_norm", lambda h, eps: F.group_norm(h, 3, eps=eps), lambda h, eps: GroupStandardise(3, eps)(h), True),
]


@pytest.mark.parametrize("eps", [1e-5, 10.0], ids=["small-eps", "large-eps"])
@pytest.mark.parametrize(("native", "by_hand", "conv"), [pytest.param(*c[1:], id=c[0]) for c in NATIVE_AND_BY_HAND])
def test_native_norms_and_their_hand_written_equivalents_agree(native, by_hand, conv, eps) -> None:
    """The F.* rules and the algebra of hand-written ops find the same layer (same parameters and groups), or
    none in both with an epsilon as large as the variance; the numbers agree."""
    torch.manual_seed(0)
    x = torch.randn(*(IMAGES if conv else TOKENS))
    found = []
    for norm in (native, by_hand):
        torch.manual_seed(1)  # the same weights in both
        model = Normed(NormFn(norm, eps), bias=True, conv=conv)
        found.append([(layer.name, layer.params, layer.granularity, layer.groups)
                      for layer in normwatch.detect(model, x)])
    assert found[0] == found[1]
    if eps < 1:
        truth = Truth(model, x)
        layers = normwatch.detect(model, x)
        assert [layer.name for layer in layers] == ["proj"]
        assert_agrees(truth, layers[0])
    else:
        assert found[1] == []
        assert not Truth(model, x, tiny_eps=False).invariant(["proj.weight", "proj.bias"])


def _flows_along(shape: tuple[int, ...]) -> list[Flow]:
    """Flows on every axis of ``shape``: each grouping of its positions, with and without a shift, and a span."""
    flows = []
    for dim, size in enumerate(shape):
        if size == 1:
            continue
        for groups in (g for g in range(1, size + 1) if size % g == 0):
            flows += [Flow(dim, groups, Fraction(1)), Flow(dim, groups, Fraction(2), shift=True)]
        if size % 4 == 0:
            flows.append(Flow(dim, 2, Fraction(1), span=(size // 2, size)))
    return [flow for flow in flows if flow.dim is not None]  # one group, no shift: the whole weight


RESHAPES = [((2, 5, 12), (2, 5, 3, 4)), ((2, 5, 12), (2, 5, 4, 3)), ((2, 5, 12), (10, 12)), ((2, 5, 12), (2, 60)),
            ((2, 3, 4, 5), (2, 12, 5)), ((2, 3, 4, 5), (6, 20)), ((6, 4), (24,)), ((6, 4), (3, 2, 4)),
            ((6, 4), (2, 12)), ((1, 12), (12,)), ((12,), (1, 12, 1)), ((4, 6), (4, 3, 2)), ((4, 6), (8, 3))]


@pytest.mark.parametrize(("src", "dst"), RESHAPES, ids=[f"{s}->{d}" for s, d in RESHAPES])
def test_reshapes_from_shapes_agree_with_position_probes(src, dst) -> None:
    """The shape arithmetic for reshapes gives what applying the reshape to a tensor of positions shows."""
    for flow in _flows_along(src):
        where = positions(torch.Size(src), flow.dim, torch.device("cpu")).reshape(dst)
        assert reshaped(flow, torch.Size(src), torch.Size(dst)) == probe(flow, torch.Size(src), where), flow


INDICES = [(slice(None), 0), (Ellipsis, slice(0, 2)), (None, slice(None), None), (1,), (slice(None, None, 2),),
           (Ellipsis, None, 1), (slice(None), slice(None), slice(1, None))]


@pytest.mark.parametrize("index", INDICES, ids=[str(i) for i in INDICES])
def test_basic_indexing_from_shapes_agrees_with_position_probes(index) -> None:
    """The index walk gives what indexing a tensor of positions shows, or leaves the case to the probe."""
    shape = torch.Size((4, 6, 4))
    for flow in _flows_along(shape):
        expected = probe(flow, shape, positions(shape, flow.dim, torch.device("cpu"))[index])
        assert indexed(flow, shape, index) in (expected, NotImplemented), flow  # NotImplemented: probed


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_detection_on_cuda_matches_cpu() -> None:
    """Shape rules and position probes (repeat_interleave) run on the activations' device: same layers as on CPU."""
    torch.manual_seed(0)
    model, x = QKNormAttention("permute", "interleave"), torch.randn(*TOKENS)
    on_cpu = [(layer.name, layer.params, layer.granularity, layer.groups) for layer in normwatch.detect(model, x)]
    found = normwatch.detect(model.cuda(), x.cuda())
    assert [(layer.name, layer.params, layer.granularity, layer.groups) for layer in found] == on_cpu
    assert {name for name, *_ in on_cpu} == QK and all(layer.confirmed for layer in found)
