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
adam        m ← β₁m + (1−β₁)(g+λw); w ← w − η·m̂/(√v̂+ε)                    −η·(m − v)/(1−β₁ᵗ)/(√v̂+ε)
adamw       w ← (1−ηλ)w − η·m̂/(√v̂+ε)                                      −ηλw
lars        d = g+λw; b ← μb + t·d (b₁ = t·d), t = |w|/|d|; w ← w − ηb       −η·(b − v)
unknown     anything else                                                   (no split)
==========  ===========================================================  ===================================
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

import torch

from normwatch.optim import LARS

Family = Literal["sgd", "adam", "adamw", "lars", "unknown"]
DEFAULT_EMA_BETA = 0.9  # gradient memory for optimizers without momentum (the seed's ρ = 0.9)


@dataclass(frozen=True, kw_only=True)
class Hyper:
    """One parameter group's hyperparameters at one step, as the rule of its optimizer reads them.

    Attributes:
        rule: the rule the group follows (a LARS group with ``"lars": False`` is plain SGD).
        lr: η (a tensor lr is kept as a tensor and read on the writer thread).
        weight_decay: λ.
        momentum: μ of SGD/LARS (or another optimizer's momentum); 0 for Adam-type rules.
        dampening: τ of SGD.
        nesterov: SGD/LARS Nesterov momentum.
        beta1: β₁ of Adam-type rules (0 elsewhere).
        beta2: β₂ of Adam-type rules.
        eps: ε of Adam-type rules.
        amsgrad: Adam's AMSGrad.
        memory_beta: the factor by which normwatch's gradient memory v decays per step: μ where v mirrors a
            momentum buffer, β₁ for Adam, ``ema_beta`` elsewhere.
    """

    rule: Family
    lr: float | torch.Tensor
    weight_decay: float
    momentum: float = 0.0
    dampening: float = 0.0
    nesterov: bool = False
    beta1: float = 0.0
    beta2: float = 0.0
    eps: float = 0.0
    amsgrad: bool = False
    memory_beta: float = DEFAULT_EMA_BETA

    @property
    def momentum_tag(self) -> float:
        """The value of the ``momentum`` tag: μ, or β₁ for Adam-type rules."""
        return self.beta1 if self.beta1 else self.momentum


NOT_STEPPED = Hyper(rule="unknown", lr=0.0, weight_decay=0.0, memory_beta=0.0)  # a tensor no param group holds


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
    """Read a param group's hyperparameters (a tensor lr is kept as a tensor: read later, on the writer thread)."""
    lr = group.get("lr", 0.0)
    lr = float(lr) if not isinstance(lr, torch.Tensor) else lr.detach().clone()
    weight_decay = float(group.get("weight_decay", 0.0) or 0.0)
    if family in ("adam", "adamw"):
        beta1, beta2 = (float(beta) for beta in group["betas"])
        return Hyper(rule=family, lr=lr, weight_decay=weight_decay, beta1=beta1, beta2=beta2, eps=float(group["eps"]),
                     amsgrad=bool(group.get("amsgrad", False)), memory_beta=beta1)
    if family in ("sgd", "lars"):
        momentum = float(group.get("momentum", 0.0) or 0.0)
        dampening = float(group.get("dampening", 0.0) or 0.0) if family == "sgd" else 0.0
        rule: Family = "sgd" if family == "lars" and group.get("lars") is False else family
        return Hyper(rule=rule, lr=lr, weight_decay=weight_decay, momentum=momentum, dampening=dampening,
                     nesterov=bool(group.get("nesterov", False)),
                     memory_beta=momentum if momentum > 0 else default_beta)
    if "betas" in group:  # NAdam's β₁, ...
        return Hyper(rule=family, lr=lr, weight_decay=weight_decay, beta1=float(group["betas"][0]),
                     memory_beta=default_beta)
    return Hyper(rule=family, lr=lr, weight_decay=weight_decay, momentum=float(group.get("momentum", 0.0) or 0.0),
                 memory_beta=default_beta)  # RMSprop's momentum, ...


def mirrors_momentum(hp: Hyper) -> bool:
    """Whether ``v`` replays the optimizer's momentum buffer on gradients alone (SGD/LARS with μ > 0)."""
    return hp.rule in ("sgd", "lars") and hp.momentum > 0


