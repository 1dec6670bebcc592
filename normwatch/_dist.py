"""torch.distributed, as far as normwatch needs it: who writes, and what a shard holds.

DDP replicates parameters and averages gradients before the optimizer steps, so every rank computes
the same statistics: only global rank 0 records, with no collective. FSDP2 (``fully_shard``) shards
parameters, gradients and optimizer state as DTensors: every rank sums over its local shard and one
all-reduce per recorded step combines the sums of all layers.
"""

from __future__ import annotations

import torch


def is_dtensor(t: object) -> bool:
    if not torch.distributed.is_available():
        return False
    from torch.distributed.tensor import DTensor

    return isinstance(t, DTensor)


def local(t: torch.Tensor) -> torch.Tensor:
    """The part of ``t`` this rank holds (``t`` itself unless it is a DTensor)."""
    return t.to_local() if is_dtensor(t) else t


def rank() -> int:
    """This process's global rank (0 without torch.distributed)."""
    initialized = torch.distributed.is_available() and torch.distributed.is_initialized()
    return torch.distributed.get_rank() if initialized else 0


def sum_over_ranks(t: torch.Tensor) -> None:
    """In place: the sum of ``t`` over all ranks (one collective; no host sync)."""
    torch.distributed.all_reduce(t)
