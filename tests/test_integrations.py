"""The integrations in real frameworks on CPU: Lightning, the Hugging Face Trainer and accelerate.

Each run is compared with the same training done through plain ``normwatch.attach`` in a hand-written
loop (same init, same batches, same optimizer), and with quantities computed in the test from the
weights and gradients the loop captured: |w|², lars_ratio = η|g|/|w| (SGD), AdamW's shrink.
"""

import datetime
import importlib
import math
import socket
import sys
import warnings
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from torch import nn
from torch.utils.data import DataLoader

import normwatch
from tests.models import seeded_batches, small_bn_net

LR, WD, MOMENTUM = 0.05, 5e-3, 0.9


_net, _batches = small_bn_net, seeded_batches


def _sgd(params) -> torch.optim.Optimizer:
    return torch.optim.SGD(params, lr=LR, momentum=MOMENTUM, weight_decay=WD)


def _scalars(logdir) -> dict[str, list[tuple[int, float]]]:
    acc = EventAccumulator(str(logdir), size_guidance={"scalars": 0})
    acc.Reload()
    return {tag: [(e.step, e.value) for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}


def _plain(batches, tmp_path, *, accumulate: int = 1, clip: float | None = None, bf16: bool = False):
    """The reference: a hand-written loop with ``normwatch.attach``; also captures w and g of layer "0"."""
    model = _net()
    opt = _sgd(model.parameters())
    captured = []  # (w before the step, g the step used, total grad norm before clipping), float64
    with normwatch.attach(model, opt, logdir=str(tmp_path / "plain"), keep_history=True) as watch:
        for i in range(0, len(batches), accumulate):
            for x, y in batches[i:i + accumulate]:
                with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16, cache_enabled=False):
                    loss = F.cross_entropy(model(x), y)
                (loss / accumulate).backward()
            total = torch.nn.utils.clip_grad_norm_(model.parameters(), clip if clip else math.inf)
            captured.append((model[0].weight.detach().double().clone(), model[0].weight.grad.double().clone(),
                             total.item()))
            opt.step()
            opt.zero_grad()
    return watch.history, captured


def _assert_same(history, reference, rename=lambda layer: layer, abs_tol: float = 1e-9) -> None:
    """Same tags, same steps, same values (float tolerance) as the plain loop's history.

    Cosines (cos_wg, grad_autocorr) carry float32 rounding of ~1e-7 whatever their size (cos_wg is that noise
    around 0 for scale-invariant weights), and sum in another order with fused statistics: compared to 1e-6.
    """
    for tag, points in reference.items():
        _, metric, layer = tag.split("/")
        mine = history[f"normwatch/{metric}/{rename(layer)}"]
        assert [s for s, _ in mine] == [s for s, _ in points], tag
        tol = 1e-6 if metric in ("cos_wg", "grad_autocorr") else abs_tol
        assert [v for _, v in mine] == pytest.approx([v for _, v in points], rel=1e-5, abs=tol), tag


def _lars_ratio(captured) -> list[float]:
    return [(LR * g.norm() / w.norm()).item() for w, g, _ in captured]


# -- Lightning -------------------------------------------------------------------------------------------------
def _lightning(package: str):
    """The Lightning package and the NormwatchCallback class for it (skips when it is not installed)."""
    pl = pytest.importorskip(package)
    from normwatch.integrations import lightning as nw_lightning

    return pl, nw_lightning.NormwatchCallback if package == "lightning.pytorch" else nw_lightning.PLNormwatchCallback


def _module(pl, call: str = "self"):
    """A LightningModule around ``_net()``; ``call="net"`` makes training_step bypass its own forward."""

    class Module(pl.LightningModule):
        def __init__(self) -> None:
            super().__init__()
            self.net = _net()
            self.global_steps: list[int] = []  # trainer.global_step at each optimizer step

        def forward(self, x):
            return self.net(x)

        def training_step(self, batch, batch_idx):
            x, y = batch
            loss = F.cross_entropy(self(x) if call == "self" else self.net(x), y)
            self.log("train_loss", loss)
            return loss

        def configure_optimizers(self):
            return _sgd(self.parameters())

        def on_before_optimizer_step(self, optimizer) -> None:
            self.global_steps.append(self.trainer.global_step)

    return Module()


