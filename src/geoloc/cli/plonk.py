"""`geoloc candidates plonk` (PLONK's density modes as candidates, with each photo's region and localizability)
and `geoloc plonk train`."""

from __future__ import annotations

from enum import Enum
from pathlib import Path

import typer

from geoloc.cli.common import clean_errors, console
from geoloc.progress import progress_bar
from geoloc.tables import TableError, write_table

MODEL_HELP = ("A PLONK checkpoint: hub id (nicolas-dufour/PLONK_YFCC, ..._OSV_5M, ..._iNaturalist, each also _flow "
              "and _diffusion) or a local folder with its config.json and model.safetensors.")


class Sampler(str, Enum):
    riemannian_flow = "riemannian_flow"
    flow = "flow"
    ddim = "ddim"


def load_model(model: str, device: str, sampler: Sampler | None, embedding: str | None):
    """The checkpoint, told its sampler and embedding where its folder records neither."""
    from geoloc.encode.backbone import pick_device
    from geoloc.plonk.model import PlonkSettings, load_plonk

    if (sampler is None) != (embedding is None):
        raise typer.BadParameter("--sampler and --embedding go together (for a folder that records neither)")
    settings = PlonkSettings(sampler.value, embedding) if sampler is not None else None
    with console.status("loading PLONK", spinner="dots"):
        return load_plonk(model, pick_device(device), settings)


def plonk_candidates_command(
    model: str = typer.Option(..., "--model", help=MODEL_HELP),
    embeddings: Path = typer.Option(..., "--embeddings", help="The photos' embeddings (`geoloc embed`), of the "
                                    "kind the checkpoint reads (plonk-dinov2 or plonk-streetclip for the "
                                    "published ones)."),
    out: Path = typer.Option(..., "--out", help="Candidates table (.parquet or .csv), source=plonk."),
    samples: int = typer.Option(64, "--samples", min=1, help="Samples drawn per photo."),
    steps: int = typer.Option(250, "--steps", min=1, help="Sampler steps (PLONK's default: 250)."),
    cfg: float = typer.Option(0.0, "--cfg", min=0.0, help="Classifier-free guidance scale (0: none)."),
    seed: int = typer.Option(0, "--seed"),
    modes: int = typer.Option(5, "--modes", min=1, help="Candidates per photo: its most likely samples, each "
                              "farther than --separation-km from those kept."),
    separation_km: float = typer.Option(100.0, "--separation-km", min=0.0),
    mass: float = typer.Option(0.9, "--mass", min=0.01, max=0.99, help="Share of the probability the region "
                               "(radius_km, area_km2) holds."),
    batch_photos: int = typer.Option(256, "--batch-photos", min=1, help="Photos sampled together on the device."),
    device: str = typer.Option("auto", "--device", help="auto, cpu, cuda, cuda:1 ..."),
    restart: bool = typer.Option(False, "--restart", help="Discard the parts a previous run left in OUT.parts/ "
                                 "(by default a rerun redoes only the embeddings parts not finished)."),
    sampler: Sampler | None = typer.Option(None, "--sampler", help="For a folder that records none and is not a "
                                           "published checkpoint."),
    embedding: str | None = typer.Option(None, "--embedding", help="With --sampler: the backbone of the "
                                         "embeddings it reads."),
) -> None:
    """Sample each photo's density; its modes become candidates scored by their exact log-likelihood."""
    from geoloc.candidates.plonk import plonk_candidates
    from geoloc.embeddings import EmbeddingsError, open_embeddings
    from geoloc.plonk.density import DensitySettings
    from geoloc.plonk.model import PlonkUnavailable
    from geoloc.resumable import model_identity, work_folder
    from geoloc.tables import remove_folder

    with clean_errors(PlonkUnavailable, EmbeddingsError, TableError):
        loaded = load_model(model, device, sampler, embedding)
        settings = DensitySettings(samples, steps, cfg, seed, modes, separation_km, mass)
        total = open_embeddings(embeddings).meta["rows"]
        run_settings = {"model": model_identity(model), "plonk": loaded.settings.as_json(),
                        "device": loaded.device.type}
        with progress_bar() as progress:
            task = progress.add_task("sampling", total=total)
            table = plonk_candidates(loaded, embeddings, settings, work_folder(out), run_settings, batch_photos,
                                     restart, lambda done: progress.advance(task, done))
        write_table(table, out)
        remove_folder(work_folder(out))
    console.print(f"{table['query_id'].n_unique()} photo(s), {len(table)} candidates -> {out}")


plonk_app = typer.Typer(help="PLONK, generative geolocation: train its network on your embeddings.",
                        no_args_is_help=True)


@plonk_app.command("train")
def train_command(
    catalog: Path = typer.Option(..., "--catalog", help="The catalog folder the embeddings were made from "
                                 "(coordinates by image_id)."),
    embeddings: Path = typer.Option(..., "--embeddings", help="Embeddings of the training photos (`geoloc embed`); "
                                    "the model will read only embeddings of this backbone."),
    out: Path = typer.Option(..., "--out", help="Checkpoint folder to write (config.json, model.safetensors: "
                             "diff-plonk loads it too)."),
    epochs: int = typer.Option(10, "--epochs", min=1),
    batch_size: int = typer.Option(1024, "--batch-size", min=1, help="Photos per step and process."),
    learning_rate: float = typer.Option(1e-3, "--learning-rate"),
    dim: int = typer.Option(512, "--dim", min=4, help="Network width (a multiple of 4)."),
    depth: int = typer.Option(12, "--depth", min=1, help="Adaptive-layer-norm blocks."),
    cond_drop: float = typer.Option(0.1, "--cond-drop", min=0.0, max=1.0, help="Share of embeddings replaced by "
                                    "zeros in training, for classifier-free guidance."),
    seed: int = typer.Option(0, "--seed"),
) -> None:
    """Train PLONK's network (Riemannian flow matching on the sphere) on frozen embeddings; `accelerate launch`
    for several GPUs."""
    from geoloc.embeddings import EmbeddingsError
    from geoloc.fitting import FitSettings
    from geoloc.plonk.network import NetworkConfig
    from geoloc.plonk.training import train_plonk_folder

    fit_settings = FitSettings(epochs=epochs, batch_size=batch_size, learning_rate=learning_rate, seed=seed)
    with clean_errors(EmbeddingsError, TableError):
        with progress_bar() as progress:
            task = progress.add_task("training", total=None)
            losses = train_plonk_folder(catalog, embeddings, out, NetworkConfig(dim=dim, depth=depth), fit_settings,
                                        cond_drop, console.print,
                                        lambda done, total: progress.update(task, completed=done, total=total))
    console.print(f"final mean loss {losses[-1]:.4f} -> {out}")


def register(app: typer.Typer, candidates_app: typer.Typer, panel: str) -> None:
    candidates_app.command("plonk")(plonk_candidates_command)
    app.add_typer(plonk_app, name="plonk", rich_help_panel=panel)
