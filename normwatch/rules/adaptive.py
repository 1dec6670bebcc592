"""RMSprop, Adagrad and Adadelta: coupled L2, ``d = ĝ + λw``, divided by a per-element denominator.

Each step is linear in ``d`` given the denominator the optimizer computed this step, so the step on ``λw``
alone is exactly u_wd (state after the step unless said otherwise):

========  ==========================================================================  ============================
rule      update (η = lr, λ = weight_decay)                                           weight-decay part u_wd
========  ==========================================================================  ============================
rmsprop   v₂ ← αv₂ + (1−α)d²; a = √(v₂ − ḡ²) + ε (ḡ ← lerp(ḡ, d, 1−α) when          −ηλw/a without momentum;
          ``centered``, else a = √v₂ + ε); w ← w − η·d/a, or b ← μb + d/a;           −η(b − v) with momentum (v
          w ← w − η·b                                                                   replays b on ĝ/a)
adagrad   Σ ← Σ + d²; w ← w − ηₜ·d/(√Σ + ε), ηₜ = η/(1 + (t−1)·lr_decay)              −ηₜλw/(√Σ + ε)
adadelta  v₂ ← ρv₂ + (1−ρ)d²; δ = √(Δ + ε)/√(v₂ + ε)·d with Δ the state                 −ηλw·√(Δ + ε)/√(v₂ + ε)
          ``acc_delta`` *before* the step; Δ ← ρΔ + (1−ρ)δ²; w ← w − η·δ
========  ==========================================================================  ============================
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, ClassVar

import torch

from normwatch.rules.base import Decoupled, Hyper, MomentumBufferRule, Rows, Rule, Spread, number, read_lr


class RMSpropRule(MomentumBufferRule):
    name: ClassVar[str] = "rmsprop"

    def read(self, group: dict[str, Any], ema_beta: float) -> Hyper:
        momentum = number(group.get("momentum"))
        return Hyper(rule=self.name, lr=read_lr(group), weight_decay=number(group.get("weight_decay")),
                     momentum=momentum, eps=number(group.get("eps")), maximize=bool(group.get("maximize", False)),
                     extra=(("alpha", float(group["alpha"])), ("centered", bool(group.get("centered")))),
                     memory_beta=momentum if momentum > 0 else ema_beta)

    def state_keys(self, hp: Hyper) -> tuple[str, ...]:
        keys = ("square_avg", "grad_avg") if hp.get("centered") else ("square_avg",)
        return (*keys, "momentum_buffer") if self.mirrors(hp) else keys

    def memory_scale(self, hp: Hyper, state: Rows, spread: Spread) -> torch.Tensor | None:
        return self._denominator(hp, state).reciprocal_()

    def scaled_gradients(self, hp: Hyper, grads: list[torch.Tensor],
                         states: Sequence[Mapping[str, Any]]) -> list[torch.Tensor]:
        square = [s["square_avg"] for s in states]
        if hp.get("centered"):
            mean = [s["grad_avg"] for s in states]
            square = torch._foreach_addcmul(square, mean, mean, value=-1)
        denominator = torch._foreach_sqrt(square)
        torch._foreach_add_(denominator, hp.eps)
        return torch._foreach_div(grads, denominator)

    def decay(self, hp: Hyper, w: torch.Tensor, v: torch.Tensor, state: Rows,
              spread: Spread) -> torch.Tensor | Decoupled | None:
        if self.mirrors(hp):
            return state["momentum_buffer"].sub_(v).mul_(-hp.lr)
        return self._denominator(hp, state).reciprocal_().mul_(w).mul_(-hp.lr * hp.weight_decay)

    @staticmethod
    def _denominator(hp: Hyper, state: Rows) -> torch.Tensor:
        """a = √(v₂ − ḡ²) + ε (centered) or √v₂ + ε, in the ``square_avg`` row."""
        square = state["square_avg"]
        if hp.get("centered"):
            square.addcmul_(state["grad_avg"], state["grad_avg"], value=-1)
        return square.sqrt_().add_(hp.eps)


class AdagradRule(Rule):
    name: ClassVar[str] = "adagrad"

    def read(self, group: dict[str, Any], ema_beta: float) -> Hyper:
        return Hyper(rule=self.name, lr=read_lr(group), weight_decay=number(group.get("weight_decay")),
                     eps=number(group.get("eps")), maximize=bool(group.get("maximize", False)),
                     extra=(("lr_decay", number(group.get("lr_decay"))),), memory_beta=ema_beta)

    def state_keys(self, hp: Hyper) -> tuple[str, ...]:
        return ("sum",)

    def scalar_keys(self, hp: Hyper) -> tuple[str, ...]:
        return ("step",)

    def per_tensor(self, hp: Hyper, scalars: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        step = scalars["step"]
        lr = hp.lr.to(step.device, torch.float64) if isinstance(hp.lr, torch.Tensor) else hp.lr
        return {"scale": -lr * hp.weight_decay / (1 + (step - 1) * hp.get("lr_decay"))}

    def decay(self, hp: Hyper, w: torch.Tensor, v: torch.Tensor, state: Rows,
              spread: Spread) -> torch.Tensor | Decoupled | None:
        return state["sum"].sqrt_().add_(hp.eps).reciprocal_().mul_(w).mul_(spread("scale"))


class AdadeltaRule(Rule):
    name: ClassVar[str] = "adadelta"

    def read(self, group: dict[str, Any], ema_beta: float) -> Hyper:
        return Hyper(rule=self.name, lr=read_lr(group), weight_decay=number(group.get("weight_decay")),
                     eps=number(group.get("eps")), maximize=bool(group.get("maximize", False)),
                     memory_beta=ema_beta)

    def state_keys(self, hp: Hyper) -> tuple[str, ...]:
        return ("square_avg",)

    def pre_state_keys(self, hp: Hyper) -> tuple[str, ...]:
        return ("acc_delta",)

    def decay(self, hp: Hyper, w: torch.Tensor, v: torch.Tensor, state: Rows,
              spread: Spread) -> torch.Tensor | Decoupled | None:
        std = state["square_avg"].add_(hp.eps).sqrt_()
        return state["acc_delta"].add_(hp.eps).sqrt_().div_(std).mul_(w).mul_(-hp.lr * hp.weight_decay)
