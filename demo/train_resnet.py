"""Myrtle's ResNet-9 on CIFAR-10 with normwatch attached: the study of "How to Train Your ResNet 6".

One file, read top to bottom: Config → Data → Model → Optimizers and the study's hyperparameters →
normwatch wiring, training and evaluation → Study → Command line.

    python demo/train_resnet.py                          # the whole study; the preset follows the hardware
    python demo/train_resnet.py --parts sgdm,lars        # some parts, of sgdm, sgd, lars, sweep, eqinit,
                                                         # large-batch, smooth
    python demo/train_resnet.py --preset full --compile  # on a GPU
    python demo/train_resnet.py --parts sweep --seeds 3  # the post averaged three runs per point
    torchrun --nproc_per_node=4 demo/train_resnet.py     # DDP: each GPU a quarter of every batch of 512
    tensorboard --logdir runs/

Notation, as in normwatch: η the learning rate, λ the weight decay, μ the momentum. The seed (Myrtle's post)
writes λ, α and ρ for these three.

Each run is a TensorBoard run directory, runs/<study>/<part>/ or runs/<study>/sweep/<arch>-lr<peak>-s<seed>/,
with config.json and result.json (written last: it marks a finished run, which a rerun skips). The three main
runs (sgdm, sgd, lars) hold normwatch's `normwatch/<metric>/<layer>` tags, `train/loss`, `train/acc`,
`test/acc` (fractions), `lr` (the actual lr of the conv-weight group) and the run's hyperparameters as the text
`demo/config`. The x axis is the 0-based optimizer step, as normwatch's: the values at t belong to the update
w_t → w_t+1, and test/acc at t is measured after it. A sweep run measures accuracy only: it holds an HParams
session (architecture, peak η, seed) and one scalar, `sweep/test_acc`, its final test accuracy, so that
TensorBoard's HParams tab shows the sweep and its other tabs only the three main runs.

Issue 17's parts (eqinit, large-batch, smooth; see experiment_runs) live in runs/<study>/<part>/<name>/, with
normwatch's curves in curves.json (read by the report) and only `<part>/test_acc` in TensorBoard.

Measured before those parts existed (and with heavy-ball LARS in the lars part), cpu preset (the default
without CUDA), 2-core AMD EPYC VMs, the JPEG CIFAR-10 copy from
shared/data/make_cifar10.py (1,000 test images): the whole study, 23 runs and the report, took 7 min 23 s
with torch 2.13.0+cpu on an idle machine (test acc sgdm 0.780, sgd 0.762, lars 0.776; sweep, 3 epochs each,
0.45–0.61), and 45 min 16 s with OMP_NUM_THREADS=1 on one shared with other jobs (load 4–10; sgdm 0.783,
sgd 0.766, lars 0.783). There torch's default two threads made an epoch 4–7× slower than one thread, and
torch 2.14.1+cu130 was as fast as 2.13.0 within the spread (README, "The demo", has the table). normwatch's
report finds the equilibrium window at steps 840–1062 of sgdm and sgd.
Under `torchrun --nproc_per_node=2` on the same CPU (gloo, each process's BatchNorm over its 64 images),
the sgdm part reached 0.772 in 82 s.
Not measured yet: the full and quick presets and the whole CUDA path (bf16 autocast, channels_last,
--compile); no GPU was available. The target there is 24 epochs in ≤ 20 s on an H100 and ≥ 94.0% median.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import hashlib
import json
import math
import os
import pickle
import shutil
import sys
import tarfile
import time
import urllib.request
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import NoReturn

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.tensorboard import SummaryWriter
from torch.utils.tensorboard.summary import hparams

import normwatch
from normwatch import theory
from normwatch.optim import LARS

try:
    from normwatch.report import write_report
except ImportError:  # the report is optional
    write_report = None

##############################################################################################################
#                                                   Config                                                   #
##############################################################################################################

PARTS = ("sgdm", "sgd", "lars", "sweep", "eqinit", "large-batch", "smooth")
# Issue 17's parts. Their runs live in <study>/<part>/<name>/; normwatch's curves of each go to its curves.json
# (which the report reads) and TensorBoard gets only the run's final accuracy, <part>/test_acc, so that no
# TensorBoard chart draws more than 8 lines.
EXPERIMENTS = ("eqinit", "large-batch", "smooth")


@dataclass
class Config:
    preset: str = "full"  # full | quick | cpu: sets the fields PRESETS names, unless flags do
    parts: tuple[str, ...] = PARTS  # which parts of the study to run, in this order
    # data
    data_dir: str = "data"  # holds cifar-10-batches-py/ (or gets the official tarball extracted into it)
    redownload: bool = False  # delete data_dir/cifar-10-batches-py first and extract or download it afresh
    subset: int = 0  # training images, a class-balanced prefix; 0 = all 50,000
    test_subset: int = 0  # test images, a class-balanced prefix; 0 = all 10,000
    # model
    width: float = 1.0  # channel multiplier: 1.0 = 64/128/256/512 channels (ResNet-9: 6,573,120 params)
    # recipe (Myrtle's; the loss is the batch mean instead of the sum, see make_optimizer)
    epochs: int = 24
    sweep_epochs: int = 0  # epochs of each sweep run; 0 = epochs
    batch_size: int = 512  # the last partial batch of an epoch is dropped, as Myrtle: 97 steps per epoch
    peak_lr: float = 0.4  # η is piecewise linear 0 → peak → 0, the peak at 5/24 of the run (epoch 5 of 24)
    momentum: float = 0.9  # μ, Nesterov
    weight_decay: float = 5e-4  # λ: L2 on every parameter (conv, BN scale and shift, classifier), as Myrtle
    cutout: int = 8  # side of the zeroed square, pixels
    # study
    lrs: tuple[float, ...] = (0.1, 0.2, 0.4, 0.8, 1.6)  # sweep grid of peak η: my choice, ×2 around 0.4
    archs: tuple[str, ...] = ("basic", "resnet9", "res_l1_l2_l3", "extra_l1_l2_l3")  # sweep architectures
    seeds: int = 3  # sweep repeats per point (seeds seed, seed+1, ...); the post averaged three
    seed: int = 0
    part_epochs: int = 0  # epochs of each eqinit, large-batch and smooth run; 0 = epochs
    part_seeds: int = 3  # seeds of each eqinit, large-batch and smooth point
    batch_factors: tuple[int, ...] = (1, 4, 16)  # large-batch: batch_size × these (512 → 8192)
    smooth_beta: float = 0.9  # smooth: β of LARS's exponential average of |g| (grad_norm_beta)
    # machinery
    device: str = "cuda"
    compile: bool = False  # torch.compile the model (the optimizer step and normwatch's hooks stay eager)
    every: int = 1  # normwatch computes its statistics every N optimizer steps
    fused_stats: bool = False  # normwatch computes them with torch.compile (fewer kernels; compiles at step 1)
    max_steps: int = 0  # stop each run after N optimizer steps (smoke tests); 0 = no limit
    out: str = ""  # study directory; default runs/<preset>
    report: bool = True  # render normwatch's report into <out>/report when normwatch.report is importable
    # torchrun: set by setup_distributed
    rank: int = 0  # this process's global rank; rank 0 alone prints and writes
    world: int = 1  # processes; each trains on batch_size/world images of every global batch
    sync_bn: bool = True  # with several CUDA processes, SyncBatchNorm: BN sees the global batch, as on one GPU


# The cpu preset keeps the study's structure (all four parts, the whole sweep grid) and shrinks it to fit
# in 10 minutes on 2 CPU cores: a 1/8-width net (8/16/32/64 channels) on a class-balanced subset. It keeps
# the recipe's per-step dynamics: batch 128 with the same η, λ and μ (which is what Myrtle's code, lr/batch_size
# on a summed loss and wd·batch_size, gives for batch_size=128) and 12,500 images, so an epoch is 97 steps as
# in the full recipe. Then ηλ per step, and so the time to weight-norm equilibrium (≈125 steps at the peak),
# are the full recipe's, and parts 1–3 (20 epochs, 1,940 steps) reach equilibrium, which batch 512 on a CPU
# budget would not. Each sweep run gets 3 epochs.
# Accuracies say little about the full recipe's; the normwatch curves show the same mechanisms.
# Issue 17's parts on the cpu preset: 4 epochs a run, 2 seeds a point, batch 128 and 512 for large-batch
# (24 runs, 96 epochs).
PRESETS = {
    "full": dict(width=1.0, epochs=24, sweep_epochs=0, batch_size=512, subset=0, test_subset=0, seeds=3,
                 part_epochs=0, part_seeds=3, batch_factors=(1, 4, 16)),
    "quick": dict(width=1.0, epochs=10, sweep_epochs=0, batch_size=512, subset=0, test_subset=0, seeds=1,
                  part_epochs=0, part_seeds=1, batch_factors=(1, 4)),
    "cpu": dict(width=0.125, epochs=20, sweep_epochs=3, batch_size=128, subset=12_500, test_subset=1_000,
                seeds=1, part_epochs=4, part_seeds=2, batch_factors=(1, 4)),
}

##############################################################################################################
#                                                    Data                                                    #
##############################################################################################################

CIFAR_URL = "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"
CIFAR_MD5 = "c58f30108f718f92721af3b95e74349a"  # of the tarball; extracted batches are checked by shape
CIFAR_DIR = "cifar-10-batches-py"
TARBALL = "cifar-10-python.tar.gz"
TRAIN_FILES = tuple(f"data_batch_{i}" for i in range(1, 6))
TEST_FILE = "test_batch"
META_FILE = "batches.meta"
MEAN = (125.31, 122.95, 113.87)  # per channel, 0–255 scale (Myrtle's cifar10_mean, cifar10_std)
STD = (62.99, 62.09, 66.70)


class DataError(RuntimeError):
    """Missing, corrupt or undownloadable CIFAR-10; the message is one sentence that names the fix."""


def _download(url: str, dest: Path) -> None:
    urllib.request.urlretrieve(url, dest)


def _md5(path: Path) -> str:
    h = hashlib.md5()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def find_cifar10(data_dir: str | Path) -> Path:
    """The extracted batches: data_dir/cifar-10-batches-py, or data_dir itself if the batches are in it;
    otherwise download the official tarball into data_dir (unless it is there), check its md5 and extract it."""
    data_dir = Path(data_dir)
    if (data_dir / CIFAR_DIR).is_dir():
        return data_dir / CIFAR_DIR
    if (data_dir / TRAIN_FILES[0]).is_file():
        return data_dir
    tarball = data_dir / TARBALL
    if not tarball.is_file():
        print(f"downloading {CIFAR_URL} into {data_dir}/ (163 MB)")
        partial = data_dir / f"{TARBALL}.part"
        try:
            data_dir.mkdir(parents=True, exist_ok=True)
            _download(CIFAR_URL, partial)
        except OSError as e:  # URLError and socket errors are OSErrors
            partial.unlink(missing_ok=True)
            raise DataError(
                f"CIFAR-10 is not in {data_dir / CIFAR_DIR} and {CIFAR_URL} could not be downloaded ({e}), "
                f"so download that file elsewhere and extract it into {data_dir}/, which gives "
                f"{data_dir / CIFAR_DIR}/data_batch_1 … test_batch (or pass --data-dir with the folder "
                f"that holds {CIFAR_DIR})."
            ) from None
        partial.rename(tarball)
    digest = _md5(tarball)
    if digest != CIFAR_MD5:
        tarball.unlink()
        raise DataError(f"{tarball} has md5 {digest} instead of {CIFAR_MD5}, so it was deleted: run again "
                        f"to download it again.")
    with tarfile.open(tarball, "r:gz") as tar:
        tar.extractall(data_dir, filter="data")  # the "data" filter refuses absolute paths and links out
    print(f"extracted {tarball} (md5 ok) into {data_dir / CIFAR_DIR}")
    return data_dir / CIFAR_DIR


def discard_extracted(data_dir: str | Path) -> Path:
    """--redownload: delete the extracted batches folder, data_dir/cifar-10-batches-py (or data_dir itself when
    that is the folder), and return the folder find_cifar10 extracts a fresh copy into: from a tarball there
    whose md5 is right, else downloaded."""
    data_dir = Path(data_dir)
    parent = data_dir.parent if data_dir.name == CIFAR_DIR else data_dir
    folder = parent / CIFAR_DIR
    if folder.is_dir():
        shutil.rmtree(folder)
        print(f"--redownload: deleted {folder}")
    elif (data_dir / TRAIN_FILES[0]).is_file():
        raise DataError(f"--redownload replaces only {folder}, but the batches lie directly in {data_dir}: "
                        f"replace them by hand, or pass --data-dir with another folder.")
    return parent


def _fix(root: Path) -> str:
    """The advice for a damaged copy of the batches in root."""
    if root.name == CIFAR_DIR:
        return (f"run again with --redownload, which deletes {root} and extracts a fresh copy (from "
                f"{root.parent / TARBALL} if its md5 is right, else downloading it)")
    return "replace it with the file of that name from a freshly extracted copy of the official tarball"


def _read_batch(path: Path) -> dict:
    """One pickled batch with str keys (the official files are Python 2 pickles, whose str keys come back
    as bytes under encoding='bytes')."""
    if not path.is_file():
        raise DataError(f"{path} is missing from the CIFAR-10 copy in {path.parent}: {_fix(path.parent)}.")
    try:
        with open(path, "rb") as f:
            d = pickle.load(f, encoding="bytes")
        return {k.decode() if isinstance(k, bytes) else k: v for k, v in d.items()}
    except Exception as e:
        raise DataError(f"{path} is not a valid CIFAR-10 pickle ({type(e).__name__}: {e}): "
                        f"{_fix(path.parent)}.") from None


def _images_and_labels(path: Path) -> tuple[np.ndarray, np.ndarray]:
    d = _read_batch(path)
    x, y = np.asarray(d.get("data")), np.asarray(d.get("labels"))
    problem = None
    if x.dtype != np.uint8 or x.ndim != 2 or x.shape[1] != 3 * 32 * 32:
        problem = f"'data' should be uint8 of shape (N, 3072), not {x.dtype} {x.shape}"
    elif y.shape != (x.shape[0],) or not np.issubdtype(y.dtype, np.integer):
        problem = f"'labels' should be {x.shape[0]} ints, not {y.dtype} {y.shape}"
    elif y.size and (y.min() < 0 or y.max() > 9):
        problem = f"labels should lie in 0..9, not {y.min()}..{y.max()}"
    if problem:
        raise DataError(f"{path} is not a valid CIFAR-10 batch ({problem}): {_fix(path.parent)}.")
    return x.reshape(-1, 3, 32, 32), y.astype(np.int64)  # a row is the R plane, G plane, B plane


def load_cifar10(data_dir: str | Path) -> dict:
    """{'train': (x, y), 'test': (x, y), 'classes', 'root'}; x uint8 (N, 3, 32, 32), y int64 (N,), CPU."""
    root = find_cifar10(data_dir)
    meta = _read_batch(root / META_FILE)
    classes = [c.decode() if isinstance(c, bytes) else str(c) for c in meta.get("label_names", [])]
    if len(classes) != 10:
        raise DataError(f"{root / META_FILE} should name 10 classes, not {len(classes)}: {_fix(root)}.")
    batches = [_images_and_labels(root / name) for name in TRAIN_FILES]
    x_train, y_train = np.concatenate([b[0] for b in batches]), np.concatenate([b[1] for b in batches])
    x_test, y_test = _images_and_labels(root / TEST_FILE)
    for split, y in (("training", y_train), ("test", y_test)):
        if len(np.unique(y)) != 10:
            raise DataError(f"the {split} batches in {root} do not hold all 10 classes: {_fix(root)}.")
    t = torch.from_numpy
    return dict(train=(t(x_train), t(y_train)), test=(t(x_test), t(y_test)), classes=classes, root=root)


def balanced_subset(labels: torch.Tensor, n: int) -> torch.Tensor:
    """Indices of the first n // 10 images of each class in file order; all indices if n is 0 or ≥ len."""
    if n <= 0 or n >= len(labels):
        return torch.arange(len(labels))
    per_class, picks = n // 10, []
    for c in range(10):
        idx = torch.nonzero(labels == c).flatten()
        if len(idx) < per_class:
            raise ValueError(f"a class-balanced subset of {n} images needs at least {per_class} images of "
                             f"class {c}, but the data has {len(idx)}: lower --subset or --test-subset.")
        picks.append(idx[:per_class])
    return torch.cat(picks).sort().values


