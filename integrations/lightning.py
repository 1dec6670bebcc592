"""Lightning
=========

:class:`NormwatchCallback` runs normwatch inside ``Trainer.fit``: it attaches to the LightningModule and its
optimizer when training starts and closes when training ends or fails. It attaches on every rank and
global rank zero alone writes (normwatch's own rule: under DDP the gradients are all-reduced, so the
other ranks rest; under FSDP2 each rank adds its shard's sums).

It writes into the trainer's :class:`TensorBoardLogger` when there is one: the same run and the same step
axis, ``trainer.global_step`` (a point at step ``s`` describes the optimizer step taken while
``trainer.global_step == s``; without accumulation, ``self.log`` in ``training_step`` logs that batch at
``s`` too). Without a TensorBoard logger it writes to ``<default_root_dir>/normwatch/version_<n>``.

Gradient accumulation, AMP precision and gradient clipping need nothing: normwatch reads the gradient in
the optimizer's step hooks, after Lightning has accumulated, unscaled and clipped it. Its state is saved
in Lightning checkpoints, so a resumed fit continues the same curves.

Two packages ship Lightning, with distinct ``Callback`` classes. :class:`NormwatchCallback` is for
``lightning`` (``import lightning.pytorch as pl``), or for ``pytorch_lightning`` when only that is
installed; :class:`PLNormwatchCallback` is always for ``pytorch_lightning``.

Example::

    from normwatch.integrations.lightning import NormwatchCallback

    trainer = L.Trainer(max_epochs=10, callbacks=[NormwatchCallback()])
    trainer.fit(model, train_loader)
"""

from __future__ import annotations

import os
import re
from typing import Any

import torch
from torch import nn

import normwatch
from normwatch._warn import warn

from ._imports import check_options, import_first

_FOUND = import_first("normwatch.integrations.lightning", "Lightning", "lightning", "lightning.pytorch",
                      "pytorch_lightning")
_TENSORBOARD_LOGGERS = tuple(package.loggers.TensorBoardLogger for package in _FOUND.values())

__all__ = ["NormwatchCallback", "PLNormwatchCallback"]


