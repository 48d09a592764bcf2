"""GeoRanker's reward model: a vision-language model, a value head on the last token, LoRA through peft.

The backbone is the model without its language-modelling head (`AutoModel`): the reward
needs the final hidden states, never the logits, and for a 7B model the head alone is
half a billion parameters. Attribute names follow the published GeoRanker adapter
(`model.…` for the backbone, `value_head` at the top), so its peft keys load as they are.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from geoloc.hub import offline_unless_reachable
from geoloc.tables import replace_folder_durably

ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_WEIGHTS = "adapter_model.safetensors"

LEGACY_VLM_KEY_MAPPING = {
    r"^model\.(?!language_model\.|visual\.)": "model.language_model.",
    r"^visual\.": "model.visual.",
}
"""Adapter keys written before transformers moved Qwen2-VL's text layers under `language_model`
(GeoRanker's adapter may use either layout): `model.layers.N…` -> `model.language_model.layers.N…`.
Applied by peft after it strips the `base_model.model.` prefix; keys already in the new layout
and the value head do not match and stay as they are."""


class ModelLoadError(OSError):
    """A base model or an adapter cannot be loaded; the message says which files are missing and what to do."""


@dataclass(frozen=True)
class LoraSettings:
    """LoRA on the attention projections, the value head trained in full and saved alongside."""

    rank: int = 16
    alpha: int = 32
    dropout: float = 0.05
    target_modules: tuple[str, ...] = ("q_proj", "k_proj", "v_proj")
    modules_to_save: tuple[str, ...] = field(default=("value_head",))


class RewardModel(nn.Module):
    """A scalar reward per sequence: a linear value head on the final hidden state of its last real token."""

    base_model_prefix = "model"  # where the backbone lives, for transformers' and peft's key conversions

    def __init__(self, backbone: nn.Module):
        super().__init__()
        self.model = backbone
        self.config = backbone.config
        hidden_size = backbone.config.get_text_config().hidden_size
        self.value_head = nn.Linear(hidden_size, 1, bias=False, dtype=backbone.dtype)
        # Small weights so that initial rewards are near zero whatever the hidden-state scale.
        nn.init.normal_(self.value_head.weight, std=1.0 / (hidden_size + 1))

    def forward(self, attention_mask: torch.Tensor | None = None, **inputs: Any) -> torch.Tensor:
        """Rewards (batch,) in float32. With a key/value cache, `attention_mask` spans cache and new tokens."""
        inputs.setdefault("use_cache", inputs.get("cache") is not None)
        hidden = self.model(attention_mask=attention_mask, **inputs).last_hidden_state
        return self.value_head(last_token_states(hidden, attention_mask)).squeeze(-1).float()


def last_token_states(hidden: torch.Tensor, attention_mask: torch.Tensor | None) -> torch.Tensor:
    """The hidden state of each row's last real token, whether the batch is padded left or right."""
    if attention_mask is None:
        return hidden[:, -1]
    last = last_token_positions(attention_mask, hidden.shape[1])
    return hidden[torch.arange(hidden.shape[0], device=hidden.device), last]


def last_token_positions(attention_mask: torch.Tensor, length: int) -> torch.Tensor:
    """Where each row's last real token sits among the `length` newest positions of `attention_mask`."""
    mask = attention_mask[:, -length:]
    return length - 1 - torch.argmax(mask.flip(1).to(torch.int8), dim=1)


def _missing_files_error(name: str, error: Exception) -> ModelLoadError:
    folder = Path(name)
    if folder.is_dir():
        present = {p.name for p in folder.iterdir()}
        wanted = ["config.json", "model.safetensors (or model.safetensors.index.json and its shards)"]
        missing = [f for f in wanted if f.split(" ")[0] not in present]
        detail = f"the folder lacks {', '.join(missing)}" if missing else f"it cannot be read: {error}"
        return ModelLoadError(f"{name}: cannot load the model: {detail}")
    return ModelLoadError(
        f"{name}: cannot load the model: it is neither a local folder nor in the Hugging Face cache "
        f"(config.json and the *.safetensors weights are needed; offline: HF_HUB_OFFLINE="
        f"{os.environ.get('HF_HUB_OFFLINE', 'unset')}). Download it where there is network "
        f"(`hf download {name}`) or pass the path of a local copy of the model folder instead. ({error})"
    )


def load_processor(base: str):
    """The base model's processor (tokenizer, image processor, chat template)."""
    from transformers import AutoProcessor

    try:
        with offline_unless_reachable(base):
            return AutoProcessor.from_pretrained(base)
    except (OSError, ValueError) as error:
        raise _missing_files_error(base, error) from error


def load_backbone(base: str, dtype: torch.dtype = torch.float32) -> nn.Module:
    """The base vision-language model without its language-modelling head, from a hub id or a local folder."""
    from transformers import AutoModel
    from transformers.utils import logging as hf_logging

    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()  # the unused LM head is reported as an unexpected key otherwise
    try:
        with offline_unless_reachable(base):
            return AutoModel.from_pretrained(base, dtype=dtype)
    except (OSError, ValueError) as error:
        raise _missing_files_error(base, error) from error
    finally:
        hf_logging.set_verbosity(verbosity)


def new_reward_model(base: str, lora: LoraSettings = LoraSettings(), dtype: torch.dtype = torch.float32):
    """A trainable peft model: frozen backbone with LoRA adapters and a fresh value head."""
    from peft import LoraConfig, get_peft_model

    config = LoraConfig(
        r=lora.rank,
        lora_alpha=lora.alpha,
        lora_dropout=lora.dropout,
        target_modules=list(lora.target_modules),
        modules_to_save=list(lora.modules_to_save),
    )
    model = get_peft_model(RewardModel(load_backbone(base, dtype)), config)
    model.peft_config["default"].base_model_name_or_path = base
    return model


def adapter_base(adapter: str | Path) -> str | None:
    """The base model an adapter was trained on, as its adapter_config.json records it."""
    from peft import LoraConfig

    return LoraConfig.from_pretrained(str(adapter)).base_model_name_or_path


def load_reward_model(
    base: str, adapter: str | Path, dtype: torch.dtype = torch.float32, trainable: bool = False
):
    """The reward model with a saved adapter: ours or the published GeoRanker one (either key layout).

    Every LoRA and value-head tensor the model expects must be in the file and nothing else:
    peft alone only warns about missing keys, which would score with random weights.
    """
    from peft import LoraConfig, PeftModel
    from peft.utils import get_peft_model_state_dict, load_peft_weights, set_peft_model_state_dict

    adapter = Path(adapter)
    missing = [name for name in (ADAPTER_CONFIG, ADAPTER_WEIGHTS) if not (adapter / name).is_file()]
    if missing:
        raise ModelLoadError(f"{adapter}: not a peft adapter folder: missing {', '.join(missing)}")
    config = LoraConfig.from_pretrained(str(adapter))
    config.task_type = None  # the reward model is a plain module, whatever task the adapter was saved under
    config.inference_mode = not trainable
    model = PeftModel(RewardModel(load_backbone(base, dtype)), config)
    weights = load_peft_weights(str(adapter), device="cpu", key_mapping=LEGACY_VLM_KEY_MAPPING)
    expected = set(get_peft_model_state_dict(model))
    absent, unknown = sorted(expected - set(weights)), sorted(set(weights) - expected)
    if absent or unknown:
        raise ModelLoadError(
            f"{adapter}: the adapter does not fit {base}: {len(absent)} tensor(s) missing "
            f"{absent[:3]}, {len(unknown)} unexpected {unknown[:3]}"
        )
    set_peft_model_state_dict(model, weights)
    if trainable:
        for name, parameter in model.named_parameters():
            parameter.requires_grad = "lora_" in name or "modules_to_save" in name
    else:
        model.eval()
    return model


def save_adapter(model, folder: str | Path) -> Path:
    """Save LoRA weights and value head in peft's adapter format (safetensors), atomically."""
    folder = Path(folder)
    replace_folder_durably(folder, lambda partial: model.save_pretrained(partial, safe_serialization=True))
    return folder
