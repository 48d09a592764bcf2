"""The reward model: save -> load, the published GeoRanker adapter in both key layouts, clear load errors."""

import json

import numpy as np
import pytest
import torch
from peft.utils import get_peft_model_state_dict
from safetensors.torch import save_file

from geoloc.rank.dryrun import TinySize, build_tiny_qwen2_vl, toy_query_group
from geoloc.rank.model import (
    LoraSettings,
    ModelLoadError,
    load_backbone,
    load_processor,
    load_reward_model,
    new_reward_model,
    save_adapter,
)
from geoloc.rank.scoring import RewardScorer

SIZE = TinySize()


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    return str(build_tiny_qwen2_vl(tmp_path_factory.mktemp("tiny-qwen2-vl"), SIZE))


def rewards(model, base, seed=0):
    group = toy_query_group(np.random.default_rng(seed), retrieval=2, zeroshot=1, photo_size=56)
    return RewardScorer(model, load_processor(base), batch_size=4, shared_prefix=False).rewards(group)


def test_save_then_load_gives_the_same_rewards(base, tmp_path):
    torch.manual_seed(1)
    model = new_reward_model(base, LoraSettings(rank=4, alpha=8))
    with torch.no_grad():  # fresh LoRA B is zero: move every trained tensor so that loading them matters
        for parameter in model.parameters():
            if parameter.requires_grad:
                parameter.normal_(std=0.3)
    model.eval()
    folder = save_adapter(model, tmp_path / "adapter")
    assert {"adapter_config.json", "adapter_model.safetensors"} <= {p.name for p in folder.iterdir()}
    loaded = load_reward_model(base, folder)
    before, after = rewards(model, base), rewards(loaded, base)
    np.testing.assert_allclose(after, before, rtol=0, atol=1e-6)
    assert not np.allclose(rewards(new_reward_model(base, LoraSettings(rank=4, alpha=8)), base), before)


def published_adapter(folder, base, layout: str, rank: int = 16) -> dict[str, torch.Tensor]:
    """An adapter as GeoRanker's training wrote it; returns its tensors under today's key names."""
    generator = torch.Generator().manual_seed(7)
    head_dim = SIZE.hidden // SIZE.heads
    outputs = {"q_proj": SIZE.hidden, "k_proj": SIZE.kv_heads * head_dim, "v_proj": SIZE.kv_heads * head_dim}
    layers = "base_model.model.model.layers" if layout == "legacy" else "base_model.model.model.language_model.layers"
    published, expected = {}, {}
    for layer in range(SIZE.layers):
        for projection, out_features in outputs.items():
            for part, shape in (("lora_A", (rank, SIZE.hidden)), ("lora_B", (out_features, rank))):
                tensor = torch.randn(shape, generator=generator)
                suffix = f"{layer}.self_attn.{projection}.{part}.weight"
                published[f"{layers}.{suffix}"] = tensor
                expected[f"base_model.model.model.language_model.layers.{suffix}"] = tensor
    head = torch.randn((1, SIZE.hidden), generator=generator)
    published["base_model.model.value_head.weight"] = expected["base_model.model.value_head.weight"] = head
    folder.mkdir()
    save_file(published, str(folder / "adapter_model.safetensors"), metadata={"format": "pt"})
    config = {
        "peft_type": "LORA", "task_type": None, "base_model_name_or_path": base, "r": rank, "lora_alpha": 2 * rank,
        "lora_dropout": 0.05, "target_modules": ["v_proj", "q_proj", "k_proj"], "modules_to_save": ["value_head"],
        "bias": "none", "fan_in_fan_out": False, "inference_mode": True, "init_lora_weights": True,
        "layers_pattern": None, "layers_to_transform": None, "rank_pattern": {}, "alpha_pattern": {},
        "revision": None, "use_dora": False, "use_rslora": False,
    }
    (folder / "adapter_config.json").write_text(json.dumps(config))
    return expected


@pytest.mark.parametrize("layout", ["legacy", "language_model"])
def test_published_adapter_loads_exactly_in_either_key_layout(base, tmp_path, layout):
    expected = published_adapter(tmp_path / "checkpoints", base, layout)
    model = load_reward_model(base, tmp_path / "checkpoints")
    loaded = get_peft_model_state_dict(model)
    assert set(loaded) == set(expected)
    for key, tensor in expected.items():
        assert torch.equal(loaded[key], tensor), key
    assert model.peft_config["default"].r == 16 and model.peft_config["default"].lora_alpha == 32


def test_both_layouts_give_the_same_rewards(base, tmp_path):
    published_adapter(tmp_path / "legacy", base, "legacy")
    published_adapter(tmp_path / "new", base, "language_model")
    legacy, new = rewards(load_reward_model(base, tmp_path / "legacy"), base), rewards(
        load_reward_model(base, tmp_path / "new"), base)
    np.testing.assert_array_equal(legacy, new)


def test_an_adapter_that_does_not_fit_is_refused(base, tmp_path):
    published_adapter(tmp_path / "adapter", base, "language_model")
    from safetensors.torch import load_file

    weights = load_file(str(tmp_path / "adapter" / "adapter_model.safetensors"))
    del weights["base_model.model.value_head.weight"]
    save_file(weights, str(tmp_path / "adapter" / "adapter_model.safetensors"))
    with pytest.raises(ModelLoadError, match="1 tensor.s. missing.*value_head"):
        load_reward_model(base, tmp_path / "adapter")
    with pytest.raises(ModelLoadError, match="missing adapter_config.json, adapter_model.safetensors"):
        load_reward_model(base, tmp_path)


def test_missing_base_model_offline_says_what_is_missing_and_what_to_do(monkeypatch, tmp_path):
    import huggingface_hub.constants

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf-home"))
    with pytest.raises(ModelLoadError) as raised:
        load_backbone("nobody-here/no-such-qwen2-vl")
    message = str(raised.value)
    assert "nobody-here/no-such-qwen2-vl" in message and "config.json" in message and "safetensors" in message
    assert "local copy" in message
    (tmp_path / "half").mkdir()
    (tmp_path / "half" / "config.json").write_text("{}")
    with pytest.raises(ModelLoadError, match="lacks model.safetensors"):
        load_backbone(str(tmp_path / "half"))
