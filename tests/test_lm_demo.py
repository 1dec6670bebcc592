"""Tests of demo/train_lm.py: the data loader (checksum, download, offline and corrupt-file errors), the character
tokenisation, which matrices of each architecture are scale-invariant, the Muon+AdamW optimizer, AdamC's weight
decay, and a three-step run of every part of the study on CPU: a tiny model on tests/fixtures/
tinyshakespeare_head.txt (the first 4,070 bytes of Tiny Shakespeare)."""

from __future__ import annotations

import functools
import importlib.util
import json
import math
import shutil
import sys
import urllib.error
from pathlib import Path

import pytest
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from tensorboard.plugins.hparams import plugin_data_pb2

import normwatch
from normwatch import rules

transformers = pytest.importorskip("transformers")  # the demo's extra

DEMO = Path(__file__).resolve().parents[1] / "demo" / "train_lm.py"
FIXTURE = Path(__file__).resolve().parent / "fixtures" / "tinyshakespeare_head.txt"
FIXTURE_SHA256 = "5f3bbae2e185e83416d8005e3820652e990b1214ed33860a9227d0035b272924"  # by sha256sum


def _import_demo():
    spec = importlib.util.spec_from_file_location("train_lm", DEMO)
    module = importlib.util.module_from_spec(spec)
    sys.modules["train_lm"] = module  # dataclasses look their module up while the file executes
    spec.loader.exec_module(module)
    return module


demo = _import_demo()


def _one_sentence(message: str) -> bool:
    return "\n" not in message and message.endswith(".") and ". " not in message


# ---------------------------------------------------------------------------------------------------------
# Data
# ---------------------------------------------------------------------------------------------------------


def test_sha256_of_a_known_file():
    assert demo._sha256(FIXTURE) == FIXTURE_SHA256
    assert demo.DATA_SHA256 == "86c4e6aa9db7c042ec79f339dcb96d42b0075e16b8fc2e86bf0ca57e2dc565ed"
    assert demo.DATA_URL == "https://raw.githubusercontent.com/karpathy/char-rnn/master/data/tinyshakespeare/input.txt"


def test_a_local_copy_is_checked_and_a_corrupt_one_refused_and_kept(tmp_path, monkeypatch):
    copy = tmp_path / "input.txt"
    shutil.copy(FIXTURE, copy)
    with pytest.raises(demo.DataError) as err:  # the real checksum: this is not the whole file
        demo.fetch_text(copy)
    message = str(err.value)
    assert _one_sentence(message) and message.startswith(f"{copy} is not Tiny Shakespeare")
    assert FIXTURE_SHA256 in message and demo.DATA_SHA256 in message and "4,070 bytes" in message
    assert "--data" in message and copy.read_bytes() == FIXTURE.read_bytes()  # a file found there is kept
    monkeypatch.setattr(demo, "DATA_SHA256", FIXTURE_SHA256)
    assert demo.fetch_text(copy) == FIXTURE.read_text()
    copy.write_bytes(FIXTURE.read_bytes()[:-100])  # truncated
    with pytest.raises(demo.DataError, match="is not Tiny Shakespeare"):
        demo.fetch_text(copy)
    with pytest.raises(demo.DataError, match="is a folder, not the file") as err:
        demo.fetch_text(tmp_path)
    assert _one_sentence(str(err.value))


def test_download_checks_sha256_deletes_a_bad_download_and_keeps_a_good_one(tmp_path, monkeypatch):
    calls = []

    def fake_download(url, dest):
        calls.append(url)
        Path(dest).write_bytes(FIXTURE.read_bytes())

    monkeypatch.setattr(demo, "_download", fake_download)
    target = tmp_path / "data" / "tinyshakespeare" / "input.txt"
    with pytest.raises(demo.DataError, match=f"has sha256 {FIXTURE_SHA256} instead of {demo.DATA_SHA256}") as err:
        demo.fetch_text(target)
    assert _one_sentence(str(err.value)) and "run again" in str(err.value)
    assert not target.exists() and not list(target.parent.iterdir())  # neither the file nor a .part is kept
    monkeypatch.setattr(demo, "DATA_SHA256", FIXTURE_SHA256)
    assert demo.fetch_text(target) == FIXTURE.read_text() and target.read_bytes() == FIXTURE.read_bytes()
    demo.fetch_text(target)  # there now: no third download
    assert calls == [demo.DATA_URL] * 2


