"""Find the scale-invariant layers of a model from the dataflow of one training forward.

``detect(model, x)`` runs one forward in training mode under :class:`~normwatch.flow.ScaleTracer`, turns
the flows it absorbed into :class:`Layer` records, then confirms them numerically: every group is rescaled
by a random factor in [0.8, 1.25] and the forward is repeated with the same random state; the outputs
must not move from the traced forward's (two forwards in all, more only when a layer fails). The model is
left exactly as it was: parameters, buffers (BN running statistics), the random number generators and
every module's train/eval mode.

``SyncBatchNorm`` normalises each rank's share with statistics gathered over all ranks; during detection
it normalises with its own share's, as ``BatchNorm`` does. Per channel, both are (x − mean)/std over
samples, so the same weights are invariant, and detection stays local to each rank: no collective, and
nothing that one rank's batch could make another rank wait for.
"""

from __future__ import annotations

import contextlib
import functools
import math
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from torch.nn.modules import module as module_hooks
from torch.nn.modules.batchnorm import _BatchNorm
from torch.utils._pytree import tree_map

from normwatch import _dist
from normwatch._preserve import kept
from normwatch._warn import warn
from normwatch.flow import Granularity, Owned, ScaleTracer, Source, TraceResult, _tensors, loss_outputs

CONFIRM_RTOL = 1e-3  # outputs may move by this fraction of their largest magnitude (BN's epsilon, rounding)


@dataclass(frozen=True)
class Layer:
    """A scale-invariant layer: the model's loss does not change when its parameters are rescaled.

    Attributes:
        name: qualified name of the module owning the weight (the ``<layer>`` of the TensorBoard tags).
        norm: qualified name(s) of the normalising module(s) that remove the scale, comma-separated.
        params: qualified names of the parameters rescaled together: the weight, plus the bias where it
            must be rescaled with it (LayerNorm/GroupNorm, or a bias before a ReLU).
        granularity: ``"channel"`` (each output channel is invariant by itself: BatchNorm, InstanceNorm),
            ``"group"`` (each GroupNorm group of channels) or ``"tensor"`` (only the whole of ``params``).
        groups: number of independent invariant groups (channels, norm groups, or 1).
        out_axis: the weight axis holding output channels (0 for conv/linear, 1 for transposed conv).
        confirmed: True when rescaling left the outputs unchanged numerically, False when it did not,
            None when not checked.
    """

    name: str
    norm: str
    params: tuple[str, ...]
    granularity: Granularity
    groups: int
    out_axis: int = 0
    confirmed: bool | None = None


def unwrap(model: nn.Module) -> nn.Module:
    """The user's own module inside ``torch.compile`` (``_orig_mod``) and DDP/DataParallel (``module``)."""
    while True:
        if isinstance(model, torch._dynamo.eval_frame.OptimizedModule):
            model = model._orig_mod
        elif isinstance(model, (nn.parallel.DistributedDataParallel, nn.DataParallel)):
            model = model.module
        else:
            return model


def detect(model: nn.Module, *example_args: Any, **example_kwargs: Any) -> list[Layer]:
    """The scale-invariant layers of ``model``, found from one training-mode forward on the example.

    The model is put in training mode as a training loop does, with ``model.train()`` (so an override that
    keeps some BatchNorm frozen is respected); a model already training with some modules switched to eval
    by hand keeps those modes. Every module's mode is put back afterwards.

    Args:
        model: any ``nn.Module`` (a compiled or DDP-wrapped one is unwrapped first).
        *example_args: positional inputs of one forward (a real batch: BatchNorm needs more than one sample).
        **example_kwargs: keyword inputs of that forward.

    Returns:
        The layers in the order the forward first used them, each numerically confirmed.

    Example:
        >>> net = nn.Sequential(nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8), nn.ReLU(), nn.Flatten(), nn.LazyLinear(2))
        >>> [(layer.name, layer.norm, layer.granularity) for layer in detect(net, torch.randn(4, 3, 8, 8))]
        [('0', '1', 'channel')]
    """
    with _training_as_a_user_would(unwrap(model)):
        return scan(model, example_args, example_kwargs, confirm=True)


def scan(model: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any], confirm: bool = True) -> list[Layer]:
    """:func:`detect` with the confirmation optional (``confirm=False`` costs one forward instead of two)."""
    base = unwrap(model)
    with _preserved(base) as replay:
        result, traced = _trace(base, args, kwargs, replay)
        layers = _layers(result)
        # sharded (FSDP2) parameters: rescaling them would need their shard offsets, and a result-dependent
        # number of extra forwards could desynchronise the ranks' collectives; they stay unconfirmed
        if confirm and layers and not any(_dist.is_dtensor(p) for p in base.parameters()):
            layers = _confirm(base, args, kwargs, layers, replay, traced)
    return layers


