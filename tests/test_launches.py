"""normwatch's work per step is multi-tensor: the ops it adds to ``optimizer.step()`` (counted by a
TorchDispatchMode, as on a GPU each is a kernel launch) do not grow when the model gains layers."""

import pytest
import torch

import normwatch
from benchmarks.launches import NOT_RECORDED_BAR, RECORDED_BAR, added_ops, lm_loss
from benchmarks.models import Transformer, lm_batch


@pytest.mark.parametrize("optimizer", ["sgd", "adamw"])
def test_ops_per_step_do_not_grow_with_the_number_of_layers(optimizer) -> None:
    small = added_ops(lambda: Transformer(blocks=2, d=32), lm_batch(batch=2, context=8), lm_loss, optimizer)
    large = added_ops(lambda: Transformer(blocks=12, d=32), lm_batch(batch=2, context=8), lm_loss, optimizer)
    assert small[0] == 12 and large[0] == 72  # instrumented tensors: 6 per block
    assert large[1] > 5 * small[1] // 2  # the plain step grows with the layers (torch's own optimizer step)...
    assert large[2] == small[2] <= RECORDED_BAR  # ...normwatch's recorded step does not
    assert large[3] == small[3] <= NOT_RECORDED_BAR


def test_a_tensor_without_gradient_splits_its_bucket_and_the_rest_stay_exact(tmp_path) -> None:
    """In a step where one tensor has no gradient, the others of its bucket are computed in runs around it: each
    still gets |w|² and growth − shrink + cross = |w_{t+1}|² − |w_t|², measured here from the weights."""
    torch.manual_seed(0)
    model = Transformer(blocks=2, d=32)
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, weight_decay=5e-3)
    x, y = lm_batch(batch=2, context=8)
    names = ["blocks.0.q_proj", "blocks.0.o_proj", "blocks.1.k_proj"]
    measured = []
    with normwatch.attach(model, opt, keep_history=True, logdir=str(tmp_path)) as watch:
        for step in range(3):
            opt.zero_grad()
            lm_loss(model(x), y).backward()
            if step == 1:
                model.blocks[0].k_proj.weight.grad = None  # this step, one tensor has no gradient
            before = {n: model.get_submodule(n).weight.detach().double().clone() for n in names}
            opt.step()
            measured.append({n: (before[n].pow(2).sum().item(),
                                 model.get_submodule(n).weight.detach().double().pow(2).sum().item()) for n in names})
    history = {tag: dict(points) for tag, points in watch.history.items()}
    assert sorted(history["normwatch/w_norm2/blocks.0.k_proj"]) == [0, 2]  # no point without its gradient
    for name in names:
        for step, values in enumerate(measured):
            w2, w2_next = values[name]
            assert history[f"normwatch/w_norm2/{name}"][step] == pytest.approx(w2, rel=1e-6)
            split = sum(sign * history[f"normwatch/{m}/{name}"][step]
                        for m, sign in (("growth", 1), ("shrink", -1), ("cross", 1)))
            assert split == pytest.approx(w2_next - w2, abs=2e-6 * w2)
