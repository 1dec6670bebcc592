"""Hand-made normwatch runs with known answers, written with torch's SummaryWriter.

Every run follows the demo's layout and tag contract: ``normwatch/<metric>/<layer>`` scalars at
optimizer steps 0..N−1, the per-layer hyperparameters, the ``normwatch/config`` and
``demo/config`` texts and a final ``test/acc``. The values satisfy the seed's relations exactly
where a test wants a claim to hold, and miss them by a known factor where it should not.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from torch.utils.tensorboard import SummaryWriter

LAYERS = ("layer1.conv", "layer2.res1.conv")
N_STEPS = 300
WARMUP = 20
DECAY_START = 200


def schedule(peak: float, n: int = N_STEPS) -> np.ndarray:
    """Linear warm-up to ``peak`` over WARMUP steps, flat to DECAY_START, linear to 0 at step n−1."""
    t = np.arange(n, dtype=np.float64)
    up = peak * t / WARMUP
    down = peak * (n - 1 - t) / (n - 1 - DECAY_START)
    return np.where(t < WARMUP, up, np.where(t < DECAY_START, peak, down))


def f32(x: np.ndarray | float) -> np.ndarray:
    """What add_scalar stores: the value rounded to float32, read back as float64."""
    return np.asarray(x, dtype=np.float32).astype(np.float64)


@dataclass
class SyntheticRun:
    """What a hand-made run logged, per layer (float64 before float32 storage)."""

    path: Path
    lr: np.ndarray
    weight_decay: float
    momentum: float
    metrics: dict[str, dict[str, np.ndarray]] = field(default_factory=dict)
    test_acc: float | None = None


def write_events(path: Path, scalars: dict[str, np.ndarray], texts: dict[str, dict]) -> None:
    """Write ``scalars[tag][step]`` (NaN entries skipped) and JSON ``texts`` into ``path``."""
    path.mkdir(parents=True, exist_ok=True)
    writer = SummaryWriter(log_dir=str(path), max_queue=100000, flush_secs=3600)
    for tag, values in scalars.items():
        for step, value in enumerate(values):
            if np.isfinite(value):
                writer.add_scalar(tag, float(value), step)
    for tag, payload in texts.items():
        writer.add_text(tag, json.dumps(payload))
    writer.close()


def sgd_run(
    path: Path,
    *,
    peak_lr: float,
    weight_decay: float,
    momentum: float,
    part: str,
    lars_factor: float = 1.0,
    log_lars_theory: bool = True,
    growth_factor: float = 1.0,
    autocorr: bool = True,
    family: str = "sgd",
    test_acc: float | None = 0.935,
    angle_scale: float = 1.0,
    angle_base: np.ndarray | None = None,
    seed: int = 0,
    nesterov: bool = False,
    angle_noise: float = 0.2,
    layer_growth: tuple[float, ...] | None = None,
    test_images: int | None = None,
) -> SyntheticRun:
    """An SGD-family run whose equilibrium relations hold up to known factors.

    * ``growth`` = ``growth_factor`` × ``shrink`` on every step from WARMUP on (noisy before).
    * ``lars_ratio`` = prediction × (``lars_factor`` + 0.1·sin t): its RMS ratio over any window
      is computed by the test from the same formula.
    * ``cos_wg`` ~ 1e-4 noise; ``grad_autocorr`` = 0.03 + 0.02·noise; ``angle`` = ``angle_scale``
      × (1 + 0.2·noise) × ``angle_base`` (default: its own prediction √(2ηλ/(1+μ)), logged as
      ``angle_theory`` except for LARS); ``angle_noise`` replaces the 0.2.
    * ``layer_growth``: one growth factor per layer instead of ``growth_factor``.
    * ``nesterov`` and ``test_images`` go into the configs as the demo writes them.
    """
    rng = np.random.default_rng(seed)
    t = np.arange(N_STEPS, dtype=np.float64)
    lr = schedule(peak_lr)
    lam, mu = weight_decay, momentum
    theory = np.sqrt(2.0 * lr * lam * (1.0 - mu))
    run = SyntheticRun(path, lr, lam, mu, test_acc=test_acc)
    scalars: dict[str, np.ndarray] = {}
    for i, layer in enumerate(LAYERS):
        w2 = (2.0 + i) * (1.0 + 0.5 * (1.0 - np.exp(-t / 40.0)))
        shrink = 2.0 * lr * lam / (1.0 - mu) * w2
        factor = growth_factor if layer_growth is None else layer_growth[i]
        growth = np.where(t >= WARMUP, factor * shrink, shrink * (1.5 + 0.3 * rng.standard_normal(N_STEPS)))
        lars = theory * (lars_factor + 0.1 * np.sin(t + i))
        angle_theory = np.sqrt(2.0 * lr * lam / (1.0 + mu))
        per = {
            "w_norm2": w2,
            "w_norm2_rel": w2 / w2[0],
            "cos_wg": 1e-4 * rng.standard_normal(N_STEPS),
            "shrink": shrink,
            "growth": growth,
            "cross": np.zeros(N_STEPS),
            "radial": growth - shrink,
            "tangential": np.zeros(N_STEPS),
            "angle": angle_scale
            * (angle_theory if angle_base is None else angle_base)
            * (1.0 + angle_noise * rng.standard_normal(N_STEPS)),
            "lars_ratio": lars,
            "lr": lr,
            "weight_decay": np.full(N_STEPS, lam),
            "momentum": np.full(N_STEPS, mu),
        }
        if log_lars_theory:
            per["lars_theory"] = theory
        if family != "lars":
            per["angle_theory"] = angle_theory
        if autocorr:
            per["grad_autocorr"] = 0.03 + 0.02 * rng.standard_normal(N_STEPS)
        for metric, values in per.items():
            run.metrics.setdefault(metric, {})[layer] = values
            scalars[f"normwatch/{metric}/{layer}"] = values
    scalars["lr"] = lr
    if test_acc is not None:
        acc = np.full(N_STEPS, np.nan)
        acc[-1] = test_acc
        scalars["test/acc"] = acc
    config = {
        "optimizer": "LARS" if family == "lars" else "SGD",
        "family": family,
        "nesterov": nesterov,
        "dampening": 0.0,
        "layers": [{"name": layer, "norm": "BatchNorm2d", "granularity": "channel", "params": 576} for layer in LAYERS],
    }
    demo = {
        "part": part,
        "arch": "tiny",
        "peak_lr": peak_lr,
        "weight_decay": lam,
        "momentum": mu,
        "nesterov": nesterov,
        "optimizer": "lars" if family == "lars" else "sgd",
        "seed": seed,
    }
    if test_images is not None:
        demo["test_images"] = test_images
    write_events(path, scalars, {"normwatch/config": config, "demo/config": demo})
    return run


def sweep_run(path: Path, arch: str, peak_lr: float, seed: int, acc: float, test_images: int | None = None) -> None:
    """A sweep run: only ``test/acc`` and ``demo/config`` (part "sweep"; ``test_images`` when given)."""
    demo = {
        "part": "sweep",
        "arch": arch,
        "peak_lr": peak_lr,
        "weight_decay": 5e-4,
        "momentum": 0.9,
        "nesterov": True,
        "optimizer": "sgd",
        "seed": seed,
    }
    if test_images is not None:
        demo["test_images"] = test_images
    write_events(path, {"test/acc": np.array([acc - 0.1, acc])}, {"demo/config": demo})


#: Sweep accuracies: arch "a" peaks at lr 0.4, arch "b" at 1.6 (so the best lrs differ 4×).
SWEEP = {
    "a": {0.1: (0.90, 0.91), 0.4: (0.94, 0.93), 1.6: (0.89, 0.90)},
    "b": {0.1: (0.85, 0.86), 0.4: (0.90, 0.91), 1.6: (0.92, 0.93)},
}

#: The study's hyperparameters.
SGDM = {"peak_lr": 0.2, "weight_decay": 0.05, "momentum": 0.9}
SGD = {"peak_lr": 0.5, "weight_decay": 0.05, "momentum": 0.0}
LARS_LR = float(np.sqrt(2 * 0.2 * 0.05 * 0.1))


def study(root: Path) -> dict[str, SyntheticRun]:
    """runs/<study>/{sgdm,sgd,lars,sweep/...} as the demo lays it out.

    * sgdm: every equilibrium claim holds exactly (growth == shrink, lars_ratio RMS == theory ± sin).
    * sgd: lars_ratio is 1.3× the seed's √(2ηλ) and no ``lars_theory`` is logged (the report
      falls back to the seed's formula); growth is 1.25× shrink.
    * lars: rotation 1.05× the sgdm run's prediction (with its own noise); final accuracy 0.93
      vs 0.935.
    * sweep: see :data:`SWEEP`.
    """
    runs = {
        "sgdm": sgd_run(root / "sgdm", part="sgdm", **SGDM),
        "sgd": sgd_run(
            root / "sgd",
            part="sgd",
            lars_factor=1.3,
            log_lars_theory=False,
            growth_factor=1.25,
            test_acc=0.92,
            seed=1,
            **SGD,
        ),
    }
    sgdm_lr = runs["sgdm"].lr
    runs["lars"] = sgd_run(
        root / "lars",
        part="lars",
        peak_lr=LARS_LR,
        weight_decay=0.05,
        momentum=0.9,
        family="lars",
        log_lars_theory=False,
        test_acc=0.93,
        angle_scale=1.05,
        angle_base=np.sqrt(2.0 * sgdm_lr * 0.05 / 1.9),
        seed=2,
    )
    for arch, per_lr in SWEEP.items():
        for lr, accs in per_lr.items():
            for seed, acc in enumerate(accs):
                sweep_run(root / "sweep" / f"{arch}-lr{lr}-s{seed}", arch, lr, seed, acc)
    return runs