def normalise(x: torch.Tensor) -> torch.Tensor:
    """uint8 (N, 3, H, W) → float32, standardised per channel with CIFAR-10's mean and std."""
    mean = torch.tensor(MEAN, device=x.device).view(1, 3, 1, 1)
    std = torch.tensor(STD, device=x.device).view(1, 3, 1, 1)
    return (x.float() - mean) / std


def augment(x_padded: torch.Tensor, gen: torch.Generator, crop: int = 32, cutout: int = 8) -> torch.Tensor:
    """Myrtle's augmentation for a whole epoch at once, on x's device: (N, C, crop+2p, crop+2p) → (N, C,
    crop, crop). A random crop (every offset equally likely), a horizontal flip with p = 1/2, then a
    cutout×cutout square set to 0 (the mean: it comes after normalisation) that lies fully inside the image.
    All random numbers are drawn in bulk from `gen`; crop and flip are one gather, no per-image Python."""
    n, c, hp, wp = x_padded.shape
    dev = x_padded.device
    dy = torch.randint(0, hp - crop + 1, (n,), generator=gen, device=dev)
    dx = torch.randint(0, wp - crop + 1, (n,), generator=gen, device=dev)
    flip = torch.rand(n, generator=gen, device=dev) < 0.5
    ar = torch.arange(crop, device=dev)
    rows = dy[:, None] + ar  # (N, crop)
    cols = dx[:, None] + torch.where(flip[:, None], crop - 1 - ar, ar)  # (N, crop), reversed when flipped
    n_idx = torch.arange(n, device=dev)[:, None, None, None]
    c_idx = torch.arange(c, device=dev)[None, :, None, None]
    out = x_padded[n_idx, c_idx, rows[:, None, :, None], cols[:, None, None, :]]  # (N, C, crop, crop)
    if cutout:
        y0 = torch.randint(0, crop - cutout + 1, (n, 1), generator=gen, device=dev)
        x0 = torch.randint(0, crop - cutout + 1, (n, 1), generator=gen, device=dev)
        in_rows = (ar >= y0) & (ar < y0 + cutout)  # (N, crop)
        in_cols = (ar >= x0) & (ar < x0 + cutout)
        out = out.masked_fill(in_rows[:, None, :, None] & in_cols[:, None, None, :], 0.0)
    return out


