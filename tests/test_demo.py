"""Tests of demo/train_resnet.py: model, data pipeline, loader, schedule, the study's derived
hyperparameters, and a two-step smoke run of every study part on CPU with a fake CIFAR-10 copy."""

from __future__ import annotations

import hashlib
import importlib.util
import json
import math
import os
import pickle
import re
import shutil
import subprocess
import sys
import tarfile
import urllib.error
from pathlib import Path

import numpy as np
import pytest
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

import normwatch
from tests.models import assert_same_history

DEMO = Path(__file__).resolve().parents[1] / "demo" / "train_resnet.py"


def _import_demo():
    spec = importlib.util.spec_from_file_location("train_resnet", DEMO)
    module = importlib.util.module_from_spec(spec)
    sys.modules["train_resnet"] = module  # dataclasses look their module up while the file executes
    spec.loader.exec_module(module)
    return module


demo = _import_demo()
CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]


# ---------------------------------------------------------------------------------------------------------
# A fake extracted copy in the official format: Python-2-style pickles with bytes keys, 'data' uint8
# (N, 3072) holding the R plane, then G, then B (each row-major), 'labels' a list of ints.
# ---------------------------------------------------------------------------------------------------------


def _dump(obj, path: Path) -> None:
    path.write_bytes(pickle.dumps(obj, protocol=2))


def write_fake_cifar(parent: Path, per_batch: int = 40, n_test: int = 40, seed: int = 0) -> Path:
    """parent/cifar-10-batches-py with 5 training batches of `per_batch` images and a test batch; labels
    cycle through the 10 classes; returns the batches folder."""
    rng = np.random.default_rng(seed)
    root = parent / "cifar-10-batches-py"
    root.mkdir(parents=True)
    for i in range(1, 6):
        _dump({b"batch_label": f"training batch {i} of 5".encode(), b"labels": [j % 10 for j in range(per_batch)],
               b"data": rng.integers(0, 256, (per_batch, 3072), dtype=np.uint8),
               b"filenames": [f"img_{i}_{j}.png".encode() for j in range(per_batch)]}, root / f"data_batch_{i}")
    _dump({b"batch_label": b"testing batch 1 of 1", b"labels": [j % 10 for j in range(n_test)],
           b"data": rng.integers(0, 256, (n_test, 3072), dtype=np.uint8),
           b"filenames": [f"test_{j}.png".encode() for j in range(n_test)]}, root / "test_batch")
    _dump({b"label_names": [c.encode() for c in CLASSES], b"num_cases_per_batch": per_batch, b"num_vis": 3072},
          root / "batches.meta")
    return root


@pytest.fixture(scope="module")
def fake_data(tmp_path_factory) -> Path:
    """A data dir holding a fake copy: 200 training images (20 per class), 40 test images."""
    parent = tmp_path_factory.mktemp("data")
    write_fake_cifar(parent)
    return parent


# ---------------------------------------------------------------------------------------------------------
# Model
# ---------------------------------------------------------------------------------------------------------


def _count(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def _expected_params(extra: tuple[str, ...], res: tuple[str, ...], c=(64, 128, 256, 512)) -> int:
    """Independent count from the layer shapes: 3×3 convs without bias, BN scale and shift per channel,
    a 512×10 classifier without bias; 'extra' adds one c×c conv_bn after layer k, 'residual' two."""
    prep, layers = c[0], dict(zip(("layer1", "layer2", "layer3"), c[1:]))
    convs = [(3, prep), *zip((prep, *c[1:3]), c[1:])]
    for name, ch in layers.items():
        convs += [(ch, ch)] * ((name in extra) + 2 * (name in res))
    return sum(9 * ci * co + 2 * co for ci, co in convs) + c[3] * 10


def test_resnet9_has_6573120_parameters():
    convs = 9 * (3 * 64 + 64 * 128 + 2 * 128 * 128 + 128 * 256 + 256 * 512 + 2 * 512 * 512)
    bn = 2 * (64 + 128 + 128 + 128 + 256 + 512 + 512 + 512)
    assert convs + bn + 512 * 10 == 6_573_120
    model = demo.build("resnet9", 1.0)
    assert _count(model) == 6_573_120
    conv_shapes = [tuple(m.weight.shape) for m in model.modules() if isinstance(m, torch.nn.Conv2d)]
    assert conv_shapes == [(64, 3, 3, 3), (128, 64, 3, 3), (128, 128, 3, 3), (128, 128, 3, 3),
                           (256, 128, 3, 3), (512, 256, 3, 3), (512, 512, 3, 3), (512, 512, 3, 3)]
    assert all(m.bias is None for m in model.modules() if isinstance(m, torch.nn.Conv2d | torch.nn.Linear))


@pytest.mark.parametrize("arch, extra, res", [
    ("basic", (), ()),
    ("resnet9", (), ("layer1", "layer3")),
    ("res_l1_l2_l3", (), ("layer1", "layer2", "layer3")),
    ("extra_l1_l2_l3", ("layer1", "layer2", "layer3"), ()),
])
def test_architectures_build_and_give_logits(arch, extra, res):
    assert _count(demo.build(arch, 1.0)) == _expected_params(extra, res)
    small = demo.build(arch, 0.125)
    assert _count(small) == _expected_params(extra, res, c=(8, 16, 32, 64))
    small.train()
    assert small(torch.randn(4, 3, 32, 32)).shape == (4, 10)
    small.eval()
    assert small(torch.randn(3, 3, 32, 32)).shape == (3, 10)


def test_bn_settings_and_output_scale():
    model = demo.build("resnet9", 0.125).eval()
    for bn in (m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)):
        assert (bn.eps, bn.momentum) == (1e-5, 0.1)
        assert torch.all(bn.weight == 1) and torch.all(bn.bias == 0)
    x = torch.randn(2, 3, 32, 32)
    features = model[:-2](x)  # everything before linear and the scale
    assert torch.allclose(model(x), 0.125 * (features @ model.linear.weight.T))


# ---------------------------------------------------------------------------------------------------------
# Data pipeline
# ---------------------------------------------------------------------------------------------------------


