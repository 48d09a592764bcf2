"""`geoloc predict` (the main job) and `geoloc candidates geoclip`."""

from __future__ import annotations

import json
from pathlib import Path

import typer

from geoloc.cli.common import clean_errors, console, errors
from geoloc.cli.outputs import resuming, write_answers
from geoloc.progress import progress_bar
from geoloc.tables import write_table

DEFAULT_BACKBONE = "openai/clip-vit-large-patch14"
BACKBONE_HELP = ("CLIP ViT-L/14 for GeoCLIP: a hub id or a local folder with its files [default: the --model "
                 "release's backbone, else openai/clip-vit-large-patch14].")
MODEL_HELP = "A GeoCLIP release (`geoloc geoclip train`) instead of GeoCLIP's published weights and gallery."


def geoclip_loader(backbone: str | None, model: Path | None, device: str):
    """A function loading GeoCLIP: the published one or a release, on its backbone unless another is named."""
    from geoloc.candidates.geoclip import GeoClip, geoclip_backbone
    from geoloc.encode.loading import load_backbone

    backbone = geoclip_backbone(backbone, model)
    return lambda: GeoClip(load_backbone(backbone, device=device), release=model)


def _guesses(photos_or_folders: list[Path], backbone: str | None, model: Path | None, top_k: int, batch_size: int,
             device: str, out: Path | None = None, part_photos: int = 1000, restart: bool = False,
             plonk: str | None = None, density: object = None):
    """Load GeoCLIP (or the PLONK checkpoint `plonk` with `density` settings), then answer every photo;
    returns (guesses, unreadable).

    With `out`, answers are kept in its work folder as they come (see guess_photos_resumable).
    """
    from geoloc.candidates.geoclip import GeoClip
    from geoloc.images import find_photos
    from geoloc.predict import PhotoGuess, PlonkLocator, guess_photos, guess_photos_resumable, load_plonk_locator
    from geoloc.resumable import work_folder

    photos = find_photos(photos_or_folders)
    if not photos:
        raise FileNotFoundError("no photos found in " + ", ".join(map(str, photos_or_folders)))

    load = geoclip_loader(backbone, model, device) if plonk is None else None

    def load_geoclip() -> GeoClip | PlonkLocator:
        if plonk is not None:
            with console.status("loading PLONK", spinner="dots"):
                return load_plonk_locator(plonk, backbone, device, density)
        with console.status("loading GeoCLIP", spinner="dots"):
            return load()

    with progress_bar() as progress:
        task = progress.add_task("locating", total=len(photos))

        def advance(count: int) -> None:
            progress.advance(task, count)

        if out is None:
            answers = list(guess_photos(photos, load_geoclip(), top_k=top_k, batch_size=batch_size,
                                        on_progress=advance))
        else:
            settings = _settings(backbone, model, device) | (
                {"plonk": plonk, "density": vars(density)} if plonk is not None else {})
            answers = guess_photos_resumable(photos, load_geoclip, work_folder(out), settings,
                                             top_k, batch_size, part_photos, restart, resuming(out, advance),
                                             advance)
    guesses = [answer for answer in answers if isinstance(answer, PhotoGuess)]
    unreadable = [answer for answer in answers if not isinstance(answer, PhotoGuess)]
    for failure in unreadable:
        errors.print(f"[yellow]skipped[/] {failure.image}: {failure.reason}", highlight=False)
    return guesses, unreadable


def _settings(backbone: str | None, model: Path | None, device: str) -> dict:
    """What else makes a guess: the backbone, the release, the device kind, the code's versions."""
    from importlib.metadata import version

    import torch

    from geoloc.resumable import model_identity

    kind = ("cuda" if torch.cuda.is_available() else "cpu") if device == "auto" else torch.device(device).type
    return {"backbone": model_identity(backbone or DEFAULT_BACKBONE),
            "release": model_identity(model) if model is not None else None, "device": kind,
            "versions": {name: version(name) for name in ("geoloc", "geoclip", "torch", "transformers")}}


def plonk_or_release(model: str | None) -> tuple[str | None, Path | None]:
    """--model as (a PLONK checkpoint, given as plonk:ID_OR_DIR) or (a GeoCLIP release folder)."""
    if model is not None and model.startswith("plonk:"):
        return model.removeprefix("plonk:"), None
    return None, Path(model) if model is not None else None


