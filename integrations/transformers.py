"""Hugging Face Trainer
====================

:class:`NormwatchCallback` runs normwatch inside ``Trainer.train`` (transformers ≥ 4.45): it attaches to
the model and the Trainer's optimizer when training begins and closes when training ends. It attaches
in every process and global rank zero alone writes (normwatch's own rule: under DDP the gradients are
all-reduced, so the other processes rest; under FSDP2 each adds its shard's sums).

It writes next to the Trainer's TensorBoard logs, in a ``normwatch`` subdirectory of the directory the
Trainer's ``TensorBoardCallback`` uses: ``args.logging_dir`` (transformers 4.x), else
``$TENSORBOARD_LOGGING_DIR``, else ``<output_dir>/runs/<date>_<host>`` (transformers 5.x). A point at step
``s`` describes the optimizer step taken while ``state.global_step == s``; the Trainer logs that step's
loss at ``s + 1``, after counting it.

Gradient accumulation, mixed precision and ``max_grad_norm`` need nothing: normwatch reads the gradient
in the optimizer's step hooks, after the Trainer has accumulated, unscaled and clipped it, and a step the
AMP scaler skipped is not recorded.

normwatch's state is saved with every Trainer checkpoint (``checkpoint-<step>/normwatch_state.pt``; one file
per process when there are several), and ``trainer.train(resume_from_checkpoint=...)`` continues the same
curves: the callback loads the state of the checkpoint at the step the Trainer resumes from, in
``output_dir`` or in ``NormwatchCallback(resume_from=<checkpoint dir>)``. Without it the curves continue at
the right step, and the split waits for momentum normwatch did not see to decay (one warning says so).

Example::

    from normwatch.integrations.transformers import NormwatchCallback

    trainer = Trainer(model=model, args=args, train_dataset=train, callbacks=[NormwatchCallback()])
    trainer.train()
"""

from __future__ import annotations

import os
import socket
from datetime import datetime, timedelta
from typing import Any

import torch

import normwatch

from ._imports import check_options, import_first

_transformers = import_first("normwatch.integrations.transformers", "transformers", "transformers",
                             "transformers")["transformers"]

__all__ = ["NormwatchCallback"]


class NormwatchCallback(_transformers.TrainerCallback):
    """normwatch as a ``transformers.TrainerCallback``: see :mod:`normwatch.integrations.transformers`.

    Args:
        logdir: write here instead of next to the Trainer's TensorBoard logs.
        resume_from: the checkpoint directory a resumed ``train()`` starts from, when it is not
            ``<output_dir>/checkpoint-<step>`` (normwatch's state is read from there).
        **options: passed to :func:`normwatch.attach`: ``every``, ``layers``, ``flush_every``, ``flush_secs``,
            ``ema_beta``, ``keep_history``, ``confirm``, ``fused``.

    Raises:
        TypeError: on a keyword argument that :func:`normwatch.attach` does not take.
    """

    def __init__(self, *, logdir: str | None = None, resume_from: str | os.PathLike | None = None,
                 **options: Any) -> None:
        self.logdir = logdir
        self.resume_from = resume_from
        self.options = check_options(type(self).__name__, options)
        self.watcher: normwatch.Watcher | None = None  # the Watcher of the last train()

    def on_train_begin(self, args: Any, state: Any, control: Any, model: Any = None, optimizer: Any = None,
                       **kwargs: Any) -> None:
        self._close()
        if model is None or optimizer is None:
            raise RuntimeError(f"{type(self).__name__}: the Trainer passed no model or optimizer to on_train_begin "
                               "(transformers >= 4.45 does).")
        options = {"step_fn": lambda: state.global_step, **self.options}  # the Trainer's axis, AMP skips included
        saved = self._saved_state(args, state.global_step) if state.global_step > 0 else None
        start = state.global_step if saved is None else 0  # resumed without normwatch's state: count on from it
        self.watcher = normwatch.attach(model, optimizer, logdir=self.logdir or _logdir(args), start_step=start,
                                        **options)
        if saved is not None:
            self.watcher.load_state_dict(saved)

    def on_save(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        """Save normwatch's state into the checkpoint the Trainer has just written."""
        if self.watcher is None:
            return
        folder = _checkpoint_dir(args.output_dir, state.global_step)
        if os.path.isdir(folder):
            torch.save(self.watcher.state_dict(), os.path.join(folder, _state_file(args)))

    def on_train_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        self._close()

    def _saved_state(self, args: Any, step: int) -> dict[str, Any] | None:
        """normwatch's state in the checkpoint of ``step``, if it was saved there."""
        path = os.path.join(self.resume_from or _checkpoint_dir(args.output_dir, step), _state_file(args))
        return torch.load(path, map_location="cpu", weights_only=True) if os.path.isfile(path) else None

    def _close(self) -> None:
        if self.watcher is not None:
            self.watcher.close()


def _checkpoint_dir(output_dir: str, step: int) -> str:
    """Where the Trainer writes the checkpoint of ``step``."""
    from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR

    return os.path.join(output_dir, f"{PREFIX_CHECKPOINT_DIR}-{step}")


def _state_file(args: Any) -> str:
    """One file per process: under FSDP each holds its shards' memories."""
    return "normwatch_state.pt" if args.world_size == 1 else f"normwatch_state_rank{args.process_index}.pt"


def _logdir(args: Any) -> str:
    """``<the Trainer's TensorBoard directory>/normwatch``, as ``TensorBoardCallback`` chooses it."""
    base = getattr(args, "logging_dir", None) or os.environ.get("TENSORBOARD_LOGGING_DIR")
    if base is None:  # transformers 5.x: the default of TensorBoardCallback (and of SummaryWriter)
        base = _default_run_dir(args.output_dir, datetime.now())
    return os.path.join(os.path.expanduser(base), "normwatch")


def _default_run_dir(output_dir: str, now: datetime) -> str:
    """``<output_dir>/runs/<date>_<host>``, the run directory ``TensorBoardCallback`` made moments ago in the
    same ``on_train_begin`` (it runs before user callbacks): that of the second before ``now`` when a second
    ticked in between."""
    def run_dir(moment: datetime) -> str:
        return os.path.join(output_dir, "runs", f"{moment:%b%d_%H-%M-%S}_{socket.gethostname()}")

    earlier = run_dir(now - timedelta(seconds=1))
    return earlier if not os.path.isdir(run_dir(now)) and os.path.isdir(earlier) else run_dir(now)