def test_offline_without_data_fails_in_one_sentence_that_names_a_fix_that_works(tmp_path, monkeypatch, capsys):
    def no_network(url, dest):
        Path(dest).write_bytes(b"half a file")
        raise urllib.error.URLError("no network")

    monkeypatch.setattr(demo, "_download", no_network)
    monkeypatch.setattr(demo, "KNOWN_COPIES", ())
    target = tmp_path / "data" / "input.txt"
    with pytest.raises(demo.DataError) as err:
        demo.fetch_text(target)
    message = str(err.value)
    assert _one_sentence(message) and demo.DATA_URL in message and str(target) in message and "--data" in message
    assert not list(target.parent.iterdir())  # the partial download is removed
    code = demo.main(["--preset", "cpu", "--device", "cpu", "--data", str(target), "--out", str(tmp_path / "runs")])
    assert code == 2 and capsys.readouterr().err.strip() == f"error: {message}"
    assert not (tmp_path / "runs").exists()

    copy = tmp_path / "shared" / "input.txt"  # a copy this machine keeps: the message names it
    copy.parent.mkdir()
    shutil.copy(FIXTURE, copy)
    monkeypatch.setattr(demo, "KNOWN_COPIES", (str(copy),))
    with pytest.raises(demo.DataError) as err:
        demo.fetch_text(target)
    assert _one_sentence(str(err.value)) and f"--data {copy}" in str(err.value)
    monkeypatch.setattr(demo, "DATA_SHA256", FIXTURE_SHA256)  # (the fixture stands in for the whole file)
    assert demo.fetch_text(copy) == FIXTURE.read_text()  # and that advice works


def test_tokenize_round_trips_and_splits_as_nanogpt():
    text = FIXTURE.read_text()
    data = demo.tokenize(text, 0.1)
    assert data.vocab == "".join(sorted(set(text))) and len(data.vocab) == 52
    assert len(data.train) == int(len(text) * 0.9) and len(data.train) + len(data.val) == len(text)
    assert "".join(data.vocab[i] for i in torch.cat([data.train, data.val])) == text
    odd = demo.tokenize("héllo wörld ☃", 0.5)  # code points, not bytes
    assert odd.vocab == "".join(sorted(set("héllo wörld ☃")))
    assert "".join(odd.vocab[i] for i in torch.cat([odd.train, odd.val])) == "héllo wörld ☃"


def test_blocks_are_non_overlapping_sequences_whose_labels_are_the_inputs():
    blocks = demo.Blocks(torch.arange(100), 16)
    assert len(blocks) == 6  # the last 4 characters make no whole block
    assert torch.equal(blocks[2]["input_ids"], torch.arange(32, 48)) and torch.equal(blocks[2]["labels"],
                                                                                    blocks[2]["input_ids"])
    assert len(demo.Blocks(torch.arange(100), 16, limit=2)) == 2


def test_a_text_too_short_for_the_batches_is_one_sentence(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(demo, "DATA_SHA256", FIXTURE_SHA256)
    code = demo.main([*TINY, "--batch-size", "1000", "--data", str(FIXTURE), "--out", str(tmp_path)])
    err = capsys.readouterr().err.strip()
    assert code == 2 and err.startswith("error: the text gives 228 training and 25 validation sequences")
    assert _one_sentence(err)


# ---------------------------------------------------------------------------------------------------------
# Models: which matrices are scale-invariant, measured. Rescaling a weight of a block leaves the logits as they
# were (to float32 rounding, with the norms' ε ≈ 0) or moves them by far more.
# ---------------------------------------------------------------------------------------------------------

SMALL = dict(hidden=16, layers=2, heads=2, block_size=16)
BLOCK = ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj", "mlp.gate_proj",
         "mlp.up_proj", "mlp.down_proj")


ALL_ROWS = slice(None)  # the whole weight