def _padded(n=96, seed=0):
    """Padded-like images with values in [1, 2], all distinct, so that zeros can only come from cutout."""
    g = torch.Generator().manual_seed(seed)
    return 1 + torch.rand(n, 3, 40, 40, generator=g)


def test_augment_shapes_dtype_range_and_cutout_inside():
    x = _padded()
    out = demo.augment(x, torch.Generator().manual_seed(1))
    assert out.shape == (96, 3, 32, 32) and out.dtype == torch.float32
    nonzero = out[out != 0]
    assert nonzero.min() >= 1 and nonzero.max() <= 2
    zero = out == 0
    assert torch.equal(zero[:, 0], zero[:, 1]) and torch.equal(zero[:, 0], zero[:, 2])  # all channels
    for mask in zero[:, 0]:
        rows, cols = torch.nonzero(mask.any(1)).flatten(), torch.nonzero(mask.any(0)).flatten()
        assert mask.sum() == 64 and len(rows) == 8 and len(cols) == 8  # exactly one 8×8 square...
        assert rows.max() - rows.min() == 7 and cols.max() - cols.min() == 7
        assert mask[rows.min():rows.max() + 1, cols.min():cols.max() + 1].all()  # ...inside the image


def test_augment_is_a_crop_of_the_padded_image_maybe_flipped():
    x = _padded(64)
    out = demo.augment(x, torch.Generator().manual_seed(2))
    keep = out != 0
    found = []
    for i in range(64):
        matches = [(dy, dx, f) for dy in range(9) for dx in range(9) for f in (False, True)
                   if torch.equal(((x[i, :, dy:dy + 32, dx:dx + 32].flip(-1) if f else
                                    x[i, :, dy:dy + 32, dx:dx + 32]))[keep[i]], out[i][keep[i]])]
        assert len(matches) == 1, f"image {i}: {matches}"
        found.append(matches[0])
    offsets, flips = {m[:2] for m in found}, [m[2] for m in found]
    assert len(offsets) > 20  # 81 possible offsets: they vary
    assert 0.25 < sum(flips) / len(flips) < 0.75


def test_augment_is_deterministic_under_a_seed():
    x = _padded(32)
    a = demo.augment(x, torch.Generator().manual_seed(7))
    b = demo.augment(x, torch.Generator().manual_seed(7))
    c = demo.augment(x, torch.Generator().manual_seed(8))
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert not (demo.augment(x, torch.Generator().manual_seed(7), cutout=0) == 0).any()


def test_device_data_normalises_and_reflect_pads(fake_data):
    cifar = demo.load_cifar10(fake_data)
    data = demo.DeviceData(cifar, torch.device("cpu"))
    x = cifar["train"][0].numpy().astype(np.float64)
    mean, std = np.array([125.31, 122.95, 113.87]), np.array([62.99, 62.09, 66.70])
    ref = np.pad((x - mean[:, None, None]) / std[:, None, None], ((0, 0), (0, 0), (4, 4), (4, 4)), mode="reflect")
    assert data.train_x.shape == (200, 3, 40, 40)
    np.testing.assert_allclose(data.train_x.numpy(), ref, rtol=1e-5, atol=1e-5)
    g1, g2 = torch.Generator().manual_seed(0), torch.Generator().manual_seed(0)
    (xa, ya), (xb, yb) = data.epoch(g1, 8), data.epoch(g2, 8)
    assert torch.equal(xa, xb) and torch.equal(ya, yb)
    assert xa.shape == (200, 3, 32, 32) and sorted(ya.tolist()) == sorted(data.train_y.tolist())


def test_balanced_subset_takes_the_first_of_each_class():
    labels = torch.tensor([c for c in range(10) for _ in range(5 + c)])  # class c has 5 + c images
    idx = demo.balanced_subset(labels, 30)
    assert torch.bincount(labels[idx], minlength=10).tolist() == [3] * 10
    starts = [sum(5 + k for k in range(c)) for c in range(10)]
    assert idx.tolist() == sorted(s + j for s in starts for j in range(3))
    assert torch.equal(demo.balanced_subset(labels, 0), torch.arange(len(labels)))
    with pytest.raises(ValueError, match="at least 6 images of class 0"):
        demo.balanced_subset(labels, 60)


# ---------------------------------------------------------------------------------------------------------
# Loader
# ---------------------------------------------------------------------------------------------------------


def test_loader_reads_the_official_format(tmp_path):
    root = write_fake_cifar(tmp_path)
    batch = pickle.loads((root / "data_batch_2").read_bytes())
    row = np.concatenate([np.full(1024, 10), np.full(1024, 20), np.full(1024, 30)]).astype(np.uint8)
    batch[b"data"][3] = row
    _dump(batch, root / "data_batch_2")
    for where in (tmp_path, root):  # the parent of cifar-10-batches-py, or that folder itself
        cifar = demo.load_cifar10(where)
        (x, y), (xt, yt) = cifar["train"], cifar["test"]
        assert x.shape == (200, 3, 32, 32) and x.dtype == torch.uint8 and y.dtype == torch.int64
        assert xt.shape == (40, 3, 32, 32) and yt.tolist() == [j % 10 for j in range(40)]
        assert cifar["classes"] == CLASSES and cifar["root"] == root
        image = x[40 + 3]  # batch 2, image 3
        assert (image[0] == 10).all() and (image[1] == 20).all() and (image[2] == 30).all()
        assert y[:12].tolist() == [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 0, 1]


def test_loader_rejects_a_corrupt_copy(tmp_path):
    root = write_fake_cifar(tmp_path)
    (root / "data_batch_3").write_bytes(b"\x80\x02garbage")
    with pytest.raises(demo.DataError, match="data_batch_3 is not a valid CIFAR-10 pickle"):
        demo.load_cifar10(tmp_path)
    _dump({b"data": np.zeros((4, 3000), np.uint8), b"labels": [0, 1, 2, 3]}, root / "data_batch_3")
    with pytest.raises(demo.DataError, match=r"data_batch_3 is not a valid CIFAR-10 batch \('data' should be"):
        demo.load_cifar10(tmp_path)
    _dump({b"data": np.zeros((4, 3072), np.uint8), b"labels": [0, 1, 2, 10]}, root / "data_batch_3")
    with pytest.raises(demo.DataError, match=r"labels should lie in 0\.\.9"):
        demo.load_cifar10(tmp_path)
    (root / "data_batch_3").unlink()
    with pytest.raises(demo.DataError, match="data_batch_3 is missing"):
        demo.load_cifar10(tmp_path)


