"""Dry runs without weights: a small random-weight Qwen2-VL built locally, and toy query groups.

For users who want to run `geoloc ranker train` / `score` end to end before they hold a
checkpoint (on a laptop, offline), and for the tests and benchmarks, which use the same
builder. The rewards of a random model mean nothing.

Saved to a folder and loaded back by path, exactly like a real checkpoint: config,
safetensors weights, a byte-level BPE tokenizer carrying Qwen2-VL's special tokens and a
chat template that renders messages the way Qwen2-VL's does, and the image processor.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

SPECIAL_TOKENS = [
    "<|endoftext|>",
    "<|im_start|>",
    "<|im_end|>",
    "<|vision_start|>",
    "<|vision_end|>",
    "<|vision_pad|>",
    "<|image_pad|>",
    "<|video_pad|>",
]

NEWLINE = "{{ '\\n' }}"  # an expression, so Jinja's whitespace control cannot strip it
CHAT_TEMPLATE = (
    "{%- for message in messages -%}"
    "{%- if loop.first and message['role'] != 'system' -%}"
    f"<|im_start|>system{NEWLINE}You are a helpful assistant.<|im_end|>{NEWLINE}"
    "{%- endif -%}"
    f"<|im_start|>{{{{ message['role'] }}}}{NEWLINE}"
    "{%- if message['content'] is string -%}{{ message['content'] }}"
    "{%- else -%}{%- for part in message['content'] -%}"
    "{%- if part['type'] == 'image' -%}<|vision_start|><|image_pad|><|vision_end|>"
    "{%- elif part['type'] == 'text' -%}{{ part['text'] }}{%- endif -%}"
    "{%- endfor -%}{%- endif -%}"
    f"<|im_end|>{NEWLINE}"
    "{%- endfor -%}"
    f"{{%- if add_generation_prompt -%}}<|im_start|>assistant{NEWLINE}{{%- endif -%}}"
)
"""Renders messages the way Qwen2-VL's template does (default system turn, vision tokens per image)."""

# Text the tokenizer learns its merges from: the words of GeoRanker's prompts and place names.
_CORPUS = [
    "You are a helpful assistant.",
    "How far is this place from latitude: 48.8566, longitude: 2.3522, Paris Ile-de-France France?",
    "Negative examples: latitude: -33.8688, longitude: 151.2093, Sydney New South Wales Australia; "
    "latitude: 40.7128, longitude: -74.006, New York United States",
    "0123456789 .,;:-? system user assistant Tokyo Japan Berlin Germany Nairobi Kenya Lima Peru",
]


@dataclass(frozen=True)
class TinySize:
    """Widths and depths of the language model and the vision tower."""

    hidden: int = 32
    layers: int = 2
    heads: int = 4
    kv_heads: int = 2
    intermediate: int = 64
    vision_dim: int = 32
    vision_depth: int = 1
    vision_heads: int = 2
    vision_mlp_ratio: int = 2
    vocab: int = 512