@torch.no_grad()
def rescaling_leaves_logits(arch: str, rows: slice = ALL_ROWS, layers: int = 2) -> set[str]:
    """The blocks' matrices whose rows `rows` (all: the whole weight; the first 8: q/k's first head), times 3,
    leave the logits unchanged; every other one must move them by more than 1e-4 (relative)."""
    cfg = demo.Config(**dict(SMALL, layers=layers))
    # matrices of std 0.2, not 0.02: against the embeddings' std 1, a pre-norm block's small matrices would move
    # the logits by less than the 1e-4 that tells "not invariant" apart from float64 rounding
    model = demo.build_model(arch, cfg, vocab_size=40, seed=0, rms_norm_eps=1e-30, initializer_range=0.2)
    model = model.double().eval()
    x = torch.randint(0, 40, (3, 16), generator=torch.Generator().manual_seed(0))
    base = model(input_ids=x).logits
    found = set()
    for name, module in model.model.layers.named_modules():
        if isinstance(module, torch.nn.Linear):
            module.weight[rows] *= 3.0
            change = ((model(input_ids=x).logits - base).abs().max() / base.abs().max()).item()
            module.weight[rows] /= 3.0
            assert change < 1e-5 or change > 1e-4, f"{arch} {name}: ambiguous relative change {change:.2g}"
            if change < 1e-5:
                found.add(f"model.layers.{name}")
    return found


def _in_blocks(parts: tuple[str, ...], layers: int = 2) -> set[str]:
    return {f"model.layers.{i}.{part}" for i in range(layers) for part in parts}


def test_olmo2_qwen3_and_llama_have_the_invariant_matrices_the_study_describes():
    assert rescaling_leaves_logits("olmo2") == _in_blocks(tuple(p for p in BLOCK if p != "mlp.gate_proj"))
    assert rescaling_leaves_logits("qwen3") == _in_blocks(("self_attn.q_proj", "self_attn.k_proj"))
    assert rescaling_leaves_logits("llama") == set()
    head = slice(0, 8)  # head_dim = 16 / 2: Qwen3 normalises q and k per head, OLMo2 over the whole projection
    assert rescaling_leaves_logits("qwen3", head) == _in_blocks(("self_attn.q_proj", "self_attn.k_proj"))
    assert rescaling_leaves_logits("olmo2", head) == set()


def test_models_are_transformers_own_classes_without_special_tokens():
    cfg = demo.Config(**SMALL)
    for arch, cls in (("olmo2", "Olmo2ForCausalLM"), ("qwen3", "Qwen3ForCausalLM"), ("llama", "LlamaForCausalLM")):
        model = demo.build_model(arch, cfg, vocab_size=40, seed=0)
        assert type(model) is getattr(transformers, cls) and model.config.vocab_size == 40
        assert model.config.eos_token_id is None and not model.config.tie_word_embeddings
        assert model.model.layers[0].self_attn.q_proj.weight.shape == (16, 16)
    a, b = (demo.build_model("olmo2", cfg, 40, seed=s) for s in (0, 0))
    assert all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters()))  # the seed fixes the init


# ---------------------------------------------------------------------------------------------------------
# Optimizers
# ---------------------------------------------------------------------------------------------------------


def _loss(model, seed):
    x = torch.randint(0, 40, (2, 16), generator=torch.Generator().manual_seed(seed))
    return model(input_ids=x, labels=x).loss


def test_muon_with_adamw_steps_exactly_as_its_two_optimizers_and_survives_a_state_dict_round_trip():
    cfg = demo.Config(**SMALL)
    model, reference = (demo.build_model("olmo2", cfg, 40, seed=0) for _ in range(2))
    run = demo.Run("muon", "muon", "olmo2", "muon", lr=0.01, weight_decay=0.5)
    opt = demo.make_optimizer(run, model, cfg)["optimizers"][0]
    opt.load_state_dict(opt.state_dict())  # as accelerate does while preparing: the group dicts are new ones
    schedule = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1 / (1 + s))

    blocks = {id(p) for p in reference.model.layers.parameters() if p.ndim == 2}
    muon = torch.optim.Muon([p for p in reference.parameters() if id(p) in blocks], lr=0.01, weight_decay=0.5,
                            momentum=0.95, nesterov=True, adjust_lr_fn="match_rms_adamw")
    adamw = torch.optim.AdamW([dict(params=[p for p in reference.parameters() if id(p) not in blocks and p.ndim == 2]),
                               dict(params=[p for p in reference.parameters() if p.ndim == 1], weight_decay=0.0)],
                              lr=0.01, betas=(0.9, 0.95), eps=1e-8, weight_decay=0.5)
    schedules = [torch.optim.lr_scheduler.LambdaLR(o, lambda s: 1 / (1 + s)) for o in (muon, adamw)]
    for step in range(3):
        for m, optimizers in ((model, [opt]), (reference, [muon, adamw])):
            _loss(m, step).backward()
            for o in optimizers:
                o.step()
                o.zero_grad()
        schedule.step()
        for s in schedules:
            s.step()
    assert all(torch.equal(p, q) for p, q in zip(model.parameters(), reference.parameters()))

    assert [rules.rule_for(opt, g).name for g in opt.param_groups] == ["muon", "adamw", "adamw"]  # each its owner's
    assert opt.muon.param_groups[0] is opt.param_groups[0] and opt.adamw.param_groups[1] is opt.param_groups[2]
    assert [g["lr"] for g in opt.param_groups] == pytest.approx([0.01 / 4] * 3)  # the schedule reached all three
    assert [g["weight_decay"] for g in opt.param_groups] == [0.5, 0.5, 0.0]
    q, embed = model.model.layers[0].self_attn.q_proj.weight, model.model.embed_tokens.weight
    assert set(opt.state[q]) == {"momentum_buffer"} and {"exp_avg", "exp_avg_sq"} <= set(opt.state[embed])
    assert opt.param_groups[0]["params"] == [p for p in model.parameters() if id(p) in
                                             {id(p) for p in model.model.layers.parameters() if p.ndim == 2}]
    assert opt.param_groups[1]["params"] == [model.model.embed_tokens.weight, model.lm_head.weight]


