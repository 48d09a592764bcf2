"""`geoloc candidates plonk`: PLONK's density modes as candidates, with each photo's region and localizability."""

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

    with clean_errors(PlonkUnavailable, EmbeddingsError, TableError, FileNotFoundError, ValueError):
        loaded = load_model(model, device, sampler, embedding)
        settings = DensitySettings(samples, steps, cfg, seed, modes, separation_km, mass)
        total = open_embeddings(embeddings).meta["rows"]
        with progress_bar() as progress:
            task = progress.add_task("sampling", total=total)
            table = plonk_candidates(loaded, embeddings, settings, batch_photos,
                                     lambda done: progress.advance(task, done))
        write_table(table, out)
    console.print(f"{table['query_id'].n_unique()} photo(s), {len(table)} candidates -> {out}")


def register(candidates_app: typer.Typer) -> None:
    candidates_app.command("plonk")(plonk_candidates_command)