class DeviceData:
    """The dataset (or its subset) on the device: training images normalised and reflect-padded by 4 once
    (Myrtle: np.pad(mode='reflect')), test images normalised."""

    def __init__(self, cifar: dict, device: torch.device, subset: int = 0, test_subset: int = 0):
        (x, y), (xt, yt) = cifar["train"], cifar["test"]
        i, it = balanced_subset(y, subset), balanced_subset(yt, test_subset)
        self.train_x = F.pad(normalise(x[i].to(device)), (4, 4, 4, 4), mode="reflect")  # (N, 3, 40, 40)
        self.train_y = y[i].to(device)
        self.test_x = normalise(xt[it].to(device))  # (M, 3, 32, 32)
        self.test_y = yt[it].to(device)

    def epoch(self, gen: torch.Generator, cutout: int) -> tuple[torch.Tensor, torch.Tensor]:
        """A shuffled, freshly augmented copy of the training set, for one epoch."""
        perm = torch.randperm(len(self.train_y), generator=gen, device=self.train_y.device)
        return augment(self.train_x[perm], gen, cutout=cutout), self.train_y[perm]


##############################################################################################################
#                                                   Model                                                    #
##############################################################################################################

# Myrtle's DAWNBench net (cifar10-fast dawn_utils.py: net, conv_bn, residual). The part-4 family is one
# function: the basic net (prep, then three conv-bn-relu-pool layers) plus, after the pool of layer k, an
# "extra" conv_bn or a "residual" block of two conv_bns. Residual: L1+L3 is ResNet-9.
ARCHS = {
    "basic": dict(extra_layers=(), res_layers=(), label="basic net"),
    "resnet9": dict(extra_layers=(), res_layers=("layer1", "layer3"), label="Residual: L1+L3 (ResNet-9)"),
    "res_l1_l2_l3": dict(extra_layers=(), res_layers=("layer1", "layer2", "layer3"),
                         label="Residual: L1+L2+L3"),
    "extra_l1_l2_l3": dict(extra_layers=("layer1", "layer2", "layer3"), res_layers=(),
                           label="Extra: L1+L2+L3"),
}


def conv_bn(c_in: int, c_out: int, pool: bool = False) -> nn.Sequential:
    # BatchNorm2d's defaults are Myrtle's: eps 1e-5, momentum 0.1, scale 1, shift 0. Pooling follows the ReLU.
    layers = OrderedDict(conv=nn.Conv2d(c_in, c_out, 3, padding=1, bias=False), bn=nn.BatchNorm2d(c_out),
                         relu=nn.ReLU(inplace=True))
    if pool:
        layers["pool"] = nn.MaxPool2d(2)
    return nn.Sequential(layers)


class Residual(nn.Module):
    def __init__(self, c: int):
        super().__init__()
        self.res1, self.res2 = conv_bn(c, c), conv_bn(c, c)

    def forward(self, x):
        return x + self.res2(self.res1(x))  # no ReLU after the add


class Scale(nn.Module):
    def __init__(self, weight: float):
        super().__init__()
        self.weight = weight  # a constant, not a parameter

    def forward(self, x):
        return x * self.weight


def net(extra_layers=(), res_layers=("layer1", "layer3"), width: float = 1.0, output_scale: float = 0.125):
    """(N, 3, 32, 32) → (N, 10) logits. The defaults give ResNet-9."""
    ch = {k: max(1, round(c * width)) for k, c in dict(prep=64, layer1=128, layer2=256, layer3=512).items()}
    layers = OrderedDict(prep=conv_bn(3, ch["prep"]))
    c_in = ch["prep"]
    for name in ("layer1", "layer2", "layer3"):
        block = conv_bn(c_in, ch[name], pool=True)
        if name in res_layers:
            block.add_module("residual", Residual(ch[name]))
        if name in extra_layers:
            block.add_module("extra", conv_bn(ch[name], ch[name]))
        layers[name], c_in = block, ch[name]
    layers.update(pool=nn.MaxPool2d(4), flatten=nn.Flatten(), linear=nn.Linear(c_in, 10, bias=False),
                  scale=Scale(output_scale))
    return nn.Sequential(layers)


def build(arch: str, width: float) -> nn.Sequential:
    spec = ARCHS[arch]
    return net(spec["extra_layers"], spec["res_layers"], width)


##############################################################################################################
#                            Optimizers, schedule and the study's hyperparameters                            #
##############################################################################################################


def lr_factor(step: int, steps_per_epoch: int, epochs: int) -> float:
    """Fraction of the peak η that optimizer step `step` (1-based) uses: piecewise linear 0 → 1 → 0 at
    epochs 0, 5/24·epochs, epochs, read at step/steps_per_epoch (Myrtle counts a step before reading)."""
    return float(np.interp(step / steps_per_epoch, [0, epochs * 5 / 24, epochs], [0, 1, 0]))


def sgd_equivalent(lr: float, weight_decay: float, momentum: float) -> tuple[float, float]:
    """Peak η and λ of SGD without momentum that match SGD+momentum (η/(1−μ) held fixed).

    Momentum applies each gradient over many steps, with weights 1, μ, μ², … (Nesterov: 1+μ, μ², …): in
    total 1/(1−μ) times, and the same for the weight-decay term λw. So, summed, SGD+momentum moves w by
    η/(1−μ)·g per gradient and shrinks it by ηλ/(1−μ)·w per step. SGD with η', λ' does η'·g and η'λ'·w.
    The gradient step matches for η' = η/(1−μ); the shrink η'λ' = ηλ/(1−μ) then needs λ' = λ. The
    scale-invariant step of SGD, √(2η'λ') (the seed's equation 6), is then √(2ηλ/(1−μ)): the momentum
    run's, per the seed's last equation."""
    lr_sgd = lr / (1 - momentum)
    return lr_sgd, lr * weight_decay / (1 - momentum) / lr_sgd


