"""Decoupled weight decay, ``w ← (1 − ηλ)·w − η·U`` with U independent of λ: ``u_wd = −ηλw`` exactly.

=========  ===========================================================  ========================================
rule       optimizers                                                   gradient memory v
=========  ===========================================================  ========================================
adamw      AdamW; Adam with ``decoupled_weight_decay=True``              β₁ average of ĝ, = Adam's m (adopted
nadamw     NAdam with ``decoupled_weight_decay=True``                    exactly when attached mid-run)
radamw     RAdam with ``decoupled_weight_decay=True``
muon       Muon (only 2-D parameters; decay ``lr·weight_decay`` with     μ average of g, = its momentum buffer
           the group's lr, the update scaled by ``adjust_lr_fn``)
adafactor  Adafactor (decay ``lr·weight_decay`` with the group's lr)     ``ema_beta`` average of ĝ
decoupled  an optimizer normwatch does not know, declared decoupled      ``ema_beta`` average of ĝ
           (``attach(weight_decay="decoupled")``, as Lion's is)
asgd       ASGD: ``w ← (1 − λ_A·ηₜ)·w − ηₜ(ĝ + λw)``, ηₜ the state ``eta``     ``ema_beta`` average of ĝ
           before the step: u_wd = −ηₜ(λ + λ_A)·w, both decay terms
=========  ===========================================================  ========================================
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch

from normwatch.rules.adam import AdamRule
from normwatch.rules.base import Decoupled, DecoupledRule, Hyper, Rows, Spread, number, read_lr


class AdamWRule(AdamRule):
    name: ClassVar[str] = "adamw"

    def hides_decay(self, hp: Hyper) -> bool:
        return False  # m holds gradients alone

    def state_keys(self, hp: Hyper) -> tuple[str, ...]:
        return ()

    def scalar_keys(self, hp: Hyper) -> tuple[str, ...]:
        return ()

    def per_tensor(self, hp: Hyper, scalars: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        return {}

    def decay(self, hp: Hyper, w: torch.Tensor, v: torch.Tensor, state: Rows,
              spread: Spread) -> torch.Tensor | Decoupled | None:
        return Decoupled(-hp.lr * hp.weight_decay)


class NAdamWRule(AdamWRule):
    name: ClassVar[str] = "nadamw"

    def _extra(self, group: dict[str, Any]) -> tuple[tuple[str, Any], ...]:
        return (("momentum_decay", float(group["momentum_decay"])),)


class RAdamWRule(AdamWRule):
    name: ClassVar[str] = "radamw"


class MuonRule(DecoupledRule):
    name: ClassVar[str] = "muon"

    def read(self, group: dict[str, Any], ema_beta: float) -> Hyper:
        momentum = number(group.get("momentum"))
        return Hyper(rule=self.name, lr=read_lr(group), weight_decay=number(group.get("weight_decay")),
                     momentum=momentum, nesterov=bool(group.get("nesterov", False)),
                     extra=(("adjust_lr_fn", group.get("adjust_lr_fn")),), memory_beta=momentum)

    def buffer_key(self, hp: Hyper) -> str | None:
        return "momentum_buffer"


class AdafactorRule(DecoupledRule):
    name: ClassVar[str] = "adafactor"

    def read(self, group: dict[str, Any], ema_beta: float) -> Hyper:
        hp = super().read(group, ema_beta)
        return Hyper(rule=self.name, lr=hp.lr, weight_decay=hp.weight_decay, maximize=hp.maximize,
                     extra=(("eps2", float(group["eps"][1])),), memory_beta=ema_beta)


class ASGDRule(DecoupledRule):
    name: ClassVar[str] = "asgd"

    def read(self, group: dict[str, Any], ema_beta: float) -> Hyper:
        hp = super().read(group, ema_beta)
        return Hyper(rule=self.name, lr=hp.lr, weight_decay=hp.weight_decay, maximize=hp.maximize,
                     extra=(("lambd", float(group["lambd"])), ("alpha", float(group["alpha"]))),
                     memory_beta=ema_beta)

    def scalar_keys(self, hp: Hyper) -> tuple[str, ...]:
        return ("step",)

    def per_tensor(self, hp: Hyper, scalars: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        step, lambd = scalars["step"], hp.get("lambd")
        lr = hp.lr.to(step.device, torch.float64) if isinstance(hp.lr, torch.Tensor) else hp.lr
        eta = lr / (1 + lambd * lr * (step - 1)) ** hp.get("alpha")  # the η the step used (state["eta"] is next)
        return {"coefficient": -eta * (hp.weight_decay + lambd)}

    def decay(self, hp: Hyper, w: torch.Tensor, v: torch.Tensor, state: Rows,
              spread: Spread) -> torch.Tensor | Decoupled | None:
        return Decoupled(spread("coefficient"))
