"""What detection costs, in forward passes, on a 12-layer, d=768 LLaMA/Qwen3-style model.

    python benchmarks/detect_cost.py                       # Qwen3 and LLaMA, batch 2 × 128 tokens
    python benchmarks/detect_cost.py --models qwen3 --tokens 512 --repeats 5

Builds each model from ``transformers`` (random init, training mode) and times, interleaved in one process,
a plain forward (under ``torch.no_grad()``, as detection's own forwards run, and with autograd, as a
training step runs), ``normwatch.detect`` (one traced forward plus one rescaled forward), and the traced
forward alone (``scan(confirm=False)``). Prints the medians and detection's cost in plain forwards; the
target is at most 3.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import torch
import transformers

import normwatch
from normwatch.detect import scan

CONFIGS = {"qwen3": (transformers.Qwen3Config, transformers.Qwen3ForCausalLM),
           "llama": (transformers.LlamaConfig, transformers.LlamaForCausalLM)}


def build(family: str, layers: int, width: int) -> torch.nn.Module:
    """A ``family`` causal LM with ``layers`` blocks of width ``width`` (64-wide heads, GQA 4:1)."""
    config_class, model_class = CONFIGS[family]
    heads = width // 64
    config = config_class(vocab_size=32000, hidden_size=width, intermediate_size=4 * width * 2 // 3,
                          num_hidden_layers=layers, num_attention_heads=heads, num_key_value_heads=max(1, heads // 4),
                          head_dim=64, max_position_embeddings=4096, use_cache=False)
    return model_class(config).train()


def seconds(fn: Callable[[], object]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def measure(model: torch.nn.Module, batch: dict[str, torch.Tensor], repeats: int) -> dict[str, float]:
    """Median seconds of each way of running the model, the ways interleaved so that load hits them alike."""
    def no_grad_forward() -> None:
        with torch.no_grad():
            model(**batch)

    ways = {"forward (no_grad)": no_grad_forward, "forward (autograd)": lambda: model(**batch),
            "detect": lambda: normwatch.detect(model, **batch),
            "traced forward only": lambda: scan(model, (), batch, confirm=False)}
    for way in ways.values():  # warm-up: allocator, lazy imports, first-call paths
        way()
    times: dict[str, list[float]] = {name: [] for name in ways}
    for _ in range(repeats):
        for name, way in ways.items():
            times[name].append(seconds(way))
    return {name: statistics.median(values) for name, values in times.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--models", nargs="+", default=["qwen3", "llama"], choices=sorted(CONFIGS))
    parser.add_argument("--layers", type=int, default=12)
    parser.add_argument("--width", type=int, default=768)
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--tokens", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's own)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, transformers {transformers.__version__}, {torch.get_num_threads()} threads; "
          f"{args.layers} layers, d={args.width}, batch {args.batch} × {args.tokens} tokens, "
          f"median of {args.repeats}")
    for family in args.models:
        torch.manual_seed(0)
        model = build(family, args.layers, args.width)
        batch = {"input_ids": torch.randint(0, 32000, (args.batch, args.tokens))}
        layers = normwatch.detect(model, **batch)
        kinds = sorted({(layer.granularity, layer.groups) for layer in layers})
        result = measure(model, batch, args.repeats)
        base = result["forward (no_grad)"]
        print(f"\n{family}: {len(layers)} invariant layers {kinds}")
        for name, value in result.items():
            print(f"  {name:<22} {1000 * value:9.1f} ms  {value / base:5.2f} × forward (no_grad)")
        print(f"  detect / forward (autograd): {result['detect'] / result['forward (autograd)']:.2f} (target ≤ 3)")


if __name__ == "__main__":
    main()
