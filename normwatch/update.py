"""What an optimizer step is made of: its family, hyperparameters, and the weight-decay part of the update.

The update of one step, u = w_{t+1} − w_t, splits exactly into a weight-decay part and a gradient part,
u = u_wd + u_g, following the optimizer's own rule. normwatch keeps one buffer per tracked tensor, ``v``:
the optimizer's momentum recursion applied to the gradients alone. It serves twice: ``g_t·v_{t−1}`` is
the gradient autocorrelation, and (for SGD and LARS) the momentum buffer minus ``v`` is exactly the
decay that momentum still carries.

==========  ===========================================================  ===================================
family      update (PyTorch's own, η = lr, λ = weight_decay)              weight-decay part u_wd
==========  ===========================================================  ===================================
sgd         b ← μb + (1−τ)(g+λw) (b₁ = g+λw); d = b, or g+λw+μb (Nesterov)  −η·(b − v), or −η·(λw + μ(b − v));
            w ← w − ηd                                                     −ηλw without momentum
adam        m ← β₁m + (1−β₁)(g+λw); w ← w − η·m̂/(√v̂+ε)                    u ⊙ (m − v)/m (same denominator)
adamw       w ← (1−ηλ)w − η·m̂/(√v̂+ε)                                      −ηλw
lars        d = g+λw; b ← μb + t·d (b₁ = t·d), t = |w|/|d|; w ← w − ηb       −η·(b − v)
unknown     anything else                                                   (no split)
==========  ===========================================================  ===================================
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import torch

from normwatch.optim import LARS

Family = Literal["sgd", "adam", "adamw", "lars", "unknown"]
DEFAULT_EMA_BETA = 0.9  # gradient memory for optimizers without momentum (the seed's ρ = 0.9)


@dataclass(frozen=True)
class Hyper:
    """One parameter group's hyperparameters at one step.

    ``momentum`` is SGD's/LARS's μ or Adam's β₁; ``ema_beta`` is the decay of normwatch's gradient memory;
    ``family`` is the rule the group follows (a LARS group with ``"lars": False`` is plain SGD).
    """

    family: Family
    lr: float
    weight_decay: float
    momentum: float
    dampening: float
    nesterov: bool
    ema_beta: float


def family_of(optimizer: torch.optim.Optimizer) -> Family:
    """The update rule normwatch knows ``optimizer`` by; ``"unknown"`` still gets every measured metric."""
    if isinstance(optimizer, LARS):
        return "lars"
    groups = optimizer.param_groups
    if any(group.get("maximize", False) for group in groups):
        return "unknown"
    if type(optimizer) is torch.optim.SGD:
        return "sgd"
    if type(optimizer) in (torch.optim.Adam, torch.optim.AdamW):
        decoupled = [group.get("decoupled_weight_decay", isinstance(optimizer, torch.optim.AdamW)) for group in groups]
        return "adamw" if all(decoupled) else "adam" if not any(decoupled) else "unknown"
    return "unknown"


def hyper(family: Family, group: dict[str, Any], default_beta: float = DEFAULT_EMA_BETA) -> Hyper:
    """Read a param group's hyperparameters (a tensor lr is read as a number: a host sync, once per flush)."""
    lr = group.get("lr", 0.0)
    lr = float(lr) if not isinstance(lr, torch.Tensor) else lr.detach().clone()  # read later, on the writer thread
    weight_decay = float(group.get("weight_decay", 0.0) or 0.0)
    if family in ("adam", "adamw"):
        beta1 = float(group["betas"][0])
        return Hyper(family, lr, weight_decay, beta1, 0.0, False, beta1)
    if family in ("sgd", "lars"):
        momentum = float(group.get("momentum", 0.0) or 0.0)
        dampening = float(group.get("dampening", 0.0) or 0.0) if family == "sgd" else 0.0
        nesterov = bool(group.get("nesterov", False))
        rule: Family = "sgd" if family == "lars" and group.get("lars") is False else family
        return Hyper(rule, lr, weight_decay, momentum, dampening, nesterov, momentum if momentum > 0 else default_beta)
    return Hyper(family, lr, weight_decay, 0.0, 0.0, False, default_beta)


