"""`geoloc serve`: the web app."""

from __future__ import annotations

import os
from pathlib import Path

import typer

from geoloc.cli.common import clean_errors, errors
from geoloc.cli.predict import BACKBONE_HELP, MODEL_HELP, geoclip_loader, plonk_or_release


def serve_command(
    host: str = typer.Option("127.0.0.1", "--host", help="Address to bind; beyond loopback a token is required."),
    port: int = typer.Option(8000, "--port"),
    backbone: str | None = typer.Option(None, "--backbone", help=BACKBONE_HELP + " With PLONK: the backbone its "
                                        "checkpoint reads [default: the checkpoint's].", show_default=False),
    model: str | None = typer.Option(None, "--model", help=MODEL_HELP + " plonk:ID_OR_DIR for PLONK."),
    token: str | None = typer.Option(None, "--token", envvar="GEOLOC_TOKEN", show_envvar=True,
                                     help="Require this bearer token on every API call (prefer GEOLOC_TOKEN: "
                                     "command lines are visible to other users)."),
    insecure: bool = typer.Option(False, "--insecure", help="Allow binding beyond loopback without a token."),
    allowed_host: list[str] = typer.Option([], "--allowed-host", help="A name or address the server answers to "
                                           "besides the loopback ones and --host (repeatable): requests naming "
                                           "another host in Host or Origin are refused (cross-site posts, DNS "
                                           "rebinding)."),
    top_k: int = typer.Option(5, "--top-k", min=1),
    max_upload_mb: float = typer.Option(20.0, "--max-upload-mb", min=0.1),
    max_pixels: int = typer.Option(50_000_000, "--max-pixels", min=1),
    max_queue: int = typer.Option(8, "--max-queue", min=1, help="Received photos waiting for the model at once; "
                                  "beyond, 503."),
    max_uploads: int = typer.Option(32, "--max-uploads", min=1, help="Uploads being received at once; beyond, 503."),
    upload_timeout: float = typer.Option(30.0, "--upload-timeout", min=0.1, help="Seconds an upload may take "
                                         "to arrive whole; beyond, 408 and its upload slot is freed."),
    tiles: str = typer.Option("https://tile.openstreetmap.org/{z}/{x}/{y}.png", "--tiles",
                              help="Tile URL template for the page's map, or 'none' for the bundled outline only "
                              "(tile servers see which areas are viewed)."),
    device: str = typer.Option("auto", "--device"),
    recipe: Path | None = typer.Option(None, "--recipe", help="Answer through a recipe (see docs/recipes.md): "
                                       "every source's candidates and the ranked answer; --backbone, --top-k and "
                                       "--device are then the recipe's."),
) -> None:
    """Serve the page and the API: drop a photo, see where it was taken."""
    import uvicorn

    from geoloc.network import is_loopback
    from geoloc.serve import ServeSettings, create_app

    if not is_loopback(host) and not token and not insecure:
        errors.print(f"[bold red]error:[/] refusing to serve on {host} without a token: anyone who can reach it "
                     "could use it. Set GEOLOC_TOKEN (or --token), or pass --insecure if you mean it.")
        raise typer.Exit(code=2)
    settings = ServeSettings(max_upload_bytes=int(max_upload_mb * 2**20), max_pixels=max_pixels,
                             max_queue=max_queue, max_uploads=max_uploads, upload_timeout_s=upload_timeout,
                             token=token or None, allowed_hosts=(*allowed_host, *_bound_name(host)),
                             tiles=None if tiles.lower() == "none" else tiles)
    if recipe is not None:
        settings, load_guesser = _recipe_guesser(recipe, settings)
        os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
        uvicorn.run(create_app(load_guesser, settings), host=host, port=port, log_level="info")
        return

    plonk, release = plonk_or_release(model)
    with clean_errors():  # a --model that is not a release
        load_geoclip = geoclip_loader(backbone, release, device) if plonk is None else None

    def load_guesser():
        from geoloc.plonk.density import DensitySettings
        from geoloc.predict import guess_images, load_plonk_locator

        if plonk is not None:
            predictor = load_plonk_locator(plonk, backbone, device, DensitySettings(samples=256))
        else:
            predictor = load_geoclip()
        return lambda photos: guess_images(photos, predictor, top_k)

    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    uvicorn.run(create_app(load_guesser, settings), host=host, port=port, log_level="info")


def _recipe_guesser(recipe_path: Path, settings):
    """The app's settings naming the recipe's sources and endpoints, and a loader of its engine."""
    import dataclasses

    from geoloc.recipe import RecipeError, load_recipe

    with clean_errors(RecipeError):
        recipe = load_recipe(recipe_path)
    endpoints = (recipe.sources.zeroshot.base_url,) if recipe.sources.zeroshot is not None else ()
    settings = dataclasses.replace(settings, sources=tuple(recipe.source_names()), photo_leaves_for=endpoints)

    def load_guesser():
        from geoloc.recipe.engine import RecipeEngine, engine_guesser

        engine = RecipeEngine(recipe, write_nothing=True)
        engine.load()
        return engine_guesser(engine)

    return settings, load_guesser


def _bound_name(host: str) -> tuple[str, ...]:
    """The address bound, as a name clients may use; none for a wildcard (0.0.0.0, ::), which is no name."""
    return () if host in ("0.0.0.0", "::", "") else (host,)


def register(app: typer.Typer, panel: str) -> None:
    app.command("serve", rich_help_panel=panel)(serve_command)
