"""From batches of per-step device rows to TensorBoard points: step numbers, metrics, theory, validity.

A :class:`Batch` is what the training thread hands over every few steps: the rows of :mod:`stats` for
each recorded optimizer step (already copied off the device, or with a ``ready()`` that waits for the
copy), and what the host knew then (hook-call index, hyperparameters, wall time). :class:`Recorder`,
run on the writer thread, turns them into ``(step, walltime, {tag: value})`` points.

Steps: the x-axis counts optimizer steps that happened. A step a fused optimizer skipped on AMP overflow
(``found_inf``) is dropped and does not advance the count. A point is never written with a non-finite
value: a layer whose gradient or weight was not finite is left out of that step, with one warning.
"""

from __future__ import annotations

import math
import sys
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch

from normwatch import stats, theory
from normwatch.update import Family, Hyper

Point = tuple[int, float, dict[str, float]]
UNKNOWN_TOLERANCE = 1e-6  # split and autocorr wait while momentum normwatch did not see weighs more than this


@dataclass
class Batch:
    """Recorded steps handed from the training thread to the writer thread."""

    rows: torch.Tensor  # (R, S, K): stats.SUMS per tracked tensor per record
    skipped: torch.Tensor  # (R,): nonzero where the optimizer skipped the step (found_inf)
    calls: list[int]  # index of the step-hook call that produced each record
    hypers: list[tuple[Hyper, ...]]  # per record, per tracked tensor: its param group's
    walltimes: list[float]
    ready: Callable[[], None] = lambda: None  # waits for the device-to-host copy
    steps: list[int | None] | None = None  # the x-axis value given by the user's step_fn, per record
    unknown: list[tuple[float, ...]] | None = None  # per record, per tensor: share of v normwatch did not see
    decays: list[tuple[float, ...]] | None = None  # per record, per tensor: the factor that step applied to it