class _Normwatch:
    """The callback's logic; mixed into one ``Callback`` subclass per installed Lightning package."""

    def __init__(self, *, module: str | None = None, logdir: str | None = None, optimizer_index: int | None = None,
                 **options: Any) -> None:
        """Args:
            module: dotted name of the submodule that ``training_step`` calls, when it does not call the
                LightningModule's own forward (``self(x)``), e.g. ``"net"``. Layers are named relative to it.
            logdir: write here instead of into the trainer's TensorBoard logger.
            optimizer_index: which of ``trainer.optimizers`` to watch; needed when there are several.
            **options: passed to :func:`normwatch.attach`: ``every``, ``layers``, ``flush_every``,
                ``ema_beta``, ``keep_history``, ``confirm``, ``fused``.

        Raises:
            TypeError: on a keyword argument that :func:`normwatch.attach` does not take.
            ValueError: on an invalid ``module`` or ``optimizer_index``.
        """
        super().__init__()
        if module is not None and (not isinstance(module, str) or not module):
            raise ValueError(f"Expected argument `module` to be a submodule's dotted name, but got {module!r}.")
        if optimizer_index is not None and (not isinstance(optimizer_index, int) or optimizer_index < 0):
            raise ValueError(f"Expected argument `optimizer_index` to be a non-negative int, but got "
                             f"{optimizer_index!r}.")
        self.module = module
        self.logdir = logdir
        self.optimizer_index = optimizer_index
        self.options = check_options(type(self).__name__, options)
        self.watcher: normwatch.Watcher | None = None  # the Watcher of the last fit
        self._resume: dict[str, Any] | None = None  # normwatch state from a checkpoint, applied at attach
        self._final: dict[str, Any] | None = None  # the state at close, for a checkpoint saved after it
        self._probe: Any = None  # a forward pre-hook until the first training forward of the module
        self._forward_seen = False
        self._warn = False

    @property
    def state_key(self) -> str:
        """The key of this callback's state in a checkpoint: one per watched module and optimizer."""
        return f"{type(self).__qualname__}{({'module': self.module, 'optimizer_index': self.optimizer_index})!r}"

    # -- hooks ---------------------------------------------------------------------------------------------
    def on_train_start(self, trainer: Any, pl_module: nn.Module) -> None:
        self._close()
        module = self._module(pl_module)
        optimizer = self._optimizer(trainer)
        if optimizer is None:
            return
        writer, logdir = self._destination(trainer) if trainer.is_global_zero else (None, None)
        options = dict(self.options)
        if len(trainer.optimizers) == 1:  # global_step counts this optimizer's steps (AMP-skipped ones included)
            options.setdefault("step_fn", lambda: trainer.global_step)
        options.setdefault("forward_filter", _own_forward)
        options.setdefault("warn_undetected", False)  # on_train_batch_end says it, naming the `module` option
        state, self._resume, self._final = self._resume, None, None
        # a checkpoint without normwatch state, or fit() again: the step count continues from the trainer's
        start = trainer.global_step if state is None else 0
        self.watcher = normwatch.attach(module, optimizer, writer=writer, logdir=logdir, start_step=start, **options)
        if state is not None:
            self.watcher.load_state_dict(state)
        self._forward_seen = False
        self._probe = module.register_forward_pre_hook(self._on_forward)
        self._warn = trainer.is_global_zero  # one warning per run, not one per rank

    def on_train_batch_end(self, trainer: Any, pl_module: nn.Module, *args: Any, **kwargs: Any) -> None:
        if self._probe is None or self._forward_seen:
            return
        self._unprobe()
        if not self._warn:
            return
        name = f"`pl_module.{self.module}`" if self.module else "the LightningModule's forward (`self(x)`)"
        warn(f"{type(self).__name__}: training_step did not call {name} in training mode, so normwatch "
             "cannot find the scale-invariant layers and records nothing. Call it in training_step, or "
             "pass NormwatchCallback(module='<name>') naming the submodule training_step calls.",
             RuntimeWarning)

    def on_train_end(self, trainer: Any, pl_module: nn.Module) -> None:
        self._close()

    def on_exception(self, trainer: Any, pl_module: nn.Module, exception: BaseException) -> None:
        self._close()

    def teardown(self, trainer: Any, pl_module: nn.Module, stage: str) -> None:
        self._close()

    def state_dict(self) -> dict[str, Any]:
        if self.watcher is not None and self._final is None:
            return {"normwatch": self.watcher.state_dict()}
        return {"normwatch": self._final} if self._final is not None else {}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self._resume = state_dict.get("normwatch")

    # -- helpers ---------------------------------------------------------------------------------------------
    def _on_forward(self, module: nn.Module, args: Any) -> None:
        # no kwargs: this hook removes itself, possibly inside an outer call of the same module (detection's
        # forwards), and torch then calls the outer call's copy of it as a hook without kwargs
        if module.training and _own_forward(module, args, {}):
            self._forward_seen = True  # normwatch's hook has seen this call: detection ran on it
            self._unprobe()

    def _unprobe(self) -> None:
        if self._probe is not None:
            self._probe.remove()
            self._probe = None

    def _module(self, pl_module: nn.Module) -> nn.Module:
        if self.module is None:
            return pl_module
        try:
            return pl_module.get_submodule(self.module)
        except AttributeError:
            names = ", ".join(name for name, _ in pl_module.named_children())
            raise ValueError(f"{type(self).__name__}(module={self.module!r}): the LightningModule has no such "
                             f"submodule (its children: {names or 'none'}).") from None

    def _optimizer(self, trainer: Any) -> torch.optim.Optimizer | None:
        optimizers = trainer.optimizers
        if not optimizers:
            warn(f"{type(self).__name__}: the trainer has no optimizer; nothing to watch.", RuntimeWarning)
            return None
        if self.optimizer_index is None:
            if len(optimizers) != 1:
                raise ValueError(f"{type(self).__name__} watches one optimizer, and the trainer has {len(optimizers)}: "
                                 "pass NormwatchCallback(optimizer_index=i) (one callback per optimizer to watch).")
            return optimizers[0]
        if self.optimizer_index >= len(optimizers):
            raise ValueError(f"{type(self).__name__}(optimizer_index={self.optimizer_index}): the trainer has "
                             f"{len(optimizers)} optimizer(s).")
        return optimizers[self.optimizer_index]

    def _destination(self, trainer: Any) -> tuple[Any, str | None]:
        """``(writer, logdir)``: the TensorBoard logger's SummaryWriter, else a directory of normwatch's own."""
        if self.logdir is not None:
            return None, self.logdir
        for logger in trainer.loggers:
            if isinstance(logger, _TENSORBOARD_LOGGERS):
                return logger.experiment, None
        root = os.path.join(trainer.default_root_dir, "normwatch")
        taken = [int(m.group(1)) for name in (os.listdir(root) if os.path.isdir(root) else [])
                 if (m := re.fullmatch(r"version_(\d+)", name))]
        return None, os.path.join(root, f"version_{max(taken, default=-1) + 1}")

    def _close(self) -> None:
        self._unprobe()
        if self.watcher is not None and self._final is None:
            self._final = self.watcher.state_dict()
            self.watcher.close()


def _own_forward(module: nn.Module, args: Any, kwargs: dict[str, Any]) -> bool:
    """Whether a call of ``module`` runs its own forward, not Lightning's redirection of ``training_step``.

    Strategies that wrap the module (DDP, FSDP, ...) call ``training_step`` through the wrapper's forward: the
    module is called with ``(batch, batch_idx)`` while its instance attribute ``forward`` is a plain function
    that runs ``training_step``. That call is not the model's forward; ``self(x)`` inside it is.
    """
    patched = vars(module).get("forward")
    return patched is None or getattr(patched, "__self__", None) is module


def _callback(package: str) -> type:
    pl = _FOUND[package]
    name = "NormwatchCallback" if package == "lightning.pytorch" else "PLNormwatchCallback"
    doc = (f"normwatch as a ``{package}`` Callback: see :mod:`normwatch.integrations.lightning`.\n\n"
           + (_Normwatch.__init__.__doc__ or ""))
    return type(name, (_Normwatch, pl.Callback), {"__module__": __name__, "__qualname__": name, "__doc__": doc})


if "lightning.pytorch" in _FOUND:
    NormwatchCallback = _callback("lightning.pytorch")
if "pytorch_lightning" in _FOUND:
    PLNormwatchCallback = _callback("pytorch_lightning")
    if "lightning.pytorch" not in _FOUND:
        NormwatchCallback = PLNormwatchCallback


def __getattr__(name: str) -> Any:
    if name == "PLNormwatchCallback":
        raise ImportError("normwatch.integrations.lightning.PLNormwatchCallback needs pytorch_lightning: "
                          "pip install pytorch-lightning")
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
