"""Training GeoRanker's reward model on the GeoRanking dataset with the Hugging Face Trainer.

One example is one query photo with a group of reference candidates: every candidate
becomes a prompt (the same `candidate_prompt` scoring uses), the reward model scores
the group, and the multi-order distance loss pulls rewards into the order of the true
distances. Several GPUs: launch with `accelerate launch` or `deepspeed` and name a
DeepSpeed config (ZeRO-2 in examples/) under `training.deepspeed`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import torch
from torch.utils.data import Dataset

from geoloc.errors import InputError
from geoloc.geo import distance_km
from geoloc.rank.losses import multi_order_distance_loss
from geoloc.rank.model import LoraSettings, load_processor, new_reward_model, save_adapter
from geoloc.rank.photos import GEORANKER_GALLERY, RAW, OpenImage, StorePhotos
from geoloc.rank.prompts import Place, candidate_prompt, render
from geoloc.tables import TableError, read_table

GEORANKING_COLUMNS = ("img_id", "gps", "ref_gps", "ref_img_id", "ref_texts")


@dataclass
class TrainConfig:
    """What `geoloc ranker train --config ranker.yaml` reads; see examples/ranker.yaml."""

    base: str
    dataset: Path
    images: Path
    """A folder of photos or an uncompressed tar (MP16-Pro's), read in place."""
    output: Path
    group_size: int = 5
    top_k: int | None = 1
    first_order_weight: float = 0.7
    negatives: int = 5
    skip_first_reference: bool = True
    num_samples: int | None = None
    images_index: Path | None = None
    """A tar's offset index: a published tar_index.pkl, or a Parquet (built there on first use)."""
    distance: str = "geodesic"
    """How candidates are ordered against the truth: GeoRanker's training measures geodesic distance."""
    raw_photos: bool = False
    """Decoded photos as they are, instead of GeoRanker training's preparation (JPEG re-encoding and
    qwen-vl-utils sizing of query and gallery photos)."""
    dtype: str = "float32"
    gradient_checkpointing: bool = False
    """Recompute activations in the backward pass: far less memory for about a third more compute."""
    lora: LoraSettings = field(default_factory=LoraSettings)
    training: dict[str, Any] = field(default_factory=dict)
    """Passed to transformers.TrainingArguments as it is (learning rate, batch size, bf16, deepspeed ...)."""

    @classmethod
    def from_dict(cls, values: dict[str, Any], relative_to: Path = Path(".")) -> TrainConfig:
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise InputError(f"unknown setting(s) {', '.join(unknown)}; known: {', '.join(sorted(known))}")
        values = dict(values)
        for name in ("dataset", "images", "output", "images_index"):
            if values.get(name) is not None:
                values[name] = relative_to / Path(values[name])
        training = dict(values.get("training") or {})
        if isinstance(training.get("deepspeed"), str):  # a config file named relative to this one
            training["deepspeed"] = str(relative_to / training["deepspeed"])
        values["training"] = training
        if "lora" in values:
            lora = dict(values["lora"])
            if "target_modules" in lora:
                lora["target_modules"] = tuple(lora["target_modules"])
            values["lora"] = LoraSettings(**lora)
        return cls(**values)

    @classmethod
    def from_yaml(cls, path: Path) -> TrainConfig:
        import yaml

        with open(path) as handle:
            return cls.from_dict(yaml.safe_load(handle) or {}, relative_to=path.parent)


def read_georanking(path: Path, needed_references: int, num_samples: int | None = None) -> tuple[pl.DataFrame, int]:
    """The GeoRanking rows with enough references for one group; returns them and how many were too short."""
    frame = read_table(path)
    missing = [column for column in GEORANKING_COLUMNS if column not in frame.columns]
    if missing:
        raise TableError(f"{path}: GeoRanking data lack column(s) {', '.join(missing)}")
    lengths = pl.min_horizontal(pl.col(c).list.len() for c in ("ref_gps", "ref_img_id", "ref_texts"))
    usable = frame.filter(lengths >= needed_references)
    if num_samples is not None:
        usable = usable.head(num_samples)
    return usable, frame.height - frame.filter(lengths >= needed_references).height


class GeoRankingDataset(Dataset):
    """The rows of the GeoRanking table, one query with its references each."""

    def __init__(self, frame: pl.DataFrame):
        self.frame = frame.select(GEORANKING_COLUMNS)

    def __len__(self) -> int:
        return self.frame.height

    def __getitem__(self, index: int) -> dict[str, Any]:
        return self.frame.row(index, named=True)


class GeoRankingCollator:
    """Turns examples into one batch of group_size prompts per query plus their true distances."""

    def __init__(self, processor, open_image: OpenImage, config: TrainConfig):
        self.processor = processor
        self.open_image = open_image
        self.config = config
        self.first = 1 if config.skip_first_reference else 0

    def __call__(self, examples: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        prompts, distances = [], []
        for example in examples:
            query = self.open_image(example["img_id"])
            references = range(self.first, self.first + self.config.group_size)
            places = [self._place(example, i) for i in range(len(example["ref_gps"]))]
            negatives = places[-self.config.negatives:] if self.config.negatives else []
            for i in references:
                prompts.append(candidate_prompt(query, places[i], self.open_image(example["ref_img_id"][i]), negatives))
            group = np.array([example["ref_gps"][i] for i in references], dtype=np.float64)
            lat, lon = example["gps"]
            distances.append(distance_km(lat, lon, group[:, 0], group[:, 1], method=self.config.distance))
        batch = self.processor(
            text=render(self.processor, prompts),
            images=[image for prompt in prompts for image in prompt.images],
            padding=True,
            padding_side="left",
            return_tensors="pt",
        )
        batch["distances"] = torch.tensor(np.stack(distances), dtype=torch.float32)
        return dict(batch)

    @staticmethod
    def _place(example: dict[str, Any], index: int) -> Place:
        lat, lon = example["ref_gps"][index]
        # GeoRanker's training joins every place field, empty ones included.
        return Place(lat, lon, " ".join(text or "" for text in example["ref_texts"][index]))


def _trainer_class():
    from transformers import Trainer

    class GeoRankerTrainer(Trainer):
        """The Trainer with GeoRanker's loss: rewards of each group against its true distances."""

        def __init__(self, *args, top_k: int | None, first_order_weight: float, **kwargs):
            super().__init__(*args, **kwargs)
            self.top_k = top_k
            self.first_order_weight = first_order_weight

        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            distances = inputs.pop("distances")
            rewards = model(**inputs).view(distances.shape)
            loss = multi_order_distance_loss(rewards, distances, self.top_k, self.first_order_weight)
            return (loss, rewards) if return_outputs else loss

    return GeoRankerTrainer


@dataclass
class TrainingResult:
    adapter: Path
    rows: int
    too_short_rows: int
    """Rows skipped because they have fewer references than a group (and its negatives) needs."""
    losses: list[float]
    """The training loss at each logging step."""
    main_process: bool = True
    """False in every process but the first of a multi-GPU run (accelerate launch, deepspeed, torchrun)."""


def effective_batch_size(arguments) -> int:
    """Queries per optimizer step over all processes: what the learning rate must be tuned against."""
    return arguments.per_device_train_batch_size * arguments.gradient_accumulation_steps * arguments.world_size


def train(
    config: TrainConfig, open_image: OpenImage | None = None, say: Callable[[str], None] = print
) -> TrainingResult:
    """Train LoRA and value head; checkpoints under `output/`, the final adapter in `output/adapter`.

    Resumes from the last checkpoint in `output/` when there is one.
    """
    from transformers import TrainingArguments
    from transformers.trainer_utils import get_last_checkpoint

    needed = max(int(config.skip_first_reference) + config.group_size, config.negatives)
    frame, too_short = read_georanking(config.dataset, needed, config.num_samples)
    if frame.height == 0:
        raise TableError(f"{config.dataset}: no row has the {needed} references a group needs")
    settings = {"report_to": "none", "logging_steps": 5, "save_strategy": "no", **config.training}
    arguments = TrainingArguments(
        output_dir=str(config.output), remove_unused_columns=False, label_names=["distances"], **settings
    )
    model = new_reward_model(config.base, config.lora, dtype=getattr(torch, config.dtype))
    if config.gradient_checkpointing:
        # On the backbone itself: the Trainer's own switch does not reach through peft to a plain module.
        # Non-reentrant checkpointing lets gradients reach LoRA although the frozen embeddings need none.
        model.get_base_model().model.activation_checkpointing_enable({"use_reentrant": False})
    if open_image is None:
        open_image = StorePhotos(config.images, config.images_index or config.output / "images_index.parquet",
                                 preparation=RAW if config.raw_photos else GEORANKER_GALLERY)
    collator = GeoRankingCollator(load_processor(config.base), open_image, config)
    trainer = _trainer_class()(
        model=model,
        args=arguments,
        train_dataset=GeoRankingDataset(frame),
        data_collator=collator,
        top_k=config.top_k,
        first_order_weight=config.first_order_weight,
    )
    if arguments.process_index == 0:
        say(f"effective batch size {effective_batch_size(arguments)} queries ({arguments.per_device_train_batch_size} "
            f"per device x {arguments.gradient_accumulation_steps} accumulation steps x {arguments.world_size} "
            f"processes), {config.group_size} candidates each")
    checkpoint = get_last_checkpoint(str(config.output)) if config.output.is_dir() else None
    trainer.train(resume_from_checkpoint=checkpoint)
    adapter = config.output / "adapter"
    if trainer.is_world_process_zero():
        save_adapter(trainer.model, adapter)
    losses = [entry["loss"] for entry in trainer.state.log_history if "loss" in entry]
    return TrainingResult(adapter, frame.height, too_short, losses, trainer.is_world_process_zero())
