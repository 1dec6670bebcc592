"""Forwards that change nothing: a model's buffers, random generators and modes put back afterwards."""

from __future__ import annotations

import contextlib
import random
from collections.abc import Callable, Iterator

import numpy as np
import torch
from torch import nn


@contextlib.contextmanager
def kept(base: nn.Module) -> Iterator[Callable[[], None]]:
    """Run forwards in training mode, then put everything back as it was.

    A model in eval mode is switched with ``train()``; a model already training keeps every submodule's own
    mode, so a BatchNorm the user froze with ``.eval()`` keeps using running statistics.

    Yields ``replay``: a function that restores the buffers and the random state to their values at entry
    (torch's generators, Python's ``random`` and NumPy's global one), so every forward inside sees the same
    BatchNorm statistics and the same dropout masks. A buffer the forward replaced (``self.ema = ...``) gets its
    own tensor object back. On exit: ``replay()`` and every module's mode.
    """
    modes = [(m, m.training) for m in base.modules()]
    # each buffer slot's tensor and its value: a forward may update a buffer in place or replace it
    buffers = [(m._buffers, name, b, None if b is None else b.detach().clone())
               for m in base.modules() for name, b in m._buffers.items()]
    devices = sorted({t.device.index or 0 for t in [*base.parameters(), *base.buffers()] if t.is_cuda})
    python_state, numpy_state = random.getstate(), np.random.get_state()  # a forward may draw from these too
    with torch.random.fork_rng(devices=devices):
        cpu_state = torch.get_rng_state()
        cuda_states = [torch.cuda.get_rng_state(d) for d in devices]

        def replay() -> None:
            with torch.no_grad():
                for table, name, buffer, value in buffers:
                    table[name] = buffer
                    if buffer is not None:
                        buffer.copy_(value)
            random.setstate(python_state)
            np.random.set_state(numpy_state)
            torch.set_rng_state(cpu_state)
            for d, state in zip(devices, cuda_states):
                torch.cuda.set_rng_state(state, d)

        try:
            if not base.training:  # a training model keeps its submodules' modes: a frozen BN stays frozen
                base.train()
            yield replay
        finally:
            replay()
            for m, training in modes:
                m.training = training
