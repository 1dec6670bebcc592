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


def mirrors_momentum(family: Family, hp: Hyper) -> bool:
    """Whether ``v`` replays the optimizer's momentum buffer on gradients alone (SGD/LARS with μ > 0)."""
    return family in ("sgd", "lars") and hp.momentum > 0


def advance_memory(family: Family, hp: Hyper, v: torch.Tensor, g: torch.Tensor, trust: torch.Tensor | None,
                   first: bool) -> None:
    """Advance the gradient memory in place: ``v ← μv + (1−τ)·t·g`` (``v = t·g`` on the first step) when it
    mirrors a momentum buffer, else the moving average ``v ← βv + (1−β)g`` (Adam's ``m`` on gradients alone).
    """
    if mirrors_momentum(family, hp):
        step = g if trust is None else g * trust
        if first:
            v.copy_(step)
        else:
            v.mul_(hp.momentum).add_(step, alpha=1.0 - hp.dampening)
    else:
        v.lerp_(g.to(v.dtype), 1.0 - hp.memory_beta)


def decay_part(family: Family, hp: Hyper, state: dict[str, Any], w_prev: torch.Tensor, u: torch.Tensor,
               v: torch.Tensor, trust: torch.Tensor | None) -> torch.Tensor | None:
    """The weight-decay part u_wd of the measured update ``u`` (None when the family is unknown).

    ``v`` is the gradient memory *after* this step's :func:`advance_memory`; ``state`` the optimizer's
    state for this tensor after the step.
    """
    lr, wd = hp.lr, hp.weight_decay
    if family == "adamw" or (family == "sgd" and hp.momentum == 0):
        return w_prev * (-lr * wd)
    if family == "lars" and hp.momentum == 0:
        return w_prev * (trust * (-lr * wd)) if trust is not None else w_prev * (-lr * wd)
    if family in ("sgd", "lars"):
        decay_buffer = state["momentum_buffer"] - v  # the decay the momentum buffer carries
        if hp.nesterov:
            return (w_prev * wd).add_(decay_buffer, alpha=hp.momentum).mul_(-lr)
        return decay_buffer.mul_(-lr)
    if family == "adam":  # Adam's step on m's decay share m − v: −η/(1−β₁ᵗ) · (m − v)/(√(v̂₂/(1−β₂ᵗ)) + ε)
        step = state["step"].double()  # t after this step, on the device for fused/capturable Adam; Adam's own
        # bias corrections are computed in double
        second = state["max_exp_avg_sq"] if hp.amsgrad else state["exp_avg_sq"]
        denom = (second.sqrt() / torch.sqrt(1 - hp.beta2 ** step)).add_(hp.eps)
        return (state["exp_avg"] - v).div_(denom).mul_(-hp.lr / (1 - hp.beta1 ** step))
    return None
