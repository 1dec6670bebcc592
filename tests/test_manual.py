"""A loop with its own update and no torch.optim.Optimizer (as the seed's own code): attach(model) and
``with watch.update(...)`` around the update give every metric, and the split, equal to the same run through
torch.optim.SGD; an update that is not the declared rule gets one warning and measured metrics only."""

import warnings

import pytest
import torch
import torch.nn.functional as F

import normwatch
from tests.models import seeded_batches, small_bn_net

LR, WD, MU = 0.05, 5e-3, 0.9


def nesterov_update(w, dw, v, lr, weight_decay, momentum):
    """The seed's update, written here as its published code has it: η inside the buffer,
    v ← μv − η(g + λw), w ← w − η(g + λw) + μv (PyTorch's Nesterov SGD at a constant lr)."""
    dw.add_(w, alpha=weight_decay).mul_(-lr)
    v.mul_(momentum).add_(dw)
    w.add_(dw.add_(v, alpha=momentum))


def _hand_written(tmp_path, momentum_used: float = MU):
    model = small_bn_net()
    watch = normwatch.attach(model, logdir=str(tmp_path / "hand"), keep_history=True)
    velocity = {p: torch.zeros_like(p) for p in model.parameters()}
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for x, y in seeded_batches(8):
            for p in model.parameters():
                p.grad = None
            F.cross_entropy(model(x), y).backward()
            with watch.update(lr=LR, weight_decay=WD, momentum=MU, nesterov=True), torch.no_grad():
                for p in model.parameters():
                    nesterov_update(p, p.grad.clone(), velocity[p], LR, WD, momentum_used)
    watch.close()
    return watch.history, [str(w.message) for w in caught if str(w.message).startswith("normwatch")], model


def test_a_hand_written_nesterov_update_records_what_torch_sgd_does(tmp_path) -> None:
    history, messages, hand = _hand_written(tmp_path)
    model = small_bn_net()
    opt = torch.optim.SGD(model.parameters(), lr=LR, momentum=MU, nesterov=True, weight_decay=WD)
    with normwatch.attach(model, opt, logdir=str(tmp_path / "sgd"), keep_history=True) as watch:
        for x, y in seeded_batches(8):
            opt.zero_grad()
            F.cross_entropy(model(x), y).backward()
            opt.step()
    assert not messages
    assert {t.split("/")[1] for t in history} >= {"shrink", "growth", "cross", "angle_theory", "lars_theory"}
    scale = max(v for _, v in watch.history["normwatch/w_norm2/0"])
    for tag, points in watch.history.items():
        assert [s for s, _ in history[tag]] == [s for s, _ in points], tag
        # the two updates round differently: |w|²-sized sums agree to float32 rounding of |w|², cosines to 1e-4
        tol = 1e-4 if "cos_wg" in tag or "grad_autocorr" in tag else 1e-6 * scale
        assert [v for _, v in history[tag]] == pytest.approx([v for _, v in points], rel=1e-4, abs=tol), tag
    for a, b in zip(hand.parameters(), model.parameters()):  # the two updates are the same rule
        assert torch.allclose(a, b, rtol=1e-5, atol=1e-6)


def test_an_update_that_is_not_the_declared_rule_gets_one_warning_and_no_split(tmp_path) -> None:
    history, messages, _ = _hand_written(tmp_path, momentum_used=0.5)  # declares 0.9, runs 0.5
    assert len(messages) == 1 and "not the declared rule" in messages[0]
    metrics = {t.split("/")[1] for t in history}
    assert "angle" in metrics and "w_norm2" in metrics
    assert not metrics & {"shrink", "growth", "cross", "angle_theory", "lars_theory"}
    assert [s for s, _ in history["normwatch/w_norm2/0"]] == list(range(8))


def test_a_declared_decoupled_update_gets_the_split(tmp_path) -> None:
    """``decoupled=True``: w ← (1 − ηλ)w − ηU, here U = sign(g): shrink is (1 − (1−ηλ)²)|w|²."""
    model = small_bn_net()
    watch = normwatch.attach(model, logdir=str(tmp_path), keep_history=True)
    norms = []
    for x, y in seeded_batches(4):
        for p in model.parameters():
            p.grad = None
        F.cross_entropy(model(x), y).backward()
        norms.append(model[0].weight.detach().double().pow(2).sum().item())
        with watch.update(lr=1e-3, weight_decay=0.1, decoupled=True), torch.no_grad():
            for p in model.parameters():
                p.mul_(1 - 1e-3 * 0.1).add_(p.grad.sign(), alpha=-1e-3)
    watch.close()
    shrink = [v for _, v in watch.history["normwatch/shrink/0"]]
    assert shrink == pytest.approx([(1 - (1 - 1e-4) ** 2) * n for n in norms], rel=1e-5)


def test_update_needs_a_watcher_without_an_optimizer_and_valid_hyperparameters(tmp_path) -> None:
    model = small_bn_net()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    with normwatch.attach(model, opt, logdir=str(tmp_path / "a")) as watch, \
            pytest.raises(RuntimeError, match="for a loop with its own update"), watch.update(lr=0.1):
        pass
    with normwatch.attach(model, logdir=str(tmp_path / "b")) as watch:
        with pytest.raises(ValueError, match=r"`momentum` of watch\.update to be in"), \
                watch.update(lr=0.1, momentum=1):
            pass
        with pytest.raises(RuntimeError, match="does not step"):
            watch._optimizer.step()
