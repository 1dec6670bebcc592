"""Per-step sums: a few dot products per tensor on the device, every metric derived from them on the host.

On the device, each tracked tensor contributes the sums in :data:`SUMS` (w = w_t, the weight before the
step; u = w_{t+1} − w_t; g the gradient the step used; v the gradient memory before the step; u_wd the
weight-decay part of u, u_g = u − u_wd; t the LARS trust ratio, 1 elsewhere). Nothing is read back
per step. On the host (the writer thread), layers are sums of their tensors and, in float64:

- ``w_norm2`` = |w|², ``w_norm2_rel`` = |w|²/|w_0|², ``cos_wg`` = w·g/(|w||g|)
- ``shrink`` = −(2w·u_wd + |u_wd|²), ``growth`` = 2w·u_g + |u_g|², ``cross`` = 2u_wd·u_g; exactly
  growth − shrink + cross = 2w·u + |u|² = |w_{t+1}|² − |w_t|²
- ``radial`` = 2|w|u_r + u_r², ``tangential`` = |u⊥|² (u_r = u·ŵ, u⊥ = u − u_r ŵ); radial + tangential
  = |w_{t+1}|² − |w_t|²; ``angle`` = atan2(|u⊥|, |w| + u_r), the rotation of w in the step
- ``lars_ratio`` = |lr·t g|/|w|, the step size relative to the weight (LARS's own: t·lr is its step); each
  tensor with its own group's lr, so the ``tgg`` sums reach :func:`derive` weighted by lr²
- ``grad_autocorr`` = g·v/(|g||v|)
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

SUMS = ("present", "ww", "wg", "gg", "wu", "uu", "gv", "vv", "w_uwd", "uwd2", "w_ug", "ug2", "u_uwd", "tgg")
INDEX = {name: i for i, name in enumerate(SUMS)}


def dense_same_layout(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Whether ``a`` is dense (contiguous or channels-last) and laid out in memory exactly as ``b``."""
    dense = a.is_contiguous() or a.is_contiguous(memory_format=torch.channels_last) or (
        a.dim() == 5 and a.is_contiguous(memory_format=torch.channels_last_3d))
    return dense and a.stride() == b.stride() and a.shape == b.shape


def memory_order(t: torch.Tensor) -> torch.Tensor:
    """The elements of a dense tensor in memory order, as a 1-D view (no copy)."""
    return t.as_strided((t.numel(),), (1,), t.storage_offset())


def _float(t: torch.Tensor) -> torch.Tensor:
    return t if t.dtype in (torch.float32, torch.float64) else t.float()


def dot(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """a·b as a 0-dim float tensor, without materialising a·b when both share a dense layout."""
    if torch.compiler.is_compiling():  # the fused path: the compiler fuses the product into the sum
        return (_float(a) * b.to(_float(a).dtype)).sum()
    if dense_same_layout(a, b):
        flat_a = _float(memory_order(a))
        return torch.dot(flat_a, memory_order(b).to(flat_a.dtype))
    return (a.float() * b.float()).sum()


def memory_sums(g: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(g·v, |v|²) with v the gradient memory before this step."""
    return dot(g, v), dot(v, v)


def update_sums(w_prev: torch.Tensor, u: torch.Tensor, g: torch.Tensor, u_wd: torch.Tensor | None,
                trust: torch.Tensor | None, gv: torch.Tensor, vv: torch.Tensor) -> torch.Tensor:
    """The row of :data:`SUMS` for one tensor in one step (u = w_{t+1} − w_t), as one device tensor."""
    gg = dot(g, g)
    if u_wd is None:
        split = [torch.full((), float("nan"), device=u.device)] * 5
    else:
        # w·u_g and |u_g|² directly (exactly 0 for a zero gradient); u_wd·u_g = u·u_wd − |u_wd|² is O(|u|²)
        u_g = u - u_wd
        split = [dot(w_prev, u_wd), dot(u_wd, u_wd), dot(w_prev, u_g), dot(u_g, u_g), dot(u, u_wd)]
    tgg = gg if trust is None else gg * trust.float() ** 2
    one = torch.ones((), device=u.device)
    row = [one, dot(w_prev, w_prev), dot(w_prev, g), gg, dot(w_prev, u), dot(u, u), gv, vv, *split, tgg]
    return torch.stack([x.float() for x in row])


def absent_row(device: torch.device) -> torch.Tensor:
    """The row of a tensor the step did not touch (no gradient): ``present`` = 0."""
    return torch.zeros(len(SUMS), device=device)


def layer_sums(rows: np.ndarray, slot_layer: Sequence[int], n_layers: int) -> np.ndarray:
    """Sum tensor rows (R, S, K) into layer rows (R, L, K) in float64; ``present`` becomes all-present."""
    out = np.zeros((rows.shape[0], n_layers, rows.shape[2]), dtype=np.float64)
    present = np.ones((rows.shape[0], n_layers), dtype=bool)
    for slot, layer in enumerate(slot_layer):
        out[:, layer] += rows[:, slot]
        present[:, layer] &= rows[:, slot, INDEX["present"]] > 0
    out[..., INDEX["present"]] = present
    return out


def derive(sums: np.ndarray, w0_norm2: np.ndarray) -> dict[str, np.ndarray]:
    """Every metric from layer sums (..., K), float64; undefined values are NaN.

    Args:
        sums: layer sums, last axis ordered as :data:`SUMS`, with ``tgg`` = Σ lr²·t²·|g|² over the tensors.
        w0_norm2: |w_0|² per layer (broadcast against the leading axes).
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
            "lars_ratio": np.sqrt(s["tgg"]) / norm,
            "grad_autocorr": np.where(s["vv"] > 0, s["gv"] / np.sqrt(gg * s["vv"]), np.nan),
            "shrink": -(2.0 * s["w_uwd"] + s["uwd2"]),
            "growth": 2.0 * s["w_ug"] + s["ug2"],
            "cross": 2.0 * (s["u_uwd"] - s["uwd2"]),  # u_wd·u_g = u·u_wd − |u_wd|²
        }
    return metrics
