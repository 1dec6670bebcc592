"""Resume on its own: normwatch's state out and back in, and what it adopts from an optimizer that stepped."""

import numpy as np
import pytest
import torch
from torch import nn

from normwatch import rules
from normwatch.resume import Resume
from normwatch.tracked import TrackedTensor


def _tracked(param: nn.Parameter, name: str, layer: int = 0, group: int | None = 0) -> TrackedTensor:
    return TrackedTensor(name, layer, param, group, torch.empty_like(param), torch.zeros_like(param))


def test_state_round_trip_and_kept_entries_for_layers_not_recorded_yet() -> None:
    a, b = nn.Parameter(torch.randn(3)), nn.Parameter(torch.randn(2))
    first = _tracked(a, "a.weight")
    first.memory.copy_(torch.tensor([1.0, 2.0, 3.0]))
    resume = Resume()
    resume.load({"version": 1, "step": 7, "w0_norm2": {"b": 4.0}, "memory": {"b.weight": torch.ones(2)},
                 "unknown": {"b.weight": 0.5}})
    state = resume.state_dict(9, ["a"], np.array([2.5]), [first], [0.25])
    assert state["step"] == 9 and state["w0_norm2"] == {"b": 4.0, "a": 2.5}
    assert torch.equal(state["memory"]["a.weight"], torch.tensor([1.0, 2.0, 3.0]))
    assert torch.equal(state["memory"]["b.weight"], torch.ones(2))  # kept for when layer b is recorded
    assert state["unknown"] == {"b.weight": 0.5, "a.weight": 0.25}

    later = Resume()
    later.load(state)
    second, w0 = _tracked(b, "b.weight", layer=1), np.full(2, np.nan)
    later.restore([(1, "b")], [second], w0)
    assert w0[1] == 4.0 and np.isnan(w0[0])
    assert torch.equal(second.memory, torch.ones(2)) and second.unseen == 0.5


def test_unknown_version_is_refused() -> None:
    with pytest.raises(ValueError, match="version"):
        Resume().load({"version": 2})


def test_memories_of_tensors_stepped_while_their_layer_waits_are_dropped() -> None:
    resume = Resume()
    resume.load({"version": 1, "step": 0, "w0_norm2": {}, "memory": {"x": torch.ones(1), "y": torch.ones(1)}})
    resume.forget_stepped({"x"})
    assert set(resume.loaded["memory"]) == {"y"}


@pytest.mark.parametrize(("make", "buffer", "unseen"), [
    (lambda p: torch.optim.SGD([p], lr=0.1, momentum=0.9, weight_decay=1e-2), "momentum_buffer", 1.0),
    (lambda p: torch.optim.SGD([p], lr=0.1, momentum=0.9), "momentum_buffer", 0.0),  # no decay: all gradient
    (lambda p: torch.optim.AdamW([p], lr=0.1, weight_decay=1e-2), "exp_avg", 0.0),  # decoupled: m holds no decay
    (lambda p: torch.optim.Adam([p], lr=0.1, weight_decay=1e-2), "exp_avg", 1.0),  # coupled L2 hides in m
], ids=["sgd-decay", "sgd-no-decay", "adamw", "adam-l2"])
def test_a_stepped_optimizers_buffer_is_adopted_and_hidden_decay_marked_unseen(make, buffer, unseen) -> None:
    p = nn.Parameter(torch.randn(5))
    opt = make(p)
    p.grad = torch.randn(5)
    opt.step()
    tracked = _tracked(p, "w")
    Resume().adopt_optimizer_state([tracked], opt, {0: rules.hyper(opt, opt.param_groups[0])})
    assert torch.equal(tracked.memory, opt.state[p][buffer]) and tracked.unseen == unseen