@contextlib.contextmanager
def _training_as_a_user_would(base: nn.Module) -> Iterator[None]:
    """``base.train()`` unless some modules were switched to eval by hand in a training model; modes put back."""
    modes = [(m, m.training) for m in base.modules()]
    frozen_by_hand = base.training and not all(training for _, training in modes)
    try:
        if not frozen_by_hand:
            base.train()
        yield
    finally:
        for m, training in modes:
            m.training = training


# -- tracing ---------------------------------------------------------------------------------------------
def _trace(base: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any],
           replay: Any) -> tuple[TraceResult, list[torch.Tensor]]:
    """The flows of one traced forward, and its floating-point outputs."""
    stack: list[tuple[str, nn.Module]] = []
    names = {id(m): n for n, m in base.named_modules(remove_duplicate=False)}
    static = {id(t): Owned(_join(n, attr), n, kind == "param")
              for n, m in base.named_modules(remove_duplicate=False)
              for kind, table in (("param", m._parameters), ("buffer", m._buffers))
              for attr, t in table.items() if t is not None}

    def resolve(t: torch.Tensor) -> Owned | None:
        """The parameter or buffer ``t`` is: registered at entry, or now on a running module (FSDP2)."""
        hit = static.get(id(t))
        if hit is not None:
            return hit
        for name, module in reversed(stack):
            for kind, table in (("param", module._parameters), ("buffer", module._buffers)):
                for attr, value in table.items():
                    if value is t:
                        return Owned(_join(name, attr), name, kind == "param")
        return None

    def enter(module: nn.Module, _args: Any) -> None:
        if id(module) in names:
            stack.append((names[id(module)], module))

    def leave(module: nn.Module, _args: Any, _out: Any) -> None:
        if stack and stack[-1][1] is module:
            stack.pop()

    tracer = ScaleTracer(resolve, lambda: stack[-1][0] if stack else "")
    handles = [module_hooks.register_module_forward_pre_hook(enter),
               module_hooks.register_module_forward_hook(leave, always_call=True)]
    try:
        replay()
        args, kwargs = _fresh(args, kwargs)
        with tracer:
            output = base(*args, **kwargs)
        tracer.leak_outputs(output)
    finally:
        for handle in handles:
            handle.remove()
    return tracer.finish(), _float_outputs(output)


def _join(module: str, attr: str) -> str:
    return f"{module}.{attr}" if module else attr


def _layers(result: TraceResult) -> list[Layer]:
    layers = []
    for index, src in enumerate(result.sources):
        variants = ("weight", "joint") if src.bias_name is not None else ("joint",)  # the weight alone if it can
        variant = next((v for v in variants if result.invariant((index, v))), None)
        if variant is None:
            continue
        params = (src.weight_name,)
        if variant == "joint" and src.bias_name is not None:
            params += (src.bias_name,)
        absorptions = result.absorbed[(index, variant)]
        granularity, groups = _granularity(src, [a.groups for a in absorptions])
        norms = ", ".join(dict.fromkeys(a.norm for a in absorptions))
        name = src.weight_name.removesuffix(".weight") if src.weight_name.endswith(".weight") else src.weight_name
        layers.append(Layer(name or src.weight_name, norms, params, granularity, groups, src.out_axis))
    return layers


def _granularity(src: Source, groups_seen: list[int]) -> tuple[Granularity, int]:
    """The finest grouping in which every normalisation that saw this weight is invariant.

    Each normalisation removes the scale of contiguous groups of output channels; g groups of size C/g are
    unions of every one of them when g = gcd of their counts.
    """
    channels = src.weight_shape[src.out_axis]
    groups = math.gcd(*groups_seen) if src.channelwise else 1
    if groups <= 1 or channels % groups:
        return "tensor", 1
    return ("channel" if groups == channels else "group"), groups


