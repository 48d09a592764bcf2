"""`geoloc predict --recipe`: every photo through a recipe's sources and ranker in one process."""

from __future__ import annotations

import json
from pathlib import Path

import typer

from geoloc.cli.common import clean_errors, console, errors
from geoloc.progress import progress_bar
from geoloc.tables import write_table, write_text


def recipe_answers(recipe_path: Path, photos_or_folders: list[Path], out: Path | None, part_photos: int,
                   restart: bool) -> tuple[list, list]:
    """(answers, unreadable) for every photo, resumable through `out`'s work folder."""
    from geoloc.cli.outputs import resuming
    from geoloc.images import find_photos
    from geoloc.predict import answer_in_parts
    from geoloc.recipe import load_recipe, recipe_identity
    from geoloc.recipe.engine import RecipeAnswer, RecipeEngine, answers_from_table, answers_table
    from geoloc.resumable import work_folder

    recipe = load_recipe(recipe_path)
    photos = find_photos(photos_or_folders)
    if not photos:
        raise FileNotFoundError("no photos found in " + ", ".join(map(str, photos_or_folders)))
    engine = RecipeEngine(recipe)
    with progress_bar() as progress:
        task = progress.add_task("locating", total=len(photos))

        def advance(count: int) -> None:
            progress.advance(task, count)

        def answer_part(part) -> object:
            found = []
            for start in range(0, len(part), recipe.batch_size):
                found += engine.answer(part[start:start + recipe.batch_size], advance)
            return found

        if out is None:
            answers = answer_part(photos)
        else:
            frames = answer_in_parts(photos, lambda part: answers_table(answer_part(part)), work_folder(out),
                                     recipe_identity(recipe), part_photos, restart, resuming(out, advance))
            answers = [answer for frame in frames for answer in answers_from_table(frame)]
    found = [answer for answer in answers if isinstance(answer, RecipeAnswer)]
    unreadable = [answer for answer in answers if not isinstance(answer, RecipeAnswer)]
    for failure in unreadable:
        errors.print(f"[yellow]skipped[/] {failure.image}: {failure.reason}", highlight=False)
    return found, unreadable


def predict_recipe(recipe_path: Path, photos: list[Path], as_json: bool, out: Path | None, map_file: Path | None,
                   known: dict | None, tiles: str | None, part_photos: int, restart: bool) -> None:
    """`geoloc predict --recipe`: answers printed, written to `out` and drawn on `map_file`."""
    from geoloc.candidates.zeroshot import ZeroShotError
    from geoloc.cli.outputs import write_answers
    from geoloc.maps import recipe_map_html
    from geoloc.rank.model import ModelLoadError
    from geoloc.recipe.engine import predictions_table

    with clean_errors(ZeroShotError, ModelLoadError):
        answers, unreadable = recipe_answers(recipe_path, photos, out, part_photos, restart)
    write_answers(answers, out, map_file, predictions_table, lambda: recipe_map_html(answers, known, tiles))
    for answer in answers:
        if as_json:
            typer.echo(json.dumps(answer.as_json()))
            continue
        sources = sorted({candidate.source for candidate in answer.candidates})
        console.print(f"[bold]{answer.image}[/]: {answer.place} ({answer.lat:.4f}, {answer.lon:.4f}) from "
                      f"{answer.source}, within ~{answer.radius_km:,.0f} km; {len(answer.candidates)} candidates "
                      f"({', '.join(sources)})", highlight=False)
    if unreadable and not answers:
        raise typer.Exit(code=1)


def run_command(
    recipe: Path = typer.Argument(..., help="The recipe (YAML)."),
    photos: list[Path] = typer.Option(..., "--photos", help="Photos, or folders of photos (searched recursively)."),
    truth: Path | None = typer.Option(None, "--truth", help="True locations (IMG_ID, LAT, LON or image_id, lat, "
                                      "lon): the predictions are evaluated against them."),
    work: Path | None = typer.Option(None, "--work", help="Where each stage's table is kept, named by the "
                                     "settings that made it [default: RECIPE.work/ beside the recipe]."),
    out: Path | None = typer.Option(None, "--out", help="Predictions file [default: WORK/predictions.parquet]."),
) -> None:
    """A recipe over many photos, for a benchmark: each stage's table kept, a rerun redoes only what changed."""
    from geoloc.candidates.zeroshot import ZeroShotError
    from geoloc.encode.backbone import BackboneUnavailable
    from geoloc.evaluate import evaluate_files
    from geoloc.images import find_photos
    from geoloc.rank.model import ModelLoadError
    from geoloc.recipe import RecipeError, load_recipe
    from geoloc.recipe.batch import run_recipe
    from geoloc.tables import TableError

    with clean_errors(RecipeError, ZeroShotError, ModelLoadError, BackboneUnavailable, FileNotFoundError,
                      TableError, ValueError):
        loaded = load_recipe(recipe)
        work = work or recipe.with_suffix(".work")
        out = out or work / "predictions.parquet"
        found = find_photos(photos)
        if not found:
            raise FileNotFoundError("no photos found in " + ", ".join(map(str, photos)))
        with console.status(f"running {recipe.name} over {len(found)} photo(s)", spinner="dots"):
            report = run_recipe(loaded, found, work)
        write_table(report.predictions.select("image_id", "lat", "lon", "score"), out)
        console.print(f"ran: {', '.join(report.ran) or 'nothing'}; reused: {', '.join(report.reused) or 'nothing'} "
                      f"(in {work})", highlight=False)
        console.print(f"{report.predictions.height} of {len(found)} photo(s) predicted -> {out}", highlight=False)
        if truth is not None:
            evaluation = evaluate_files(out, truth)
            write_text(out.with_suffix(".evaluation.json"), json.dumps(evaluation.metrics, indent=2))
            typer.echo(json.dumps(evaluation.metrics))


def register(app: typer.Typer, panel: str) -> None:
    app.command("run", rich_help_panel=panel)(run_command)
