"""Hand-made runs of the LM study (demo/train_lm.py's layout) with known answers, written with SummaryWriter.

Each run directory holds ``config.json`` and ``result.json`` as the demo writes them, the Trainer's scalars
(``train/grad_norm``, ``train/learning_rate``, ``train/weight_decay`` logged at s + 1 for step s;
``eval/loss`` at the evaluation steps) and normwatch's ``normwatch/<metric>/<layer>`` at every step s with its
``normwatch/config`` text. Windowed metrics carry a known wobble: within the window, block b of
:data:`BLOCKS` has the value ``factor·(1 + wobble·(−1)^b)``-shaped, so a block statistic alternates
``factor ± wobble`` and its noise (2·std/√4 with ddof = 1) is ``wobble·2/√3``.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from pathlib import Path

import numpy as np

from normwatch import theory
from tests.report_fixtures import write_events

N = 200  # optimizer steps 0..N−1
WARMUP = 10
LR, WD, BETA1 = 0.01, 1.0, 0.9  # ηλ = 0.01: τ_w = 1/(2ηλ) = 50 steps, the window opens at 10 + 3·50 = 160
WINDOW_START = 160
LAYERS = ("model.layers.0.self_attn.q_proj", "model.layers.0.self_attn.k_proj")
BLOCKS = 4


def lr_schedule(lr: float, schedule: str = "constant") -> np.ndarray:
    """The Trainer's: linear warm-up from 0 over WARMUP steps, then constant or cosine to 0 at step N."""
    t = np.arange(N, dtype=np.float64)
    progress = np.clip((t - WARMUP) / (N - WARMUP), 0.0, 1.0)
    after = lr if schedule == "constant" else lr * 0.5 * (1 + np.cos(math.pi * progress))
    return np.where(t < WARMUP, lr * t / WARMUP, after)


def wobble(start: int, amplitude: float) -> np.ndarray:
    """1 + amplitude·(±1) alternating over the BLOCKS blocks of steps start..N−1 (1 before start)."""
    out = np.ones(N)
    for b, idx in enumerate(np.array_split(np.arange(start, N), BLOCKS)):
        out[idx] = 1 + amplitude * (1 if b % 2 == 0 else -1)
    return out


def wobble_noise(amplitude: float) -> float:
    """The block noise of a statistic alternating factor·(1 ± amplitude): 2·std(ddof=1)/√4 = factor·amplitude·2/√3."""
    return amplitude * 2 / math.sqrt(3)


def relaxing_norm(x0: float = 1.0, x_star: float = 2.0, ramp: int = 101) -> np.ndarray:
    """|w|²: x0 until the end of warm-up, then a straight line to x_star over `ramp` steps, then x_star."""
    t = np.arange(N, dtype=np.float64)
    frac = np.clip((t - WARMUP) / ramp, 0.0, 1.0)
    return x0 + (x_star - x0) * frac


def lm_run(
    root: Path,
    part: str,
    name: str,
    *,
    arch: str = "qwen3",
    optimizer: str = "adamw",
    lr: float = LR,
    wd: float = WD,
    schedule: str = "constant",
    adamc: bool = False,
    layers: tuple[str, ...] = LAYERS,
    angle_factor: float = 1.0,
    angle_wobble: float = 0.0,
    balance: float = 1.0,
    balance_wobble: float = 0.0,
    w_norm2: np.ndarray | None = None,
    growth_after: tuple[int, float] | None = None,
    grad_norm: np.ndarray | None = None,
    val_losses: tuple[float, ...] = (4.0, 3.0, 2.5, 2.2, 2.2),
    momentum: float = BETA1,
    log_theory: bool = True,
    angle_of: Callable[[np.ndarray, np.ndarray], np.ndarray] | None = None,
) -> Path:
    """One run; the angle is ``angle_factor × theory × wobble(WINDOW_START, angle_wobble)`` with AdamW's theory
    (or ``angle_of(η_t, λ_t)``), growth = ``balance × shrink × wobble`` (× growth_after[1] after its step)."""
    path = root / part / name
    eta = lr_schedule(lr, schedule)
    lam = wd * eta / lr if adamc else np.full(N, wd)
    theory_angle = np.array([theory.adamw_angle(e, la, BETA1) for e, la in zip(eta, lam, strict=True)])
    base = angle_of(eta, lam) if angle_of is not None else theory_angle
    x = relaxing_norm() if w_norm2 is None else w_norm2
    shrink = (2 * eta * lam - (eta * lam) ** 2) * x
    growth = balance * shrink * wobble(WINDOW_START, balance_wobble)
    if growth_after is not None:
        growth = np.where(np.arange(N) > growth_after[0], growth_after[1] * shrink, growth)
    scalars: dict[str, np.ndarray] = {}
    for layer in layers:
        per = {"lr": eta, "weight_decay": lam, "momentum": np.full(N, momentum), "w_norm2": x, "shrink": shrink,
               "growth": growth, "angle": angle_factor * base * wobble(WINDOW_START, angle_wobble)}
        if log_theory:
            per["angle_theory"] = theory_angle
        scalars.update({f"normwatch/{m}/{layer}": v for m, v in per.items()})
    shifted = lambda v: np.concatenate([[np.nan], v])  # noqa: E731  the Trainer logs step s at s + 1
    g = np.ones(N) if grad_norm is None else grad_norm
    scalars.update({"train/grad_norm": shifted(g), "train/learning_rate": shifted(eta),
                    "train/weight_decay": shifted(lam)})
    evals = np.full(N, np.nan)
    eval_steps = np.linspace(0, N - 1, len(val_losses)).astype(int)
    evals[eval_steps] = val_losses
    scalars["eval/loss"] = evals
    conf = dict(part=part, name=name, arch=arch, optimizer=optimizer, lr=lr, weight_decay=wd,
                eta_lambda=lr * wd, schedule=schedule, decay_follows_lr=adamc, warmup=WARMUP, steps=N)
    texts = {"demo/config": conf}
    if layers:
        family = "muon" if optimizer == "muon" else "adam" if optimizer == "adam-l2" else "adamw"
        texts["normwatch/config"] = {"family": family, "layers": [{"name": n, "norm": "q_norm"} for n in layers]}
    write_events(path, scalars, texts)
    (path / "config.json").write_text(json.dumps(conf))
    (path / "result.json").write_text(json.dumps({"val_loss": val_losses[-1], "normwatch_layers": list(layers)}))
    return path