def _fit(pl, module, batches, tmp_path, callbacks, **trainer_kwargs):
    kwargs = {"max_steps": 6, "logger": pl.loggers.TensorBoardLogger(str(tmp_path), name="tb"), "accelerator": "cpu",
              "devices": 1, "enable_progress_bar": False, "enable_checkpointing": False, "enable_model_summary": False,
              "log_every_n_steps": 1, "default_root_dir": str(tmp_path), **trainer_kwargs}
    trainer = pl.Trainer(callbacks=callbacks, **kwargs)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*(num_workers|does not have many workers|LeafSpec).*")
        trainer.fit(module, DataLoader(batches, batch_size=None))
    return trainer


@pytest.mark.filterwarnings("error:normwatch. torch.compile")  # fused: no fallback to the eager path
@pytest.mark.parametrize(("package", "fused"), [("lightning.pytorch", False), ("pytorch_lightning", False),
                                                ("lightning.pytorch", True)])
def test_lightning_writes_into_the_tensorboard_logger_at_the_trainer_steps(tmp_path, package, fused) -> None:
    """The normwatch tags land in the logger's own run, at trainer.global_step, equal to a plain loop's."""
    pl, callback_class = _lightning(package)
    batches = _batches(6)
    reference, captured = _plain(batches, tmp_path)
    module = _module(pl)
    trainer = _fit(pl, module, batches, tmp_path, [callback_class(fused=fused)])
    assert module.global_steps == [0, 1, 2, 3, 4, 5]
    scalars = _scalars(trainer.logger.log_dir)  # the logger's run directory: one run, one event file
    assert [s for s, _ in scalars["train_loss"]] == module.global_steps  # Lightning's own axis
    nw = {tag: points for tag, points in scalars.items() if tag.startswith("normwatch/")}
    assert {tag.split("/")[2] for tag in nw} == {"net.0", "net.4"}
    assert [s for s, _ in nw["normwatch/w_norm2/net.0"]] == module.global_steps
    _assert_same(nw, reference, rename=lambda layer: f"net.{layer}")
    assert [v for _, v in nw["normwatch/lars_ratio/net.0"]] == pytest.approx(_lars_ratio(captured), rel=1e-5)
    assert [v for _, v in nw["normwatch/w_norm2/net.0"]] == pytest.approx(
        [(w.norm() ** 2).item() for w, _, _ in captured], rel=1e-5)


@pytest.mark.parametrize(("trainer_kwargs", "plain_kwargs"), [
    pytest.param({"accumulate_grad_batches": 2}, {"accumulate": 2}, id="accumulate_grad_batches"),
    pytest.param({"gradient_clip_val": 0.05}, {"clip": 0.05}, id="gradient_clip_val"),
    pytest.param({"precision": "bf16-mixed"}, {"bf16": True}, id="bf16-mixed"),
])
def test_lightning_accumulation_clipping_and_amp_match_the_plain_loop(tmp_path, trainer_kwargs, plain_kwargs) -> None:
    """One record per optimizer step, with the accumulated, clipped gradient, under autocast too."""
    pl, callback_class = _lightning("lightning.pytorch")
    batches = _batches(8)
    reference, captured = _plain(batches, tmp_path, **plain_kwargs)
    module = _module(pl)
    callback = callback_class(keep_history=True)
    _fit(pl, module, batches, tmp_path, [callback], max_steps=len(captured), **trainer_kwargs)
    assert [s for s, _ in callback.watcher.history["normwatch/w_norm2/net.0"]] == module.global_steps
    assert module.global_steps == list(range(len(captured)))
    _assert_same(callback.watcher.history, reference, rename=lambda layer: f"net.{layer}")
    expected = _lars_ratio(captured)
    assert [v for _, v in callback.watcher.history["normwatch/lars_ratio/net.0"]] == pytest.approx(expected, rel=1e-5)
    if "clip" in plain_kwargs:  # clipping was active: the unclipped gradient would give other ratios
        assert all(total > 2 * plain_kwargs["clip"] for _, _, total in captured)
        unclipped = [r * total / plain_kwargs["clip"] for r, (_, _, total) in zip(expected, captured)]
        assert all(u > 2 * r for u, r in zip(unclipped, expected))


