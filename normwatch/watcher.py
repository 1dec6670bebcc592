"""The Watcher: hooks in, per-step sums on the device, batches out to the writer thread, hooks out.

Lifecycle. ``attach`` registers a forward pre-hook on the model (:mod:`normwatch.discovery`) and step
pre/post hooks on the optimizer. The first training-mode forward runs detection (a few extra forwards on
that batch, the model left exactly as it was) and removes the forward hook. Around each
``optimizer.step()``: the pre-hook copies w_t into a snapshot (recorded steps only); the post-hook reads g,
w_{t+1} and the optimizer's state, advances the gradient memory and stores one row of sums per tensor in a
ring on the device (:mod:`normwatch.tracked`, :mod:`normwatch.ring`). When the ring is full or its oldest
record would otherwise wait longer than ``flush_secs``, and at ``close``, it is copied to the host in one
transfer (non-blocking on CUDA) and handed to the writer thread (:mod:`normwatch.tensorboard`), which turns
it into points (:mod:`normwatch.records`) and writes them. No host-device sync in the hooks.

Data flows one way: hook → device ring → host batch → points → writer. The param groups
(:mod:`normwatch.param_groups`) and a resumed or mid-run start (:mod:`normwatch.resume`) have modules of
their own.
"""

from __future__ import annotations

import atexit
import contextlib
import functools
import time
import weakref
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import torch
from torch import nn

from normwatch import _dist, rules, sums, tensorboard
from normwatch._warn import warn
from normwatch.detect import Layer, unwrap
from normwatch.discovery import Discovery
from normwatch.manual import ManualSteps
from normwatch.notes import Notes
from normwatch.options import ForwardFilter, Options, StepFn, check_destination
from normwatch.param_groups import ParamGroups
from normwatch.records import Recorder, StepRecord
from normwatch.resume import Resume
from normwatch.ring import Ring
from normwatch.tracked import Tracked

_ATTACHED: weakref.WeakKeyDictionary[torch.optim.Optimizer, Watcher] = weakref.WeakKeyDictionary()


def attach(model: nn.Module, optimizer: torch.optim.Optimizer | None = None, *, logdir: str | None = None,
           writer: Any = None, every: int = 1, layers: Sequence[str] | None = None, flush_every: int = 64,
           flush_secs: float = 5.0, ema_beta: float = rules.DEFAULT_EMA_BETA, keep_history: bool = False,
           confirm: bool = True, step_fn: Callable[[], int] | None = None, fused: bool = False,
           start_step: int = 0, forward_filter: ForwardFilter | None = None, warn_undetected: bool = True,
           decoupled: bool = False) -> Watcher:
    """Watch the scale-invariant layers of ``model`` as ``optimizer`` trains them; log to TensorBoard.

    Args:
        model: the model whose forward the training loop calls (compiled/DDP wrappers are fine).
        optimizer: the optimizer that steps its parameters; None for a loop with its own update, which then
            runs inside ``with watch.update(lr=..., ...):`` (:meth:`Watcher.update`).
        logdir: TensorBoard run directory. With neither ``logdir`` nor ``writer``, ``runs/<date>_<host>``
            like ``SummaryWriter``'s default.
        writer: an existing ``SummaryWriter`` to write into (normwatch flushes it but does not close it).
        every: record every ``every``-th optimizer step (the gradient memory still advances every step).
        layers: glob patterns over layer names. ``"pat"`` keeps only detected layers that match,
            ``"-pat"`` drops matches, ``"+pat"`` adds modules whose weight detection did not find
            (recorded as one whole-tensor group).
        flush_every: recorded steps kept on the device between transfers to the writer thread.
        flush_secs: at most this many seconds (with steps of regular length) between a step's recording and
            its points reaching the event file, however slow the steps.
        ema_beta: decay of the gradient memory for optimizers without momentum (``grad_autocorr``).
        keep_history: also keep every point in memory (``Watcher.history``).
        confirm: confirm detection numerically (one more forward on the first batch).
        step_fn: the x-axis value of each recorded step, read as the step starts (a trainer's own
            counter, e.g. ``lambda: trainer.global_step``, which also counts steps AMP skipped). By
            default normwatch counts the optimizer steps that happened.
        fused: compute each tensor's statistics with ``torch.compile`` (a few fused kernels per tensor
            instead of about twenty small ones). The first recorded step compiles; a compiler failure warns
            once and falls back to the eager path.
        start_step: the count of optimizer steps already taken (a run resumed without normwatch's
            ``state_dict``): the x axis and ``every`` continue from it.
        forward_filter: ``f(module, args, kwargs) -> bool``, whether a training-mode forward of ``model``
            is the model's own (detection runs on the first one that is); e.g. a trainer that calls
            ``model`` with a redirected ``forward`` says no to that call.
        warn_undetected: warn when the optimizer steps before detection has run (an integration that says
            it in its own words turns this off).
        decoupled: ``optimizer`` is one normwatch does not know, and its weight decay is decoupled,
            ``w ← (1 − ηλ)·w − η·U`` with ``λ = group["weight_decay"]`` (as Lion's is): the shrink/growth split
            applies. Never assumed.

    Returns:
        The :class:`Watcher`; ``close()`` it (or use it as a context manager) to flush and unhook.

    Raises:
        RuntimeError: if a Watcher is already attached to this optimizer.
        ValueError, TypeError: on invalid arguments.
    """
    options = Options(every=every, layers=tuple(layers) if layers is not None else (), flush_every=flush_every,
                      flush_secs=flush_secs, ema_beta=ema_beta, keep_history=keep_history, confirm=confirm,
                      step_fn=step_fn, fused=fused, start_step=start_step, forward_filter=forward_filter,
                      warn_undetected=warn_undetected, decoupled=decoupled)
    return Watcher(model, optimizer if optimizer is not None else ManualSteps(model), logdir=logdir, writer=writer,
                   options=options)


