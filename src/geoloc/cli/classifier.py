"""`geoloc classifier`: train the hierarchical geocell classifier and predict cells as candidates."""

from __future__ import annotations

from pathlib import Path

import typer

from geoloc.cli.common import clean_errors, console, errors
from geoloc.progress import progress_callback

classifier_app = typer.Typer(help="Hierarchical geocell classifier over frozen embeddings (CPU-friendly).",
                             no_args_is_help=True)


@classifier_app.command("train")
def train_command(
    cells: Path = typer.Option(..., "--cells", help="Folder written by `geoloc cells build`."),
    embeddings: Path = typer.Option(..., "--embeddings", help="Embeddings of the training photos (`geoloc embed`)."),
    catalog: Path = typer.Option(..., "--catalog", help="The catalog folder the embeddings were made from "
                                 "(coordinates by image_id)."),
    out: Path = typer.Option(..., "--out", help="Model folder to write."),
    epochs: int = typer.Option(8, "--epochs", min=1),
    batch_size: int = typer.Option(512, "--batch-size", min=1, help="Photos per step and process."),
    learning_rate: float = typer.Option(2e-3, "--learning-rate"),
    hidden: int = typer.Option(512, "--hidden", min=1, help="Width of the shared trunk."),
    tau_km: list[float] | None = typer.Option(None, "--tau-km", help="Label smoothing distance per level, finest "
                                              "first (repeat once per level; default: half the median distance "
                                              "between neighbouring cell centroids of each level)."),
    label_smoothing_km: float | None = typer.Option(None, "--label-smoothing-km", min=0.001, help="PIGEON's "
                                                    "per-photo haversine smoothing with this tau, km (75 PIGEON, "
                                                    "65 PIGEOTTO) instead of the per-cell one (--tau-km)."),
    seed: int = typer.Option(0, "--seed"),
) -> None:
    """Train one head per cell level with haversine label smoothing; saves safetensors + JSON."""
    from geoloc.classifier import ClassifierSettings, train_classifier
    from geoloc.fitting import FitSettings

    settings = ClassifierSettings(hidden=hidden, tau_km=tuple(tau_km) if tau_km else None,
                                  label_smoothing_km=label_smoothing_km,
                                  fit=FitSettings(epochs=epochs, batch_size=batch_size, learning_rate=learning_rate,
                                                  seed=seed))
    with clean_errors(), \
            progress_callback("training") as progress:
        rows = train_classifier(cells, embeddings, catalog, out, settings,
                                say=lambda line: errors.print(line, highlight=False), progress=progress)
    console.print(f"trained on {rows:,} photos -> {out}")


@classifier_app.command("predict")
def predict_command(
    model: Path = typer.Option(..., "--model", help="Folder written by `geoloc classifier train`."),
    embeddings: Path = typer.Option(..., "--embeddings", help="Embeddings of the query photos (`geoloc embed`, "
                                    "same backbone as training)."),
    out: Path = typer.Option(..., "--out", help="Candidates table to write (Parquet or CSV)."),
    top_k: int = typer.Option(5, "--top-k", min=1, help="Cells per query."),
    nearest: int = typer.Option(5, "--nearest", min=0, help="Place each candidate at the mean of this many training "
                                "photos of its cell most similar to the query (0: at the cell's centroid)."),
) -> None:
    """Write each query's top-k cells as candidates (source=classifier), query_id = the embeddings' image_id."""
    from geoloc.candidates import conform_candidates
    from geoloc.classifier import classifier_candidates
    from geoloc.embeddings import EmbeddingsError, read_embeddings
    from geoloc.tables import write_table

    with clean_errors():
        _, ids, vectors = read_embeddings(embeddings)
        if len(ids) == 0:
            raise EmbeddingsError(f"{embeddings}: no embedded photos to predict")
        candidates = conform_candidates(classifier_candidates(ids, vectors, model, top_k, nearest), out)
        write_table(candidates, out)
    console.print(f"{len(ids):,} queries, {candidates.height:,} candidates -> {out}")


def register(app: typer.Typer, panel: str) -> None:
    app.add_typer(classifier_app, name="classifier", rich_help_panel=panel)