def test_adam_l2_and_adamw_are_chosen_as_the_trainer_expects():
    cfg = demo.Config(**SMALL)
    model = demo.build_model("olmo2", cfg, 40, seed=0)
    assert demo.make_optimizer(demo.Run("adamw", "olmo2", "olmo2", "adamw", 1e-3, 0.1), model, cfg) == {}
    cls, kwargs = demo.make_optimizer(demo.Run("l2", "adam-l2", "olmo2", "adam-l2", 1e-3, 0.1), model,
                                      cfg)["optimizer_cls_and_kwargs"]
    assert cls is torch.optim.Adam and kwargs == dict(lr=1e-3, betas=(0.9, 0.95), eps=1e-8)


def test_decay_follows_lr_is_adamc_and_shrinks_w_by_the_product_of_its_steps():
    w, scale = torch.nn.Parameter(torch.ones(3)), torch.nn.Parameter(torch.ones(2))
    opt = torch.optim.AdamW([dict(params=[w]), dict(params=[scale], weight_decay=0.0)], lr=0.1, weight_decay=2.0)
    schedule = transformers.get_cosine_schedule_with_warmup(opt, num_warmup_steps=2, num_training_steps=10)
    callback = demo.DecayFollowsLR()
    callback.on_train_begin(None, None, None, optimizer=opt)
    expected, kept = [], 1.0
    for step in range(10):
        factor = step / 2 if step < 2 else 0.5 * (1 + math.cos(math.pi * (step - 2) / 8))  # HF's cosine
        callback.on_step_begin(None, None, None, optimizer=opt)
        expected.append(2.0 * factor)
        assert opt.param_groups[0]["weight_decay"] == pytest.approx(2.0 * factor, abs=1e-12)
        assert opt.param_groups[1]["weight_decay"] == 0.0
        kept *= 1 - (0.1 * factor) * (2.0 * factor)  # AdamW's decay η_t·λ_t; zero gradients move nothing else
        w.grad, scale.grad = torch.zeros(3), torch.zeros(2)
        opt.step()
        schedule.step()
    assert expected[6] == pytest.approx(1.0)  # half-way down the cosine: λ/2
    assert w.detach() == pytest.approx(torch.full((3,), kept), rel=1e-6) and torch.equal(scale.detach(), torch.ones(2))


def test_summarise_log_finds_the_gradient_norms_low_and_the_rise_after_it():
    norms = [9, 9, 3, 2, 1, 1, 2, 3, 4, 5, 6, 7, 8, 7, 6, 5, 4, 3, 2, 2]  # 20 steps: windows of 2
    history = [dict(loss=float(k), grad_norm=float(g), learning_rate=0.1, step=k + 1) for k, g in enumerate(norms)]
    history.insert(0, dict(eval_loss=4.0, step=0))
    history += [dict(eval_loss=2.5, step=20), dict(train_loss=9.5, step=20)]
    result = demo.summarise_log(history, warmup=2)
    assert (result["grad_norm_low"], result["grad_norm_low_step"]) == (1.0, 6)  # steps 5 and 6 (1, 1)
    assert (result["grad_norm_high"], result["grad_norm_high_step"]) == (7.5, 13)  # steps 12, 13 (7, 8): first
    assert result["grad_norm_end"] == 2.0 and result["val_loss"] == 2.5 and result["steps"] == 20
    assert result["train_loss"] == 19.0 and result["val_losses"] == [(0, 4.0), (20, 2.5)]  # last 5%: 1 step


