"""Image backbones loaded the Hugging Face way: a hub id or a local folder.

CLIP checkpoints load as their vision tower plus projection only (the text tower is
never read); any other vision model loads through AutoModel and is pooled. Features
come out raw (GeoCLIP's heads were trained on raw CLIP projections); `embed`
normalizes them for retrieval. `g3:PATH` names G3's geo-aligned encoder
(`geoloc.encode.g3`), whose vectors are final as they come. `geoloc.encode.loading`
loads either kind from its name.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch
from PIL import Image

WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin")
NEEDED_FILES = ("config.json", "preprocessor_config.json")


class BackboneUnavailable(RuntimeError):
    """The backbone's files are neither on disk nor downloadable; the message says what to do."""


def _missing_files(folder: Path) -> list[str]:
    missing = [name for name in NEEDED_FILES if not (folder / name).is_file()]
    if not any((folder / name).is_file() for name in WEIGHT_FILES):
        missing.append(" or ".join(WEIGHT_FILES[::2]))
    return missing


def backbone_unavailable(name: str, error: Exception) -> BackboneUnavailable:
    """The error for a backbone that failed to load: which files are missing, and how to bring them."""
    folder = Path(name)
    if folder.is_dir():
        missing = _missing_files(folder)
        detail = f"the folder {folder} lacks {', '.join(missing)}" if missing else str(error)
    else:
        detail = (f"{name!r} is not a local folder and its files ({', '.join(NEEDED_FILES)}, "
                  f"{' or '.join(WEIGHT_FILES[::2])}) are not in the Hugging Face cache; "
                  f"downloading them failed: {error.__class__.__name__}")
    return BackboneUnavailable(
        f"cannot load the image backbone: {detail}. On a machine with network access, save the model "
        "(e.g. `huggingface-cli download ID --local-dir DIR`), copy DIR here and pass --backbone DIR."
    )


def pick_device(device: str = "auto") -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def pick_dtype(device: torch.device, dtype: str = "auto") -> torch.dtype:
    """fp32 on the CPU; bf16 on GPUs that have it, else fp16, unless told otherwise."""
    if dtype != "auto":
        return {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}[dtype]
    if device.type != "cuda":
        return torch.float32
    return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16


@dataclass
class Backbone:
    """A frozen image encoder with its preprocessing."""

    name: str
    model: torch.nn.Module
    processor: object
    is_clip: bool
    dim: int
    device: torch.device
    dtype: torch.dtype
    renormalize: bool = True
    """False where the model returns its final vectors itself (G3's three separately normalized thirds)."""
    feature_kind: str = "normalized"
    """What `embed_pixels` returns (geoloc.embeddings.FEATURE_KINDS)."""
    views: int = 1
    """Augmented views per photo, side by side in one row of `dim` = views x the model's size."""

    def with_features(self, kind: str, views: int = 1) -> Backbone:
        """The same model giving another kind of features: raw ones, or raw ones through GeoCLIP's training
        preprocessing, there optionally `views` randomly augmented views per photo (its train transform)."""
        from geoloc.embeddings import FEATURE_KINDS

        if kind not in FEATURE_KINDS:
            raise ValueError(f"unknown kind of features {kind!r}; choose one of {', '.join(FEATURE_KINDS)}")
        if views != 1 and (kind != "raw-geoclip-train" or views < 1):
            raise ValueError(f"--views {views}: augmented views are made with --features raw-geoclip-train only, "
                             "and at least 1")
        if kind == self.feature_kind and views == self.views:
            return self
        if not self.renormalize:
            raise ValueError(f"{self.name} gives its final vectors itself; only normalized features can be had")
        processor = GeoClipTrainProcessor(views) if kind == "raw-geoclip-train" else self.processor
        return replace(self, processor=processor, renormalize=kind == "normalized", feature_kind=kind, views=views,
                       dim=self.dim // self.views * views)

    def pixel_values(self, images: list[Image.Image]) -> torch.Tensor:
        return pixel_values(self.processor, images)

    @torch.inference_mode()
    def features(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """Raw (unnormalized) features, float32, on the CPU."""
        pixel_values = pixel_values.to(self.device, self.dtype)
        output = self.model(pixel_values=pixel_values)
        if isinstance(output, torch.Tensor):
            features = output
        elif self.is_clip:
            features = output.image_embeds
        elif getattr(output, "pooler_output", None) is not None:
            features = output.pooler_output
        else:
            features = output.last_hidden_state.mean(dim=1)
        return features.float().cpu()

    def embed_pixels(self, pixel_values: torch.Tensor) -> np.ndarray:
        """L2-normalized float32 embeddings of preprocessed images, one row per image (G3's: as they come; raw
        kinds raw, several views of a photo side by side in its row)."""
        if pixel_values.ndim == 5:  # (images, views, channels, height, width)
            return self.features(pixel_values.flatten(0, 1)).reshape(len(pixel_values), -1).numpy()
        features = self.features(pixel_values)
        return (torch.nn.functional.normalize(features, dim=-1) if self.renormalize else features).numpy()

    def embed(self, images: list[Image.Image]) -> np.ndarray:
        """L2-normalized float32 embeddings, one row per image."""
        return self.embed_pixels(self.pixel_values(images))


class GeoClipTrainProcessor:
    """GeoCLIP's training-side preprocessing, called like a Hugging Face image processor: one view through the
    package's `img_val_transform` (resize 256, centre crop 224, ImageNet mean and std), or `views` > 1 random views
    through its `img_train_transform` (random resized crop, flip, colour jitter, grey, the same normalization).
    Its predict uses CLIP's processor instead."""

    def __init__(self, views: int = 1) -> None:
        from geoclip.train.dataloader import img_train_transform, img_val_transform

        self.views = views
        self.transform = img_val_transform() if views == 1 else img_train_transform()

    def __call__(self, images: list[Image.Image], return_tensors: str = "pt") -> dict[str, torch.Tensor]:
        if self.views == 1:
            return {"pixel_values": torch.stack([self.transform(image) for image in images])}
        return {"pixel_values": torch.stack([torch.stack([self.transform(image) for _ in range(self.views)])
                                             for image in images])}


def pixel_values(processor: object, images: list[Image.Image]) -> torch.Tensor:
    """The model's input for RGB copies of `images`, through its Hugging Face image processor."""
    rgb = [image.convert("RGB") for image in images]
    return processor(images=rgb, return_tensors="pt")["pixel_values"]
