"""Recorded metrics against a float64 reference written here from each optimizer's documented update rule.

The reference does not reuse normwatch's code: it keeps its own shadow buffers (gradient-only and
decay-only momentum, Adam moments), computes the two parts of every update from them, and derives each
metric from the raw vectors w_t, g_t, w_{t+1} captured around ``optimizer.step()``.
"""

import math
import warnings

import pytest
import torch
from torch import nn

from normwatch import buckets, chunk
from normwatch.optim import LARS
from tests.models import Lion
from tests.reference import assert_bookkeeping_adds_up, assert_matches, reference_metrics, train_and_capture, value

STEPS = 12


@pytest.fixture(autouse=True)
def _in_tmp_path(tmp_path, monkeypatch) -> None:
    """The runs here log to the default `runs/`: keep it out of the repository."""
    monkeypatch.chdir(tmp_path)


def _model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 6, 3, padding=1, bias=False), nn.BatchNorm2d(6), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(6, 8, 3, padding=1), nn.GroupNorm(2, 8), nn.ReLU(),  # a two-tensor layer (weight + bias)
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 5))


LAYERS = {"0": ["0.weight"], "4": ["4.weight", "4.bias"]}


def _train(make_opt, every: int = 1, fused: bool = False, dtype: torch.dtype = torch.float32):
    """Train with normwatch attached; capture (w_t, g_t, w_{t+1}, state) per tracked tensor per step."""
    def batch(gen):
        return torch.randn(16, 3, 8, 8, generator=gen).to(dtype), torch.randint(0, 5, (16,), generator=gen)

    return train_and_capture(_model().to(dtype), LAYERS, make_opt, steps=STEPS, batch=batch, every=every,
                             fused=fused)


class Reference:
    """Float64 shadow bookkeeping for one tensor: returns (u_wd, u_g, v_{t-1}) for each step."""

    def __init__(self, family: str, lr: float, wd: float, momentum: float = 0.0, dampening: float = 0.0,
                 nesterov: bool = False, betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8,
                 amsgrad: bool = False) -> None:
        self.family, self.lr, self.wd, self.mu, self.tau, self.nesterov = family, lr, wd, momentum, dampening, nesterov
        self.b1, self.b2, self.eps, self.amsgrad = betas[0], betas[1], eps, amsgrad
        self.t = 0
        self.b_g = self.b_wd = self.m_g = self.m_wd = self.v2 = self.v2_max = self.ema = None

    def step(self, w: torch.Tensor, g: torch.Tensor, w_next: torch.Tensor | None = None, state: dict | None = None):
        self.t += 1
        lr, wd, mu = self.lr, self.wd, self.mu
        if self.family in ("adam", "adamw"):
            memory = self.m_g
            if self.m_g is None:
                self.m_g, self.m_wd, self.v2 = torch.zeros_like(w), torch.zeros_like(w), torch.zeros_like(w)
                memory = torch.zeros_like(w)
            decay = wd * w if self.family == "adam" else torch.zeros_like(w)
            self.m_g = self.b1 * self.m_g + (1 - self.b1) * g
            self.m_wd = self.b1 * self.m_wd + (1 - self.b1) * decay
            self.v2 = self.b2 * self.v2 + (1 - self.b2) * (g + decay) ** 2
            self.v2_max = self.v2 if self.v2_max is None else torch.maximum(self.v2_max, self.v2)
            denom = ((self.v2_max if self.amsgrad else self.v2) / (1 - self.b2**self.t)).sqrt() + self.eps
            u_g = -lr * self.m_g / (1 - self.b1**self.t) / denom
            u_wd = -lr * self.m_wd / (1 - self.b1**self.t) / denom
            if self.family == "adamw":
                u_wd = -lr * wd * w
            return u_wd, u_g, memory
        trust = 1.0
        if self.family == "lars":
            trust = float(w.norm() / (g + wd * w).norm())
            self.trust = torch.tensor(trust, dtype=torch.float64)  # for lars_ratio, computed here
        if mu == 0:  # no momentum buffer: normwatch's own moving average with beta 0.9
            memory = self.ema if self.ema is not None else torch.zeros_like(w)
            self.ema = 0.9 * memory + 0.1 * g
            return -lr * trust * wd * w, -lr * trust * g, memory
        memory = self.b_g if self.b_g is not None else torch.zeros_like(w)
        if self.b_g is None:
            self.b_g, self.b_wd = trust * g, trust * wd * w
        else:
            damp = 1 - self.tau
            self.b_g = mu * self.b_g + damp * trust * g
            self.b_wd = mu * self.b_wd + damp * trust * wd * w
        if self.nesterov:
            return -lr * (wd * w + mu * self.b_wd), -lr * (g + mu * self.b_g), memory
        return -lr * self.b_wd, -lr * self.b_g, memory