def build_tokenizer(vocab: int = 512):
    """A byte-level BPE tokenizer with Qwen2-VL's special tokens and chat template."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    backend = Tokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    backend.train_from_iterator(_CORPUS, trainer=trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=backend,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        chat_template=CHAT_TEMPLATE,
    )


def build_tiny_qwen2_vl(folder: str | Path, size: TinySize = TinySize(), seed: int = 0) -> Path:
    """Write a random-weight Qwen2-VL with its processor to `folder`; returns the folder."""
    import torch
    from transformers import (
        Qwen2VLConfig,
        Qwen2VLForConditionalGeneration,
        Qwen2VLImageProcessor,
        Qwen2VLProcessor,
        Qwen2VLVideoProcessor,
    )

    folder = Path(folder)
    tokenizer = build_tokenizer(size.vocab)
    token_id = tokenizer.convert_tokens_to_ids
    head_dim = size.hidden // size.heads
    half = head_dim // 2
    mrope_section = [half - 2 * (half // 4), half // 4, half // 4]
    config = Qwen2VLConfig(
        text_config={
            "vocab_size": len(tokenizer),
            "hidden_size": size.hidden,
            "intermediate_size": size.intermediate,
            "num_hidden_layers": size.layers,
            "num_attention_heads": size.heads,
            "num_key_value_heads": size.kv_heads,
            "max_position_embeddings": 4096,
            "rope_parameters": {"rope_type": "default", "rope_theta": 10000.0, "mrope_section": mrope_section},
            "tie_word_embeddings": False,
            "bos_token_id": None,
            "eos_token_id": token_id("<|im_end|>"),
            "pad_token_id": token_id("<|endoftext|>"),
        },
        vision_config={
            "depth": size.vision_depth,
            "embed_dim": size.vision_dim,
            "hidden_size": size.hidden,
            "num_heads": size.vision_heads,
            "mlp_ratio": size.vision_mlp_ratio,
            "patch_size": 14,
            "spatial_merge_size": 2,
            "temporal_patch_size": 2,
        },
        image_token_id=token_id("<|image_pad|>"),
        video_token_id=token_id("<|video_pad|>"),
        vision_start_token_id=token_id("<|vision_start|>"),
        vision_end_token_id=token_id("<|vision_end|>"),
        pad_token_id=token_id("<|endoftext|>"),
        eos_token_id=token_id("<|im_end|>"),
    )
    torch.manual_seed(seed)
    model = Qwen2VLForConditionalGeneration(config)
    model.save_pretrained(folder)
    image_processor = Qwen2VLImageProcessor(min_pixels=56 * 56, max_pixels=224 * 224)
    processor = Qwen2VLProcessor(
        image_processor=image_processor,
        tokenizer=tokenizer,
        video_processor=Qwen2VLVideoProcessor(),
        chat_template=CHAT_TEMPLATE,
    )
    processor.save_pretrained(folder)
    return folder


def random_photo(rng, size: int | tuple[int, int] = 224):
    """A noise RGB photo of `size` pixels (square, or height x width)."""
    import numpy as np
    from PIL import Image

    height, width = (size, size) if isinstance(size, int) else size
    return Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8))


def toy_query_group(rng, retrieval: int, zeroshot: int, photo_size: int | tuple[int, int] = 224, negatives: int = 5):
    """A query with `retrieval` candidates that have gallery photos and `zeroshot` ones without."""
    from geoloc.rank.prompts import Place
    from geoloc.rank.scoring import QueryGroup

    names = ["Paris Ile-de-France France", "Tokyo Japan", "Nairobi Kenya", "Lima Peru", "Berlin Germany"]

    def place(text: bool) -> Place:
        lat, lon = rng.uniform(-80, 80), rng.uniform(-180, 180)
        return Place(round(lat, 6), round(lon, 6), names[rng.integers(len(names))] if text else "")

    return QueryGroup(
        query_photo=random_photo(rng, photo_size),
        candidates=[place(True) for _ in range(retrieval)] + [place(False) for _ in range(zeroshot)],
        gallery_photos=[random_photo(rng, photo_size) for _ in range(retrieval)] + [None] * zeroshot,
        negatives=[place(True) for _ in range(negatives)],
    )


def toy_scoring_run(folder: str | Path, queries: int, retrieval: int = 1, zeroshot: int = 1, photo_size: int = 56,
                    size: TinySize = TinySize(), seed: int = 0) -> Path:
    """Everything `geoloc ranker score` reads, in `folder`: base/ (a tiny model), adapter/ (LoRA and value head
    drawn far from their initial values, so rewards differ), photos/ (q000.jpg ... with one gallery photo per
    retrieval candidate) and candidates.parquet. Returns the folder."""
    import numpy as np
    import polars as pl
    import torch

    from geoloc.rank.model import LoraSettings, new_reward_model, save_adapter

    folder = Path(folder)
    base = build_tiny_qwen2_vl(folder / "base", size, seed)
    torch.manual_seed(seed + 3)
    model = new_reward_model(str(base), LoraSettings(rank=4, alpha=8))
    with torch.no_grad():
        for parameter in model.parameters():
            if parameter.requires_grad:
                parameter.normal_(std=0.5)
    save_adapter(model, folder / "adapter")
    rng = np.random.default_rng(seed)
    (folder / "photos").mkdir(parents=True, exist_ok=True)
    rows = []
    for query in range(queries):
        name = f"q{query:03d}.jpg"
        random_photo(rng, photo_size).save(folder / "photos" / name)
        for rank in range(retrieval):
            random_photo(rng, photo_size).save(folder / "photos" / f"g{query:03d}-{rank}.jpg")
            rows.append((name, "retrieval", rank, *rng.uniform(-80, 80, 2), "Paris France", f"g{query:03d}-{rank}.jpg"))
        rows.extend((name, "zeroshot", rank, *rng.uniform(-80, 80, 2), "", None) for rank in range(zeroshot))
    pl.DataFrame(rows, schema=["query_id", "source", "rank", "lat", "lon", "text", "ref_uri"],
                 orient="row").write_parquet(folder / "candidates.parquet")
    return folder