def predict_command(
    photos: list[Path] = typer.Argument(..., help="Photos, or folders of photos (searched recursively)."),
    backbone: str | None = typer.Option(None, "--backbone", help=BACKBONE_HELP + " With PLONK: the backbone its "
                                        "checkpoint reads (plonk-dinov2 or plonk-streetclip, :FOLDER for a local "
                                        "copy) [default: the checkpoint's].", show_default=False),
    model: str | None = typer.Option(None, "--model", help=MODEL_HELP + " plonk:ID_OR_DIR for PLONK (a hub id such "
                                     "as nicolas-dufour/PLONK_YFCC, or a folder)."),
    top_k: int = typer.Option(5, "--top-k", min=1, help="Alternatives per photo."),
    as_json: bool = typer.Option(False, "--json", help="One JSON object per photo per line."),
    out: Path | None = typer.Option(None, "--out", help="Write the predictions: .csv or .parquet (the predictions "
                                    "schema), or .geojson (points with every detail)."),
    map_file: Path | None = typer.Option(None, "--map", help="Write a self-contained HTML map of the guesses."),
    truth: Path | None = typer.Option(None, "--truth", help="With --map: true locations (IMG_ID, LAT, LON or "
                                      "image_id, lat, lon), drawn as lines to the guesses coloured by error."),
    tiles: str | None = typer.Option(None, "--tiles", help="With --map: a tile URL template ({z}/{x}/{y}) drawn "
                                     "over the bundled outline. Off by default: the tile server sees the areas "
                                     "viewed."),
    batch_size: int = typer.Option(16, "--batch-size", min=1),
    device: str = typer.Option("auto", "--device", help="auto, cpu, cuda, cuda:1 ..."),
    part_photos: int = typer.Option(1000, "--part-photos", min=1, help="With --out: photos per part kept in "
                                    "OUT.parts/ as they finish, so a rerun answers only the missing ones."),
    restart: bool = typer.Option(False, "--restart", help="With --out: discard the parts a previous run left."),
    mass: float = typer.Option(0.9, "--mass", min=0.01, max=0.99, help="PLONK: the share of the probability its "
                               "confidence region holds."),
    samples: int = typer.Option(256, "--samples", min=2, help="PLONK: samples drawn per photo."),
    steps: int = typer.Option(250, "--steps", min=1, help="PLONK: sampler steps."),
    cfg: float = typer.Option(0.0, "--cfg", min=0.0, help="PLONK: classifier-free guidance scale (0: none; above, "
                              "the region no longer holds the stated share)."),
    seed: int = typer.Option(0, "--seed", help="PLONK: the noise's seed."),
    recipe: Path | None = typer.Option(None, "--recipe", help="A recipe (YAML: candidate sources, ranker, region; "
                                       "see docs/recipes.md): every photo through it, its models loaded once. "
                                       "--backbone, --top-k, --batch-size and --device are then the recipe's."),
) -> None:
    """Where was each photo taken: best guess, place, alternatives and a confidence radius (PLONK: also its
    likelihood, localizability and the region holding --mass of the probability)."""
    from geoloc.encode.backbone import BackboneUnavailable
    from geoloc.evaluate import load_truth
    from geoloc.maps import map_html
    from geoloc.plonk.density import DensitySettings
    from geoloc.plonk.model import PlonkUnavailable
    from geoloc.predict import predictions_table

    plonk, release = plonk_or_release(model)
    density = DensitySettings(samples=samples, steps=steps, cfg=cfg, seed=seed, mass=mass)
    with clean_errors(BackboneUnavailable, PlonkUnavailable):
        known = None
        if truth is not None:
            table = load_truth(truth)
            known = dict(zip(table["image_id"], zip(table["lat"], table["lon"])))
        if recipe is not None:
            from geoloc.cli.recipe import predict_recipe

            predict_recipe(recipe, photos, as_json, out, map_file, known, tiles, part_photos, restart)
            return
        guesses, unreadable = _guesses(photos, backbone, release, top_k, batch_size, device, out, part_photos,
                                       restart, plonk, density)
        write_answers(guesses, out, map_file, predictions_table, lambda: map_html(guesses, known, tiles))
    for guess in guesses:
        if as_json:
            typer.echo(json.dumps(guess.as_json()))
            continue
        exif = f"  (EXIF GPS: {guess.exif['lat']:.5f}, {guess.exif['lon']:.5f})" if guess.exif else ""
        plonk_figures = (f", log-likelihood {guess.log_likelihood:.2f}, localizability {guess.localizability:.3f}, "
                         f"{guess.region_mass:.0%} region {guess.region_km2:,.0f} km²"
                         if guess.log_likelihood is not None else "")
        console.print(f"[bold]{guess.image}[/]: {guess.place} ({guess.lat:.4f}, {guess.lon:.4f}), "
                      f"p={guess.candidates[0].prob:.3f}, within ~{guess.radius_km:,.0f} km{plonk_figures}{exif}",
                      highlight=False)
    if unreadable and not guesses:
        raise typer.Exit(code=1)


def geoclip_candidates_command(
    photos: list[Path] = typer.Argument(..., help="Photos, or folders of photos (searched recursively)."),
    out: Path = typer.Option(..., "--out", help="Candidates table (.parquet or .csv), source=geoclip."),
    backbone: str | None = typer.Option(None, "--backbone", help=BACKBONE_HELP, show_default=False),
    model: Path | None = typer.Option(None, "--model", help=MODEL_HELP),
    top_k: int = typer.Option(10, "--top-k", min=1),
    batch_size: int = typer.Option(16, "--batch-size", min=1),
    device: str = typer.Option("auto", "--device"),
) -> None:
    """GeoCLIP's top-k gallery locations as candidates for the ranker."""
    from geoloc.encode.backbone import BackboneUnavailable
    from geoloc.predict import geoclip_candidates

    with clean_errors(BackboneUnavailable):
        guesses, _ = _guesses(photos, backbone, model, top_k, batch_size, device)
        write_table(geoclip_candidates(guesses), out)
    console.print(f"{len(guesses)} photo(s), {len(guesses) * top_k} candidates -> {out}")


def register(app: typer.Typer, candidates_app: typer.Typer, panel: str) -> None:
    app.command("predict", rich_help_panel=panel)(predict_command)
    candidates_app.command("geoclip")(geoclip_candidates_command)