def test_lightning_resumed_fit_continues_the_same_curves(tmp_path) -> None:
    """normwatch's state travels in the Lightning checkpoint: 3 steps + resume + 3 steps = 6 straight steps."""
    pl, callback_class = _lightning("lightning.pytorch")
    batches = _batches(1) * 3  # one batch repeated: resuming where Lightning's data order restarts does not matter
    reference, _ = _plain(batches * 2, tmp_path)
    first = callback_class()
    trainer = _fit(pl, _module(pl), batches, tmp_path / "a", [first], max_steps=3)
    trainer.save_checkpoint(str(tmp_path / "a.ckpt"))
    second = callback_class(keep_history=True)
    module = _module(pl)
    trainer = pl.Trainer(max_steps=6, logger=False, enable_progress_bar=False, enable_checkpointing=False,
                         enable_model_summary=False, callbacks=[second], default_root_dir=str(tmp_path / "b"))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        trainer.fit(module, DataLoader(batches, batch_size=None), ckpt_path=str(tmp_path / "a.ckpt"))
    assert module.global_steps == [3, 4, 5]
    resumed = second.watcher.history
    tail = {tag: [(s, v) for s, v in points if s >= 3] for tag, points in reference.items()}
    _assert_same(resumed, tail, rename=lambda layer: f"net.{layer}")


def test_lightning_resumed_from_a_checkpoint_without_normwatch_state_keeps_the_axis_and_warns(tmp_path) -> None:
    pl, callback_class = _lightning("lightning.pytorch")
    batches = _batches(1) * 2
    trainer = _fit(pl, _module(pl), batches, tmp_path / "a", [], max_steps=2)
    trainer.save_checkpoint(str(tmp_path / "a.ckpt"))
    callback = callback_class(keep_history=True)
    trainer = pl.Trainer(max_steps=4, logger=False, enable_progress_bar=False, enable_checkpointing=False,
                         enable_model_summary=False, callbacks=[callback], default_root_dir=str(tmp_path / "b"))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        trainer.fit(_module(pl), DataLoader(batches, batch_size=None), ckpt_path=str(tmp_path / "a.ckpt"))
    assert sum("momentum from steps normwatch did not see" in str(w.message) for w in caught) == 1
    history = callback.watcher.history
    assert [s for s, _ in history["normwatch/w_norm2/net.0"]] == [2, 3]
    assert "normwatch/angle/net.0" in history  # split and autocorr wait for the restored momentum to decay
    assert "normwatch/shrink/net.0" not in history and "normwatch/grad_autocorr/net.0" not in history


def test_lightning_without_a_tensorboard_logger_writes_under_default_root_dir(tmp_path) -> None:
    pl, callback_class = _lightning("lightning.pytorch")
    for _ in range(2):
        _fit(pl, _module(pl), _batches(2), tmp_path, [callback_class()], max_steps=2, logger=False)
    runs = sorted(p.name for p in (tmp_path / "normwatch").iterdir())
    assert runs == ["version_0", "version_1"]
    assert [s for s, _ in _scalars(tmp_path / "normwatch" / "version_1")["normwatch/angle/net.4"]] == [0, 1]