def _refs(family: str, **hp) -> dict[str, Reference]:
    return {n: Reference(family, **hp) for names in LAYERS.values() for n in names}


OPTIMIZERS = [
    ("sgd", lambda m: torch.optim.SGD(m.parameters(), lr=0.1, weight_decay=1e-2), dict(lr=0.1, wd=1e-2)),
    ("sgd-heavy-ball", lambda m: torch.optim.SGD(m.parameters(), lr=0.05, momentum=0.9, weight_decay=5e-3),
     dict(lr=0.05, wd=5e-3, momentum=0.9)),
    ("sgd-nesterov", lambda m: torch.optim.SGD(m.parameters(), lr=0.05, momentum=0.9, nesterov=True,
                                               weight_decay=5e-3), dict(lr=0.05, wd=5e-3, momentum=0.9, nesterov=True)),
    ("sgd-dampening",
     lambda m: torch.optim.SGD(m.parameters(), lr=0.05, momentum=0.8, dampening=0.3, weight_decay=5e-3),
     dict(lr=0.05, wd=5e-3, momentum=0.8, dampening=0.3)),
    ("sgd-foreach-off", lambda m: torch.optim.SGD(m.parameters(), lr=0.05, momentum=0.9, weight_decay=5e-3,
                                                  foreach=False), dict(lr=0.05, wd=5e-3, momentum=0.9)),
    ("adam-l2", lambda m: torch.optim.Adam(m.parameters(), lr=1e-2, weight_decay=1e-2),
     dict(lr=1e-2, wd=1e-2)),
    ("adamw", lambda m: torch.optim.AdamW(m.parameters(), lr=1e-2, weight_decay=5e-2), dict(lr=1e-2, wd=5e-2)),
    ("lars", lambda m: LARS(m.parameters(), lr=0.02, momentum=0.9, weight_decay=5e-3),
     dict(lr=0.02, wd=5e-3, momentum=0.9)),
    ("lars-no-momentum", lambda m: LARS(m.parameters(), lr=0.02, momentum=0.0, weight_decay=5e-3),
     dict(lr=0.02, wd=5e-3)),
]
FAMILY = {"sgd": "sgd", "sgd-heavy-ball": "sgd", "sgd-nesterov": "sgd", "sgd-dampening": "sgd",
          "sgd-foreach-off": "sgd", "adam-l2": "adam", "adamw": "adamw", "lars": "lars", "lars-no-momentum": "lars"}


@pytest.mark.parametrize(("name", "make_opt", "hp"), [pytest.param(*o, id=o[0]) for o in OPTIMIZERS])
def test_metrics_match_float64_reference(name, make_opt, hp) -> None:
    """Every metric, every step, every layer equals the hand-computed reference."""
    assert_matches_reference(name, hp, *_train(make_opt))


FUSED = ("sgd-dampening", "adam-l2", "lars")  # the families' code paths; each compiles in a few seconds


@pytest.mark.parametrize(("name", "make_opt", "hp"), [pytest.param(*o, id=o[0]) for o in OPTIMIZERS if o[0] in FUSED])
def test_fused_metrics_match_float64_reference(name, make_opt, hp) -> None:
    """attach(fused=True): the same statistics through torch.compile (no fallback to the eager path)."""
    with warnings.catch_warnings():
        warnings.filterwarnings("error", message="normwatch: torch.compile")  # a fallback fails the step
        result = _train(make_opt, fused=True)
    assert FAMILY[name] in chunk.compiled_rules  # compiled for this optimizer
    assert_matches_reference(name, hp, *result)


@pytest.mark.parametrize("fused", [False, True], ids=["eager", "fused"])
@pytest.mark.parametrize(("name", "make_opt", "hp"),
                         [pytest.param(*o, id=o[0]) for o in OPTIMIZERS if o[0] in ("sgd-nesterov", "adam-l2", "lars")])
def test_chunks_of_one_tensor_match_the_reference_too(name, make_opt, hp, fused, monkeypatch) -> None:
    """A bucket split into chunks (here: as small as one block, so each tensor is a chunk of its own) gives the
    same metrics: the scratch rows are reused with another layout for every chunk."""
    monkeypatch.setattr(buckets, "CHUNK", 1024)
    assert_matches_reference(name, hp, *_train(make_opt, fused=fused))


def assert_matches_reference(name, hp, watch, captured) -> None:
    family = FAMILY[name]
    expected = reference_metrics(captured, LAYERS, _refs(family, **hp), hp["lr"], trust=family == "lars")
    assert_matches(watch.history, expected, name)


