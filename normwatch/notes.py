"""The one-line notes that say, when layers start being recorded, why some of their tags will be missing."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch

from normwatch._warn import warn
from normwatch.tracked import TrackedTensor
from normwatch.update import Family


class Notes:
    """Says each reason once: an optimizer whose rule normwatch does not know, a param group without weight decay."""

    def __init__(self) -> None:
        self._said_family = False

    def say(self, optimizer: torch.optim.Optimizer, family: Family, layers: Mapping[int, str],
            tensors: Sequence[TrackedTensor]) -> None:
        """Notes for the newly recorded ``layers`` (index → name) and their ``tensors``."""
        name = type(optimizer).__name__
        if family == "unknown":
            if not self._said_family:
                self._said_family = True
                warn(f"normwatch: {name} is not one of SGD, Adam, AdamW or normwatch.optim.LARS (or uses "
                     "maximize): every measured metric is recorded, but no shrink/growth split and no "
                     "theory applies.")
            return
        for index, group in enumerate(optimizer.param_groups):
            names = sorted({layers[t.layer] for t in tensors if t.group == index and t.layer in layers})
            if names and not group.get("weight_decay"):
                warn(f"normwatch: param group {index} of {name} has weight_decay=0, so |w| has no "
                     f"equilibrium: no theory tags for {', '.join(names)}.")
