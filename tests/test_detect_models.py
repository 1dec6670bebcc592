"""Detection on the model classes people train, from Hugging Face ``transformers``, against the numbers.

Tiny configs, O(1) random init (each weight N(0, 1/fan_in), so activations stay O(1) and a norm's epsilon
is small against its statistic), training mode. ``Truth`` decides without the tracer which conv/linear
modules are scale-invariant; detection must agree module by module, with the finest invariant groups. The
language models are also checked as transformers builds them: its own init and its config's defaults.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
import torch
from torch import nn

import normwatch
from tests.ground_truth import Truth, assert_granularity

transformers = pytest.importorskip("transformers")

LM = dict(vocab_size=64, hidden_size=32, intermediate_size=48, num_hidden_layers=2, num_attention_heads=4,
          num_key_value_heads=2, head_dim=8, max_position_embeddings=64, use_cache=False)
ENCODER = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=48)


def _tokens() -> dict[str, torch.Tensor]:
    return {"input_ids": torch.randint(0, 64, (2, 6))}


def _images(size: int = 32, batch: int = 2) -> Callable[[], dict[str, torch.Tensor]]:
    return lambda: {"pixel_values": torch.randn(batch, 3, size, size)}


def _lm(family: str, config: str, **extra: Any) -> Callable[[], nn.Module]:
    return lambda: getattr(transformers, f"{family}ForCausalLM")(getattr(transformers, config)(**LM, **extra))


MODELS = [
    # id, model factory, inputs, the linear layers (by last name) the issue reports invariant in each block
    ("llama", _lm("Llama", "LlamaConfig"), _tokens, set()),
    ("qwen3", _lm("Qwen3", "Qwen3Config"), _tokens, {"q_proj", "k_proj"}),
    ("qwen3-eager-attention", _lm("Qwen3", "Qwen3Config", attn_implementation="eager"), _tokens,
     {"q_proj", "k_proj"}),
    ("olmo2", _lm("Olmo2", "Olmo2Config"), _tokens, {"q_proj", "k_proj", "v_proj", "o_proj", "up_proj", "down_proj"}),
    ("gemma3", _lm("Gemma3", "Gemma3TextConfig"), _tokens,
     {"q_proj", "k_proj", "v_proj", "o_proj", "up_proj", "down_proj"}),
    ("bert", lambda: transformers.BertForMaskedLM(transformers.BertConfig(vocab_size=64, **ENCODER)), _tokens, set()),
    ("gpt2", lambda: transformers.GPT2LMHeadModel(transformers.GPT2Config(vocab_size=64, n_embd=32, n_layer=2,
                                                                          n_head=4, use_cache=False)), _tokens, set()),
    ("vit", lambda: transformers.ViTForImageClassification(transformers.ViTConfig(image_size=32, patch_size=8,
                                                                                  num_labels=3, **ENCODER)),
     _images(), set()),
    ("convnext", lambda: transformers.ConvNextForImageClassification(transformers.ConvNextConfig(
        hidden_sizes=[8, 16], depths=[1, 1], num_stages=2, num_labels=3)), _images(), None),
    ("resnet", lambda: transformers.ResNetForImageClassification(transformers.ResNetConfig(
        embedding_size=8, hidden_sizes=[8, 16], depths=[1, 1], layer_type="bottleneck", num_labels=3)),
     _images(), None),
    ("mobilenetv2", lambda: transformers.MobileNetV2ForImageClassification(transformers.MobileNetV2Config(
        depth_multiplier=0.25, image_size=64, num_labels=3, layer_norm_eps=1e-5)), _images(64, 4), None),
    ("swin", lambda: transformers.SwinForImageClassification(transformers.SwinConfig(
        image_size=32, patch_size=4, embed_dim=8, depths=[1, 1], num_heads=[2, 2], window_size=4, num_labels=3)),
     _images(), None),
]


def unit_init(model: nn.Module) -> nn.Module:
    """Each weight N(0, 1/fan_in), each 1-D parameter moved by N(0, 0.1²): activations O(1), biases non-zero."""
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() > 1:
                p.normal_(0, p[0].numel() ** -0.5)
            else:
                p.add_(0.1 * torch.randn_like(p))
    return model.train()


@pytest.mark.parametrize(("factory", "inputs", "per_block"), [pytest.param(*m[1:], id=m[0]) for m in MODELS])
def test_detection_agrees_with_the_numbers_on_real_models(factory, inputs, per_block) -> None:
    """Detected layers are exactly the invariant conv/linear modules (the issue's list for the transformers),
    each numerically confirmed, with the finest invariant groups: one per head for per-head QK-norm."""
    torch.manual_seed(0)
    model, batch = unit_init(factory()), inputs()
    truth = Truth(model, **batch)
    invariant = truth.invariant_modules()
    if per_block is not None:  # the finding, per block, is what the numbers say
        assert {name.rsplit(".", 1)[-1] for name in invariant} == per_block
    else:
        assert invariant, "the vision models here all have some invariant layer"
    layers = normwatch.detect(model, **batch)
    assert {layer.name for layer in layers} == invariant
    assert all(layer.confirmed for layer in layers)
    per_channel = [layer for layer in layers if layer.granularity == "channel"]
    for layer in [layer for layer in layers if layer.granularity != "channel"] + per_channel[:4]:
        assert_granularity(truth, layer)  # BatchNorm's channels: a sample (test_detect.py checks them on small nets)


def test_per_head_groups_follow_the_config() -> None:
    """Qwen3's q_proj is invariant head by head (groups = attention heads), k_proj per key/value head."""
    torch.manual_seed(0)
    model = unit_init(_lm("Qwen3", "Qwen3Config")())
    groups = {layer.name.rsplit(".", 1)[-1]: layer.groups for layer in normwatch.detect(model, **_tokens())}
    assert groups == {"q_proj": LM["num_attention_heads"], "k_proj": LM["num_key_value_heads"]}


def test_attach_records_the_qk_norm_layers(tmp_path) -> None:
    """attach() on a QK-norm model with AdamW records, every step, each q_proj/k_proj layer's |w|² (checked
    against the weights the test saw) and AdamW's equilibrium angle."""
    torch.manual_seed(0)
    model, batch = unit_init(_lm("Qwen3", "Qwen3Config")()), _tokens()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.1)
    seen: dict[str, list[float]] = {}
    with normwatch.attach(model, opt, logdir=str(tmp_path), keep_history=True) as watch:
        for _ in range(3):
            loss = model(**batch, labels=batch["input_ids"]).loss
            opt.zero_grad()
            loss.backward()
            for layer in watch.layers:
                seen.setdefault(layer.name, []).append(
                    sum(float(dict(model.named_parameters())[p].detach().double().pow(2).sum()) for p in layer.params))
            opt.step()
        layers = watch.layers
    assert sorted(layer.name.rsplit(".", 1)[-1] for layer in layers) == ["k_proj"] * 2 + ["q_proj"] * 2
    for layer in layers:
        assert [v for _, v in watch.history[f"normwatch/w_norm2/{layer.name}"]] == pytest.approx(seen[layer.name],
                                                                                                   rel=1e-5)
        angles = [v for _, v in watch.history[f"normwatch/angle_theory/{layer.name}"]]
        assert len(angles) == 3 and all(0 < a < 1 for a in angles)
        assert len(watch.history[f"normwatch/angle/{layer.name}"]) == 3


