"""G3's geo-aligned image encoder (`--backbone g3:PATH`): the vectors of G3's retrieval index.

G3 (Jia et al., NeurIPS 2024) keeps CLIP's vision tower and projection frozen and trains
two heads on the projection `p` (Linear, ReLU, Linear): one aligned with texts, one with
locations. Its index vector, for gallery and queries alike, is
`[normalize(p), normalize(head_1(p)), normalize(head_2(p))]`: each third normalized on
its own, the whole never renormalized (norm sqrt(3)), searched by raw inner product.

Every weight comes from G3's checkpoint, a state dict of its whole module (CLIP's vision
and text towers, its heads, its location encoder); only the vision parts are read. The
CLIP model named beside it (`?clip=`, `--clip`) gives the tower's configuration and the
image processor, in its PIL flavour as G3 ran it. A backbone's recorded name is
`g3:/absolute/path?clip=CLIP`, so a later run (retrieve, a Ray actor) rebuilds the same
encoder from the name alone.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import torch
from torch import nn

from geoloc.encode.backbone import Backbone, BackboneUnavailable, backbone_unavailable, pick_device, pick_dtype
from geoloc.hub import offline_unless_reachable
from geoloc.tables import replace_durably

G3_PREFIX = "g3:"
CLIP_MARK = "?clip="
DEFAULT_CLIP = "openai/clip-vit-large-patch14"
HEADS = ("vision_projection_else_1", "vision_projection_else_2")
OTHER_G3_PARTS = ("text_model.", "text_projection.", "text_projection_else.", "location_projection_else.",
                  "location_encoder.", "logit_scale1", "logit_scale2", "logit_scale3")
"""G3's parts that image vectors do not use: present in its checkpoint, never read."""


class G3CheckpointError(BackboneUnavailable):
    """A G3 checkpoint that cannot be read safely or does not fit the CLIP configuration named."""


def is_g3(name: str) -> bool:
    return name.startswith(G3_PREFIX)


def g3_spec(name: str, clip: str | None = None) -> str:
    """The canonical name of a G3 backbone: absolute checkpoint path and its CLIP (`clip` overrides the name's)."""
    path, _, named_clip = name.removeprefix(G3_PREFIX).partition(CLIP_MARK)
    clip = clip or named_clip or DEFAULT_CLIP
    if Path(clip).expanduser().is_dir():
        clip = str(Path(clip).expanduser().resolve())
    return f"{G3_PREFIX}{Path(path).expanduser().resolve()}{CLIP_MARK}{clip}"


def parse_g3_spec(name: str) -> tuple[Path, str]:
    """(checkpoint path, CLIP id or folder) of a G3 backbone name."""
    path, _, clip = g3_spec(name).removeprefix(G3_PREFIX).partition(CLIP_MARK)
    return Path(path), clip


def _head(dim: int) -> nn.Sequential:
    return nn.Sequential(nn.Linear(dim, dim), nn.ReLU(), nn.Linear(dim, dim))


class G3Vision(nn.Module):
    """CLIP's vision tower and projection with G3's two image heads; returns G3's index vector.

    Attribute names follow G3's module, so its state dict keys load as they are, except
    that CLIP's `visual_projection` is G3's `vision_projection`.
    """

    def __init__(self, vision_config: object) -> None:
        from transformers import CLIPVisionModelWithProjection

        super().__init__()
        self.clip = CLIPVisionModelWithProjection(vision_config)
        dim = int(vision_config.projection_dim)
        self.vision_projection_else_1 = _head(dim)
        self.vision_projection_else_2 = _head(dim)

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        projected = self.clip(pixel_values=pixel_values).image_embeds
        thirds = (projected, self.vision_projection_else_1(projected), self.vision_projection_else_2(projected))
        return torch.cat([nn.functional.normalize(third, dim=-1) for third in thirds], dim=-1)

    def g3_keys(self) -> dict[str, str]:
        """Each key of G3's state dict this module needs -> its own key."""
        return {_g3_key(key): key for key in self.state_dict()}


RENAMES = (("clip.visual_projection.", "vision_projection."), ("clip.vision_model.", "vision_model."))


def _g3_key(own: str) -> str:
    for ours, theirs in RENAMES:
        if own.startswith(ours):
            return theirs + own.removeprefix(ours)
    return own


def _shown(keys: list[str], limit: int = 5) -> str:
    more = len(keys) - limit
    return ", ".join(keys[:limit]) + (f" and {more} more" if more > 0 else "")


def check_keys(path: Path, found: Iterable[str], needed: set[str], clip: str) -> None:
    """Refuse a checkpoint that lacks a needed key or has keys G3's module does not have, naming them.

    `position_ids` buffers, which older transformers saved, are ignored; G3's text and
    location parts are expected but not read.
    """
    found = {key for key in found if not key.endswith("position_ids")}
    missing = sorted(needed - found)
    unexpected = sorted(key for key in found - needed if not key.startswith(OTHER_G3_PARTS))
    if missing or unexpected:
        problems = [f"missing {len(missing)} key(s): {_shown(missing)}"] if missing else []
        problems += [f"unexpected {len(unexpected)} key(s): {_shown(unexpected)}"] if unexpected else []
        raise G3CheckpointError(f"{path} is not a G3 checkpoint for the CLIP configuration of {clip}: "
                                f"{'; '.join(problems)}. --clip must name the CLIP model G3 was trained from "
                                f"(G3 used {DEFAULT_CLIP})")


