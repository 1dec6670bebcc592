"""Every torch.optim optimizer that decays weights, in the variants PyTorch ships that run on a CPU (foreach and
single-tensor, fused, maximize, nesterov, amsgrad, centered, decoupled_weight_decay), and normwatch's LARS:
every recorded metric against a float64 reference of its documented update written in tests/rule_references.py,
the |w|² bookkeeping adding up, and training bitwise the same with normwatch attached. (capturable runs on CUDA
only: tests/test_cuda.py.)"""

from __future__ import annotations

import warnings

import pytest
import torch
from torch import nn

import normwatch
from normwatch.optim import LARS
from tests import rule_references as ref
from tests.models import Lion
from tests.reference import assert_bookkeeping_adds_up, assert_matches, reference_metrics, train_and_capture

CONV_LAYERS = {"0": ["0.weight"], "4": ["4.weight", "4.bias"]}
MLP_LAYERS = {"0": ["0.weight"], "3": ["3.weight"]}


def conv_net() -> nn.Module:
    """A conv under BatchNorm (layer "0") and one under GroupNorm with its bias (layer "4", two tensors)."""
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 6, 3, padding=1, bias=False), nn.BatchNorm2d(6), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(6, 8, 3, padding=1), nn.GroupNorm(2, 8), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 5))


def mlp() -> nn.Module:
    """Two matrices under LayerNorm (Muon steps 2-D parameters only)."""
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(12, 16, bias=False), nn.LayerNorm(16, elementwise_affine=False), nn.ReLU(),
                         nn.Linear(16, 16, bias=False), nn.LayerNorm(16, elementwise_affine=False), nn.ReLU(),
                         nn.Linear(16, 5))


