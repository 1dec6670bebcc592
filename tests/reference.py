"""Training with normwatch attached while capturing every tracked tensor's (w_t, g_t, w_{t+1}, state), and every
metric recomputed from those raw vectors in float64 by a reference that splits each update by hand.

A reference is an object with ``step(w, g, w_next, state) -> (u_wd, u_g, v_prev)``: the weight-decay and
gradient parts of this step's update and the gradient memory before it (None where it has none), all float64,
written in the tests from each optimizer's documented rule without normwatch's code.
"""

from __future__ import annotations

import math
import tempfile
from collections.abc import Callable
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import normwatch

Layers = dict[str, list[str]]  # layer name → its parameters' names


def train_and_capture(model: nn.Module, layers: Layers, make_opt: Callable[[nn.Module], torch.optim.Optimizer], *,
                      steps: int = 12, batch: Callable[[torch.Generator], tuple[torch.Tensor, torch.Tensor]],
                      every: int = 1, fused: bool = False, **attach: Any) -> tuple[normwatch.Watcher, list[dict]]:
    """Train with normwatch attached; capture (w_t, g_t, w_{t+1}, state after the step) per tracked tensor."""
    opt = make_opt(model)
    watch = normwatch.attach(model, opt, keep_history=True, logdir=tempfile.mkdtemp(prefix="nw-ref-"), every=every,
                             fused=fused, **attach)
    params = dict(model.named_parameters())
    captured = []
    gen = torch.Generator().manual_seed(1)
    for _ in range(steps):
        x, y = batch(gen)
        out = model(x)
        loss = F.cross_entropy(out.float(), y)
        opt.zero_grad()
        loss.backward()
        before = {n: (params[n].detach().double().clone(), params[n].grad.double().clone())
                  for names in layers.values() for n in names}
        opt.step()
        captured.append({n: (w, g, params[n].detach().double().clone(),
                             {k: v.detach().double().clone() if isinstance(v, torch.Tensor) else v
                              for k, v in opt.state[params[n]].items()}) for n, (w, g) in before.items()})
    watch.close()
    return watch, captured


def reference_metrics(captured: list[dict], layers: Layers, refs: dict[str, Any], lr: float,
                      trust: bool = False) -> list[dict]:
    """Per step, per layer: every metric from the float64 vectors and the references' split."""
    out = []
    for record in captured:
        step = {}
        for layer, names in layers.items():
            parts = [(*record[n][:3], *refs[n].step(*record[n])) for n in names]
            w, g, w1, uwd, ug = (torch.cat([p[k].flatten() for p in parts]) for k in range(5))
            mems = [p[5] for p in parts]
            u = w1 - w
            assert torch.allclose(uwd + ug, u, rtol=1e-4, atol=1e-6 * w.abs().max().item()), "reference is off"
            unit = w / w.norm()
            u_r = u @ unit
            u_perp = u - u_r * unit
            scaled = torch.cat([(_trust(record[n], refs[n]) * record[n][1]).flatten() for n in names]) if trust else g
            mem = torch.cat([m.flatten() for m in mems]) if all(m is not None for m in mems) else None
            step[layer] = {
                "w_norm2": (w @ w).item(),
                "cos_wg": (w @ g / (w.norm() * g.norm())).item(),
                "shrink": -(2 * w @ uwd + uwd @ uwd).item(),
                "growth": (2 * w @ ug + ug @ ug).item(),
                "cross": (2 * uwd @ ug).item(),
                "radial": ((w.norm() + u_r) ** 2 - w @ w).item(),
                "tangential": (u_perp @ u_perp).item(),
                "angle": math.atan2(u_perp.norm().item(), (w.norm() + u_r).item()),
                "lars_ratio": (lr * scaled.norm() / w.norm()).item(),
                "grad_autocorr": (g @ mem / (g.norm() * mem.norm())).item()
                if mem is not None and mem.norm() > 0 else None,
            }
        out.append(step)
    return out


def _trust(record: tuple, ref: Any) -> torch.Tensor:
    """The trust ratio of a LARS step: the reference's own where it computes one, else the optimizer's."""
    own = getattr(ref, "trust", None)
    return own if own is not None else record[3]["trust_ratio"]


def value(history: dict, metric: str, layer: str, step: int) -> float | None:
    return dict(history.get(f"normwatch/{metric}/{layer}", [])).get(step)


def assert_matches(history: dict, expected: list[dict], name: str) -> None:
    """Every metric, every step, every layer of ``expected`` in ``history``, to float32 precision."""
    for step, layers in enumerate(expected):
        for layer, metrics in layers.items():
            scale = metrics["w_norm2"]
            for metric, want in metrics.items():
                if want is None:
                    continue
                got = value(history, metric, layer, step)
                assert got is not None, f"{name}: {metric}/{layer} missing at step {step}"
                if metric in ("shrink", "growth", "cross", "radial", "tangential"):
                    tol = 1e-5 * scale
                elif metric in ("cos_wg", "grad_autocorr"):
                    tol = 1e-4
                else:
                    tol = 1e-5 * abs(want)
                assert got == pytest.approx(want, abs=tol + 1e-12), (name, metric, layer, step)


def assert_bookkeeping_adds_up(history: dict, captured: list[dict], layers: Layers) -> None:
    """growth − shrink + cross and radial + tangential both equal |w_{t+1}|² − |w_t|² to float precision."""
    for step, record in enumerate(captured):
        for layer, names in layers.items():
            w = torch.cat([record[n][0].flatten() for n in names])
            w1 = torch.cat([record[n][2].flatten() for n in names])
            measured = (w1 @ w1 - w @ w).item()
            split = (value(history, "growth", layer, step) - value(history, "shrink", layer, step)
                     + value(history, "cross", layer, step))
            radial = value(history, "radial", layer, step) + value(history, "tangential", layer, step)
            tol = 2e-6 * (w @ w).item()  # float32 sums of O(|w|²) terms: a few ulps of |w|²
            assert split == pytest.approx(measured, abs=tol), (step, layer)
            assert radial == pytest.approx(measured, abs=tol), (step, layer)
