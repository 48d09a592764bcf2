"""Shared fixtures: small models built locally from configs (random weights, no downloads)."""

from pathlib import Path

import pytest


def build_tiny_clip(folder: Path, projection_dim: int = 768, image_size: int = 64) -> Path:
    """A CLIP with ViT-L/14's projection size (768, unless told) but a toy vision tower, saved like a hub folder.

    `image_size` 224 is what GeoCLIP's training preprocessing gives (64 keeps other tests cheap)."""
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel

    config = CLIPConfig(
        projection_dim=projection_dim,
        text_config={"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 1, "num_attention_heads": 2,
                     "vocab_size": 100, "max_position_embeddings": 16},
        vision_config={"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2,
                       "num_attention_heads": 2, "image_size": image_size, "patch_size": image_size // 4},
    )
    import torch

    torch.manual_seed(0)
    CLIPModel(config).save_pretrained(folder)
    CLIPImageProcessor(size={"shortest_edge": image_size},
                       crop_size={"height": image_size, "width": image_size}).save_pretrained(folder)
    return folder


@pytest.fixture(scope="session")
def tiny_clip(tmp_path_factory) -> Path:
    return build_tiny_clip(tmp_path_factory.mktemp("tiny-clip"))


@pytest.fixture(scope="session")
def tiny(tmp_path_factory):
    """A tiny Qwen2-VL base (folder), a reward model on it whose LoRA and value head are far from their
    initial values, and the base's processor."""
    import torch

    from geoloc.rank.dryrun import build_tiny_qwen2_vl
    from geoloc.rank.model import LoraSettings, load_processor, new_reward_model

    base = str(build_tiny_qwen2_vl(tmp_path_factory.mktemp("tiny-qwen2-vl")))
    torch.manual_seed(3)
    model = new_reward_model(base, LoraSettings(rank=4, alpha=8))
    with torch.no_grad():
        for parameter in model.parameters():
            if parameter.requires_grad:
                parameter.normal_(std=0.5)
    model.eval()
    return base, model, load_processor(base)


def build_tiny_g3(folder: Path, projection_dim: int = 32) -> tuple[Path, Path]:
    """A tiny CLIP folder and a G3 checkpoint around it, saved as G3 saves it: (CLIP folder, g3.pth).

    The module has G3's attribute names (its utils/G3.py) and is saved with
    `torch.save(model.state_dict())`. Its vision weights are perturbed away from the CLIP
    folder's, so a loader that read any weight from the CLIP folder would give other vectors.
    """
    import torch
    from torch import nn
    from transformers import CLIPModel

    def head(dim_in: int, dim_out: int) -> nn.Sequential:
        return nn.Sequential(nn.Linear(dim_in, dim_in), nn.ReLU(), nn.Linear(dim_in, dim_out))

    clip_dir = build_tiny_clip(folder / "clip", projection_dim=projection_dim)
    torch.manual_seed(1)
    clip = CLIPModel.from_pretrained(clip_dir)
    g3 = nn.Module()
    g3.vision_model, g3.text_model = clip.vision_model, clip.text_model
    g3.vision_projection, g3.text_projection = clip.visual_projection, clip.text_projection
    for number in (1, 2, 3):
        g3.register_parameter(f"logit_scale{number}", nn.Parameter(torch.tensor(3.99)))
    g3.location_encoder = nn.ModuleDict({"LocEnc0": nn.Sequential(nn.Linear(2, 8), nn.ReLU())})
    g3.vision_projection_else_1 = head(projection_dim, projection_dim)
    g3.text_projection_else = head(projection_dim, projection_dim)
    g3.vision_projection_else_2 = head(projection_dim, projection_dim)
    g3.location_projection_else = head(8, projection_dim)
    with torch.no_grad():
        for parameter in [*g3.vision_model.parameters(), *g3.vision_projection.parameters()]:
            parameter.add_(0.05 * torch.randn_like(parameter))
    state = g3.state_dict()
    state["vision_model.embeddings.position_ids"] = torch.arange(17)[None]  # what older transformers saved
    torch.save(state, folder / "g3.pth")
    return clip_dir, folder / "g3.pth"