def test_lightning_warns_once_when_training_step_bypasses_forward_and_module_fixes_it(tmp_path) -> None:
    pl, callback_class = _lightning("lightning.pytorch")
    batches = _batches(3)
    callback = callback_class(keep_history=True)
    with pytest.warns(RuntimeWarning, match=r"did not call the LightningModule's forward") as record:
        _fit(pl, _module(pl, call="net"), batches, tmp_path / "a", [callback], max_steps=3)
    assert sum("did not call" in str(w.message) for w in record) == 1
    assert callback.watcher.layers == [] and callback.watcher.history == {}

    reference, _ = _plain(batches, tmp_path)
    callback = callback_class(module="net", keep_history=True)
    with warnings.catch_warnings():
        warnings.filterwarnings("error", message=".*did not call.*")
        _fit(pl, _module(pl, call="net"), batches, tmp_path / "b", [callback], max_steps=3)
    assert [layer.name for layer in callback.watcher.layers] == ["0", "4"]
    _assert_same(callback.watcher.history, reference)


def test_lightning_several_optimizers_need_optimizer_index(tmp_path) -> None:
    pl, callback_class = _lightning("lightning.pytorch")

    class TwoOptimizers(pl.LightningModule):
        def __init__(self) -> None:
            super().__init__()
            self.automatic_optimization = False
            self.net, self.head = _net(), nn.Linear(5, 5)

        def forward(self, x):
            return self.head(self.net(x))

        def training_step(self, batch, batch_idx):
            first, second = self.optimizers()
            loss = F.cross_entropy(self(batch[0]), batch[1])
            first.zero_grad()
            second.zero_grad()
            self.manual_backward(loss)
            first.step()
            second.step()

        def configure_optimizers(self):
            return _sgd(self.net.parameters()), torch.optim.SGD(self.head.parameters(), lr=0.1)

    with pytest.raises(ValueError, match=r"trainer has 2: pass NormwatchCallback\(optimizer_index=i\)"):
        _fit(pl, TwoOptimizers(), _batches(2), tmp_path / "a", [callback_class()], max_steps=2)
    callback = callback_class(optimizer_index=0, keep_history=True)
    _fit(pl, TwoOptimizers(), _batches(2), tmp_path / "b", [callback], max_steps=4)
    assert [layer.name for layer in callback.watcher.layers] == ["net.0", "net.4"]
    assert [s for s, _ in callback.watcher.history["normwatch/w_norm2/net.0"]] == [0, 1]


def test_lightning_callback_validates_its_arguments(tmp_path) -> None:
    pl, callback_class = _lightning("lightning.pytorch")
    with pytest.raises(TypeError, match=r"unexpected keyword arguments 'evry'.*every"):
        callback_class(evry=2)
    with pytest.raises(ValueError, match="optimizer_index"):
        callback_class(optimizer_index=-1)
    with pytest.raises(ValueError, match=r"module='trunk'.*children: net"):
        _fit(pl, _module(pl), _batches(1), tmp_path, [callback_class(module="trunk")], max_steps=1)


@pytest.mark.skipif(not torch.distributed.is_available() or not torch.distributed.is_gloo_available(),
                    reason="needs gloo")