def test_offline_without_data_fails_in_one_sentence(tmp_path, monkeypatch, capsys):
    def no_network(url, dest):
        raise urllib.error.URLError("no network")

    monkeypatch.setattr(demo, "_download", no_network)
    with pytest.raises(demo.DataError) as err:
        demo.load_cifar10(tmp_path / "data")
    message = str(err.value)
    assert "\n" not in message and message.endswith(".") and message.count(". ") == 0
    assert demo.CIFAR_URL in message and str(tmp_path / "data" / "cifar-10-batches-py") in message
    assert not list((tmp_path / "data").glob("*.part"))
    code = demo.main(["--data-dir", str(tmp_path / "data"), "--out", str(tmp_path / "runs"), "--device", "cpu"])
    assert code == 2 and capsys.readouterr().err.strip() == f"error: {message}"


def _tarball_of(fake_parent: Path, dest: Path) -> str:
    with tarfile.open(dest, "w:gz") as tar:
        tar.add(fake_parent / "cifar-10-batches-py", arcname="cifar-10-batches-py")
    return hashlib.md5(dest.read_bytes()).hexdigest()


def test_download_checks_md5_then_extracts(tmp_path, monkeypatch):
    src = tmp_path / "src"
    write_fake_cifar(src)
    payload = tmp_path / "payload.tar.gz"
    digest = _tarball_of(src, payload)
    calls = []

    def fake_download(url, dest):
        calls.append(url)
        Path(dest).write_bytes(payload.read_bytes())

    monkeypatch.setattr(demo, "_download", fake_download)
    target = tmp_path / "data"
    with pytest.raises(demo.DataError, match=f"has md5 {digest} instead of {demo.CIFAR_MD5}"):
        demo.load_cifar10(target)
    assert not (target / "cifar-10-python.tar.gz").exists()  # a bad download is not kept
    monkeypatch.setattr(demo, "CIFAR_MD5", digest)
    cifar = demo.load_cifar10(target)
    assert calls == [demo.CIFAR_URL] * 2
    assert cifar["root"] == target / "cifar-10-batches-py" and cifar["train"][0].shape == (200, 3, 32, 32)
    demo.load_cifar10(target)  # extracted now: no third download
    assert len(calls) == 2


def test_a_damaged_copy_says_run_with_redownload_and_that_works(tmp_path, monkeypatch, capsys):
    src = tmp_path / "src"
    write_fake_cifar(src)
    data = tmp_path / "data"
    data.mkdir()
    monkeypatch.setattr(demo, "CIFAR_MD5", _tarball_of(src, data / "cifar-10-python.tar.gz"))
    downloads = []
    monkeypatch.setattr(demo, "_download", lambda url, dest: downloads.append(
        Path(dest).write_bytes((tmp_path / "kept.tar.gz").read_bytes())))
    shutil.copy(data / "cifar-10-python.tar.gz", tmp_path / "kept.tar.gz")
    args = [*SMOKE, "--parts", "sgdm", "--data-dir", str(data), "--out", str(tmp_path / "runs")]
    assert demo.main(args) == 0  # extracts the tarball
    batch3 = data / "cifar-10-batches-py" / "data_batch_3"
    original = batch3.read_bytes()
    truncated = "is not a valid CIFAR-10 pickle (UnpicklingError: pickle data was truncated)"
    for damage, says in ((lambda: batch3.write_bytes(original[:1000]), truncated),
                         (batch3.unlink, "is missing from the CIFAR-10 copy")):
        damage()
        capsys.readouterr()
        assert demo.main(args) == 2
        err = capsys.readouterr().err
        assert err.startswith(f"error: {batch3} {says}") and err.count("\n") == 1
        assert f"run again with --redownload, which deletes {batch3.parent} and extracts a fresh copy" in err
        assert demo.main([*args, "--redownload"]) == 0  # the advice works: from the tarball, no download
        assert f"--redownload: deleted {batch3.parent}" in capsys.readouterr().out
        assert batch3.read_bytes() == original and downloads == []
    (data / "cifar-10-python.tar.gz").unlink()
    batch3.write_bytes(b"")
    assert demo.main([*args, "--redownload"]) == 0  # no tarball: it is downloaded
    assert batch3.read_bytes() == original and len(downloads) == 1


def test_batches_directly_in_the_data_dir_are_not_deleted(tmp_path, capsys):
    root = write_fake_cifar(tmp_path)
    loose = tmp_path / "loose"
    shutil.copytree(root, loose)
    (loose / "test_batch").write_bytes(b"\x80\x02garbage")
    with pytest.raises(demo.DataError, match="replace it with the file of that name from a freshly extracted"):
        demo.load_cifar10(loose)
    args = [*SMOKE, "--data-dir", str(loose), "--out", str(tmp_path / "runs"), "--redownload"]
    assert demo.main(args) == 2
    assert capsys.readouterr().err == (f"error: --redownload replaces only {loose / 'cifar-10-batches-py'}, but the "
                                       f"batches lie directly in {loose}: replace them by hand, or pass --data-dir "
                                       "with another folder.\n")
    assert (loose / "data_batch_1").is_file()


# ---------------------------------------------------------------------------------------------------------
# Schedule and the study's hyperparameters
# ---------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("step, factor", [
    (1, (1 / 97) / 5),  # the first step already has a small lr (Myrtle counts the step first)
    (97, 1 / 5),
    (485, 1.0),  # epoch 5: the peak
    (486, (24 - 486 / 97) / 19),
    (1358, 10 / 19),  # epoch 14
    (2328, 0.0),  # the last step of 24 epochs
])
def test_lr_factor_at_known_steps(step, factor):
    assert demo.lr_factor(step, 97, 24) == pytest.approx(factor, abs=1e-12)


