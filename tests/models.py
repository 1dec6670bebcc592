"""Shared test helpers: a small BatchNorm conv net, seeded batches, one optimizer step, history comparison."""

import pytest
import torch
from torch import nn


def small_bn_net(seed: int = 0) -> nn.Sequential:
    """Two convs under BatchNorm (scale-invariant: layers '0' and '4', the second with a bias), a classifier."""
    torch.manual_seed(seed)
    return nn.Sequential(nn.Conv2d(3, 6, 3, padding=1, bias=False), nn.BatchNorm2d(6), nn.ReLU(), nn.MaxPool2d(2),
                         nn.Conv2d(6, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 5))


def seeded_batches(n: int, seed: int = 1) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """``n`` batches of 16 random 8×8 images with labels in 0..4."""
    gen = torch.Generator().manual_seed(seed)
    return [(torch.randn(16, 3, 8, 8, generator=gen), torch.randint(0, 5, (16,), generator=gen)) for _ in range(n)]


def optimizer_step(loss: torch.Tensor, opt: torch.optim.Optimizer, scaler: torch.amp.GradScaler | None = None) -> None:
    """backward() and step(), through ``scaler`` when one is given."""
    if scaler is None:
        loss.backward()
        opt.step()
    else:
        scaler.scale(loss).backward()
        scaler.step(opt)
        scaler.update()


def assert_same_history(got: dict, expected: dict, rel: float, abs: float) -> None:
    """Every tag of ``expected`` is in ``got`` at the same steps, with values equal to the tolerance."""
    for tag, points in expected.items():
        assert [s for s, _ in got[tag]] == [s for s, _ in points], tag
        assert [v for _, v in got[tag]] == pytest.approx([v for _, v in points], rel=rel, abs=abs), tag


class Lion(torch.optim.Optimizer):
    """A third-party optimizer normwatch does not know (Chen et al. 2023, written here from its published rule):
    ``c = β₁m + (1−β₁)g; w ← (1 − ηλ)w − η·sign(c); m ← β₂m + (1−β₂)g``: decoupled weight decay."""

    def __init__(self, params, lr: float = 1e-4, betas: tuple[float, float] = (0.9, 0.99),
                 weight_decay: float = 0.0) -> None:
        super().__init__(params, {"lr": lr, "betas": betas, "weight_decay": weight_decay})

    @torch.no_grad()
    def step(self, closure=None):
        for group in self.param_groups:
            beta1, beta2 = group["betas"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                m = self.state[p].setdefault("exp_avg", torch.zeros_like(p))
                direction = (beta1 * m + (1 - beta1) * p.grad).sign()
                p.mul_(1 - group["lr"] * group["weight_decay"]).add_(direction, alpha=-group["lr"])
                m.mul_(beta2).add_(p.grad, alpha=1 - beta2)
