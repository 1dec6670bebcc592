"""Per-step sums: a few dot products per tensor on the device, every metric derived from them on the host.

On the device (:mod:`normwatch.chunk`), each tracked tensor contributes the sums in :data:`SUMS` (w = w_t,
the weight before the step; u = w_{t+1} − w_t; g the gradient the step used; v the gradient memory before
the step; u_wd the weight-decay part of u, u_g = u − u_wd; t the LARS trust ratio, 1 elsewhere; ``tgg`` =
t²|g|²). Nothing is read back per step. On the host (the writer thread), layers are sums of their tensors
and, in float64:

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

SUMS = ("present", "ww", "gg", "vv", "uu", "uwd2", "ug2", "tgg", "wg", "gv", "wu", "w_uwd", "u_uwd", "w_ug")
INDEX = {name: i for i, name in enumerate(SUMS)}


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
