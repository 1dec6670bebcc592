"""Numerical ground truth for detection, computed without normwatch's tracer.

A module's parameters are scale-invariant when, in a float64 copy of the model whose norm epsilons are made
negligible, (1) rescaling them leaves the training-mode outputs unchanged and (2) the gradient of a random
projection of the outputs is orthogonal to them (Euler: a loss of degree 0 in w has w·∇L = 0). (2) is what
the |w|² dynamics rest on: ``x / x.norm().detach()`` passes (1) but not (2).
"""

from __future__ import annotations

import copy
import math
from collections.abc import Iterable
from typing import Any

import torch
from torch import nn
from torch.utils._pytree import tree_leaves, tree_map

import normwatch

EPS_ATTRIBUTES = ("eps", "variance_epsilon", "epsilon")  # how norm modules here and in transformers name it
RTOL = 1e-9  # float64: an invariant weight moves the outputs by rounding only
# rescaling by powers of two is exact even where a model computes in float32 (transformers' RMSNorm upcasts)
POWERS_OF_TWO = torch.tensor([0.5, 2.0, 4.0, 0.25], dtype=torch.float64)


class Truth:
    """A float64 copy of ``model`` with negligible norm epsilons, and its reference outputs.

    Args:
        model: the model as the user trains it (its modes are kept: a frozen BatchNorm stays frozen).
        args: positional inputs of one forward.
        tiny_eps: make every norm epsilon negligible (1e-30); False keeps them (an epsilon as large as the
            variance breaks invariance, and the truth must say so).
        kwargs: keyword inputs of one forward.
    """

    def __init__(self, model: nn.Module, *args: Any, tiny_eps: bool = True, **kwargs: Any) -> None:
        self.model = copy.deepcopy(model).double()
        for module in self.model.modules():
            for name in EPS_ATTRIBUTES:
                if tiny_eps and isinstance(getattr(module, name, None), float):
                    setattr(module, name, 1e-30)
        self.args, self.kwargs = _double((args, kwargs))
        self.params = dict(self.model.named_parameters(remove_duplicate=False))
        with torch.no_grad():
            self.reference = self.outputs()

    def outputs(self) -> list[torch.Tensor]:
        """The floating-point outputs of one forward, with the same random state (dropout masks) each time."""
        torch.manual_seed(0)
        out = self.model(*self.args, **self.kwargs)
        if hasattr(out, "to_tuple"):  # transformers' ModelOutput, less the key/value cache kept for generation
            out = tuple(value for key, value in out.items() if key != "past_key_values")
        return [t for t in tree_leaves(out) if isinstance(t, torch.Tensor) and t.is_floating_point()]

    def moves(self, factors: dict[str, torch.Tensor], axes: dict[str, int] | None = None) -> bool:
        """Whether multiplying each named parameter by its factors (one per slice along its axis: ``axes``, else
        0) changes the outputs."""
        saved = {name: self.params[name].detach().clone() for name in factors}
        try:
            with torch.no_grad():
                for name, factor in factors.items():
                    p = self.params[name]
                    shape = [1] * p.dim()
                    shape[(axes or {}).get(name, 0)] = -1
                    p.mul_(factor.to(p.dtype).view(shape) if factor.numel() > 1 else factor.to(p.dtype))
                scaled = self.outputs()
        finally:
            with torch.no_grad():
                for name, value in saved.items():
                    self.params[name].copy_(value)
        return any(a.shape != b.shape or not torch.allclose(a, b, rtol=RTOL, atol=RTOL * float(a.abs().max()))
                   for a, b in zip(self.reference, scaled))

    def gradient_is_orthogonal(self, names: Iterable[str]) -> bool:
        """Whether w·∇L = 0 for the parameters ``names`` jointly, L a fixed random projection of the outputs."""
        names = list(names)
        grads = self._gradients()
        dot = sum(float((self.params[n].detach() * grads[n]).sum()) for n in names)
        w_size = math.sqrt(sum(float(self.params[n].detach().pow(2).sum()) for n in names))
        g_size = math.sqrt(sum(float(grads[n].pow(2).sum()) for n in names))
        return abs(dot) <= 1e-6 * w_size * g_size + 1e-300

    def _gradients(self) -> dict[str, torch.Tensor]:
        """∇L for every parameter, L = Σ outputs · (a fixed random projection); computed once."""
        if not hasattr(self, "_grads"):
            self.model.zero_grad(set_to_none=True)
            outputs = self.outputs()
            generator = torch.Generator().manual_seed(7)
            sum((o * torch.randn(o.shape, generator=generator, dtype=o.dtype)).sum() for o in outputs).backward()
            self._grads = {n: torch.zeros_like(p) if p.grad is None else p.grad.detach().clone()
                           for n, p in self.params.items()}
            self.model.zero_grad(set_to_none=True)
        return self._grads

    def invariant(self, names: Iterable[str]) -> bool:
        """Whether the parameters ``names``, rescaled together, are scale-invariant (both criteria)."""
        names = list(names)
        two = torch.tensor(2.0, dtype=torch.float64)
        return not self.moves(dict.fromkeys(names, two)) and self.gradient_is_orthogonal(names)

    def invariant_modules(self) -> set[str]:
        """The conv/linear modules whose own parameters (weight, and bias if any) are scale-invariant together."""
        found = set()
        for name, module in self.model.named_modules():
            if isinstance(module, (nn.Linear, nn.modules.conv._ConvNd)) or type(module).__name__ == "Conv1D":
                own = [f"{name}.{p}" if name else p for p, _ in module.named_parameters(recurse=False)]
                if self.invariant(own):
                    found.add(name)
        return found

    def groups_invariant(self, layer: normwatch.Layer, groups: int) -> bool:
        """Whether rescaling ``groups`` contiguous groups of the layer's output channels, neighbours by different
        factors (0.5, 2, 4, 0.25, 0.5, ...), leaves the outputs unchanged."""
        channels = self.params[layer.params[0]].shape[layer.out_axis]
        per_group = POWERS_OF_TWO[torch.arange(groups) % len(POWERS_OF_TWO)]
        factors = per_group.repeat_interleave(channels // groups)
        return not self.moves(dict.fromkeys(layer.params, factors), {layer.params[0]: layer.out_axis})


def assert_granularity(truth: Truth, layer: normwatch.Layer) -> None:
    """The layer's groups are invariant each by itself, and splitting them any further (by each prime factor of
    the group size) is not: its granularity is the finest the numbers allow."""
    channels = truth.params[layer.params[0]].shape[layer.out_axis]
    expected = {1: "tensor", channels: "channel"}.get(layer.groups, "group")
    assert layer.granularity == expected, f"{layer}: {layer.groups} groups of {channels} channels is {expected}"
    assert truth.groups_invariant(layer, layer.groups), f"{layer} is not invariant per group"
    size = channels // layer.groups
    for prime in (p for p in range(2, size + 1) if size % p == 0 and all(p % q for q in range(2, p))):
        assert not truth.groups_invariant(layer, layer.groups * prime), f"{layer}: finer groups are invariant too"


def _double(obj: Any) -> Any:
    return tree_map(lambda t: t.double() if isinstance(t, torch.Tensor) and t.is_floating_point() else t, obj)
