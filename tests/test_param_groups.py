"""ParamGroups on its own: changes of the optimizer's param groups seen by identity, and waiting layers."""

import torch
from torch import nn

from normwatch import Layer
from normwatch.param_groups import ParamGroups


def _setup():
    model = nn.Sequential(nn.Linear(4, 4), nn.Linear(4, 4))
    opt = torch.optim.SGD([model[0].weight], lr=0.1)
    groups = ParamGroups(opt, model)
    groups.mark_seen()
    return model, opt, groups


def test_nothing_changed_is_seen_as_unchanged() -> None:
    _, opt, groups = _setup()
    assert not groups.changed()
    opt.param_groups[0]["lr"] = 0.5  # hyperparameters are read every step, not a change of groups
    assert not groups.changed()


def test_added_group_in_place_edit_and_replaced_dict_are_changes() -> None:
    model, opt, groups = _setup()
    opt.add_param_group({"params": [model[1].weight]})
    assert groups.changed()
    groups.mark_seen()
    opt.param_groups[0]["params"].append(model[0].bias)  # an in-place edit of a group's list
    assert groups.changed()
    groups.mark_seen()
    opt.param_groups[1] = dict(opt.param_groups[1])  # same parameters, another dict
    assert groups.changed()


def test_index_of_and_stepped_names_follow_the_groups() -> None:
    model, opt, groups = _setup()
    opt.add_param_group({"params": [model[1].weight, model[1].bias]})
    assert groups.index_of() == {id(model[0].weight): 0, id(model[1].weight): 1, id(model[1].bias): 1}
    assert groups.stepped_names() == {"0.weight", "1.weight", "1.bias"}


def test_a_waiting_layer_is_ready_when_all_its_parameters_are_stepped() -> None:
    model, opt, groups = _setup()
    joint = Layer("1", "norm", ("1.weight", "1.bias"), "tensor", 1)
    groups.waiting = [joint]
    assert groups.take_ready() == [] and groups.waiting == [joint]
    opt.add_param_group({"params": [model[1].weight]})
    assert groups.take_ready() == []  # the bias is still missing
    opt.add_param_group({"params": [model[1].bias]})
    assert groups.take_ready() == [joint] and groups.waiting == []
    assert not groups.changed()  # take_ready marks the groups it saw
