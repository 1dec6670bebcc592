"""SGD and LARS: coupled weight decay through a momentum buffer.

========  ===================================================================  ==================================
rule      update (η = lr, λ = weight_decay, μ = momentum, τ = dampening)        weight-decay part u_wd
========  ===================================================================  ==================================
sgd       d = ĝ + λw; b ← μb + (1−τ)d (b₁ = d); w ← w − η·b, or Nesterov          −η(b − v), or −η(λw + μ(b − v));
          w ← w − η(d + μb)                                                      −ηλw without momentum
lars      d = ĝ + λw, t its trust ratio (per tensor or per channel); s = t⊙d;     −η(b − v), or −η(λt⊙w + μ(b − v));
          b ← μb + s (b₁ = s); w ← w − η·b, or Nesterov w ← w − η(s + μb)          −ηλt⊙w without momentum
========  ===================================================================  ==================================

``ĝ`` is −g under SGD's ``maximize``; ``v`` replays the buffer on ``ĝ`` alone (LARS: on ``t⊙ĝ``), so ``b − v``
is exactly the decay the buffer carries. LARS is :class:`normwatch.optim.LARS` (its groups with
``"lars": False`` follow ``sgd``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, ClassVar

import torch

from normwatch.rules.base import Decoupled, Hyper, MomentumBufferRule, Rows, Spread, number, read_lr


class SGDRule(MomentumBufferRule):
    name: ClassVar[str] = "sgd"

    def read(self, group: dict[str, Any], ema_beta: float) -> Hyper:
        momentum = number(group.get("momentum"))
        return Hyper(rule=self.name, lr=read_lr(group), weight_decay=number(group.get("weight_decay")),
                     momentum=momentum, dampening=number(group.get("dampening")),
                     nesterov=bool(group.get("nesterov", False)), maximize=bool(group.get("maximize", False)),
                     memory_beta=momentum if momentum > 0 else ema_beta)

    def state_keys(self, hp: Hyper) -> tuple[str, ...]:
        return ("momentum_buffer",) if self.mirrors(hp) else ()

    def decay(self, hp: Hyper, w: torch.Tensor, v: torch.Tensor, state: Rows,
              spread: Spread) -> torch.Tensor | Decoupled | None:
        if not self.mirrors(hp):
            return Decoupled(-hp.lr * hp.weight_decay)
        decay = state["momentum_buffer"].sub_(v)  # the decay the momentum buffer carries
        if hp.nesterov:
            decay.mul_(hp.momentum).add_(w, alpha=hp.weight_decay)
        return decay.mul_(-hp.lr)


class LARSRule(SGDRule):
    name: ClassVar[str] = "lars"

    def read(self, group: dict[str, Any], ema_beta: float) -> Hyper:
        hp = super().read(group, ema_beta)
        variant = (("trust", group.get("trust", "tensor")), ("guard", group.get("guard")),
                   ("grad_norm_beta", group.get("grad_norm_beta", 0.0)))
        return Hyper(rule=self.name, lr=hp.lr, weight_decay=hp.weight_decay, momentum=hp.momentum,
                     nesterov=hp.nesterov, extra=variant, memory_beta=hp.memory_beta)

    def theory_applies(self, hp: Hyper) -> bool:
        """The theory is the seed's LARS (eq. 4): one trust ratio |w|/|g + λw| per tensor, heavy ball."""
        return (hp.get("trust") == "tensor" and hp.get("guard") is None and not hp.get("grad_norm_beta")
                and not hp.nesterov)

    def state_keys(self, hp: Hyper) -> tuple[str, ...]:
        return ("trust_ratio", *super().state_keys(hp))

    def uses_trust(self, hp: Hyper) -> bool:
        return True

    def memory_scale(self, hp: Hyper, state: Rows, spread: Spread) -> torch.Tensor | None:
        return state["trust_ratio"]

    def scaled_gradients(self, hp: Hyper, grads: list[torch.Tensor],
                         states: Sequence[Mapping[str, Any]]) -> list[torch.Tensor]:
        return torch._foreach_mul(grads, [s["trust_ratio"] for s in states])

    def decay(self, hp: Hyper, w: torch.Tensor, v: torch.Tensor, state: Rows,
              spread: Spread) -> torch.Tensor | Decoupled | None:
        trust = state["trust_ratio"]
        if not self.mirrors(hp):
            return trust.mul_(w).mul_(-hp.lr * hp.weight_decay)
        decay = state["momentum_buffer"].sub_(v)
        if hp.nesterov:
            decay.mul_(hp.momentum).addcmul_(trust, w, value=hp.weight_decay)
        return decay.mul_(-hp.lr)