# ---------------------------------------------------------------------------------------------------------
# Three steps of every part on CPU, through main(): tiny models on the fixture (its checksum stands in).
# ---------------------------------------------------------------------------------------------------------

TINY = ["--preset", "cpu", "--device", "cpu", "--steps", "3", "--warmup", "1", "--batch-size", "4",
        "--block-size", "16", "--hidden", "16", "--layers", "1", "--heads", "2", "--eval-every", "2",
        "--eval-blocks", "2", "--grid", "0.5,2"]
LR, WD = 4e-3, 2.5  # the cpu preset's
GRID = [f"lr{LR * a:g}-wd{WD * b:g}" for b in (0.5, 2) for a in (0.5, 2)]
RUNS = (["adamw/olmo2", "adamw/qwen3", "adamw/llama"] + [f"eta-lambda/{name}" for name in GRID]
        + ["muon/muon", "muon/adamw", "l2/adam-l2", "l2/adamw", "schedule/adamw", "schedule/adamc"])
TRAINER_TAGS = {"train/loss", "train/grad_norm", "train/learning_rate", "train/weight_decay", "eval/loss"}


def _events(run_dir: Path) -> EventAccumulator:
    acc = EventAccumulator(str(run_dir), size_guidance={"scalars": 0, "tensors": 0})
    acc.Reload()
    return acc


def _values(acc: EventAccumulator, tag: str) -> list[tuple[int, float]]:
    return [(e.step, e.value) for e in acc.Scalars(tag)]


@pytest.fixture(scope="module")
def smoke(tmp_path_factory):
    out = tmp_path_factory.mktemp("study")
    args = [*TINY, "--data", str(FIXTURE), "--out", str(out)]
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(demo, "DATA_SHA256", FIXTURE_SHA256)
        assert demo.main(args) == 0
    return out, args


def test_every_part_writes_its_runs_with_the_trainers_tags_and_the_config(smoke):
    out, _ = smoke
    assert sorted(out.rglob("result.json")) == sorted(out / run / "result.json" for run in RUNS)
    for run in RUNS:
        config = json.loads((out / run / "config.json").read_text())
        result = json.loads((out / run / "result.json").read_text())
        assert f"{config['part']}/{config['name']}" == run and result["steps"] == 3
        acc = _events(out / run)
        assert set(acc.Tags()["scalars"]) >= TRAINER_TAGS
        assert [s for s, _ in _values(acc, "train/loss")] == [1, 2, 3]  # the Trainer logs step s at s + 1
        assert [s for s, _ in _values(acc, "eval/loss")] == [0, 2, 3]  # before training, every 2, at the end
        assert _values(acc, "eval/loss")[0][1] == pytest.approx(math.log(52), abs=0.1)  # random init: near uniform
        assert _values(acc, "eval/loss")[-1][1] == pytest.approx(result["val_loss"])
        text = acc.Tensors("demo/config/text_summary")[0].tensor_proto.string_val[0].decode()
        experiment = {k: v for k, v in config.items() if k not in ("part", "name", "copied_from")}
        assert json.loads(text) == json.loads(json.dumps(experiment))
        session = acc.PluginTagToContent("hparams")["_hparams_/session_start_info"]
        hparams = plugin_data_pb2.HParamsPluginData.FromString(session)
        assert hparams.session_start_info.hparams["lr"].number_value == pytest.approx(config["lr"])
        assert hparams.session_start_info.hparams["optimizer"].string_value == config["optimizer"]


def test_the_parts_train_what_they_say(smoke):
    out, _ = smoke

    def config(run):
        return json.loads((out / run / "config.json").read_text())

    assert [config(f"adamw/{a}")["arch"] for a in ("olmo2", "qwen3", "llama")] == ["olmo2", "qwen3", "llama"]
    products = sorted(config(f"eta-lambda/{name}")["eta_lambda"] for name in GRID)
    assert products == pytest.approx([LR * WD / 4, LR * WD, LR * WD, LR * WD * 4])  # fixed on the diagonal
    assert (config("muon/muon")["optimizer"], config("l2/adam-l2")["optimizer"]) == ("muon", "adam-l2")
    for name, follows in (("adamw", False), ("adamc", True)):
        c = config(f"schedule/{name}")
        assert (c["schedule"], c["decay_follows_lr"], c["weight_decay"]) == ("cosine", follows, WD * 4)
    assert all(config(run)["arch"] == "olmo2" for run in RUNS[3:])