def test_lightning_ddp_rank_zero_writes_what_one_process_records(tmp_path) -> None:
    """2 CPU processes (ddp_fork), each on half of every batch; GroupNorm, so the averaged gradient is the
    whole batch's: the one run rank zero writes equals a single-process plain loop on whole batches."""
    pl, callback_class = _lightning("lightning.pytorch")

    def gn_net() -> nn.Sequential:
        torch.manual_seed(0)
        return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1, bias=False), nn.GroupNorm(2, 8), nn.ReLU(),
                             nn.MaxPool2d(2), nn.Conv2d(8, 8, 3, padding=1), nn.GroupNorm(4, 8), nn.ReLU(),
                             nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 5))

    batches = _batches(4)

    class Halves(pl.LightningModule):
        def __init__(self) -> None:
            super().__init__()
            self.net = gn_net()

        def forward(self, x):
            return self.net(x)

        def training_step(self, batch, batch_idx):
            return F.cross_entropy(self(batch[0]), batch[1])

        def configure_optimizers(self):
            return _sgd(self.parameters())

        def train_dataloader(self):
            rank = self.global_rank
            return DataLoader([(x.chunk(2)[rank], y.chunk(2)[rank]) for x, y in batches], batch_size=None)

    plain = gn_net()
    opt = _sgd(plain.parameters())
    with normwatch.attach(plain, opt, logdir=str(tmp_path / "plain"), keep_history=True) as reference:
        for x, y in batches:
            F.cross_entropy(plain(x), y).backward()
            opt.step()
            opt.zero_grad()

    trainer = pl.Trainer(accelerator="cpu", devices=2, strategy="ddp_fork", max_steps=4, use_distributed_sampler=False,
                         logger=pl.loggers.TensorBoardLogger(str(tmp_path / "tb"), name="", version=0),
                         callbacks=[callback_class()], enable_progress_bar=False, enable_checkpointing=False,
                         enable_model_summary=False, default_root_dir=str(tmp_path / "tb"))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        trainer.fit(Halves())
    written = [path.parent for path in (tmp_path / "tb").rglob("events.out.tfevents.*")
               if any(tag.startswith("normwatch/") for tag in _scalars(path.parent))]
    assert written == [tmp_path / "tb" / "version_0"]  # one run, one writer: rank zero's
    assert len(list(written[0].glob("events.out.tfevents.*"))) == 1
    # The gradient is averaged over ranks in another order: float32 rounding, ~1e-8 on |w|² ≈ 2 in growth.
    _assert_same(_scalars(written[0]), reference.history, rename=lambda layer: f"net.{layer}", abs_tol=1e-7)


def test_lightning_fp16_skipped_step_keeps_the_trainer_axis(tmp_path) -> None:
    """16-mixed with a GradScaler (CPU here): the step with an inf gradient is skipped, not recorded."""
    pl, callback_class = _lightning("lightning.pytorch")
    from lightning.pytorch.plugins import MixedPrecision

    class Overflow(pl.Callback):
        def on_after_backward(self, trainer, pl_module) -> None:
            if trainer.global_step == 2:
                pl_module.net[4].weight.grad[0, 0, 0, 0] = math.inf

    module, callback = _module(pl), callback_class(keep_history=True)
    _fit(pl, module, _batches(5), tmp_path, [Overflow(), callback], max_steps=5,
         plugins=[MixedPrecision("16-mixed", "cpu")])
    assert module.global_steps == [0, 1, 2, 3, 4]
    assert [s for s, _ in callback.watcher.history["normwatch/w_norm2/net.0"]] == [0, 1, 3, 4]


# -- Hugging Face Trainer -------------------------------------------------------------------------------------------
class _HFNet(nn.Module):
    """A tiny BN model in the Trainer's calling convention: ``model(x=..., labels=...) -> {"loss", "logits"}``."""

    def __init__(self) -> None:
        super().__init__()
        self.body = _net()

    def forward(self, x, labels):
        logits = self.body(x)
        return {"loss": F.cross_entropy(logits, labels), "logits": logits}


