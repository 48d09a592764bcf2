"""`geoloc predict --recipe`: every photo through a recipe's sources and ranker in one process."""

from __future__ import annotations

import json
from pathlib import Path

import typer

from geoloc.cli.common import clean_errors, console, errors
from geoloc.progress import progress_bar
from geoloc.tables import write_table, write_text


def recipe_settings(recipe) -> dict:
    """What makes an answer: the recipe's settings, the models it names, the code's versions."""
    from importlib.metadata import version

    from geoloc.resumable import model_identity

    settings = recipe.model_dump(mode="json", exclude={"path"})
    named = {key: model_identity(value) for key, value in _named_models(settings)}
    return {"recipe": settings, "models": named,
            "versions": {name: version(name) for name in ("geoloc", "torch", "transformers")}}


def _named_models(values, prefix: str = ""):
    """(dotted setting, value) of every model, index or backbone the recipe names."""
    for key, value in values.items():
        if isinstance(value, dict):
            yield from _named_models(value, f"{prefix}{key}.")
        elif key in ("backbone", "base", "model", "adapter", "index") and isinstance(value, str) and "://" not in value:
            yield prefix + key, value


def recipe_answers(recipe_path: Path, photos_or_folders: list[Path], out: Path | None, part_photos: int,
                   restart: bool) -> tuple[list, list]:
    """(answers, unreadable) for every photo, resumable through `out`'s work folder."""
    from geoloc.images import find_photos
    from geoloc.predict import answer_in_parts
    from geoloc.recipe import load_recipe
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
            def on_start(done: int) -> None:
                if done:
                    errors.print(f"resuming: {done} photo(s) already answered in {work_folder(out)}", highlight=False)
                    advance(done)

            frames = answer_in_parts(photos, lambda part: answers_table(answer_part(part)), work_folder(out),
                                     recipe_settings(recipe), part_photos, restart, on_start)
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
    from geoloc.maps import recipe_map_html
    from geoloc.rank.model import ModelLoadError
    from geoloc.recipe.engine import predictions_table
    from geoloc.resumable import remove_work_folder, work_folder

    with clean_errors(ZeroShotError, ModelLoadError):
        answers, unreadable = recipe_answers(recipe_path, photos, out, part_photos, restart)
    if out is not None and out.suffix.lower() == ".geojson":
        write_text(out, json.dumps(answers_geojson(answers)))
    elif out is not None:
        write_table(predictions_table(answers), out)
    if out is not None:
        remove_work_folder(work_folder(out))
    if map_file is not None:
        write_text(map_file, recipe_map_html(answers, known, tiles))
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


def answers_geojson(answers: list) -> dict:
    """A GeoJSON FeatureCollection: a Point per photo at its answer, every detail in its properties."""
    return {"type": "FeatureCollection", "features": [
        {"type": "Feature", "geometry": {"type": "Point", "coordinates": [answer.lon, answer.lat]},
         "properties": {"image_id": answer.image_id,
                        **{key: value for key, value in answer.as_json().items() if key not in ("lat", "lon")}}}
        for answer in answers]}