def image_batch(gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    return torch.randn(16, 3, 8, 8, generator=gen), torch.randint(0, 5, (16,), generator=gen)


def vector_batch(gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    return torch.randn(16, 12, generator=gen), torch.randint(0, 5, (16,), generator=gen)


def _matrices(model: nn.Module) -> list[nn.Parameter]:
    return [model[0].weight, model[3].weight]


TO = torch.optim
CASES = {  # name: (model, layers, batch, optimizer, reference, lr, options of attach)
    "sgd-maximize": (conv_net, CONV_LAYERS, image_batch,
                     lambda m: TO.SGD(m.parameters(), lr=0.05, momentum=0.9, weight_decay=5e-3, maximize=True),
                     lambda: ref.SGD(0.05, 5e-3, 0.9, maximize=True), 0.05, {}),
    "sgd-nesterov-fused": (conv_net, CONV_LAYERS, image_batch,
                           lambda m: TO.SGD(m.parameters(), lr=0.05, momentum=0.9, nesterov=True, weight_decay=5e-3,
                                           fused=True), lambda: ref.SGD(0.05, 5e-3, 0.9, nesterov=True), 0.05, {}),
    "adam-amsgrad-maximize": (conv_net, CONV_LAYERS, image_batch,
                              lambda m: TO.Adam(m.parameters(), lr=1e-2, weight_decay=1e-2, amsgrad=True,
                                                maximize=True),
                              lambda: ref.Adam(1e-2, 1e-2, amsgrad=True, maximize=True), 1e-2, {}),
    "adam-l2-fused": (conv_net, CONV_LAYERS, image_batch,
                      lambda m: TO.Adam(m.parameters(), lr=1e-2, weight_decay=1e-2, fused=True),
                      lambda: ref.Adam(1e-2, 1e-2), 1e-2, {}),
    "adam-decoupled-single": (conv_net, CONV_LAYERS, image_batch,
                              lambda m: TO.Adam(m.parameters(), lr=1e-2, weight_decay=5e-2, decoupled_weight_decay=True,
                                               foreach=False), lambda: ref.Decoupled(1e-2, 5e-2), 1e-2, {}),
    "adamw-fused": (conv_net, CONV_LAYERS, image_batch,
                    lambda m: TO.AdamW(m.parameters(), lr=1e-2, weight_decay=5e-2, fused=True),
                    lambda: ref.Decoupled(1e-2, 5e-2), 1e-2, {}),
    "nadam": (conv_net, CONV_LAYERS, image_batch, lambda m: TO.NAdam(m.parameters(), lr=1e-2, weight_decay=1e-2),
              lambda: ref.NAdam(1e-2, 1e-2, betas=(0.9, 0.999), eps=1e-8), 1e-2, {}),
    "nadam-maximize-single": (conv_net, CONV_LAYERS, image_batch,
                              lambda m: TO.NAdam(m.parameters(), lr=1e-2, weight_decay=1e-2, momentum_decay=0.1,
                                                maximize=True, foreach=False),
                              lambda: ref.NAdam(1e-2, 1e-2, psi=0.1, maximize=True), 1e-2, {}),
    "nadamw": (conv_net, CONV_LAYERS, image_batch,
               lambda m: TO.NAdam(m.parameters(), lr=1e-2, weight_decay=5e-2, decoupled_weight_decay=True),
               lambda: ref.NAdam(1e-2, 5e-2, decoupled=True), 1e-2, {}),
    "radam": (conv_net, CONV_LAYERS, image_batch, lambda m: TO.RAdam(m.parameters(), lr=1e-2, weight_decay=1e-2),
              lambda: ref.RAdam(1e-2, 1e-2), 1e-2, {}),  # 12 steps: unrectified up to t = 5, rectified after
    "radamw-single": (conv_net, CONV_LAYERS, image_batch,
                      lambda m: TO.RAdam(m.parameters(), lr=1e-2, weight_decay=5e-2, decoupled_weight_decay=True,
                                        foreach=False), lambda: ref.RAdam(1e-2, 5e-2, decoupled=True), 1e-2, {}),
    "adamax": (conv_net, CONV_LAYERS, image_batch, lambda m: TO.Adamax(m.parameters(), lr=1e-2, weight_decay=1e-2),
               lambda: ref.Adamax(1e-2, 1e-2), 1e-2, {}),
    "rmsprop": (conv_net, CONV_LAYERS, image_batch, lambda m: TO.RMSprop(m.parameters(), lr=1e-3, weight_decay=1e-2),
                lambda: ref.RMSprop(1e-3, 1e-2), 1e-3, {}),
    "rmsprop-momentum-centered": (conv_net, CONV_LAYERS, image_batch,
                                  lambda m: TO.RMSprop(m.parameters(), lr=1e-3, weight_decay=1e-2, momentum=0.8,
                                                      centered=True),
                                  lambda: ref.RMSprop(1e-3, 1e-2, mu=0.8, centered=True), 1e-3, {}),
    "rmsprop-momentum-maximize-single": (conv_net, CONV_LAYERS, image_batch,
                                         lambda m: TO.RMSprop(m.parameters(), lr=1e-3, weight_decay=1e-2, momentum=0.8,
                                                             maximize=True, foreach=False),
                                         lambda: ref.RMSprop(1e-3, 1e-2, mu=0.8, maximize=True), 1e-3, {}),
    "adagrad-lr-decay": (conv_net, CONV_LAYERS, image_batch,
                         lambda m: TO.Adagrad(m.parameters(), lr=1e-2, weight_decay=1e-2, lr_decay=0.1),
                         lambda: ref.Adagrad(1e-2, 1e-2, lr_decay=0.1), 1e-2, {}),
    "adagrad-fused": (conv_net, CONV_LAYERS, image_batch,
                      lambda m: TO.Adagrad(m.parameters(), lr=1e-2, weight_decay=1e-2, fused=True),
                      lambda: ref.Adagrad(1e-2, 1e-2), 1e-2, {}),
    "adadelta": (conv_net, CONV_LAYERS, image_batch,
                 lambda m: TO.Adadelta(m.parameters(), lr=1.0, weight_decay=1e-2),
                 lambda: ref.Adadelta(1.0, 1e-2), 1.0, {}),
    "asgd": (conv_net, CONV_LAYERS, image_batch,
             lambda m: TO.ASGD(m.parameters(), lr=0.05, weight_decay=5e-3, lambd=1e-2),
             lambda: ref.ASGD(0.05, 5e-3, lambd=1e-2), 0.05, {}),
    "adafactor": (conv_net, CONV_LAYERS, image_batch,
                  lambda m: TO.Adafactor(m.parameters(), lr=1e-2, weight_decay=1e-2),
                  lambda: ref.Decoupled(1e-2, 1e-2), 1e-2, {}),
    "muon-nesterov": (mlp, MLP_LAYERS, vector_batch,
                      lambda m: TO.Muon(_matrices(m), lr=2e-2, weight_decay=1e-1, momentum=0.95, nesterov=True),
                      lambda: ref.Decoupled(2e-2, 1e-1, beta=0.95), 2e-2, {}),
    "muon-match-rms": (mlp, MLP_LAYERS, vector_batch,
                       lambda m: TO.Muon(_matrices(m), lr=2e-2, weight_decay=1e-1, adjust_lr_fn="match_rms_adamw"),
                       lambda: ref.Decoupled(2e-2, 1e-1, beta=0.95), 2e-2, {}),
    "lars-nesterov": (conv_net, CONV_LAYERS, image_batch,
                      lambda m: LARS(m.parameters(), lr=0.02, momentum=0.9, weight_decay=5e-3, nesterov=True),
                      lambda: ref.LARS(0.02, 5e-3, nesterov=True), 0.02, {}),
    "lars-channel-guard": (conv_net, CONV_LAYERS, image_batch,
                           lambda m: LARS(m.parameters(), lr=0.02, momentum=0.9, weight_decay=5e-3, trust="channel",
                                          nesterov=True, guard=1e-2), lambda: ref.LARS(0.02, 5e-3, nesterov=True), 0.02,
                           {}),
    "lars-smoothed-no-momentum": (conv_net, CONV_LAYERS, image_batch,
                                  lambda m: LARS(m.parameters(), lr=0.02, momentum=0.0, weight_decay=5e-3,
                                                 grad_norm_beta=0.9), lambda: ref.LARS(0.02, 5e-3, mu=0.0), 0.02, {}),
    "lion-declared-decoupled": (conv_net, CONV_LAYERS, image_batch,
                                lambda m: Lion(m.parameters(), lr=1e-3, weight_decay=1e-1),
                                lambda: ref.Decoupled(1e-3, 1e-1), 1e-3, {"decoupled": True}),
}
TRUST = {"lars-nesterov", "lars-channel-guard", "lars-smoothed-no-momentum"}  # lars_ratio = η|t⊙g|/|w|


def _run(name: str, fused: bool = False):
    model, layers, batch, make_opt, make_ref, lr, options = CASES[name]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        watch, captured = train_and_capture(model(), layers, make_opt, batch=batch, fused=fused, **options)
    refs = {n: make_ref() for names in layers.values() for n in names}
    return watch, captured, reference_metrics(captured, layers, refs, lr, trust=name in TRUST), layers


@pytest.mark.parametrize("name", CASES)
def test_every_metric_matches_the_float64_reference(name) -> None:
    watch, captured, expected, layers = _run(name)
    assert_matches(watch.history, expected, name)
    assert_bookkeeping_adds_up(watch.history, captured, layers)


@pytest.mark.parametrize("name", ["nadam", "rmsprop-momentum-centered", "lars-channel-guard"])
def test_fused_statistics_match_the_reference_too(name) -> None:
    """attach(fused=True): the rules with the most per-element state, through torch.compile."""
    watch, _, expected, _ = _run(name, fused=True)
    assert_matches(watch.history, expected, name)


@pytest.mark.parametrize("name", CASES)
def test_training_is_bitwise_the_same_with_normwatch_attached(name, tmp_path) -> None:
    model, _, batch, make_opt, _, _, options = CASES[name]
    weights = []
    for attached in (False, True):
        net = model()
        opt = make_opt(net)
        watch = normwatch.attach(net, opt, logdir=str(tmp_path), **options) if attached else None
        gen = torch.Generator().manual_seed(1)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            for _ in range(6):
                x, y = batch(gen)
                opt.zero_grad()
                torch.nn.functional.cross_entropy(net(x), y).backward()
                opt.step()
        if watch is not None:
            watch.close()
        weights.append([p.detach().clone() for p in net.parameters()] +
                       [v for s in opt.state.values() for v in s.values() if isinstance(v, torch.Tensor)])
    assert all(torch.equal(a, b) for a, b in zip(*weights))


def test_declaring_a_known_optimizer_decoupled_is_refused(tmp_path) -> None:
    net = conv_net()
    with pytest.raises(ValueError, match="normwatch knows SGD's update rule; `decoupled=True` is for an optimizer"):
        normwatch.attach(net, TO.SGD(net.parameters(), lr=0.1), logdir=str(tmp_path), decoupled=True)


NO_FORMULA = {"adamax", "adagrad-lr-decay", "adagrad-fused", "adadelta", "lion-declared-decoupled",
              "lars-nesterov", "lars-channel-guard", "lars-smoothed-no-momentum"}  # LARS: the seed's form only


@pytest.mark.parametrize("name", CASES)
def test_theory_tags_where_a_formula_applies(name) -> None:
    """angle_theory for every rule with an equilibrium formula (docs/theory.md#optimizer-families); none where
    docs/theory.md#no-formula says why there is none, or where the optimizer maximizes; lars_theory where the
    step follows g itself (SGD, LARS, ASGD)."""
    watch, *_ = _run(name)
    metrics = {tag.split("/")[1] for tag in watch.history}
    maximizes = "maximize" in name
    assert ("angle_theory" in metrics) == (name not in NO_FORMULA and not maximizes), metrics
    assert ("lars_theory" in metrics) == (name.startswith(("sgd", "asgd")) and not maximizes), metrics
    for tag, points in watch.history.items():
        if "theory" in tag:
            assert all(0 < v < 1 for _, v in points), (tag, points)


class _Composite(torch.optim.Optimizer):
    """SGD on the first conv and AdamW on the rest as one optimizer, listing them as ``optimizers`` and sharing
    their param-group dicts and state (as the LM demo's Muon-with-AdamW does)."""

    def __init__(self, model: nn.Module) -> None:
        first = [model[0].weight]
        self.optimizers = (TO.SGD(first, lr=0.05, momentum=0.9, weight_decay=5e-3),
                           TO.AdamW([p for p in model.parameters() if p is not model[0].weight], lr=1e-2,
                                    weight_decay=5e-2))
        super().__init__([g for o in self.optimizers for g in o.param_groups], defaults={})
        self.optimizers[0].param_groups, self.optimizers[1].param_groups = self.param_groups[:1], self.param_groups[1:]
        for o in self.optimizers:
            o.state = self.state

    def step(self, closure=None):
        for o in self.optimizers:
            o.step()


def test_an_optimizer_made_of_others_follows_each_groups_own_rule() -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        watch, captured = train_and_capture(conv_net(), CONV_LAYERS, _Composite, batch=image_batch)
    refs = {"0.weight": ref.SGD(0.05, 5e-3, 0.9), "4.weight": ref.Decoupled(1e-2, 5e-2),
            "4.bias": ref.Decoupled(1e-2, 5e-2)}
    expected = reference_metrics(captured, CONV_LAYERS, refs, lr=0.0)
    for layer_metrics in expected:  # lars_ratio uses each group's own lr: compared separately below
        for metrics in layer_metrics.values():
            metrics.pop("lars_ratio")
    assert_matches(watch.history, expected, "composite")
    assert {t.split("/")[1] for t in watch.history if t.endswith("/0")} >= {"shrink", "lars_theory", "angle_theory"}
