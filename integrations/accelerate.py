"""Hugging Face accelerate
========================

:func:`attach` is :func:`normwatch.attach` for a loop driven by an ``Accelerator``: pass the prepared model
(the one the loop calls) and the prepared optimizer, in every process. Global rank zero alone writes
(normwatch's own rule: under DDP the gradients are all-reduced, so the other processes rest; under FSDP2
each adds its shard's sums).

With ``gradient_accumulation_steps=k`` there is one record per optimizer step: the prepared optimizer
steps only when gradients sync, and normwatch's hooks sit on the torch optimizer inside it. A step the
AMP scaler skipped is not recorded and not counted. Without ``logdir`` or ``writer``, normwatch writes
into the Accelerator's TensorBoard tracker when there is one (``log_with="tensorboard"`` and
``init_trackers``), else to ``runs/<date>_<host>``. Its steps count optimizer steps from 0.

Example::

    from normwatch.integrations import accelerate as nw_accelerate

    model, optimizer, loader = accelerator.prepare(model, optimizer, loader)
    watch = nw_accelerate.attach(accelerator, model, optimizer)
    for x, y in loader:
        with accelerator.accumulate(model):
            accelerator.backward(loss_fn(model(x), y))
            optimizer.step()
            optimizer.zero_grad()
    watch.close()
"""

from __future__ import annotations

from typing import Any

from torch import nn

import normwatch

from ._imports import check_options, import_first

import_first("normwatch.integrations.accelerate", "accelerate", "accelerate", "accelerate")

__all__ = ["attach"]


def attach(accelerator: Any, model: nn.Module, optimizer: Any, *, logdir: str | None = None, writer: Any = None,
           **options: Any) -> normwatch.Watcher:
    """Watch ``model`` as ``optimizer`` trains it in a loop driven by ``accelerator``.

    Args:
        accelerator: the ``accelerate.Accelerator`` that prepared ``model`` and ``optimizer``.
        model: the prepared model, the one the training loop calls (DDP/compiled wrappers are fine: layers
            are named after the model inside).
        optimizer: the prepared optimizer (an ``AcceleratedOptimizer``; a plain torch optimizer works too).
        logdir: TensorBoard run directory (default: the Accelerator's TensorBoard tracker, else ``runs/``).
        writer: an existing ``SummaryWriter`` to write into instead.
        **options: the other keyword arguments of :func:`normwatch.attach`.

    Returns:
        The :class:`normwatch.Watcher`; ``close()`` it after training (or use it as a context manager).

    Raises:
        TypeError: on a keyword argument that :func:`normwatch.attach` does not take.
    """
    options = check_options("normwatch.integrations.accelerate.attach", options)
    if logdir is None and writer is None:  # trackers exist on the main process only
        writer = next((tracker.tracker for tracker in accelerator.trackers if tracker.name == "tensorboard"), None)
    return normwatch.attach(model, optimizer, logdir=logdir, writer=writer, **options)
