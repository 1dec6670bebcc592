"""A training loop with its own update and no ``torch.optim.Optimizer`` (the seed's code updates raw tensors).

``watch = normwatch.attach(model)`` attaches to a :class:`ManualSteps` stand-in that holds the model's trainable
parameters and never steps them; each update of the user's own runs inside ``with watch.update(lr=...,
weight_decay=..., momentum=..., nesterov=...):``, which the Watcher treats as an optimizer step with those
hyperparameters. Every measured metric needs only w_t, g and w_{t+1}. The split needs the rule: the declared
one is SGD's (PyTorch's convention: ``b ← μb + (1−τ)(g + λw)``, ``w ← w − η·b`` or, Nesterov,
``w ← w − η(g + λw + μb)``), whose momentum buffer b normwatch replays itself (1× the parameters more), or
``decoupled=True`` (``w ← (1 − ηλ)w − ηU``). The first :data:`CHECKED_STEPS` SGD-rule steps check the observed
update against the declared rule (a host sync each); if it differs, one warning, and from that step on no split
and no theory, only measured metrics.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import torch
from torch import nn

CHECKED_STEPS = 3
TOLERANCE = 1e-4  # |u − u_declared| ≤ TOLERANCE·|u| + 4ε·|w| (the float rounding of storing w_{t+1})


class ManualSteps(torch.optim.Optimizer):
    """Stand-in optimizer of a loop that updates its parameters itself: holds them, the declared hyperparameters
    (one param group) and the replayed momentum buffer; ``step()`` is an error."""

    def __init__(self, model: nn.Module) -> None:
        params = [p for p in model.parameters() if p.requires_grad]
        if not params:
            raise ValueError("normwatch.attach(model) without an optimizer needs a model with trainable parameters.")
        super().__init__(params, {"lr": 0.0, "weight_decay": 0.0, "momentum": 0.0, "dampening": 0.0,
                                  "nesterov": False, "decoupled": False})
        self.declared = False  # hyperparameters arrive with the first watch.update(...)
        self.checked = 0  # steps whose observed update was checked against the declared rule
        self.matches = True
        self._predicted: list[torch.Tensor] = []

    def step(self, closure: Any = None) -> None:
        raise RuntimeError("normwatch's stand-in optimizer does not step: run your own update inside "
                           "`with watch.update(lr=..., weight_decay=..., momentum=...):`.")

    def declare(self, *, lr: float, weight_decay: float, momentum: float, dampening: float, nesterov: bool,
                decoupled: bool) -> bool:
        """The hyperparameters of the step about to run, checked; True on the first declaration."""
        for name, value in (("lr", lr), ("weight_decay", weight_decay), ("dampening", dampening)):
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not value >= 0:
                raise ValueError(f"Expected argument `{name}` of watch.update to be a number >= 0, but got {value!r}.")
        if isinstance(momentum, bool) or not isinstance(momentum, (int, float)) or not 0 <= momentum < 1:
            raise ValueError(f"Expected argument `momentum` of watch.update to be in [0, 1), but got {momentum!r}.")
        if decoupled and momentum:
            raise ValueError("watch.update(decoupled=True) declares w ← (1 − ηλ)w − ηU: its U is yours, so leave "
                             "momentum out.")
        self.param_groups[0].update(lr=float(lr), weight_decay=float(weight_decay), momentum=float(momentum),
                                    dampening=float(dampening), nesterov=bool(nesterov), decoupled=bool(decoupled))
        first, self.declared = not self.declared, True
        return first

    @torch.no_grad()
    def replay(self) -> None:
        """Before the user's update: advance the SGD rule's momentum buffer on ``g + λw`` (the first step copies),
        and on the steps to check, keep the w_{t+1} the declared rule predicts and how far off it may be."""
        group = self.param_groups[0]
        mu, tau, lr, wd = group["momentum"], group["dampening"], group["lr"], group["weight_decay"]
        checking = not group["decoupled"] and self.matches and self.checked < CHECKED_STEPS
        self._predicted = []
        for p in self._stepped():
            d = p.grad.add(p, alpha=wd) if wd else p.grad.clone()
            direction = d
            if mu:
                buffer = self.state[p].get("momentum_buffer")
                if buffer is None:
                    buffer = self.state[p]["momentum_buffer"] = d.clone()
                else:
                    buffer.mul_(mu).add_(d, alpha=1 - tau)
                direction = d.add(buffer, alpha=mu) if group["nesterov"] else buffer
            if checking:
                w = p.detach()
                bound = (TOLERANCE * lr * torch.linalg.vector_norm(direction.float())
                         + 4 * torch.finfo(p.dtype).eps * torch.linalg.vector_norm(w.float()))
                self._predicted.append((w - lr * direction, bound))

    @torch.no_grad()
    def check(self) -> bool | None:
        """After the user's update, on the steps to check: whether it was the declared rule (one host sync;
        None: not checked)."""
        if not self._predicted:
            return None
        self.checked += 1
        errors = [torch.linalg.vector_norm((p.detach() - predicted).float()) - bound
                  for p, (predicted, bound) in zip(self._stepped(), self._predicted)]
        self.matches = bool((torch.stack(errors) <= 0).all())
        self._predicted = []
        return self.matches

    def _stepped(self) -> Iterator[torch.Tensor]:
        return (p for p in self.param_groups[0]["params"] if p.grad is not None)
