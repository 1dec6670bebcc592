"""Every optimizer rule normwatch knows, and which one a param group follows.

Every optimizer in ``torch.optim`` that decays weights has one, in each variant (foreach, fused, capturable,
``maximize``, ``nesterov``, ``decoupled_weight_decay``): :mod:`~normwatch.rules.momentum` (SGD, LARS),
:mod:`~normwatch.rules.adam` (Adam, NAdam, RAdam, Adamax with coupled L2), :mod:`~normwatch.rules.adaptive`
(RMSprop, Adagrad, Adadelta) and :mod:`~normwatch.rules.decoupled` (AdamW and every decoupled variant,
Adafactor, Muon, ASGD, and an optimizer the user declares decoupled). An optimizer made of others
(``optimizer.optimizers``, sharing their param-group dicts) follows, group by group, the rule of the one that
owns the group. An optimizer normwatch does not know follows ``"unknown"``: every measured metric, no split, no
theory.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import torch

from normwatch.manual import ManualSteps
from normwatch.optim import LARS
from normwatch.rules.adam import AdamaxRule, AdamRule, NAdamRule, RAdamRule
from normwatch.rules.adaptive import AdadeltaRule, AdagradRule, RMSpropRule
from normwatch.rules.base import DEFAULT_EMA_BETA, NOT_STEPPED, Decoupled, DecoupledRule, Hyper, Rule
from normwatch.rules.decoupled import AdafactorRule, AdamWRule, ASGDRule, MuonRule, NAdamWRule, RAdamWRule
from normwatch.rules.momentum import LARSRule, SGDRule

__all__ = ["DEFAULT_EMA_BETA", "NOT_STEPPED", "RULES", "Decoupled", "Hyper", "Rule", "family_of", "hyper", "knows",
           "rule_for", "theory_inputs"]

RULES: dict[str, Rule] = {rule.name: rule for rule in (
    Rule(), DecoupledRule(), SGDRule(), LARSRule(), AdamRule(), AdamWRule(), NAdamRule(), NAdamWRule(), RAdamRule(),
    RAdamWRule(), AdamaxRule(), RMSpropRule(), AdagradRule(), AdadeltaRule(), ASGDRule(), AdafactorRule(),
    MuonRule())}

_COUPLED_OR_NOT = {  # optimizer class name → (rule with coupled L2, rule with decoupled_weight_decay=True)
    "Adam": ("adam", "adamw"), "AdamW": ("adam", "adamw"), "NAdam": ("nadam", "nadamw"), "RAdam": ("radam", "radamw")}
_ONE_RULE = {"SGD": "sgd", "Adamax": "adamax", "RMSprop": "rmsprop", "Adagrad": "adagrad", "Adadelta": "adadelta",
             "ASGD": "asgd", "Adafactor": "adafactor", "Muon": "muon"}


def knows(optimizer: torch.optim.Optimizer) -> bool:
    """Whether normwatch knows ``optimizer``'s update rule (a torch.optim class itself, LARS, the stand-in of a
    loop with its own update, whose rule is declared, or an optimizer made of such optimizers)."""
    inner = _inner(optimizer)
    if inner:
        return all(knows(o) for o in inner)
    return isinstance(optimizer, (LARS, ManualSteps)) or _torch_name(optimizer) is not None


def rule_for(optimizer: torch.optim.Optimizer, group: dict[str, Any], decoupled: bool = False) -> Rule:
    """The rule ``group`` of ``optimizer`` follows; ``decoupled``: the user declares an optimizer normwatch does
    not know decoupled (``w ← (1 − ηλ)w − ηU``)."""
    if isinstance(optimizer, LARS):
        return RULES["lars" if group.get("lars", True) else "sgd"]
    if isinstance(optimizer, ManualSteps):  # watch.update(...): the declared rule, while the update follows it
        return RULES["decoupled" if group["decoupled"] else "sgd" if optimizer.matches else "unknown"]
    owner = next((o for o in _inner(optimizer) if any(g is group for g in o.param_groups)), None)
    if owner is not None:  # an optimizer made of others (Muon on the matrices, AdamW on the rest): the owner's
        return rule_for(owner, group, decoupled)
    name = _torch_name(optimizer)
    if name in _ONE_RULE:
        return RULES[_ONE_RULE[name]]
    if name in _COUPLED_OR_NOT:
        coupled, uncoupled = _COUPLED_OR_NOT[name]
        return RULES[uncoupled if group.get("decoupled_weight_decay", name == "AdamW") else coupled]
    return RULES["decoupled" if decoupled else "unknown"]


def hyper(optimizer: torch.optim.Optimizer, group: dict[str, Any], ema_beta: float = DEFAULT_EMA_BETA,
          decoupled: bool = False) -> Hyper:
    """A param group's hyperparameters, read by its rule, as a step starts (``step``: the one under way)."""
    hp = rule_for(optimizer, group, decoupled).read(group, ema_beta)
    done = optimizer.state.get(group["params"][0], {}).get("step") if group["params"] else None
    if isinstance(done, torch.Tensor) and done.device.type != "cpu":
        return hp  # a capturable optimizer's count stays on the device: reading it would sync
    return dataclasses.replace(hp, step=float(done if done is not None else 0) + 1)


def theory_inputs(hp: Hyper) -> dict[str, Any]:
    """The keyword arguments of :mod:`normwatch.theory`'s dispatchers that a group's hyperparameters give (the
    measured ones — gradient RMS, E[G²], numel, shape — are the caller's)."""
    extra = dict(hp.extra)
    return {"lr": float(hp.lr), "weight_decay": hp.weight_decay, "momentum": hp.momentum,
            "dampening": hp.dampening if hp.momentum > 0 else 0.0, "nesterov": hp.nesterov, "beta1": hp.beta1,
            "beta2": hp.beta2 or 0.999, "amsgrad": hp.amsgrad, "step": hp.step,
            **{key: extra[key] for key in ("momentum_decay", "alpha", "centered", "lambd", "adjust_lr_fn", "eps2")
               if key in extra}}


def family_of(optimizer: torch.optim.Optimizer, decoupled: bool = False) -> str:
    """The rule of the whole optimizer: LARS's own (whatever its plain groups), else its groups' common rule, or
    ``"mixed"`` when they differ."""
    if isinstance(optimizer, LARS):
        return "lars"
    names = {rule_for(optimizer, group, decoupled).name for group in optimizer.param_groups}
    return names.pop() if len(names) == 1 else "mixed"


def _inner(optimizer: torch.optim.Optimizer) -> tuple[torch.optim.Optimizer, ...]:
    """The optimizers an optimizer is made of, when it lists them as ``optimizers`` and shares their param-group
    dicts (its state is read for each group as the owner keeps it)."""
    inner = getattr(optimizer, "optimizers", ())
    return tuple(o for o in inner if isinstance(o, torch.optim.Optimizer)) if isinstance(inner, (list, tuple)) else ()


def _torch_name(optimizer: torch.optim.Optimizer) -> str | None:
    """The class name when ``optimizer`` is exactly one of torch.optim's own (a subclass may change the rule)."""
    name = type(optimizer).__name__
    known = getattr(torch.optim, name, None)
    return name if type(optimizer) is known and (name in _ONE_RULE or name in _COUPLED_OR_NOT) else None
