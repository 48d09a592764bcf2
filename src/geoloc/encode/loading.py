"""Loading a backbone by its name: a hub id, a local folder, `g3:PATH` for G3's encoder, or PLONK's
conditioning backbones (`plonk-dinov2`, `plonk-streetclip`, see `geoloc.encode.plonk_backbones`).

It imports both kinds (`geoloc.encode.backbone` and `geoloc.encode.g3`), so neither imports
the other's loader: every caller that starts from a name comes here.
"""

from __future__ import annotations

from geoloc.encode.backbone import Backbone, backbone_unavailable, pick_device, pick_dtype
from geoloc.encode.g3 import g3_dim, g3_image_processor, is_g3, load_g3_backbone
from geoloc.encode.plonk_backbones import (
    is_plonk_backbone,
    load_plonk_backbone,
    plonk_backbone_dim,
    plonk_image_processor,
)
from geoloc.hub import load_report_silenced, offline_unless_reachable


def load_image_processor(name: str) -> object:
    """Only the preprocessing of a backbone (no weights): what CPU workers need to prepare photos."""
    from transformers import AutoImageProcessor

    if is_g3(name):
        return g3_image_processor(name)
    if is_plonk_backbone(name):
        return plonk_image_processor(name)
    try:
        with offline_unless_reachable(name):
            return AutoImageProcessor.from_pretrained(name)
    except OSError as error:
        raise backbone_unavailable(name, error) from error


def _dim(config: object) -> int:
    if config.model_type == "clip":
        return int(config.projection_dim)
    return int(getattr(config, "vision_config", config).hidden_size)


def backbone_dim(name: str) -> int:
    """The embedding size of a backbone, from its config alone."""
    from transformers import AutoConfig

    if is_g3(name):
        return g3_dim(name)
    if is_plonk_backbone(name):
        return plonk_backbone_dim(name)
    try:
        with offline_unless_reachable(name):
            return _dim(AutoConfig.from_pretrained(name))
    except OSError as error:
        raise backbone_unavailable(name, error) from error


def load_backbone(name: str, device: str = "auto", dtype: str = "auto") -> Backbone:
    """Load a hub id, a local folder or `g3:PATH`; BackboneUnavailable names what is missing."""
    from transformers import AutoConfig, AutoImageProcessor, AutoModel, CLIPVisionModelWithProjection

    if is_g3(name):
        return load_g3_backbone(name, device, dtype)
    if is_plonk_backbone(name):
        return load_plonk_backbone(name, device, dtype)
    target = pick_device(device)
    torch_dtype = pick_dtype(target, dtype)
    try:
        with offline_unless_reachable(name), load_report_silenced():  # a CLIP's text tower is skipped on purpose
            config = AutoConfig.from_pretrained(name)
            processor = AutoImageProcessor.from_pretrained(name)
            is_clip = config.model_type == "clip"
            if is_clip:
                # The projection size is the top-level config's; vision configs may not repeat it.
                vision_config = config.vision_config
                vision_config.projection_dim = config.projection_dim
                model = CLIPVisionModelWithProjection.from_pretrained(name, config=vision_config, dtype=torch_dtype)
            else:
                model = AutoModel.from_pretrained(name, dtype=torch_dtype)
    except OSError as error:
        raise backbone_unavailable(name, error) from error
    model = model.to(target).eval()
    return Backbone(name=name, model=model, processor=processor, is_clip=is_clip, dim=_dim(config),
                    device=target, dtype=torch_dtype)
