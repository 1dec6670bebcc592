"""attach's options for trainers: forward_filter (skip a forward that is not the model's own), start_step
(a run resumed without normwatch's state), warn_undetected; and their validation."""

import warnings

import pytest
import torch
import torch.nn.functional as F

import normwatch
from tests.models import seeded_batches, small_bn_net


def _train(watch_kwargs: dict, steps: int = 4, tmp_path=None):
    model = small_bn_net()
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, weight_decay=5e-3)
    watch = normwatch.attach(model, opt, keep_history=True, logdir=str(tmp_path), **watch_kwargs)
    for x, y in seeded_batches(steps):
        opt.zero_grad()
        F.cross_entropy(model(x), y).backward()
        opt.step()
    watch.close()
    return watch


def test_forward_filter_makes_detection_wait_for_the_models_own_forward(tmp_path) -> None:
    calls = []

    def own(module, args, kwargs) -> bool:
        calls.append(args[0].shape)
        return len(calls) > 1  # the first call is "a trainer's redirected forward"

    watch = _train({"forward_filter": own}, tmp_path=tmp_path)
    assert [s for s, _ in watch.history["normwatch/w_norm2/0"]] == [1, 2, 3]
    assert len(calls) == 2  # asked until detection ran, then never again


def test_start_step_continues_the_axis_and_every(tmp_path) -> None:
    """A run resumed at step 10 without normwatch's state: points at 10, 11, ...; with every=3 at 12, 15."""
    watch = _train({"start_step": 10}, tmp_path=tmp_path / "a")
    assert [s for s, _ in watch.history["normwatch/w_norm2/0"]] == [10, 11, 12, 13]
    assert watch.step == 14
    watch = _train({"start_step": 10, "every": 3}, steps=7, tmp_path=tmp_path / "b")
    assert [s for s, _ in watch.history["normwatch/w_norm2/0"]] == [12, 15]


def test_warn_undetected_false_silences_only_that_warning(tmp_path) -> None:
    model = small_bn_net()
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    for quiet in (False, True):
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            watch = normwatch.attach(model, opt, logdir=str(tmp_path), warn_undetected=not quiet)
            model.eval()  # an eval-mode forward: detection does not run
            F.cross_entropy(model(seeded_batches(1)[0][0]), seeded_batches(1)[0][1]).backward()
            opt.step()
            watch.close()
            model.train()
        said = [str(w.message) for w in caught if "stepped before any training-mode forward" in str(w.message)]
        assert len(said) == (0 if quiet else 1)


@pytest.mark.parametrize(("name", "value", "match"), [
    ("start_step", -1, "start_step"), ("start_step", 1.5, "start_step"), ("forward_filter", 3, "forward_filter"),
    ("every", 0, "every"), ("flush_every", True, "flush_every"), ("ema_beta", 1.0, "ema_beta"),
    ("layers", [1], "layers")])
def test_bad_options_are_refused_with_one_sentence(tmp_path, name, value, match) -> None:
    model = small_bn_net()
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    with pytest.raises((ValueError, TypeError), match=match):
        normwatch.attach(model, opt, logdir=str(tmp_path), **{name: value})
