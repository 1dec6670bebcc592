"""Writing to TensorBoard off the training thread: the custom-scalars layout, the writer thread, failures.

Tags are ``normwatch/<metric>/<layer>`` (``<layer>`` the module's qualified name; :mod:`normwatch.metrics`
lists every metric with its formula). The custom-scalars layout puts the seed's superimposed charts one click
away: per layer shrink vs growth, lars_ratio vs lars_theory and angle vs angle_theory.
"""

from __future__ import annotations

import json
import queue
import re
import threading
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from normwatch import metrics
from normwatch.records import Batch, Point, Recorder, warn_from_thread

PAIRS = metrics.charts()  # per-layer charts: title → the metrics they superimpose
Scalar = tuple[str, float, int, float]  # (tag, value, step, walltime), as add_scalar takes them


def custom_layout(layers: Sequence[str]) -> dict[str, dict[str, list[Any]]]:
    """The ``add_custom_scalars`` layout: one category per layer, ``normwatch: <layer>``, holding the seed's
    superimposed charts (:data:`PAIRS`: shrink vs growth, lars_ratio vs lars_theory, angle vs angle_theory).

    TensorBoard matches a chart's regexes (``re.match``) against the tags of every run shown, so each chart
    draws two lines per run: six for the demo's three main runs, within the README's bound of 8 lines per
    chart. A chart of one metric over all layers would draw layers × runs lines (24 for the demo's ResNet-9),
    so there is none: the Scalars tab has one chart per ``normwatch/<metric>/<layer>`` with a line per run,
    and ``normwatch report`` draws each metric over the layers of one run.
    """
    return {
        f"normwatch: {layer}": {
            title: ["Multiline", [f"^normwatch/({'|'.join(pair)})/{re.escape(layer)}$"]]
            for title, pair in PAIRS.items()
        }
        for layer in layers
    }


@dataclass(frozen=True)
class Preamble:
    """What a run's event file holds before its points: the custom-scalars layout and the config text."""

    layout: dict[str, dict[str, list[Any]]]
    config: str  # JSON, written as the text ``normwatch/config``


def preamble(optimizer: Any, family: str, every: int, layers: Sequence[Any], tensors: Sequence[Any]) -> Preamble:
    """The layout and config text of a run as it is recorded now (``layers``: :class:`~normwatch.Layer`;
    ``tensors``: the tracked tensors, whose first stepped param group gives the config's momentum flags)."""
    index = next((t.group for t in tensors if t.group is not None), None)
    group = optimizer.param_groups[index] if index is not None else {}
    config = {
        "optimizer": type(optimizer).__name__, "family": family, "every": every,
        "nesterov": bool(group.get("nesterov", False)), "dampening": float(group.get("dampening", 0.0) or 0.0),
        "layers": [{"name": layer.name, "norm": layer.norm, "granularity": layer.granularity,
                    "groups": layer.groups, "params": list(layer.params), "confirmed": layer.confirmed}
                   for layer in layers],
    }
    return Preamble(custom_layout([layer.name for layer in layers]), json.dumps(config))


