"""Writing to TensorBoard off the training thread: tag names, the custom-scalars layout, failures.

Tags are ``normwatch/<metric>/<layer>`` (``<layer>`` the module's qualified name); see the README for
every metric with its formula. The custom-scalars layout puts the seed's superimposed charts one click
away: per layer shrink vs growth, lars_ratio vs lars_theory and angle vs angle_theory, and one chart per
metric with all layers.
"""

from __future__ import annotations

import queue
import re
import threading
from collections.abc import Callable, Sequence
from typing import Any

from normwatch.records import Batch, Point, warn_from_thread

PAIRS = {"shrink vs growth": ("shrink", "growth"),
         "lars_ratio vs lars_theory": ("lars_ratio", "lars_theory"),
         "angle vs angle_theory": ("angle", "angle_theory")}
PER_METRIC = ("w_norm2", "w_norm2_rel", "cos_wg", "shrink", "growth", "cross", "radial", "tangential", "angle",
              "angle_theory", "lars_ratio", "lars_theory", "grad_autocorr")


def tag(metric: str, layer: str) -> str:
    return f"normwatch/{metric}/{layer}"


def custom_layout(layers: Sequence[str]) -> dict[str, dict[str, list[Any]]]:
    """The ``add_custom_scalars`` layout: entries are regexes matched with ``re.match`` by TensorBoard."""
    per_layer = {
        f"normwatch: {layer}": {
            title: ["Multiline", [f"^normwatch/({'|'.join(pair)})/{re.escape(layer)}$"]]
            for title, pair in PAIRS.items()
        }
        for layer in layers
    }
    all_layers = {metric: ["Multiline", [f"^normwatch/{metric}/"]] for metric in PER_METRIC}
    return {"normwatch: all layers": all_layers, **per_layer}


class Sink:
    """A writer thread: batches go in on the training thread, scalars come out on this one.

    ``writer`` is a ``SummaryWriter`` (None when it could not be made); ``preamble(writer)`` runs once
    before the first point. When a write fails, one warning says so and the points are kept in
    ``history`` instead, so no recorded step is lost. ``history`` is also kept when asked. A disabled
    sink (a rank other than 0) drops what it is given.
    """

    def __init__(self, writer: Any, to_points: Callable[[Batch], list[Point]],
                 preamble: Callable[[Any], None], close_writer: bool, keep_history: bool,
                 enabled: bool = True) -> None:
        self._writer = writer
        self._enabled = enabled
        self._to_points = to_points
        self._preamble: Callable[[Any], None] | None = preamble
        self._close_writer = close_writer
        self._failed = writer is None
        self.keep_history = keep_history or (self._failed and enabled)
        self.history: dict[str, list[tuple[int, float]]] = {}
        self._queue: queue.Queue[Batch | None] = queue.Queue()
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="normwatch-writer", daemon=True)
        self._thread.start()

    def put(self, batch: Batch) -> None:
        if self._enabled:
            self._queue.put(batch)

    def drain(self) -> None:
        """Wait until every batch handed over so far is written."""
        self._queue.join()

    def close(self) -> None:
        self._queue.put(None)
        self._thread.join()
        self._writer_or_none()  # a run closed before its first step still gets its layout
        if self._writer is not None and not self._failed:
            try:
                self._writer.flush()
                if self._close_writer:
                    self._writer.close()
            except Exception as error:  # a failing writer must not fail the user's close()
                self._fail(error)

    def _run(self) -> None:
        while True:  # this thread must outlive any error: flush() and close() wait for it
            batch = self._queue.get()
            try:
                if batch is None:
                    return
                self._write(self._to_points(batch))
            except BaseException as error:
                warn_from_thread(f"normwatch: could not record a batch of steps: {error!r}")
            finally:
                self._queue.task_done()

    def _write(self, points: list[Point]) -> None:
        writer = self._writer_or_none()
        for step, walltime, values in points:
            if self.keep_history:
                for name, value in values.items():
                    self.history.setdefault(name, []).append((step, value))
            if writer is None:
                continue
            try:
                for name, value in values.items():
                    writer.add_scalar(name, value, step, walltime=walltime)
            except Exception as error:
                kept = self.keep_history
                self._fail(error)
                writer = None
                if not kept:  # history starts with the point whose write failed
                    for name, value in values.items():
                        self.history.setdefault(name, []).append((step, value))

    def _writer_or_none(self) -> Any:
        if self._preamble is not None and not self._failed:
            preamble, self._preamble = self._preamble, None
            try:
                preamble(self._writer)
            except Exception as error:
                self._fail(error)
        return None if self._failed else self._writer

    def _fail(self, error: BaseException) -> None:
        if not self._failed:
            self._failed = True
            self.keep_history = True
            warn_from_thread(f"normwatch: cannot write to TensorBoard ({error}); training goes on and the "
                             "metrics are kept in memory in Watcher.history.")