def lars_lr(lr: float, weight_decay: float, momentum: float) -> float:
    """η_LARS = √(2ηλ(1−μ)), the seed's LARS learning rate (after its eq. 7), from
    normwatch.theory.seed_lars_ratio: in equilibrium SGD+momentum has η·|g|/|w| ≈ this on scale-invariant
    weights, so LARS with this lr should take the same steps (the seed's conjecture)."""
    return theory.seed_lars_ratio(lr, weight_decay, momentum)


@dataclass
class Run:
    part: str  # sgdm | sgd | lars | sweep
    name: str
    arch: str
    optimizer: str  # sgd | lars
    peak_lr: float  # of the plain schedule η(t) (for lars: the η(t) that η_LARS(t) is derived from)
    weight_decay: float  # λ
    momentum: float  # μ
    nesterov: bool
    seed: int
    epochs: int = 24
    init: str = "default"  # default | equilibrium (normwatch.equilibrium_init at the peak lr before training)
    batch_size: int = 0  # 0: the study's batch size
    grad_norm_beta: float = 0.0  # LARS: β of the exponential average of |g| in its trust ratio

    @property
    def is_sweep(self) -> bool:
        """A sweep run measures test accuracy only: no normwatch, no curves, an HParams session instead."""
        return self.part == "sweep"

    @property
    def is_experiment(self) -> bool:
        """A run of issue 17's parts: normwatch's curves in curves.json, its final accuracy in TensorBoard."""
        return self.part in EXPERIMENTS


def make_optimizer(model: nn.Module, run: Run, steps_per_epoch: int, epochs: int):
    """Two parameter groups: conv weights (scale-invariant under the BN after each: normwatch's subject)
    and the rest (BN scales and shifts, the classifier). The loss is the batch mean, so η 0.4 and λ 5e-4
    equal Myrtle's lr 0.4/512 and wd 5e-4·512 on the summed loss exactly.

    Departures from Myrtle: PyTorch's Nesterov keeps η outside the buffer (v = μv + g + λw;
    w -= η·(g + λw + μv)); Myrtle's later nesterov_update puts it inside (v = μv − η·(g + λw)). They
    agree for a constant η and differ slightly while it changes; Myrtle's 2018 code, which the post used,
    called torch.optim.SGD(nesterov=True) as here. LARS takes the run's momentum form in both of its groups:
    the lars part runs Nesterov, as its SGD (normwatch.optim.LARS(nesterov=True)), so that comparing the two
    compares like with like (heavy-ball LARS would rotate ≈ 0.86× as fast by theory alone)."""
    conv = [p for p in model.parameters() if p.ndim == 4]
    rest = [p for p in model.parameters() if p.ndim != 4]

    def schedule(s):  # LambdaLR passes the number of steps taken, so the step about to run is s + 1
        return lr_factor(s + 1, steps_per_epoch, epochs)

    if run.optimizer == "lars":
        # conv weights: trust ratio |w|/|g + λw| and lr η_LARS(t) = √(2·η(t)·λ·(1−μ)) = η_LARS(peak)·√factor;
        # the rest: plain SGD with momentum (the `lars: False` group) on the recipe's η(t).
        groups = [dict(params=conv, lr=lars_lr(run.peak_lr, run.weight_decay, run.momentum)),
                  dict(params=rest, lr=run.peak_lr, lars=False)]
        opt = LARS(groups, lr=run.peak_lr, momentum=run.momentum, weight_decay=run.weight_decay,
                   nesterov=run.nesterov and run.momentum > 0, grad_norm_beta=run.grad_norm_beta)
        factors = [lambda s: math.sqrt(schedule(s)), schedule]
    else:
        groups = [dict(params=conv), dict(params=rest)]
        opt = torch.optim.SGD(groups, lr=run.peak_lr, momentum=run.momentum, nesterov=run.nesterov,
                              weight_decay=run.weight_decay)
        factors = [schedule, schedule]
    return opt, torch.optim.lr_scheduler.LambdaLR(opt, factors)


##############################################################################################################
#                                 normwatch wiring, training and evaluation                                  #
##############################################################################################################


@torch.no_grad()
def evaluate(model: nn.Module, x: torch.Tensor, y: torch.Tensor, amp: bool, cfg: Config,
             batch: int = 1000) -> float:
    """Test accuracy (a fraction) with BN's running statistics, no test-time augmentation (as dawn.py).
    Under torchrun each rank scores its 1/world of the test set with rank 0's running statistics."""
    if cfg.world > 1:
        for buffer in model.buffers():  # per-rank BN (no SyncBatchNorm) leaves each rank its own statistics
            dist.broadcast(buffer, 0)
    share = slice(cfg.rank * len(y) // cfg.world, (cfg.rank + 1) * len(y) // cfg.world)
    model.eval()
    correct = torch.zeros((), dtype=torch.int64, device=y.device)
    for i in range(share.start, share.stop, batch):
        end = min(i + batch, share.stop)
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=amp):
            logits = model(x[i:end].contiguous(memory_format=torch.channels_last))
        correct += (logits.argmax(1) == y[i:end]).sum()
    model.train()
    if cfg.world > 1:
        dist.all_reduce(correct)
    return correct.item() / len(y)  # sync point


def run_config(cfg: Config, run: Run, data: DeviceData) -> dict:
    """The run's hyperparameters: config.json, the `demo/config` text, and what a rerun compares."""
    lars = run.optimizer == "lars"
    return dict(
        part=run.part, run=run.name, arch=run.arch, arch_label=ARCHS[run.arch]["label"],
        optimizer=run.optimizer, peak_lr=run.peak_lr, weight_decay=run.weight_decay, momentum=run.momentum,
        nesterov=run.nesterov,
        lars_lr="sqrt(2*lr(t)*weight_decay*(1-momentum)) on conv weights; lr(t) on the rest" if lars
        else None,
        lars_peak_lr=lars_lr(run.peak_lr, run.weight_decay, run.momentum) if lars else None,
        lr_schedule=f"per step, piecewise linear 0, peak, 0 at epochs 0, {run.epochs * 5 / 24:g}, "
                    f"{run.epochs}",
        lr_logged="actual lr of the conv-weight group (param group 0)",
        epochs=run.epochs, batch_size=cfg.batch_size, steps_per_epoch=len(data.train_y) // cfg.batch_size,
        seed=run.seed, preset=cfg.preset, width=cfg.width, train_images=len(data.train_y),
        test_images=len(data.test_y), cutout=cfg.cutout, output_scale=0.125, loss="cross-entropy, batch mean",
        every=cfg.every, max_steps=cfg.max_steps, device=cfg.device, compile=cfg.compile, fused_stats=cfg.fused_stats,
        amp="bf16 autocast" if cfg.device.startswith("cuda") else "fp32", ranks=cfg.world,
        bn_statistics="each rank's share of the batch" if cfg.world > 1 and not global_bn(cfg) else "the batch",
        torch=torch.__version__, normwatch=getattr(normwatch, "__version__", "?"),
    ) | (dict(init=run.init, grad_norm_beta=run.grad_norm_beta) if run.is_experiment else {})


# may differ when a rerun reuses a finished run
MACHINE_KEYS = ("device", "compile", "fused_stats", "amp", "ranks", "torch", "normwatch")


SWEEP_METRIC = "sweep/test_acc"  # a sweep run's one scalar: its final test accuracy, the HParams tab's metric


def hparams_session(run: Run, archs: tuple[str, ...]):
    """A sweep run's three HParams summaries: the experiment (hyperparameters arch, peak_lr, seed; metric
    sweep/test_acc), the start of this run's session with its values, and the session's end."""
    return hparams({"arch": run.arch, "peak_lr": run.peak_lr, "seed": run.seed}, {SWEEP_METRIC: None},
                   hparam_domain_discrete={"arch": list(archs)})


