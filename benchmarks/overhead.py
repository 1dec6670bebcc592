"""normwatch's cost: the same ResNet-9 training with and without normwatch, interleaved in one process.

    python benchmarks/overhead.py                          # CPU bar: width 16, batch 128, every=1 (≤ 1.05)
    python benchmarks/overhead.py --device cuda --width 64 --batch 512   # GPU bar: full width (≤ 1.02)

Two identical models train on identical batches; they take turns (plain, watched, plain, ...), so machine
noise hits both alike. On CUDA each turn is a block of --block steps with one sync at its end, as a training
loop runs (the GPU queue stays full, the hooks' host time overlaps the GPU's work). Prints the median step
time of each, their ratio, and the extra memory.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

import normwatch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a script: the repository's benchmarks
from benchmarks.models import Transformer, lm_batch, resnet9


def setup(args: argparse.Namespace, device: torch.device) -> tuple[nn.Module, nn.Module, list, tuple]:
    """Two identical models (ResNet-9 with Nesterov SGD, or the transformer with AdamW), their optimizers and a
    batch; channels-last on CUDA for the convnet."""
    lm = args.model == "transformer"
    torch.manual_seed(0)
    make = (lambda: Transformer(d=4 * args.width)) if lm else (lambda: resnet9(args.width))
    plain, watched = make().to(device), make().to(device)
    watched.load_state_dict(plain.state_dict())
    cuda = device.type == "cuda"
    if cuda and not lm:
        plain, watched = plain.to(memory_format=torch.channels_last), watched.to(memory_format=torch.channels_last)
    opts = [torch.optim.AdamW(m.parameters(), lr=1e-3, weight_decay=0.1) if lm else
            torch.optim.SGD(m.parameters(), lr=0.1, momentum=0.9, nesterov=True, weight_decay=5e-4)
            for m in (plain, watched)]
    if lm:
        return plain, watched, opts, tuple(t.to(device) for t in lm_batch(batch=args.batch))
    x = torch.randn(args.batch, 3, 32, 32, device=device)
    x = x.to(memory_format=torch.channels_last) if cuda else x
    return plain, watched, opts, (x, torch.randint(0, 10, (args.batch,), device=device))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--model", choices=("resnet9", "transformer"), default="resnet9",
                        help="transformer: 20 blocks, d=--width·4, AdamW, --batch sequences of 32 characters")
    parser.add_argument("--width", type=int, default=16)
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--steps", type=int, default=60, help="timed turns per arm")
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--every", type=int, default=1)
    parser.add_argument("--block", type=int, help="steps per timed turn (default: 10 on CUDA, 1 on CPU)")
    parser.add_argument("--fused", action="store_true", help="attach(fused=True): compiled statistics")
    args = parser.parse_args()
    device = torch.device(args.device)
    cuda = device.type == "cuda"
    block = args.block or (10 if cuda else 1)

    lm = args.model == "transformer"
    plain, watched, opts, (x, y) = setup(args, device)
    logdir = tempfile.mkdtemp(prefix="normwatch-bench-")
    watch = normwatch.attach(watched, opts[1], logdir=logdir, every=args.every, fused=args.fused)

    peaks: dict[str, int] = {"plain": 0, "normwatch": 0}  # CUDA: most memory a turn allocated above its start

    def turn(name: str, model: nn.Module, opt: torch.optim.Optimizer) -> float:
        """Seconds per step over one block of steps."""
        if cuda:
            torch.cuda.synchronize()  # the benchmark's own syncs, for timing; normwatch's hooks make none
            torch.cuda.reset_peak_memory_stats(device)
            held = torch.cuda.memory_allocated(device)
        start = time.perf_counter()
        for _ in range(block):
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=cuda):
                out = model(x)
                loss = F.cross_entropy(out.flatten(0, 1) if lm else out, y.flatten() if lm else y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        if cuda:
            torch.cuda.synchronize()
            peaks[name] = max(peaks[name], torch.cuda.max_memory_allocated(device) - held)
        return (time.perf_counter() - start) / block

    times: dict[str, list[float]] = {"plain": [], "normwatch": []}
    for i in range(args.warmup + args.steps):
        order = [("plain", plain, opts[0]), ("normwatch", watched, opts[1])]
        for name, model, opt in order if i % 2 == 0 else reversed(order):
            elapsed = turn(name, model, opt)
            if i >= args.warmup:
                times[name].append(elapsed)
    watch_bytes = watch.extra_memory_bytes  # read before close() frees the buffers
    watch.close()

    base, with_nw = statistics.median(times["plain"]), statistics.median(times["normwatch"])
    params = sum(p.numel() * p.element_size() for p in watched.parameters())
    instrumented = sum(dict(watched.named_parameters())[n].numel() * 4 for layer in watch.layers for n in layer.params)
    name = torch.cuda.get_device_name(device) if cuda else f"CPU ({torch.get_num_threads()} threads)"
    what = f"transformer d={4 * args.width}" if lm else f"ResNet-9 width {args.width}"
    print(f"device: {name}; torch {torch.__version__}; {what}, batch {args.batch}, "
          f"every={args.every}{', fused' if args.fused else ''}, {args.steps} interleaved turns of {block} step(s) "
          f"per arm")
    print(f"median step: plain {base * 1e3:.2f} ms, with normwatch {with_nw * 1e3:.2f} ms")
    print(f"ratio: {with_nw / base:.4f}")
    print(f"layers: {len(watch.layers)}; instrumented parameters {instrumented / 2**20:.2f} MiB of "
          f"{params / 2**20:.2f} MiB; extra memory (snapshots + gradient memory + ring) "
          f"{watch_bytes / 2**20:.2f} MiB")
    if cuda:
        print(f"peak memory a turn allocates above what it starts with: plain {peaks['plain'] / 2**20:.1f} MiB, "
              f"with normwatch {peaks['normwatch'] / 2**20:.1f} MiB (its transients: the difference)")


if __name__ == "__main__":
    main()
