"""The tracked tensors of one param group on one device with one dtype, in flat buffers, and each step's work.

(``states`` are the optimizer's per-tensor state dicts, as this rank holds them.) A bucket holds every tensor's
snapshot w_t and gradient memory v in two flat buffers (:mod:`normwatch.flat`),
so that a step costs a number of kernels that does not grow with the number of tensors:

- before a recorded step, one ``_foreach_copy_`` of the weights into the snapshot (and of the optimizer state
  its rule reads from before the step, for Adadelta);
- after a step that is not recorded, the memory's step with a few ``_foreach`` calls;
- after a recorded step, per chunk of at most :data:`CHUNK` elements: the gradients, the new weights and the
  optimizer state the rule reads are copied into scratch rows (one ``_foreach_copy_`` each), then
  :func:`normwatch.chunk.partials` computes every sum with a few kernels over the chunk; one segmented sum
  turns the per-block partials into per-tensor sums.

Extra memory: the two flat buffers (2× the instrumented parameters; float32 for 16-bit ones), and during a
recorded step scratch rows of ``min(group, CHUNK)`` elements (the gradients, the new weights, the state rows
of the rule and one for products).
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch

from normwatch import _dist, chunk
from normwatch.flat import BLOCK, Blocks, Layout
from normwatch.rules import RULES, Hyper, Rule

CHUNK = 1 << 23  # elements of one chunk's scratch row (32 MiB in float32): bounds the scratch, whatever the model
Plan = tuple[tuple[int, int], ...]  # chunks: (first, stop) index ranges into the bucket's tensors
Grads = Sequence[torch.Tensor | None]


def buffer_dtype(dtype: torch.dtype) -> torch.dtype:
    """Snapshots, memories and scratch: float32 for 16-bit weights (their differences are exact there)."""
    return torch.float32 if dtype in (torch.float16, torch.bfloat16) else dtype


class Bucket:
    """Tensors ``indices`` (into the Watcher's tracked tensors) of param group ``group``, in flat buffers."""

    def __init__(self, group: int, indices: Sequence[int], params: Sequence[torch.nn.Parameter]) -> None:
        self.group = group
        self.indices = list(indices)
        self.params = list(params)
        shards = [_dist.local(p.detach()) for p in params]
        self.layout = Layout.of(shards)
        self.device = shards[0].device
        self.dtype = buffer_dtype(shards[0].dtype)
        self.snapshot = torch.zeros(self.layout.size, dtype=self.dtype, device=self.device)
        self.memory = torch.zeros(self.layout.size, dtype=self.dtype, device=self.device)
        self.snapshot_views = self.layout.views(self.snapshot)
        self.memory_views = self.layout.views(self.memory)
        self.index = _ints(tuple(self.indices), self.device)
        self._plans: dict[tuple[bool, ...], Plan] = {}
        self._before: dict[str, torch.Tensor] = {}  # state from before a recorded step, where the rule reads it

    @property
    def nbytes(self) -> int:
        return 2 * self.snapshot.numel() * self.snapshot.element_size()

    def weights(self) -> list[torch.Tensor]:
        return [_dist.local(p.detach()) for p in self.params]

    # -- the steps ----------------------------------------------------------------------------------------
    def before_recorded_step(self, hp: Hyper, states: Sequence[Mapping[str, Any]]) -> None:
        """Copy w_t into the snapshot, and the state the rule reads as it was before the step."""
        torch._foreach_copy_(self.snapshot_views, self.weights())
        self._before = {}
        for key in RULES[hp.rule].pre_state_keys(hp):
            flat = torch.zeros(self.layout.size, dtype=self.dtype, device=self.device)  # no state yet: zeros
            held = [(view, s[key]) for view, s in zip(self.layout.views(flat), states) if key in s]
            if held:
                torch._foreach_copy_(*map(list, zip(*held)))
            self._before[key] = flat

    def advance_memory(self, hp: Hyper, grads: Grads, states: Sequence[Mapping[str, Any]], first: Sequence[bool],
                       present: Sequence[bool], skip: torch.Tensor | None) -> None:
        """A step that is not recorded: ``v ← a·v + b·(s·ĝ)`` with ``_foreach`` kernels, per run of tensors that
        got a gradient and share the first-step flag (one run, usually)."""
        rule = RULES[hp.rule]
        for first_i, stop in self._plan(present, first, chunked=False):
            g = list(grads[first_i:stop])
            if rule.mirrors(hp):
                g = rule.scaled_gradients(hp, g, states[first_i:stop])
            a, b = rule.memory_coefficients(hp, first[first_i])
            b = -b if hp.maximize else b  # the optimizer feeds −g to its state
            views = self.memory_views[first_i:stop]
            if skip is not None:  # select, not multiply by 0: a skipped step's gradient may be inf or NaN
                start, end = self.layout.span(first_i, stop)
                old = self.memory[start:end]
                new = old * a
                torch._foreach_add_(self.layout.part(first_i, stop).views(new), g, alpha=b)
                old.copy_(torch.where(skip, old, new))
            elif a == 0.0:
                torch._foreach_copy_(views, g)
                torch._foreach_mul_(views, b)
            else:
                torch._foreach_mul_(views, a)
                torch._foreach_add_(views, g, alpha=b)

    def recorded_rows(self, hp: Hyper, grads: Grads, states: Sequence[Mapping[str, Any]], first: Sequence[bool],
                      present: Sequence[bool], skip: torch.Tensor | None,
                      compute: Callable[..., None]) -> tuple[torch.Tensor, torch.Tensor | None]:
        """A recorded step: advance the memory and return the present tensors (as indices into the Watcher's
        tensors, on the device) and their rows of :data:`~normwatch.sums.SUMS`, ``(n, K)`` float32."""
        plan = self._plan(present, first, chunked=True)
        if not plan:
            return self.index, None
        rule = RULES[hp.rule]
        keys = rule.state_keys(hp)
        largest = max(self._length(*piece) for piece in plan)
        scratch = torch.zeros(2 + len(keys), largest, dtype=self.dtype, device=self.device)
        product = torch.empty(largest, dtype=self.dtype, device=self.device)
        blocks = torch.empty(len(chunk.PARTIALS), self.layout.size // BLOCK, dtype=self.dtype, device=self.device)
        weights = self.weights()
        for n, (first_i, stop) in enumerate(plan):
            if n:  # another chunk's layout: its padding must be zero in every row
                scratch.zero_()
            start, end = self.layout.span(first_i, stop)
            part = self.layout.part(first_i, stop)
            rows = scratch[:, :end - start]
            torch._foreach_copy_(part.views(rows[0]), list(grads[first_i:stop]))
            torch._foreach_copy_(part.views(rows[1]), weights[first_i:stop])
            for key, row in zip(keys, rows[2:]):
                torch._foreach_copy_(part.views(row), [s[key].expand_as(w)
                                                       for s, w in zip(states[first_i:stop], weights[first_i:stop])])
            state = {key: _blocked(row) for key, row in zip(keys, rows[2:])}
            state.update({key: _blocked(flat[start:end]) for key, flat in self._before.items()})
            spreads = self._spreads(rule, hp, part, states[first_i:stop])
            run = chunk.eager if first[first_i] else compute  # a first step happens once: not worth compiling
            run(hp, _blocked(self.snapshot[start:end]), _blocked(self.memory[start:end]), _blocked(rows[0]),
                _blocked(rows[1]), state, spreads, first[first_i], skip, blocks[:, start // BLOCK:end // BLOCK],
                _blocked(product[:end - start]))
        self._before = {}
        return self._rows(plan, blocks)

    # -- helpers -------------------------------------------------------------------------------------------
    def _plan(self, present: Sequence[bool], first: Sequence[bool], chunked: bool) -> Plan:
        """Runs of consecutive present tensors with the same first-step flag; ``chunked``: each at most
        :data:`CHUNK` elements (a larger tensor is a chunk of its own). Cached: the pattern rarely changes."""
        key = (chunked, *present, *first)
        if key not in self._plans:
            pieces, start = [], None
            for i in range(len(self.params) + 1):
                ends = i == len(self.params) or not present[i] or (start is not None and first[i] != first[start])
                if start is not None and not ends and chunked and self._length(start, i + 1) > CHUNK:
                    ends = True
                if start is not None and ends:
                    pieces.append((start, i))
                    start = None
                if i < len(self.params) and present[i] and start is None:
                    start = i
            self._plans[key] = tuple(pieces)
        return self._plans[key]

    def _length(self, first: int, stop: int) -> int:
        start, end = self.layout.span(first, stop)
        return end - start

    def _spreads(self, rule: Rule, hp: Hyper, part: Layout,
                 states: Sequence[Mapping[str, Any]]) -> dict[str, torch.Tensor]:
        """The rule's per-tensor values, per block, in the rows' dtype (computed in double)."""
        keys = rule.scalar_keys(hp)
        if not keys:
            return {}
        stacked = {key: _on_device(torch.stack([torch.as_tensor(s[key]).detach().reshape(()).double()
                                                for s in states]), self.device) for key in keys}
        blocks = Blocks(_ints(part.blocks, self.device), sum(part.blocks))
        return {name: blocks.spread(value).to(self.dtype) for name, value in rule.per_tensor(hp, stacked).items()}

    def _rows(self, plan: Plan, blocks: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The present tensors' indices and rows ``[present, the sums of chunk.PARTIALS]`` from block partials."""
        spans = [self.layout.span(*piece) for piece in plan]
        if len(spans) == 1 and spans[0] == (0, self.layout.size):
            used, index = blocks, self.index
        else:
            used = torch.cat([blocks[:, s // BLOCK:e // BLOCK] for s, e in spans], dim=1)
            index = _ints(tuple(self.indices[i] for first, stop in plan for i in range(first, stop)), self.device)
        counts = _ints(tuple(n for first, stop in plan for n in self.layout.blocks[first:stop]), self.device)
        tensor_sums = torch.segment_reduce(used.double().T, "sum", lengths=counts, axis=0, unsafe=True)
        return index, torch.cat([torch.ones_like(tensor_sums[:, :1]), tensor_sums], dim=1).float()


def _on_device(values: torch.Tensor, device: torch.device) -> torch.Tensor:
    """A small host tensor on the buffers' device without a host-device sync (pinned, non-blocking)."""
    if values.device == device:
        return values
    if device.type == "cuda":
        return values.pin_memory().to(device, non_blocking=True)
    return values.to(device)


@functools.lru_cache(maxsize=1024)
def _ints(values: tuple[int, ...], device: torch.device) -> torch.Tensor:
    """A small int64 tensor on ``device``, made once (making it each step would copy from the host)."""
    return torch.tensor(values, dtype=torch.int64, device=device)


def _blocked(flat: torch.Tensor) -> torch.Tensor:
    return flat.view(-1, BLOCK)
