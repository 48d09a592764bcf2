"""`geoloc geoclip train`: GeoCLIP trained on your own catalog, into a release the `geoclip` package loads."""

from __future__ import annotations

from pathlib import Path

import typer

from geoloc.cli.common import clean_errors, console, errors
from geoloc.progress import progress_callback
from geoloc.tables import TableError

geoclip_app = typer.Typer(help="Train GeoCLIP (image MLP, location encoder, temperature) over raw CLIP features.",
                          no_args_is_help=True)


def _sigmas(text: str) -> tuple[float, ...]:
    try:
        sigmas = tuple(float(value) for value in text.split(","))
    except ValueError as error:
        raise typer.BadParameter(f"expected numbers separated by commas, got {text!r}") from error
    if not sigmas or min(sigmas) <= 0:
        raise typer.BadParameter("every sigma must be above 0")
    return sigmas


@geoclip_app.command("train")
def train_command(
    catalog: Path = typer.Option(..., "--catalog", help="The catalog folder the embeddings were made from "
                                 "(coordinates by image_id)."),
    embeddings: Path = typer.Option(..., "--embeddings", help="Raw CLIP ViT-L/14 features of the training photos "
                                    "(`geoloc embed --features raw-geoclip-train`)."),
    out: Path = typer.Option(..., "--out", help="Release folder to write (resumes a run killed there)."),
    epochs: int = typer.Option(10, "--epochs", min=1),
    batch_size: int = typer.Option(512, "--batch-size", min=1, help="Photos per step, all processes together "
                                   "(under `accelerate launch` each trains on its share)."),
    lr: float = typer.Option(3e-5, "--lr", help="Adam's learning rate, times 0.87 after each epoch."),
    seed: int = typer.Option(0, "--seed"),
    val: Path | None = typer.Option(None, "--val", help="A held-out catalog, scored over the gallery after each "
                                    "epoch."),
    val_embeddings: Path | None = typer.Option(None, "--val-embeddings", help="Raw features of the --val photos "
                                               "(default: --embeddings)."),
    init: str = typer.Option("scratch", "--init", help="scratch, published (fine-tune GeoCLIP's released "
                             "weights) or a release folder."),
    sigmas: str = typer.Option("1,16,256", "--sigmas", help="The location encoder's capsules (GeoCLIP's: "
                               "1,16,256; add 4096 for street level)."),
    queue_size: int = typer.Option(4096, "--queue-size", min=1, help="GPS queue of extra negatives."),
    gallery: Path | None = typer.Option(None, "--gallery", help="The release's GPS gallery (CSV or Parquet with "
                                        "LAT, LON); default: drawn from the training catalog."),
    gallery_size: int = typer.Option(100_000, "--gallery-size", min=1, help="Locations drawn when no --gallery."),
) -> None:
    """Train GeoCLIP exactly as its package's loop does, from features embedded once; write a release."""
    from geoloc.embeddings import EmbeddingsError
    from geoloc.geoclip import ReleaseError, TrainSettings, train_geoclip

    settings = TrainSettings(epochs=epochs, batch_size=batch_size, learning_rate=lr, seed=seed, init=init,
                             sigmas=_sigmas(sigmas), queue_size=queue_size)
    validation = (val, val_embeddings or embeddings) if val is not None else None
    with clean_errors(EmbeddingsError, ReleaseError, TableError), \
            progress_callback("training") as progress:
        summary = train_geoclip(catalog, embeddings, out, settings, validation, gallery, gallery_size,
                                say=lambda line: errors.print(line, highlight=False), progress=progress)
    console.print(f"trained on {summary.rows:,} photos ({summary.refused:,} refused), gallery of "
                  f"{summary.gallery:,} locations -> {out}")


def register(app: typer.Typer, panel: str) -> None:
    app.add_typer(geoclip_app, name="geoclip", rich_help_panel=panel)