@dataclass
class Recorder:
    """Turns batches into points; owns the bookkeeping that spans batches (|w_0|², skipped steps)."""

    layer_names: Sequence[str]
    slot_layer: Sequence[int]
    numel: Sequence[int]  # elements per layer (for Adam's per-coordinate gradient RMS)
    family: Family
    every: int = 1
    filter_every: bool = False  # True when every step was recorded (skips unknown at hook time)
    w0_norm2: np.ndarray = field(default=None)  # type: ignore[assignment]
    skipped_total: int = 0
    last_step: int = -1
    _warned: set[str] = field(default_factory=set)

    def __post_init__(self) -> None:
        if self.w0_norm2 is None:
            self.w0_norm2 = np.full(len(self.layer_names), np.nan)
        self.restart_unknown()

    def extended(self, layer_names: Sequence[str], slot_layer: Sequence[int], numel: Sequence[int]) -> Recorder:
        """This recorder with layers (and their tensors) appended after the existing ones, its state kept."""
        grown = Recorder(layer_names, slot_layer, numel, self.family, self.every, self.filter_every,
                         skipped_total=self.skipped_total, last_step=self.last_step, _warned=self._warned)
        grown.w0_norm2[:len(self.w0_norm2)] = self.w0_norm2
        grown._unknown_scale[:len(self._unknown_scale)] = self._unknown_scale
        return grown

    def restart_unknown(self) -> None:
        """Forget the skipped-step corrections of the unseen-momentum shares (a state_dict sets new ones)."""
        self._unknown_scale = np.ones(len(self.slot_layer))

    def unknown_now(self, unknown: Sequence[float]) -> list[float]:
        """The training thread's shares, corrected for the steps an optimizer skipped (``found_inf``)."""
        return [float(share) for share in np.asarray(unknown, dtype=np.float64) * self._unknown_scale] \
            if len(unknown) else []

    def points(self, batch: Batch) -> list[Point]:
        batch.ready()
        rows = batch.rows.double().numpy()
        lr = np.array([[float(h.lr) for h in hypers] for hypers in batch.hypers]).reshape(rows.shape[:2])
        rows[..., stats.INDEX["tgg"]] *= lr * lr  # each tensor's own lr, for the layer's lars_ratio
        skipped = batch.skipped.numpy() != 0
        self._check_partial(rows)
        sums = stats.layer_sums(rows, self.slot_layer, len(self.layer_names))
        out: list[Point] = []
        for r, call in enumerate(batch.calls):
            if skipped[r]:
                self.skipped_total += 1
                if batch.decays is not None:  # the step did not happen: v kept its unseen share
                    decay = np.asarray(batch.decays[r], dtype=np.float64)
                    self._unknown_scale /= np.where(decay > 0, decay, 1.0)
                continue
            step = call - self.skipped_total
            if self.filter_every and step % self.every:
                continue
            if batch.steps is not None and batch.steps[r] is not None:
                step = batch.steps[r]
            withheld = frozenset()
            if batch.unknown is not None:
                unknown = np.asarray(batch.unknown[r], dtype=np.float64) * self._unknown_scale
                withheld = frozenset(layer for slot, layer in enumerate(self.slot_layer)
                                     if unknown[slot] > UNKNOWN_TOLERANCE)
            point = self._point(step, sums[r], batch.hypers[r], withheld)
            self.last_step = step
            out.append((step, batch.walltimes[r], point))
        return out

    def _point(self, step: int, sums: np.ndarray, hypers: tuple[Hyper, ...],
               withheld: frozenset[int]) -> dict[str, float]:
        present = sums[:, stats.INDEX["present"]] > 0
        ww = sums[:, stats.INDEX["ww"]]
        first = present & np.isnan(self.w0_norm2) & np.isfinite(ww) & (ww > 0)
        self.w0_norm2[first] = ww[first]
        metrics = stats.derive(sums, self.w0_norm2)
        point: dict[str, float] = {}
        for i, name in enumerate(self.layer_names):
            if not present[i]:
                continue
            raw = [sums[i, stats.INDEX[k]] for k in ("ww", "wg", "gg", "wu", "uu")]
            if not all(math.isfinite(x) for x in raw):  # a 0/0 (e.g. cos_wg of a zero gradient) is no error
                self._warn_once(f"nonfinite:{name}", f"normwatch: layer {name!r} had a non-finite gradient or "
                                f"weight at step {step}; no step with a non-finite value is recorded for it "
                                "(said once).")
                continue
            names = stats.MEASURED + (stats.SPLIT if self.family != "unknown" else ())
            if i in withheld:  # the memory still holds momentum from steps normwatch did not see
                names = tuple(n for n in names if n not in stats.SPLIT and n != "grad_autocorr")
            for metric in names:
                value = float(metrics[metric][i])
                if math.isfinite(value):
                    point[f"normwatch/{metric}/{name}"] = value
            own = [hypers[slot] for slot, layer in enumerate(self.slot_layer) if layer == i]
            hp = own[0]  # the weight's group
            point[f"normwatch/lr/{name}"] = float(hp.lr)
            point[f"normwatch/weight_decay/{name}"] = hp.weight_decay
            point[f"normwatch/momentum/{name}"] = hp.momentum
            if any(h != hp for h in own):  # tensors of one layer in groups with other hyperparameters
                continue  # no theory: the equilibrium formulas assume one lr, weight decay and momentum
            grad_rms = math.sqrt(sums[i, stats.INDEX["gg"]] / self.numel[i]) if self.numel[i] else None
            ratio, angle = theory.equilibrium(
                hp.family, lr=float(hp.lr), weight_decay=hp.weight_decay, momentum=hp.momentum,
                dampening=hp.dampening, nesterov=hp.nesterov, beta1=hp.momentum, grad_rms=grad_rms)
            if ratio is not None and math.isfinite(ratio):
                point[f"normwatch/lars_theory/{name}"] = ratio
            if angle is not None and math.isfinite(angle):
                point[f"normwatch/angle_theory/{name}"] = angle
        return point

    def _check_partial(self, rows: np.ndarray) -> None:
        """Warn once per layer whose tensors, rescaled together, did not all get a gradient in a step."""
        present = rows[..., stats.INDEX["present"]] > 0  # (R, S)
        for i, name in enumerate(self.layer_names):
            own = present[:, [slot for slot, layer in enumerate(self.slot_layer) if layer == i]]
            if (own.any(axis=1) & ~own.all(axis=1)).any():
                self._warn_once(f"partial:{name}", f"normwatch: layer {name!r} is scale-invariant only with all "
                                "its tensors rescaled together, and some of them got no gradient (frozen?) while "
                                "others did, so those steps are not recorded for it (warned once).")

    def _warn_once(self, key: str, message: str) -> None:
        if key not in self._warned:
            self._warned.add(key)
            warn_from_thread(message)


def warn_from_thread(message: str) -> None:
    """Warn from the writer thread; under ``-W error`` the error is printed, never raised in the thread."""
    try:
        warnings.warn(message, RuntimeWarning, stacklevel=2)
    except Exception as error:
        print(f"{type(error).__name__}: {error}", file=sys.stderr)
