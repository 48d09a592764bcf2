"""Train GeoCLIP on your own catalog, from one embedding pass, into a release the `geoclip` package loads.

Files read: a catalog folder (coordinates by image_id), an embeddings folder of raw CLIP
features (`geoloc embed --features raw-geoclip-train`), optionally a validation catalog with
its embeddings, a gallery file, or a release to start from. Files written in `--out`: the
release (see geoloc.geoclip.release), `training.json` (losses, validation figures per epoch),
`refused.parquet` (training rows left out, each with its reason) and, while training,
`checkpoint/` (the last finished epoch, removed once the release is written).
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import polars as pl
import torch

from geoloc.geoclip.model import GEOCLIP_SIGMAS, IMAGE_DIM, GeoClipModel, published_state
from geoloc.geoclip.release import (
    GALLERY_SIZE,
    LOCATION_FEATURES,
    ReleaseError,
    cached_gallery_features,
    gallery_features,
    read_gallery_file,
    read_release,
    sample_gallery,
    weights_key,
    write_release,
)
from geoloc.geoclip.training import (
    CHECKPOINT_FOLDER,
    TrainSettings,
    load_checkpoint,
    new_state,
    save_checkpoint,
    train_epochs,
)
from geoloc.tables import write_table, write_text

TRAINABLE_FEATURES = ("raw-geoclip-train", "raw")
"""GeoCLIP's MLP reads raw CLIP projections: its training preprocessing's, or the CLIP processor's."""

__all__ = ["ReleaseError", "TrainSettings", "TrainSummary", "read_release", "top1_locations", "train_geoclip",
           "training_rows"]


@dataclass(frozen=True)
class TrainingRows:
    ids: pl.Series
    features: np.ndarray
    """(photos, 768), or (photos, views, 768) with augmented views."""
    coordinates: np.ndarray
    refused: pl.DataFrame
    """image_id, reason: rows of the embeddings that cannot be trained on."""
    backbone: str
    feature_kind: str


@dataclass(frozen=True)
class TrainSummary:
    rows: int
    refused: int
    losses: list[float]
    validation: list[dict]
    gallery: int


def training_rows(catalog_dir: Path, embeddings_dir: Path) -> TrainingRows:
    """Every embedded photo with its coordinates; failed embeddings, photos not in the catalog, bad coordinates
    and non-finite features are refused with their reason."""
    from geoloc.embeddings import EmbeddingsError, feature_kind, open_embeddings, require_features
    from geoloc.geo import CoordinateStatus, coordinate_status
    from geoloc.tables import read_table

    embeddings = open_embeddings(embeddings_dir)
    require_features(embeddings.meta, embeddings_dir, TRAINABLE_FEATURES, "GeoCLIP training", IMAGE_DIM)
    table = pl.scan_parquet(embeddings.parts).select("image_id", "embedding", "error").collect()
    catalog = read_table(catalog_dir / "catalog.parquet" if catalog_dir.is_dir() else catalog_dir,
                         columns=["image_id", "lat", "lon"]).with_columns(pl.col("image_id").cast(pl.Utf8))
    rows = table.join(catalog, on="image_id", how="left", maintain_order="left")
    status = coordinate_status(rows["lat"].fill_null(np.nan).to_numpy(), rows["lon"].fill_null(np.nan).to_numpy())
    views = int(embeddings.meta.get("views", 1))
    features = np.zeros((len(rows), IMAGE_DIM * views), dtype=np.float32)
    embedded = rows["error"].is_null().to_numpy()
    if embedded.any():
        features[embedded] = rows.filter(pl.col("error").is_null())["embedding"].to_numpy()
    reasons = np.select(
        [~embedded, rows["lat"].is_null().to_numpy(), status == CoordinateStatus.BAD_COORDINATES,
         status == CoordinateStatus.NULL_ISLAND, ~np.isfinite(features).all(axis=1)],
        [np.char.add("embedding_failed: ", rows["error"].fill_null("").to_numpy().astype(str)), "not_in_catalog",
         "bad_coordinates", "null_island", "nonfinite_features"], default="")
    keep = reasons == ""
    if not keep.any():
        raise EmbeddingsError(f"{embeddings_dir}: no photo can be trained on ({len(rows)} refused; "
                              f"first reason: {reasons[0] if len(reasons) else 'no rows'})")
    refused = pl.DataFrame({"image_id": rows["image_id"].filter(~keep), "reason": reasons[~keep]})
    kept = features[keep] if views == 1 else features[keep].reshape(int(keep.sum()), views, IMAGE_DIM)
    return TrainingRows(rows["image_id"].filter(keep), kept,
                        rows.filter(pl.Series(keep)).select("lat", "lon").to_numpy(), refused,
                        str(embeddings.meta.get("backbone")), feature_kind(embeddings.meta))


def initial_weights(init: str) -> tuple[dict[str, torch.Tensor] | None, tuple[float, ...] | None]:
    """Weights to start from and the sigmas they were trained with (None, None: from scratch)."""
    if init == "scratch":
        return None, None
    if init == "published":
        return published_state(), GEOCLIP_SIGMAS
    release = read_release(Path(init))
    return release.weights, release.sigmas