def _lrs(opt, sched, n):
    seen = []
    for _ in range(n):
        seen.append([g["lr"] for g in opt.param_groups])
        opt.step()
        sched.step()
    return seen


def test_sgd_optimizer_follows_the_schedule():
    model = demo.build("resnet9", 0.125)
    run = demo.Run("sgdm", "sgdm", "resnet9", "sgd", 0.4, 5e-4, 0.9, True, 0)
    opt, sched = demo.make_optimizer(model, run, steps_per_epoch=10, epochs=24)
    assert isinstance(opt, torch.optim.SGD) and len(opt.param_groups) == 2
    assert all(p.ndim == 4 for p in opt.param_groups[0]["params"]) and len(opt.param_groups[0]["params"]) == 8
    assert opt.param_groups[0]["nesterov"] and opt.param_groups[1]["weight_decay"] == 5e-4
    seen = _lrs(opt, sched, 60)
    for k in (1, 2, 50, 51, 60):  # peak at epoch 5 = step 50
        expected = 0.4 * np.interp(k / 10, [0, 5, 24], [0, 1, 0])
        assert seen[k - 1] == pytest.approx([expected, expected], abs=1e-12)


def test_sgd_equivalent_hand_computed():
    lr, wd = demo.sgd_equivalent(0.4, 5e-4, 0.9)
    assert lr == pytest.approx(4.0) and wd == pytest.approx(5e-4)
    assert lr * wd == pytest.approx(0.4 * 5e-4 / 0.1) and math.sqrt(2 * lr * wd) == pytest.approx(0.0632456, 1e-6)
    assert demo.sgd_equivalent(0.2, 1e-3, 0.8) == pytest.approx((1.0, 1e-3))


@pytest.mark.parametrize("nesterov", [False, True])
def test_momentum_applies_one_gradient_one_over_one_minus_rho_times(nesterov):
    """The premise of sgd_equivalent, checked on torch.optim.SGD: one gradient, then none, moves w by
    lr/(1−ρ)·g in total, the step plain SGD with lr/(1−ρ) takes at once."""
    w = torch.nn.Parameter(torch.zeros(3))
    opt = torch.optim.SGD([w], lr=0.4, momentum=0.9, nesterov=nesterov)
    w.grad = torch.tensor([1.0, -2.0, 0.5])
    opt.step()
    w.grad = torch.zeros(3)
    for _ in range(400):
        opt.step()
    assert torch.allclose(w.detach(), -4.0 * torch.tensor([1.0, -2.0, 0.5]), atol=1e-5)


def test_lars_lr_and_optimizer_hand_computed():
    assert demo.lars_lr(0.4, 5e-4, 0.9) == pytest.approx(math.sqrt(4e-5)) == pytest.approx(0.00632456, 1e-6)
    model = demo.build("resnet9", 0.125)
    run = demo.Run("lars", "lars", "resnet9", "lars", 0.4, 5e-4, 0.9, False, 0)
    opt, sched = demo.make_optimizer(model, run, steps_per_epoch=10, epochs=24)
    assert type(opt).__name__ == "LARS"
    convs, rest = opt.param_groups
    assert convs["lars"] is True and rest["lars"] is False
    assert convs["weight_decay"] == rest["weight_decay"] == 5e-4 and convs["momentum"] == rest["momentum"] == 0.9
    seen = _lrs(opt, sched, 60)
    for k in (1, 7, 50, 60):
        lam = 0.4 * np.interp(k / 10, [0, 5, 24], [0, 1, 0])
        assert seen[k - 1][0] == pytest.approx(math.sqrt(2 * lam * 5e-4 * (1 - 0.9)), abs=1e-12)
        assert seen[k - 1][1] == pytest.approx(lam, abs=1e-12)


# ---------------------------------------------------------------------------------------------------------
# Two-step smoke run of every part on CPU
# ---------------------------------------------------------------------------------------------------------

SMOKE = ["--preset", "cpu", "--device", "cpu", "--max-steps", "2", "--epochs", "2", "--width", "0.0625",
         "--subset", "100", "--test-subset", "0", "--batch-size", "25", "--lrs", "0.4,1.6", "--no-report"]
SWEEP = [f"{a}-lr{lr}-s0" for a in ("basic", "resnet9", "res_l1_l2_l3", "extra_l1_l2_l3") for lr in ("0.4", "1.6")]
# Issue 17's parts with the cpu preset's 2 seeds; large-batch at the smoke's batch 25 × 1 and × 4.
PART_RUNS = ([f"eqinit/{o}-{i}-s{s}" for s in (0, 1) for o in ("sgd", "lars") for i in ("default", "equilibrium")]
             + [f"large-batch/b{b}-{v}-s{s}" for s in (0, 1) for b in (25, 100) for v in ("sgd", "sgd-eqinit", "lars")]
             + [f"smooth/beta{b}-s{s}" for s in (0, 1) for b in ("0", "0.9")])


def _events(run_dir: Path) -> EventAccumulator:
    acc = EventAccumulator(str(run_dir), size_guidance={"scalars": 0, "tensors": 0})
    acc.Reload()
    return acc


@pytest.fixture(scope="module")
def smoke(fake_data, tmp_path_factory):
    out = tmp_path_factory.mktemp("study")
    args = [*SMOKE, "--data-dir", str(fake_data), "--out", str(out)]
    assert demo.main(args) == 0
    return out, args


