"""The instrumented parameter tensors and the work the step hooks do on them, bucket by bucket.

Each tracked tensor has a snapshot (w_t, copied before each recorded step) and a gradient memory v (see
:mod:`normwatch.rules`), views into the flat buffers of its :class:`~normwatch.buckets.Bucket` (one per
param group, device and dtype), so each step costs a number of kernels per bucket that does not grow with
the number of tensors. Nothing here syncs with the device.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from normwatch import _dist, chunk, sums
from normwatch.buckets import Bucket
from normwatch.detect import Layer
from normwatch.rules import RULES, Hyper


@dataclass(eq=False)
class TrackedTensor:
    """One instrumented parameter tensor."""

    name: str
    layer: int  # index of its layer in the Watcher's layers
    param: nn.Parameter
    group: int | None  # index in optimizer.param_groups; None while the optimizer does not step it
    snapshot: torch.Tensor  # w_t, copied before each recorded step (a view into its bucket's buffer)
    memory: torch.Tensor  # the gradient memory v (likewise)
    unseen: float = 0.0  # weight in v of optimizer state from before attach, which normwatch cannot split


class Tracked:
    """The tracked tensors of a Watcher, in layer order, and their buckets."""

    def __init__(self, fused: bool, sharded: bool = False) -> None:
        self.tensors: list[TrackedTensor] = []
        self.buckets: list[Bucket] = []
        self.sharded = sharded  # FSDP2: every rank holds a shard; sums are all-reduced
        self._compute = chunk.fused if fused else chunk.eager
        self._first: list[bool] = []  # per tensor: its momentum buffer is made by the step under way
        self._mirrored: dict[int, bool] = {}  # per bucket: its memory mirrored the optimizer's buffer last step

    def add(self, layers: Sequence[Layer], first_layer: int, params: Mapping[str, nn.Parameter],
            group_of: Mapping[int, int]) -> None:
        """Track the parameters of ``layers`` (the Watcher's layers ``first_layer``, ``first_layer + 1``, ...)."""
        for index, layer in enumerate(layers, start=first_layer):
            for name in layer.params:
                p = params[name]
                empty = torch.empty(0)
                self.tensors.append(TrackedTensor(name, index, p, group_of[id(p)], empty, empty))
        self._rebuild()

    def regroup(self, group_of: Mapping[int, int]) -> None:
        """Each tensor's param group again (None: no longer stepped, so not recorded), and the buckets anew."""
        for tracked in self.tensors:
            tracked.group = group_of.get(id(tracked.param))
        self._rebuild()

    def numel_per_layer(self, n_layers: int) -> list[int]:
        return [sum(t.param.numel() for t in self.tensors if t.layer == i) for i in range(n_layers)]

    @property
    def nbytes(self) -> int:
        """Device memory of the snapshots and gradient memories."""
        unbucketed = sum(2 * t.memory.numel() * t.memory.element_size() for t in self.tensors if t.group is None)
        return sum(bucket.nbytes for bucket in self.buckets) + unbucketed

    def release(self) -> None:
        for tracked in self.tensors:
            tracked.snapshot = tracked.memory = torch.empty(0)
        self.tensors, self.buckets = [], []

    # -- the step hooks --------------------------------------------------------------------------------------
    def before_step(self, optimizer: torch.optim.Optimizer, hypers: Mapping[int | None, Hyper],
                    recording: bool) -> list[TrackedTensor]:
        """Note which momentum buffers this step creates; on recorded steps copy w_t into the snapshots. Returns
        the tensors whose memory starts mirroring a buffer the optimizer already holds (e.g. momentum set back
        from 0): their memory must be adopted from it (see :mod:`normwatch.resume`)."""
        self._first = [optimizer.state.get(t.param, {}).get("momentum_buffer") is None for t in self.tensors]
        adopt = []
        for n, bucket in enumerate(self.buckets):
            hp = hypers[bucket.group]
            mirrors = RULES[hp.rule].mirrors(hp)
            if mirrors and self._mirrored.get(n, True) is False:
                adopt += [self.tensors[i] for i in bucket.indices if not self._first[i]]
            self._mirrored[n] = mirrors
            if recording:
                bucket.before_recorded_step(hp, [self._state(optimizer, p) for p in bucket.params])
        return adopt

    def after_step(self, optimizer: torch.optim.Optimizer, hypers: Mapping[int | None, Hyper],
                   recording: bool, device: torch.device) -> tuple[torch.Tensor | None, tuple[float, ...]]:
        """Advance every gradient memory; on recorded steps return the rows of :data:`~normwatch.sums.SUMS`
        (one per tensor, on ``device``), and each tensor's decay factor of its memory in this step."""
        found_inf = getattr(optimizer, "found_inf", None)  # a fused optimizer under a GradScaler
        skip = found_inf.reshape(()) > 0 if found_inf is not None else None  # on the device: no sync
        rows = torch.zeros(len(self.tensors), len(sums.SUMS), device=device) if recording else None
        decays = [1.0] * len(self.tensors)
        with torch.no_grad():
            for bucket in self.buckets:
                hp = hypers[bucket.group]
                mirrors = RULES[hp.rule].mirrors(hp)  # a first step matters where v mirrors a momentum buffer
                present = [p.grad is not None for p in bucket.params]
                grads = [_dist.local(p.grad) if p.grad is not None else None for p in bucket.params]
                first = [self._first[i] and mirrors for i in bucket.indices]
                states = [self._state(optimizer, p) for p in bucket.params]
                if recording:
                    index, bucket_rows = bucket.recorded_rows(hp, grads, states, first, present, skip, self._compute)
                    if bucket_rows is not None:
                        rows.index_copy_(0, index, bucket_rows.to(device))
                else:
                    bucket.advance_memory(hp, grads, states, first, present, skip)
                for i, here in zip(bucket.indices, present):
                    if here:
                        decays[i] = hp.memory_beta  # v's old part scaled by μ (mirrored momentum) or β
                        self.tensors[i].unseen *= hp.memory_beta
        if rows is not None and self.sharded:
            _dist.sum_over_ranks(rows)  # every per-tensor sum is a sum over elements: shards add up
        return rows, tuple(decays)

    def _state(self, optimizer: torch.optim.Optimizer, p: nn.Parameter) -> dict[str, Any]:
        state = optimizer.state.get(p, {})
        if self.sharded:
            state = {k: _dist.local(v) if isinstance(v, torch.Tensor) else v for k, v in state.items()}
        return state

    def _rebuild(self) -> None:
        """Buckets of the stepped tensors by (param group, device, dtype), keeping every memory's value."""
        kept = [t.memory.detach().clone() if t.memory.numel() else None for t in self.tensors]
        keys: dict[tuple[Any, ...], list[int]] = {}
        for i, t in enumerate(self.tensors):
            if t.group is not None:
                shard = _dist.local(t.param.detach())
                keys.setdefault((t.group, shard.device, shard.dtype), []).append(i)
        self.buckets = [Bucket(key[0], indices, [self.tensors[i].param for i in indices])
                        for key, indices in keys.items()]
        self._mirrored = {}
        for bucket in self.buckets:
            for i, snapshot, memory in zip(bucket.indices, bucket.snapshot_views, bucket.memory_views):
                self.tensors[i].snapshot, self.tensors[i].memory = snapshot, memory
        for t, value in zip(self.tensors, kept):
            if t.group is None:  # not stepped: its memory waits, in a tensor of its own
                shard = _dist.local(t.param.detach())
                t.memory = value if value is not None else torch.zeros_like(shard)
                t.snapshot = torch.empty(0)
            elif value is not None:
                t.memory.copy_(value)
