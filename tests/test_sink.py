"""A writer that fails: warn once, keep training, keep every point, and write again once the writer works."""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from torch.utils.tensorboard import SummaryWriter

import normwatch
from tests.models import assert_same_history, seeded_batches, small_bn_net

Points = dict[str, list[tuple[int, float]]]
LAYOUT_TAG = "custom_scalars__config__"


class FlakyWriter(SummaryWriter):
    """A real SummaryWriter whose ``method`` calls numbered ``fail_from`` to ``fail_until - 1`` raise OSError."""

    def __init__(self, logdir: Path, fail_from: int, fail_until: int, method: str = "add_scalar") -> None:
        super().__init__(log_dir=str(logdir))
        self.calls = 0
        self.fail_from, self.fail_until, self.method = fail_from, fail_until, method

    def _maybe_fail(self, method: str) -> None:
        if method == self.method:
            self.calls += 1
            if self.fail_from <= self.calls < self.fail_until:
                raise OSError("No space left on device")

    def add_scalar(self, *args: Any, **kwargs: Any) -> None:
        self._maybe_fail("add_scalar")
        super().add_scalar(*args, **kwargs)

    def add_custom_scalars(self, layout: dict[str, Any]) -> None:
        self._maybe_fail("add_custom_scalars")
        super().add_custom_scalars(layout)


def _run(writer: SummaryWriter, steps: int, keep_history: bool) -> tuple[normwatch.Watcher, list[str]]:
    """Train ``steps`` SGD steps under normwatch writing to ``writer`` (two steps a batch); the warnings given."""
    model = small_bn_net()
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, weight_decay=5e-3)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with normwatch.attach(model, opt, writer=writer, flush_every=2, keep_history=keep_history) as watch:
            for x, y in seeded_batches(steps):
                opt.zero_grad()
                F.cross_entropy(model(x), y).backward()
                opt.step()
        writer.close()
    return watch, [str(w.message) for w in caught if "normwatch" in str(w.message)]


def _events(logdir: Path) -> tuple[Points, list[str]]:
    """The scalars of the event files in ``logdir``, by tag, and the tensor tags (the layout is one)."""
    acc = EventAccumulator(str(logdir), size_guidance={"scalars": 0, "tensors": 0})
    acc.Reload()
    scalars = {tag: [(e.step, e.value) for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}
    return scalars, acc.Tags()["tensors"]


def _count(messages: list[str], text: str) -> int:
    return sum(text in m for m in messages)


@pytest.mark.parametrize("fail_from, fail_until", [(40, 41), (50, 54)], ids=["one-error", "outage-of-4-batches"])
def test_a_writer_that_fails_then_works_gets_every_point_once(tmp_path, fail_from: int, fail_until: int) -> None:
    """Transient errors: the held-back values are written late, in step order, none twice, none lost."""
    writer = FlakyWriter(tmp_path, fail_from, fail_until)
    watch, messages = _run(writer, steps=12, keep_history=True)
    written, _ = _events(tmp_path)
    assert set(written) == set(watch.history)
    assert_same_history(written, watch.history, rel=1e-6, abs=1e-7)  # every step of every tag, once, in order
    assert [s for s, _ in written["normwatch/w_norm2/0"]] == list(range(12))
    assert _count(messages, "cannot write to TensorBoard (No space left on device)") == 1
    assert _count(messages, "works again") == 1
    assert _count(messages, "never reached") == 0


def test_a_writer_that_stays_broken_loses_nothing_and_close_says_how_much_is_only_in_memory(tmp_path) -> None:
    """Permanent error: the file holds what came before it, history the rest, and close() counts the rest."""
    writer = FlakyWriter(tmp_path, fail_from=100, fail_until=10**9)
    watch, messages = _run(writer, steps=8, keep_history=False)
    written, _ = _events(tmp_path)
    history = watch.history
    for tag in set(written) | set(history):
        file_steps = [s for s, _ in written.get(tag, [])]
        assert file_steps == sorted(set(file_steps)), tag  # nothing written twice, steps in order
        covered = set(file_steps) | {s for s, _ in history.get(tag, [])}
        assert covered == set(range(1 if "grad_autocorr" in tag else 0, 8)), tag
    assert [s for s, _ in history["normwatch/w_norm2/0"]][-1] == 7
    only_in_memory = {(t, s) for t, pts in history.items() for s, _ in pts} - \
        {(t, s) for t, pts in written.items() for s, _ in pts}
    assert _count(messages, "cannot write to TensorBoard") == 1
    assert _count(messages, "works again") == 0
    closing = [m for m in messages if "never reached" in m]
    assert len(closing) == 1 and f"{len(only_in_memory)} values of " in closing[0] and "Watcher.history" in closing[0]


def test_a_layout_that_fails_to_write_once_is_written_later_with_every_point(tmp_path) -> None:
    """The first write (the custom-scalars layout) fails: it is retried, and no point is left out of the file."""
    writer = FlakyWriter(tmp_path, fail_from=1, fail_until=2, method="add_custom_scalars")
    watch, messages = _run(writer, steps=6, keep_history=True)
    written, tensors = _events(tmp_path)
    assert LAYOUT_TAG in tensors
    assert_same_history(written, watch.history, rel=1e-6, abs=1e-7)
    assert [s for s, _ in written["normwatch/w_norm2/4"]] == list(range(6))
    assert _count(messages, "cannot write to TensorBoard") == 1 and _count(messages, "works again") == 1