def test_smoke_run_writes_every_run(smoke):
    out, _ = smoke
    main = [out / "sgdm", out / "sgd", out / "lars"]
    sweep = [out / "sweep" / name for name in SWEEP]
    parts = [out / name for name in PART_RUNS]
    assert sorted(p for p in out.rglob("result.json")) == sorted(d / "result.json" for d in main + sweep + parts)
    for d in main + sweep:
        result, config = json.loads((d / "result.json").read_text()), json.loads((d / "config.json").read_text())
        assert result["steps"] == 2 and 0 <= result["test_acc"] <= 1
        acc = _events(d)
        text = acc.Tensors("demo/config/text_summary")[0].tensor_proto.string_val[0].decode()
        assert json.loads(text) == config
        assert config["steps_per_epoch"] == 4 and config["train_images"] == 100 and config["test_images"] == 40
    for d in main:
        acc = _events(d)
        scalars = acc.Tags()["scalars"]
        assert json.loads((d / "result.json").read_text())["normwatch_layers"] == 8
        assert [e.step for e in acc.Scalars("train/loss")] == [0, 1]  # 0-based, as normwatch's steps
        assert {"train/acc", "test/acc", "lr"} <= set(scalars)
        normwatch_tags = [t for t in scalars if t.startswith("normwatch/")]
        assert normwatch_tags and acc.Scalars(normwatch_tags[0])[-1].step == 1
        assert [e.step for e in acc.Scalars("test/acc")] == [1]
        result = json.loads((d / "result.json").read_text())
        assert acc.Scalars("test/acc")[-1].value == pytest.approx(result["test_acc"])
    for d in sweep:  # accuracy only: one scalar, no normwatch
        acc = _events(d)
        result = json.loads((d / "result.json").read_text())
        assert result["normwatch_layers"] == 0 and acc.Tags()["scalars"] == ["sweep/test_acc"]
        assert [(e.step, e.value) for e in acc.Scalars("sweep/test_acc")] == [(1, pytest.approx(result["test_acc"]))]
    first_lr = 0.4 * np.interp(1 / 4, [0, 2 * 5 / 24, 2], [0, 1, 0])
    assert _events(out / "sgdm").Scalars("lr")[0].value == pytest.approx(first_lr, rel=1e-6)


# What `tensorboard --logdir <study>` draws, read back the way TensorBoard reads it.
LINES_PER_CHART = 8  # the README's bound: no chart draws more lines than this


def _tensorboard_charts(study: Path) -> dict[str, list[tuple[str, str, int]]]:
    """Every chart TensorBoard draws for a study directory, as (run, tag, points) per series. Scalars (and Time
    Series): one chart per scalar tag, one series per run holding it. Custom Scalars: the runs' layouts merged
    by category title as the plugin's layout_impl does, one series per (run, tag) whose tag re.match-es one
    of a Multiline chart's regexes, in every run (the plugin's scalars_impl)."""
    from tensorboard.plugins.custom_scalar import layout_pb2

    runs, charts, seen = {}, {}, set()
    for d in sorted({p.parent for p in study.rglob("events.out.tfevents.*")}):
        acc = _events(d)
        runs[d.relative_to(study).as_posix()] = (acc, {t: len(acc.Scalars(t)) for t in acc.Tags()["scalars"]})
    for name, (_, tags) in runs.items():
        for tag, points in tags.items():
            charts.setdefault(f"Scalars: {tag}", []).append((name, tag, points))
    for acc, _ in runs.values():
        if "custom_scalars__config__" not in acc.Tags()["tensors"]:
            continue
        layout = layout_pb2.Layout.FromString(acc.Tensors("custom_scalars__config__")[0].tensor_proto.string_val[0])
        for category in layout.category:
            for chart in category.chart:
                if (category.title, chart.SerializeToString()) in seen:
                    continue
                seen.add((category.title, chart.SerializeToString()))
                charts[f"Custom Scalars: {category.title} / {chart.title}"] = [
                    (name, tag, points) for name, (_, tags) in runs.items() for tag, points in tags.items()
                    if any(re.match(regex, tag) for regex in chart.multiline.tag)]
    return charts


def test_custom_layout_pairs_each_layers_metrics_and_nothing_else():
    from normwatch.tensorboard import custom_layout

    layout = custom_layout(["layer1.conv", "layer1"])
    assert list(layout) == ["normwatch: layer1.conv", "normwatch: layer1"]
    tags = [f"normwatch/{m}/{layer}" for m in ("shrink", "growth", "lars_ratio", "lars_theory", "angle",
                                               "angle_theory", "cos_wg", "w_norm2") for layer in
            ("layer1.conv", "layer1", "layer1xconv", "layer1.conv.x")]
    charts = layout["normwatch: layer1"]
    matched = {title: [t for t in tags if re.match(chart[1][0], t)] for title, chart in charts.items()}
    assert matched == {"shrink vs growth": ["normwatch/shrink/layer1", "normwatch/growth/layer1"],
                       "lars_ratio vs lars_theory": ["normwatch/lars_ratio/layer1", "normwatch/lars_theory/layer1"],
                       "angle vs angle_theory": ["normwatch/angle/layer1", "normwatch/angle_theory/layer1"]}


def test_the_study_in_tensorboard_has_no_chart_with_more_lines_than_the_bound(smoke):
    """Lines are series of two or more points; the one chart with more series than the bound is the HParams
    metric, one point per sweep run (read in the HParams tab)."""
    out, _ = smoke
    charts = _tensorboard_charts(out)
    custom = {title: series for title, series in charts.items() if title.startswith("Custom Scalars")}
    assert len(custom) == 8 * 3  # ResNet-9's eight conv layers × the seed's three superimposed charts
    # 2 tags × the 3 main runs, but the lars part's Nesterov LARS has no theory tags (normwatch derives them for
    # the seed's heavy-ball form only): its lars_ratio and angle are drawn alone.
    for title, series in custom.items():
        assert len(series) == (6 if title.endswith("shrink vs growth") else 5), title
    for title, series in charts.items():
        lines = [s for s in series if s[2] >= 2]
        assert len(lines) <= LINES_PER_CHART, (title, len(lines))
        if len(series) > LINES_PER_CHART:  # one point per run: the sweep's and issue 17's parts' final accuracies
            assert title in ("Scalars: sweep/test_acc", "Scalars: large-batch/test_acc")
            assert all(points == 1 for _, _, points in series)
    assert {name for name, _, _ in charts["Scalars: train/loss"]} == {"sgdm", "sgd", "lars"}
    assert len(charts["Scalars: sweep/test_acc"]) == len(SWEEP)


