"""The models the benchmarks (and the kernel-count test) use: the demo's ResNet-9 and a transformer whose
matrices are all scale-invariant.

The transformer normalises the output of every matrix (LayerNorm modules, which detection has always
recognised): q_proj and k_proj (QK-norm), v_proj and o_proj (through attention, which is linear in v, to a
norm after o_proj), up_proj (norm before the GELU) and down_proj (norm before the residual add, OLMo2-style).
All 6 matrices of a block are scale-invariant and detected (v_proj through ``scaled_dot_product_attention``,
linear in v), so 20 blocks give 120 instrumented matrices.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn


def resnet9(width: int = 64) -> nn.Module:
    """The demo's ResNet-9 (Myrtle's; 6,573,120 parameters at width 64), loaded from demo/train_resnet.py."""
    path = Path(__file__).resolve().parents[1] / "demo" / "train_resnet.py"
    spec = importlib.util.spec_from_file_location("train_resnet", path)
    demo = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = demo  # its dataclasses look their module up there
    spec.loader.exec_module(demo)
    return demo.net(width=width / 64)


class Block(nn.Module):
    """Attention and MLP with a LayerNorm after every matrix (post-norm on each branch)."""

    def __init__(self, d: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.q_proj, self.k_proj, self.v_proj, self.o_proj = (nn.Linear(d, d, bias=False) for _ in range(4))
        self.up_proj, self.down_proj = nn.Linear(d, 4 * d, bias=False), nn.Linear(4 * d, d, bias=False)
        self.q_norm, self.k_norm, self.o_norm = nn.LayerNorm(d), nn.LayerNorm(d), nn.LayerNorm(d)
        self.up_norm, self.down_norm = nn.LayerNorm(4 * d), nn.LayerNorm(d)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, d = x.shape
        q, k, v = self.q_norm(self.q_proj(x)), self.k_norm(self.k_proj(x)), self.v_proj(x)
        q, k, v = (y.view(b, t, self.heads, d // self.heads).transpose(1, 2) for y in (q, k, v))  # (B, H, T, hd)
        attn = F.scaled_dot_product_attention(q, k, v, is_causal=True).transpose(1, 2).reshape(b, t, d)
        x = x + self.o_norm(self.o_proj(attn))
        return x + self.down_norm(self.down_proj(F.gelu(self.up_norm(self.up_proj(x)))))


class Transformer(nn.Module):
    """A causal character-level LM: embeddings, ``blocks`` Blocks, a final norm and a head."""

    def __init__(self, blocks: int = 20, d: int = 64, heads: int = 4, vocab: int = 65, context: int = 32) -> None:
        super().__init__()
        self.embed, self.pos = nn.Embedding(vocab, d), nn.Embedding(context, d)
        self.blocks = nn.ModuleList(Block(d, heads) for _ in range(blocks))
        self.norm, self.head = nn.LayerNorm(d), nn.Linear(d, vocab, bias=False)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        x = self.embed(tokens) + self.pos(torch.arange(tokens.shape[1], device=tokens.device))
        for block in self.blocks:
            x = block(x)
        return self.head(self.norm(x))


def lm_batch(batch: int = 8, context: int = 32, vocab: int = 65, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    tokens = torch.randint(0, vocab, (batch, context + 1), generator=gen)
    return tokens[:, :-1], tokens[:, 1:]
