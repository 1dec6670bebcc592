"""Continuing a run: normwatch's own state, and what it can and cannot know of an optimizer that stepped before.

``Watcher.state_dict()`` holds what a resumed run needs to continue the same curves: the step count, |w_0|²
per layer, the gradient memory of every tensor and the share of it from steps normwatch did not see. A
loaded state reaches each layer when it is recorded (at detection, or when a param group adds it).

Without it, an optimizer that has stepped before (attached mid-run, resumed without normwatch's state)
holds momentum normwatch never saw. Its memory then starts as the optimizer's own buffer: exact where that
buffer holds gradients alone (AdamW, no weight decay); elsewhere the decay in it counts as gradient, a share
that decays as μᵏ, so the shrink/growth split and grad_autocorr are withheld until it is at most
:data:`~normwatch.records.UNKNOWN_TOLERANCE`. Every other metric is exact from the first step.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch

from normwatch import _dist
from normwatch._warn import warn
from normwatch.records import UNKNOWN_TOLERANCE
from normwatch.rules import RULES, Hyper
from normwatch.tracked import TrackedTensor

STATE_VERSION = 1


class Resume:
    """The loaded state (if any) and what has been said about unseen momentum."""

    def __init__(self) -> None:
        self.loaded: dict[str, Any] | None = None
        self._said_withheld: set[str] = set()  # layers the withheld-split warning named

    def load(self, state: dict[str, Any]) -> None:
        if state.get("version") != STATE_VERSION:
            raise ValueError(f"Unknown normwatch state version {state.get('version')!r}.")
        self.loaded = state

    def state_dict(self, step: int, layer_names: Sequence[str], w0_norm2: np.ndarray,
                   tensors: Sequence[TrackedTensor], unseen_now: Sequence[float]) -> dict[str, Any]:
        """normwatch's state now; what was loaded for layers not recorded yet is kept for the next resume."""
        recorded = {t.name for t in tensors} | set(layer_names)
        kept = {key: {name: value for name, value in (self.loaded or {}).get(key, {}).items() if name not in recorded}
                for key in ("w0_norm2", "memory", "unknown")}
        return {
            "version": STATE_VERSION,
            "step": step,
            "w0_norm2": {**kept["w0_norm2"], **dict(zip(layer_names, w0_norm2.tolist()))},
            "memory": {**kept["memory"], **{t.name: t.memory.detach().clone() for t in tensors}},
            "unknown": {**kept["unknown"], **{t.name: share for t, share in zip(tensors, unseen_now) if share > 0}},
        }

    def restore(self, layers: Sequence[tuple[int, str]], tensors: Sequence[TrackedTensor],
                w0_norm2: np.ndarray) -> None:
        """Apply the loaded state to these (index, name) layers and these tensors."""
        if self.loaded is None:
            return
        for index, name in layers:
            if name in self.loaded["w0_norm2"]:
                w0_norm2[index] = self.loaded["w0_norm2"][name]
        for tracked in tensors:
            if tracked.name in self.loaded["memory"]:
                tracked.memory.copy_(self.loaded["memory"][tracked.name])
                tracked.unseen = float(self.loaded.get("unknown", {}).get(tracked.name, 0.0))

    def forget_stepped(self, stepping: set[str]) -> None:
        """Drop the loaded memories of tensors the optimizer steps while their layer waits: stale by then."""
        memory = self.loaded["memory"] if self.loaded is not None else {}
        if stepping & set(memory):
            self.loaded = {**self.loaded, "memory": {k: v for k, v in memory.items() if k not in stepping}}

    def adopt_optimizer_state(self, tensors: Sequence[TrackedTensor], optimizer: torch.optim.Optimizer,
                              hypers: Mapping[int | None, Hyper], use_loaded: bool = True) -> None:
        """Start each memory from the optimizer's buffer (its rule's :meth:`~normwatch.rules.Rule.buffer_key`)
        where it has one and no loaded state restores it; mark it unseen where that buffer hides decay."""
        known = self.loaded["memory"] if self.loaded is not None and use_loaded else {}
        for tracked in tensors:
            hp = hypers.get(tracked.group)
            if tracked.name in known or hp is None:
                continue
            rule = RULES[hp.rule]
            key = rule.buffer_key(hp)
            buffer = optimizer.state.get(tracked.param, {}).get(key) if key is not None else None
            if not isinstance(buffer, torch.Tensor):
                continue
            tracked.memory.copy_(_dist.local(buffer))
            if rule.hides_decay(hp):
                tracked.unseen = 1.0

    def say_withheld(self, optimizer: torch.optim.Optimizer, layer_names: Sequence[str],
                     tensors: Sequence[TrackedTensor]) -> None:
        """One warning naming the layers whose split newly waits for unseen momentum to decay."""
        withheld = sorted({layer_names[t.layer] for t in tensors if t.unseen > UNKNOWN_TOLERANCE} - self._said_withheld)
        if withheld:
            self._said_withheld.update(withheld)
            warn(f"normwatch: {type(optimizer).__name__} has momentum from steps normwatch did not see "
                 "(attached mid-run, resumed without normwatch's state_dict, or before detection), so the "
                 f"shrink/growth/cross split and grad_autocorr of {', '.join(withheld)} are withheld until that "
                 f"momentum has decayed below {UNKNOWN_TOLERANCE:g}; every other metric is recorded.",
                 RuntimeWarning)
