"""From batches of per-step device rows to TensorBoard points: step numbers, metrics, theory, validity.

A :class:`Batch` is what the training thread hands over every few steps: the rows of :mod:`~normwatch.sums`
for each recorded optimizer step (already copied off the device, or with a ``ready()`` that waits for the
copy), and a :class:`StepRecord` of what the host knew then (hook-call index, hyperparameters, wall time).
:class:`Recorder`, run on the writer thread, turns them into ``(step, walltime, {tag: value})`` points.

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

from normwatch import metrics, sums, theory
from normwatch.rules import RULES, Hyper, theory_inputs

Point = tuple[int, float, dict[str, float]]
UNKNOWN_TOLERANCE = 1e-6  # split and autocorr wait while momentum normwatch did not see weighs more than this


@dataclass(frozen=True, kw_only=True)
class StepRecord:
    """What the training thread knew about one recorded step, beside its device row."""

    call: int  # index of the step-hook call that produced the record (AMP-skipped steps included)
    step: int | None  # the x-axis value given by the user's step_fn, if any
    hypers: tuple[Hyper, ...]  # per tracked tensor: its param group's
    walltime: float
    unseen: tuple[float, ...]  # per tracked tensor: the share of v from steps normwatch did not see
    decays: tuple[float, ...]  # per tracked tensor: the factor this step applied to v


@dataclass(frozen=True, kw_only=True)
class Batch:
    """Recorded steps handed from the training thread to the writer thread."""

    rows: torch.Tensor  # (R, S, K): sums.SUMS per tracked tensor per record
    skipped: torch.Tensor  # (R,): nonzero where the optimizer skipped the step (found_inf)
    records: list[StepRecord]
    ready: Callable[[], None] = lambda: None  # waits for the device-to-host copy


@dataclass(kw_only=True)
class Recorder:
    """Turns batches into points on the writer thread; owns what spans batches (|w_0|², skipped steps).

    The Watcher changes it (:meth:`extend`, |w_0|² on resume) only while the writer thread is idle, after
    draining it.
    """

    layer_names: list[str]
    slot_layer: list[int]
    numel: list[int]  # elements per layer (for Adam's per-coordinate gradient RMS)
    shapes: list[tuple[int, ...]] = field(default_factory=list)  # each layer's weight shape (Muon's theory)
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

    def extend(self, layer_names: Sequence[str], slot_layer: Sequence[int], numel: Sequence[int],
               shapes: Sequence[tuple[int, ...]]) -> None:
        """Append layers (and their tensors) after the existing ones, keeping the state of those."""
        old_layers, old_slots = len(self.layer_names), len(self.slot_layer)
        self.layer_names, self.slot_layer, self.numel = list(layer_names), list(slot_layer), list(numel)
        self.shapes = list(shapes)
        self.w0_norm2 = np.concatenate([self.w0_norm2, np.full(len(layer_names) - old_layers, np.nan)])
        self._unknown_scale = np.concatenate([self._unknown_scale, np.ones(len(slot_layer) - old_slots)])

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
        lr = np.array([[float(h.lr) for h in record.hypers] for record in batch.records]).reshape(rows.shape[:2])
        rows[..., sums.INDEX["tgg"]] *= lr * lr  # each tensor's own lr, for the layer's lars_ratio
        skipped = batch.skipped.numpy() != 0
        self._check_partial(rows)
        layer_rows = sums.layer_sums(rows, self.slot_layer, len(self.layer_names))
        out: list[Point] = []
        for r, record in enumerate(batch.records):
            if skipped[r]:
                self.skipped_total += 1
                decay = np.asarray(record.decays, dtype=np.float64)  # the step did not happen: v kept its share
                self._unknown_scale /= np.where(decay > 0, decay, 1.0)
                continue
            step = record.call - self.skipped_total
            if self.filter_every and step % self.every:
                continue
            if record.step is not None:
                step = record.step
            unseen = np.asarray(record.unseen, dtype=np.float64) * self._unknown_scale
            withheld = frozenset(layer for slot, layer in enumerate(self.slot_layer)
                                 if unseen[slot] > UNKNOWN_TOLERANCE)
            point = self._point(step, layer_rows[r], record.hypers, withheld)
            self.last_step = step
            out.append((step, record.walltime, point))
        return out

    def _point(self, step: int, layer_rows: np.ndarray, hypers: tuple[Hyper, ...],
               withheld: frozenset[int]) -> dict[str, float]:
        present = layer_rows[:, sums.INDEX["present"]] > 0
        ww = layer_rows[:, sums.INDEX["ww"]]
        first = present & np.isnan(self.w0_norm2) & np.isfinite(ww) & (ww > 0)
        self.w0_norm2[first] = ww[first]
        derived = sums.derive(layer_rows, self.w0_norm2)
        point: dict[str, float] = {}
        for i, name in enumerate(self.layer_names):
            if not present[i]:
                continue
            raw = [layer_rows[i, sums.INDEX[k]] for k in ("ww", "wg", "gg", "wu", "uu")]
            if not all(math.isfinite(x) for x in raw):  # a 0/0 (e.g. cos_wg of a zero gradient) is no error
                self._warn_once(f"nonfinite:{name}", f"normwatch: layer {name!r} had a non-finite gradient or "
                                f"weight at step {step}; no step with a non-finite value is recorded for it "
                                "(said once).")
                continue
            own = [hypers[slot] for slot, layer in enumerate(self.slot_layer) if layer == i]
            hp = own[0]  # the weight's group
            for metric in self._measured(hp, withheld_layer=i in withheld):
                value = float(derived[metric][i])
                if math.isfinite(value):
                    point[metrics.tag(metric, name)] = value
            point[metrics.tag("lr", name)] = float(hp.lr)
            point[metrics.tag("weight_decay", name)] = hp.weight_decay
            point[metrics.tag("momentum", name)] = hp.momentum_tag
            if all(h == hp for h in own):  # no theory across groups: the formulas assume one η, λ and μ
                measured = {key: layer_rows[i, sums.INDEX[key]] for key in ("gg", "ww")}
                point.update(self._theory(name, hp, measured, self.numel[i], self.shapes[i]))
        return point

    @staticmethod
    def _measured(hp: Hyper, withheld_layer: bool) -> tuple[str, ...]:
        """The metrics derived from the sums for a layer: the split only under a known rule, and neither the
        split nor grad_autocorr while the memory holds momentum normwatch did not see."""
        names = metrics.names("measured") + (metrics.names("split") if hp.rule != "unknown" else ())
        if withheld_layer:
            names = tuple(n for n in names if n not in metrics.names("split") and n != "grad_autocorr")
        return names

    @staticmethod
    def _theory(name: str, hp: Hyper, measured: dict[str, float], numel: int,
                shape: tuple[int, ...]) -> dict[str, float]:
        """The theory tags of one layer: each where its formula applies and is finite."""
        if hp.maximize or not RULES[hp.rule].theory_applies(hp):
            return {}  # ascending, or a variant the formulas do not describe
        gg, ww = measured["gg"], measured["ww"]
        ratio, angle = theory.equilibrium(
            hp.rule, **theory_inputs(hp), grad_rms=math.sqrt(gg / numel) if numel else None,
            scale_free_grad_sq=gg * ww, numel=numel, weight_rms=math.sqrt(ww / numel) if numel else None,
            shape=shape if len(shape) == 2 else None)
        values = {"lars_theory": ratio, "angle_theory": angle}
        return {metrics.tag(metric, name): value for metric, value in values.items()
                if value is not None and math.isfinite(value)}

    def _check_partial(self, rows: np.ndarray) -> None:
        """Warn once per layer whose tensors, rescaled together, did not all get a gradient in a step."""
        present = rows[..., sums.INDEX["present"]] > 0  # (R, S)
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
