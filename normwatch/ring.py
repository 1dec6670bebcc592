"""Recorded steps between the step hooks and the writer thread: a ring of rows on the device, records on the host.

A batch is handed over when the ring is full (``flush_every`` records) or when holding the oldest record
until the next step would keep it from the event file for longer than ``flush_secs``: the next step is
expected as far ahead as the last one was, so with slow steps every record leaves at once, and a recorded
point reaches the writer thread within about ``flush_secs`` even if the process is then killed. The copy
to the host is non-blocking on CUDA (the writer thread waits for it): no host-device sync in the hooks.
"""

from __future__ import annotations

import time

import torch

from normwatch.records import Batch, StepRecord


class Ring:
    """The device ring of one Watcher: ``(flush_every, tensors, K)`` rows plus a skipped flag per record."""

    def __init__(self, flush_every: int, flush_secs: float) -> None:
        self.flush_every = flush_every
        self.flush_secs = flush_secs
        self._rows = self._skipped = torch.empty(0)
        self._records: list[StepRecord] = []
        self._oldest = 0.0  # time.monotonic() of the oldest record not yet handed over
        self._last_tick: float | None = None
        self._interval = 0.0  # seconds between the last two step-hook calls

    def resize(self, tensors: int, width: int, device: torch.device) -> None:
        """Room for ``tensors`` rows of ``width`` sums per record (only while empty: hand the ring over first)."""
        assert not self._records, "resize a ring only after taking its records"
        self._rows = torch.zeros(self.flush_every, tensors, width, device=device)
        self._skipped = torch.zeros(self.flush_every, device=device)

    @property
    def device(self) -> torch.device:
        return self._rows.device

    @property
    def nbytes(self) -> int:
        return self._rows.numel() * self._rows.element_size()

    def __len__(self) -> int:
        return len(self._records)

    def append(self, rows: torch.Tensor, found_inf: torch.Tensor | None, record: StepRecord) -> None:
        """Store one recorded step (``rows`` on the ring's device; ``found_inf`` a fused optimizer's flag)."""
        n = len(self._records)
        self._rows[n].copy_(rows)
        if found_inf is not None:
            self._skipped[n].copy_(found_inf.reshape(()))
        if not self._records:
            self._oldest = time.monotonic()
        self._records.append(record)

    def due(self) -> bool:
        """Whether to hand the records over now (called at every step-hook call: it times the steps)."""
        now = time.monotonic()
        if self._last_tick is not None:
            self._interval = now - self._last_tick
        self._last_tick = now
        return bool(self._records) and (len(self._records) == self.flush_every
                                        or now - self._oldest + self._interval >= self.flush_secs)

    def take(self) -> Batch | None:
        """The records so far as one batch (the rows copied off the device), and an empty ring."""
        n = len(self._records)
        if n == 0:
            return None
        records, self._records = self._records, []
        rows, skipped = self._rows[:n], self._skipped[:n]
        if rows.is_cuda:
            host_rows = torch.empty(rows.shape, dtype=rows.dtype, pin_memory=True)
            host_skipped = torch.empty(skipped.shape, dtype=skipped.dtype, pin_memory=True)
            host_rows.copy_(rows, non_blocking=True)
            host_skipped.copy_(skipped, non_blocking=True)
            event = torch.cuda.Event()
            event.record()
            batch = Batch(rows=host_rows, skipped=host_skipped, records=records, ready=event.synchronize)
        else:
            batch = Batch(rows=rows.clone(), skipped=skipped.clone(), records=records)
        self._skipped.zero_()
        return batch