def test_logged_lr_and_weight_decay_follow_each_schedule(smoke):
    out, _ = smoke

    def logged(run, tag):
        return [v for _, v in _values(_events(out / run), tag)]

    constant = [0.0, LR, LR]  # warmup 1 step: step 0 uses lr 0
    cosine = [0.0, LR, LR / 2]  # HF's cosine over the 2 steps after the warmup
    for run in ("adamw/olmo2", "muon/muon", "l2/adam-l2"):
        assert logged(run, "train/learning_rate") == pytest.approx(constant)
        assert logged(run, "train/weight_decay") == pytest.approx([WD] * 3)
    assert logged("eta-lambda/lr0.008-wd1.25", "train/learning_rate") == pytest.approx([0.0, 2 * LR, 2 * LR])
    assert logged("eta-lambda/lr0.008-wd1.25", "train/weight_decay") == pytest.approx([WD / 2] * 3)
    for run in ("schedule/adamw", "schedule/adamc"):
        assert logged(run, "train/learning_rate") == pytest.approx(cosine)
    assert logged("schedule/adamw", "train/weight_decay") == pytest.approx([4 * WD] * 3)
    assert logged("schedule/adamc", "train/weight_decay") == pytest.approx([4 * WD * f for f in (0, 1, 0.5)])
    assert all(v > 0 and math.isfinite(v) for v in logged("schedule/adamc", "train/grad_norm"))


def test_a_run_of_the_same_experiment_is_copied_not_trained_again(smoke):
    out, _ = smoke
    original = out / "adamw" / "olmo2"
    for run in ("muon/adamw", "l2/adamw"):
        assert json.loads((out / run / "config.json").read_text())["copied_from"] == str(original)
        assert (out / run / "result.json").read_text() == (original / "result.json").read_text()
        events = sorted(p.name for p in (out / run).glob("events.out.tfevents.*"))
        assert events == sorted(p.name for p in original.glob("events.out.tfevents.*")) and len(events) == 2
        assert all((out / run / e).read_bytes() == (original / e).read_bytes() for e in events)


# normwatch's part. What it records must be what its detection finds (so the tags appear for every layer that
# detection comes to find) and only matrices that rescaling shows to be invariant; for llama, which has none,
# nothing at all.
CORE_METRICS = ("w_norm2", "angle", "shrink", "growth", "lr", "weight_decay")  # the split: every run's rule has one


def _recorded(scalars: list[str]) -> set[str]:
    return {tag.split("/", 2)[2] for tag in scalars if tag.startswith("normwatch/")}


def _detected(arch: str, layers: int = 1) -> set[str]:
    cfg = demo.Config(**dict(SMALL, layers=layers))
    model = demo.build_model(arch, cfg, vocab_size=52, seed=0)
    x = torch.randint(0, 52, (4, 16), generator=torch.Generator().manual_seed(0))
    return {layer.name for layer in normwatch.detect(model, input_ids=x, labels=x)}


@pytest.mark.parametrize("arch", ["olmo2", "qwen3", "llama"])
def test_normwatch_records_what_it_detects_and_only_invariant_matrices(smoke, arch):
    out, _ = smoke
    runs = [run for run in RUNS if json.loads((out / run / "config.json").read_text())["arch"] == arch]
    detected, invariant = _detected(arch), rescaling_leaves_logits(arch, layers=1)
    assert detected <= invariant
    for run in runs:
        scalars = _events(out / run).Tags()["scalars"]
        recorded = _recorded(scalars)
        assert recorded == detected == set(json.loads((out / run / "result.json").read_text())["normwatch_layers"])
        for layer in recorded:
            for metric in CORE_METRICS:
                assert [s for s, _ in _values(_events(out / run), f"normwatch/{metric}/{layer}")] == [0, 1, 2]
            config = json.loads((out / run / "config.json").read_text())
            if config["optimizer"] in ("adamw", "adam-l2"):  # theory for every weight-decayed AdamW/Adam matrix
                assert f"normwatch/angle_theory/{layer}" in scalars
    if arch == "llama":
        assert invariant == set() and not any(t.startswith("normwatch/") for r in runs
                                              for t in _events(out / r).Tags()["scalars"])