def open_run(cfg: Config, run: Run, conf: dict, run_dir: Path) -> SummaryWriter | None:
    """Rank 0: the run directory with config.json, and its SummaryWriter holding the config as the text
    `demo/config` (and, for a sweep run, the start of its HParams session); other ranks: None."""
    if cfg.rank != 0:
        return None
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "config.json").write_text(json.dumps(conf, indent=1))
    writer = SummaryWriter(str(run_dir))
    writer.add_text("demo/config", json.dumps(conf))
    if run.is_sweep:
        experiment, session_start, _ = hparams_session(run, cfg.archs)
        writer.file_writer.add_summary(experiment)
        writer.file_writer.add_summary(session_start)
    return writer


def end_session(writer: SummaryWriter, run: Run, test_acc: float, last_step: int) -> None:
    """A finished sweep run: its final test accuracy and the end of its HParams session."""
    writer.add_scalar(SWEEP_METRIC, test_acc, last_step)
    writer.file_writer.add_summary(hparams_session(run, ())[2])


def log_epoch(writer: SummaryWriter, first_step: int, losses: list, correct: list, lrs: list, test_acc: float,
              batch_size: int) -> None:
    """A main run's curves for one epoch: train/loss, train/acc and lr per step, test/acc after its last step."""
    for k, (loss, hits, lr) in enumerate(zip(losses, correct, lrs)):
        t = first_step + k  # 0-based step index, as normwatch's x axis
        writer.add_scalar("train/loss", loss, t)
        writer.add_scalar("train/acc", hits / batch_size, t)
        writer.add_scalar("lr", lr, t)
    writer.add_scalar("test/acc", test_acc, first_step + len(losses) - 1)  # measured after the epoch's last step


def make_model(cfg: Config, run: Run, device: torch.device) -> tuple[nn.Module, nn.Module]:
    """The model (NHWC: faster convs) and the module the loop calls: the model itself, or under torchrun its
    DDP wrapper (with SyncBatchNorm where BatchNorm normalises over the global batch)."""
    model = build(run.arch, cfg.width).to(device, memory_format=torch.channels_last)
    if cfg.world == 1:
        return model, model
    if global_bn(cfg):
        model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
    return model, DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)


class Curves:
    """A writer for normwatch that keeps the curves the report reads (CURVE_METRICS and normwatch/config) and
    writes them to run_dir/curves.json on close: {"scalars": {tag: [steps, values]}, "texts": {tag: text}}.
    Issue 17's parts use it, so their runs add no line to TensorBoard's charts."""

    def __init__(self, run_dir: Path):
        self.path, self.scalars, self.texts = run_dir / "curves.json", {}, {}

    def add_scalar(self, tag: str, value, step: int, walltime: float | None = None) -> None:
        if tag.split("/")[1] in CURVE_METRICS:
            steps, values = self.scalars.setdefault(tag, ([], []))
            steps.append(int(step))
            values.append(float(value))

    def add_text(self, tag: str, text: str) -> None:
        self.texts[tag] = text

    def add_custom_scalars(self, layout) -> None:
        pass

    def flush(self) -> None:
        pass

    def close(self) -> None:
        self.path.write_text(json.dumps(dict(scalars=self.scalars, texts=self.texts)))


# what the report's verdicts on issue 17's parts and its equilibrium rows read
CURVE_METRICS = ("lars_ratio", "lars_theory", "angle", "angle_theory", "shrink", "growth", "lr", "weight_decay",
                 "momentum")


def watch(cfg: Config, run: Run, forward: nn.Module, opt, writer):
    """All of normwatch: attach to the module the loop calls and to the optimizer, close at the end. It writes
    its normwatch/<metric>/<layer> tags into our writer, so each run is one TensorBoard run (issue 17's parts:
    into a Curves writer). A sweep run gets none: the sweep compares test accuracies, and 20 more sets of
    per-layer curves would bury the main runs'."""
    if run.is_sweep:
        return None
    return normwatch.attach(forward, opt, writer=writer, every=cfg.every, fused=cfg.fused_stats)