def _load_state(path: Path) -> object:
    """torch.load with weights_only (no pickled code runs), memory-mapped where the file allows it."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except RuntimeError:  # a file in torch's legacy (non-zip) format cannot be memory-mapped
        return torch.load(path, map_location="cpu", weights_only=True)


def _tensors(path: Path, wanted: set[str] | None) -> tuple[list[str], dict[str, torch.Tensor]]:
    """Every key of the checkpoint and the tensors of `wanted` (None: all), without running pickled code."""
    import pickle

    if not path.is_file():
        raise BackboneUnavailable(f"no G3 checkpoint at {path}")
    if path.suffix == ".safetensors":
        from safetensors import safe_open

        with safe_open(path, framework="pt") as file:
            keys = list(file.keys())
            return keys, {key: file.get_tensor(key) for key in keys if wanted is None or key in wanted}
    try:
        state = _load_state(path)
    except (pickle.UnpicklingError, RuntimeError, EOFError) as error:
        raise G3CheckpointError(
            f"{path} is not a plain state dict that can be read without running its pickled code "
            f"({error.__class__.__name__}). A whole pickled G3 module (what G3's training script saves) must be "
            "turned into `torch.save(model.state_dict(), 'g3.pth')` in G3's own environment first") from error
    if not isinstance(state, dict) or not all(isinstance(value, torch.Tensor) for value in state.values()):
        raise G3CheckpointError(f"{path} holds a {type(state).__name__}, not a state dict of tensors")
    return list(state), {key: value for key, value in state.items() if wanted is None or key in wanted}


def _clip_parts(clip: str) -> tuple[object, object]:
    """The vision config (with its projection size) and the PIL image processor of a CLIP id or folder."""
    from transformers import AutoConfig, CLIPImageProcessorPil

    try:
        with offline_unless_reachable(clip):
            config = AutoConfig.from_pretrained(clip)
            processor = CLIPImageProcessorPil.from_pretrained(clip)
    except OSError as error:
        raise backbone_unavailable(clip, error) from error
    if config.model_type != "clip":
        raise G3CheckpointError(f"--clip {clip} is a {config.model_type} model; G3 is built on CLIP")
    vision_config = config.vision_config
    vision_config.projection_dim = config.projection_dim
    return vision_config, processor


def g3_image_processor(name: str) -> object:
    return _clip_parts(parse_g3_spec(name)[1])[1]


def g3_dim(name: str) -> int:
    from transformers import AutoConfig

    clip = parse_g3_spec(name)[1]
    try:
        with offline_unless_reachable(clip):
            return 3 * int(AutoConfig.from_pretrained(clip).projection_dim)
    except OSError as error:
        raise backbone_unavailable(clip, error) from error


def load_g3_model(path: Path, clip: str) -> tuple[G3Vision, object]:
    """G3's image encoder with every weight from its checkpoint (fp32, CPU), and its image processor."""
    if not path.is_file():
        raise BackboneUnavailable(f"no G3 checkpoint at {path} (G3's g3.pth, from its checkpoint repository)")
    vision_config, processor = _clip_parts(clip)
    model = G3Vision(vision_config)
    needed = model.g3_keys()
    keys, tensors = _tensors(path, set(needed))
    check_keys(path, keys, set(needed), clip)
    try:
        model.load_state_dict({needed[key]: value for key, value in tensors.items()}, strict=True)
    except RuntimeError as error:
        raise G3CheckpointError(f"{path} does not fit the CLIP configuration of {clip}: {error}") from error
    return model.eval(), processor


def load_g3_backbone(name: str, device: str = "auto", dtype: str = "auto") -> Backbone:
    """The `g3:PATH?clip=CLIP` backbone: G3's 3x-projection vectors, never renormalized."""
    path, clip = parse_g3_spec(name)
    model, processor = load_g3_model(path, clip)
    target = pick_device(device)
    torch_dtype = pick_dtype(target, dtype)
    return Backbone(name=g3_spec(name), model=model.to(target, torch_dtype), processor=processor, is_clip=False,
                    dim=3 * model.vision_projection_else_1[0].in_features, device=target, dtype=torch_dtype,
                    renormalize=False)


def convert_g3(path: Path, out: Path) -> int:
    """Write every tensor of G3's state dict as safetensors, atomically and durably; returns how many.

    The copy loads without pickle and reads only the vision parts from disk.
    """
    from safetensors.torch import save_file

    if path.suffix == ".safetensors":
        raise G3CheckpointError(f"{path} is safetensors already")
    keys, tensors = _tensors(path, wanted=None)
    lacking = [head for head in ("vision_model.", "vision_projection.weight", *HEADS)
               if not any(key.startswith(head) for key in keys)]
    if lacking:
        raise G3CheckpointError(f"{path} is not G3's state dict: no {', '.join(lacking)} key(s)")
    contiguous = {key: value.contiguous() for key, value in tensors.items()}
    replace_durably(out, lambda temporary: save_file(contiguous, str(temporary)))
    return len(tensors)
