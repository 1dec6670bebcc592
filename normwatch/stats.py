"""Per-step statistics: dot products per tensor on the device, every metric derived from them on the host.

On the device, each tracked tensor contributes the sums in :data:`SUMS` (w = w_t, the weight before the
step; u = w_{t+1} − w_t; g the gradient the step used; v the gradient memory before the step; u_wd the
weight-decay part of u, u_g = u − u_wd; t the LARS trust ratio, 1 elsewhere), all entries of the Gram
matrix of those vectors (:class:`Workspace`). Nothing is read back per step. On the host (the writer
thread), layers are sums of their tensors and, in float64:

- ``w_norm2`` = |w|², ``w_norm2_rel`` = |w|²/|w_0|², ``cos_wg`` = w·g/(|w||g|)
- ``shrink`` = −(2w·u_wd + |u_wd|²), ``growth`` = 2w·u_g + |u_g|², ``cross`` = 2u_wd·u_g; exactly
  growth − shrink + cross = 2w·u + |u|² = |w_{t+1}|² − |w_t|²
- ``radial`` = 2|w|u_r + u_r², ``tangential`` = |u⊥|² (u_r = u·ŵ, u⊥ = u − u_r ŵ); radial + tangential
  = |w_{t+1}|² − |w_t|²; ``angle`` = atan2(|u⊥|, |w| + u_r), the rotation of w in the step
- ``lars_ratio`` = lr·|t g|/|w|, the step size relative to the weight (LARS's own: t·lr is its step)
- ``grad_autocorr`` = g·v/(|g||v|)
"""

from __future__ import annotations

import functools
from collections.abc import Sequence

import numpy as np
import torch

SUMS = ("present", "ww", "wg", "gg", "wu", "uu", "gv", "vv", "w_uwd", "uwd2", "w_ug", "ug2", "u_uwd", "tgg")
INDEX = {name: i for i, name in enumerate(SUMS)}
MEASURED = ("w_norm2", "w_norm2_rel", "cos_wg", "radial", "tangential", "angle", "lars_ratio", "grad_autocorr")
SPLIT = ("shrink", "growth", "cross")


ROWS = ("w", "g", "v", "u", "u_wd", "u_g")  # a tensor's vectors in one step; every dot sum is a pair of them
_PAIRS = {"ww": ("w", "w"), "wg": ("w", "g"), "gg": ("g", "g"), "wu": ("w", "u"), "uu": ("u", "u"),
          "gv": ("g", "v"), "vv": ("v", "v"), "w_uwd": ("w", "u_wd"), "uwd2": ("u_wd", "u_wd"),
          "w_ug": ("w", "u_g"), "ug2": ("u_g", "u_g"), "u_uwd": ("u", "u_wd")}


class Workspace:
    """One param group's vectors of one step, and the sums over them in a few batched kernels.

    Each tensor gets a (R, n) block whose rows are :data:`ROWS` (R = 6, or 4 without the weight-decay
    split), each row also viewed in the tensor's own shape and memory layout, so foreach ops fill one row
    of every tensor per launch. One matrix product per tensor, block·blockᵀ, then gives all R² dot
    products: the Gram matrix from which :meth:`sums` picks :data:`SUMS`.
    """

    def __init__(self, likes: list[torch.Tensor], split: bool) -> None:
        self.split = split
        count = len(ROWS) if split else 4
        self.blocks = [torch.empty(count, t.numel(), dtype=torch.promote_types(t.dtype, torch.float32),
                                   device=t.device) for t in likes]
        self.rows = {name: [block[k].as_strided(t.shape, t.stride()) for block, t in zip(self.blocks, likes)]
                     for k, name in enumerate(ROWS[:count])}

    def sums(self, trusts: list[torch.Tensor] | None) -> torch.Tensor:
        """(tensors, len(SUMS)) float32: every row of :data:`SUMS` (``tgg`` = |t·g|², t the trust ratio)."""
        device, count = self.blocks[0].device, self.blocks[0].shape[0]
        exact = _ieee_float32_matmul(device)
        grams = torch.stack([block @ block.T if exact or block.dtype == torch.float64
                             else (block64 := block.double()) @ block64.T for block in self.blocks])
        constants, index = _assembly(device, count)
        flat = torch.cat([grams.flatten(1).float(), constants.expand(len(self.blocks), 2)], dim=1)
        rows = flat.index_select(1, index)
        if trusts is not None:
            rows[:, INDEX["tgg"]] *= torch.stack([t.float() for t in trusts]).to(device) ** 2
        return rows