@torch.inference_mode()
def top1_locations(model: GeoClipModel, location_features: torch.Tensor, gallery: np.ndarray, features: np.ndarray,
                   batch_size: int = 4096) -> np.ndarray:
    """Each photo's most probable gallery location (lat, lon), float64 (computed on the model's device)."""
    device = model.logit_scale.device
    locations = location_features.to(device)
    best = [(model.image_features(torch.from_numpy(features[start:start + batch_size]).to(device)) @ locations.T)
            .argmax(dim=1).cpu().numpy() for start in range(0, len(features), batch_size)]
    return gallery[np.concatenate(best)].astype(np.float64)


def validation_figures(model: GeoClipModel, location_features: torch.Tensor, gallery: np.ndarray,
                       features: np.ndarray, coordinates: np.ndarray) -> dict:
    """Top-1 over the gallery for each validation photo: median error and accuracy at GeoCLIP's radii."""
    from geoloc.geo import ACCURACY_THRESHOLDS_KM, great_circle_km

    guesses = top1_locations(model, location_features, gallery, features)
    km = great_circle_km(guesses[:, 0], guesses[:, 1], coordinates[:, 0], coordinates[:, 1])
    return {"photos": len(km), "median_km": float(np.median(km)),
            **{f"acc_{radius}km": float((km <= radius).mean()) for radius in ACCURACY_THRESHOLDS_KM}}


def train_geoclip(
    catalog_dir: Path,
    embeddings_dir: Path,
    out: Path,
    settings: TrainSettings = TrainSettings(),
    validation: tuple[Path, Path] | None = None,
    gallery_file: Path | None = None,
    gallery_size: int = GALLERY_SIZE,
    say: Callable[[str], None] = lambda line: None,
    progress: Callable[[int, int], None] = lambda done, total: None,
) -> TrainSummary:
    """`geoloc geoclip train`: train (or resume from the last finished epoch), then write the release.

    `validation` is (catalog, embeddings) of held-out photos, scored over the gallery after each epoch.
    """
    from accelerate import PartialState

    rows = training_rows(catalog_dir, embeddings_dir)
    if len(rows.refused):
        say(f"{len(rows.refused):,} row(s) refused (see {out / 'refused.parquet'})")
        write_table(rows.refused, out / "refused.parquet")
    initial, trained_sigmas = initial_weights(settings.init)
    if trained_sigmas is not None and tuple(settings.sigmas) != trained_sigmas:
        raise ReleaseError(f"--init {settings.init} was trained with sigmas {list(trained_sigmas)}; "
                           f"--sigmas {list(settings.sigmas)} would not load its location encoder")
    gallery = (read_gallery_file(gallery_file) if gallery_file is not None
               else sample_gallery(rows.coordinates[:, 0], rows.coordinates[:, 1], gallery_size, settings.seed))
    held_out = training_rows(*validation) if validation is not None else None
    held_out_features = None if held_out is None else (
        held_out.features if held_out.features.ndim == 2 else held_out.features[:, 0])  # augmented: its first view
    checkpoint = out / CHECKPOINT_FOLDER
    state = load_checkpoint(checkpoint, settings) or new_state(settings, initial)
    if state.epochs_done:
        say(f"resuming after epoch {state.epochs_done} from {checkpoint}")
    say(f"training GeoCLIP on {len(rows.ids):,} photos, {settings.epochs} epoch(s), batch {settings.batch_size}, "
        f"queue {settings.queue_size}, sigmas {list(settings.sigmas)}, gallery {len(gallery):,} locations")

    def after_epoch(state) -> None:
        if held_out is not None:
            figures = validation_figures(state.model, gallery_features(state.model.location_encoder, gallery), gallery,
                                         held_out_features, held_out.coordinates)
            state.validation.append({"epoch": state.epochs_done, **figures})
            say(f"epoch {state.epochs_done}: validation median {figures['median_km']:,.0f} km, "
                f"acc@25km {figures['acc_25km']:.3f}")
        say(f"epoch {state.epochs_done}: mean loss {state.losses[-1]:.4f}")
        save_checkpoint(checkpoint, state, settings)

    state = train_epochs(state, rows.features, rows.coordinates, settings, after_epoch, progress)
    summary = TrainSummary(len(rows.ids), len(rows.refused), state.losses, state.validation, len(gallery))
    if not PartialState().is_main_process:
        return summary
    details = {"feature_kind": rows.feature_kind, "training": {**settings.resumable_with(), "epochs": settings.epochs}}
    write_release(out, state.model.package_state(), tuple(settings.sigmas), gallery,
                  rows.backbone, details)
    cached_gallery_features(out / LOCATION_FEATURES, weights_key(out), state.model.location_encoder,
                            read_release(out).gallery)
    record = {"rows": len(rows.ids), "refused": len(rows.refused), "losses": state.losses,
              "validation": state.validation}
    write_text(out / "training.json", json.dumps(record, indent=2) + "\n")
    shutil.rmtree(checkpoint, ignore_errors=True)
    return summary

