"""The embeddings PLONK conditions on, computed as its pipeline computes them, in batches.

`plonk-dinov2` is DINOv2 ViT-L/14 with registers from its Hugging Face port
(`facebook/dinov2-with-registers-large`): the CLS token after the final layer norm (what the
`torch.hub` model returns), of a 1:1 centre crop resized to 336 px (bicubic), normalized by
ImageNet's mean and std. `plonk-streetclip` is StreetCLIP's vision tower
(`geolocal/StreetCLIP`): the first token of the last hidden state, before the post-layernorm,
with the checkpoint's own CLIP preprocessing. PLONK was trained on them raw: embed them with
`--features raw` (the default, `normalized`, is for retrieval). `NAME:SOURCE` reads the
weights from SOURCE (a local folder or another hub id).
"""

from __future__ import annotations

import torch
from PIL import Image

from geoloc.encode.backbone import Backbone, backbone_unavailable, pick_device, pick_dtype
from geoloc.hub import offline_unless_reachable

PLONK_BACKBONES = {"plonk-dinov2": "facebook/dinov2-with-registers-large", "plonk-streetclip": "geolocal/StreetCLIP"}
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
DINOV2_SIZE = 336


def is_plonk_backbone(name: str) -> bool:
    return name.split(":", 1)[0] in PLONK_BACKBONES


def _source(name: str) -> str:
    kind, _, source = name.partition(":")
    return source or PLONK_BACKBONES[kind]


class SquareCropProcessor:
    """PLONK's DINOv2 preprocessing: the largest centred square, resized to `size` (bicubic), ImageNet-normalized."""

    def __init__(self, size: int = DINOV2_SIZE) -> None:
        from torchvision import transforms

        self.transform = transforms.Compose([
            transforms.Resize(size, interpolation=transforms.InterpolationMode.BICUBIC),
            transforms.ToTensor(),
            transforms.Normalize(IMAGENET_MEAN, IMAGENET_STD),
        ])

    def __call__(self, images: list[Image.Image], return_tensors: str = "pt") -> dict[str, torch.Tensor]:
        from torchvision.transforms.functional import center_crop

        return {"pixel_values": torch.stack([self.transform(center_crop(image, min(image.size)))
                                             for image in images])}


class _ClsToken(torch.nn.Module):
    """DINOv2's CLS output: the pooled (final-layer-normed) first token."""

    def __init__(self, model: torch.nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        return self.model(pixel_values=pixel_values).pooler_output


class _FirstToken(torch.nn.Module):
    """A CLIP vision tower's first token of the last hidden state (before the post-layernorm)."""

    def __init__(self, model: torch.nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        return self.model(pixel_values=pixel_values).last_hidden_state[:, 0]


def plonk_image_processor(name: str) -> object:
    if name.startswith("plonk-dinov2"):
        return SquareCropProcessor()
    from transformers import AutoImageProcessor

    source = _source(name)
    try:
        with offline_unless_reachable(source):
            return AutoImageProcessor.from_pretrained(source)
    except OSError as error:
        raise backbone_unavailable(source, error) from error


def plonk_backbone_dim(name: str) -> int:
    from transformers import AutoConfig

    source = _source(name)
    try:
        with offline_unless_reachable(source):
            config = AutoConfig.from_pretrained(source)
    except OSError as error:
        raise backbone_unavailable(source, error) from error
    return int(getattr(config, "vision_config", config).hidden_size)


def load_plonk_backbone(name: str, device: str = "auto", dtype: str = "auto") -> Backbone:
    """`plonk-dinov2[:SOURCE]` or `plonk-streetclip[:SOURCE]` (normalized unless `with_features("raw")`)."""
    from transformers import AutoModel, CLIPVisionModel

    source = _source(name)
    target = pick_device(device)
    torch_dtype = pick_dtype(target, dtype)
    try:
        with offline_unless_reachable(source):
            if name.startswith("plonk-dinov2"):
                model = _ClsToken(AutoModel.from_pretrained(source, dtype=torch_dtype))
            else:
                model = _FirstToken(CLIPVisionModel.from_pretrained(source, dtype=torch_dtype))
    except OSError as error:
        raise backbone_unavailable(source, error) from error
    dim = model.model.config.hidden_size
    return Backbone(name=name, model=model.to(target).eval(), processor=plonk_image_processor(name), is_clip=False,
                    dim=int(dim), device=target, dtype=torch_dtype)