def mirrors_momentum(family: Family, hp: Hyper) -> bool:
    """Whether ``v`` replays the optimizer's momentum buffer on gradients alone (SGD/LARS with μ > 0)."""
    return family in ("sgd", "lars") and hp.momentum > 0


def advance_memory(family: Family, hp: Hyper, vs: list[torch.Tensor], gs: list[torch.Tensor],
                   trusts: list[torch.Tensor] | None, first: list[bool]) -> None:
    """Advance the gradient memories of one param group in place, a few foreach launches for all tensors:
    ``v ← μv + (1−τ)·t·g`` (``v = t·g`` on the first step) when ``v`` mirrors a momentum buffer, else the
    moving average ``v ← βv + (1−β)g`` (Adam's ``m`` on gradients alone).
    """
    if not vs:
        return
    if mirrors_momentum(family, hp):
        steps = gs if trusts is None else [g * t for g, t in zip(gs, trusts)]
        fresh = [i for i, f in enumerate(first) if f]
        going = [i for i, f in enumerate(first) if not f]
        if fresh:
            torch._foreach_copy_([vs[i] for i in fresh], [steps[i] for i in fresh])
        if going:
            torch._foreach_mul_([vs[i] for i in going], hp.momentum)
            torch._foreach_add_([vs[i] for i in going], [steps[i] for i in going], alpha=1.0 - hp.dampening)
    else:
        torch._foreach_lerp_(vs, [g.to(v.dtype) for g, v in zip(gs, vs)], 1.0 - hp.ema_beta)


def decay_part(family: Family, hp: Hyper, states: list[dict[str, Any]], ws: list[torch.Tensor],
               us: list[torch.Tensor], vs: list[torch.Tensor], trusts: list[torch.Tensor] | None,
               out: list[torch.Tensor]) -> None:
    """Write the weight-decay part u_wd of each measured update ``u`` into ``out`` (not for ``"unknown"``).

    ``ws`` are w_t, ``vs`` the gradient memories *after* this step's :func:`advance_memory`, ``states``
    the optimizer's state per tensor after the step.
    """
    lr, wd = hp.lr, hp.weight_decay
    if family == "adamw" or (family in ("sgd", "lars") and hp.momentum == 0):
        torch._foreach_copy_(out, ws)  # u_wd = −ηλw (LARS: −ηλ·t·w)
        if family == "lars" and trusts is not None:
            torch._foreach_mul_(out, trusts)
        torch._foreach_mul_(out, _factor(-lr * wd, out[0]))
    elif family in ("sgd", "lars"):  # the decay the momentum buffer carries: b − v
        torch._foreach_copy_(out, [state["momentum_buffer"] for state in states])
        torch._foreach_sub_(out, vs)
        if hp.nesterov:  # d = g + λw + μb: its decay part is λw + μ(b − v)
            torch._foreach_mul_(out, hp.momentum)
            torch._foreach_add_(out, ws, alpha=wd)
        torch._foreach_mul_(out, _factor(-lr, out[0]))
    elif family == "adam":  # u = −η·m̂/(√v̂+ε) and m is linear in (g + λw): u_wd = u ⊙ (m − v)/m
        for state, u, v, o in zip(states, us, vs, out):
            m = state["exp_avg"]
            torch.mul(u, torch.where(m != 0, (m - v) / m, torch.zeros_like(m)), out=o)
    else:
        raise ValueError(f"Expected a family with a weight-decay split, but got {family!r}.")


def _factor(x: float | torch.Tensor, like: torch.Tensor) -> float | torch.Tensor:
    """A scalar for foreach ops: a float, or a tensor on ``like``'s device (a CPU tensor lr is read: no sync)."""
    return float(x) if isinstance(x, torch.Tensor) and x.device != like.device else x
