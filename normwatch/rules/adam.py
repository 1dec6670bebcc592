"""Adam and its relatives with coupled L2 weight decay: the decay enters the first moment m.

With ``d = ĝ + λw`` fed to the state (``ĝ`` = −g under ``maximize``) and ``v`` the same moving average of ĝ
alone (β₁), ``m − v`` is the share of m that λw contributed; each optimizer's step is linear in m given its
denominator, so that share's step is exactly u_wd (t the step count after this step, ε each one's epsilon):

=======  =======================================================================  ================================
rule     update                                                                  weight-decay part u_wd
=======  =======================================================================  ================================
adam     w ← w − η/(1−β₁ᵗ)·m/(√v₂/√(1−β₂ᵗ) + ε) (v₂: its max under AMSGrad)        that step on m − v
nadam    w ← w − [η(1−μₜ)/(1−Πₜ)·d + ημₜ₊₁/(1−Πₜμₜ₊₁)·m]/(√(v₂/(1−β₂ᵗ)) + ε)       −[η(1−μₜ)/(1−Πₜ)·λw +
         μₜ = β₁(1 − ½·0.96^(tψ)), Πₜ = μ₁⋯μₜ (state ``mu_product``)               ημₜ₊₁/(1−Πₜμₜ₊₁)·(m − v)]/denom
radam    ρₜ > 5: w ← w − η/(1−β₁ᵗ)·m·rₜ√(1−β₂ᵗ)/(√v₂ + ε); else w ← w − η/(1−β₁ᵗ)·m   that step on m − v
adamax   u∞ ← max(β₂u∞, |d| + ε); w ← w − η/(1−β₁ᵗ)·m/u∞                           that step on m − v
=======  =======================================================================  ================================

(RAdam: ρ∞ = 2/(1−β₂) − 1, ρₜ = ρ∞ − 2tβ₂ᵗ/(1−β₂ᵗ), rₜ = √((ρₜ−4)(ρₜ−2)ρ∞/((ρ∞−4)(ρ∞−2)ρₜ)).) The bias
corrections are computed in double, as the optimizers do. Decoupled variants (AdamW, ``decoupled_weight_decay``)
are in :mod:`normwatch.rules.decoupled`.
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch

from normwatch.rules.base import Decoupled, Hyper, Rows, Rule, Spread, number, read_lr


class AdamRule(Rule):
    """Adam with coupled L2 (``torch.optim.Adam``, ``decoupled_weight_decay=False``)."""

    name: ClassVar[str] = "adam"

    def read(self, group: dict[str, Any], ema_beta: float) -> Hyper:
        beta1, beta2 = (float(beta) for beta in group["betas"])
        return Hyper(rule=self.name, lr=read_lr(group), weight_decay=number(group.get("weight_decay")),
                     beta1=beta1, beta2=beta2, eps=number(group.get("eps")), amsgrad=bool(group.get("amsgrad")),
                     maximize=bool(group.get("maximize", False)), extra=self._extra(group), memory_beta=beta1)

    def _extra(self, group: dict[str, Any]) -> tuple[tuple[str, Any], ...]:
        return ()

    def buffer_key(self, hp: Hyper) -> str | None:
        return "exp_avg"

    def hides_decay(self, hp: Hyper) -> bool:
        return hp.weight_decay > 0

    def state_keys(self, hp: Hyper) -> tuple[str, ...]:
        return ("exp_avg", "max_exp_avg_sq" if hp.amsgrad else "exp_avg_sq")

    def scalar_keys(self, hp: Hyper) -> tuple[str, ...]:
        return ("step",)

    def per_tensor(self, hp: Hyper, scalars: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        step = scalars["step"]
        return {"scale": -_lr(hp, step) / (1 - hp.beta1 ** step), "bias2": (1 - hp.beta2 ** step).sqrt()}

    def decay(self, hp: Hyper, w: torch.Tensor, v: torch.Tensor, state: Rows,
              spread: Spread) -> torch.Tensor | Decoupled | None:
        decay = state["exp_avg"].sub_(v)
        denom = state[self.state_keys(hp)[1]].sqrt_().div_(spread("bias2")).add_(hp.eps)
        return decay.div_(denom).mul_(spread("scale"))


class NAdamRule(AdamRule):
    """NAdam with coupled L2 (``torch.optim.NAdam``, ``decoupled_weight_decay=False``)."""

    name: ClassVar[str] = "nadam"

    def _extra(self, group: dict[str, Any]) -> tuple[tuple[str, Any], ...]:
        return (("momentum_decay", float(group["momentum_decay"])),)

    def state_keys(self, hp: Hyper) -> tuple[str, ...]:
        return ("exp_avg", "exp_avg_sq")

    def scalar_keys(self, hp: Hyper) -> tuple[str, ...]:
        return ("step", "mu_product")

    def per_tensor(self, hp: Hyper, scalars: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        step, product, psi = scalars["step"], scalars["mu_product"], hp.get("momentum_decay")
        mu = hp.beta1 * (1.0 - 0.5 * 0.96 ** (step * psi))
        mu_next = hp.beta1 * (1.0 - 0.5 * 0.96 ** ((step + 1) * psi))
        lr = _lr(hp, step)
        return {"on_decay": -lr * (1.0 - mu) / (1.0 - product) * hp.weight_decay,
                "on_m": -lr * mu_next / (1.0 - product * mu_next), "bias2": 1 - hp.beta2 ** step}

    def decay(self, hp: Hyper, w: torch.Tensor, v: torch.Tensor, state: Rows,
              spread: Spread) -> torch.Tensor | Decoupled | None:
        denom = state["exp_avg_sq"].div_(spread("bias2")).sqrt_().add_(hp.eps)
        decay = state["exp_avg"].sub_(v).mul_(spread("on_m")).addcmul_(w, spread("on_decay"))
        return decay.div_(denom)


class RAdamRule(AdamRule):
    """RAdam with coupled L2 (``torch.optim.RAdam``, ``decoupled_weight_decay=False``)."""

    name: ClassVar[str] = "radam"

    def state_keys(self, hp: Hyper) -> tuple[str, ...]:
        return ("exp_avg", "exp_avg_sq")

    def per_tensor(self, hp: Hyper, scalars: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        step = scalars["step"]
        bias2 = 1 - hp.beta2 ** step
        rho_inf = 2 / (1 - hp.beta2) - 1
        rho = rho_inf - 2 * step * hp.beta2 ** step / bias2
        adaptive = rho > 5.0
        safe = torch.where(adaptive, rho, torch.full_like(rho, 6.0))  # r is read only where ρ > 5
        rect = ((safe - 4) * (safe - 2) * rho_inf / ((rho_inf - 4) * (rho_inf - 2) * safe)).sqrt()
        return {"scale": -_lr(hp, step) / (1 - hp.beta1 ** step),
                "plain": (~adaptive).double(), "adaptive": torch.where(adaptive, rect * bias2.sqrt(), 0.0)}

    def decay(self, hp: Hyper, w: torch.Tensor, v: torch.Tensor, state: Rows,
              spread: Spread) -> torch.Tensor | Decoupled | None:
        factor = state["exp_avg_sq"].sqrt_().add_(hp.eps).reciprocal_().mul_(spread("adaptive")).add_(spread("plain"))
        return state["exp_avg"].sub_(v).mul_(factor).mul_(spread("scale"))


class AdamaxRule(AdamRule):
    """Adamax (``torch.optim.Adamax``; its weight decay is always coupled)."""

    name: ClassVar[str] = "adamax"

    def state_keys(self, hp: Hyper) -> tuple[str, ...]:
        return ("exp_avg", "exp_inf")

    def per_tensor(self, hp: Hyper, scalars: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        step = scalars["step"]
        return {"scale": -_lr(hp, step) / (1 - hp.beta1 ** step)}

    def decay(self, hp: Hyper, w: torch.Tensor, v: torch.Tensor, state: Rows,
              spread: Spread) -> torch.Tensor | Decoupled | None:
        # u∞ ≥ ε > 0 wherever there is a weight; the rows' padding holds 0 (0/0 would poison the sums)
        u_inf = state["exp_inf"].clamp_min_(torch.finfo(v.dtype).tiny)
        return state["exp_avg"].sub_(v).div_(u_inf).mul_(spread("scale"))


def _lr(hp: Hyper, like: torch.Tensor) -> torch.Tensor | float:
    """η in double beside ``like`` (a tensor lr stays on the device: no host sync)."""
    return hp.lr.to(like.device, torch.float64) if isinstance(hp.lr, torch.Tensor) else hp.lr
