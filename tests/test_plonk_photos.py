"""PLONK from photos: its conditioning backbones (`plonk-dinov2:DIR`, `plonk-streetclip:DIR`) and
`geoloc predict --model plonk:DIR`, on tiny random-weight models and real JPEGs."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from PIL import Image
from plonk_models import write_tiny_plonk

from geoloc.encode.loading import backbone_dim, load_backbone
from geoloc.plonk.model import load_plonk
from geoloc.plonk.sampling import log_likelihood, to_points


def jpeg(width: int, height: int, seed: int) -> Image.Image:
    pixels = np.random.default_rng(seed).integers(0, 256, size=(height, width, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="JPEG", quality=90)
    return Image.open(io.BytesIO(buffer.getvalue()))


@pytest.fixture(scope="module")
def dinov2_folder(tmp_path_factory):
    from transformers import Dinov2WithRegistersConfig, Dinov2WithRegistersModel

    torch.manual_seed(0)
    config = Dinov2WithRegistersConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                                       intermediate_size=64, patch_size=14, image_size=518, num_register_tokens=4)
    folder = tmp_path_factory.mktemp("dinov2")
    Dinov2WithRegistersModel(config).eval().save_pretrained(folder)
    return folder


def test_dinov2_is_the_cls_output_of_a_square_crop_at_336_pixels(dinov2_folder):
    from torchvision.transforms.functional import center_crop, normalize, pil_to_tensor, resize
    from transformers import Dinov2WithRegistersModel

    name = f"plonk-dinov2:{dinov2_folder}"
    backbone = load_backbone(name, device="cpu").with_features("raw")
    photos = [jpeg(400, 300, 1), jpeg(200, 260, 2)]
    vectors = backbone.embed(photos)
    assert vectors.shape == (2, 32) == (2, backbone_dim(name))
    model = Dinov2WithRegistersModel.from_pretrained(dinov2_folder).eval()
    for photo, vector in zip(photos, vectors):
        side = min(photo.size)
        square = resize(center_crop(photo.convert("RGB"), side), [336, 336],
                        interpolation=Image.Resampling.BICUBIC)
        pixels = normalize(pil_to_tensor(square).float() / 255, (0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
        with torch.no_grad():
            hidden = model(pixel_values=pixels[None]).last_hidden_state  # after the final layer norm
        np.testing.assert_allclose(vector, hidden[0, 0].numpy(), atol=1e-5)
        assert abs(np.linalg.norm(vector) - 1) > 1e-3, "PLONK reads raw features, not unit vectors"


def test_streetclip_is_the_first_token_before_the_post_layernorm(tmp_path):
    from transformers import CLIPImageProcessor, CLIPVisionConfig, CLIPVisionModel

    torch.manual_seed(0)
    config = CLIPVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                              image_size=56, patch_size=14)
    model = CLIPVisionModel(config).eval()
    model.save_pretrained(tmp_path)
    CLIPImageProcessor(size={"shortest_edge": 56}, crop_size={"height": 56, "width": 56}).save_pretrained(tmp_path)
    backbone = load_backbone(f"plonk-streetclip:{tmp_path}", device="cpu").with_features("raw")
    photo = jpeg(120, 90, 3)
    pixels = CLIPImageProcessor.from_pretrained(tmp_path)(images=[photo], return_tensors="pt")["pixel_values"]
    with torch.no_grad():
        output = model(pixel_values=pixels)
    expected = output.last_hidden_state[0, 0]
    assert not torch.allclose(expected, output.pooler_output[0], atol=1e-3)
    np.testing.assert_allclose(backbone.embed([photo])[0], expected.numpy(), atol=1e-5)


@pytest.fixture(scope="module")
def plonk_folder(tmp_path_factory):
    return write_tiny_plonk(tmp_path_factory.mktemp("plonk"), 32, 1)


def test_predict_with_plonk_gives_the_best_mode_its_likelihood_and_region(dinov2_folder, plonk_folder, tmp_path):
    import json

    from typer.testing import CliRunner

    from geoloc.cli import app

    photo = tmp_path / "photo.jpg"
    jpeg(300, 200, 4).save(photo)
    result = CliRunner().invoke(app, ["predict", str(photo), "--model", f"plonk:{plonk_folder}", "--backbone",
                                      f"plonk-dinov2:{dinov2_folder}", "--samples", "24", "--steps", "6",
                                      "--top-k", "3", "--json", "--map", str(tmp_path / "map.html"),
                                      "--device", "cpu"])
    assert result.exit_code == 0, result.output
    answer = json.loads(result.stdout.strip().splitlines()[-1])
    assert answer["region_mass"] == 0.9 and 0 < answer["region_km2"] <= 4 * np.pi * 6371.0088**2
    assert (answer["lat"], answer["lon"]) == (answer["candidates"][0]["lat"], answer["candidates"][0]["lon"])
    assert sum(c["prob"] for c in answer["candidates"]) == pytest.approx(1.0)
    embedding = torch.from_numpy(load_backbone(f"plonk-dinov2:{dinov2_folder}", device="cpu").with_features(
        "raw").embed([Image.open(photo)]))
    model = load_plonk(str(plonk_folder))
    again = log_likelihood(model.network, model.settings.schedule, embedding,
                           to_points(torch.tensor([[answer["lat"], answer["lon"]]], dtype=torch.float64)))
    assert again.item() == pytest.approx(answer["log_likelihood"], abs=1e-3)
    assert "localizability" in (tmp_path / "map.html").read_text()


def test_predict_refuses_a_backbone_the_checkpoint_does_not_read(plonk_folder, tmp_path):
    from typer.testing import CliRunner

    from geoloc.cli import app

    photo = tmp_path / "photo.jpg"
    jpeg(64, 64, 5).save(photo)
    result = CliRunner().invoke(app, ["predict", str(photo), "--model", f"plonk:{plonk_folder}", "--backbone",
                                      "openai/clip-vit-large-patch14", "--device", "cpu"])
    assert result.exit_code == 2 and "conditions on 'plonk-dinov2'" in result.output


def test_the_hugging_face_port_of_dinov2_gives_the_torch_hub_models_vector(dinov2_folder):
    """The same random weights in the torch.hub layout (timm builds the hub's DINOv2 with registers from that
    layout) and in the Hugging Face port: the same CLS vector for a 336 px photo, position embeddings resized."""
    timm = pytest.importorskip("timm")
    from timm.models.vision_transformer import checkpoint_filter_fn
    from transformers import Dinov2WithRegistersModel

    ported = Dinov2WithRegistersModel.from_pretrained(dinov2_folder).eval()
    with torch.no_grad():
        for parameter in ported.parameters():
            parameter.add_(torch.randn_like(parameter) * 0.1)
    state = ported.state_dict()
    hub = {"cls_token": state["embeddings.cls_token"], "mask_token": state["embeddings.mask_token"],
           "register_tokens": state["embeddings.register_tokens"], "pos_embed": state["embeddings.position_embeddings"],
           "patch_embed.proj.weight": state["embeddings.patch_embeddings.projection.weight"],
           "patch_embed.proj.bias": state["embeddings.patch_embeddings.projection.bias"],
           "norm.weight": state["layernorm.weight"], "norm.bias": state["layernorm.bias"]}
    for block in range(ported.config.num_hidden_layers):
        ours, theirs = f"encoder.layer.{block}.", f"blocks.{block}."
        for kind in ("weight", "bias"):
            hub[theirs + f"attn.qkv.{kind}"] = torch.cat([state[ours + f"attention.{part}_proj.{kind}"]
                                                         for part in ("q", "k", "v")])
            hub[theirs + f"attn.proj.{kind}"] = state[ours + f"attention.o_proj.{kind}"]
            for name in ("norm1", "norm2", "mlp.fc1", "mlp.fc2"):
                hub[theirs + f"{name}.{kind}"] = state[ours + f"{name}.{kind}"]
        hub[theirs + "ls1.gamma"] = state[ours + "layer_scale1.lambda1"]
        hub[theirs + "ls2.gamma"] = state[ours + "layer_scale2.lambda1"]
    config = ported.config
    reference = timm.create_model("vit_small_patch14_reg4_dinov2", pretrained=False, embed_dim=config.hidden_size,
                                  depth=config.num_hidden_layers, num_heads=config.num_attention_heads,
                                  mlp_ratio=config.mlp_ratio, img_size=518, dynamic_img_size=True, num_classes=0)
    reference.load_state_dict(checkpoint_filter_fn(hub, reference))
    reference.eval()
    pixels = torch.randn(2, 3, 336, 336, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        expected = reference(pixels)
        torch.testing.assert_close(ported(pixel_values=pixels).pooler_output, expected, atol=1e-4, rtol=1e-4)
    assert not torch.allclose(expected[0], expected[1], atol=1e-2)
