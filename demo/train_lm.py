"""A character-level language model on Tiny Shakespeare, trained by transformers' own Trainer with normwatch's
callback: the seed's study carried to transformers, where weight decay and normalisation set the rotation of
every normalised matrix.

One file, read top to bottom: Config → Data → Models → Optimizers → normwatch wiring, training and evaluation →
Study → main. It needs the transformers extra: pip install -e ".[transformers]".

    python demo/train_lm.py                                  # the whole study; the preset follows the hardware
    python demo/train_lm.py --parts adamw,schedule           # some parts, of adamw, eta-lambda, muon, l2, schedule
    python demo/train_lm.py --data ~/input.txt               # a local copy of Tiny Shakespeare (else downloaded)
    tensorboard --logdir runs/

The study ends with normwatch's report on its runs (verdicts and figures) in runs/lm-<preset>/report/report.html,
or one sentence saying what to install when matplotlib is missing.

The parts, each a set of runs under runs/lm-<preset>/<part>/<run>/ (models: transformers' own classes, random init):
- adamw: olmo2 (QK-norm on the whole projection, a norm on each block's output: almost every matrix is
  scale-invariant), qwen3 (per-head QK-norm: q_proj and k_proj are, per head) and llama (pre-norm: none is, the
  control) at one AdamW recipe.
- eta-lambda: a 3 × 3 grid, η and λ each × 1/4, 1, 4 around the recipe: along its diagonal ηλ is held fixed while
  η and λ vary ×4 each way, elsewhere ηλ moves (×1/16 to ×16). Do invariant layers settle at the same rotation
  when ηλ is fixed, and does validation loss follow ηλ?
- muon: torch.optim.Muon on the blocks' matrices (AdamW on embeddings, head and norms) against AdamW; normwatch,
  follows each param group with the rule of the optimizer that owns it: shrink and growth split exactly, and
  Muon's angle theory.
- l2: Adam with coupled L2 against AdamW at the same nominal λ.
- schedule: AdamW against "AdamC" (Defazio 2025, arXiv 2506.02285: λ_t = λ·η_t/η_max) under the same cosine
  schedule to 0, at 4 × the recipe's λ (so that |w| can follow the decaying lr); the gradient norm of every step
  shows the end-of-training rise.

Each run directory is one TensorBoard run: the Trainer's train/loss, train/grad_norm (before any clipping; this
demo does not clip), train/learning_rate and eval/loss (validation), the demo's train/weight_decay, normwatch's
normwatch/<metric>/<layer>, the run's config as the text demo/config and as TensorBoard hparams, and config.json
plus result.json (written last: it marks a finished run, which a rerun skips). The x axis is the Trainer's global
step: normwatch's point at s is the optimizer step taken while global_step == s; the Trainer logs that step's
loss, lr, gradient norm and weight decay at s + 1, once it has counted it; eval/loss at s is measured after s steps.

Measured, cpu preset (the default without CUDA), from a fresh clone, OMP_NUM_THREADS=1, 2-core AMD EPYC VM shared
with other jobs (load average about 2), torch 2.13.0+cpu, transformers 5.25.0: the whole study, 18 runs (15 trained,
3 copies of the recipe's run) and the report, in 6 min 31 s of wall time; per part adamw 55 s, eta-lambda 184 s,
muon 40 s, l2 25 s, schedule 47 s. Final validation loss, in nats per character on the validation split's first 64
sequences: adamw olmo2 2.103, qwen3 2.061, llama 2.117; muon 1.939 against AdamW's 2.103; Adam+L2 3.309 against
2.103; schedule (λ × 4) AdamW 2.264, AdamC 2.152. The gradient norm there (means over 25 steps): AdamW 1.13 → 2.50
at step 214 → 1.90 at the end, AdamC 1.08 → 1.64 at step 135 → 1.29. The grid, rows λ, columns η (* where ηλ is
the recipe's 0.01):
    λ / η   0.001    0.004    0.016
    0.625   2.053    2.014    2.088*
    2.5     2.095    2.103*   2.285
    10      2.302*   2.396    2.816
normwatch records 10 of OLMo2's matrices, Qwen3's q_proj and k_proj (4) and nothing in Llama; the report's verdicts
are in the README ("The LM study"). Not run: the full preset on a GPU.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import shutil
import sys
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch.utils.tensorboard import SummaryWriter
from torch.utils.tensorboard.summary import hparams

import normwatch
from normwatch import theory

try:
    import transformers
    from normwatch.integrations.transformers import NormwatchCallback
    from transformers import (
        LlamaConfig,
        LlamaForCausalLM,
        Olmo2Config,
        Olmo2ForCausalLM,
        PrinterCallback,
        ProgressCallback,
        Qwen3Config,
        Qwen3ForCausalLM,
        Trainer,
        TrainerCallback,
        TrainingArguments,
    )
    from transformers.integrations import TensorBoardCallback
except ImportError as missing:  # the demo's extra; one sentence, no traceback
    sys.exit(f"demo/train_lm.py needs transformers ({missing}): pip install -e \".[transformers]\"")

##############################################################################################################
#                                                   Config                                                   #
##############################################################################################################

PARTS = ("adamw", "eta-lambda", "muon", "l2", "schedule")


@dataclass
class Config:
    preset: str = "full"  # full | cpu: sets the fields PRESETS names, unless flags do
    parts: tuple[str, ...] = PARTS  # which parts of the study to run, in this order
    # data
    data: str = "data/tinyshakespeare/input.txt"  # a copy of input.txt; downloaded there when missing
    val_fraction: float = 0.1  # the last 10% of the characters validate, the rest train (nanoGPT's split)
    block_size: int = 256  # characters (= tokens) per sequence
    # models: transformers' own classes from the configs in build_model, random init
    archs: tuple[str, ...] = ("olmo2", "qwen3", "llama")  # the adamw part's architectures
    # the architecture of the eta-lambda, muon, l2 and schedule parts: olmo2, whose matrices are almost all
    # scale-invariant, each as a whole (Muon's theory assumes that; Qwen3's per-head QK-norm makes heads apart)
    arch: str = "olmo2"
    hidden: int = 384  # d_model; the MLP is 4 × hidden wide
    layers: int = 6  # transformer blocks
    heads: int = 6  # attention heads (as many key/value heads); head_dim = hidden / heads
    # recipe: AdamW, linear warmup then a constant lr (the schedule part: cosine to 0 after the warmup)
    steps: int = 5000  # optimizer steps per run
    batch_size: int = 64  # sequences per step
    lr: float = 1e-3  # η, the peak lr; Muon's too (its update is scaled to AdamW's RMS, see make_optimizer)
    weight_decay: float = 1.0  # λ, decoupled: w shrinks by ηλ per step, so τ = 1/(ηλ) steps
    warmup: int = 100  # steps of linear warmup from 0
    beta1: float = 0.9  # β₁
    beta2: float = 0.95  # β₂: LM practice; v̂ then follows |g| as |w| relaxes (normwatch.theory)
    eps: float = 1e-8
    muon_momentum: float = 0.95  # μ of Muon (Nesterov), torch's default
    grid: tuple[float, ...] = (0.25, 1.0, 4.0)  # eta-lambda: η and λ are the recipe's times each of these
    schedule_decay: float = 4.0  # the schedule part's λ is the recipe's times this (see plan)
    # evaluation
    eval_every: int = 250  # steps between validation losses (also one before the first step)
    eval_blocks: int = 256  # validation sequences per evaluation, the split's first; 0 = all of it
    seed: int = 0
    # machinery
    device: str = "cuda"
    threads: int = 0  # CPU threads of torch's ops; 0 = torch's default (one per core)
    every: int = 1  # normwatch computes its statistics every N optimizer steps
    out: str = ""  # study directory; default runs/lm-<preset>


# The cpu preset keeps the study whole (every part, the whole grid) and shrinks the model to fit in 10 minutes
# on 2 CPU cores: 2 blocks of width 64 (140k parameters), 32 sequences of 64 characters per step, 250 steps.
# η and λ are raised so that ηλ = 0.01: τ = 1/(ηλ) = 100 steps is 40% of a run and |w|² relaxes in
# 1/(2ηλ) = 50 steps, so the equilibrium is reached and held (at LM-practice η = 1e-3, λ = 0.1, τ would be
# 10,000 steps). The full preset is nanoGPT's shakespeare-char model (6 blocks of 384) with ηλ = 1e-3: τ is
# 1,000 of its 5,000 steps. The cpu preset uses one thread: on matrices this small a second one saves little
# and, when other jobs keep the cores busy, its barriers cost far more (measured on the 2-core machine: 92 ms per
# step with 1 thread, 68 ms with 2 at a load average of 2; 0.11 s with 1, 0.3-2 s with 2 at a load average of 9).
PRESETS = {
    "full": dict(block_size=256, hidden=384, layers=6, heads=6, steps=5000, batch_size=64, lr=1e-3,
                 weight_decay=1.0, warmup=100, eval_every=250, eval_blocks=256),
    "cpu": dict(block_size=64, hidden=64, layers=2, heads=4, steps=250, batch_size=32, lr=4e-3,
                weight_decay=2.5, warmup=15, eval_every=25, eval_blocks=64, threads=1),
}

##############################################################################################################
#                                                    Data                                                    #
##############################################################################################################

DATA_URL = "https://raw.githubusercontent.com/karpathy/char-rnn/master/data/tinyshakespeare/input.txt"
DATA_SHA256 = "86c4e6aa9db7c042ec79f339dcb96d42b0075e16b8fc2e86bf0ca57e2dc565ed"
DATA_BYTES = 1_115_394
REPO = Path(__file__).resolve().parents[1]
# Copies that offline machines may keep, relative to the repository root; the offline error names one that exists.
KNOWN_COPIES = ("../shared/data/tinyshakespeare/input.txt",)


class DataError(RuntimeError):
    """Missing, corrupt or undownloadable Tiny Shakespeare; the message is one sentence that names the fix."""


def _download(url: str, dest: Path) -> None:
    with urllib.request.urlopen(url, timeout=60) as response, open(dest, "wb") as f:
        shutil.copyfileobj(response, f)


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _offline_hint() -> str:
    for copy in KNOWN_COPIES:
        if (REPO / copy).is_file():
            return f" (this machine has one: --data {(REPO / copy).resolve()})"
    return ""


def fetch_text(path: str | Path) -> str:
    """The text of Tiny Shakespeare at `path`, checked against its sha256; downloaded there first when missing.
    A download that fails the check is deleted; a file that was there already is left alone."""
    path = Path(path).expanduser()
    if path.is_dir():
        raise DataError(f"--data {path} is a folder, not the file: pass the path of input.txt itself.")
    fresh = not path.exists()
    if fresh:
        print(f"downloading {DATA_URL} to {path} ({DATA_BYTES:,} bytes)")
        partial = path.with_name(path.name + ".part")
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            _download(DATA_URL, partial)
        except OSError as e:  # URLError, timeouts and socket errors are OSErrors
            partial.unlink(missing_ok=True)
            raise DataError(f"Tiny Shakespeare is not at {path} and {DATA_URL} could not be downloaded ({e}), so "
                            f"download that file elsewhere and pass its path with --data{_offline_hint()}.") from None
        partial.rename(path)
    digest = _sha256(path)
    if digest != DATA_SHA256:
        size = path.stat().st_size
        if fresh:
            path.unlink()
            raise DataError(f"the download from {DATA_URL} has sha256 {digest} instead of {DATA_SHA256} "
                            f"({size:,} bytes instead of {DATA_BYTES:,}), so it was deleted: run again to download "
                            f"it again, or pass --data with a copy fetched elsewhere.")
        raise DataError(f"{path} is not Tiny Shakespeare (sha256 {digest}, {size:,} bytes; expected {DATA_SHA256}, "
                        f"{DATA_BYTES:,} bytes): delete it and run again to download it there, or pass --data "
                        f"with a good copy.")
    return path.read_text(encoding="utf-8")


@dataclass
class CharData:
    """The text as character ids: the vocabulary is its sorted distinct characters (65 for Tiny Shakespeare),
    the first 1 − val_fraction of the characters train, the rest validate (nanoGPT's shakespeare_char split)."""

    vocab: str
    train: torch.Tensor  # int64 ids, (N_train,)
    val: torch.Tensor  # int64 ids, (N_val,)


def tokenize(text: str, val_fraction: float) -> CharData:
    codes = np.frombuffer(text.encode("utf-32-le"), dtype=np.uint32)  # one code point per character
    vocab = np.unique(codes)
    ids = torch.from_numpy(np.searchsorted(vocab, codes).astype(np.int64))
    n_train = int(len(ids) * (1 - val_fraction))
    return CharData("".join(map(chr, vocab)), ids[:n_train], ids[n_train:])


class Blocks(torch.utils.data.Dataset):
    """Non-overlapping sequences of block_size characters (as transformers' run_clm.py groups text), the first
    `limit` of them (0: all). A causal LM takes labels = input_ids and shifts them itself."""

    def __init__(self, ids: torch.Tensor, block_size: int, limit: int = 0):
        n = len(ids) // block_size
        self.blocks = ids[:n * block_size].view(n, block_size)[:limit or n]

    def __len__(self) -> int:
        return len(self.blocks)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return {"input_ids": self.blocks[i], "labels": self.blocks[i]}


def datasets(data: CharData, cfg: Config) -> tuple[Blocks, Blocks]:
    """Training sequences, as many as fill whole batches (so every step sees batch_size sequences), and the
    validation split's first eval_blocks sequences."""
    n_train, n_val = len(data.train) // cfg.block_size, len(data.val) // cfg.block_size
    if n_train < cfg.batch_size or n_val == 0:
        raise DataError(f"the text gives {n_train} training and {n_val} validation sequences of {cfg.block_size} "
                        f"characters, too few for batches of {cfg.batch_size}: lower --block-size or --batch-size, "
                        f"or pass a longer text with --data.")
    train = Blocks(data.train, cfg.block_size, n_train // cfg.batch_size * cfg.batch_size)
    val = Blocks(data.val, cfg.block_size, cfg.eval_blocks)
    return train, val


##############################################################################################################
#                                                   Models                                                   #
##############################################################################################################

# Where each architecture normalises, and so which of its matrices are scale-invariant (rescaling the weight leaves
# the loss unchanged, up to the norms' ε): OLMo2 normalises q and k over the whole projection and each block's
# attention and MLP output before the residual add, so q/k/v/o_proj and up/down_proj are (gate_proj is not: SiLU
# is not homogeneous). Qwen3 normalises q and k per head and its blocks are pre-norm, so q_proj and k_proj are,
# head by head. Llama is pre-norm without QK-norm: no matrix is.
ARCHS = {
    "olmo2": dict(config=Olmo2Config, model=Olmo2ForCausalLM,
                  label="OLMo2: QK-norm over the whole projection, a norm on each block output"),
    "qwen3": dict(config=Qwen3Config, model=Qwen3ForCausalLM, label="Qwen3: per-head QK-norm, pre-norm blocks"),
    "llama": dict(config=LlamaConfig, model=LlamaForCausalLM, label="Llama: pre-norm blocks, no QK-norm (control)"),
}


def build_model(arch: str, cfg: Config, vocab_size: int, seed: int, **overrides) -> transformers.PreTrainedModel:
    """transformers' own model class from a config written here, with its own random init (normal, std 0.02),
    except the embeddings: std 1, the scale of the residual stream everywhere after a norm. With the published
    configs' 0.02 there too, OLMo2's projections of the un-normed residual stream have entries of std
    0.02·0.02·√d, so small at this demo's widths that the norms' ε is not small against their statistic and its
    matrices are not scale-invariant (at d = 4096 they are). ε = 1e-6, OLMo2's and Qwen3's published value.
    No dropout, untied embeddings, no special tokens (characters only)."""
    spec = ARCHS[arch]
    config = spec["config"](**{**dict(
        rms_norm_eps=1e-6,
        vocab_size=vocab_size, hidden_size=cfg.hidden, intermediate_size=4 * cfg.hidden,
        num_hidden_layers=cfg.layers, num_attention_heads=cfg.heads, num_key_value_heads=cfg.heads,
        head_dim=cfg.hidden // cfg.heads, max_position_embeddings=cfg.block_size, tie_word_embeddings=False,
        bos_token_id=None, eos_token_id=None, pad_token_id=None), **overrides})
    torch.manual_seed(seed)
    model = spec["model"](config)
    torch.nn.init.normal_(model.model.embed_tokens.weight, std=1.0)
    return model


##############################################################################################################
#                                                 Optimizers                                                 #
##############################################################################################################


class MuonWithAdamW(torch.optim.Optimizer):
    """torch.optim.Muon on some parameters and torch.optim.AdamW on the rest, as one optimizer: the Trainer
    steps, schedules and checkpoints one. (Muon takes only 2-D parameters, and embeddings and the output head
    are better left to AdamW anyway.)

    Its param groups are the two inner optimizers' own group dicts, in that order, and it lists them as
    ``optimizers``: so an lr scheduler (or a callback changing weight_decay) that edits this optimizer's groups
    edits what the inner ones read, and normwatch follows each group with the rule of the optimizer that owns it.
    The three share one state dict, keyed by parameter (their parameters are disjoint), so ``state[p]`` is Muon's
    momentum_buffer or AdamW's exp_avg/exp_avg_sq. step() steps Muon, then AdamW. load_state_dict (which
    accelerate calls while preparing) rebuilds the group dicts, so the inner optimizers are linked to the new
    ones."""

    def __init__(self, muon_groups: list[dict], adamw_groups: list[dict], muon: dict, adamw: dict):
        self.muon = torch.optim.Muon(muon_groups, **muon)
        self.adamw = torch.optim.AdamW(adamw_groups, **adamw)
        self.optimizers = (self.muon, self.adamw)
        super().__init__([*self.muon.param_groups, *self.adamw.param_groups], defaults={})
        self._link()

    def _link(self) -> None:
        n = len(self.muon.param_groups)
        self.muon.param_groups, self.adamw.param_groups = self.param_groups[:n], self.param_groups[n:]
        self.muon.state = self.adamw.state = self.state

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        self.muon.step()
        self.adamw.step()
        return loss

    def load_state_dict(self, state_dict: dict) -> None:
        super().load_state_dict(state_dict)
        self._link()


def make_optimizer(run: Run, model: torch.nn.Module, cfg: Config) -> dict:
    """The Trainer's keyword arguments that choose the optimizer (the lr schedule is always the Trainer's own).

    adamw: nothing; the Trainer's own AdamW (optim="adamw_torch"): λ on every matrix and embedding, none on the
    norms' scales (its usual grouping). adam-l2: torch.optim.Adam on the Trainer's same groups, so λ is coupled
    L2 (g + λw goes through Adam's moments). muon: Muon on the blocks' matrices with Moonshot's lr scaling
    (adjust_lr_fn="match_rms_adamw": the update is scaled to an RMS of 0.2·η, about AdamW's, so AdamW's η and λ
    carry over; Muon decays w by ηλ per step, as AdamW); AdamW with the recipe on embeddings and head (λ) and
    norms (no decay)."""
    if run.optimizer == "adamw":
        return {}
    adam = dict(lr=run.lr, betas=(cfg.beta1, cfg.beta2), eps=cfg.eps)
    if run.optimizer == "adam-l2":
        return dict(optimizer_cls_and_kwargs=(torch.optim.Adam, adam))
    in_blocks = {id(p) for p in model.model.layers.parameters() if p.ndim == 2}
    matrices = [p for p in model.parameters() if id(p) in in_blocks]
    decayed = [p for p in model.parameters() if id(p) not in in_blocks and p.ndim >= 2]
    scales = [p for p in model.parameters() if p.ndim < 2]
    opt = MuonWithAdamW(
        [dict(params=matrices)],
        [dict(params=decayed), dict(params=scales, weight_decay=0.0)],
        muon=dict(lr=run.lr, weight_decay=run.weight_decay, momentum=cfg.muon_momentum, nesterov=True,
                  adjust_lr_fn="match_rms_adamw"),
        adamw=dict(adam, weight_decay=run.weight_decay))
    return dict(optimizers=(opt, None))  # None: the Trainer builds the lr schedule on it


class DecayFollowsLR(TrainerCallback):
    """AdamC (Defazio 2025): every param group's weight decay follows its lr schedule, λ_t = λ·η_t/η_max, so the
    decay per step η_t·λ_t falls as η_t², and the equilibrium |w|² ∝ η_t/λ_t of a normalised matrix stays put
    while the lr decays. η_max is the group's initial_lr, the peak of the Trainer's LambdaLR schedules. It sets
    λ_t before each step: the Trainer has stepped the lr schedule after the previous one."""

    def on_train_begin(self, args, state, control, optimizer=None, **kwargs):
        self.base = [group["weight_decay"] for group in optimizer.param_groups]

    def on_step_begin(self, args, state, control, optimizer=None, **kwargs):
        for group, base in zip(optimizer.param_groups, self.base):
            group["weight_decay"] = base * group["lr"] / group["initial_lr"]


class LogWeightDecay(TrainerCallback):
    """train/weight_decay next to the Trainer's train/learning_rate: param group 0's λ (its decayed group) at
    the step the Trainer just logged, into the same writer."""

    def __init__(self, writer: SummaryWriter):
        self.writer = writer

    def on_log(self, args, state, control, logs=None, optimizer=None, **kwargs):
        if logs and "learning_rate" in logs and "loss" in logs:  # a training step's log
            self.writer.add_scalar("train/weight_decay", optimizer.param_groups[0]["weight_decay"], state.global_step)


class EvaluateAtTheEnd(TrainerCallback):
    """A validation loss after the last step too, whatever eval_steps is (transformers 5 evaluates there by
    itself, 4.x only every eval_steps)."""

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step >= state.max_steps:
            control.should_evaluate = True


##############################################################################################################
#                                 normwatch wiring, training and evaluation                                  #
##############################################################################################################


@dataclass
class Run:
    part: str  # adamw | eta-lambda | muon | l2 | schedule
    name: str  # the run directory's name within its part
    arch: str  # olmo2 | qwen3 | llama
    optimizer: str  # adamw | adam-l2 | muon
    lr: float  # η, peak
    weight_decay: float  # λ (for AdamC, at the peak lr)
    schedule: str = "constant"  # after the warmup: constant | cosine (to 0)
    decay_follows_lr: bool = False  # AdamC: λ_t = λ·η_t/η_max
    seed: int = 0


def experiment(cfg: Config, run: Run, data: CharData) -> dict:
    """What the run trains, and on what: the `demo/config` text and the hparams in its events. Two runs of the
    study with the same experiment (the recipe's olmo2 run appears in four parts) are trained once."""
    return dict(
        arch=run.arch, arch_label=ARCHS[run.arch]["label"], optimizer=run.optimizer, lr=run.lr,
        weight_decay=run.weight_decay, eta_lambda=run.lr * run.weight_decay,
        tau_steps=1 / (run.lr * run.weight_decay), schedule=run.schedule,
        decay_follows_lr=run.decay_follows_lr, seed=run.seed,
        lr_schedule=f"linear warmup from 0 over {cfg.warmup} steps, then {run.schedule}"
                    + (" to 0" if run.schedule == "cosine" else ""),
        weight_decay_logged="param group 0's (the decayed matrices)", clip="none", steps=cfg.steps,
        warmup=cfg.warmup, batch_size=cfg.batch_size, block_size=cfg.block_size, hidden=cfg.hidden,
        layers=cfg.layers, heads=cfg.heads, beta1=cfg.beta1, beta2=cfg.beta2, eps=cfg.eps,
        muon_momentum=cfg.muon_momentum if run.optimizer == "muon" else None, vocab_size=len(data.vocab),
        train_chars=len(data.train), val_chars=len(data.val), eval_blocks=cfg.eval_blocks,
        eval_every=cfg.eval_every, preset=cfg.preset, every=cfg.every, device=cfg.device, threads=cfg.threads,
        torch=torch.__version__, transformers=transformers.__version__, normwatch=normwatch.__version__)


def run_config(cfg: Config, run: Run, data: CharData) -> dict:
    """config.json: the run's part and name (its directory) and its experiment; what a rerun compares."""
    return dict(part=run.part, name=run.name, **experiment(cfg, run, data))


# may differ when a rerun reuses a finished run, or a run copies its twin
MACHINE_KEYS = ("device", "threads", "torch", "transformers", "normwatch")
HPARAMS = ("arch", "optimizer", "lr", "weight_decay", "eta_lambda", "schedule", "decay_follows_lr", "steps",
           "batch_size", "hidden", "layers", "seed")


def same_experiment(conf: dict) -> str:
    return json.dumps({k: v for k, v in conf.items() if k not in ("part", "name", *MACHINE_KEYS)}, sort_keys=True)


def write_config(writer: SummaryWriter, conf: dict) -> None:
    """The config as the text demo/config, and as TensorBoard hparams (the HParams tab: one row per run, with
    the last eval/loss and train/loss that the Trainer writes into this same run)."""
    writer.add_text("demo/config", json.dumps(conf))
    for summary in hparams({k: conf[k] for k in HPARAMS}, {"eval/loss": 0.0, "train/loss": 0.0}):
        writer.file_writer.add_summary(summary)  # the metrics' values are not written: the Trainer's are read


class Progress(TrainerCallback):
    """One line per evaluation, instead of the Trainer's log dicts: the last step's lr, weight decay (param group
    0's), training loss and gradient norm, and the validation loss after it."""

    def on_train_begin(self, args, state, control, **kwargs):
        self.start = time.perf_counter()
        print(f"{'step':>6} {'lr':>9} {'wd':>8} {'train loss':>10} {'val loss':>9} {'grad norm':>9} {'s':>6}")

    def on_evaluate(self, args, state, control, metrics=None, optimizer=None, **kwargs):
        last = next((h for h in reversed(state.log_history) if "loss" in h), {})
        group = optimizer.param_groups[0]
        lr = last.get("learning_rate", group["lr"])  # the group's lr is the next step's by now
        print(f"{state.global_step:>6} {lr:>9.3g} {group['weight_decay']:>8.3g} "
              f"{last.get('loss', math.nan):>10.4f} {metrics['eval_loss']:>9.4f} "
              f"{last.get('grad_norm', math.nan):>9.4f} {time.perf_counter() - self.start:>6.1f}")


def training_args(cfg: Config, run: Run, run_dir: Path) -> TrainingArguments:
    cuda = cfg.device.startswith("cuda")
    return TrainingArguments(
        output_dir=str(run_dir), max_steps=cfg.steps, per_device_train_batch_size=cfg.batch_size,
        per_device_eval_batch_size=cfg.batch_size, learning_rate=run.lr, weight_decay=run.weight_decay,
        adam_beta1=cfg.beta1, adam_beta2=cfg.beta2, adam_epsilon=cfg.eps, optim="adamw_torch",
        lr_scheduler_type="cosine" if run.schedule == "cosine" else "constant_with_warmup",
        warmup_steps=cfg.warmup,
        # No clipping (Adam's step hardly depends on |g|, and the schedule part wants the raw |g|), yet |g| computed
        # and logged: an infinite bound scales by min(1, ∞/|g|) = 1 exactly. (With 0, transformers 4.51 logs no |g|.)
        max_grad_norm=math.inf,
        logging_steps=1,  # every step's loss, lr and |g| (on a GPU: one host sync per step, a small cost)
        eval_strategy="steps", eval_steps=cfg.eval_every, eval_on_start=True, prediction_loss_only=True,
        save_strategy="no", report_to="none", disable_tqdm=True, seed=run.seed, data_seed=cfg.seed,
        use_cpu=not cuda, bf16=cuda)  # bf16 autocast on CUDA; the weights stay fp32


def train(cfg: Config, run: Run, data: CharData, run_dir: Path) -> dict:
    """One run: a fresh model, the Trainer with normwatch's callback, and one TensorBoard run in run_dir."""
    train_set, val_set = datasets(data, cfg)
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "config.json").write_text(json.dumps(run_config(cfg, run, data), indent=1))
    writer = SummaryWriter(str(run_dir))
    write_config(writer, experiment(cfg, run, data))
    model = build_model(run.arch, cfg, len(data.vocab), run.seed)
    # All of normwatch: its Trainer callback, writing into this run's directory (its own event file next to the
    # Trainer's), so that each run is one TensorBoard run. MuonWithAdamW lists its optimizers, so normwatch follows
    # each group with its owner's rule (Muon's or AdamW's).
    watch = NormwatchCallback(logdir=str(run_dir), every=cfg.every)
    callbacks = [LogWeightDecay(writer), TensorBoardCallback(writer), watch, Progress(), EvaluateAtTheEnd()]
    if run.decay_follows_lr:
        callbacks.insert(0, DecayFollowsLR())
    trainer = Trainer(model=model, args=training_args(cfg, run, run_dir), train_dataset=train_set,
                      eval_dataset=val_set, callbacks=callbacks, **make_optimizer(run, model, cfg))
    for quiet in (PrinterCallback, ProgressCallback):
        trainer.remove_callback(quiet)  # Progress prints a table instead of one dict per step
    adamc = ", λ follows the lr (AdamC)" if run.decay_follows_lr else ""
    print(f"== {run.part}/{run.name}: {ARCHS[run.arch]['label']}; {run.optimizer}, η {run.lr:g}, "
          f"λ {run.weight_decay:g} (ηλ {run.lr * run.weight_decay:.3g}), {run.schedule}{adamc}")
    t0 = time.perf_counter()
    try:
        trainer.train()
    finally:
        writer.close()
    layers = [layer.name for layer in watch.watcher.layers] if watch.watcher else []
    result = dict(summarise_log(trainer.state.log_history, cfg.warmup),
                  train_time_s=round(time.perf_counter() - t0, 2), normwatch_layers=layers)
    print(f"   val loss {result['val_loss']:.4f}, train loss {result['train_loss']:.4f}; normwatch watched "
          f"{len(layers)} scale-invariant layers{' (none expected: the control)' if run.arch == 'llama' else ''}")
    (run_dir / "result.json").write_text(json.dumps(result, indent=1))  # written last: the run is finished
    return result


def summarise_log(history: list[dict], warmup: int) -> dict:
    """Final validation loss, the mean training loss of the last 5% of steps, and the gradient norm's course
    after the warmup in means over windows of 10% of the steps: its lowest, its highest after that, its last
    (the steps are the windows' last)."""
    steps = [h for h in history if "loss" in h and "grad_norm" in h]
    evals = [h for h in history if "eval_loss" in h]
    n = len(steps)
    window = max(1, n // 10)
    norms = np.array([h["grad_norm"] for h in steps], dtype=np.float64)
    first = min(warmup, max(0, n - window))  # the first window ends after the warmup
    means = np.convolve(norms, np.ones(window) / window, mode="valid")[first:]
    at = [h["step"] for h in steps][window - 1 + first:]
    low = int(np.argmin(means))
    high = low + int(np.argmax(means[low:]))
    return dict(steps=n, val_loss=evals[-1]["eval_loss"],
                train_loss=float(np.mean([h["loss"] for h in steps][-max(1, n // 20):])),
                grad_norm_low=float(means[low]), grad_norm_low_step=at[low], grad_norm_high=float(means[high]),
                grad_norm_high_step=at[high], grad_norm_end=float(means[-1]),
                val_losses=[(h["step"], h["eval_loss"]) for h in evals])


##############################################################################################################
#                                                   Study                                                    #
##############################################################################################################


def plan(cfg: Config) -> list[tuple[Run, Path]]:
    """Every run of the chosen parts, with its run directory, in order."""
    lr, wd, out = cfg.lr, cfg.weight_decay, Path(cfg.out)
    one = dict(arch=cfg.arch, seed=cfg.seed)
    runs = []
    for part in cfg.parts:
        if part == "adamw":
            runs += [Run(part, arch, arch, "adamw", lr, wd, seed=cfg.seed) for arch in cfg.archs]
        elif part == "eta-lambda":  # rows λ, columns η; the diagonal i + j = middle holds ηλ fixed
            runs += [Run(part, f"lr{lr * a:g}-wd{wd * b:g}", optimizer="adamw", lr=lr * a, weight_decay=wd * b, **one)
                     for b in cfg.grid for a in cfg.grid]
        elif part == "muon":
            runs += [Run(part, "muon", optimizer="muon", lr=lr, weight_decay=wd, **one),
                     Run(part, "adamw", optimizer="adamw", lr=lr, weight_decay=wd, **one)]
        elif part == "l2":
            runs += [Run(part, "adam-l2", optimizer="adam-l2", lr=lr, weight_decay=wd, **one),
                     Run(part, "adamw", optimizer="adamw", lr=lr, weight_decay=wd, **one)]
        elif part == "schedule":  # a larger λ: τ = 1/(ηλ) stays short while the lr decays, so |w| can follow
            # it for most of the run, which is where AdamW's gradient norm rises (at the recipe's λ, |w| falls
            # behind the schedule early and the rise is small: measured, λ = 2.5 against 10 on the cpu preset)
            decay = wd * cfg.schedule_decay
            runs += [Run(part, "adamw", optimizer="adamw", lr=lr, weight_decay=decay, schedule="cosine", **one),
                     Run(part, "adamc", optimizer="adamw", lr=lr, weight_decay=decay, schedule="cosine",
                         decay_follows_lr=True, **one)]
    return [(run, out / run.part / run.name) for run in runs]


def finished(run_dir: Path, expected: dict) -> dict | None:
    """The result of a finished run with the same experiment config, or None; an unfinished run's directory
    (left by a crash or Ctrl-C) is removed."""
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


def copy_run(twin: Path, run_dir: Path, conf: dict) -> dict:
    """A finished run of the same experiment, copied into run_dir (its events carry no part or name), with its
    own config.json, which says where it comes from; the result last, as train writes it."""
    shutil.copytree(twin, run_dir, ignore=shutil.ignore_patterns("result.json", "config.json"))
    (run_dir / "config.json").write_text(json.dumps(dict(conf, copied_from=str(twin)), indent=1))
    shutil.copy2(twin / "result.json", run_dir / "result.json")
    return json.loads((run_dir / "result.json").read_text())


def explain(cfg: Config) -> None:
    """The recipe's time scales and AdamW's predicted equilibrium rotation, and what the parts vary."""
    x = cfg.lr * cfg.weight_decay
    angle = theory.adamw_angle(cfg.lr, cfg.weight_decay, cfg.beta1)
    print(f"recipe: η {cfg.lr:g}, λ {cfg.weight_decay:g}: ηλ = {x:.3g}, so τ = 1/(ηλ) = {1 / x:.0f} steps of "
          f"{cfg.steps} and |w|² of a normalised matrix relaxes in 1/(2ηλ) = {1 / (2 * x):.0f}; AdamW's equilibrium "
          f"rotation √(2ηλ(1−β₁)/(1+β₁)) ≈ {angle:.4f} rad per step (normwatch.theory.adamw_angle).")
    if "eta-lambda" in cfg.parts:
        print(f"eta-lambda: η and λ each × {', '.join(f'{g:g}' for g in cfg.grid)}; where the factors multiply to 1, "
              f"ηλ stays {x:.3g} (the same rotation predicted), elsewhere it moves.")


def study(cfg: Config, why: str) -> int:
    t_study = time.perf_counter()
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    threads = torch.get_num_threads()
    print(f"preset {cfg.preset} ({why}): {cfg.layers} blocks of width {cfg.hidden}, {cfg.heads} heads, "
          f"{cfg.batch_size} × {cfg.block_size} characters per step, {cfg.steps} steps per run, device "
          f"{cfg.device} ({threads} CPU thread{'s' * (threads > 1)}), torch {torch.__version__}, transformers "
          f"{transformers.__version__}; study directory {cfg.out}")
    try:
        data = tokenize(fetch_text(cfg.data), cfg.val_fraction)
        datasets(data, cfg)
    except DataError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"Tiny Shakespeare from {cfg.data}: {len(data.vocab)} characters, {len(data.train):,} training and "
          f"{len(data.val):,} validation characters")
    explain(cfg)
    runs, results, done = plan(cfg), [], {}  # done: experiment → the directory of its finished run
    try:
        for k, (run, run_dir) in enumerate(runs, 1):
            t_run = time.perf_counter()
            conf = run_config(cfg, run, data)
            res, twin = finished(run_dir, conf), done.get(same_experiment(conf))
            if res is not None:
                print(f"[{k}/{len(runs)}] {run_dir}: finished before, val loss {res['val_loss']:.4f}: skipped")
            elif twin is not None:
                res = copy_run(twin, run_dir, conf)
                print(f"[{k}/{len(runs)}] {run_dir}: the same experiment as {twin}, copied from there")
            else:
                print(f"\n[{k}/{len(runs)}] {run_dir}")
                res = train(cfg, run, data, run_dir)
            done.setdefault(same_experiment(conf), run_dir)
            results.append((run, res, time.perf_counter() - t_run))
    except KeyboardInterrupt:
        print(f"\ninterrupted: the {len(results)} finished runs stay in {cfg.out}; the same command goes on "
              f"from there")
        return 130
    summarise(cfg, results, time.perf_counter() - t_study)
    report(cfg, [run_dir for _, run_dir in runs])
    return 0


def report(cfg: Config, run_dirs: list[Path]) -> None:
    """normwatch's report on the study's runs (verdicts, figures), in <study>/report; one line if it cannot."""
    try:
        from normwatch.report import write_report
        path = write_report(run_dirs, Path(cfg.out) / "report")
    except ImportError as e:  # matplotlib, the report's extra: its one sentence says how to install it
        print(f"report: skipped: {e}")
        return
    except ValueError as e:  # no run it can read
        print(f"report: skipped: {e}")
        return
    print(f"report: {path.with_name('report.html')} (also report.md and verdicts.json there)")


def summarise(cfg: Config, results: list[tuple[Run, dict, float]], wall: float) -> None:
    """Wall time per part, each run's final losses and gradient-norm course, and the grid's validation losses."""
    parts = {run.part: 0.0 for run, _, _ in results}
    for run, _, seconds in results:
        parts[run.part] += seconds
    print(f"\n== study {cfg.out}: {len(results)} runs in {wall:.0f} s ("
          + ", ".join(f"{part} {seconds:.0f} s" for part, seconds in parts.items()) + ")")
    print("|g|: means over 10% of the steps after the warmup, lowest → highest after it → last (at step)")
    for run, res, _ in results:
        if run.part != "eta-lambda":
            print(f"{run.part:>9} {run.name:>8}: val loss {res['val_loss']:.4f}, train loss {res['train_loss']:.4f}; "
                  f"|g| {res['grad_norm_low']:.3f} ({res['grad_norm_low_step']}) → {res['grad_norm_high']:.3f} "
                  f"({res['grad_norm_high_step']}) → {res['grad_norm_end']:.3f}")
    grid = {(run.lr, run.weight_decay): res for run, res, _ in results if run.part == "eta-lambda"}
    if grid:
        lrs, wds = sorted({k[0] for k in grid}), sorted({k[1] for k in grid})
        print("eta-lambda: final val loss; rows λ, columns η; * where ηλ is the recipe's")
        print(f"{'λ / η':>10}" + "".join(f"{lr:>10g}" for lr in lrs))
        for wd in wds:
            cells = [(f"{grid[lr, wd]['val_loss']:.4f}" + ("*" if math.isclose(lr * wd, cfg.lr * cfg.weight_decay)
                                                           else " ")) if (lr, wd) in grid else "-" for lr in lrs]
            print(f"{wd:>10g}" + "".join(f"{c:>10}" for c in cells))


##############################################################################################################
#                                                    main                                                    #
##############################################################################################################


def main(argv: list[str] | None = None) -> int:
    cfg, why = parse_args(argv)
    return study(cfg, why)


KINDS = {int: "an integer", float: "a number"}


def _number(kind, low: str):
    """An argparse type: a finite number of `kind` that is > 0 (low="positive") or ≥ 0 (low="non-negative")."""
    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {KINDS[kind]}, got {text!r}") from None
        if not math.isfinite(value) or value < 0 or (low == "positive" and value == 0):
            raise argparse.ArgumentTypeError(f"expected a {low} {KINDS[kind].split()[-1]}, got {text!r}")
        return value
    return parse


def _names(allowed):
    def parse(text: str) -> tuple[str, ...]:
        names = tuple(s for s in text.split(",") if s)
        unknown = [s for s in names if s not in allowed]
        if unknown or not names:
            raise argparse.ArgumentTypeError(f"expected a comma-separated list of {', '.join(allowed)}, got {text!r}")
        return names
    return parse


def _factors(text: str) -> tuple[float, ...]:
    try:
        factors = tuple(float(s) for s in text.split(","))
    except ValueError:
        factors = ()
    if not factors or not all(f > 0 and math.isfinite(f) for f in factors):
        raise argparse.ArgumentTypeError(f"expected comma-separated positive numbers, got {text!r}")
    return factors


def parse_args(argv: list[str] | None) -> tuple[Config, str]:
    p = argparse.ArgumentParser(prog="train_lm.py", description=__doc__.split("\n\n")[0])
    p.add_argument("--preset", choices=sorted(PRESETS), help="default: full with CUDA, cpu without")
    p.add_argument("--parts", type=_names(PARTS), default=PARTS, help="comma-separated, of " + ",".join(PARTS))
    p.add_argument("--data", default=Config.data, help=f"a copy of Tiny Shakespeare's input.txt, downloaded there "
                   f"when missing (default {Config.data})")
    p.add_argument("--out", help="study directory (default runs/lm-<preset>)")
    p.add_argument("--device", choices=("cpu", "cuda"), help="default: cuda if available, else cpu")
    p.add_argument("--archs", type=_names(tuple(ARCHS)),
                   help="the adamw part's architectures, comma-separated, of " + ",".join(ARCHS))
    p.add_argument("--arch", choices=tuple(ARCHS), help="the other parts' architecture (default olmo2)")
    p.add_argument("--steps", type=_number(int, "positive"), help="optimizer steps per run")
    p.add_argument("--batch-size", type=_number(int, "positive"), help="sequences per step")
    p.add_argument("--block-size", type=_number(int, "positive"), help="characters per sequence")
    p.add_argument("--hidden", type=_number(int, "positive"), help="model width")
    p.add_argument("--layers", type=_number(int, "positive"), help="transformer blocks")
    p.add_argument("--heads", type=_number(int, "positive"), help="attention heads; must divide --hidden")
    p.add_argument("--lr", type=_number(float, "positive"), help="η, the peak learning rate")
    p.add_argument("--weight-decay", type=_number(float, "positive"), help="λ (> 0: every part is about it)")
    p.add_argument("--warmup", type=_number(int, "non-negative"), help="steps of linear lr warmup")
    p.add_argument("--grid", type=_factors, help="eta-lambda's factors of η and of λ (default 0.25,1,4)")
    p.add_argument("--eval-every", type=_number(int, "positive"), help="steps between validation losses")
    p.add_argument("--eval-blocks", type=_number(int, "non-negative"),
                   help="validation sequences per evaluation (0 = all)")
    p.add_argument("--seed", type=_number(int, "non-negative"), default=Config.seed)
    p.add_argument("--every", type=_number(int, "positive"), default=Config.every,
                   help="normwatch statistics every N steps")
    a = p.parse_args(argv)

    device = a.device or ("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cuda" and not torch.cuda.is_available():
        p.error("--device cuda was asked for, but torch sees no CUDA device")
    if a.preset:
        preset, why = a.preset, "chosen with --preset"
    elif device == "cuda":
        preset, why = "full", f"the default on CUDA: {torch.cuda.get_device_name()}"
    else:
        preset, why = "cpu", "the default without CUDA: a small model, ηλ raised; --preset full overrides"
    cfg = Config(preset=preset, parts=a.parts, data=a.data, device=device, seed=a.seed, every=a.every,
                 **PRESETS[preset])
    for field in ("archs", "arch", "steps", "batch_size", "block_size", "hidden", "layers", "heads", "lr",
                  "weight_decay", "warmup", "grid", "eval_every", "eval_blocks"):
        if getattr(a, field) is not None:
            setattr(cfg, field, getattr(a, field))
    if cfg.hidden % cfg.heads or (cfg.hidden // cfg.heads) % 2:
        p.error(f"--heads {cfg.heads} must divide --hidden {cfg.hidden} into an even head size (rotary embeddings)")
    if cfg.warmup >= cfg.steps:
        p.error(f"--warmup {cfg.warmup} must be shorter than the run's {cfg.steps} steps")
    if cfg.block_size < 2:
        p.error(f"--block-size {cfg.block_size} leaves nothing to predict: use at least 2 characters")
    if cfg.lr * cfg.weight_decay * max(cfg.grid) ** 2 >= 1:
        p.error(f"ηλ = {cfg.lr * cfg.weight_decay * max(cfg.grid) ** 2:g} (at the grid's largest) would shrink w by "
                f"100% or more per step: lower --lr or --weight-decay")
    cfg.out = a.out or f"runs/lm-{preset}"
    return cfg, why


if __name__ == "__main__":
    sys.exit(main())
