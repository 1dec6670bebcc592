"""Start scale-invariant layers at their equilibrium norm, leaving the function the model computes unchanged.

The seed asks whether SGD's weaker start comes from weight norms that have not reached equilibrium yet, and
suggests "adjust weight initialisation scales to remove the initial out-of-equilibrium stage".
:func:`equilibrium_init` does that: it measures each scale-invariant layer's scale-free gradient size on a
few batches and rescales the layer to the norm at which weight decay's shrinking balances the gradient's
growth for the optimizer's hyperparameters.

Why the function does not change. In training mode a scale-invariant layer's output reaches the loss only
through a normalisation with batch statistics, so multiplying its parameters by r leaves the outputs the same
up to float rounding and the normalisation's ε (a relative ``≈ ε/(2σ²)·|1 − 1/r²|``, σ² the variance it
normalises). In eval mode a BatchNorm (or an InstanceNorm with running statistics) uses running statistics
instead. Each channel of its input becomes ``s·x + o``: ``s = r, o = 0`` after a conv (and after ReLU or
pooling); ``o = (1−r)·b`` when a bias ``b`` that BatchNorm cancels, and that is therefore not rescaled, sits
before it; ``s = 1, o = 0`` for channels the rescaling does not reach. Its statistics then follow:
``running_mean ← s·running_mean + o``, ``running_var ← s²·running_var``. The map ``(s, o)`` of every channel
is fitted (least squares, float64) from the norm's input on the first batch before and after rescaling, so
it holds whatever sits between layer and norm (concatenations, reshapes); a channel the fit cannot explain
keeps its statistics, with a warning.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.modules.batchnorm import _NormBase

from normwatch import rules, theory
from normwatch._preserve import kept
from normwatch._warn import warn
from normwatch.detect import Layer, detect, unwrap
from normwatch.optim import LARS

__all__ = ["LayerScale", "equilibrium_init"]

FIT_ELEMENTS = 8192  # elements per channel of a norm's input used to fit the map its running statistics follow
FIT_RTOL = 1e-3  # the fitted affine map must explain the new input to this fraction of its size


@dataclass(frozen=True)
class LayerScale:
    """What :func:`equilibrium_init` did to one layer.

    Attributes:
        name: the layer's name (as in :class:`~normwatch.Layer`).
        factor: the factor r its parameters were multiplied by (1.0 where it was left as it was).
        norm: |w| before, over all the layer's parameters.
        target: the equilibrium norm |w*| (``math.nan`` where none was computed).
        scale_free_grad_sq: the measured E[G²] = mean over batches of |g|²·|w|² (``math.nan`` if not measured).
        skipped: why the layer was left as it was, or None.
    """

    name: str
    factor: float
    norm: float
    target: float
    scale_free_grad_sq: float
    skipped: str | None = None


@dataclass(frozen=True)
class _Plan:
    layer: Layer
    params: tuple[nn.Parameter, ...]
    hyper: rules.Hyper | None  # None: skipped
    skipped: str | None = None


def equilibrium_init(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    batches: Iterable[tuple[Any, Any]],
    *,
    loss_fn: Callable[[Any, Any], torch.Tensor] = F.cross_entropy,
    lr: float | None = None,
    layers: Sequence[Layer] | None = None,
) -> dict[str, LayerScale]:
    r"""Rescale every scale-invariant layer of ``model`` to its equilibrium norm under ``optimizer``.

    For each layer (its parameters ``w``: the weight, plus the bias where detection rescales them
    together), on each batch ``b`` the loss ``loss_fn(model(inputs), targets)`` gives the gradient ``g_b``
    and the scale-free gradient size ``G_b = |g_b|·|w|``, which rescaling ``w`` does not change. With
    ``E[G²]`` the mean of ``G_b²`` over the batches, the layer is multiplied by ``r = |w*|/|w|``, where
    ``|w*|`` is the equilibrium norm of :mod:`normwatch.theory` for the layer's param group, e.g. for
    torch SGD (heavy ball or Nesterov, η = lr, λ = weight_decay, μ = momentum, τ = dampening)::

        |w*|⁴ = η(1−τ)·E[G²] / (2λ(1−μ))

    the norm at which weight decay's shrinking of |w|² balances the gradient's growth of it (seed eqs.
    3 and 7, as ``|w|/|g| = sqrt(η/(2λ(1−μ)))``). Other optimizers use :mod:`normwatch.theory`'s norm for
    their family where it has one.

    The function the model computes does not change, in training or eval mode (the running statistics of
    the norms the layer feeds are rescaled with it: see the module docstring). Gradients, the optimizer and
    its state, the random generators (torch's, Python's, NumPy's), modes and other buffers are left as they
    were. Call it before training and before ``normwatch.attach`` (a momentum buffer keeps its old scale).

    Assumptions (those of the theory): the layer is scale-invariant (``w·g = 0``), gradients are
    uncorrelated across steps, hyperparameters are constant and ηλ ≪ 1−μ; the batches are like the
    training steps' (batch size, augmentation, the loss's reduction), since ``E[G²]`` scales like 1/batch
    size when gradients are mostly noise. The equilibrium is that of the layer's total norm: channels
    normalised separately each have their own, which this does not impose. For a schedule, pass the lr
    the equilibrium should hold at (``lr=`` its peak, say): ``|w*|`` grows like η^{1/4} under SGD.

    Args:
        model: the model (a compiled or DDP-wrapped one is unwrapped; under DDP every rank passes its own
            share of each batch and the gradients are averaged over ranks, as in training).
        optimizer: the optimizer that will train it; the layers' param groups give η, λ, μ, ...
        batches: an iterable of ``(inputs, targets)``; all of them are used (a few are enough).
        loss_fn: the loss, ``loss_fn(model(inputs), targets)``.
        lr: the learning rate to be in equilibrium for, in place of every param group's current lr.
        layers: the layers to rescale (default: :func:`normwatch.detect` on the first batch's inputs).

    Returns:
        One :class:`LayerScale` per layer, by name: the factor applied, the norms and the measured E[G²].
        Layers whose group has no weight decay (no equilibrium), that the optimizer does not train, or
        whose parameters sit in param groups with different hyperparameters are left as they were.

    Raises:
        ValueError: no batches, an lr that is not > 0, or an optimizer (or LARS option) without an
            equilibrium theory.

    Example::

        scales = normwatch.equilibrium_init(model, optimizer, itertools.islice(loader, 4), lr=peak_lr)
    """
    batches = list(batches)
    if not batches:
        raise ValueError("equilibrium_init needs at least one (inputs, targets) batch; pass a few training batches.")
    _check_theory(optimizer)
    if lr is not None and not (not isinstance(lr, bool) and float(lr) > 0.0):
        raise ValueError(f"Expected lr > 0, got {lr!r}.")
    base = unwrap(model)
    found = list(layers) if layers is not None else detect(base, batches[0][0])
    params = dict(base.named_parameters(remove_duplicate=False))
    plans = [_plan(layer, params, optimizer, lr) for layer in found]
    active = [plan for plan in plans if plan.hyper is not None]
    with kept(base) as replay:
        grad_sq = _scale_free_grad_sq(model, base, batches, loss_fn, active, replay)
        results = _results(plans, active, grad_sq)
        scaled = [(plan, results[plan.layer.name].factor) for plan in active if results[plan.layer.name].factor != 1.0]
        maps = _rescale(base, batches[0][0], scaled, replay)
    _apply_maps(base, maps)  # after kept() put the buffers back
    _warn_about(plans, results, optimizer, maps)
    return results


# -- which layers, with which hyperparameters ----------------------------------------------------------------
def _check_theory(optimizer: torch.optim.Optimizer) -> None:
    if isinstance(optimizer, LARS):
        _check_lars_options(optimizer)
        return
    names = {rules.rule_for(optimizer, group).name for group in optimizer.param_groups}
    missing = sorted(name for name in names if not _has_norm(name))
    if missing:
        known = ", ".join(f for f in theory.FAMILIES if _has_norm(f))
        raise ValueError(f"equilibrium_init has no equilibrium norm for {type(optimizer).__name__} (rule "
                         f"{', '.join(missing)}); normwatch.theory has one for: {known}.")


def _has_norm(family: str) -> bool:
    """Whether theory gives an equilibrium norm for ``family`` at all (probed with ordinary values)."""
    return theory.equilibrium_norm(family, lr=1e-3, weight_decay=1e-2, scale_free_grad_sq=1.0, numel=1024,
                                   grad_rms=1.0, step=1e4, shape=(32, 32), momentum=0.9) is not None


def _check_lars_options(optimizer: LARS) -> None:
    for group in optimizer.param_groups:
        if group["lars"] and (group["trust"] != "tensor" or group["guard"] is not None or group["grad_norm_beta"] != 0):
            raise ValueError("equilibrium_init has no equilibrium theory for LARS with trust='channel', a guard "
                             "or grad_norm_beta; use trust='tensor', guard=None and grad_norm_beta=0.")


def _plan(layer: Layer, params: dict[str, nn.Parameter], optimizer: torch.optim.Optimizer,
          lr: float | None) -> _Plan:
    tensors = tuple(params[name] for name in layer.params)
    groups = {id(p): group for group in optimizer.param_groups for p in group["params"]}
    held = [groups.get(id(p)) for p in tensors]
    if all(group is None for group in held) or not any(p.requires_grad for p in tensors):
        return _Plan(layer, tensors, None, "not trained by the optimizer")
    hypers = {_hyper(optimizer, group, lr) for group in held if group is not None}
    if len(hypers) > 1 or None in held:
        return _Plan(layer, tensors, None, "parameters in param groups with different hyperparameters")
    hyper = hypers.pop()
    if not hyper.weight_decay > 0:
        return _Plan(layer, tensors, None, "no weight decay, so no equilibrium")
    if not hyper.lr > 0:
        raise ValueError(f"Layer {layer.name!r} has lr {hyper.lr:g}, where the equilibrium norm is 0; pass lr= "
                         "the learning rate it should be in equilibrium for (e.g. a schedule's peak).")
    return _Plan(layer, tensors, hyper)


def _hyper(optimizer: torch.optim.Optimizer, group: dict[str, Any], lr: float | None) -> rules.Hyper:
    hp = rules.hyper(optimizer, group)
    return dataclasses.replace(hp, lr=float(lr) if lr is not None else float(hp.lr))


def _equilibrium_norm(hp: rules.Hyper, grad_sq: float, numel: int, shape: tuple[int, ...]) -> float:
    """|w*| from :func:`normwatch.theory.equilibrium_norm`."""
    norm = theory.equilibrium_norm(hp.rule, **rules.theory_inputs(hp), scale_free_grad_sq=grad_sq, numel=numel,
                                   shape=shape if len(shape) == 2 else None)
    return math.nan if norm is None else float(norm)


def _results(plans: list[_Plan], active: list[_Plan], grad_sq: list[float]) -> dict[str, LayerScale]:
    measured = {plan.layer.name: value for plan, value in zip(active, grad_sq)}
    results = {}
    for plan in plans:
        norm = math.sqrt(sum(float(torch.linalg.vector_norm(p.detach(), dtype=torch.float64)) ** 2
                             for p in plan.params))
        name = plan.layer.name
        if plan.hyper is None:
            results[name] = LayerScale(name, 1.0, norm, math.nan, math.nan, plan.skipped)
            continue
        g2 = measured[name]
        target = _equilibrium_norm(plan.hyper, g2, sum(p.numel() for p in plan.params), tuple(plan.params[0].shape))
        if not (math.isfinite(target) and target > 0 and norm > 0):
            why = "zero weights" if norm == 0 else "no gradient" if g2 == 0 else "no equilibrium norm"
            results[name] = LayerScale(name, 1.0, norm, target, g2, why)
        else:
            results[name] = LayerScale(name, target / norm, norm, target, g2)
    return results


# -- measuring E[G²] -----------------------------------------------------------------------------------------
def _scale_free_grad_sq(model: nn.Module, base: nn.Module, batches: list[tuple[Any, Any]],
                        loss_fn: Callable[[Any, Any], torch.Tensor], plans: list[_Plan],
                        replay: Callable[[], None]) -> list[float]:
    """Mean over batches of |g|²·|w|² per layer (float64), with gradients that leave ``.grad`` untouched."""
    if not plans:
        return []
    flat = [p for plan in plans for p in plan.params]
    w_sq = [sum(_sq(p) for p in plan.params) for plan in plans]
    ddp = isinstance(model, nn.parallel.DistributedDataParallel) and torch.distributed.get_world_size() > 1
    totals = [torch.zeros((), dtype=torch.float64, device=plan.params[0].device) for plan in plans]
    replay()
    for inputs, targets in batches:
        with torch.enable_grad():
            loss = loss_fn(base(inputs), targets)
            grads = torch.autograd.grad(loss, flat, allow_unused=True)
        grads = [torch.zeros_like(p) if g is None else g for p, g in zip(flat, grads)]
        if ddp:  # training averages the ranks' gradients before the step: so does the measurement
            for g in grads:
                torch.distributed.all_reduce(g)
                g.div_(torch.distributed.get_world_size())
        start = 0
        for i, plan in enumerate(plans):
            end = start + len(plan.params)
            totals[i] += sum(_sq(g) for g in grads[start:end]) * w_sq[i]
            start = end
    return [float(total) / len(batches) for total in totals]


def _sq(t: torch.Tensor) -> torch.Tensor:
    return torch.linalg.vector_norm(t.detach(), dtype=torch.float64) ** 2


# -- rescaling, and the running statistics that follow it ----------------------------------------------------
def _rescale(base: nn.Module, inputs: Any, scaled: list[tuple[_Plan, float]],
             replay: Callable[[], None]) -> dict[str, tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
    """Multiply each layer by its factor; return, per norm with running statistics whose input it changed,
    the per-channel map ``(s, o, fitted)`` of that input, ``x → s·x + o``."""
    if not scaled:
        return {}
    norms = {name: m for name, m in base.named_modules()
             if isinstance(m, _NormBase) and m.track_running_stats and m.running_mean is not None}
    before = _norm_inputs(base, inputs, norms, replay)
    saved = [(p, p.detach().clone()) for plan, _ in scaled for p in plan.params]
    try:
        with torch.no_grad():
            for plan, factor in scaled:
                for p in plan.params:
                    p.mul_(factor)
        after = _norm_inputs(base, inputs, norms, replay)
        return {name: _fit(before[name], after[name]) for name in before
                if name in after and not torch.equal(before[name], after[name])}
    except BaseException:
        with torch.no_grad():
            for p, value in saved:
                p.copy_(value)
        raise


def _norm_inputs(base: nn.Module, inputs: Any, norms: dict[str, nn.Module],
                 replay: Callable[[], None]) -> dict[str, torch.Tensor]:
    """Each norm's input in one training forward, as float64 channel rows (C, ≤ FIT_ELEMENTS)."""
    seen: dict[str, torch.Tensor] = {}

    def capture(name: str, x: torch.Tensor) -> None:
        rows = x.detach().movedim(1, 0).reshape(x.shape[1], -1) if x.dim() > 1 else x.detach()[:, None]
        if name not in seen:  # a norm called twice: its first call
            seen[name] = rows[:, :FIT_ELEMENTS].double()

    hooks = [m.register_forward_pre_hook(lambda _m, args, name=name: capture(name, args[0]))
             for name, m in norms.items()]
    try:
        replay()
        with torch.no_grad():
            base(inputs)
    finally:
        for hook in hooks:
            hook.remove()
    return seen


def _fit(x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per row, the least-squares ``y ≈ s·x + o``; ``fitted`` is False where that does not explain ``y``
    (those rows get ``s = 1, o = 0``). Rows that did not change get exactly ``s = 1, o = 0``."""
    mx, my = x.mean(dim=1, keepdim=True), y.mean(dim=1, keepdim=True)
    dx, dy = x - mx, y - my
    var = (dx * dx).sum(dim=1)
    s = (dx * dy).sum(dim=1) / torch.where(var > 0, var, torch.ones_like(var))
    o = my.squeeze(1) - s * mx.squeeze(1)
    residual = (y - s[:, None] * x - o[:, None]).abs().amax(dim=1)
    fitted = (var > 0) & (residual <= FIT_RTOL * y.abs().amax(dim=1) + 1e-12)
    same = (x == y).all(dim=1)
    keep = same | ~fitted
    one = torch.ones_like(s)
    return torch.where(keep, one, s), torch.where(keep, torch.zeros_like(o), o), fitted | same


def _apply_maps(base: nn.Module, maps: dict[str, tuple[torch.Tensor, torch.Tensor, torch.Tensor]]) -> None:
    modules = dict(base.named_modules())
    with torch.no_grad():
        for name, (s, o, _) in maps.items():
            norm = modules[name]
            mean, var = norm.running_mean, norm.running_var
            mean.copy_((s * mean.double() + o).to(mean.dtype))
            var.copy_((s * s * var.double()).to(var.dtype))


def _warn_about(plans: list[_Plan], results: dict[str, LayerScale], optimizer: torch.optim.Optimizer,
                maps: dict[str, tuple[torch.Tensor, torch.Tensor, torch.Tensor]]) -> None:
    unfitted = [name for name, (_, _, fitted) in maps.items() if not bool(fitted.all())]
    if unfitted:
        warn(f"normwatch.equilibrium_init could not follow the rescaling in the running statistics of "
             f"{', '.join(unfitted)} (their input is not a per-channel s·x + o of the old one), so eval-mode "
             "outputs change there; training mode is unchanged.")
    left = [f"{name} ({scale.skipped})" for name, scale in results.items() if scale.skipped is not None]
    if left:
        warn(f"normwatch.equilibrium_init left {len(left)} layer(s) as they were: {', '.join(left)}.")
    stepped = [plan.layer.name for plan in plans if results[plan.layer.name].factor != 1.0
               and any(optimizer.state.get(p) for p in plan.params)]
    if stepped:
        warn(f"normwatch.equilibrium_init rescaled layer(s) {', '.join(stepped)} that the optimizer has already "
             "stepped; their momentum buffers keep the old scale (call it before training).")