def test_hf_trainer_writes_next_to_its_tensorboard_logs_and_matches_a_plain_loop(tmp_path) -> None:
    transformers = pytest.importorskip("transformers")
    from normwatch.integrations.transformers import NormwatchCallback

    gen = torch.Generator().manual_seed(1)
    data = [{"x": torch.randn(3, 8, 8, generator=gen), "labels": torch.randint(0, 5, (), generator=gen)}
            for _ in range(64)]
    seen = []  # the batches in the order the Trainer consumed them (its sampler shuffles)

    def collate(items):
        seen.append({key: torch.stack([item[key] for item in items]) for key in ("x", "labels")})
        return seen[-1]

    class GlobalSteps(transformers.TrainerCallback):
        def __init__(self) -> None:
            self.steps: list[int] = []

        def on_optimizer_step(self, args, state, control, **kwargs):
            self.steps.append(state.global_step)

    args = transformers.TrainingArguments(
        output_dir=str(tmp_path / "out"), max_steps=4, per_device_train_batch_size=16, learning_rate=1e-2,
        weight_decay=0.05, lr_scheduler_type="constant", max_grad_norm=1.0, use_cpu=True, report_to=["tensorboard"],
        logging_steps=1, save_strategy="no", disable_tqdm=True)
    callback, global_steps = NormwatchCallback(keep_history=True), GlobalSteps()
    model = _HFNet()
    trainer = transformers.Trainer(model=model, args=args, train_dataset=data, data_collator=collate,
                                   callbacks=[callback, global_steps])
    trainer.train()
    assert global_steps.steps == [0, 1, 2, 3]

    # Where it wrote: a "normwatch" run inside the Trainer's TensorBoard run directory.
    (run,) = (tmp_path / "out" / "runs").iterdir()
    assert "train/loss" in _scalars(run)
    written = _scalars(run / "normwatch")
    assert [s for s, _ in written["normwatch/w_norm2/body.0"]] == global_steps.steps

    # The plain loop: the Trainer's optimizer (AdamW, its decay/no-decay groups), clipping and batches.
    inner = trainer.optimizer.optimizer
    names = {id(p): name for name, p in model.named_parameters()}
    plain = _HFNet()
    params = dict(plain.named_parameters())
    opt = torch.optim.AdamW([{"params": [params[names[id(p)]] for p in group["params"]],
                              "weight_decay": group["weight_decay"]} for group in inner.param_groups],
                            lr=1e-2, fused=inner.defaults["fused"], foreach=inner.defaults["foreach"])
    w_norm2, shrink = [], []
    with normwatch.attach(plain, opt, logdir=str(tmp_path / "plain"), keep_history=True) as watch:
        for batch in seen[:4]:
            plain(**batch)["loss"].backward()
            torch.nn.utils.clip_grad_norm_(plain.parameters(), 1.0)
            w = plain.body[0].weight.detach().double()
            w_norm2.append((w.norm() ** 2).item())
            shrink.append(((2 * 1e-2 * 0.05 - (1e-2 * 0.05) ** 2) * w.norm() ** 2).item())  # AdamW: u_wd = -ηλw
            opt.step()
            opt.zero_grad()
    _assert_same(callback.watcher.history, watch.history, rename=lambda layer: layer)
    _assert_same(written, watch.history, rename=lambda layer: layer)
    assert [v for _, v in written["normwatch/w_norm2/body.0"]] == pytest.approx(w_norm2, rel=1e-5)
    assert [v for _, v in written["normwatch/shrink/body.0"]] == pytest.approx(shrink, rel=1e-4)


def _hf_sgd_run(transformers, tmp_path, max_steps: int, resume: bool, callback):
    """The HF Trainer with SGD + momentum (decay hidden in the buffer), saving a checkpoint every 3 steps."""
    gen = torch.Generator().manual_seed(1)
    data = [{"x": torch.randn(3, 8, 8, generator=gen), "labels": torch.randint(0, 5, (), generator=gen)}
            for _ in range(64)]
    args = transformers.TrainingArguments(
        output_dir=str(tmp_path / "out"), max_steps=max_steps, per_device_train_batch_size=16, learning_rate=LR,
        lr_scheduler_type="constant", use_cpu=True, report_to=[], save_strategy="steps", save_steps=3,
        disable_tqdm=True, seed=0)
    model = _HFNet()
    opt = _sgd(model.parameters())
    trainer = transformers.Trainer(model=model, args=args, train_dataset=data, callbacks=[callback],
                                   optimizers=(opt, None))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        trainer.train(resume_from_checkpoint=True if resume else None)
    return [str(w.message) for w in caught if str(w.message).startswith("normwatch")]


