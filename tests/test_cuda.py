"""CUDA checks: run on a machine with a GPU (skipped elsewhere: CI has none).

    python -m pytest tests/test_cuda.py tests/test_watcher.py -v
    python benchmarks/overhead.py --device cuda --width 64 --batch 512

(the fp16 GradScaler case, fused and not, is parametrised over devices in tests/test_watcher.py)

The sync check is CUDA's own: ``torch.cuda.set_sync_debug_mode("error")`` turns any host-device
synchronisation inside the training steps into an error.
"""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import normwatch
from tests.models import assert_same_history, optimizer_step

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


def _model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 16, 3, padding=1, bias=False), nn.BatchNorm2d(16), nn.ReLU(), nn.MaxPool2d(2),
                         nn.Conv2d(16, 32, 3, padding=1, bias=False), nn.BatchNorm2d(32), nn.ReLU(),
                         nn.AdaptiveMaxPool2d(1), nn.Flatten(), nn.Linear(32, 10)).cuda()


def _batches(n: int):
    gen = torch.Generator(device="cuda").manual_seed(1)
    return [(torch.randn(64, 3, 16, 16, device="cuda", generator=gen),
             torch.randint(0, 10, (64,), device="cuda", generator=gen)) for _ in range(n)]


def _step(model, opt, x, y, scaler=None, dtype=None) -> None:
    with torch.autocast("cuda", dtype=dtype or torch.float16, enabled=dtype is not None):
        loss = F.cross_entropy(model(x), y)
    opt.zero_grad(set_to_none=True)
    optimizer_step(loss, opt, scaler)


OPTIMIZERS = {
    "sgd-nesterov": lambda p, fused: torch.optim.SGD(p, lr=0.1, momentum=0.9, nesterov=True, weight_decay=5e-4,
                                                     fused=fused),
    "adam-l2": lambda p, fused: torch.optim.Adam(p, lr=1e-3, weight_decay=1e-2, fused=fused),  # step on the device
    "adamw": lambda p, fused: torch.optim.AdamW(p, lr=1e-3, weight_decay=0.05, fused=fused),  # when fused
}


@pytest.mark.parametrize("fused_stats", [False, True], ids=["eager-stats", "fused-stats"])
@pytest.mark.parametrize("fused", [False, True], ids=["foreach", "fused"])
@pytest.mark.parametrize("name", OPTIMIZERS)
def test_hooks_never_synchronise(tmp_path, name, fused, fused_stats) -> None:
    model = _model()
    opt = OPTIMIZERS[name](model.parameters(), fused)
    batches = _batches(6)
    with normwatch.attach(model, opt, logdir=str(tmp_path), flush_every=4, fused=fused_stats) as watch:
        _step(model, opt, *batches[0])  # detection (its numeric confirmation reads values back once)
        _step(model, opt, *batches[1])  # fused statistics: the first steps compile
        torch.cuda.synchronize()
        torch.cuda.set_sync_debug_mode("error")
        try:
            for x, y in batches[2:]:
                model.zero_grad(set_to_none=True)
                loss = F.cross_entropy(model(x), y)
                loss.backward()
                opt.step()
        finally:
            torch.cuda.set_sync_debug_mode("default")
    assert watch.step == 6


def test_bf16_autocast_channels_last_split_adds_up(tmp_path) -> None:
    model = _model().to(memory_format=torch.channels_last)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.05, fused=True)
    captured = []
    with normwatch.attach(model, opt, logdir=str(tmp_path), keep_history=True) as watch:
        for x, y in _batches(4):
            w = model[0].weight.detach().double().clone()
            _step(model, opt, x.to(memory_format=torch.channels_last), y, dtype=torch.bfloat16)
            captured.append((w, model[0].weight.detach().double().clone()))
    h = watch.history
    for step, (w, w1) in enumerate(captured):
        measured = (w1.pow(2).sum() - w.pow(2).sum()).item()
        split = (dict(h["normwatch/growth/0"])[step] - dict(h["normwatch/shrink/0"])[step]
                 + dict(h["normwatch/cross/0"])[step])
        assert split == pytest.approx(measured, abs=2e-6 * w.pow(2).sum().item())