def test_normwatch_splits_muon_with_adamw_exactly(tmp_path, monkeypatch):
    """MuonWithAdamW, declared decoupled, gets the exact split: u_wd = −ηλw, so shrink = (2ηλ − (ηλ)²)|w|² with
    the η and λ of the Muon group as the Trainer's schedule sets them. This normwatch detects no layer of olmo2
    yet, so the run names one (a "+" pattern adds a module to what detection finds)."""
    monkeypatch.setattr(demo, "DATA_SHA256", FIXTURE_SHA256)
    layer = "model.layers.0.self_attn.q_proj"
    monkeypatch.setattr(demo, "NormwatchCallback", functools.partial(demo.NormwatchCallback, layers=[f"+{layer}"]))
    assert demo.main([*TINY, "--parts", "muon", "--data", str(FIXTURE), "--out", str(tmp_path)]) == 0
    acc = _events(tmp_path / "muon" / "muon")
    w_norm2, shrink = (_values(acc, f"normwatch/{m}/{layer}") for m in ("w_norm2", "shrink"))
    assert [s for s, _ in shrink] == [0, 1, 2]
    for (_, w2), (_, sh), eta in zip(w_norm2, shrink, (0.0, LR, LR)):  # the warmup's first step has η = 0
        assert sh == pytest.approx((2 * eta * WD - (eta * WD) ** 2) * w2, rel=1e-4, abs=1e-12)
    assert [v for _, v in _values(acc, f"normwatch/lr/{layer}")] == pytest.approx([0.0, LR, LR])


def test_the_study_ends_with_normwatchs_report_on_its_runs(smoke):
    pytest.importorskip("matplotlib")
    out, _ = smoke
    report = out / "report"
    assert (report / "report.md").read_text().startswith("# normwatch report: the LM study")
    assert (report / "report.html").is_file() and (report / "fig01.png").is_file()
    verdicts = {v["claim"]: v for v in json.loads((report / "verdicts.json").read_text())}
    assert {v["outcome"] for v in verdicts.values()} <= {"holds", "does not hold", "inconclusive", "no data"}
    llama = verdicts["llama (pre-norm, no QK-norm): no scale-invariant layer, and normwatch records none"]
    assert (llama["outcome"], llama["run"]) == ("holds", "adamw/llama")
    # 3 steps hold no equilibrium window: the equilibrium rows say so instead of judging
    assert verdicts["final validation loss follows ηλ"]["outcome"] != "no data"  # eval/loss needs no window
    assert "no equilibrium window" in verdicts["qwen3: shrink ≈ growth in equilibrium"]["detail"]


def test_without_matplotlib_the_report_is_one_sentence_and_the_study_still_succeeds(smoke, monkeypatch, capsys):
    out, _ = smoke
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import matplotlib raises ImportError
    cfg = demo.Config(out=str(out))
    demo.report(cfg, [out / run for run in RUNS])
    printed = capsys.readouterr().out.strip()
    assert printed == "report: skipped: normwatch report needs matplotlib: pip install 'normwatch[report]'"


# ---------------------------------------------------------------------------------------------------------
# Reruns, Ctrl-C, flags
# ---------------------------------------------------------------------------------------------------------


def test_rerun_skips_finished_runs_and_redoes_unfinished_ones(smoke, monkeypatch, capsys):
    out, args = smoke
    monkeypatch.setattr(demo, "DATA_SHA256", FIXTURE_SHA256)
    stamps = {p: p.stat().st_mtime_ns for p in out.rglob("result.json")}
    capsys.readouterr()
    assert demo.main(args) == 0
    assert {p: p.stat().st_mtime_ns for p in out.rglob("result.json")} == stamps
    assert capsys.readouterr().out.count("skipped") == len(RUNS)
    (out / "adamw" / "llama" / "result.json").unlink()  # as if Ctrl-C had hit during this run
    assert demo.main([*args, "--parts", "adamw", "--archs", "llama"]) == 0
    assert "removing the unfinished run" in capsys.readouterr().out
    assert json.loads((out / "adamw" / "llama" / "result.json").read_text())["steps"] == 3
    assert len(list((out / "adamw" / "llama").glob("events.out.tfevents.*"))) == 2  # the old ones were removed
    with pytest.raises(SystemExit, match="another config"):
        demo.main([*args, "--parts", "adamw", "--archs", "llama", "--lr", "0.001"])


