"""torch.distributed on CPU (gloo, 2 processes): DDP and FSDP2 record what one process records.

Each rank trains on its half of every global batch; the model normalises with GroupNorm (per-sample
statistics), so the distributed gradient equals the single-process gradient on the whole batch and the
recorded metrics must match to float tolerance. Exactly one process (global rank 0) writes.
"""

import socket
import warnings
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from torch import nn

import normwatch
from tests.models import assert_same_history, small_bn_net

pytestmark = pytest.mark.skipif(not dist.is_available() or not dist.is_gloo_available(), reason="needs gloo")
STEPS, WORLD = 4, 2


def _model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1, bias=False), nn.GroupNorm(2, 8), nn.ReLU(), nn.MaxPool2d(2),
                         nn.Conv2d(8, 8, 3, padding=1), nn.GroupNorm(4, 8), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
                         nn.Flatten(), nn.Linear(8, 5))


def _batches():
    gen = torch.Generator().manual_seed(1)
    return [(torch.randn(8, 3, 8, 8, generator=gen), torch.randint(0, 5, (8,), generator=gen)) for _ in range(STEPS)]


def _optimizer(model: nn.Module) -> torch.optim.Optimizer:
    return torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=5e-3)


def _train(model: nn.Module, opt: torch.optim.Optimizer, rank: int = 0, world: int = 1) -> None:
    for x, y in _batches():
        xs, ys = x.chunk(world)[rank], y.chunk(world)[rank]
        loss = F.cross_entropy(model(xs), ys)
        opt.zero_grad()
        loss.backward()
        opt.step()


def _worker(rank: int, port: int, mode: str, out: str) -> None:
    warnings.filterwarnings("error", message="normwatch: torch.compile")  # fused: no fallback to the eager path
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=WORLD)
    try:
        model = _model()
        if mode == "ddp":
            wrapped = nn.parallel.DistributedDataParallel(model)
        else:
            from torch.distributed.fsdp import fully_shard

            fully_shard(model[0])
            fully_shard(model[4])
            wrapped = fully_shard(model)
        opt = _optimizer(wrapped)
        watch = normwatch.attach(wrapped, opt, logdir=str(Path(out) / f"rank{rank}"), keep_history=True,
                                 fused=mode.endswith("fused"))
        all_reduce, calls = dist.all_reduce, []

        def counted(*args, **kwargs):  # DDP's reducer and FSDP2 do not come through here; normwatch does
            calls.append(args[0].numel())
            return all_reduce(*args, **kwargs)

        dist.all_reduce = counted
        try:
            _train(wrapped, opt, rank, WORLD)
        finally:
            dist.all_reduce = all_reduce
        watch.close()
        torch.save({"history": watch.history, "step": watch.step, "layers": watch.layers, "all_reduce": calls},
                   Path(out) / f"rank{rank}.pt")
        dist.barrier()  # no rank tears down (rank 0 hosts the store) while another still talks to it
    finally:
        dist.destroy_process_group()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.parametrize("mode", ["ddp", "fsdp2", "fsdp2-fused"])
def test_distributed_runs_record_what_one_process_records(tmp_path, mode) -> None:
    single = _model()
    opt = _optimizer(single)
    with normwatch.attach(single, opt, logdir=str(tmp_path / "single"), keep_history=True) as expected:
        _train(single, opt)

    mp.spawn(_worker, args=(_free_port(), mode, str(tmp_path)), nprocs=WORLD, join=True)
    results = [torch.load(tmp_path / f"rank{r}.pt", weights_only=False) for r in range(WORLD)]
    assert [layer.name for layer in results[0]["layers"]] == ["0", "4"]
    assert all(r["step"] == STEPS for r in results)
    # communication: none for DDP; for FSDP2 one all-reduce per recorded step, of 14 sums per tensor
    tensors = 3  # 0.weight; 4.weight and 4.bias (GroupNorm: rescaled together)
    expected_calls = [] if mode == "ddp" else [tensors * 14] * STEPS
    assert [r["all_reduce"] for r in results] == [expected_calls] * WORLD
    # exactly one process writes: rank 0's events hold every tag; no other rank wrote an event file
    assert not list((tmp_path / "rank1").glob("**/events.out.tfevents.*"))
    assert results[1]["history"] == {}
    acc = EventAccumulator(str(tmp_path / "rank0"), size_guidance={"scalars": 0})
    acc.Reload()
    assert set(acc.Tags()["scalars"]) == set(expected.history)
    assert_same_history(results[0]["history"], expected.history, rel=1e-4, abs=1e-7)


def test_sync_batchnorm_is_detected_locally(tmp_path) -> None:
    """With a process group up, SyncBatchNorm's own forward would gather statistics from every rank (and on CPU
    refuses to run); detection normalises each rank's batch locally and finds the convs it normalises."""
    model = nn.SyncBatchNorm.convert_sync_batchnorm(small_bn_net())
    x = torch.randn(16, 3, 8, 8, generator=torch.Generator().manual_seed(3))
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1)
    try:
        with pytest.raises(ValueError, match="SyncBatchNorm expected input tensor to be on GPU"):
            model(x)  # the synchronising path is live
        before = [t.clone() for t in model.state_dict().values()]
        layers = normwatch.detect(model, x)
    finally:
        dist.destroy_process_group()
    assert [(layer.name, layer.norm, layer.params, layer.confirmed) for layer in layers] == [
        ("0", "1", ("0.weight",), True), ("4", "5", ("4.weight",), True)]
    assert not any("forward" in vars(m) for m in model.modules())  # the local forward is gone again
    assert all(torch.equal(a, b) for a, b in zip(before, model.state_dict().values()))
