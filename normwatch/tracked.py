"""The instrumented parameter tensors, their buffers, and the work the step hooks do on them.

Each tracked tensor has a snapshot (w_t, copied before each recorded step) and a gradient memory v (see
:mod:`normwatch.update`): 2× the instrumented parameters of extra device memory. Nothing here syncs with
the device.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from normwatch import _dist, sums, update
from normwatch.detect import Layer
from normwatch.tensor_step import fused_tensor_step, tensor_step


@dataclass(eq=False)
class TrackedTensor:
    """One instrumented parameter tensor."""

    name: str
    layer: int  # index of its layer in the Watcher's layers
    param: nn.Parameter
    group: int | None  # index in optimizer.param_groups; None while the optimizer does not step it
    snapshot: torch.Tensor  # w_t, copied before each recorded step
    memory: torch.Tensor  # the gradient memory v
    unseen: float = 0.0  # weight in v of optimizer state from before attach, which normwatch cannot split


class Tracked:
    """The tracked tensors of a Watcher, in layer order."""

    def __init__(self, fused: bool, sharded: bool = False) -> None:
        self.tensors: list[TrackedTensor] = []
        self.sharded = sharded  # FSDP2: every rank holds a shard; sums are all-reduced
        self._tensor_step = fused_tensor_step if fused else tensor_step
        self._first: list[bool] = []  # per tensor: its momentum buffer is made by the step under way

    def add(self, layers: Sequence[Layer], first_layer: int, params: Mapping[str, nn.Parameter],
            group_of: Mapping[int, int]) -> None:
        """Track the parameters of ``layers`` (the Watcher's layers ``first_layer``, ``first_layer + 1``, ...)."""
        for index, layer in enumerate(layers, start=first_layer):
            for name in layer.params:
                p = params[name]
                shard = _dist.local(p.detach())
                self.tensors.append(TrackedTensor(name, index, p, group_of[id(p)],
                                                  torch.empty_like(shard, memory_format=torch.preserve_format),
                                                  torch.zeros_like(shard, memory_format=torch.preserve_format)))

    def regroup(self, group_of: Mapping[int, int]) -> None:
        """Each tensor's param group again (None: no longer stepped, so not recorded)."""
        for tracked in self.tensors:
            tracked.group = group_of.get(id(tracked.param))

    def numel_per_layer(self, n_layers: int) -> list[int]:
        return [sum(t.param.numel() for t in self.tensors if t.layer == i) for i in range(n_layers)]

    @property
    def nbytes(self) -> int:
        """Device memory of the snapshots and gradient memories."""
        return sum(2 * t.snapshot.numel() * t.snapshot.element_size() for t in self.tensors)

    def release(self) -> None:
        for tracked in self.tensors:
            tracked.snapshot = tracked.memory = torch.empty(0)
        self.tensors = []

    def before_step(self, optimizer: torch.optim.Optimizer, recording: bool) -> None:
        """Note which momentum buffers this step creates; on recorded steps copy w_t into the snapshots."""
        self._first = [optimizer.state.get(t.param, {}).get("momentum_buffer") is None for t in self.tensors]
        if recording:
            torch._foreach_copy_([t.snapshot for t in self.tensors],
                                 [_dist.local(t.param.detach()) for t in self.tensors])

    def after_step(self, optimizer: torch.optim.Optimizer, family: update.Family, hypers: Mapping[int | None, Any],
                   recording: bool, device: torch.device) -> tuple[torch.Tensor | None, tuple[float, ...]]:
        """Advance every gradient memory; on recorded steps return the rows of :data:`~normwatch.sums.SUMS`
        (one per tensor, on ``device``), and each tensor's decay factor of its memory in this step."""
        found_inf = getattr(optimizer, "found_inf", None)  # a fused optimizer under a GradScaler
        rows, decays = [], []
        with torch.no_grad():
            for tracked, first in zip(self.tensors, self._first):
                g = tracked.param.grad
                if g is None or tracked.group is None:
                    if recording:
                        rows.append(sums.absent_row(device))
                    decays.append(1.0)
                    continue
                hp = hypers[tracked.group]
                row = self._step_one(tracked, hp, family, optimizer, _dist.local(g) if self.sharded else g,
                                     first, recording, found_inf)
                if row is not None:
                    rows.append(row.to(device))
                decays.append(hp.memory_beta)  # v's old part scaled by μ (mirrored momentum) or β (average)
                tracked.unseen *= hp.memory_beta
        if not recording:
            return None, tuple(decays)
        stacked = torch.stack(rows)
        if self.sharded:
            _dist.sum_over_ranks(stacked)  # every per-tensor sum is a sum over elements: shards add up
        return stacked, tuple(decays)

    def _step_one(self, tracked: TrackedTensor, hp: update.Hyper, family: update.Family,
                  optimizer: torch.optim.Optimizer, g: torch.Tensor, first: bool, recording: bool,
                  found_inf: torch.Tensor | None) -> torch.Tensor | None:
        state = optimizer.state.get(tracked.param, {})
        if self.sharded:
            state = {k: _dist.local(v) if isinstance(v, torch.Tensor) else v for k, v in state.items()}
        trust = state.get("trust_ratio") if family == "lars" else None
        v = tracked.memory
        before = v.clone() if found_inf is not None else None
        row = self._tensor_step(family, hp, tracked.snapshot, _dist.local(tracked.param.detach()), g, v, state,
                                trust, first, recording)
        if before is not None:  # a step the optimizer skipped did not happen: v keeps its value (the writer
            v.copy_(torch.where(found_inf.reshape([1] * v.dim()) > 0, before, v))  # thread undoes the decay)
        return row