def test_the_sweep_is_an_hparams_experiment(smoke):
    from tensorboard.plugins.hparams import metadata

    out, _ = smoke
    for name in SWEEP:
        acc = _events(out / "sweep" / name)
        plugin = acc.PluginTagToContent(metadata.PLUGIN_NAME)
        assert set(plugin) == {metadata.EXPERIMENT_TAG, metadata.SESSION_START_INFO_TAG, metadata.SESSION_END_INFO_TAG}
        experiment = metadata.parse_experiment_plugin_data(plugin[metadata.EXPERIMENT_TAG])
        assert [m.name.tag for m in experiment.metric_infos] == ["sweep/test_acc"]
        assert {h.name for h in experiment.hparam_infos} == {"arch", "peak_lr", "seed"}
        start = metadata.parse_session_start_info_plugin_data(plugin[metadata.SESSION_START_INFO_TAG])
        arch, lr = name.split("-lr")[0], float(name.split("-lr")[1].split("-s")[0])
        assert (start.hparams["arch"].string_value, start.hparams["peak_lr"].number_value,
                start.hparams["seed"].number_value) == (arch, lr, 0)
        end = metadata.parse_session_end_info_plugin_data(plugin[metadata.SESSION_END_INFO_TAG])
        assert end.status == 1  # STATUS_SUCCESS


@pytest.mark.skipif(not (shutil.which("chromium") or shutil.which("chromium-browser")), reason="needs chromium")
def test_screenshot_script_shows_both_tabs_in_a_real_browser(smoke, tmp_path):
    """docs/screenshot.py on a study: TensorBoard served, headless Chromium, two rendered tabs."""
    from PIL import Image

    out, _ = smoke
    proc = subprocess.run([sys.executable, str(DEMO.parents[1] / "docs" / "screenshot.py"), str(out), "--out",
                           str(tmp_path), "--wait-ms", "8000"], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    pixels = {}
    for name in ("tensorboard.png", "tensorboard-hparams.png"):
        with Image.open(tmp_path / name) as image:
            assert image.size == (1600, 1000)
            rgb = image.convert("RGB")
            pixels[name] = rgb.tobytes()
            assert rgb.getpixel((5, 5)) == (245, 124, 0)  # TensorBoard's orange header: the page rendered
            assert len(rgb.getcolors(maxcolors=1 << 24)) > 100  # charts and tables, not a blank page
    assert pixels["tensorboard.png"] != pixels["tensorboard-hparams.png"]


def test_time_left_hand_computed():
    assert demo.time_left(60.0, 100, 50) == "about 30 s left"  # 0.6 s per step × 50 steps
    assert demo.time_left(300.0, 100, 300) == "about 15 min left"  # 3 s × 300 = 900 s
    assert demo.time_left(1.0, 1000, 10) == "about 1 s left"
    assert demo.time_left(5.0, 10, 0) == "no runs left"
    run = demo.Run("sweep", "x", "basic", "sgd", 0.4, 5e-4, 0.9, True, 0, epochs=3)
    assert demo.planned_steps(run, 97, 0) == 291 and demo.planned_steps(run, 97, 100) == 100


def test_each_run_ends_with_a_progress_line(smoke, capsys):
    out, args = smoke
    fresh = out.parent / "fresh"
    capsys.readouterr()
    assert demo.main([*[a if a != str(out) else str(fresh) for a in args], "--parts", "sgdm,sweep",
                      "--archs", "basic", "--lrs", "0.4"]) == 0
    lines = [line for line in capsys.readouterr().out.splitlines() if line.startswith("[") and "left" in line]
    assert len(lines) == 2
    assert re.fullmatch(rf"\[1/2\] {re.escape(str(fresh / 'sgdm'))}: test acc [01]\.\d{{4}} in \d+ s; "
                        r"about \d+ s left", lines[0]), lines[0]
    assert lines[1].startswith(f"[2/2] {fresh / 'sweep' / 'basic-lr0.4-s0'}: ") and lines[1].endswith("no runs left")


def test_smoke_run_configs_of_the_parts(smoke):
    out, _ = smoke

    def config(part):
        return json.loads((out / part / "config.json").read_text())

    sgdm, sgd, lars = config("sgdm"), config("sgd"), config("lars")
    assert (sgdm["optimizer"], sgdm["peak_lr"], sgdm["momentum"], sgdm["nesterov"]) == ("sgd", 0.4, 0.9, True)
    assert (sgd["optimizer"], sgd["momentum"], sgd["nesterov"]) == ("sgd", 0.0, False)
    assert sgd["peak_lr"] == pytest.approx(4.0) and sgd["weight_decay"] == pytest.approx(5e-4)
    assert lars["optimizer"] == "lars" and lars["lars_peak_lr"] == pytest.approx(math.sqrt(4e-5))
    lars_lr = _events(out / "lars").Scalars("lr")[0].value  # the conv group's actual lr
    assert lars_lr == pytest.approx(math.sqrt(2 * 0.4 * np.interp(1 / 4, [0, 10 / 24, 2], [0, 1, 0]) * 5e-5), 1e-6)
    sweep = json.loads((out / "sweep" / "extra_l1_l2_l3-lr1.6-s0" / "config.json").read_text())
    assert (sweep["arch"], sweep["peak_lr"], sweep["nesterov"]) == ("extra_l1_l2_l3", 1.6, True)
    assert (sgdm["epochs"], sweep["epochs"]) == (2, 3)  # --epochs 2; the cpu preset's 3 sweep epochs
    for key in ("part", "arch", "peak_lr", "weight_decay", "momentum", "nesterov", "optimizer", "lars_lr",
                "epochs", "batch_size", "seed", "preset", "width"):
        assert key in sgdm


def test_rerun_skips_finished_runs_and_redoes_unfinished_ones(smoke, capsys):
    out, args = smoke
    stamps = {p: p.stat().st_mtime_ns for p in out.rglob("result.json")}
    capsys.readouterr()
    assert demo.main(args) == 0
    assert {p: p.stat().st_mtime_ns for p in out.rglob("result.json")} == stamps
    assert capsys.readouterr().out.count("skipped") == len(stamps)
    (out / "sgd" / "result.json").unlink()  # as if Ctrl-C had hit during this run
    assert demo.main([*args, "--parts", "sgd"]) == 0
    assert json.loads((out / "sgd" / "result.json").read_text())["steps"] == 2
    assert len(list((out / "sgd").glob("events.out.tfevents.*"))) == 1  # the old events were removed
    with pytest.raises(SystemExit, match="another config"):
        demo.main([*args, "--parts", "sgdm", "--seed", "0", "--width", "0.125"])


def test_report_is_called_with_every_run_dir(smoke, monkeypatch, capsys):
    out, args = smoke
    calls = []

    def fake_report(run_dirs, dest):
        calls.append((list(run_dirs), dest))
        return dest / "index.html"

    args = [a for a in args if a != "--no-report"]
    monkeypatch.setattr(demo, "write_report", fake_report)
    assert demo.main([*args, "--parts", "sgdm,lars"]) == 0
    assert calls == [([out / "sgdm", out / "lars"], out / "report")]

    def needs_matplotlib(run_dirs, dest):
        raise ImportError("No module named 'matplotlib'")

    monkeypatch.setattr(demo, "write_report", needs_matplotlib)
    assert demo.main([*args, "--parts", "sgdm"]) == 0
    assert "report: skipped" in capsys.readouterr().out
    monkeypatch.setattr(demo, "write_report", None)
    assert demo.main([*args, "--parts", "sgdm"]) == 0


# ---------------------------------------------------------------------------------------------------------
# Bad command lines: one line on stderr that names the flag, exit status 2, no traceback
# ---------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("argv, says", [
    (["--lrs", "0.1,abc"], "argument --lrs: 'abc' is not a number > 0"),
    (["--lrs", "0.1,-0.2"], "argument --lrs: '-0.2' is not a number > 0"),
    (["--lrs", "0.4,0.4"], "argument --lrs: '0.4,0.4' names a learning rate twice"),
    (["--batch-size", "0"], "argument --batch-size: expected a whole number ≥ 1, got '0'"),
    (["--epochs", "0"], "argument --epochs: expected a whole number ≥ 1, got '0'"),
    (["--epochs", "two"], "argument --epochs: expected a whole number ≥ 1, got 'two'"),
    (["--seeds", "0"], "argument --seeds: expected a whole number ≥ 1"),
    (["--every", "0"], "argument --every: expected a whole number ≥ 1"),
    (["--max-steps", "-1"], "argument --max-steps: expected a whole number ≥ 0"),
    (["--subset", "-5"], "argument --subset: expected a whole number ≥ 0"),
    (["--width", "0"], "argument --width: expected a number > 0, got '0'"),
    (["--width", "nan"], "argument --width: expected a number > 0, got 'nan'"),
    (["--parts", "sgdm,adam"],
     "argument --parts: unknown part 'adam': pick from sgdm,sgd,lars,sweep,eqinit,large-batch,smooth"),
    (["--parts", ","], "argument --parts: no part in ','"),
    (["--archs", "resnet50"], "argument --archs: unknown architecture 'resnet50'"),
    (["--device", "tpu"], "argument --device: 'tpu' is not a device torch knows"),
    (["--preset", "huge"], "argument --preset: invalid choice: 'huge'"),
    (["--frobnicate"], "unrecognized arguments: --frobnicate"),
    (["--data-dir", "/nonexistent/cifar"], "--data-dir /nonexistent/cifar is not a folder"),
])
def test_a_bad_flag_is_one_line_and_exit_2(argv, says, capsys):
    with pytest.raises(SystemExit) as exit_:
        demo.main(argv)
    err = capsys.readouterr().err
    assert exit_.value.code == 2 and says in err
    assert err.count("\n") == 1 and err.startswith("train_resnet.py: error: ") and "Traceback" not in err


