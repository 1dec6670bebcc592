"""The Watcher: hooks in, per-step statistics on the device, batches out to the writer thread, hooks out.

Lifecycle. ``attach`` registers a forward pre-hook on the model and step pre/post hooks on the
optimizer. The first training-mode forward runs detection (one extra forward pair on that batch, the model
left exactly as it was) and removes the forward hook. Around each ``optimizer.step()``: the pre-hook
copies w_t into a snapshot (recorded steps only); the post-hook reads g, w_{t+1} and the optimizer's
state, advances the gradient memory and stacks one row of sums per tensor into a ring buffer on the
device. Every ``flush_every`` recorded steps (and at ``close``), the ring is copied to the host in one
transfer (non-blocking on CUDA) and handed to the writer thread. No host-device sync in the hooks.

Extra device memory: one snapshot and one gradient memory per instrumented tensor (2× their size),
plus the ring buffer (``flush_every`` × tensors × 14 floats).
"""

from __future__ import annotations

import atexit
import fnmatch
import functools
import json
import operator
import os
import time
import weakref
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from torch.nn.modules.lazy import LazyModuleMixin

from normwatch import _dist, stats, tensorboard, update
from normwatch._warn import warn
from normwatch.detect import Layer, scan, unwrap
from normwatch.kernels import fused_tensor_step, tensor_step
from normwatch.records import UNKNOWN_TOLERANCE, Batch, Recorder

_ATTACHED: weakref.WeakKeyDictionary[torch.optim.Optimizer, Watcher] = weakref.WeakKeyDictionary()
_NOT_STEPPED = update.Hyper("unknown", 0.0, 0.0, 0.0, 0.0, False, 0.0)  # a tensor no param group holds
DETECTION_TRIES = 3  # training forwards on which detection may fail before normwatch gives up


@dataclass
class _Slot:
    """One instrumented parameter tensor."""

    name: str
    layer: int
    param: nn.Parameter
    group: int | None  # index in optimizer.param_groups; None while the optimizer does not step it
    snapshot: torch.Tensor  # w_t, copied before each recorded step
    memory: torch.Tensor  # the gradient memory v (see normwatch.update)
    unknown: float = 0.0  # weight in v of optimizer state from before attach, which normwatch cannot split


def _unwrap_optimizer(optimizer: Any) -> torch.optim.Optimizer:
    """The torch optimizer inside wrappers that do not carry step hooks (accelerate, Lightning)."""
    while not hasattr(optimizer, "_optimizer_step_pre_hooks"):
        inner = getattr(optimizer, "optimizer", None) or getattr(optimizer, "_optimizer", None)
        if inner is None:
            break
        optimizer = inner
    if not isinstance(optimizer, torch.optim.Optimizer):
        raise TypeError(f"Expected a torch.optim.Optimizer, got {type(optimizer).__name__}.")
    return optimizer


def attach(model: nn.Module, optimizer: torch.optim.Optimizer, *, logdir: str | None = None,
           writer: Any = None, every: int = 1, layers: Sequence[str] | None = None, flush_every: int = 64,
           ema_beta: float = update.DEFAULT_EMA_BETA, keep_history: bool = False, confirm: bool = True,
           step_fn: Callable[[], int] | None = None, fused: bool = False) -> Watcher:
    """Watch the scale-invariant layers of ``model`` as ``optimizer`` trains them; log to TensorBoard.

    Args:
        model: the model whose forward the training loop calls (compiled/DDP wrappers are fine).
        optimizer: the optimizer that steps its parameters.
        logdir: TensorBoard run directory. With neither ``logdir`` nor ``writer``, ``runs/<date>_<host>``
            like ``SummaryWriter``'s default.
        writer: an existing ``SummaryWriter`` to write into (normwatch flushes it but does not close it).
        every: record every ``every``-th optimizer step (the gradient memory still advances every step).
        layers: glob patterns over layer names. ``"pat"`` keeps only detected layers that match,
            ``"-pat"`` drops matches, ``"+pat"`` adds modules whose weight detection did not find
            (recorded as one whole-tensor group).
        flush_every: recorded steps kept on the device between transfers to the writer thread.
        ema_beta: decay of the gradient memory for optimizers without momentum (``grad_autocorr``).
        keep_history: also keep every point in memory (``Watcher.history``).
        confirm: confirm detection numerically (one more forward on the first batch).
        step_fn: the x-axis value of each recorded step, read as the step starts (a trainer's own
            counter, e.g. ``lambda: trainer.global_step``, which also counts steps AMP skipped). By
            default normwatch counts the optimizer steps that happened.
        fused: compute each tensor's statistics with ``torch.compile`` (a few fused kernels per tensor
            instead of about twenty small ones: for GPUs, where each launch costs). The first recorded step
            compiles; a compiler failure warns once and falls back to the eager path.

    Returns:
        The :class:`Watcher`; ``close()`` it (or use it as a context manager) to flush and unhook.

    Raises:
        RuntimeError: if a Watcher is already attached to this optimizer.
        ValueError: on invalid arguments.
    """
    return Watcher(model, optimizer, logdir=logdir, writer=writer, every=every, layers=layers,
                   flush_every=flush_every, ema_beta=ema_beta, keep_history=keep_history, confirm=confirm,
                   step_fn=step_fn, fused=fused)


