"""The one-line notes that say, when layers start being recorded, why some of their tags will be missing."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch

from normwatch import theory
from normwatch._warn import warn
from normwatch.manual import ManualSteps
from normwatch.rules import RULES, Hyper, theory_inputs
from normwatch.tracked import TrackedTensor


class Notes:
    """Says each reason once: an optimizer whose rule normwatch does not know, a param group without weight decay,
    a rule without an equilibrium theory."""

    def __init__(self) -> None:
        self._said: set[str] = set()

    def say(self, optimizer: torch.optim.Optimizer, hypers: Mapping[int | None, Hyper], layers: Mapping[int, str],
            tensors: Sequence[TrackedTensor]) -> None:
        """Notes for the newly recorded ``layers`` (index → name) and their ``tensors``."""
        name = type(optimizer).__name__
        if isinstance(optimizer, ManualSteps) and not optimizer.declared:
            return  # said at the first watch.update(...), with the hyperparameters it declares
        for index in range(len(optimizer.param_groups)):
            names = sorted({layers[t.layer] for t in tensors if t.group == index and t.layer in layers})
            hp = hypers.get(index)
            if not names or hp is None:
                continue
            why = _why_no_theory(hp)
            if hp.rule == "unknown":
                self._once("unknown", f"normwatch does not know {name}'s update rule: every measured metric is "
                           "recorded, but no shrink/growth split and no theory applies. If its weight decay is "
                           "decoupled (w ← (1 − ηλ)w − ηU, as Lion's), attach(..., decoupled=True) gives the split.")
            elif why is not None:
                self._once(f"{index}:{why}", f"normwatch: param group {index} of {name} {why}: no theory tags for "
                           f"{', '.join(names)}.")

    def _once(self, key: str, message: str) -> None:
        if key not in self._said:
            self._said.add(key)
            warn(message if message.startswith("normwatch") else f"normwatch: {message}")


def _why_no_theory(hp: Hyper) -> str | None:
    """Why a known rule gets no theory tags, or None when it does."""
    if not hp.weight_decay:
        return "has weight_decay=0, so |w| has no equilibrium"
    if hp.maximize:
        return "maximizes, so |w| has no equilibrium to predict"
    if not RULES[hp.rule].theory_applies(hp):
        return f"is a {hp.rule} variant (trust, guard, smoothing or Nesterov) whose equilibrium is not derived"
    inputs = {**theory_inputs(hp), "step": hp.step or 1.0}
    ratio, angle = theory.equilibrium(hp.rule, **inputs, grad_rms=1.0, scale_free_grad_sq=1.0, numel=1024,
                                      weight_rms=1.0)
    if ratio is None and angle is None and hp.rule != "unknown":
        return f"follows {hp.rule}, for which normwatch has no equilibrium theory (docs/theory.md says why)"
    return None
