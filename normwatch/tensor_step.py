"""One instrumented tensor's work in one optimizer step: advance its gradient memory v and, on recorded
steps, return its row of :data:`~normwatch.sums.SUMS` for the update w_t → w_{t+1}.

:func:`tensor_step` runs eagerly: about twenty small kernels per tensor (twelve dot products and the
elementwise ops of the update split). :func:`fused_tensor_step` is the same function through
``torch.compile``, which fuses those ops into a few kernels per tensor: one C++ loop on CPU
(``attach(fused=True)``; the first recorded steps compile it, and the compiled code is shared by every
Watcher in the process).
"""

from __future__ import annotations

import functools
import types
from typing import Any

import torch

from normwatch import sums, update
from normwatch._warn import warn


def tensor_step(family: update.Family, hp: update.Hyper, w_prev: torch.Tensor, w_next: torch.Tensor,
                g: torch.Tensor, v: torch.Tensor, state: dict[str, Any], trust: torch.Tensor | None,
                first: bool, recording: bool) -> torch.Tensor | None:
    """Advance ``v`` in place (:func:`~normwatch.update.advance_memory`); when ``recording``, return the
    row of sums of u = w_next − w_prev with g, v and the split u = u_wd + u_g (in float32 for 16-bit
    weights, whose difference is exact there)."""
    if recording:
        gv, vv = sums.memory_sums(g, v)
    update.advance_memory(family, hp, v, g, trust, first)
    if not recording:
        return None
    if w_prev.dtype in (torch.bfloat16, torch.float16):  # the split from their exact values, in float32
        w_prev, w_next = w_prev.float(), w_next.float()
    u = w_next - w_prev
    u_wd = update.decay_part(family, hp, state, w_prev, u, v, trust)
    return sums.update_sums(w_prev, u, g, u_wd, trust, gv, vv)


@functools.cache
def _compiled(config: tuple[Any, ...]) -> Any:
    """:func:`tensor_step` compiled for one configuration of the Python values it branches on. Each gets
    its own copy of the code object, hence its own compile cache: no configuration recompiles another's
    graph, and none counts against another's recompile limit."""
    code = tensor_step.__code__.replace()
    function = types.FunctionType(code, tensor_step.__globals__, f"{tensor_step.__name__}_{len(_configs)}")
    _configs.append(config)
    return torch.compile(function, dynamic=True, fullgraph=True)  # fullgraph: all of it runs compiled, or none


_configs: list[tuple[Any, ...]] = []


def fused_tensor_step(family: update.Family, hp: update.Hyper, w_prev: torch.Tensor, w_next: torch.Tensor,
                      g: torch.Tensor, v: torch.Tensor, state: dict[str, Any], trust: torch.Tensor | None,
                      first: bool, recording: bool) -> torch.Tensor | None:
    """:func:`tensor_step`, compiled, on recorded steps (a momentum buffer's first step, and the steps not
    recorded, run eagerly: a graph compiled for one use costs more than it saves). Falls back to
    :func:`tensor_step`, with one warning, if compiling fails."""
    global _compile_failed
    if not recording or _compile_failed or (first and update.mirrors_momentum(family, hp)):
        return tensor_step(family, hp, w_prev, w_next, g, v, state, trust, first, recording)
    args = _flat(w_prev, w_next, g, v, state)
    if args is not None:  # every tensor dense and alike: 1-D views, one graph for every shape
        w_prev, w_next, g, v, state = args
    config = (family, hp.rule, hp.momentum > 0, hp.dampening > 0, hp.nesterov, isinstance(hp.lr, torch.Tensor),
              hp.amsgrad, trust is None, tuple(sorted(state)), v.dim(), v.dtype, g.dtype, v.device.type,
              args is not None)
    try:  # a user's error_on_recompile is about their graphs; ours compiles once per range of sizes
        with torch._dynamo.config.patch(error_on_recompile=False):
            return _compiled(config)(family, hp, w_prev, w_next, g, v, state, trust, first, recording)
    except Exception as error:  # a compiler failure must not stop training
        _compile_failed = True
        reason = (str(error).strip().splitlines() or [""])[0]
        warn(f"normwatch: torch.compile of the per-step statistics failed ({type(error).__name__}: "
             f"{reason}); they run eagerly from now on.", RuntimeWarning)
        return tensor_step(family, hp, w_prev, w_next, g, v, state, trust, first, recording)


_compile_failed = False


def _flat(w_prev: torch.Tensor, w_next: torch.Tensor, g: torch.Tensor, v: torch.Tensor,
          state: dict[str, Any]) -> tuple[Any, ...] | None:
    """The arguments as 1-D views in memory order when the tensors (and the optimizer's per-element state)
    share v's dense layout, else None. The step is elementwise work and sums, so the order does not matter,
    and a 1-D graph with a dynamic length serves every tensor: no recompile from one shape to the next."""
    per_element = {k: t for k, t in state.items() if isinstance(t, torch.Tensor) and t.shape == v.shape}
    if not all(sums.dense_same_layout(t, v) for t in (w_prev, w_next, g, *per_element.values())):
        return None
    return (_alias_1d(w_prev), _alias_1d(w_next), _alias_1d(g), _alias_1d(v),
            {**state, **{k: _alias_1d(t) for k, t in per_element.items()}})


def _alias_1d(t: torch.Tensor) -> torch.Tensor:
    """A dense tensor's elements in memory order, as a 1-D tensor on the same storage. Not a view: the
    compiler would guard on the base's shape (and recompile for the next one)."""
    return torch.empty(0, dtype=t.dtype, device=t.device).set_(t.untyped_storage(), t.storage_offset(),
                                                                (t.numel(),), (1,))
