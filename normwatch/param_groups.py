"""Which of the model's parameters an optimizer steps, in which param group, and when that changes.

Groups are compared by identity: the group dicts and their parameters are held, so no reused ``id`` can hide
a change, and in-place edits of ``group["params"]`` are seen. A layer whose parameters are not all stepped
yet waits, and is recorded from the step a param group adds the last of them (progressive unfreezing).
"""

from __future__ import annotations

import operator
from typing import Any

import torch
from torch import nn

from normwatch.detect import Layer, unwrap


class ParamGroups:
    """The optimizer's param groups as last seen, and the detected layers still waiting for theirs."""

    def __init__(self, optimizer: torch.optim.Optimizer, model: nn.Module) -> None:
        self._optimizer = optimizer
        self._model = model
        self._seen: list[tuple[dict[str, Any], tuple[Any, ...]]] = []  # each group and its parameters, held
        self.waiting: list[Layer] = []  # detected layers whose parameters are not (all) in the optimizer yet

    def changed(self) -> bool:
        """Whether a group was added, removed or replaced, or its parameters changed (a few µs per step)."""
        now, then = self._optimizer.param_groups, self._seen
        return len(now) != len(then) or any(
            group is not old or len(new := group["params"]) != len(params) or not all(map(operator.is_, new, params))
            for group, (old, params) in zip(now, then))

    def mark_seen(self) -> None:
        self._seen = [(group, tuple(group["params"])) for group in self._optimizer.param_groups]

    def index_of(self) -> dict[int, int]:
        """``id(parameter)`` → index of the param group that holds it."""
        return {id(p): i for i, group in enumerate(self._optimizer.param_groups) for p in group["params"]}

    def stepped_names(self) -> set[str]:
        """Names of the model's parameters that the optimizer steps."""
        stepped = {id(p) for group in self._optimizer.param_groups for p in group["params"]}
        return {n for n, p in unwrap(self._model).named_parameters(remove_duplicate=False) if id(p) in stepped}

    def take_ready(self) -> list[Layer]:
        """Remove and return the waiting layers whose parameters are all stepped now."""
        self.mark_seen()
        stepped = self.stepped_names()
        ready = [layer for layer in self.waiting if all(n in stepped for n in layer.params)]
        self.waiting = [layer for layer in self.waiting if layer not in ready]
        return ready
