"""What every optimizer rule tells normwatch: its hyperparameters, its gradient memory, its weight-decay part.

The update of one step, u = w_{t+1} − w_t, splits exactly into a weight-decay part and a gradient part,
u = u_wd + u_g, following the optimizer's own rule. normwatch keeps one buffer per tracked tensor, ``v``: the
optimizer's momentum recursion applied to the gradients alone (or, for an optimizer without momentum, a moving
average of them). It serves twice: ``g_t·v_{t−1}`` is the gradient autocorrelation, and where weight decay is
coupled (added to the gradient) the optimizer's buffer minus ``v`` is exactly the decay it still carries.

A :class:`Rule` answers for one optimizer in terms of ``(blocks, BLOCK)`` rows of a chunk of tensors
(:mod:`normwatch.chunk`): rows of the optimizer's per-element state, per-tensor values spread per block, and
w_t and v. Each rule's update is in its module's docstring, read from PyTorch's source.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import torch

DEFAULT_EMA_BETA = 0.9  # gradient memory for optimizers without momentum (the seed's ρ = 0.9)
Rows = dict[str, torch.Tensor]  # state rows by key, (blocks, BLOCK) each; scratch, overwritten by the rule
Spread = Callable[[str], torch.Tensor]  # spread(name) → a per-tensor value per block, (blocks, 1)


@dataclass(frozen=True, kw_only=True)
class Hyper:
    """One parameter group's hyperparameters at one step, as its rule reads them.

    Attributes:
        rule: the rule the group follows (:data:`normwatch.rules.RULES`; LARS groups with ``"lars": False``
            follow ``"sgd"``).
        lr: η (a tensor lr is kept as a tensor and read on the writer thread).
        weight_decay: λ.
        momentum: μ of SGD, LARS, RMSprop and Muon; 0 elsewhere.
        dampening: τ of SGD.
        nesterov: SGD's, LARS's and Muon's Nesterov momentum.
        beta1: β₁ of Adam-type rules (0 elsewhere).
        beta2: β₂ of Adam-type rules.
        eps: ε of the rule's denominator.
        amsgrad: Adam's AMSGrad.
        maximize: the optimizer ascends (it feeds −g to its state).
        extra: the few values one rule alone reads (RMSprop's α and ``centered``, NAdam's ψ, Adagrad's lr
            decay, ASGD's λ_ASGD and α, Muon's ``adjust_lr_fn``), by name.
        memory_beta: the factor by which normwatch's gradient memory v decays per step: μ where v mirrors a
            momentum buffer, β₁ for Adam, ``ema_beta`` elsewhere.
    """

    rule: str
    lr: float | torch.Tensor
    weight_decay: float
    momentum: float = 0.0
    dampening: float = 0.0
    nesterov: bool = False
    beta1: float = 0.0
    beta2: float = 0.0
    eps: float = 0.0
    amsgrad: bool = False
    maximize: bool = False
    extra: tuple[tuple[str, Any], ...] = ()
    memory_beta: float = DEFAULT_EMA_BETA
    step: float | None = None  # the optimizer's step count t for this step, where its state keeps one on the host

    @property
    def momentum_tag(self) -> float:
        """The value of the ``momentum`` tag: μ, or β₁ for Adam-type rules."""
        return self.beta1 if self.beta1 else self.momentum

    def get(self, name: str, default: Any = None) -> Any:
        """A value of :attr:`extra`."""
        return dict(self.extra).get(name, default)


NOT_STEPPED = Hyper(rule="unknown", lr=0.0, weight_decay=0.0, memory_beta=0.0)  # a tensor no param group holds


@dataclass(frozen=True)
class Decoupled:
    """A weight-decay part proportional to the weight: ``u_wd = coefficient·w``."""

    coefficient: float | torch.Tensor  # a number, a 0-dim tensor (tensor lr), or per block ``(blocks, 1)``


def number(value: Any, default: float = 0.0) -> float:
    return float(value) if value is not None else default


def read_lr(group: dict[str, Any]) -> float | torch.Tensor:
    """A group's lr: a float, or a tensor lr kept as a tensor (read later, on the writer thread)."""
    lr = group.get("lr", 0.0)
    return lr.detach().clone() if isinstance(lr, torch.Tensor) else float(lr)