def test_ctrl_c_keeps_the_finished_runs(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(demo, "DATA_SHA256", FIXTURE_SHA256)
    calls = []

    def interrupt_the_second_run(self, args, state, control, **kwargs):
        calls.append(state.global_step)
        if len(calls) > 3:  # the second run's first step
            raise KeyboardInterrupt

    monkeypatch.setattr(demo.Progress, "on_step_end", interrupt_the_second_run)
    argv = [*TINY, "--parts", "adamw", "--archs", "llama,qwen3", "--data", str(FIXTURE), "--out", str(tmp_path)]
    assert demo.main(argv) == 130
    assert "interrupted: the 1 finished runs stay" in capsys.readouterr().out
    assert (tmp_path / "adamw" / "llama" / "result.json").is_file()
    assert (tmp_path / "adamw" / "qwen3").is_dir() and not (tmp_path / "adamw" / "qwen3" / "result.json").exists()


@pytest.mark.parametrize("args, says", [
    (["--parts", "adamw,adam"], "argument --parts: expected a comma-separated list of adamw, eta-lambda"),
    (["--archs", "gpt2"], "argument --archs: expected a comma-separated list of olmo2, qwen3, llama"),
    (["--arch", "gpt2"], "argument --arch: invalid choice: 'gpt2'"),
    (["--preset", "gpu"], "argument --preset: invalid choice: 'gpu'"),
    (["--device", "tpu"], "argument --device: invalid choice: 'tpu'"),
    (["--steps", "0"], "argument --steps: expected a positive integer, got '0'"),
    (["--steps", "ten"], "argument --steps: expected an integer, got 'ten'"),
    (["--lr", "-1"], "argument --lr: expected a positive number, got '-1'"),
    (["--lr", "nan"], "argument --lr: expected a positive number, got 'nan'"),
    (["--weight-decay", "-0.1"], "argument --weight-decay: expected a positive number, got '-0.1'"),
    (["--weight-decay", "0"], "argument --weight-decay: expected a positive number, got '0'"),
    (["--eval-blocks", "-1"], "argument --eval-blocks: expected a non-negative integer, got '-1'"),
    (["--grid", "1,x"], "argument --grid: expected comma-separated positive numbers, got '1,x'"),
    (["--grid", "0,1"], "argument --grid: expected comma-separated positive numbers"),
    (["--heads", "3"], "--heads 3 must divide --hidden 64 into an even head size"),
    (["--warmup", "400"], "--warmup 400 must be shorter than the run's 250 steps"),
    (["--block-size", "1"], "--block-size 1 leaves nothing to predict"),
    (["--lr", "0.1", "--weight-decay", "1"], "would shrink w by 100% or more per step"),
    (["--every", "-2"], "argument --every: expected a positive integer, got '-2'"),
    (["--bogus"], "unrecognized arguments: --bogus"),
])
def test_a_bad_flag_is_one_sentence_and_a_non_zero_exit(args, says, capsys):
    with pytest.raises(SystemExit) as exit_:
        demo.main(["--preset", "cpu", "--device", "cpu", *args])
    err = capsys.readouterr().err
    assert exit_.value.code == 2 and "Traceback" not in err
    assert err.strip().splitlines()[-1].startswith("train_lm.py: error: ") and says in err.strip().splitlines()[-1]


def test_help_lists_the_parts(capsys):
    with pytest.raises(SystemExit) as exit_:
        demo.main(["--help"])
    assert exit_.value.code == 0 and "adamw,eta-lambda,muon,l2,schedule" in capsys.readouterr().out


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the defaults of a machine without CUDA")
def test_without_cuda_the_cpu_preset_is_the_default(capsys):
    with pytest.raises(SystemExit):
        demo.parse_args(["--device", "cuda"])
    assert "train_lm.py: error: --device cuda was asked for, but torch sees no CUDA device" in capsys.readouterr().err
    cfg, why = demo.parse_args([])
    assert (cfg.preset, cfg.device, cfg.out, cfg.threads) == ("cpu", "cpu", "runs/lm-cpu", 1) and "without CUDA" in why
    assert cfg.lr * cfg.weight_decay == pytest.approx(0.01) and cfg.steps >= 2.5 / (cfg.lr * cfg.weight_decay)
    full = demo.parse_args(["--preset", "full"])[0]
    assert (full.hidden, full.layers, full.block_size, full.steps) == (384, 6, 256, 5000)
    assert full.steps >= 5 / (full.lr * full.weight_decay)  # τ = 1/(ηλ) a fifth of the run
