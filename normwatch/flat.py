"""Many tensors as one flat buffer, in blocks: the layout that lets a few kernels serve any number of tensors.

Each tensor occupies whole blocks of :data:`BLOCK` elements (the rest of its last block is zero padding), so
a flat buffer viewed as ``(blocks, BLOCK)`` gives, with one reduction over its rows, a partial sum per block
that belongs to exactly one tensor; summing those partials per tensor (in float64) gives each tensor's sum.
Within a block the sum is a float32 tree or vectorised sum over at most 1,024 terms, across blocks float64:
as accurate as one ``torch.dot`` per tensor, without a kernel per tensor.

A tensor's view into a flat buffer has the tensor's own strides (channels-last included), so a copy between
them is a plain elementwise copy and every flat buffer of a layout holds the elements in the same order.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

BLOCK = 1024  # elements per block


def blocks_of(numel: int) -> int:
    return -(-numel // BLOCK)


@dataclass(frozen=True)
class Layout:
    """Where each of a list of tensors sits in a flat buffer: ``offsets[i]`` (a multiple of BLOCK) and
    ``numels[i]`` elements, laid out with ``strides[i]`` of ``shapes[i]`` (a dense permutation)."""

    shapes: tuple[torch.Size, ...]
    strides: tuple[tuple[int, ...], ...]
    offsets: tuple[int, ...]
    numels: tuple[int, ...]

    @staticmethod
    def of(tensors: Sequence[torch.Tensor]) -> Layout:
        offsets, at = [], 0
        for t in tensors:
            offsets.append(at)
            at += blocks_of(t.numel()) * BLOCK
        return Layout(tuple(t.shape for t in tensors), tuple(_dense_strides(t) for t in tensors), tuple(offsets),
                      tuple(t.numel() for t in tensors))

    @property
    def size(self) -> int:
        """Elements of a flat buffer, padding included."""
        return self.offsets[-1] + blocks_of(self.numels[-1]) * BLOCK if self.offsets else 0

    @property
    def blocks(self) -> tuple[int, ...]:
        """Blocks per tensor."""
        return tuple(blocks_of(n) for n in self.numels)

    def views(self, flat: torch.Tensor) -> list[torch.Tensor]:
        """Each tensor's view into ``flat`` (whose element 0 is this layout's offset 0)."""
        return [flat.as_strided(shape, stride, flat.storage_offset() + offset)
                for shape, stride, offset in zip(self.shapes, self.strides, self.offsets)]

    def part(self, first: int, stop: int) -> Layout:
        """The layout of tensors ``first:stop`` alone, offsets relative to the first of them."""
        base = self.offsets[first] if first < len(self.offsets) else self.size
        return Layout(self.shapes[first:stop], self.strides[first:stop],
                      tuple(o - base for o in self.offsets[first:stop]), self.numels[first:stop])

    def span(self, first: int, stop: int) -> tuple[int, int]:
        """Element range ``[start, end)`` of tensors ``first:stop`` in the flat buffer."""
        part = self.part(first, stop)
        start = self.offsets[first] if first < len(self.offsets) else self.size
        return start, start + part.size


def _dense_strides(t: torch.Tensor) -> tuple[int, ...]:
    """``t``'s strides if they are a dense permutation (contiguous, channels-last, ...), else contiguous ones."""
    order = sorted(range(t.dim()), key=lambda d: (t.stride(d), -d))
    expected, dense = 1, True
    for d in order:
        if t.shape[d] != 1 and t.stride(d) != expected:
            dense = False
        expected *= t.shape[d]
    if dense and t.numel() > 0:
        return tuple(t.stride())
    contiguous, step = [0] * t.dim(), 1
    for d in reversed(range(t.dim())):
        contiguous[d] = step
        step *= t.shape[d]
    return tuple(contiguous)


@dataclass(frozen=True)
class Blocks:
    """A layout's blocks per tensor, as a device tensor made once (making one per step would copy from the host)."""

    counts: torch.Tensor  # (tensors,) int64, on the buffers' device
    total: int

    @staticmethod
    def of(layout: Layout, device: torch.device) -> Blocks:
        return Blocks(torch.tensor(layout.blocks, dtype=torch.int64, device=device), sum(layout.blocks))

    def spread(self, values: torch.Tensor) -> torch.Tensor:
        """A per-tensor vector repeated over each tensor's blocks, ``(blocks, 1)``: it scales a ``(blocks, BLOCK)``
        view tensor by tensor (no host sync: the output size is given)."""
        return torch.repeat_interleave(values, self.counts, output_size=self.total).unsqueeze(1)

    def sums(self, partials: torch.Tensor) -> torch.Tensor:
        """Per-tensor sums, in float64, of per-block partials ``(..., blocks)``: ``(..., tensors)``. ``unsafe``
        skips checks of the lengths (ours, always right) that would read them back from the device."""
        return torch.segment_reduce(partials.double().T, "sum", lengths=self.counts, axis=0, unsafe=True).T