class Sink:
    """A writer thread: batches go in on the training thread, the Recorder turns them into points and they
    are written on this one; each batch is flushed to the event file as soon as it is written.

    ``writer`` is a ``SummaryWriter`` (None when it could not be made); the preamble (:meth:`set_preamble`)
    is written before the first point (again on later batches until it succeeds). ``history`` is kept
    when asked.

    A failing writer never costs a recorded step: from the first failure on, every point is also kept in
    ``history``, and the values not yet written wait in a backlog that is retried, oldest first, once per
    later batch and at ``close()``, so a value is never written twice and each tag's steps stay in order.
    One warning says writing failed, one more says when it works again, and ``close()`` says how many
    values never reached the event file. Only the writer thread touches this state until ``close()`` has
    joined it. A disabled sink (a rank other than 0) drops what it is given.
    """

    def __init__(self, writer: Any, recorder: Recorder, *, close_writer: bool, keep_history: bool,
                 enabled: bool = True) -> None:
        self._writer = writer
        self._enabled = enabled
        self._recorder = recorder
        self._preamble: Preamble | None = None  # not yet written
        self._close_writer = close_writer
        self.keep_history = keep_history or (writer is None and enabled)
        self.history: dict[str, list[tuple[int, float]]] = {}
        self._backlog: deque[Scalar] = deque()  # values the writer has not taken yet, oldest first
        self._failing = False  # the last attempt to write failed
        self._warned = {"failed": False, "recovered": False}
        self._queue: queue.Queue[Batch | None] = queue.Queue()
        self._thread = threading.Thread(target=self._run, name="normwatch-writer", daemon=True)
        self._thread.start()

    def set_preamble(self, preamble: Preamble) -> None:
        """Write this layout and config before the next points (call while the thread is idle: after drain())."""
        if self._writer is not None:
            self._preamble = preamble

    def put(self, batch: Batch) -> None:
        if self._enabled:
            self._queue.put(batch)

    def drain(self) -> None:
        """Wait until every batch handed over so far is written."""
        self._queue.join()

    def close(self) -> None:
        """Stop the thread, retry what is still unwritten once, flush, and say what never reached the file."""
        self._queue.put(None)
        self._thread.join()
        if self._writer is None:
            return
        self._attempt()  # a run closed before its first step still gets its layout
        try:
            self._writer.flush()
            if self._close_writer:
                self._writer.close()
        except Exception as error:  # a failing writer must not fail the user's close()
            self._fail(error)
        self._report_unwritten()

    def _run(self) -> None:
        while True:  # this thread must outlive any error: flush() and close() wait for it
            batch = self._queue.get()
            try:
                if batch is None:
                    return
                self._write(self._recorder.points(batch))
            except BaseException as error:
                warn_from_thread(f"normwatch: could not record a batch of steps: {error!r}")
            finally:
                self._queue.task_done()

    def _write(self, points: list[Point]) -> None:
        """Queue each point's values behind the backlog; while the writer fails, try it once per batch; then
        flush the event file, so that a written point is on disk even if the process is killed."""
        trying = self._writer is not None and self._start()
        for step, walltime, values in points:
            kept = self.keep_history
            if kept:
                self._remember(step, values)
            if self._writer is None:
                continue
            self._backlog.extend((name, value, step, walltime) for name, value in values.items())
            if trying:
                trying = self._attempt()
            if self.keep_history and not kept:  # history starts with the point whose write failed
                self._remember(step, values)
        if trying and points:
            try:
                self._writer.flush()
            except Exception as error:
                self._fail(error)

    def _start(self) -> bool:
        """Write the preamble if it has not been written yet; False when that fails."""
        if self._preamble is not None:
            try:
                self._writer.add_custom_scalars(self._preamble.layout)
                self._writer.add_text("normwatch/config", self._preamble.config)
            except Exception as error:
                self._fail(error)
                return False
            self._preamble = None
        return True

    def _attempt(self) -> bool:
        """Write the backlog oldest first; True when all of it (and the preamble) reached the writer."""
        if not self._start():
            return False
        try:
            while self._backlog:
                name, value, step, walltime = self._backlog[0]
                self._writer.add_scalar(name, value, step, walltime=walltime)
                self._backlog.popleft()
        except Exception as error:
            self._fail(error)
            return False
        if self._failing:
            self._failing = False
            self._warn_once("recovered", "normwatch: writing to TensorBoard works again; the values held back "
                            "were written and every point since the failure is also in Watcher.history.")
        return True

    def _remember(self, step: int, values: dict[str, float]) -> None:
        for name, value in values.items():
            self.history.setdefault(name, []).append((step, value))

    def _fail(self, error: BaseException) -> None:
        self._failing = True
        self.keep_history = True
        self._warn_once("failed", f"normwatch: cannot write to TensorBoard ({error}); training goes on, the "
                        "metrics are kept in memory in Watcher.history and the writer is retried on later steps.")

    def _report_unwritten(self) -> None:
        if self._backlog:
            steps = sorted({step for _, _, step, _ in self._backlog})
            warn_from_thread(f"normwatch: {len(self._backlog)} values of {len(steps)} recorded steps (steps "
                             f"{steps[0]} to {steps[-1]}) never reached the TensorBoard event file; they are "
                             "only in memory, in Watcher.history.")

    def _warn_once(self, key: str, message: str) -> None:
        if not self._warned[key]:
            self._warned[key] = True
            warn_from_thread(message)
