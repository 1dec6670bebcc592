"""Optimizers shipped with normwatch."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch.optim import Optimizer

__all__ = ["LARS"]


def _check_group(group: dict[str, Any]) -> None:
    lr, momentum = group["lr"], group["momentum"]
    weight_decay, eps, lars = group["weight_decay"], group["eps"], group["lars"]
    if isinstance(lr, torch.Tensor):
        raise TypeError("LARS expects a float lr, got a Tensor")
    if not lr >= 0.0:
        raise ValueError(f"Expected lr >= 0, got {lr}")
    if not 0.0 <= momentum < 1.0:
        raise ValueError(f"Expected 0 <= momentum < 1, got {momentum}")
    if not weight_decay >= 0.0:
        raise ValueError(f"Expected weight_decay >= 0, got {weight_decay}")
    if not eps >= 0.0:
        raise ValueError(f"Expected eps >= 0, got {eps}")
    if not isinstance(lars, bool):
        raise TypeError(f"Expected lars to be a bool, got {type(lars).__name__}")


class LARS(Optimizer):
    r"""Layer-wise Adaptive Rate Scaling with heavy-ball momentum, as written in the Myrtle seed.

    For every parameter tensor ``w`` with gradient ``g`` (parameters whose ``grad`` is None are
    skipped), with ``η = lr``, ``λ = weight_decay``, ``μ = momentum``::

        d     = g + λ·w                       (d = g when λ == 0)
        trust = |w| / |d|   if the group has lars=True and |w| > 0 and |d| > eps, else 1
        b     = trust·d                       on the first step (a copy), else
        b     = μ·b + trust·d                 (state["momentum_buffer"]; none kept when μ == 0)
        w     ← w − η·b

    This is the seed's eq. 4 with momentum as the seed writes it
    (``v ← ρv + (|w|/|g|)g; w ← w − λ_LARS·v``), with weight decay folded into ``d`` as in
    Myrtle's ``LARS_update``. Norms are per tensor (Frobenius) and ``trust`` is computed on the
    parameter's device without a host synchronisation.

    ``state["trust_ratio"]`` holds the trust ratio used in the latest step: a 0-dim tensor with
    the parameter's dtype and device, ``|w|/|d|`` or exactly 1 (plain groups, zero weights,
    vanishing ``d``). ``lr·trust_ratio`` is the tensor's effective SGD learning rate, and
    ``lr·trust_ratio·|g|/|w|`` equals ``lr·|g|/|g + λw|`` (≈ lr: LARS fixes the step size in
    scale-invariant units).

    Per-group opt-out: a param group with ``"lars": False`` gets plain heavy-ball SGD with
    coupled weight decay (trust 1; identical to ``torch.optim.SGD`` with the same lr, momentum and
    weight_decay). Use it for BN affine parameters, biases and the classifier, e.g.
    ``LARS([{"params": convs}, {"params": others, "lars": False}], lr=0.01, weight_decay=5e-4)``.

    ``group["lr"]`` and ``group["momentum"]`` are read at every step, so LR schedulers work.
    Sparse gradients are not supported.

    Args:
        params: Parameters or param-group dicts; groups may set ``lars``, ``lr``, ``momentum``,
            ``weight_decay`` and ``eps``.
        lr: Learning rate η (the seed's λ_LARS), ``>= 0``.
        momentum: Heavy-ball momentum μ, ``0 <= μ < 1``.
        weight_decay: Weight decay λ added to the gradient before the trust ratio, ``>= 0``.
        eps: ``|d|`` must exceed ``eps`` for the trust ratio to apply; otherwise trust is 1, so a
            vanishing ``d`` is never blown up to a full-size step. ``>= 0``.
    """

    def __init__(
        self,
        params: Iterable[torch.Tensor] | Iterable[dict[str, Any]],
        lr: float,
        momentum: float = 0.9,
        weight_decay: float = 0.0,
        eps: float = 1e-12,
    ) -> None:
        defaults = {"lr": lr, "momentum": momentum, "weight_decay": weight_decay, "eps": eps, "lars": True}
        _check_group(defaults)
        super().__init__(params, defaults)

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        """Add a param group, validating its hyperparameters (see the class docstring)."""
        super().add_param_group(param_group)
        try:
            _check_group(self.param_groups[-1])
        except (TypeError, ValueError):
            self.param_groups.pop()
            raise

    def __setstate__(self, state: dict[str, Any]) -> None:
        super().__setstate__(state)
        for group in self.param_groups:
            group.setdefault("lars", True)
            group.setdefault("eps", 1e-12)

    @torch.no_grad()
    def step(self, closure: Callable[[], Any] | None = None) -> Any:
        """Perform one optimization step.

        Args:
            closure: Optional callable that re-evaluates the model and returns the loss; it is
                run with gradients enabled before the update.

        Returns:
            The closure's return value, or None.
        """
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()

        for group in self.param_groups:
            lr = group["lr"]
            momentum = group["momentum"]
            weight_decay = group["weight_decay"]
            eps = group["eps"]
            use_lars = group["lars"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                grad = p.grad
                if grad.is_sparse:
                    raise RuntimeError("LARS does not support sparse gradients")
                state = self.state[p]

                d = grad.add(p, alpha=weight_decay) if weight_decay != 0 else grad
                if use_lars:
                    acc = torch.float32 if p.dtype in (torch.float16, torch.bfloat16) else None
                    w_norm = torch.linalg.vector_norm(p, dtype=acc)
                    d_norm = torch.linalg.vector_norm(d, dtype=acc)
                    ok = (w_norm > 0) & (d_norm > eps)
                    one = torch.ones_like(w_norm)
                    trust = torch.where(ok, w_norm / torch.where(ok, d_norm, one), one).to(p.dtype)
                    step_dir = d * trust
                else:
                    trust = torch.ones((), dtype=p.dtype, device=p.device)
                    step_dir = d
                state["trust_ratio"] = trust

                if momentum != 0:
                    buf = state.get("momentum_buffer")
                    if buf is None:
                        buf = torch.clone(step_dir).detach()
                        state["momentum_buffer"] = buf
                    else:
                        buf.mul_(momentum).add_(step_dir)
                    step_dir = buf

                p.add_(step_dir, alpha=-lr)

        return loss
