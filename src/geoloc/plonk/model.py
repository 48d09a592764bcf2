"""A PLONK checkpoint loaded for sampling: network, sampler, schedule and the embedding it conditions on.

A checkpoint is a Hugging Face hub id or a local folder holding what `diff-plonk` saves:
`config.json` (the network's sizes, nothing else: the package passes every key to its
network) and `model.safetensors`. Only those two files are read: JSON and tensors, never
a pickle. What the package keys by hub id (sampler, embedding) a folder records in
`geoloc_plonk.json` beside them; a published checkpoint's folder without it is known by
its name (`PLONK_YFCC`, ...).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from geoloc.hub import offline_unless_reachable
from geoloc.plonk.network import NetworkConfig, PlonkNetwork, Schedule
from geoloc.plonk.sampling import SAMPLERS

CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"
SETTINGS_FILE = "geoloc_plonk.json"
EMBEDDINGS = {
    "plonk-dinov2": "DINOv2 ViT-L/14 with registers: the CLS output (1:1 centre crop, 336 px bicubic, ImageNet "
                    "mean and std), unnormalized; `geoloc embed --backbone plonk-dinov2 --features raw`",
    "plonk-streetclip": "StreetCLIP's vision tower: the first token of the last hidden state, before the "
                        "post-layernorm, unnormalized; `geoloc embed --backbone plonk-streetclip --features raw`",
}
"""The embeddings PLONK's published checkpoints condition on, by the backbone names `geoloc embed` knows them by
(`plonk-dinov2:DIR` reads the weights from a local folder and makes the same kind)."""
PUBLISHED = {
    f"nicolas-dufour/PLONK_{data}{variant}": (sampler, embedding)
    for data, embedding in (("YFCC", "plonk-dinov2"), ("OSV_5M", "plonk-streetclip"), ("iNaturalist", "plonk-dinov2"))
    for variant, sampler in (("", "riemannian_flow"), ("_flow", "flow"), ("_diffusion", "ddim"))
}
"""Hub id -> (sampler, embedding), as PLONK's pipeline pairs them."""


class PlonkUnavailable(RuntimeError):
    """A checkpoint cannot be loaded; the message says what is missing and what to do."""


@dataclass(frozen=True)
class PlonkSettings:
    """What a folder records beside the network: how to sample it and which embeddings it reads."""

    sampler: str
    embedding: str
    """The backbone of the embeddings it reads, as their meta.json names it (see `embedding_identity`)."""
    schedule: Schedule = field(default_factory=Schedule)
    feature_kind: str | None = None
    """The kind of those features (geoloc.embeddings.FEATURE_KINDS); None: any."""

    def __post_init__(self) -> None:
        if self.sampler not in SAMPLERS:
            raise PlonkUnavailable(f"unknown PLONK sampler {self.sampler!r}: one of {', '.join(SAMPLERS)}")

    def as_json(self) -> dict:
        return {**asdict(self), "schedule": self.schedule.as_json()}

    @classmethod
    def from_json(cls, record: dict) -> PlonkSettings:
        return cls(record["sampler"], record["embedding"], Schedule(**record.get("schedule", {})),
                   record.get("feature_kind"))


def embedding_identity(backbone: str | None) -> str | None:
    """The embeddings a backbone name stands for: `plonk-dinov2:DIR` makes what `plonk-dinov2` makes."""
    return backbone.split(":", 1)[0] if backbone and backbone.startswith("plonk-") else backbone


@dataclass
class PlonkModel:
    """A loaded checkpoint: `network` in eval mode on `device`, and its `settings`."""

    name: str
    network: PlonkNetwork
    settings: PlonkSettings

    @property
    def device(self) -> torch.device:
        return next(self.network.parameters()).device

    @property
    def cond_dim(self) -> int:
        return self.network.config.cond_dim


def _published(name: str) -> PlonkSettings | None:
    for hub_id, (sampler, embedding) in PUBLISHED.items():
        if name in (hub_id, hub_id.split("/")[1]):
            return PlonkSettings(sampler, embedding, feature_kind="raw")
    return None


def _files(name: str) -> Path:
    """The folder holding the checkpoint's files: `name` itself, or the hub's cache after a download."""
    folder = Path(name)
    if folder.is_dir():
        missing = [file for file in (CONFIG_FILE, WEIGHTS_FILE) if not (folder / file).is_file()]
        if missing:
            raise PlonkUnavailable(f"{folder} is not a PLONK checkpoint: it lacks {', '.join(missing)}")
        return folder
    from huggingface_hub import hf_hub_download

    try:
        with offline_unless_reachable(name):
            hf_hub_download(name, WEIGHTS_FILE)
            return Path(hf_hub_download(name, CONFIG_FILE)).parent
    except Exception as error:  # the hub client raises many kinds; all mean the same here
        raise PlonkUnavailable(
            f"cannot load the PLONK checkpoint {name!r}: it is not a local folder and its files ({CONFIG_FILE}, "
            f"{WEIGHTS_FILE}) are neither in the Hugging Face cache nor downloadable ({error.__class__.__name__}). "
            "On a machine with network access, save it (`huggingface-cli download ID --local-dir DIR`), copy DIR "
            "here and pass DIR.") from error


def load_plonk(name: str, device: str | torch.device = "cpu", settings: PlonkSettings | None = None) -> PlonkModel:
    """The checkpoint `name` (hub id or folder); `settings` where a folder records none and is not a published one."""
    from safetensors.torch import load_file

    folder = _files(name)
    recorded = folder / SETTINGS_FILE
    if recorded.is_file():
        settings = PlonkSettings.from_json(json.loads(recorded.read_text()))
    settings = settings or _published(name) or _published(folder.name)
    if settings is None:
        raise PlonkUnavailable(f"{name}: no {SETTINGS_FILE} says how to sample this checkpoint and which "
                               "embeddings it reads, and it is not a published one; name them (--sampler, "
                               f"--embedding: {', '.join(EMBEDDINGS)} or the backbone of your embeddings)")
    config = json.loads((folder / CONFIG_FILE).read_text())
    known = NetworkConfig.__dataclass_fields__
    unknown = sorted(set(config) - set(known))
    if unknown:
        raise PlonkUnavailable(f"{folder / CONFIG_FILE}: not a PLONK network config (unknown keys {unknown})")
    network = PlonkNetwork(NetworkConfig(**config))
    try:
        network.load_state_dict(load_file(folder / WEIGHTS_FILE))
    except RuntimeError as error:
        raise PlonkUnavailable(f"{folder / WEIGHTS_FILE} does not fit its {CONFIG_FILE}: {error}") from error
    return PlonkModel(name, network.eval().requires_grad_(False).to(device), settings)


def save_plonk(model: PlonkModel, folder: Path) -> None:
    """Write `folder` as diff-plonk saves a checkpoint (config.json, model.safetensors), plus our settings."""
    from safetensors.torch import save_file

    from geoloc.tables import replace_durably, write_text

    folder.mkdir(parents=True, exist_ok=True)
    state = {key: value.detach().cpu().contiguous() for key, value in model.network.state_dict().items()}
    replace_durably(folder / WEIGHTS_FILE, lambda temporary: save_file(state, str(temporary)))
    write_text(folder / SETTINGS_FILE, json.dumps(model.settings.as_json(), indent=2))
    write_text(folder / CONFIG_FILE, json.dumps(model.network.config.as_json(), indent=2))