HF_INIT_LM = dict(vocab_size=64, hidden_size=32, intermediate_size=48, num_hidden_layers=2, num_attention_heads=4,
                  head_dim=8, max_position_embeddings=64, rms_norm_eps=1e-6, initializer_range=32 ** -0.5,
                  tie_word_embeddings=False, bos_token_id=None, eos_token_id=None, pad_token_id=None)


@pytest.mark.parametrize("kv_heads", [4, 2])
@pytest.mark.parametrize(("family", "config", "per_block"), [
    pytest.param("Llama", "LlamaConfig", set(), id="llama"),
    pytest.param("Qwen3", "Qwen3Config", {"q_proj", "k_proj"}, id="qwen3"),
    pytest.param("Olmo2", "Olmo2Config", {"q_proj", "k_proj", "v_proj", "o_proj", "up_proj", "down_proj"},
                 id="olmo2"),
])
def test_detection_agrees_with_the_numbers_under_the_library_init(family, config, per_block, kv_heads) -> None:
    """The models as transformers builds them (its own init: norm weights exactly 1, and the config's defaults,
    so ``use_cache`` is on and the forward appends keys and values to a ``DynamicCache`` that starts empty):
    detection is the numbers' set, v_proj of OLMo2's post-norm blocks included."""
    torch.manual_seed(0)
    cfg = getattr(transformers, config)(**HF_INIT_LM, num_key_value_heads=kv_heads)
    model = getattr(transformers, f"{family}ForCausalLM")(cfg).train()
    batch = {"input_ids": torch.randint(0, 64, (8, 6))}
    invariant = Truth(model, **batch).invariant_modules()
    assert {name.rsplit(".", 1)[-1] for name in invariant} == per_block
    layers = normwatch.detect(model, **batch)
    assert {layer.name for layer in layers} == invariant
    assert all(layer.confirmed for layer in layers)