def memory_coefficients(hp: Hyper, first: bool) -> tuple[float, float]:
    """``(a, b)`` of the memory's step ``v ← a·v + b·(t·g)``: where v mirrors a momentum buffer, μ and 1−τ
    (its first step, when the optimizer makes the buffer: ``v = t·g``); elsewhere a moving average of the
    gradients, ``β`` and ``1−β`` (Adam's m on gradients alone, or ``ema_beta``). ``t`` is LARS's trust ratio."""
    if mirrors_momentum(hp):
        return (0.0, 1.0) if first else (hp.momentum, 1.0 - hp.dampening)
    return hp.memory_beta, 1.0 - hp.memory_beta


@dataclass(frozen=True)
class Decoupled:
    """A weight-decay part proportional to the weight: ``u_wd = coefficient·w``."""

    coefficient: float | torch.Tensor  # a number, a 0-dim tensor (tensor lr), or per block ``(blocks, 1)``


Spread = Callable[[str], torch.Tensor]  # spread(per-tensor value) → ``(blocks, 1)``


def state_keys(hp: Hyper) -> tuple[str, ...]:
    """The optimizer's per-element state tensors :func:`decay_part` reads (after the step)."""
    if mirrors_momentum(hp):
        return ("momentum_buffer",)
    if hp.rule == "adam":
        return ("exp_avg", "max_exp_avg_sq" if hp.amsgrad else "exp_avg_sq")
    return ()


def per_tensor_keys(hp: Hyper) -> tuple[str, ...]:
    """The per-tensor values the step reads per block: LARS's trust ratio, Adam's bias corrections."""
    if hp.rule == "lars":
        return ("trust",)
    if hp.rule == "adam":
        return ("inv_bias1", "bias2")
    return ()


def decoupled_part(hp: Hyper, spread: Spread) -> Decoupled | None:
    """The weight-decay part when it is proportional to the weight, ``u_wd = c·w`` (else None)."""
    lr, wd = hp.lr, hp.weight_decay
    if hp.rule == "adamw" or (hp.rule == "sgd" and hp.momentum == 0):
        return Decoupled(-lr * wd)
    if hp.rule == "lars" and hp.momentum == 0:
        return Decoupled(spread("trust") * (-lr * wd))
    return None


def decay_part(hp: Hyper, w: torch.Tensor, v: torch.Tensor, state: dict[str, torch.Tensor],
               spread: Spread) -> torch.Tensor | Decoupled | None:
    """The weight-decay part u_wd of this step, for ``(blocks, BLOCK)`` rows of one chunk of tensors.

    ``w`` is w_t, ``v`` the gradient memory after this step's update, ``state`` scratch rows holding the
    optimizer's :func:`state_keys` after the step (overwritten here), ``spread`` a per-tensor value per block
    (:func:`per_tensor_keys`: ``"trust"``, LARS's trust ratio; ``"inv_bias1"``, ``"bias2"``: Adam's
    ``1/(1−β₁ᵗ)`` and ``√(1−β₂ᵗ)``, computed in double as Adam does). Returns u_wd in one of the ``state``
    rows, or :class:`Decoupled`, or None when no rule applies.
    """
    decoupled = decoupled_part(hp, spread)
    if decoupled is not None:
        return decoupled
    lr, wd = hp.lr, hp.weight_decay
    if hp.rule in ("sgd", "lars"):
        decay = state["momentum_buffer"].sub_(v)  # the decay the momentum buffer carries
        if hp.nesterov:
            decay.mul_(hp.momentum).add_(w, alpha=wd)
        return decay.mul_(-lr)
    if hp.rule == "adam":  # Adam's step on m's decay share m − v: −η/(1−β₁ᵗ) · (m − v)/(√v₂/√(1−β₂ᵗ) + ε)
        decay = state["exp_avg"].sub_(v)
        denom = state["max_exp_avg_sq" if hp.amsgrad else "exp_avg_sq"].sqrt_().div_(spread("bias2")).add_(hp.eps)
        return decay.div_(denom).mul_(spread("inv_bias1")).mul_(-lr)
    return None