@pytest.mark.parametrize(("name", "make_opt", "hp"), [pytest.param(*o, id=o[0]) for o in OPTIMIZERS])
def test_norm_bookkeeping_adds_up_to_the_measured_change(name, make_opt, hp) -> None:
    """growth − shrink + cross and radial + tangential both equal |w_{t+1}|² − |w_t|² to float precision."""
    watch, captured = _train(make_opt)
    assert_bookkeeping_adds_up(watch.history, captured, LAYERS)


def test_sgd_without_momentum_reduces_to_the_seed_equations() -> None:
    """(1′) shrink = (1 − (1−ηλ)²)|w|², (2′) growth = η²|g|² − 2η w·g, cross = 2η²λ w·g."""
    lr, wd = 0.1, 1e-2
    watch, captured = _train(lambda m: torch.optim.SGD(m.parameters(), lr=lr, weight_decay=wd))
    history = watch.history
    for step, record in enumerate(captured):
        w, g = record["0.weight"][0].flatten(), record["0.weight"][1].flatten()
        ww, gg, wg = (w @ w).item(), (g @ g).item(), (w @ g).item()
        assert value(history, "shrink", "0", step) == pytest.approx((1 - (1 - lr * wd) ** 2) * ww, rel=1e-5)
        # the measured update carries the fp32 rounding of w − η(g + λw): about eps·|w| per element
        assert value(history, "growth", "0", step) == pytest.approx(lr**2 * gg - 2 * lr * wg, abs=2e-7 * ww)
        assert value(history, "cross", "0", step) == pytest.approx(2 * lr**2 * wd * wg, abs=1e-9)


@pytest.mark.parametrize("fused", [False, True], ids=["eager", "fused"])
def test_bfloat16_weights_get_float32_bookkeeping(fused) -> None:
    """Weights kept in bf16 (8 mantissa bits): the split is computed from their exact values in float32, so
    shrink is (1 − (1−ηλ)²)|w|² and the parts add up to the measured change, both to float32 precision."""
    lr, wd = 0.1, 1e-2
    watch, captured = _train(lambda m: torch.optim.SGD(m.parameters(), lr=lr, weight_decay=wd), fused=fused,
                             dtype=torch.bfloat16)
    history = watch.history
    for step, record in enumerate(captured):
        w, _, w1 = (t.flatten() for t in record["0.weight"][:3])
        ww, measured = (w @ w).item(), (w1 @ w1 - w @ w).item()
        assert value(history, "shrink", "0", step) == pytest.approx((1 - (1 - lr * wd) ** 2) * ww, rel=1e-5)
        split = (value(history, "growth", "0", step) - value(history, "shrink", "0", step)
                 + value(history, "cross", "0", step))
        assert split == pytest.approx(measured, abs=2e-6 * ww), step


def test_theory_tags_use_the_seed_formulas() -> None:
    """Heavy-ball SGD: lars_theory = √(2ηλ(1−μ)) (seed eq. 7), angle_theory = √(2ηλ/(1+μ)), to O(ηλ)."""
    lr, wd, mu = 0.05, 5e-3, 0.9
    watch, _ = _train(lambda m: torch.optim.SGD(m.parameters(), lr=lr, momentum=mu, weight_decay=wd))
    ratio = math.sqrt(2 * lr * wd * (1 - mu))
    assert value(watch.history, "lars_theory", "0", 3) == pytest.approx(ratio, rel=1e-3)
    assert value(watch.history, "angle_theory", "0", 3) == pytest.approx(math.sqrt(2 * lr * wd / (1 + mu)), rel=1e-3)


def test_no_weight_decay_means_no_theory_tags_and_one_note() -> None:
    with pytest.warns(UserWarning, match="weight_decay=0"):
        watch, _ = _train(lambda m: torch.optim.SGD(m.parameters(), lr=0.05, momentum=0.9))
    assert not any("theory" in tag for tag in watch.history)
    assert "normwatch/angle/0" in watch.history


def test_unknown_optimizer_gets_every_measured_metric_and_a_note() -> None:
    """A third-party optimizer (Lion): no split and no theory, but |w|², cos, radial/tangential, angle, lars_ratio,
    autocorr; the note says how to declare its decay decoupled."""
    with pytest.warns(UserWarning, match="no theory applies.*decoupled=True"):
        watch, captured = _train(lambda m: Lion(m.parameters(), lr=1e-3, weight_decay=1e-2))
    metrics = {tag.split("/")[1] for tag in watch.history}
    assert {"w_norm2", "cos_wg", "radial", "tangential", "angle", "lars_ratio", "grad_autocorr"} <= metrics
    assert not metrics & {"shrink", "growth", "cross", "lars_theory", "angle_theory"}
    w, _, w1, _ = captured[4]["0.weight"]
    assert (value(watch.history, "radial", "0", 4) + value(watch.history, "tangential", "0", 4)
            == pytest.approx((w1.flatten() @ w1.flatten() - w.flatten() @ w.flatten()).item(), abs=1e-6))