def test_an_out_path_that_is_a_file_is_refused(tmp_path, capsys):
    (tmp_path / "f").write_text("")
    with pytest.raises(SystemExit):
        demo.parse_args(["--out", str(tmp_path / "f")])
    assert f"--out {tmp_path / 'f'} is a file" in capsys.readouterr().err


def test_the_default_data_dir_may_be_missing_others_not(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # no data/ here: it is where the download goes
    assert demo.parse_args([])[0].data_dir == "data"
    assert demo.parse_args(["--data-dir", "data/"])[0].data_dir == "data"
    (tmp_path / "mine").mkdir()
    assert demo.parse_args(["--data-dir", "mine"])[0].data_dir == "mine"  # an empty folder: downloaded into


def test_sizes_the_data_cannot_give_are_one_sentence(tmp_path, capsys):
    write_fake_cifar(tmp_path / "data")  # 200 training images, 20 per class...
    batch = pickle.loads((tmp_path / "data" / "cifar-10-batches-py" / "data_batch_1").read_bytes())
    batch[b"labels"] = [0] * 40  # ...now 56 of class 0 and 16 of each other class
    _dump(batch, tmp_path / "data" / "cifar-10-batches-py" / "data_batch_1")
    args = [*SMOKE, "--data-dir", str(tmp_path / "data"), "--out", str(tmp_path / "runs")]
    assert demo.main([*args, "--batch-size", "500"]) == 2
    assert capsys.readouterr().err == ("error: --batch-size 500 is more than the 100 training images, so an epoch "
                                       "would have no step: lower --batch-size or raise --subset.\n")
    assert demo.main([*args, "--subset", "190"]) == 2
    assert capsys.readouterr().err == ("error: a class-balanced subset of 190 images needs at least 19 images of "
                                       "class 1, but the data has 16: lower --subset or --test-subset.\n")
    assert not (tmp_path / "runs").exists()


def test_the_real_command_line_shows_no_traceback(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(DEMO.parents[1])}
    for argv in (["--lrs", "0.1,abc"], ["--batch-size", "0"], ["--epochs", "0"], ["--frobnicate"]):
        proc = subprocess.run([sys.executable, str(DEMO), *argv], capture_output=True, text=True, env=env,
                              cwd=tmp_path, timeout=120)
        assert proc.returncode == 2 and proc.stdout == "" and len(proc.stderr.splitlines()) == 1, proc.stderr
        assert argv[0] in proc.stderr and "Traceback" not in proc.stderr


def test_official_pickle_keys_may_also_be_str(tmp_path):
    root = write_fake_cifar(tmp_path)
    batch = pickle.loads((root / "test_batch").read_bytes())
    (root / "test_batch").write_bytes(pickle.dumps({k.decode(): v for k, v in batch.items()}, protocol=2))
    assert demo.load_cifar10(tmp_path)["test"][1].tolist() == [j % 10 for j in range(40)]



@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the defaults of a machine without CUDA")
def test_without_cuda_the_cpu_preset_is_the_default(capsys):
    cfg, why = demo.parse_args([])
    assert (cfg.preset, cfg.device, cfg.out) == ("cpu", "cpu", "runs/cpu") and "without CUDA" in why
    assert (cfg.width, cfg.batch_size, cfg.epochs, cfg.sweep_epochs, cfg.subset) == (0.125, 128, 20, 3, 12_500)
    assert 12_500 // 128 == 97 == 50_000 // 512  # the cpu preset keeps the recipe's 97 steps per epoch
    full = demo.parse_args(["--preset", "full"])[0]
    assert (full.width, full.batch_size, full.epochs, full.subset, full.seeds) == (1.0, 512, 24, 0, 3)
    assert demo.parse_args(["--preset", "cpu", "--epochs", "3"])[0].epochs == 3  # flags override presets
    with pytest.raises(SystemExit):
        demo.parse_args(["--device", "cuda"])
    assert "no CUDA device" in capsys.readouterr().err


# ---------------------------------------------------------------------------------------------------------
# torchrun: two CPU processes (gloo). SyncBatchNorm needs CUDA, so here each process's BatchNorm normalises
# over its half of every global batch; the single-process reference below does exactly that by hand.
# ---------------------------------------------------------------------------------------------------------
TORCHRUN = ["--preset", "cpu", "--device", "cpu", "--max-steps", "3", "--epochs", "2", "--width", "0.0625",
            "--subset", "120", "--test-subset", "0", "--batch-size", "20", "--parts", "sgdm", "--no-report"]


def _reference_history(fake_data: Path, steps: int) -> tuple[dict, list[float]]:
    """normwatch's history and the losses of one process that forwards each half of every global batch
    separately (as two ranks with their own BatchNorm do) and steps on the mean of the two halves' losses."""
    cfg, _ = demo.parse_args([*TORCHRUN, "--data-dir", str(fake_data)])
    run, _ = demo.plan(cfg)[0]
    data = demo.DeviceData(demo.load_cifar10(fake_data), torch.device("cpu"), cfg.subset, cfg.test_subset)
    steps_per_epoch = len(data.train_y) // cfg.batch_size
    torch.manual_seed(run.seed)
    gen = torch.Generator().manual_seed(run.seed)
    model = demo.build(run.arch, cfg.width).to(memory_format=torch.channels_last)
    opt, sched = demo.make_optimizer(model, run, steps_per_epoch, run.epochs)
    xs, ys = data.epoch(gen, cfg.cutout)
    losses = []
    with normwatch.attach(model, opt, logdir=str(fake_data / "reference"), keep_history=True) as watch:
        for i in range(steps):
            x, y = xs[i * cfg.batch_size:(i + 1) * cfg.batch_size], ys[i * cfg.batch_size:(i + 1) * cfg.batch_size]
            halves = [torch.nn.functional.cross_entropy(model(xh.contiguous(memory_format=torch.channels_last)), yh)
                      for xh, yh in zip(x.chunk(2), y.chunk(2))]
            loss = (halves[0] + halves[1]) / 2
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            losses.append(loss.item())
    return watch.history, losses


def _torchrun(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(DEMO.parents[1])}
    return subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                           str(DEMO), *TORCHRUN, *args], capture_output=True, text=True, env=env, timeout=300)


