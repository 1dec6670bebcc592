"""A recorded step reaches the event file within ``flush_secs``, even when steps are slow and the process is
then killed (SIGKILL: no atexit, no close())."""

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

import normwatch
from tests.models import small_bn_net

FLUSH_SECS = 1.0
STEP_SECS = 0.3  # a slow training step: 64 of them (flush_every) would take 19 s
MARGIN = 0.7  # the writer thread's write and flush, on a busy 2-core machine

TRAIN = textwrap.dedent(f"""
    import sys, time
    import torch, torch.nn.functional as F
    import normwatch
    from tests.models import seeded_batches, small_bn_net

    torch.set_num_threads(1)
    model = small_bn_net()
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, weight_decay=5e-3)
    watch = normwatch.attach(model, opt, logdir=sys.argv[1], flush_secs={FLUSH_SECS})
    for step, (x, y) in enumerate(seeded_batches(1000)):
        loss = F.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        print(step, time.time(), flush=True)  # the step hooks are done: the step is recorded
        time.sleep({STEP_SECS})
""")


def _steps_on_disk(logdir: Path) -> list[int]:
    acc = EventAccumulator(str(logdir), size_guidance={"scalars": 0})
    acc.Reload()
    tag = "normwatch/w_norm2/0"
    return [e.step for e in acc.Scalars(tag)] if tag in acc.Tags()["scalars"] else []


@pytest.mark.skipif(sys.platform == "win32", reason="SIGKILL is POSIX")
def test_a_killed_slow_run_keeps_every_step_older_than_flush_secs(tmp_path) -> None:
    root = Path(__file__).resolve().parent.parent
    env = {**os.environ, "PYTHONPATH": f"{root}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    proc = subprocess.Popen([sys.executable, "-c", TRAIN, str(tmp_path)], stdout=subprocess.PIPE, text=True,
                            cwd=root, env=env)
    recorded: list[tuple[int, float]] = []
    try:
        for line in proc.stdout:
            step, at = line.split()
            recorded.append((int(step), float(at)))
            if len(recorded) == 12:
                break
        killed_at = time.time()
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.kill()
        proc.wait()
    assert len(recorded) == 12, "the training process died before its 12th step"
    old = [step for step, at in recorded if at < killed_at - FLUSH_SECS - MARGIN]
    assert len(old) >= 5
    assert set(old) <= set(_steps_on_disk(tmp_path))


def test_flush_secs_must_be_a_positive_number(tmp_path) -> None:
    model = small_bn_net()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    for bad in (0, -1.0, "5", True):
        with pytest.raises(ValueError, match="flush_secs"):
            normwatch.attach(model, opt, logdir=str(tmp_path), flush_secs=bad)