def test_every_records_every_nth_step_and_keeps_the_memory_exact() -> None:
    """every=3 records steps 0, 3, 6, 9 and their autocorrelation still uses every gradient."""
    watch_all, _ = _train(lambda m: torch.optim.SGD(m.parameters(), lr=0.05, momentum=0.9, weight_decay=5e-3))
    watch_3, _ = _train(lambda m: torch.optim.SGD(m.parameters(), lr=0.05, momentum=0.9, weight_decay=5e-3),
                        every=3)
    steps = [s for s, _ in watch_3.history["normwatch/w_norm2/0"]]
    assert steps == [0, 3, 6, 9]
    for s in (3, 6, 9):
        for metric in ("grad_autocorr", "shrink", "angle"):
            assert value(watch_3.history, metric, "0", s) == pytest.approx(
                value(watch_all.history, metric, "0", s), rel=1e-6, abs=1e-9)


def test_lars_plain_groups_get_sgd_theory() -> None:
    """A LARS group with lars=False is heavy-ball SGD: its theory is SGD's; LARS groups predict lr·|g|/|w| = η."""
    lr, wd, mu = 0.02, 5e-3, 0.9

    def make(m: nn.Module) -> LARS:
        first = [m[0].weight]
        rest = [p for p in m.parameters() if p is not m[0].weight]
        return LARS([{"params": first, "lars": False}, {"params": rest}], lr=lr, momentum=mu, weight_decay=wd)

    watch, _ = _train(make)
    assert value(watch.history, "lars_theory", "0", 2) == pytest.approx(math.sqrt(2 * lr * wd * (1 - mu)), rel=1e-3)
    assert value(watch.history, "lars_theory", "4", 2) == pytest.approx(  # η·sqrt(1-ℓ²), ℓ: 2ημℓ² + 2(1-μ²)ℓ = η(1+μ)
        lr
        * math.sqrt(1 - ((math.sqrt((1 - mu**2) ** 2 + 2 * lr**2 * mu * (1 + mu)) - (1 - mu**2)) / (2 * lr * mu)) ** 2),
        rel=1e-6,
    )


def test_the_momentum_tag_reads_each_optimizers_own_coefficient() -> None:
    """The `momentum` tag reads the group's value for any optimizer: RMSprop's momentum, NAdam's β₁."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        rms, _ = _train(lambda m: torch.optim.RMSprop(m.parameters(), lr=1e-3, momentum=0.7, weight_decay=1e-2))
        nadam, _ = _train(lambda m: torch.optim.NAdam(m.parameters(), lr=1e-3, betas=(0.8, 0.99)))
    assert [v for _, v in rms.history["normwatch/momentum/0"]] == pytest.approx([0.7] * STEPS)
    assert [v for _, v in nadam.history["normwatch/momentum/0"]] == pytest.approx([0.8] * STEPS)


@pytest.mark.parametrize("lr", [1e-4, 1e-5])
@pytest.mark.parametrize("amsgrad", [False, True])
def test_adam_l2_shrink_stays_exact_at_small_learning_rates(lr, amsgrad) -> None:
    """Adam+L2's decay part comes from Adam's own terms, −η·m_wd/(1−β₁ᵗ)/denom, not from the stored update,
    whose float32 rounding would dominate where |m| is small."""
    wd = 1e-2
    watch, captured = _train(lambda m: torch.optim.Adam(m.parameters(), lr=lr, weight_decay=wd, amsgrad=amsgrad))
    reference = reference_metrics(captured, LAYERS, _refs("adam", lr=lr, wd=wd, amsgrad=amsgrad), lr)
    for step, expected in enumerate(reference):
        for layer in LAYERS:
            want = expected[layer]["shrink"]
            assert value(watch.history, "shrink", layer, step) == pytest.approx(want, rel=1e-4), (layer, step)


def test_adam_l2_bias_corrections_are_computed_in_double_as_adams() -> None:
    """float64 weights: the split follows Adam's double-precision bias corrections 1 − βᵗ to the ring's float32."""
    lr, wd = 1e-2, 1e-2
    watch, captured = _train(lambda m: torch.optim.Adam(m.parameters(), lr=lr, weight_decay=wd), dtype=torch.float64)
    reference = reference_metrics(captured, LAYERS, _refs("adam", lr=lr, wd=wd), lr)
    for step, expected in enumerate(reference[:4]):  # the corrections matter most in the first steps
        for layer in LAYERS:
            want = expected[layer]["shrink"]
            assert value(watch.history, "shrink", layer, step) == pytest.approx(want, rel=1e-6), (layer, step)