def test_torchrun_two_processes_train_on_halves_of_the_same_global_batches(fake_data, tmp_path):
    out = tmp_path / "study"
    proc = _torchrun("--data-dir", str(fake_data), "--out", str(out))
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.count("== sgdm") == 1  # rank 0 alone prints
    assert "× 2 processes (10 images each)" in proc.stdout and "SyncBatchNorm needs CUDA" in proc.stdout
    assert len(list(out.rglob("events.out.tfevents.*"))) == 1  # rank 0 alone writes
    result, config = (json.loads((out / "sgdm" / f).read_text()) for f in ("result.json", "config.json"))
    assert result["steps"] == 3 and (config["ranks"], config["batch_size"]) == (2, 20)
    assert config["bn_statistics"] == "each rank's share of the batch"

    expected, losses = _reference_history(fake_data, steps=3)
    acc = _events(out / "sgdm")
    got = {tag: [(e.step, e.value) for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}
    assert [v for _, v in got["train/loss"]] == pytest.approx(losses, rel=1e-5)
    assert_same_history(got, expected, rel=1e-4, abs=1e-6)

    (out / "sgdm" / "result.json").rename(out / "done.json")  # as if interrupted: rank 0 removes the run
    proc = _torchrun("--data-dir", str(fake_data), "--out", str(out), "--parts", "sgdm,lars")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.count("removing the unfinished run") == 1
    (out / "sgdm" / "result.json").unlink()
    (out / "done.json").rename(out / "sgdm" / "result.json")
    stamps = {p: p.stat().st_mtime_ns for p in out.rglob("result.json")}
    proc = _torchrun("--data-dir", str(fake_data), "--out", str(out), "--parts", "sgdm,lars")  # all finished
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.count("skipped") == 2 and {p: p.stat().st_mtime_ns for p in out.rglob("result.json")} == stamps