def test_hf_resumed_train_continues_the_same_curves_with_nothing_withheld(tmp_path) -> None:
    """normwatch's state travels in the Trainer's checkpoints: 3 steps + resume + 3 steps = 6 straight steps, the
    split and autocorrelation included; a checkpoint without it withholds them (so the state is what matters)."""
    transformers = pytest.importorskip("transformers")
    from normwatch.integrations.transformers import NormwatchCallback

    straight = NormwatchCallback(keep_history=True, logdir=str(tmp_path / "tb-straight"))
    _hf_sgd_run(transformers, tmp_path / "straight", 6, False, straight)
    _hf_sgd_run(transformers, tmp_path / "split", 3, False, NormwatchCallback(logdir=str(tmp_path / "tb-split")))
    assert (tmp_path / "split" / "out" / "checkpoint-3" / "normwatch_state.pt").is_file()
    resumed = NormwatchCallback(keep_history=True, logdir=str(tmp_path / "tb-resumed"))
    messages = _hf_sgd_run(transformers, tmp_path / "split", 6, True, resumed)
    assert not [m for m in messages if "did not see" in m]
    tail = {tag: [(s, v) for s, v in points if s >= 3] for tag, points in straight.watcher.history.items()}
    assert [s for s, _ in tail["normwatch/shrink/body.0"]] == [3, 4, 5]
    _assert_same(resumed.watcher.history, tail)

    (tmp_path / "split" / "out" / "checkpoint-3" / "normwatch_state.pt").unlink()
    (tmp_path / "split" / "out" / "checkpoint-6").rename(tmp_path / "split" / "later")  # resume at 3 again
    bare = NormwatchCallback(keep_history=True, logdir=str(tmp_path / "tb-bare"))
    messages = _hf_sgd_run(transformers, tmp_path / "split", 6, True, bare)
    assert sum("did not see" in m for m in messages) == 1
    history = bare.watcher.history
    assert [s for s, _ in history["normwatch/w_norm2/body.0"]] == [3, 4, 5]
    assert "normwatch/shrink/body.0" not in history and "normwatch/grad_autocorr/body.0" not in history


def test_hf_logdir_follows_the_trainers_tensorboard_directory(tmp_path, monkeypatch) -> None:
    """4.x: args.logging_dir; 5.x: $TENSORBOARD_LOGGING_DIR, else output_dir/runs/<date>_<host>."""
    pytest.importorskip("transformers")
    from normwatch.integrations.transformers import _logdir

    monkeypatch.delenv("TENSORBOARD_LOGGING_DIR", raising=False)
    assert _logdir(SimpleNamespace(logging_dir="/x/runs/a", output_dir="/x")) == "/x/runs/a/normwatch"
    default = _logdir(SimpleNamespace(output_dir="/x"))
    assert default.startswith("/x/runs/") and default.endswith("/normwatch")
    monkeypatch.setenv("TENSORBOARD_LOGGING_DIR", "/tb")
    assert _logdir(SimpleNamespace(output_dir="/x")) == "/tb/normwatch"


def test_hf_default_logdir_survives_a_second_ticking(tmp_path) -> None:
    """TensorBoardCallback named its run directory at 12:00:59; normwatch looks at 12:01:00 and joins it."""
    pytest.importorskip("transformers")
    from normwatch.integrations.transformers import _default_run_dir

    host = socket.gethostname()
    now = datetime.datetime(2026, 11, 26, 12, 1, 0, 3000)
    assert _default_run_dir(str(tmp_path), now) == str(tmp_path / "runs" / f"Nov26_12-01-00_{host}")  # none yet
    (tmp_path / "runs" / f"Nov26_12-00-59_{host}").mkdir(parents=True)
    assert _default_run_dir(str(tmp_path), now) == str(tmp_path / "runs" / f"Nov26_12-00-59_{host}")
    (tmp_path / "runs" / f"Nov26_12-01-00_{host}").mkdir()  # both exist: the one of this second
    assert _default_run_dir(str(tmp_path), now) == str(tmp_path / "runs" / f"Nov26_12-01-00_{host}")


