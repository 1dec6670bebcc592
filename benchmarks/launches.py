"""How many kernel-launching ops normwatch adds to an optimizer step, on ResNet-9 and a 100-matrix transformer.

    python benchmarks/launches.py          # prints a table; exits 1 if a bar is missed

A ``TorchDispatchMode`` counts every op that reaches a backend (on a GPU each is at least one kernel launch)
except views and allocations, during ``optimizer.step()`` with and without normwatch (its work runs in the
step's hooks). Bars (issue 14): at most 60 per recorded step and 10 per step that is not recorded (``every=2``),
whatever the number of instrumented tensors. Counted on the CPU: the ops are the same on a GPU, where the eager
path runs them as they are (``attach(fused=True)`` compiles the statistics instead).
"""

from __future__ import annotations

import shutil
import sys
import tempfile
from collections import Counter
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch.utils._python_dispatch import TorchDispatchMode

import normwatch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a script: the repository's benchmarks
from benchmarks.models import Transformer, lm_batch, resnet9

RECORDED_BAR, NOT_RECORDED_BAR = 60, 10
ALLOCATIONS = {"empty", "empty_like", "empty_strided", "new_empty", "new_empty_strided"}


class DispatchCounter(TorchDispatchMode):
    """Counts the ops dispatched to a backend, except views and allocations (``ops`` by name in ``by_name``)."""

    def __init__(self) -> None:
        super().__init__()
        self.by_name: Counter[str] = Counter()

    def __torch_dispatch__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        name = func.overloadpacket.__name__
        if not func.is_view and name not in ALLOCATIONS:
            self.by_name[name] += 1
        return func(*args, **(kwargs or {}))

    @property
    def ops(self) -> int:
        return sum(self.by_name.values())


def step_ops(model: torch.nn.Module, batch: tuple[torch.Tensor, torch.Tensor], loss_fn: Any, *, watch: bool,
             every: int = 1, optimizer: str = "sgd") -> DispatchCounter:
    """The ops of one ``optimizer.step()`` after three warm-up steps (detection, the momentum buffers' creation):
    a recorded step with ``every=1``, one that is not recorded with ``every=2``."""
    opt = (torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, nesterov=True, weight_decay=5e-4)
           if optimizer == "sgd" else torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.1))
    logdir = tempfile.mkdtemp(prefix="normwatch-launches-")
    watcher = normwatch.attach(model, opt, keep_history=True, logdir=logdir, every=every) if watch else None
    x, y = batch
    try:
        for _ in range(3):  # the counted step is the 4th (index 3): recorded with every=1, not with every=2
            opt.zero_grad()
            loss_fn(model(x), y).backward()
            opt.step()
        opt.zero_grad()
        loss_fn(model(x), y).backward()
        with DispatchCounter() as counter:
            opt.step()
    finally:
        if watcher is not None:
            watcher.close()
        shutil.rmtree(logdir, ignore_errors=True)
    return counter


def lm_loss(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(logits.flatten(0, 1), targets.flatten())


def added_ops(make_model: Any, batch: Any, loss_fn: Any, optimizer: str) -> tuple[int, int, int, int]:
    """(instrumented tensors, plain step ops, ops added per recorded step, per step not recorded)."""
    torch.manual_seed(0)
    plain = step_ops(make_model(), batch, loss_fn, watch=False, optimizer=optimizer).ops
    torch.manual_seed(0)
    model = make_model()
    recorded = step_ops(model, batch, loss_fn, watch=True, optimizer=optimizer).ops - plain
    torch.manual_seed(0)
    skipped = step_ops(make_model(), batch, loss_fn, watch=True, every=2, optimizer=optimizer).ops
    tensors = len({n for layer in normwatch.detect(model, batch[0]) for n in layer.params})
    return tensors, plain, recorded, skipped - plain


def main() -> int:
    torch.set_num_threads(1)
    image = (torch.randn(16, 3, 32, 32), torch.randint(0, 10, (16,)))
    cases = [("ResNet-9, width 16, SGD", lambda: resnet9(16), image, F.cross_entropy, "sgd"),
             ("ResNet-9, full width, SGD", lambda: resnet9(64), image, F.cross_entropy, "sgd"),
             ("transformer, 20 blocks, AdamW", Transformer, lm_batch(), lm_loss, "adamw"),
             ("transformer, 20 blocks, SGD", Transformer, lm_batch(), lm_loss, "sgd")]
    print(f"{'model':32} {'tensors':>8} {'plain step':>11} {'+recorded':>10} {'+not recorded':>14}")
    ok = True
    for name, make_model, batch, loss_fn, optimizer in cases:
        tensors, plain, recorded, skipped = added_ops(make_model, batch, loss_fn, optimizer)
        ok &= recorded <= RECORDED_BAR and skipped <= NOT_RECORDED_BAR
        print(f"{name:32} {tensors:>8} {plain:>11} {recorded:>10} {skipped:>14}")
    print(f"bars: ≤ {RECORDED_BAR} per recorded step, ≤ {NOT_RECORDED_BAR} per step not recorded: "
          f"{'met' if ok else 'MISSED'}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