class Watcher:
    """Records the weight-norm dynamics of a model's scale-invariant layers; made by :func:`attach`."""

    def __init__(self, model: nn.Module, optimizer: torch.optim.Optimizer, *, logdir: str | None = None,
                 writer: Any = None, options: Options | None = None) -> None:
        if not isinstance(model, nn.Module):
            raise TypeError(f"Expected model to be a torch.nn.Module, got {type(model).__name__}.")
        optimizer = _unwrap_optimizer(optimizer)
        options = options if options is not None else Options()
        check_destination(logdir, writer)
        if optimizer in _ATTACHED:
            raise RuntimeError("normwatch is already attached to this optimizer; close() that Watcher first.")
        if options.decoupled and rules.knows(optimizer):
            raise ValueError(f"normwatch knows {type(optimizer).__name__}'s update rule; `decoupled=True` is for an "
                             "optimizer it does not know: leave it out.")
        self.options = options
        self.every = options.every
        self._model, self._optimizer = model, optimizer
        self._family = rules.family_of(optimizer, options.decoupled)
        self._hypers: dict[int | None, rules.Hyper] = {}  # each group's, read as the step under way starts
        self._layers: list[Layer] = []
        self._groups = ParamGroups(optimizer, model)
        self._tracked = Tracked(options.fused)
        self._resume = Resume()
        self._ring = Ring(options.flush_every, options.flush_secs)
        self._calls = options.start_step  # step-hook calls (skipped AMP steps included until written)
        self._step_fn = StepFn(options.step_fn)
        self._step_now: int | None = None  # step_fn's value for the step under way
        self._notes = Notes()
        self._closed = False
        self._recording = False
        self._in_step = False  # between the step pre-hook and post-hook
        self._armed = False  # this step will be processed by the post-hook
        self._writes = _dist.rank() == 0  # under torch.distributed, global rank 0 alone writes
        self._recorder = Recorder(layer_names=[], slot_layer=[], numel=[], every=options.every)
        own_writer = writer is None and self._writes
        if own_writer:
            writer = _make_writer(logdir)
        self._sink = tensorboard.Sink(writer if self._writes else None, self._recorder, close_writer=own_writer,
                                      keep_history=options.keep_history, enabled=self._writes)
        _ATTACHED[optimizer] = self
        self._discovery = Discovery(model, confirm=options.confirm, patterns=options.layers,
                                    forward_filter=options.forward_filter, warn_undetected=options.warn_undetected,
                                    on_found=self._on_found)
        self._handles = [optimizer.register_step_pre_hook(self._before_step),
                         optimizer.register_step_post_hook(self._after_step)]
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
        return self._tracked.nbytes + self._ring.nbytes

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
        self._discovery.close()
        self._flush()
        self._sink.close()
        _ATTACHED.pop(self._optimizer, None)
        atexit.unregister(self._atexit)
        self._tracked.release()

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
        tensors = self._tracked.tensors
        return self._resume.state_dict(self.step, [layer.name for layer in self._layers], self._recorder.w0_norm2,
                                       tensors, self._recorder.unknown_now([t.unseen for t in tensors]))

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue from :meth:`state_dict`: the step count now, each layer's and tensor's state as it is
        recorded (at detection, or when a param group adds it)."""
        self._resume.load(state)
        tensors = self._tracked.tensors
        if tensors:
            self.flush()  # the writer thread is idle while the recorder changes
        self._calls = int(state["step"])
        self._recorder.skipped_total = 0
        if tensors:
            self._resume.restore(list(enumerate(layer.name for layer in self._layers)), tensors,
                                 self._recorder.w0_norm2)
            self._recorder.restart_unknown()
            self._say_withheld()

    @contextlib.contextmanager
    def update(self, *, lr: float, weight_decay: float = 0.0, momentum: float = 0.0, dampening: float = 0.0,
             nesterov: bool = False, decoupled: bool = False) -> Iterator[None]:
        """One update of a loop with its own (attached without an optimizer): run it inside this block, after
        ``backward()``. The hyperparameters declare the rule: SGD's (PyTorch convention, the momentum buffer
        replayed by normwatch) or ``decoupled=True`` (``w ← (1 − ηλ)w − ηU``); see :mod:`normwatch.manual`.

        Raises:
            RuntimeError: when this Watcher follows an optimizer's own steps.
            ValueError: on invalid hyperparameters.
        """
        opt = self._optimizer
        if not isinstance(opt, ManualSteps):
            raise RuntimeError(f"watch.update(...) is for a loop with its own update (normwatch.attach(model) without "
                               f"an optimizer); this Watcher follows {type(opt).__name__}'s own steps.")
        if opt.declare(lr=lr, weight_decay=weight_decay, momentum=momentum, dampening=dampening, nesterov=nesterov,
                       decoupled=decoupled) and self._layers:
            self._notes.say(opt, self._hypers_now(), dict(enumerate(layer.name for layer in self._layers)),
                            self._tracked.tensors)
        self._before_step(opt, (), {})
        opt.replay()
        yield
        if opt.check() is False:  # not the declared rule: from this step on, measured metrics only
            warn(f"normwatch: the update inside watch.update(...) is not the declared rule (SGD with lr={lr:g}, "
                 f"weight_decay={weight_decay:g}, momentum={momentum:g}, dampening={dampening:g}, "
                 f"nesterov={nesterov}, in PyTorch's convention); from this step on normwatch records every "
                 "measured metric but no shrink/growth split and no theory.", RuntimeWarning)
            self._hypers = self._hypers_now()
        self._after_step(opt, (), {})

    def __enter__(self) -> Watcher:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        size = self._tracked.nbytes / 2
        return (f"Watcher(layers={len(self._layers)}, family={self._family!r}, every={self.every}, "
                f"step={self.step}, extra_memory={self.extra_memory_bytes / 2**20:.2f} MiB "
                f"(2 × {size / 2**20:.2f} MiB instrumented + ring), closed={self._closed})")

    # -- layers: found at the first forward, joined when the optimizer steps them ---------------------------
    def _on_found(self, layers: list[Layer], said: bool) -> None:
        """Detection is over: record the layers the optimizer steps, wait for the others."""
        base = unwrap(self._model)
        params = dict(base.named_parameters(remove_duplicate=False))
        self._tracked.sharded = any(_dist.is_dtensor(params[n]) for layer in layers for n in layer.params)
        if not self._writes and not self._tracked.sharded:  # DDP: rank 0 has the same numbers; the others rest
            self._layers = layers
            return
        self._groups.waiting = layers
        ready = self._groups.take_ready()
        stepped = self._groups.stepped_names()
        for layer in self._groups.waiting:
            missing = [n for n in layer.params if n not in stepped]
            warn(f"normwatch: layer {layer.name!r} is recorded from the step its parameters join this optimizer "
                 f"({', '.join(missing)} not in its param groups yet).")
        if not ready and not (layers or said):
            warn(f"normwatch: found no scale-invariant layer in {type(base).__name__}: nothing will be "
                 "recorded. A weight is scale-invariant when its output reaches the loss only through a "
                 "normalisation of it (BatchNorm in training mode, GroupNorm, LayerNorm, RMSNorm, QK-norm, "
                 "F.normalize; written by hand or not); see the README's 'How detection works'.", RuntimeWarning)
        if ready:
            self._join(ready)
        if self._in_step:  # the forward runs inside optimizer.step(closure): this step can still be recorded
            self._arm()

    def _join(self, layers: list[Layer]) -> None:
        """Start recording ``layers``: their tensors' state from a loaded state_dict, else from the optimizer's."""
        first_layer, first_tensor = len(self._layers), len(self._tracked.tensors)
        params = dict(unwrap(self._model).named_parameters(remove_duplicate=False))
        self._tracked.add(layers, first_layer, params, self._groups.index_of())
        self._layers.extend(layers)
        tensors, new = self._tracked.tensors, self._tracked.tensors[first_tensor:]
        self._ring.resize(len(tensors), len(sums.SUMS), tensors[0].param.device)
        self._recorder.extend([layer.name for layer in self._layers], [t.layer for t in tensors],
                              self._tracked.numel_per_layer(len(self._layers)),
                              [tuple(params[layer.params[0]].shape) for layer in self._layers])
        joined = range(first_layer, len(self._layers))
        self._notes.say(self._optimizer, self._hypers_now(), {i: self._layers[i].name for i in joined}, new)
        self._resume.adopt_optimizer_state(new, self._optimizer, self._hypers_now())
        self._resume.restore([(i, self._layers[i].name) for i in joined], new, self._recorder.w0_norm2)
        self._say_withheld()
        self._sink.set_preamble(tensorboard.preamble(self._optimizer, self._family, self.every, self._layers,
                                                     self._tracked.tensors))

    def _regroup(self) -> None:
        """The param groups changed: each tensor's group index again (None: no longer stepped, so not recorded),
        and the waiting layers a new group completes, recorded from this step on."""
        self._groups.mark_seen()
        self._tracked.regroup(self._groups.index_of())
        family = rules.family_of(self._optimizer, self.options.decoupled)
        if family != self._family:
            self.flush()  # the config written so far names the old one
            self._family = family
            self._sink.set_preamble(tensorboard.preamble(self._optimizer, self._family, self.every, self._layers,
                                                         self._tracked.tensors))
        ready = self._groups.take_ready() if self._groups.waiting else []
        if ready:
            self.flush()  # batches of the old shape are written first (a host sync, once per new param group)
            self._join(ready)

    def _say_withheld(self) -> None:
        self._resume.say_withheld(self._optimizer, [layer.name for layer in self._layers], self._tracked.tensors)

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
        if self._armed or not (self._tracked.tensors or self._groups.waiting):
            return
        if self._groups.changed():  # a param group added (or removed) since the last step
            self._regroup()
        if self._resume.loaded is not None and self._groups.waiting:
            self._resume.forget_stepped(self._groups.stepped_names() - {t.name for t in self._tracked.tensors})
        if not self._tracked.tensors:
            return
        self._armed = True
        self._step_now = self._step_fn.read()
        skip_aware = getattr(self._optimizer, "found_inf", None) is not None  # fused optimizer under a GradScaler
        self._recording = skip_aware or self._calls % self.every == 0
        self._recorder.filter_every = self._recorder.filter_every or (skip_aware and self.every > 1)
        self._hypers = self._hypers_now()
        mirroring_anew = self._tracked.before_step(self._optimizer, self._hypers, self._recording)
        if mirroring_anew:  # a group's memory mirrors a buffer again (momentum back from 0): adopt, and wait
            self._resume.adopt_optimizer_state(mirroring_anew, self._optimizer, self._hypers, use_loaded=False)
            self._say_withheld()

    @torch.compiler.disable
    def _after_step(self, optimizer: torch.optim.Optimizer, args: Any, kwargs: Any) -> None:
        call, self._calls = self._calls, self._calls + 1  # every step counts, recorded or not
        armed, self._armed, self._in_step = self._armed, False, False
        if not self._discovery.done:
            self._discovery.after_step()
        if armed:
            self._record(call)
        if self._ring.due():
            self._flush()

    def _record(self, call: int) -> None:
        """Advance the gradient memories; on recorded steps put the step's rows and record in the ring."""
        optimizer, tensors, hypers = self._optimizer, self._tracked.tensors, self._hypers
        rows, decays = self._tracked.after_step(optimizer, hypers, self._recording, self._ring.device)
        if rows is None:
            return
        record = StepRecord(call=call, step=self._step_now, hypers=tuple(hypers[t.group] for t in tensors),
                            walltime=time.time(), unseen=tuple(t.unseen for t in tensors), decays=decays)
        self._ring.append(rows, getattr(optimizer, "found_inf", None), record)

    def _hypers_now(self) -> dict[int | None, rules.Hyper]:
        """Each stepped param group's hyperparameters as its rule reads them (None: a tensor no group holds)."""
        groups = self._optimizer.param_groups
        hypers: dict[int | None, rules.Hyper] = {
            i: rules.hyper(self._optimizer, groups[i], self.options.ema_beta, self.options.decoupled)
            for i in {t.group for t in self._tracked.tensors} if i is not None}
        hypers[None] = rules.NOT_STEPPED
        return hypers

    def _flush(self) -> None:
        batch = self._ring.take()
        if batch is not None:
            self._sink.put(batch)


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


def _make_writer(logdir: str | None) -> Any:
    from torch.utils.tensorboard import SummaryWriter

    try:
        return SummaryWriter(log_dir=logdir)
    except Exception as error:
        warn(f"normwatch: cannot create a TensorBoard writer in {logdir or 'runs/'} ({error}); "
             "training goes on and the metrics are kept in memory in Watcher.history.", RuntimeWarning)
        return None


def _close_at_exit(ref: weakref.ref[Watcher]) -> None:
    watcher = ref()
    if watcher is not None:
        watcher.close()