# -- accelerate ---------------------------------------------------------------------------------------------------
@pytest.fixture
def fresh_accelerate_state():
    state = pytest.importorskip("accelerate.state")
    state.AcceleratorState._reset_state(reset_partial_state=True)
    state.GradientState._reset_state()
    yield
    state.AcceleratorState._reset_state(reset_partial_state=True)
    state.GradientState._reset_state()


def test_accelerate_accumulation_records_once_per_optimizer_step(tmp_path, fresh_accelerate_state) -> None:
    accelerate = pytest.importorskip("accelerate")
    from normwatch.integrations import accelerate as nw_accelerate

    batches = _batches(8)
    reference, captured = _plain(batches, tmp_path, accumulate=2)
    accelerator = accelerate.Accelerator(cpu=True, gradient_accumulation_steps=2, log_with="tensorboard",
                                         project_dir=str(tmp_path / "tracking"))
    accelerator.init_trackers("run")
    model = _net()
    model, opt = accelerator.prepare(model, _sgd(model.parameters()))
    steps = 0
    with nw_accelerate.attach(accelerator, model, opt, keep_history=True) as watch:
        for x, y in batches:
            with accelerator.accumulate(model):
                accelerator.backward(F.cross_entropy(model(x), y))
                opt.step()
                steps += not opt.step_was_skipped and accelerator.sync_gradients
                opt.zero_grad()
    accelerator.end_training()
    assert steps == 4 and watch.step == 4
    _assert_same(watch.history, reference)
    assert [v for _, v in watch.history["normwatch/lars_ratio/0"]] == pytest.approx(_lars_ratio(captured), rel=1e-5)
    written = _scalars(tmp_path / "tracking" / "run")  # into the Accelerator's TensorBoard tracker
    assert [s for s, _ in written["normwatch/w_norm2/0"]] == [0, 1, 2, 3]


def test_accelerate_attach_rejects_unknown_options(fresh_accelerate_state) -> None:
    accelerate = pytest.importorskip("accelerate")
    from normwatch.integrations import accelerate as nw_accelerate

    model = _net()
    with pytest.raises(TypeError, match=r"unexpected keyword arguments 'evry'"):
        nw_accelerate.attach(accelerate.Accelerator(cpu=True), model, _sgd(model.parameters()), evry=2)


# -- missing frameworks --------------------------------------------------------------------------------------------
@pytest.mark.parametrize(("integration", "blocked", "message"), [
    pytest.param("lightning", ["lightning", "lightning.pytorch", "pytorch_lightning"],
                 "normwatch.integrations.lightning needs Lightning: pip install 'normwatch[lightning]'",
                 id="lightning"),
    pytest.param("transformers", ["transformers"],
                 "normwatch.integrations.transformers needs transformers: pip install 'normwatch[transformers]'",
                 id="transformers"),
    pytest.param("accelerate", ["accelerate"],
                 "normwatch.integrations.accelerate needs accelerate: pip install 'normwatch[accelerate]'",
                 id="accelerate"),
])
def test_importing_an_integration_without_its_framework_names_the_pip_command(monkeypatch, integration, blocked,
                                                                              message) -> None:
    for name in blocked:
        monkeypatch.setitem(sys.modules, name, None)  # `import name` now raises ImportError
    monkeypatch.delitem(sys.modules, f"normwatch.integrations.{integration}", raising=False)
    with pytest.raises(ImportError) as info:
        importlib.import_module(f"normwatch.integrations.{integration}")
    assert str(info.value) == message