def init_at_equilibrium(cfg: Config, forward: nn.Module, opt, data: DeviceData, run: Run, device) -> int:
    """normwatch.equilibrium_init on up to 4 training batches (drawn from their own generator, so training sees
    the same data as the run with the default init), each param group at its peak lr (the scheduler's
    initial_lr). Returns the number of layers rescaled."""
    gen = torch.Generator(device=device).manual_seed(run.seed + 10_000)
    xs, ys = data.epoch(gen, cfg.cutout)
    share = cfg.batch_size // cfg.world
    count = min(4, len(ys) // cfg.batch_size)
    batches = [(xs[i * cfg.batch_size + cfg.rank * share:][:share].contiguous(memory_format=torch.channels_last),
                ys[i * cfg.batch_size + cfg.rank * share:][:share]) for i in range(count)]
    now = [group["lr"] for group in opt.param_groups]
    for group in opt.param_groups:
        group["lr"] = group["initial_lr"]
    try:
        scales = normwatch.equilibrium_init(forward, opt, batches)
    finally:
        for group, lr in zip(opt.param_groups, now):
            group["lr"] = lr
    return sum(scale.factor != 1.0 for scale in scales.values())


def for_run(cfg: Config, run: Run) -> Config:
    """The config a run trains with: the study's, with the run's own batch size (large-batch)."""
    return dataclasses.replace(cfg, batch_size=run.batch_size) if run.batch_size else cfg


def train_epoch(cfg: Config, forward: nn.Module, opt, sched, batches: tuple[torch.Tensor, torch.Tensor],
                amp: bool, epoch: int, steps: int) -> tuple[list[float], list[float], list[float]]:
    """`steps` optimizer steps on one epoch's batches: each step's loss, hits and η (under torchrun the global
    batch's: the mean of the ranks' equal shares' mean losses, and the summed hits)."""
    xs, ys = batches
    share = cfg.batch_size // cfg.world  # this rank's images of each global batch
    losses = torch.zeros(steps, device=ys.device)  # per-step values stay on the device
    correct = torch.zeros(steps, device=ys.device)  # until the epoch ends: no sync per step
    lrs, last_shown = [], time.perf_counter()
    for i in range(steps):
        first = i * cfg.batch_size + cfg.rank * share
        x, y = xs[first:first + share].contiguous(memory_format=torch.channels_last), ys[first:first + share]
        lrs.append(opt.param_groups[0]["lr"])  # the η this step uses
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=amp):  # params, BN's too, stay fp32
            logits = forward(x)
            loss = F.cross_entropy(logits.float(), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        losses[i] = loss.detach()
        correct[i] = (logits.argmax(1) == y).sum()
        if sys.stdout.isatty() and time.perf_counter() - last_shown > 0.5:  # a progress bar in slow epochs
            last_shown, done = time.perf_counter(), (i + 1) * 30 // steps
            print(f"\r{epoch:>5} [{'=' * done}{' ' * (30 - done)}] {i + 1}/{steps}", end="", flush=True)
    if cfg.world > 1:
        dist.all_reduce(losses)
        losses /= cfg.world
        dist.all_reduce(correct)
    if sys.stdout.isatty():
        print("\r" + " " * 50 + "\r", end="")
    return losses.tolist(), correct.tolist(), lrs  # sync point, once per epoch


def train(cfg: Config, run: Run, data: DeviceData, run_dir: Path) -> dict:
    """One run: a fresh model, optimizer and SummaryWriter, with normwatch attached to that writer (main runs).
    Under torchrun: every rank draws the same shuffled, augmented epoch and trains DDP on its slice of each
    global batch; rank 0 alone writes."""
    cfg = for_run(cfg, run)
    device = torch.device(cfg.device)
    amp = device.type == "cuda"
    steps_per_epoch = len(data.train_y) // cfg.batch_size  # the last partial batch is dropped
    writer = open_run(cfg, run, run_config(cfg, run, data), run_dir)
    torch.manual_seed(run.seed)  # the model's initial weights
    gen = torch.Generator(device=device).manual_seed(run.seed)  # shuffling and augmentation, alike on all ranks
    model, forward = make_model(cfg, run, device)
    opt, sched = make_optimizer(model, run, steps_per_epoch, run.epochs)
    rescaled = init_at_equilibrium(cfg, forward, opt, data, run, device) if run.init == "equilibrium" else None
    forward = torch.compile(forward) if cfg.compile else forward
    curves = Curves(run_dir) if run.is_experiment and writer else None
    watcher = watch(cfg, run, forward, opt, curves or writer)
    print(f"== {run.part} {run.name}: {ARCHS[run.arch]['label']}, {run.optimizer}, peak η {run.peak_lr:g}, "
          f"λ {run.weight_decay:g}, μ {run.momentum:g}{' Nesterov' if run.nesterov else ''}, seed {run.seed}"
          + (f", batch {cfg.batch_size}" if run.batch_size else "")
          + (f", |g| averaged with β {run.grad_norm_beta:g}" if run.grad_norm_beta else "")
          + (f", equilibrium init ({rescaled} layers rescaled)" if rescaled is not None else ""))
    print(f"{'epoch':>5} {'η':>9} {'train s':>8} {'loss':>7} {'train acc':>9} {'test acc':>8} {'total s':>8}")
    step, epoch, train_time, test_acc, t_start = 0, 0, 0.0, math.nan, time.perf_counter()
    try:
        while epoch < run.epochs and not (cfg.max_steps and step >= cfg.max_steps):
            epoch += 1
            steps = min(steps_per_epoch, cfg.max_steps - step) if cfg.max_steps else steps_per_epoch
            t0 = time.perf_counter()
            losses, correct, lrs = train_epoch(cfg, forward, opt, sched, data.epoch(gen, cfg.cutout), amp, epoch,
                                               steps)
            train_time += time.perf_counter() - t0
            test_acc = evaluate(model, data.test_x, data.test_y, amp, cfg)  # eager: no recompile for eval mode
            if writer and not (run.is_sweep or run.is_experiment):
                log_epoch(writer, step, losses, correct, lrs, test_acc, cfg.batch_size)
            step += steps
            print(f"{epoch:>5} {lrs[-1]:>9.4g} {train_time:>8.2f} {np.mean(losses):>7.4f} "
                  f"{sum(correct) / (steps * cfg.batch_size):>9.4f} {test_acc:>8.4f} "
                  f"{time.perf_counter() - t_start:>8.2f}")
        if writer and run.is_sweep:
            end_session(writer, run, test_acc, step - 1)
        if writer and run.is_experiment:
            writer.add_scalar(f"{run.part}/test_acc", test_acc, step - 1)
        layers = len(watcher.layers) if watcher else 0
    finally:
        if watcher:
            watcher.close()
        if curves:
            curves.close()
        if writer:
            writer.close()
    result = dict(test_acc=test_acc, train_time_s=round(train_time, 3),
                  total_time_s=round(time.perf_counter() - t_start, 3), steps=step, epochs_done=epoch,
                  normwatch_layers=layers)
    watched = f"; normwatch watched {layers} scale-invariant layers" if watcher else ""
    print(f"   final test acc {test_acc:.4f}, train time {train_time:.1f} s{watched}")
    if cfg.rank == 0:
        (run_dir / "result.json").write_text(json.dumps(result, indent=1))  # written last: the run is finished
    return result


##############################################################################################################
#                                      Several processes, under torchrun                                     #
##############################################################################################################


def setup_distributed(cfg: Config) -> None:
    """Under torchrun (WORLD_SIZE > 1): join the process group, NCCL with one GPU per process (LOCAL_RANK) or
    gloo on CPU, and set cfg.rank, cfg.world and cfg.device. The global batch stays cfg.batch_size."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world == 1:
        return
    if cfg.batch_size % world:
        raise SystemExit(f"--batch-size {cfg.batch_size} does not split evenly over {world} processes: pick "
                         f"a multiple of {world}.")
    if cfg.device.startswith("cuda"):
        cfg.device = f"cuda:{int(os.environ['LOCAL_RANK'])}"
        torch.cuda.set_device(cfg.device)
    dist.init_process_group("nccl" if cfg.device.startswith("cuda") else "gloo")
    cfg.rank, cfg.world = dist.get_rank(), world
    if not global_bn(cfg) and cfg.rank == 0:
        print(f"BatchNorm: each of the {world} processes normalises over its own {cfg.batch_size // world} "
              f"images ({'SyncBatchNorm needs CUDA' if cfg.sync_bn else '--no-sync-bn'}), so results differ "
              f"slightly from one process on the same global batches")


def global_bn(cfg: Config) -> bool:
    """Whether BatchNorm normalises over the global batch: in one process, or SyncBatchNorm across CUDA ones."""
    return cfg.world == 1 or (cfg.sync_bn and cfg.device.startswith("cuda"))


def from_rank0(cfg: Config, work, *args):
    """work(*args) run by rank 0 alone (it downloads, deletes, decides), its value handed to every rank."""
    box = [work(*args) if cfg.rank == 0 else None]
    if cfg.world > 1:
        dist.broadcast_object_list(box, src=0)
    return box[0]


##############################################################################################################
#                                                   Study                                                    #
##############################################################################################################


def plan(cfg: Config) -> list[tuple[Run, Path]]:
    """Every run of the chosen parts, with its run directory, in order."""
    lr, wd, mu, out = cfg.peak_lr, cfg.weight_decay, cfg.momentum, Path(cfg.out)
    lr_sgd, wd_sgd = sgd_equivalent(lr, wd, mu)
    one = dict(arch="resnet9", seed=cfg.seed, epochs=cfg.epochs)
    sweep_epochs = cfg.sweep_epochs or cfg.epochs
    runs = []
    for part in cfg.parts:
        if part == "sgdm":
            runs.append(Run("sgdm", "sgdm", optimizer="sgd", peak_lr=lr, weight_decay=wd, momentum=mu,
                            nesterov=True, **one))
        elif part == "sgd":
            runs.append(Run("sgd", "sgd", optimizer="sgd", peak_lr=lr_sgd, weight_decay=wd_sgd, momentum=0.0,
                            nesterov=False, **one))
        elif part == "lars":
            runs.append(Run("lars", "lars", optimizer="lars", peak_lr=lr, weight_decay=wd, momentum=mu,
                            nesterov=True, **one))
        elif part == "sweep":
            for arch in cfg.archs:
                for peak in cfg.lrs:
                    for s in range(cfg.seed, cfg.seed + cfg.seeds):
                        runs.append(Run("sweep", f"{arch}-lr{peak:g}-s{s}", arch, "sgd", peak, wd, mu,
                                        nesterov=True, seed=s, epochs=sweep_epochs))
        elif part in EXPERIMENTS:
            runs += experiment_runs(cfg, part)
    return [(r, out / r.part / r.name if r.is_sweep or r.is_experiment else out / r.part) for r in runs]


def experiment_runs(cfg: Config, part: str) -> list[Run]:
    """Issue 17's parts, each point with cfg.part_seeds seeds, cfg.part_epochs epochs a run (ResNet-9, the
    recipe's η, λ, μ):

    * eqinit: the default init and normwatch.equilibrium_init, for Nesterov SGD and for LARS in the form
      normwatch's theory describes (per-tensor trust, heavy ball, so that lars_theory is logged).
    * large-batch: at batch_size × each of batch_factors, Nesterov SGD, the same with equilibrium init, and
      Nesterov LARS. Scaling rules: η ∝ batch size (linear scaling), λ and μ unchanged, and LARS's
      η_LARS = √(2ηλ(1−μ)) from the scaled η (∝ √batch size), the seed's prescription.
    * smooth: Nesterov LARS as in the lars part, plain and with |g| averaged over batches (β = smooth_beta).
    """
    lr, wd, mu = cfg.peak_lr, cfg.weight_decay, cfg.momentum
    common = dict(arch="resnet9", weight_decay=wd, momentum=mu, epochs=cfg.part_epochs or cfg.epochs)
    runs = []
    for s in range(cfg.seed, cfg.seed + cfg.part_seeds):
        if part == "eqinit":
            for opt, nesterov in (("sgd", True), ("lars", False)):
                for init in ("default", "equilibrium"):
                    runs.append(Run(part, f"{opt}-{init}-s{s}", optimizer=opt, peak_lr=lr, nesterov=nesterov, seed=s,
                                    init=init, **common))
        elif part == "large-batch":
            for k in cfg.batch_factors:
                b = cfg.batch_size * k
                for opt, init in (("sgd", "default"), ("sgd", "equilibrium"), ("lars", "default")):
                    name = f"b{b}-{opt}{'-eqinit' if init == 'equilibrium' else ''}-s{s}"
                    runs.append(Run(part, name, optimizer=opt, peak_lr=lr * k, nesterov=True, seed=s, init=init,
                                    batch_size=b, **common))
        elif part == "smooth":
            for beta in (0.0, cfg.smooth_beta):
                runs.append(Run(part, f"beta{beta:g}-s{s}", optimizer="lars", peak_lr=lr, nesterov=True, seed=s,
                                grad_norm_beta=beta, **common))
    return runs


def planned_steps(run: Run, steps_per_epoch: int, max_steps: int) -> int:
    """The optimizer steps a run will take: its epochs', or --max-steps if that is fewer."""
    steps = run.epochs * steps_per_epoch
    return min(steps, max_steps) if max_steps else steps


def time_left(seconds: float, steps_done: int, steps_left: int) -> str:
    """"about 9 min left": the steps still to train at the mean time per step of the runs trained so far
    (evaluation included); rounded to minutes from 90 s on."""
    if steps_left <= 0:
        return "no runs left"
    estimate = seconds / max(steps_done, 1) * steps_left
    return f"about {round(estimate / 60)} min left" if estimate >= 90 else f"about {max(round(estimate), 1)} s left"


def finished(run_dir: Path, expected: dict) -> dict | None:
    """The result of a finished run with the same experiment config, or None; an unfinished run's
    directory (left by a crash or Ctrl-C) is removed."""
    if not (run_dir / "result.json").is_file():
        if run_dir.exists():
            print(f"removing the unfinished run in {run_dir}")
            shutil.rmtree(run_dir)
        return None
    old = json.loads((run_dir / "config.json").read_text())
    diff = [f"{k}: {old.get(k)} there, {v} now" for k, v in expected.items()
            if k not in MACHINE_KEYS and old.get(k) != v]
    if diff:
        raise SystemExit(f"{run_dir} holds a finished run with another config ({'; '.join(diff)}): pass "
                         f"--out for a new study directory, or delete that run.")
    return json.loads((run_dir / "result.json").read_text())


def explain(cfg: Config) -> None:
    """Print the derived hyperparameters of the sgd and lars parts, and why."""
    lr, wd, mu = cfg.peak_lr, cfg.weight_decay, cfg.momentum
    lr_sgd, wd_sgd = sgd_equivalent(lr, wd, mu)
    if "sgd" in cfg.parts:
        print(f"sgd part: no momentum, peak η {lr_sgd:g} = {lr:g}/(1−{mu:g}), λ {wd_sgd:g}. Momentum applies "
              f"each gradient 1/(1−μ) times in total, so this matches the sgdm run's gradient step, its "
              f"weight-decay shrink per step (ηλ = {lr_sgd * wd_sgd:.3g} = {lr:g}·{wd:g}/(1−{mu:g}) at the peak) "
              f"and its scale-invariant step (√(2ηλ) = {math.sqrt(2 * lr_sgd * wd_sgd):.4f}): η/(1−μ) held fixed.")
    if "lars" in cfg.parts:
        print(f"lars part: conv weights use normwatch's LARS (trust ratio |w|/|g+λw|, Nesterov momentum "
              f"μ {mu:g} as the sgdm part's, λ {wd:g}) with lr η_LARS(t) = √(2·η(t)·λ·(1−μ)), "
              f"{lars_lr(lr, wd, mu):.5f} at the peak: the value SGD+momentum's η·|g|/|w| settles to. BN and "
              f"classifier: Nesterov SGD on the recipe's η(t).")
    if "large-batch" in cfg.parts:
        sizes = ", ".join(f"{cfg.batch_size * k} (peak η {lr * k:g})" for k in cfg.batch_factors)
        print(f"large-batch part: batch {sizes}: η ∝ batch size, λ and μ unchanged, η_LARS = √(2ηλ(1−μ)) "
              f"from the scaled η; SGD, SGD with equilibrium init, LARS.")
    if any(part in cfg.parts for part in EXPERIMENTS):
        print(f"eqinit, large-batch, smooth: {cfg.part_seeds} seed(s) a point, {cfg.part_epochs or cfg.epochs} "
              f"epochs a run; their normwatch curves go to curves.json, TensorBoard gets their final accuracy.")


def load_data(cfg: Config) -> DeviceData:
    """CIFAR-10 on the device (rank 0 alone deletes and downloads); DataError or ValueError say what to do."""
    source = from_rank0(cfg, discard_extracted, cfg.data_dir) if cfg.redownload else cfg.data_dir
    cifar = load_cifar10(from_rank0(cfg, find_cifar10, source))
    data = DeviceData(cifar, torch.device(cfg.device), cfg.subset, cfg.test_subset)
    if len(data.train_y) < cfg.batch_size:
        raise ValueError(f"--batch-size {cfg.batch_size} is more than the {len(data.train_y)} training images, "
                         f"so an epoch would have no step: lower --batch-size or raise --subset.")
    print(f"CIFAR-10 from {cifar['root']}: {len(data.train_y)} training and {len(data.test_y)} test images")
    return data


def main(argv: list[str] | None = None) -> int:
    cfg, why = parse_args(argv)
    setup_distributed(cfg)
    try:
        with open(os.devnull, "w") as quiet, contextlib.redirect_stdout(quiet if cfg.rank else sys.stdout):
            return study(cfg, why)  # rank 0 alone prints; warnings and errors still show
    finally:
        if cfg.world > 1:
            dist.destroy_process_group()


def study(cfg: Config, why: str) -> int:
    t_study = time.perf_counter()
    ranks = f" × {cfg.world} processes ({cfg.batch_size // cfg.world} images each)" if cfg.world > 1 else ""
    print(f"preset {cfg.preset} ({why}): width {cfg.width:g}, batch {cfg.batch_size}, {cfg.epochs} epochs "
          f"({cfg.sweep_epochs or cfg.epochs} per sweep run, {cfg.seeds} seed(s) per sweep point), "
          f"{cfg.subset or 'all'} training and {cfg.test_subset or 'all'} test images, device "
          f"{cfg.device}{ranks}; study directory {cfg.out}")
    if cfg.device.startswith("cuda"):
        torch.backends.cudnn.benchmark = True
    try:
        data = load_data(cfg)
    except (DataError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    explain(cfg)
    results = []
    try:
        run_all(cfg, data, results)
    except KeyboardInterrupt:
        print(f"\ninterrupted: the {len(results)} finished runs stay in {cfg.out}; the same command goes on "
              f"from there")
        return 130
    summarise(cfg, results, time.perf_counter() - t_study)
    if cfg.report and cfg.rank == 0:
        report(cfg, [run_dir for _, run_dir, _ in results])
    return 0


def run_all(cfg: Config, data: DeviceData, results: list) -> None:
    """Train each planned run not finished before, in order, appending (run, run_dir, result) to results, and
    after each one print a progress line with the time left."""
    runs = plan(cfg)
    earlier = [from_rank0(cfg, finished, run_dir, run_config(for_run(cfg, run), run, data)) for run, run_dir in runs]

    def steps_of(run: Run) -> int:
        return planned_steps(run, len(data.train_y) // (run.batch_size or cfg.batch_size), cfg.max_steps)

    steps_left = sum(steps_of(run) for (run, _), res in zip(runs, earlier) if res is None)
    seconds, steps_done = 0.0, 0
    for k, ((run, run_dir), res) in enumerate(zip(runs, earlier), 1):
        where = f"[{k}/{len(runs)}] {run_dir}"
        if res is not None:
            print(f"{where}: finished before, test acc {res['test_acc']:.4f}: skipped")
        else:
            print(f"\n{where}")
            res = train(cfg, run, data, run_dir)
            seconds, steps_done = seconds + res["total_time_s"], steps_done + res["steps"]
            steps_left -= steps_of(run)
            print(f"{where}: test acc {res['test_acc']:.4f} in {res['total_time_s']:.0f} s; "
                  f"{time_left(seconds, steps_done, steps_left)}")
        results.append((run, run_dir, res))


def summarise(cfg: Config, results: list, wall: float) -> None:
    print(f"\n== study {cfg.out}: {len(results)} runs in {wall:.0f} s")
    for run, _, res in results:
        if not run.is_sweep:
            label = f"{run.part}/{run.name}" if run.is_experiment else run.part
            print(f"{label:>5}: test acc {res['test_acc']:.4f} (train time {res['train_time_s']:.1f} s)")
    sweep = [(run, res) for run, _, res in results if run.is_sweep]
    if sweep:
        print(f"sweep: test acc against peak η, mean of {cfg.seeds} seed(s)")
        print(f"{'peak η':>27}" + "".join(f"{lr:>8g}" for lr in cfg.lrs))
        for arch in cfg.archs:
            cells = []
            for lr in cfg.lrs:
                accs = [res["test_acc"] for run, res in sweep if run.arch == arch and run.peak_lr == lr]
                cells.append(f"{np.mean(accs):>8.4f}" if accs else f"{'-':>8}")
            print(f"{ARCHS[arch]['label']:>27}" + "".join(cells))


def report(cfg: Config, run_dirs: list[Path]) -> None:
    if write_report is None:
        print("report: normwatch.report is not importable, skipped (the runs are ready for TensorBoard)")
        return
    try:
        path = write_report(run_dirs, Path(cfg.out) / "report")
    except ImportError as e:
        print(f"report: skipped, it needs a missing package ({e}): pip install 'normwatch[report]'")
        return
    except ValueError as e:  # no run it can judge
        print(f"report: skipped: {e}")
        return
    print(f"report: {path.with_name('report.html')} (also report.md and verdicts.json there)")


##############################################################################################################
#                                                Command line                                                #
##############################################################################################################


class Parser(argparse.ArgumentParser):
    """argparse that says what is wrong with a command line in one line, without the usage block."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")


def whole(minimum: int):
    """An argparse type: a whole number ≥ minimum."""
    def parse(text: str) -> int:
        with contextlib.suppress(ValueError):
            if int(text) >= minimum:
                return int(text)
        raise argparse.ArgumentTypeError(f"expected a whole number ≥ {minimum}, got {text!r}")
    return parse


def positive(text: str) -> float:
    """An argparse type: a finite number > 0."""
    with contextlib.suppress(ValueError):
        if math.isfinite(float(text)) and float(text) > 0:
            return float(text)
    raise argparse.ArgumentTypeError(f"expected a number > 0, got {text!r}")


def peak_lrs(text: str) -> tuple[float, ...]:
    """An argparse type: distinct positive numbers separated by commas."""
    lrs = []
    for item in text.split(","):
        try:
            lrs.append(positive(item))
        except argparse.ArgumentTypeError:
            raise argparse.ArgumentTypeError(f"{item!r} is not a number > 0: give peak learning rates "
                                             f"separated by commas, e.g. 0.1,0.2,0.4") from None
    if len(set(lrs)) < len(lrs):
        raise argparse.ArgumentTypeError(f"{text!r} names a learning rate twice")
    return tuple(lrs)


def names(allowed, what: str):
    """An argparse type: comma-separated names, each one of allowed."""
    def parse(text: str) -> tuple[str, ...]:
        chosen = tuple(s for s in text.split(",") if s)
        unknown = [s for s in chosen if s not in allowed]
        if unknown or not chosen:
            got = f"unknown {what} {', '.join(map(repr, unknown))}" if unknown else f"no {what} in {text!r}"
            raise argparse.ArgumentTypeError(f"{got}: pick from {','.join(allowed)}")
        return chosen
    return parse


def device_name(text: str) -> str:
    """An argparse type: a device torch knows (cpu, cuda, cuda:1, ...)."""
    try:
        torch.device(text)
    except RuntimeError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a device torch knows: use cpu or cuda") from None
    return text


def _parser() -> Parser:
    p = Parser(prog="train_resnet.py", description=__doc__.split("\n\n")[0])
    p.add_argument("--preset", choices=sorted(PRESETS), help="default: full with CUDA, cpu without")
    p.add_argument("--parts", type=names(PARTS, "part"), default=PARTS, help="comma-separated, of " + ",".join(PARTS))
    p.add_argument("--data-dir", help="holds cifar-10-batches-py (default data, where it is downloaded if missing)")
    p.add_argument("--redownload", action="store_true",
                   help="delete <data-dir>/cifar-10-batches-py and extract or download a fresh copy")
    p.add_argument("--out", help="study directory (default runs/<preset>)")
    p.add_argument("--device", type=device_name, help="default: cuda if available, else cpu")
    p.add_argument("--epochs", type=whole(1))
    p.add_argument("--sweep-epochs", type=whole(0), help="epochs of each sweep run (0: --epochs)")
    p.add_argument("--width", type=positive, help="channel multiplier (1 = ResNet-9's 64/128/256/512)")
    p.add_argument("--subset", type=whole(0), help="class-balanced number of training images (0 = all)")
    p.add_argument("--test-subset", type=whole(0), help="class-balanced number of test images (0 = all)")
    p.add_argument("--seeds", type=whole(1), help="sweep repeats per point")
    p.add_argument("--seed", type=whole(0), default=Config.seed)
    p.add_argument("--part-epochs", type=whole(0), help="epochs of each eqinit, large-batch, smooth run (0: --epochs)")
    p.add_argument("--part-seeds", type=whole(1), help="seeds of each eqinit, large-batch, smooth point")
    p.add_argument("--batch-size", type=whole(1))
    p.add_argument("--lrs", type=peak_lrs, help="sweep grid of peak η, comma-separated (default 0.1,0.2,0.4,0.8,1.6)")
    p.add_argument("--archs", type=names(tuple(ARCHS), "architecture"), default=Config.archs,
                   help="sweep architectures, comma-separated, of " + ",".join(ARCHS))
    p.add_argument("--every", type=whole(1), default=Config.every, help="normwatch statistics every N steps")
    p.add_argument("--max-steps", type=whole(0), default=0, help="stop each run after N optimizer steps (0: no limit)")
    p.add_argument("--compile", action="store_true", help="torch.compile the model")
    p.add_argument("--fused-stats", action="store_true", help="normwatch's statistics through torch.compile")
    p.add_argument("--no-sync-bn", action="store_true",
                   help="under torchrun on CUDA: each process's BatchNorm normalises over its own images")
    p.add_argument("--no-report", action="store_true", help="do not render normwatch's report")
    return p


def parse_args(argv: list[str] | None) -> tuple[Config, str]:
    p = _parser()
    a = p.parse_args(argv)
    device = a.device or ("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        p.error(f"--device {device} was asked for, but torch sees no CUDA device")
    if a.preset:
        preset, why = a.preset, "chosen with --preset"
    elif device.startswith("cuda"):
        preset, why = "full", f"the default on CUDA: {torch.cuda.get_device_name(device)}"
    else:
        preset, why = "cpu", "the default without CUDA: a narrow net on a subset; --preset full overrides"
    data_dir, out = Path(a.data_dir or Config.data_dir), Path(a.out or f"runs/{preset}")
    if not data_dir.is_dir() and data_dir != Path(Config.data_dir):
        p.error(f"--data-dir {data_dir} is not a folder: pass the folder that holds {CIFAR_DIR}, or leave "
                f"--data-dir out to use {Config.data_dir}/ (where CIFAR-10 is downloaded if missing)")
    if out.exists() and not out.is_dir():
        p.error(f"--out {out} is a file: pass a folder for the study (it is created if missing)")
    cfg = Config(preset=preset, parts=a.parts, archs=a.archs, data_dir=str(data_dir), redownload=a.redownload,
                 device=device, compile=a.compile, seed=a.seed, every=a.every, max_steps=a.max_steps,
                 report=not a.no_report, sync_bn=not a.no_sync_bn, fused_stats=a.fused_stats, out=str(out),
                 **PRESETS[preset])
    for field in ("epochs", "sweep_epochs", "batch_size", "width", "subset", "test_subset", "seeds", "lrs",
                  "part_epochs", "part_seeds"):
        if getattr(a, field) is not None:
            setattr(cfg, field, getattr(a, field))
    return cfg, why


if __name__ == "__main__":
    sys.exit(main())