# -- numerical confirmation ------------------------------------------------------------------------------
def _confirm(base: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any], layers: list[Layer],
             replay: Any, traced: list[torch.Tensor]) -> list[Layer]:
    """Rescale every layer's groups at random at once: unchanged outputs confirm them all in one forward. Else
    each layer is checked alone against a plain forward (the traced one is the same unless tracing changed
    how an op ran)."""
    params = dict(base.named_parameters(remove_duplicate=False))
    generator = torch.Generator().manual_seed(0)
    scaled = _forward_scaled(base, args, kwargs, layers, params, generator, replay)
    if _unchanged(traced, scaled):
        return [_with(layer, True) for layer in layers]
    reference = _forward(base, args, kwargs, replay)
    if _unchanged(reference, scaled):
        return [_with(layer, True) for layer in layers]
    confirmed = []
    for layer in layers:
        ok = _unchanged(reference, _forward_scaled(base, args, kwargs, [layer], params, generator, replay))
        if not ok:
            warn(f"normwatch: layer {layer.name!r} looks scale-invariant from the dataflow, but "
                 f"rescaling it changed the outputs by more than {CONFIRM_RTOL:g} of their size "
                 "(tiny pre-norm variance against BatchNorm's eps, or an op normwatch misreads).")
        confirmed.append(_with(layer, ok))
    return confirmed


def _with(layer: Layer, confirmed: bool) -> Layer:
    return Layer(layer.name, layer.norm, layer.params, layer.granularity, layer.groups, layer.out_axis, confirmed)


def _forward(base: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any], replay: Any) -> list[torch.Tensor]:
    replay()
    args, kwargs = _fresh(args, kwargs)
    return _float_outputs(base(*args, **kwargs))


def _float_outputs(output: Any) -> list[torch.Tensor]:
    return [t.detach().clone() for t in _tensors(loss_outputs(output)) if t.is_floating_point()]


def _fresh(args: tuple[Any, ...], kwargs: dict[str, Any]) -> tuple[tuple[Any, ...], dict[str, Any]]:
    """Copies of the input tensors for one of detection's forwards: a forward that changes its input in
    place (``x.mul_(2)``) must change neither the user's batch nor the next forward's."""
    return tree_map(lambda t: t.detach().clone() if isinstance(t, torch.Tensor) else t, (args, kwargs))


def _forward_scaled(base: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any], layers: list[Layer],
                    params: dict[str, nn.Parameter], generator: torch.Generator,
                    replay: Any) -> list[torch.Tensor]:
    saved = {name: params[name].detach().clone() for layer in layers for name in layer.params}
    try:
        for layer in layers:
            weight = params[layer.params[0]]
            channels = weight.shape[layer.out_axis]
            factors = 0.8 * (1.25 / 0.8) ** torch.rand(layer.groups, generator=generator, dtype=torch.float64)
            per_channel = factors.repeat_interleave(channels // layer.groups).to(weight.device, weight.dtype)
            for name in layer.params:
                p = params[name]
                shape = [1] * p.dim()
                shape[layer.out_axis if p.dim() > 1 else 0] = channels
                p.data.mul_(per_channel.view(shape))
        return _forward(base, args, kwargs, replay)
    finally:
        for name, value in saved.items():
            params[name].data.copy_(value)


def _unchanged(reference: list[torch.Tensor], scaled: list[torch.Tensor]) -> bool:
    if len(reference) != len(scaled):
        return False
    for a, b in zip(reference, scaled):
        scale = a.abs().max().item() if a.numel() else 0.0
        rtol = max(CONFIRM_RTOL, 16 * torch.finfo(a.dtype).eps)  # half-precision models round more
        if a.shape != b.shape or (a - b).abs().max().item() > rtol * scale + 1e-6:
            return False
    return True


@contextlib.contextmanager
def _no_autocast() -> Iterator[None]:
    """Full precision for detection's forwards: the dataflow is the same, and rescaled weights are not
    hidden by autocast's cache of low-precision weight copies."""
    with contextlib.ExitStack() as stack:
        for device in ("cpu", "cuda"):
            if device == "cpu" or torch.cuda.is_available():
                stack.enter_context(torch.autocast(device, enabled=False))
        yield


@contextlib.contextmanager
def _preserved(base: nn.Module) -> Iterator[Any]:
    """:func:`normwatch._preserve.kept`, with forwards without gradients or autocast, and SyncBatchNorm
    normalising with each rank's own statistics (the module docstring says why)."""
    synced = [m for m in base.modules() if isinstance(m, nn.SyncBatchNorm) and "forward" not in vars(m)]
    with kept(base) as replay:
        for m in synced:
            m.forward = functools.partial(_BatchNorm.forward, m)
        try:
            with torch.no_grad(), _no_autocast():
                yield replay
        finally:
            for m in synced:
                del m.forward