def test_compiled_model_and_bitwise_identity_on_cuda(tmp_path) -> None:
    torch._dynamo.reset()
    torch.use_deterministic_algorithms(True, warn_only=True)
    batches = _batches(4)
    plain = _model()
    opt = torch.optim.SGD(plain.parameters(), lr=0.1, momentum=0.9, nesterov=True, weight_decay=5e-4)
    compiled_plain = torch.compile(plain)
    for x, y in batches:
        _step(compiled_plain, opt, x, y, dtype=torch.bfloat16)
    torch._dynamo.reset()
    watched = _model()
    opt = torch.optim.SGD(watched.parameters(), lr=0.1, momentum=0.9, nesterov=True, weight_decay=5e-4)
    compiled = torch.compile(watched)
    with torch._dynamo.config.patch(error_on_recompile=True), normwatch.attach(compiled, opt, logdir=str(tmp_path)):
        for x, y in batches:
            _step(compiled, opt, x, y, dtype=torch.bfloat16)
    for a, b in zip(plain.state_dict().values(), watched.state_dict().values()):
        assert torch.equal(a, b)


@pytest.mark.parametrize("fused_optimizer", [False, True], ids=["foreach", "fused"])
@pytest.mark.parametrize("name", OPTIMIZERS)
def test_fused_statistics_equal_eager_ones_on_cuda(tmp_path, name, fused_optimizer) -> None:
    """attach(fused=True) on CUDA (Triton kernels): the same metrics as the eager path, no fallback."""
    import warnings

    histories = {}
    for fused in (False, True):
        model = _model().to(memory_format=torch.channels_last)
        opt = OPTIMIZERS[name](model.parameters(), fused_optimizer)
        with warnings.catch_warnings():
            warnings.filterwarnings("error", message="normwatch: torch.compile")
            with normwatch.attach(model, opt, logdir=str(tmp_path / str(fused)), fused=fused,
                                  keep_history=True) as watch:
                for x, y in _batches(5):
                    _step(model, opt, x.to(memory_format=torch.channels_last), y, dtype=torch.bfloat16)
        histories[fused] = watch.history
    assert_same_history(histories[True], histories[False], rel=1e-4, abs=1e-6)


CAPTURABLE = {  # every torch.optim optimizer with a capturable variant (state steps, and lr, on the device)
    "adam": lambda p, c: torch.optim.Adam(p, lr=1e-3, weight_decay=1e-2, capturable=c),
    "adamw": lambda p, c: torch.optim.AdamW(p, lr=1e-3, weight_decay=0.05, capturable=c),
    "nadam": lambda p, c: torch.optim.NAdam(p, lr=1e-3, weight_decay=1e-2, capturable=c),
    "radam": lambda p, c: torch.optim.RAdam(p, lr=1e-3, weight_decay=1e-2, capturable=c),
    "adamax": lambda p, c: torch.optim.Adamax(p, lr=1e-3, weight_decay=1e-2, capturable=c),
    "rmsprop": lambda p, c: torch.optim.RMSprop(p, lr=1e-4, weight_decay=1e-2, momentum=0.9, capturable=c),
    "adadelta": lambda p, c: torch.optim.Adadelta(p, lr=1.0, weight_decay=1e-2, capturable=c),
    "asgd": lambda p, c: torch.optim.ASGD(p, lr=1e-2, weight_decay=1e-2, capturable=c),
}


@pytest.mark.parametrize("name", CAPTURABLE)
def test_capturable_optimizers_record_what_their_plain_variant_does_without_syncing(tmp_path, name) -> None:
    """capturable=True keeps the step count (and the bias corrections) on the device: the same metrics as the
    plain variant, and the hooks read nothing back."""
    histories = []
    for capturable in (False, True):
        model = _model()
        opt = CAPTURABLE[name](model.parameters(), capturable)
        batches = _batches(8)
        with normwatch.attach(model, opt, logdir=str(tmp_path / str(capturable)), keep_history=True) as watch:
            _step(model, opt, *batches[0])  # detection reads values back once
            torch.cuda.synchronize()
            torch.cuda.set_sync_debug_mode("error" if capturable else 0)
            try:
                for x, y in batches[1:]:
                    _step(model, opt, x, y)
            finally:
                torch.cuda.set_sync_debug_mode(0)
        histories.append(watch.history)
    assert_same_history(histories[1], histories[0], rel=1e-4, abs=1e-6)