class Rule:
    """How one optimizer's step splits; the defaults describe a rule without momentum or state.

    The gradient memory steps ``v ← a·v + b·(s·ĝ)`` (:meth:`memory_coefficients`), ``ĝ`` the gradient the
    optimizer feeds its state (−g under ``maximize``) and ``s`` :meth:`memory_scale` (LARS's trust ratio,
    RMSprop's 1/√v₂), where v mirrors a momentum buffer; elsewhere ``v`` is a moving average of ``ĝ``.
    """

    name: ClassVar[str] = "unknown"

    def read(self, group: dict[str, Any], ema_beta: float) -> Hyper:
        """The group's hyperparameters."""
        return Hyper(rule=self.name, lr=read_lr(group), weight_decay=number(group.get("weight_decay")),
                     maximize=bool(group.get("maximize", False)), memory_beta=ema_beta)

    # -- the gradient memory ------------------------------------------------------------------------------------
    def mirrors(self, hp: Hyper) -> bool:
        """Whether v replays the optimizer's momentum buffer on gradients alone (its first step copies)."""
        return False

    def memory_coefficients(self, hp: Hyper, first: bool) -> tuple[float, float]:
        """``(a, b)`` of ``v ← a·v + b·(s·ĝ)``: for a mirrored buffer its own (its first step ``v = s·ĝ``),
        elsewhere a moving average, ``β`` and ``1−β``."""
        return hp.memory_beta, 1.0 - hp.memory_beta

    def buffer_key(self, hp: Hyper) -> str | None:
        """The optimizer's state that holds what v replays, adopted when normwatch attaches mid-run."""
        return None

    def hides_decay(self, hp: Hyper) -> bool:
        """Whether that buffer also holds weight decay (coupled), which normwatch cannot split afterwards."""
        return False

    # -- one recorded step --------------------------------------------------------------------------------------
    def state_keys(self, hp: Hyper) -> tuple[str, ...]:
        """Per-element state (after the step) the rule reads: loaded into rows."""
        return ()

    def pre_state_keys(self, hp: Hyper) -> tuple[str, ...]:
        """Per-element state the rule reads as it was before the step (kept from the step's pre-hook)."""
        return ()

    def scalar_keys(self, hp: Hyper) -> tuple[str, ...]:
        """Per-tensor state scalars (after the step) that :meth:`per_tensor` reads, e.g. ``"step"``."""
        return ()

    def per_tensor(self, hp: Hyper, scalars: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Per-tensor values in double, from the stacked :meth:`scalar_keys` (each ``(tensors,)``)."""
        return {}

    def memory_scale(self, hp: Hyper, state: Rows, spread: Spread) -> torch.Tensor | None:
        """What the gradient is scaled by before it enters a mirrored memory (None: nothing)."""
        return None

    def scaled_gradients(self, hp: Hyper, grads: list[torch.Tensor],
                         states: Sequence[Mapping[str, Any]]) -> list[torch.Tensor]:
        """:meth:`memory_scale` times the gradients, with ``_foreach`` kernels over lists (a step not recorded,
        ``states`` the optimizer's per-tensor state dicts)."""
        return grads

    def decay(self, hp: Hyper, w: torch.Tensor, v: torch.Tensor, state: Rows,
              spread: Spread) -> torch.Tensor | Decoupled | None:
        """The weight-decay part u_wd, as a row (one of ``state``'s, overwritten), :class:`Decoupled`, or None
        when no rule applies. ``v`` is the memory after this step. The rows end in zero padding (to whole blocks),
        which must stay finite: a denominator there is 0 unless it adds ε or is clamped."""
        return None

    def theory_applies(self, hp: Hyper) -> bool:
        """Whether this variant is the one normwatch.theory's formulas for the rule describe."""
        return True

    def uses_trust(self, hp: Hyper) -> bool:
        """Whether ``lars_ratio`` scales the gradient by a trust ratio (state row ``"trust_ratio"``)."""
        return False


class MomentumBufferRule(Rule):
    """Coupled weight decay through a momentum buffer ``b ← μb + (1−τ)·x`` (``momentum_buffer``; its first
    step copies x): where μ > 0, v replays it on gradients alone, so ``b − v`` is the decay it carries."""

    def mirrors(self, hp: Hyper) -> bool:
        return hp.momentum > 0

    def memory_coefficients(self, hp: Hyper, first: bool) -> tuple[float, float]:
        if not self.mirrors(hp):
            return super().memory_coefficients(hp, first)
        return (0.0, 1.0) if first else (hp.momentum, 1.0 - hp.dampening)

    def buffer_key(self, hp: Hyper) -> str | None:
        return "momentum_buffer" if self.mirrors(hp) else None

    def hides_decay(self, hp: Hyper) -> bool:
        return self.mirrors(hp) and hp.weight_decay > 0


class DecoupledRule(Rule):
    """Decoupled weight decay, ``w ← (1 − ηλ)·w − η·U``: ``u_wd = −ηλw`` exactly, whatever U is."""

    name: ClassVar[str] = "decoupled"

    def decay(self, hp: Hyper, w: torch.Tensor, v: torch.Tensor, state: Rows,
              spread: Spread) -> torch.Tensor | Decoupled | None:
        return Decoupled(-hp.lr * hp.weight_decay)