class Watcher:
    """Records the weight-norm dynamics of a model's scale-invariant layers; made by :func:`attach`."""

    def __init__(self, model: nn.Module, optimizer: torch.optim.Optimizer, *, logdir: str | None, writer: Any,
                 every: int, layers: Sequence[str] | None, flush_every: int, ema_beta: float,
                 keep_history: bool, confirm: bool, step_fn: Callable[[], int] | None = None,
                 fused: bool = False) -> None:
        if not isinstance(model, nn.Module):
            raise TypeError(f"Expected model to be a torch.nn.Module, got {type(model).__name__}.")
        optimizer = _unwrap_optimizer(optimizer)
        if isinstance(every, bool) or not isinstance(every, int) or every < 1:
            raise ValueError(f"Expected argument `every` to be a positive int, but got {every!r}.")
        if not isinstance(flush_every, int) or flush_every < 1:
            raise ValueError(f"Expected argument `flush_every` to be a positive int, but got {flush_every!r}.")
        if not isinstance(ema_beta, (int, float)) or not 0.0 <= ema_beta < 1.0:
            raise ValueError(f"Expected argument `ema_beta` to be in [0, 1), but got {ema_beta!r}.")
        if logdir is not None and writer is not None:
            raise ValueError("Pass either `logdir` or `writer`, not both.")
        if logdir is not None and not isinstance(logdir, (str, os.PathLike)):
            raise TypeError(f"Expected argument `logdir` to be a path, but got {type(logdir).__name__}.")
        if writer is not None and not callable(getattr(writer, "add_scalar", None)):
            raise TypeError(f"Expected argument `writer` to be a SummaryWriter (with add_scalar), but got "
                            f"{type(writer).__name__}; pass a directory as `logdir`.")
        if step_fn is not None and not callable(step_fn):
            raise TypeError(f"Expected argument `step_fn` to be a function returning the step, but got "
                            f"{type(step_fn).__name__}.")
        if isinstance(layers, str):
            layers = [layers]
        if layers is not None and not all(isinstance(pattern, str) for pattern in layers):
            raise TypeError(f"Expected argument `layers` to be glob patterns (strings), but got {layers!r}.")
        if optimizer in _ATTACHED:
            raise RuntimeError("normwatch is already attached to this optimizer; close() that Watcher first.")
        self.every = every
        self._step_fn = step_fn
        self._tensor_step = fused_tensor_step if fused else tensor_step
        self._step_now: int | None = None  # step_fn's value for the step under way
        self._model = model
        self._optimizer = optimizer
        self._patterns = list(layers or [])
        self._flush_every = flush_every
        self._ema_beta = ema_beta
        self._confirm = confirm
        self._family = update.family_of(optimizer)
        self._layers: list[Layer] = []
        self._waiting: list[Layer] = []  # detected layers whose parameters are not (yet) in the optimizer
        self._groups_key: list[tuple[dict[str, Any], tuple[Any, ...]]] = []  # the groups slot indices follow
        self._slots: list[_Slot] = []
        self._detected = False
        self._detecting = False  # inside detection's own forwards
        self._detection_failures = 0
        self._warn_undetected = True  # a step with no detection yet says why, once (integrations say it their way)
        self._said_withheld: set[str] = set()  # layers the withheld-split warning named
        self._said_family = False
        self._compiled_call: Any = None  # Module.compile()'s compiled __call__, set aside until detection
        self._closed = False
        self._calls = 0  # step-hook calls so far (skipped AMP steps included until the writer drops them)
        self._recording = False
        self._in_step = False  # between the step pre-hook and post-hook
        self._armed = False  # this step will be processed by the post-hook
        self._first: list[bool] = []
        self._resume: dict[str, Any] | None = None  # a loaded state_dict, for the tensors it names as they join
        self._ring = self._ring_skipped = torch.empty(0)
        self._n = 0
        self._meta: list[tuple[Any, ...]] = []  # per record: call, step, hypers, time, unknown, decays
        self._recorder = Recorder([], [], [], self._family, every)
        self._writes = _dist.rank() == 0  # under torch.distributed, global rank 0 alone writes
        self._sharded = False  # FSDP2: every rank holds a shard and takes part in one all-reduce per step
        own_writer = writer is None and self._writes
        if own_writer:
            writer = self._make_writer(logdir)
        self._sink = tensorboard.Sink(writer if self._writes else None, self._to_points, self._preamble,
                                      close_writer=own_writer, keep_history=keep_history, enabled=self._writes)
        _ATTACHED[optimizer] = self
        if getattr(model, "_compiled_call_impl", None) is not None:  # model.compile(): its compiled __call__
            self._compiled_call, model._compiled_call_impl = model._compiled_call_impl, None  # runs hooks inside
        self._handles = [
            model.register_forward_pre_hook(self._on_forward, with_kwargs=True),
            optimizer.register_step_pre_hook(self._before_step),
            optimizer.register_step_post_hook(self._after_step),
        ]
        self._atexit = functools.partial(_close_at_exit, weakref.ref(self))
        atexit.register(self._atexit)

    # -- public API --------------------------------------------------------------------------------------
    @property
    def layers(self) -> list[Layer]:
        """The scale-invariant layers recorded (empty until the first training-mode forward; a layer whose
        parameters a param group adds later joins at that step)."""
        return list(self._layers)

    @property
    def step(self) -> int:
        """Optimizer steps seen so far (steps an AMP GradScaler skipped are not counted once written)."""
        return self._calls - self._recorder.skipped_total

    @property
    def history(self) -> dict[str, list[tuple[int, float]]]:
        """Every point written, by tag, when ``keep_history=True`` or the writer failed (else empty)."""
        self.flush()
        return self._sink.history

    @property
    def extra_memory_bytes(self) -> int:
        """Device memory normwatch holds: snapshots and gradient memories, plus the ring buffer."""
        buffers = sum(2 * s.snapshot.numel() * s.snapshot.element_size() for s in self._slots)
        return buffers + self._ring.numel() * self._ring.element_size()

    def flush(self) -> None:
        """Hand every recorded step to the writer thread and wait until it is written (a host sync)."""
        self._flush()
        self._sink.drain()

    def close(self) -> None:
        """Flush every recorded step, remove every hook and free the buffers. Idempotent."""
        if self._closed:
            return
        self._closed = True
        for handle in self._handles:
            handle.remove()
        self._handles = []
        self._restore_compiled_call()
        self._flush()
        self._sink.close()
        _ATTACHED.pop(self._optimizer, None)
        atexit.unregister(self._atexit)
        for slot in self._slots:
            slot.snapshot = slot.memory = torch.empty(0)
        self._slots = []

    def state_dict(self) -> dict[str, Any]:
        """What a resumed run needs to continue the same curves: step count, |w_0|², gradient memories (and
        the share of each that normwatch could not split, when it was attached mid-run).

        Raises:
            RuntimeError: after :meth:`close`, which frees the memories.
        """
        if self._closed:
            raise RuntimeError("normwatch: state_dict() after close(), which frees the gradient memories: take it "
                               "before closing.")
        self.flush()
        unknown = self._recorder.unknown_now([slot.unknown for slot in self._slots])
        recorded = {slot.name for slot in self._slots} | {layer.name for layer in self._layers}
        loaded = {key: {name: value for name, value in (self._resume or {}).get(key, {}).items()
                        if name not in recorded}  # loaded for layers not recorded yet: kept for the next resume
                  for key in ("w0_norm2", "memory", "unknown")}
        return {
            "version": 1,
            "step": self.step,
            "w0_norm2": {**loaded["w0_norm2"],
                         **dict(zip([layer.name for layer in self._layers], self._recorder.w0_norm2.tolist()))},
            "memory": {**loaded["memory"], **{slot.name: slot.memory.detach().clone() for slot in self._slots}},
            "unknown": {**loaded["unknown"],
                        **{slot.name: share for slot, share in zip(self._slots, unknown) if share > 0}},
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue from :meth:`state_dict`: the step count now, each layer's and tensor's state as it is
        recorded (at detection, or when a param group adds it)."""
        if state.get("version") != 1:
            raise ValueError(f"Unknown normwatch state version {state.get('version')!r}.")
        if self._slots:
            self.flush()  # the writer thread is idle while the recorder changes
        self._calls = int(state["step"])
        self._recorder.skipped_total = 0
        self._resume = state
        if self._slots:
            self._restore(range(len(self._layers)), self._slots)
            self._recorder.restart_unknown()
            self._say_withheld()

    def _forget_stepped(self) -> None:
        """Drop the loaded memories of tensors the optimizer steps while their layer waits: stale by then."""
        stepping = self._in_optimizer() - {slot.name for slot in self._slots}
        memory = self._resume["memory"]
        if stepping & set(memory):
            self._resume = {**self._resume, "memory": {k: v for k, v in memory.items() if k not in stepping}}

    def _restore(self, layers: range, slots: Sequence[_Slot]) -> None:
        """Apply the loaded state to these layers and tensors: |w_0|², gradient memories, unseen shares."""
        state = self._resume
        if state is None:
            return
        for i in layers:
            if self._layers[i].name in state["w0_norm2"]:
                self._recorder.w0_norm2[i] = state["w0_norm2"][self._layers[i].name]
        for slot in slots:
            if slot.name in state["memory"]:
                slot.memory.copy_(state["memory"][slot.name])
                slot.unknown = float(state.get("unknown", {}).get(slot.name, 0.0))

    def __enter__(self) -> Watcher:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        size = sum(s.snapshot.numel() * s.snapshot.element_size() for s in self._slots)
        return (f"Watcher(layers={len(self._layers)}, family={self._family!r}, every={self.every}, "
                f"step={self.step}, extra_memory={self.extra_memory_bytes / 2**20:.2f} MiB "
                f"(2 × {size / 2**20:.2f} MiB instrumented + ring), closed={self._closed})")

    # -- setup -------------------------------------------------------------------------------------------
    @staticmethod
    def _make_writer(logdir: str | None) -> Any:
        from torch.utils.tensorboard import SummaryWriter

        try:
            return SummaryWriter(log_dir=logdir)
        except Exception as error:
            warn(f"normwatch: cannot create a TensorBoard writer in {logdir or 'runs/'} ({error}); "
                 "training goes on and the metrics are kept in memory in Watcher.history.",
                 RuntimeWarning)
            return None

    def _on_forward(self, module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any] | None = None) -> None:
        # Inside torch.compile (a model compiled after attach) this is traced as a no-op: no graph break, and
        # detection, which needs eager tensors, waits; _after_step says so if it never happens.
        if torch.compiler.is_compiling() or self._detected or self._detecting or self._closed or not module.training:
            return
        if any(isinstance(m, LazyModuleMixin) and m.has_uninitialized_params() for m in unwrap(module).modules()):
            self._warn_undetected = False  # the hook works: detection waits for the next forward
            return  # this forward initialises them from the global RNG: detection waits for the next one
        self._detecting = True
        try:
            found = scan(module, args, kwargs or {}, confirm=self._confirm)
        except Exception as error:
            self._detection_failures += 1
            self._warn_undetected = False  # the forward did reach normwatch; the warning below says what failed
            last = self._detection_failures == DETECTION_TRIES
            if self._detection_failures == 1 or last:
                then = "nothing will be recorded" if last else "it tries again on the next training forward"
                warn(f"normwatch: could not trace the model's forward ({error!r}); {then}. Training is "
                     "not affected.", RuntimeWarning)
            if not last:
                return
            found = []
        finally:
            self._detecting = False
        self._handles[0].remove()
        self._detected = True
        self._restore_compiled_call()
        self._setup(self._select(found), said=bool(found) or self._detection_failures > 0)
        if self._in_step:  # the forward runs inside optimizer.step(closure): this step can still be recorded
            self._arm()

    def _restore_compiled_call(self) -> None:
        if self._compiled_call is not None:
            self._model._compiled_call_impl, self._compiled_call = self._compiled_call, None

    def _select(self, found: list[Layer]) -> list[Layer]:
        """Apply the user's ``layers`` patterns; warn about patterns that match nothing."""
        keep = [p for p in self._patterns if p[:1] not in "+-"]
        drop = [p[1:] for p in self._patterns if p.startswith("-")]
        add = [p[1:] for p in self._patterns if p.startswith("+")]
        base = unwrap(self._model)
        modules = dict(base.named_modules())
        for pattern in keep + drop:
            if not any(fnmatch.fnmatchcase(layer.name, pattern) for layer in found):
                warn(f"normwatch: layers pattern {pattern!r} matches no detected layer "
                     f"(detected: {', '.join(layer.name for layer in found) or 'none'}).")
        chosen = [layer for layer in found if (not keep or any(fnmatch.fnmatchcase(layer.name, p) for p in keep))
                  and not any(fnmatch.fnmatchcase(layer.name, p) for p in drop)]
        if found and not chosen and not add:
            warn(f"normwatch: the layers patterns {self._patterns} leave none of the {len(found)} detected "
                 "layers: nothing will be recorded.", RuntimeWarning)
        names = {layer.name for layer in chosen}
        for pattern in add:
            matches = [n for n, m in modules.items() if fnmatch.fnmatchcase(n, pattern)
                       and isinstance(getattr(m, "weight", None), nn.Parameter)]
            if not matches:
                warn(f"normwatch: layers pattern '+{pattern}' matches no module with a weight.")
            for name in matches:
                if name not in names:
                    names.add(name)
                    chosen.append(Layer(name, "(added by user)", (f"{name}.weight",), "tensor", 1))
        return chosen

    def _setup(self, layers: list[Layer], said: bool) -> None:
        base = unwrap(self._model)
        params = dict(base.named_parameters(remove_duplicate=False))
        self._sharded = any(_dist.is_dtensor(params[n]) for layer in layers for n in layer.params)
        if not self._writes and not self._sharded:  # DDP: rank 0 has the same numbers; the others rest
            self._layers = layers
            return
        self._waiting = layers
        ready = self._ready_layers()
        stepped = self._in_optimizer()
        for layer in self._waiting:
            missing = [n for n in layer.params if n not in stepped]
            warn(f"normwatch: layer {layer.name!r} is recorded from the step its parameters join this optimizer "
                 f"({', '.join(missing)} not in its param groups yet).")
        if not ready and (layers or said):
            return  # _select, the failed detection or the loop above said why
        if not ready:
            warn(f"normwatch: found no scale-invariant layer in {type(base).__name__}: nothing will be "
                 "recorded. A conv/linear weight is scale-invariant when its output reaches the loss "
                 "only through a normalisation that uses batch statistics (BatchNorm in training "
                 "mode, GroupNorm, LayerNorm).", RuntimeWarning)
            return
        self._join(ready)

    def _in_optimizer(self) -> set[str]:
        """Names of the model's parameters that this optimizer steps."""
        stepped = {id(p) for group in self._optimizer.param_groups for p in group["params"]}
        return {n for n, p in unwrap(self._model).named_parameters(remove_duplicate=False) if id(p) in stepped}

    def _ready_layers(self) -> list[Layer]:
        """Take the waiting layers whose parameters are all in the optimizer now."""
        self._groups_key = self._groups_now()
        stepped = self._in_optimizer()
        ready = [layer for layer in self._waiting if all(n in stepped for n in layer.params)]
        self._waiting = [layer for layer in self._waiting if layer not in ready]
        return ready

    def _add_layers(self, layers: list[Layer]) -> None:
        """Slots, ring buffer and recorder for ``layers``, after the layers already recorded."""
        params = dict(unwrap(self._model).named_parameters(remove_duplicate=False))
        group_of = {id(p): i for i, group in enumerate(self._optimizer.param_groups) for p in group["params"]}
        first_new_slot = len(self._slots)
        for layer in layers:
            for name in layer.params:
                p = params[name]
                shard = _dist.local(p.detach())
                self._slots.append(_Slot(name, len(self._layers), p, group_of[id(p)],
                                         torch.empty_like(shard, memory_format=torch.preserve_format),
                                         torch.zeros_like(shard, memory_format=torch.preserve_format)))
            self._layers.append(layer)
        device = self._slots[0].param.device
        self._ring = torch.zeros(self._flush_every, len(self._slots), len(stats.SUMS), device=device)
        self._ring_skipped = torch.zeros(self._flush_every, device=device)
        numel = [sum(s.param.numel() for s in self._slots if s.layer == i) for i in range(len(self._layers))]
        names, slot_layer = [layer.name for layer in self._layers], [s.layer for s in self._slots]
        self._recorder = (Recorder(names, slot_layer, numel, self._family, self.every,
                                   skipped_total=self._recorder.skipped_total) if first_new_slot == 0
                          else self._recorder.extended(names, slot_layer, numel))

    def _join(self, layers: list[Layer]) -> None:
        """Start recording ``layers``: their tensors' state from a loaded state_dict, else from the optimizer's."""
        first_layer, first_slot = len(self._layers), len(self._slots)
        self._add_layers(layers)
        joined = range(first_layer, len(self._layers))
        self._notes(joined)
        self._adopt_optimizer_state(self._slots[first_slot:])
        self._restore(joined, self._slots[first_slot:])
        self._say_withheld()

    def _groups_now(self) -> list[tuple[dict[str, Any], tuple[Any, ...]]]:
        """Each param group and its parameters, held, so compared by identity (no reused ids)."""
        return [(group, tuple(group["params"])) for group in self._optimizer.param_groups]

    def _groups_changed(self) -> bool:
        """Whether a group was added, removed or replaced, or its parameters changed (a few µs per step)."""
        now, then = self._optimizer.param_groups, self._groups_key
        return len(now) != len(then) or any(
            group is not old or len(new := group["params"]) != len(params) or not all(map(operator.is_, new, params))
            for group, (old, params) in zip(now, then))

    def _regroup(self) -> None:
        """The param groups changed: each tensor's group index again (None: no longer stepped, so not recorded),
        the optimizer's family, and the waiting layers a new group completes, recorded from this step on."""
        self._groups_key = self._groups_now()
        group_of = {id(p): i for i, group in enumerate(self._optimizer.param_groups) for p in group["params"]}
        for slot in self._slots:
            slot.group = group_of.get(id(slot.param))
        family = update.family_of(self._optimizer)
        if family != self._family:
            self.flush()  # the recorder's family changes with the batches written so far
            if family == "unknown":
                warn(f"normwatch: with its new param groups {type(self._optimizer).__name__} follows no rule "
                     "normwatch knows (maximize?): from this step no shrink/growth split and no theory.",
                     RuntimeWarning)
            self._family = self._recorder.family = family
            if family != "unknown":  # the memory was a moving average meanwhile: start again from the optimizer's
                self._adopt_optimizer_state(self._slots, resumed=False)
                self._say_withheld()
        ready = self._ready_layers() if self._waiting else []
        if ready:
            self.flush()  # batches of the old shape are written first (a host sync, once per new param group)
            self._join(ready)
            self._sink.rewrite_preamble()  # the custom-scalars layout and config with the new layers

    def _adopt_optimizer_state(self, slots: Sequence[_Slot], resumed: bool = True) -> None:
        """Start from the optimizer's state when it has stepped before normwatch saw it (no state_dict loaded).

        Its momentum (SGD, LARS) or first moment (Adam) then holds gradients and, under weight decay except
        AdamW's, decay that normwatch never saw. The memory starts as that buffer: exact where it holds
        gradients alone; elsewhere the decay in it counts as gradient, a share that decays as μᵏ, so the
        shrink/growth split and grad_autocorr are withheld until μᵏ ≤ UNKNOWN_TOLERANCE. The rest is exact.
        """
        if self._family == "unknown":
            return  # no split; the memory is normwatch's own moving average, started afresh
        known = self._resume["memory"] if self._resume is not None and resumed else {}
        for slot in slots:
            if slot.name in known:  # the loaded state_dict restores this memory
                continue
            state = self._optimizer.state.get(slot.param, {})
            buffer = state.get("momentum_buffer") if self._family in ("sgd", "lars") else state.get("exp_avg")
            if not isinstance(buffer, torch.Tensor):
                continue
            slot.memory.copy_(_dist.local(buffer))
            decay = self._optimizer.param_groups[slot.group].get("weight_decay", 0.0)
            if self._family != "adamw" and decay:
                slot.unknown = 1.0

    def _say_withheld(self) -> None:
        """One warning naming the layers whose split newly waits for unseen momentum to decay."""
        withheld = sorted({self._layers[s.layer].name for s in self._slots if s.unknown > UNKNOWN_TOLERANCE}
                          - self._said_withheld)
        if withheld:
            self._said_withheld.update(withheld)
            warn(f"normwatch: {type(self._optimizer).__name__} has momentum from steps normwatch did not see "
                 "(attached mid-run, resumed without normwatch's state_dict, or before detection), so the "
                 f"shrink/growth/cross split and grad_autocorr of {', '.join(withheld)} are withheld until that "
                 f"momentum has decayed below {UNKNOWN_TOLERANCE:g}; every other metric is recorded.",
                 RuntimeWarning)

    def _notes(self, layers: range) -> None:
        """One line for each reason a theory tag of these (newly recorded) layers will be missing."""
        name = type(self._optimizer).__name__
        if self._family == "unknown":
            if not self._said_family:
                self._said_family = True
                warn(f"normwatch: {name} is not one of SGD, Adam, AdamW or normwatch.optim.LARS (or uses "
                     "maximize): every measured metric is recorded, but no shrink/growth split and no "
                     "theory applies.")
            return
        for index, group in enumerate(self._optimizer.param_groups):
            names = sorted({self._layers[s.layer].name for s in self._slots if s.group == index and s.layer in layers})
            if names and not group.get("weight_decay"):
                warn(f"normwatch: param group {index} of {name} has weight_decay=0, so |w| has no "
                     f"equilibrium: no theory tags for {', '.join(names)}.")

    def _preamble(self, writer: Any) -> None:
        if not self._layers:
            return
        writer.add_custom_scalars(tensorboard.custom_layout([layer.name for layer in self._layers]))
        index = next((slot.group for slot in self._slots if slot.group is not None), None)
        group = self._optimizer.param_groups[index] if index is not None else {}
        config = {
            "optimizer": type(self._optimizer).__name__, "family": self._family, "every": self.every,
            "nesterov": bool(group.get("nesterov", False)), "dampening": float(group.get("dampening", 0.0) or 0.0),
            "layers": [{"name": layer.name, "norm": layer.norm, "granularity": layer.granularity,
                        "groups": layer.groups, "params": list(layer.params), "confirmed": layer.confirmed}
                       for layer in self._layers],
        }
        writer.add_text("normwatch/config", json.dumps(config))

    # -- the step hooks (no host-device sync in here) ----------------------------------------------------
    @torch.compiler.disable
    def _before_step(self, optimizer: torch.optim.Optimizer, args: Any, kwargs: Any) -> None:
        self._in_step = True
        self._arm()

    def _arm(self) -> None:
        """Prepare the step now under way: snapshot w_t on recorded steps, note first momentum steps.

        Runs in the step pre-hook, or, when the forward runs inside ``step(closure)`` (Lightning) and
        detection happens there, right after detection: either way before the update touches w.
        """
        if self._armed or not (self._slots or self._waiting):
            return
        if self._groups_changed():  # a param group added (or removed) since the last step
            self._regroup()
        if self._resume is not None and self._waiting:
            self._forget_stepped()
        if not self._slots:
            return
        optimizer = self._optimizer
        self._armed = True
        self._step_now = self._read_step()
        skip_aware = getattr(optimizer, "found_inf", None) is not None  # fused optimizer under a GradScaler
        self._recording = skip_aware or self._calls % self.every == 0
        self._recorder.filter_every = self._recorder.filter_every or (skip_aware and self.every > 1)
        state = optimizer.state
        self._first = [state.get(s.param, {}).get("momentum_buffer") is None for s in self._slots]
        if self._recording:
            weights = [_dist.local(s.param.detach()) for s in self._slots]
            torch._foreach_copy_([s.snapshot for s in self._slots], weights)

    def _read_step(self) -> int | None:
        """step_fn's value for the step under way; on a failure or a non-int, one warning and normwatch's count."""
        if self._step_fn is None:
            return None
        try:
            value = self._step_fn()
            return int(value) if isinstance(value, float) and value.is_integer() else operator.index(value)
        except Exception as error:
            self._step_fn = None
            warn(f"normwatch: step_fn failed or returned no int ({type(error).__name__}: {error}); from now "
                 "on the x axis counts optimizer steps.", RuntimeWarning)
            return None

    @torch.compiler.disable
    def _after_step(self, optimizer: torch.optim.Optimizer, args: Any, kwargs: Any) -> None:
        call, self._calls = self._calls, self._calls + 1  # every step counts, recorded or not
        armed, self._armed, self._in_step = self._armed, False, False
        if not self._detected and getattr(self._model, "_compiled_call_impl", None) is not None:
            # Module.compile() after attach traced the hook as a no-op: the next forward runs eagerly instead
            self._compiled_call, self._model._compiled_call_impl = self._model._compiled_call_impl, None
        elif not self._detected and self._warn_undetected:
            self._warn_undetected = False
            warn("normwatch: the optimizer stepped before any training-mode forward of the module it "
                 "is attached to reached normwatch, so nothing is recorded yet: attach to the module "
                 "the loop calls, in train() mode, and with torch.compile attach after compiling "
                 "(normwatch.attach(torch.compile(model), optimizer)).", RuntimeWarning)
        if not armed:
            return
        found_inf = getattr(optimizer, "found_inf", None)
        family = self._family
        hypers = {i: update.hyper(family, optimizer.param_groups[i], self._ema_beta)
                  for i in {s.group for s in self._slots} if i is not None}
        hypers[None] = _NOT_STEPPED
        rows, decays = [], {}
        with torch.no_grad():
            for slot, first in zip(self._slots, self._first):
                g = slot.param.grad
                if g is not None and self._sharded:
                    g = _dist.local(g)
                if g is None or slot.group is None:
                    if self._recording:
                        rows.append(stats.absent_row(self._ring.device))
                    continue
                hp = hypers[slot.group]
                state = optimizer.state.get(slot.param, {})
                if self._sharded:
                    state = {k: _dist.local(v) if isinstance(v, torch.Tensor) else v for k, v in state.items()}
                trust = state.get("trust_ratio") if family == "lars" else None
                v = slot.memory
                before = v.clone() if found_inf is not None else None
                row = self._tensor_step(family, hp, slot.snapshot, _dist.local(slot.param.detach()), g, v, state,
                                        trust, first, self._recording)
                if row is not None:
                    rows.append(row.to(self._ring.device))
                if before is not None:
                    v.copy_(torch.where(found_inf.reshape([1] * v.dim()) > 0, before, v))
                # advance_memory scales v's old part by μ (mirrored momentum) or β (moving average, Adam's β₁);
                # on a step the optimizer skipped (found_inf) it did not: the writer thread undoes it there
                decays[slot.name] = hp.momentum if update.mirrors_momentum(family, hp) else hp.ema_beta
                slot.unknown *= decays[slot.name]
            if not self._recording:
                return
            rows = torch.stack(rows)
            if self._sharded:
                _dist.sum_over_ranks(rows)  # every per-tensor sum is a sum over elements: shards add up
            self._ring[self._n].copy_(rows)
            if found_inf is not None:
                self._ring_skipped[self._n].copy_(found_inf.reshape(()))
        self._meta.append((call, self._step_now, tuple(hypers[s.group] for s in self._slots), time.time(),
                           tuple(s.unknown for s in self._slots), tuple(decays.get(s.name, 1.0) for s in self._slots)))
        self._n += 1
        if self._n == self._flush_every:
            self._flush()

    # -- handing over to the writer thread ---------------------------------------------------------------
    def _flush(self) -> None:
        n, self._n = self._n, 0
        meta, self._meta = self._meta, []
        if n == 0:
            return
        rows, skipped = self._ring[:n], self._ring_skipped[:n]
        if rows.is_cuda:
            host_rows = torch.empty(rows.shape, dtype=rows.dtype, pin_memory=True)
            host_skipped = torch.empty(skipped.shape, dtype=skipped.dtype, pin_memory=True)
            host_rows.copy_(rows, non_blocking=True)
            host_skipped.copy_(skipped, non_blocking=True)
            event = torch.cuda.Event()
            event.record()
            ready = event.synchronize
        else:
            host_rows, host_skipped, ready = rows.clone(), skipped.clone(), (lambda: None)
        self._ring_skipped.zero_()
        calls, steps, hypers, walltimes, unknown, decays = (list(column) for column in zip(*meta))
        self._sink.put(Batch(host_rows, host_skipped, calls, hypers, walltimes, ready, steps, unknown, decays))

    def _to_points(self, batch: Batch) -> list[Any]:
        return self._recorder.points(batch)


def _close_at_exit(ref: weakref.ref[Watcher]) -> None:
    watcher = ref()
    if watcher is not None:
        watcher.close()