@functools.cache
def _assembly(device: torch.device, count: int) -> tuple[torch.Tensor, torch.Tensor]:
    """([1, NaN], column index of each SUMS entry in [gram.flatten(), 1, NaN]) for blocks of ``count`` rows."""
    position = {name: k for k, name in enumerate(ROWS[:count])}
    one, nan = count * count, count * count + 1

    def column(name: str) -> int:
        if name == "present":
            return one
        a, b = _PAIRS["gg" if name == "tgg" else name]
        return position[a] * count + position[b] if a in position and b in position else nan

    index = torch.tensor([column(name) for name in SUMS], device=device)
    return torch.tensor([1.0, float("nan")], device=device), index


def _ieee_float32_matmul(device: torch.device) -> bool:
    """Whether float32 matrix products on ``device`` run in IEEE float32, not TF32 or bf16 (then a Gram
    matrix of float32 rows is as exact as dot products; otherwise normwatch multiplies in float64)."""
    try:
        backend = {"cuda": torch.backends.cuda.matmul, "cpu": torch.backends.mkldnn.matmul}[device.type]
        precision = backend.fp32_precision  # torch ≥ 2.9
    except (KeyError, AttributeError):
        try:
            return device.type in ("cuda", "cpu") and torch.get_float32_matmul_precision() == "highest"
        except RuntimeError:
            return False
    if precision == "none":  # inherits the global setting
        precision = getattr(torch.backends, "fp32_precision", "ieee")
    return precision in ("ieee", "none")


def layer_sums(rows: np.ndarray, slot_layer: Sequence[int], n_layers: int) -> np.ndarray:
    """Sum tensor rows (R, S, K) into layer rows (R, L, K) in float64; ``present`` becomes all-present."""
    out = np.zeros((rows.shape[0], n_layers, rows.shape[2]), dtype=np.float64)
    present = np.ones((rows.shape[0], n_layers), dtype=bool)
    for slot, layer in enumerate(slot_layer):
        out[:, layer] += rows[:, slot]
        present[:, layer] &= rows[:, slot, INDEX["present"]] > 0
    out[..., INDEX["present"]] = present
    return out


def derive(sums: np.ndarray, w0_norm2: np.ndarray, lr: np.ndarray) -> dict[str, np.ndarray]:
    """Every metric from layer sums (..., K), float64; undefined values are NaN.

    Args:
        sums: layer sums, last axis ordered as :data:`SUMS`.
        w0_norm2: |w_0|² per layer (broadcast against the leading axes).
        lr: the learning rate of each layer's param group (same leading shape).
    """
    s = {name: sums[..., i] for i, name in enumerate(SUMS)}
    ww, gg, wu, uu = s["ww"], s["gg"], s["wu"], s["uu"]
    with np.errstate(divide="ignore", invalid="ignore"):
        norm = np.sqrt(ww)
        u_r = wu / norm
        tangential = uu - wu * wu / ww
        metrics = {
            "w_norm2": ww,
            "w_norm2_rel": ww / w0_norm2,
            "cos_wg": s["wg"] / np.sqrt(ww * gg),
            "radial": 2.0 * wu + u_r * u_r,
            "tangential": tangential,
            "angle": np.arctan2(np.sqrt(np.maximum(tangential, 0.0)), norm + u_r),
            "lars_ratio": lr * np.sqrt(s["tgg"]) / norm,
            "grad_autocorr": np.where(s["vv"] > 0, s["gv"] / np.sqrt(gg * s["vv"]), np.nan),
            "shrink": -(2.0 * s["w_uwd"] + s["uwd2"]),
            "growth": 2.0 * s["w_ug"] + s["ug2"],
            "cross": 2.0 * (s["u_uwd"] - s["uwd2"]),  # u_wd·u_g = u·u_wd − |u_wd|²
        }
    return metrics
