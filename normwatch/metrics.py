"""The registry of every metric normwatch writes: its tag, formula, meaning and which optimizers get it.

Tags are ``normwatch/<metric>/<layer>`` (``<layer>`` the module's qualified name). This table is the one
place that names them: the records, the TensorBoard layout, the report and the README's table read it, and
a test fails when the README disagrees. Notation: ``w`` the layer's parameters before the step, ``g`` the
gradient the step used, ``u = w_{t+1} − w_t`` = ``u_wd + u_g`` (the weight-decay and gradient parts, by the
optimizer's own rule), ``ŵ = w/|w|``, ``u_r = u·ŵ``, ``u⊥ = u − u_r ŵ``, η the learning rate, λ the weight
decay, μ the momentum, β₁ Adam's first beta; derivations in docs/theory.md.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

Kind = Literal["measured", "split", "theory", "hyper"]
PREFIX = "normwatch"


@dataclass(frozen=True, kw_only=True)
class Metric:
    """One per-layer metric.

    Attributes:
        name: the ``<metric>`` part of the tag.
        kind: ``"measured"`` (from w_t, g and w_{t+1}: every optimizer), ``"split"`` (the shrink/growth split:
            optimizers whose rule normwatch knows), ``"theory"`` (an equilibrium prediction: where a formula
            applies) or ``"hyper"`` (the param group's value, for reading the run back).
        formula: the definition, in the notation of the module docstring.
        meaning: what it tells, in a few words.
        chart: the per-layer TensorBoard chart that superimposes it with its partner, if any.
    """

    name: str
    kind: Kind
    formula: str
    meaning: str
    chart: str | None = None


METRICS: tuple[Metric, ...] = (
    Metric(name="w_norm2", kind="measured", formula="\\|w_t\\|²", meaning="squared weight norm"),
    Metric(name="w_norm2_rel", kind="measured", formula="\\|w_t\\|² / \\|w_0\\|²",
           meaning="the seed's normalised plot"),
    Metric(name="cos_wg", kind="measured", formula="w·g / (\\|w\\|\\|g\\|)",
           meaning="≈ 0 for scale-invariant weights (a norm's ε makes it ≈ ε/σ²)"),
    Metric(name="shrink", kind="split", formula="−(2 w·u_wd + \\|u_wd\\|²)", chart="shrink vs growth",
           meaning="what the weight-decay part of the update does to \\|w\\|² (> 0: it shrinks)"),
    Metric(name="growth", kind="split", formula="2 w·u_g + \\|u_g\\|²", chart="shrink vs growth",
           meaning="what the gradient part of the update does to \\|w\\|²"),
    Metric(name="cross", kind="split", formula="2 u_wd·u_g",
           meaning="their interaction; growth − shrink + cross = \\|w_{t+1}\\|² − \\|w_t\\|² exactly"),
    Metric(name="radial", kind="measured", formula="2\\|w\\|u_r + u_r²",
           meaning="optimizer-agnostic: the change of \\|w\\|² along w"),
    Metric(name="tangential", kind="measured", formula="\\|u⊥\\|²",
           meaning="and across it; radial + tangential = \\|w_{t+1}\\|² − \\|w_t\\|²"),
    Metric(name="angle", kind="measured", formula="atan2(\\|u⊥\\|, \\|w\\| + u_r)", chart="angle vs angle_theory",
           meaning="rotation of w in the step (radians)"),
    Metric(name="angle_theory", kind="theory", formula="e.g. √(2ηλ/(1+μ)) (heavy-ball SGD)",
           chart="angle vs angle_theory", meaning="equilibrium rotation per step for the optimizer"),
    Metric(name="lars_ratio", kind="measured", formula="η_eff·\\|g\\|/\\|w\\|", chart="lars_ratio vs lars_theory",
           meaning="the gradient step relative to the weight (LARS: η_eff = η·trust; else η)"),
    Metric(name="lars_theory", kind="theory", formula="√(2ηλ(1−μ)) (SGD, seed eqs. 6–7); η√(1−ℓ²) (LARS)",
           chart="lars_ratio vs lars_theory", meaning="its equilibrium value (SGD, LARS)"),
    Metric(name="grad_autocorr", kind="measured", formula="cos(g_t, v_{t−1})",
           meaning="v: the optimizer's momentum recursion on gradients alone (else an average, `ema_beta`)"),
    Metric(name="lr", kind="hyper", formula="η", meaning="the layer's param-group learning rate"),
    Metric(name="weight_decay", kind="hyper", formula="λ", meaning="the layer's param-group weight decay"),
    Metric(name="momentum", kind="hyper", formula="μ, or β₁",
           meaning="the layer's param-group momentum (Adam-type optimizers: β₁)"),
)
BY_NAME = {metric.name: metric for metric in METRICS}


def names(*kinds: Kind) -> tuple[str, ...]:
    """The metric names of these kinds, in registry order."""
    return tuple(metric.name for metric in METRICS if metric.kind in kinds)


def tag(metric: str, layer: str) -> str:
    """The TensorBoard tag ``normwatch/<metric>/<layer>``."""
    return f"{PREFIX}/{metric}/{layer}"


def charts() -> dict[str, tuple[str, ...]]:
    """Each per-layer chart's title and the metrics it superimposes, in registry order."""
    out: dict[str, tuple[str, ...]] = {}
    for metric in METRICS:
        if metric.chart is not None:
            out[metric.chart] = (*out.get(metric.chart, ()), metric.name)
    return out


def markdown_table() -> str:
    """The README's table of metrics, one row per metric."""
    rows = ["| tag `normwatch/<metric>/<layer>` | formula | meaning |", "|---|---|---|"]
    rows += [f"| `{m.name}` | {m.formula} | {m.meaning} |" for m in METRICS]
    return "\n".join(rows)
