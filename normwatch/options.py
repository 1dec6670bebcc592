"""The keyword options of :func:`normwatch.attach`, checked once, with errors that name the fix."""

from __future__ import annotations

import operator
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from torch import nn

from normwatch._warn import warn
from normwatch.rules import DEFAULT_EMA_BETA

ForwardFilter = Callable[[nn.Module, tuple[Any, ...], dict[str, Any]], bool]


@dataclass(frozen=True, kw_only=True)
class Options:
    """How a Watcher records; every field is an argument of :func:`normwatch.attach` (documented there).

    Raises:
        ValueError, TypeError: on an invalid value, with one sentence saying what was expected.
    """

    every: int = 1
    layers: tuple[str, ...] = ()
    flush_every: int = 64
    flush_secs: float = 5.0
    ema_beta: float = DEFAULT_EMA_BETA
    keep_history: bool = False
    confirm: bool = True
    step_fn: Callable[[], int] | None = None
    fused: bool = False
    start_step: int = 0
    forward_filter: ForwardFilter | None = None
    warn_undetected: bool = True
    decoupled: bool = False

    def __post_init__(self) -> None:
        _positive_int("every", self.every)
        _positive_int("flush_every", self.flush_every)
        flush_secs = self.flush_secs
        if isinstance(flush_secs, bool) or not isinstance(flush_secs, (int, float)) or not flush_secs > 0:
            raise ValueError(f"Expected argument `flush_secs` to be a positive number of seconds, but got "
                             f"{self.flush_secs!r}.")
        if isinstance(self.start_step, bool) or not isinstance(self.start_step, int) or self.start_step < 0:
            raise ValueError(f"Expected argument `start_step` to be a non-negative int, but got {self.start_step!r}.")
        if not isinstance(self.ema_beta, (int, float)) or not 0.0 <= self.ema_beta < 1.0:
            raise ValueError(f"Expected argument `ema_beta` to be in [0, 1), but got {self.ema_beta!r}.")
        for name in ("step_fn", "forward_filter"):
            value = getattr(self, name)
            if value is not None and not callable(value):
                raise TypeError(f"Expected argument `{name}` to be a function, but got {type(value).__name__}.")
        layers = self.layers
        if isinstance(layers, str):
            object.__setattr__(self, "layers", (layers,))
        elif not isinstance(layers, Sequence) or not all(isinstance(pattern, str) for pattern in layers):
            raise TypeError(f"Expected argument `layers` to be glob patterns (strings), but got {layers!r}.")
        else:
            object.__setattr__(self, "layers", tuple(layers))


def _positive_int(name: str, value: object) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"Expected argument `{name}` to be a positive int, but got {value!r}.")


def check_destination(logdir: Any, writer: Any) -> None:
    """``logdir`` and ``writer`` are exclusive; a logdir is a path; a writer has ``add_scalar``."""
    if logdir is not None and writer is not None:
        raise ValueError("Pass either `logdir` or `writer`, not both.")
    if logdir is not None and not isinstance(logdir, (str, os.PathLike)):
        raise TypeError(f"Expected argument `logdir` to be a path, but got {type(logdir).__name__}.")
    if writer is not None and not callable(getattr(writer, "add_scalar", None)):
        raise TypeError(f"Expected argument `writer` to be a SummaryWriter (with add_scalar), but got "
                        f"{type(writer).__name__}; pass a directory as `logdir`.")


class StepFn:
    """A trainer's step counter (``attach(step_fn=...)``), read as each step starts; on a failure or a value that
    is no int, one warning and normwatch's own count from then on."""

    def __init__(self, fn: Callable[[], int] | None) -> None:
        self._fn = fn

    def read(self) -> int | None:
        if self._fn is None:
            return None
        try:
            value = self._fn()
            return int(value) if isinstance(value, float) and value.is_integer() else operator.index(value)
        except Exception as error:
            self._fn = None
            warn(f"normwatch: step_fn failed or returned no int ({type(error).__name__}: {error}); from now "
                 "on the x axis counts optimizer steps.", RuntimeWarning)
            return None
