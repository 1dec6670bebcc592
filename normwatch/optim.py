"""Optimizers shipped with normwatch."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any, Literal

import torch
from torch.optim import Optimizer

__all__ = ["LARS"]

Trust = Literal["tensor", "channel"]
_DEFAULTS = {"lars": True, "eps": 1e-12, "trust": "tensor", "nesterov": False, "guard": None, "grad_norm_beta": 0.0}


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
    _check_options(group)


def _check_options(group: dict[str, Any]) -> None:
    trust, nesterov, guard, beta = group["trust"], group["nesterov"], group["guard"], group["grad_norm_beta"]
    if trust not in ("tensor", "channel"):
        raise ValueError(f"Expected trust to be 'tensor' or 'channel', got {trust!r}")
    if not isinstance(nesterov, bool):
        raise TypeError(f"Expected nesterov to be a bool, got {type(nesterov).__name__}")
    if nesterov and group["momentum"] == 0:
        raise ValueError("Nesterov momentum needs momentum > 0, got momentum=0; set a momentum or nesterov=False")
    if guard is not None and (isinstance(guard, bool) or not isinstance(guard, (int, float)) or not guard >= 0.0):
        raise ValueError(f"Expected guard to be None or a number >= 0, got {guard!r}")
    if isinstance(beta, bool) or not isinstance(beta, (int, float)) or not 0.0 <= beta < 1.0:
        raise ValueError(f"Expected 0 <= grad_norm_beta < 1, got {beta!r}")


def _norm(x: torch.Tensor, per_channel: bool, acc: torch.dtype | None) -> torch.Tensor:
    """|x| over the whole tensor (0-dim), or over each row of ``x.reshape(x.size(0), -1)`` (shape (C,))."""
    if per_channel:
        return torch.linalg.vector_norm(x.reshape(x.size(0), -1), dim=1, dtype=acc)
    return torch.linalg.vector_norm(x, dtype=acc)


def _trust_ratio(p: torch.Tensor, grad: torch.Tensor, d: torch.Tensor, group: dict[str, Any],
                 state: dict[str, Any]) -> torch.Tensor:
    """The trust ratio of the class docstring: 0-dim, or (C, 1, ..., 1) for ``trust="channel"``."""
    acc = torch.float32 if p.dtype in (torch.float16, torch.bfloat16) else None
    per_channel = group["trust"] == "channel" and p.dim() >= 2
    guard, beta = group["guard"], group["grad_norm_beta"]
    w_norm = _norm(p, per_channel, acc)
    x_norm = _norm(grad if guard is not None else d, per_channel, acc)
    if beta > 0:
        avg = state.get("grad_norm_avg")
        if avg is None or avg.shape != x_norm.shape:
            avg = x_norm.clone()
            state["grad_norm_avg"] = avg
        else:
            avg.mul_(beta).add_(x_norm, alpha=1.0 - beta)
        x_norm = avg
    if guard is not None:
        x_norm = x_norm + guard
    ok = (w_norm > 0) & (x_norm > group["eps"])
    one = torch.ones_like(w_norm)
    trust = torch.where(ok, w_norm / torch.where(ok, x_norm, one), one).to(p.dtype)
    return trust.view(-1, *([1] * (p.dim() - 1))) if per_channel else trust


class LARS(Optimizer):
    r"""Layer-wise Adaptive Rate Scaling: the seed's LARS, as its text writes it and as its code has it.

    For every parameter tensor ``w`` with gradient ``g`` (parameters whose ``grad`` is None are
    skipped), with ``η = lr``, ``λ = weight_decay``, ``μ = momentum``, ``γ = guard``,
    ``β = grad_norm_beta``::

        d     = g + λ·w                       (d = g when λ == 0)
        n     = |d|                           (guard None: the update direction, weight decay included)
              = |g|                           (guard γ: the raw gradient, before weight decay)
        n̄     = n                             (β == 0), else the average over steps
        n̄_t   = β·n̄_{t−1} + (1−β)·n_t,  n̄_1 = n_1        (state["grad_norm_avg"])
        trust = |w| / (n̄ + γ)                 (γ = 0 when guard is None)
                if the group has lars=True and |w| > 0 and n̄ + γ > eps, else 1
        s     = trust ⊙ d
        b     = s  on the first step (a copy), else  b = μ·b + s     (state["momentum_buffer"]; none when μ == 0)
        step  = b                             (heavy ball, nesterov=False)
              = s + μ·b                       (Nesterov, nesterov=True)
        w     ← w − η·step

    Norms are per tensor (``trust="tensor"``, Frobenius; ``trust`` is a 0-dim tensor) or per output
    channel (``trust="channel"``: over each row of ``w.reshape(w.size(0), -1)``; ``trust``, ``n̄`` and the
    ``eps`` test are then per row and ``trust`` has shape ``(C, 1, ..., 1)``, broadcastable against ``w``).
    Tensors with fewer than 2 dimensions (biases, BN parameters) always use the per-tensor norm. Rows are
    axis 0: output channels of conv and linear weights, input channels of transposed convs.

    **The seed's text and its code.** The seed's eq. 4 (with momentum: ``v ← ρv + (|w|/|g|)g;
    w ← w − λ_LARS·v``) is per layer with heavy-ball momentum: the defaults, which fold weight decay into
    ``d`` before the trust ratio. Myrtle's published ``LARS_update`` (cifar10-fast, ``torch_backend.py``)
    is ``LARS(params, lr, momentum=0.9, weight_decay=λ, trust="channel", nesterov=True, guard=1e-2)``: a
    per-output-channel trust ``|w|/(|g| + 1e-2)`` from the raw gradient, applied to ``g + λw`` through the
    same Nesterov update as its SGD. Two differences remain, both as in torch's SGD against Myrtle's
    ``nesterov_update``: Myrtle keeps ``η`` inside its buffer (``v ← μv − η·s``), which is the same update
    for a constant lr and differs slightly while the lr changes; and a zero row gets trust 1 here, where
    Myrtle's code gives it 0 (it never moves again). Myrtle applied it to 4-D conv weights only.

    **Smoothed gradient norms** (``grad_norm_beta = β > 0``, the seed's "simply smoothing gradient norms
    between batches"): the trust ratio divides by the exponential average ``n̄`` of the norm ``n`` it would
    otherwise use, so one noisy batch no longer sets its own step size; ``β = 0`` is unsmoothed LARS.

    ``state["trust_ratio"]`` holds the trust ratio used in the latest step, with the parameter's dtype and
    device: ``|w|/(n̄ + γ)`` or exactly 1 (plain groups, zero weights, vanishing ``n̄ + γ``). ``lr·trust`` is
    the effective SGD learning rate (per tensor or per channel); with the defaults ``lr·trust·|g|/|w|``
    equals ``lr·|g|/|g + λw|`` (≈ lr: LARS fixes the step size in scale-invariant units).

    Per-group opt-out: a param group with ``"lars": False`` gets plain SGD with coupled weight decay
    (trust 1; identical to ``torch.optim.SGD`` with the same lr, momentum, weight_decay and nesterov). Use
    it for BN affine parameters, biases and the classifier, e.g.
    ``LARS([{"params": convs}, {"params": others, "lars": False}], lr=0.01, weight_decay=5e-4)``.

    ``group["lr"]`` and ``group["momentum"]`` are read at every step, so LR schedulers work. Norms of
    float16/bfloat16 tensors are accumulated in float32 (and ``n̄`` kept in float32); the step needs no host
    synchronisation. Sparse gradients are not supported.

    Args:
        params: Parameters or param-group dicts; groups may set any option below and ``lars``.
        lr: Learning rate η (the seed's λ_LARS), ``>= 0``.
        momentum: Momentum μ, ``0 <= μ < 1``.
        weight_decay: Weight decay λ added to the gradient (``d = g + λw``), ``>= 0``.
        eps: ``n̄ + γ`` must exceed ``eps`` for the trust ratio to apply; otherwise trust is 1, so a
            vanishing norm is never blown up to a full-size step. ``>= 0``.
        trust: ``"tensor"`` (one trust ratio per tensor, the seed's eq. 4) or ``"channel"`` (one per row of
            ``w.reshape(w.size(0), -1)``, Myrtle's code).
        nesterov: Nesterov momentum (``step = s + μb``, torch's SGD convention) instead of heavy ball;
            needs ``momentum > 0``.
        guard: None: the trust ratio is ``|w|/|g + λw|``. A number ``γ >= 0``: it is ``|w|/(|g| + γ)``
            from the raw gradient (Myrtle's code: ``γ = 1e-2``; ``γ = 0`` is eq. 4's ``|w|/|g|``).
        grad_norm_beta: β of the exponential average of the trust ratio's gradient norm, ``0 <= β < 1``
            (0: no smoothing).
    """

    def __init__(
        self,
        params: Iterable[torch.Tensor] | Iterable[dict[str, Any]],
        lr: float,
        momentum: float = 0.9,
        weight_decay: float = 0.0,
        eps: float = 1e-12,
        *,
        trust: Trust = "tensor",
        nesterov: bool = False,
        guard: float | None = None,
        grad_norm_beta: float = 0.0,
    ) -> None:
        defaults = {"lr": lr, "momentum": momentum, "weight_decay": weight_decay, "eps": eps, "lars": True,
                    "trust": trust, "nesterov": nesterov, "guard": guard, "grad_norm_beta": grad_norm_beta}
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
            for key, value in _DEFAULTS.items():
                group.setdefault(key, value)

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
            for p in group["params"]:
                if p.grad is not None:
                    self._update(p, group)
        return loss

    def _update(self, p: torch.Tensor, group: dict[str, Any]) -> None:
        """One parameter's update (the class docstring's equations)."""
        lr, momentum, weight_decay = group["lr"], group["momentum"], group["weight_decay"]
        grad = p.grad
        if grad.is_sparse:
            raise RuntimeError("LARS does not support sparse gradients")
        state = self.state[p]

        d = grad.add(p, alpha=weight_decay) if weight_decay != 0 else grad
        if group["lars"]:
            trust = _trust_ratio(p, grad, d, group, state)
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
            step_dir = step_dir.add(buf, alpha=momentum) if group["nesterov"] else buf

        p.add_(step_dir, alpha=-lr)
