"""`geoloc candidates`: zero-shot answers from a vision-language model, compile, report."""

from __future__ import annotations

from enum import Enum
from pathlib import Path

import typer
from rich.table import Table

from geoloc.cli.common import clean_errors, console, errors
from geoloc.cli.evaluate import Distance, accuracy_cells, accuracy_columns, format_metric
from geoloc.progress import progress_bar
from geoloc.tables import TableError, write_table


class ZeroShotPreset(str, Enum):
    georanker = "georanker"
    g3 = "g3"


class ImageDetail(str, Enum):
    low = "low"
    high = "high"
    auto = "auto"


app = typer.Typer(help="Candidate locations: ask a vision-language model, compile all sources, report.",
                  no_args_is_help=True)


@app.command("zeroshot")
def zeroshot_command(
    images: list[Path] = typer.Argument(..., help="Photos, or folders of photos (searched recursively)."),
    model: str = typer.Option(..., "--model", help="Model name as the endpoint knows it."),
    base_url: str = typer.Option(..., "--base-url", help="OpenAI-compatible API root, e.g. http://127.0.0.1:8000/v1"),
    out: Path = typer.Option(..., "--out", help="Answers table (.parquet or .csv)."),
    preset: ZeroShotPreset | None = typer.Option(None, "--preset", help="A published request: georanker = g3 = "
                                                 "GeoRanker's (and G3's) prompt, temperature 1.2, 10 answers in one "
                                                 "request (n=10), max 200 tokens, image detail low; g3 is the default "
                                                 "with --rag. Flags given override it."),
    rag: list[int] = typer.Option([], "--rag", min=0, help="G3's geo-diversified prompt naming the first K "
                                  "retrieval and K reverse neighbours of --neighbours; repeatable (G3: 5, 10, 15), "
                                  "0 = the plain prompt in the same run."),
    neighbours: Path | None = typer.Option(None, "--neighbours", help="Candidates table with the photos' retrieval "
                                           "and reverse rows (`geoloc retrieve --k 20 --reverse 20`), for --rag."),
    samples: int | None = typer.Option(None, "--samples", min=1, help="Answers asked per photo [default: 5]."),
    answers_per_request: int | None = typer.Option(None, "--answers-per-request", min=1, help="Answers asked in one "
                                                   "request (the API's n) [default: 1]."),
    temperature: float | None = typer.Option(None, "--temperature", min=0.0, help="Sampling temperature (above 0 "
                                             "for varied samples) [default: 0.7]."),
    max_tokens: int | None = typer.Option(None, "--max-tokens", min=1, help="Longest answer the model may give, "
                                          "in tokens [default: 200]."),
    detail: ImageDetail | None = typer.Option(None, "--detail", help="Image detail level to ask for [default: "
                                              "the endpoint's]."),
    concurrency: int = typer.Option(8, "--concurrency", min=1, help="Requests in flight at once."),
    max_retries: int = typer.Option(6, "--max-retries", min=0, help="Retries per request on 429, 5xx, time-outs."),
    timeout: float = typer.Option(60.0, "--timeout", help="Seconds before a request times out."),
    cache: Path | None = typer.Option(None, "--cache", help="Answer cache (SQLite). Default: "
                                      "$XDG_CACHE_HOME/geoloc/zeroshot.sqlite."),
    allow_http: bool = typer.Option(False, "--allow-http", help="Allow a plain http --base-url beyond this "
                                    "machine (photos and key then cross the network unencrypted)."),
) -> None:
    """Ask the model for each photo's coordinates.

    The key comes from GEOLOC_API_KEY, or from OPENAI_API_KEY for OpenAI's own API only; an endpoint
    without GEOLOC_API_KEY set gets no key.
    """
    from geoloc.candidates.zeroshot import (
        Neighbours,
        ZeroShotError,
        ask_zeroshot,
        default_cache_path,
        zeroshot_settings,
    )
    from geoloc.images import find_photos
    from geoloc.tables import read_table

    ks = sorted(set(rag)) or [0]
    if ks[-1] > 0 and neighbours is None:
        raise typer.BadParameter("--rag K above 0 names neighbours: give their table with --neighbours",
                                 param_hint="--rag")
    if neighbours is not None and ks[-1] == 0:
        raise typer.BadParameter("--neighbours is for G3's prompt: give --rag K (G3: 5, 10, 15)",
                                 param_hint="--neighbours")
    given = {"samples": samples, "answers_per_request": answers_per_request, "temperature": temperature,
             "max_tokens": max_tokens, "detail": detail.value if detail else None}
    settings = zeroshot_settings(model, base_url, preset.value if preset else None, ks, given,
                                 concurrency=concurrency, max_retries=max_retries, timeout_s=timeout,
                                 allow_http=allow_http)
    with clean_errors(ZeroShotError):
        near = Neighbours(read_table(neighbours), neighbours, ks[-1]) if neighbours is not None else None
        photos = find_photos(images)
        with progress_bar() as progress:
            task = progress.add_task("asking", total=len(photos) * settings.samples * len(ks))
            result = ask_zeroshot(photos, settings, cache or default_cache_path(),
                                  on_progress=lambda done: progress.advance(task, done), rag=ks, neighbours=near)
        write_table(result.table, out)
    table = result.table
    if near is not None:
        _warn_about_neighbours(table, neighbours)
    usable = table["lat"].is_not_null().sum()
    console.print(f"{len(photos)} photo(s), {len(table)} answer(s): {usable} with coordinates, "
                  f"{len(table) - usable} without (see the error column); {result.requests} request(s) sent, "
                  f"the rest from the cache -> {out}")


def _warn_about_neighbours(table, neighbours: Path) -> None:
    """Say which photos the neighbours table does not know, and which prompts named fewer than K."""
    import polars as pl

    from geoloc.candidates.zeroshot import NO_NEIGHBOURS
    from geoloc.tables import describe_ids

    unknown = table.filter(pl.col("error") == NO_NEIGHBOURS)["query_id"].unique(maintain_order=True)
    if len(unknown):
        errors.print(f"[yellow]warning:[/] {len(unknown)} photo(s) have no retrieval or reverse candidates in "
                     f"{neighbours} ({describe_ids(unknown)}): their RAG rows hold no answer, the reason is in "
                     "error, no request was sent", highlight=False, soft_wrap=True)
    short = table.filter((pl.col("rag") > 0) & (pl.col("error").is_null() | (pl.col("error") != NO_NEIGHBOURS))
                         & ((pl.col("rag_retrieval") < pl.col("rag")) | (pl.col("rag_reverse") < pl.col("rag"))))
    short = short.unique(["query_id", "rag"], maintain_order=True)
    if len(short):
        first = short.row(0, named=True)
        errors.print(f"[yellow]warning:[/] {len(short)} prompt(s) name fewer neighbours than their K, as many as "
                     f"{neighbours} has (e.g. {first['query_id']!r} at K={first['rag']}: {first['rag_retrieval']} "
                     f"retrieval, {first['rag_reverse']} reverse); the rag_retrieval and rag_reverse columns say "
                     "how many", highlight=False, soft_wrap=True)


@app.command("compile")
def compile_command(
    out: Path = typer.Option(..., "--out", help="Candidates table (.parquet or .csv)."),
    candidates: list[Path] = typer.Option([], "--candidates", help="A table already in the candidates schema "
                                          "(retrieval and reverse, geoclip, classifier); repeatable."),
    zeroshot: list[Path] = typer.Option([], "--zeroshot", help="Answers from `geoloc candidates zeroshot`; "
                                        "repeatable: every run's answers (plain and --rag K) become one zeroshot "
                                        "source, ranked by (rag, sample)."),
    g3_index: Path | None = typer.Option(None, "--g3-index", help="G3's I.npy: per query, rows of the gallery CSV."),
    g3_gallery: Path | None = typer.Option(None, "--g3-gallery", help="MP16-Pro metadata CSV (IMG_ID, LAT, LON, "
                                           "place columns)."),
    g3_queries: Path | None = typer.Option(None, "--g3-queries", help="The benchmark metadata, in I.npy's order."),
    g3_top_k: int | None = typer.Option(None, "--g3-top-k", min=1, help="Keep only the first K neighbours."),
    georanker: list[Path] = typer.Option([], "--georanker", help="GeoRanker's compiled candidate CSV "
                                         "(im2gps3k.csv, yfcc4k.csv): its retrieval and zero-shot candidates; "
                                         "repeatable."),
    drop_failed_zeroshot: bool = typer.Option(False, "--drop-failed-zeroshot", help="Leave out the (0, 0) "
                                              "answers of --georanker files (kept by default: GeoRanker scored "
                                              "them)."),
) -> None:
    """Merge every source into one candidates table with place texts."""
    from geoloc.candidates.compile import G3Retrieval, compile_candidates

    g3_parts = (g3_index, g3_gallery, g3_queries)
    with clean_errors():
        if any(g3_parts) and not all(g3_parts):
            raise TableError("G3 retrieval needs all of --g3-index, --g3-gallery and --g3-queries")
        g3 = G3Retrieval(g3_index, g3_gallery, g3_queries, g3_top_k) if all(g3_parts) else None
        table, summary = compile_candidates(candidates, zeroshot, g3, georanker, drop_failed_zeroshot)
        write_table(table, out)
    counts = ", ".join(f"{source}: {n}" for source, n in summary.candidates_per_source.items())
    console.print(f"{table['query_id'].n_unique()} queries, {len(table)} candidates ({counts}) -> {out}")
    if summary.zeroshot_unusable:
        console.print(f"{summary.zeroshot_unusable} zero-shot answer(s) had no usable coordinates and were left out")
    if summary.georanker_failed_zeroshot:
        fate = ("left out" if summary.georanker_failed_dropped
                else "kept, as GeoRanker scored them (--drop-failed-zeroshot leaves them out)")
        console.print(f"{summary.georanker_failed_zeroshot} zero-shot answer(s) in the GeoRanker file(s) are (0, 0), "
                      f"GeoRanker's mark of a failed answer: {fate}")


@app.command("report")
def report_command(
    candidates: Path = typer.Argument(..., help="Candidates table."),
    truth: Path = typer.Option(..., "--truth", help="Benchmark metadata (IMG_ID, LAT, LON) or image_id, lat, lon."),
    distance: Distance = typer.Option(Distance.great_circle, "--distance"),
    inclusive: bool = typer.Option(False, "--inclusive", help="Count a photo at a radius when its error is at most "
                                   "the radius (<=, GeoCLIP's rule) rather than below it (<)."),
) -> None:
    """Accuracy per source if the first candidate were taken, and if the best one were (the ceiling)."""
    from geoloc.candidates import conform_candidates
    from geoloc.candidates.report import candidate_report
    from geoloc.evaluate import load_truth
    from geoloc.tables import read_table

    with clean_errors():
        table = conform_candidates(read_table(candidates), candidates)
        report = candidate_report(table, load_truth(truth), method=distance.value, inclusive=inclusive)
    rule = "<=" if inclusive else "<"
    view = Table(title=f"Candidates against the truth ({distance.value} distance, error {rule} radius)")
    for column in ("source", "pick", "per photo", "no candidate"):
        view.add_column(column, justify="left" if column in ("source", "pick") else "right")
    accuracy_columns(view)
    for row in report.iter_rows(named=True):
        cells = [row["source"], row["pick"], f"{row['candidates_per_photo']:.1f}",
                 format_metric("missing", row["missing"])]
        view.add_row(*cells, *accuracy_cells(row))
    console.print(view)


def register(root: typer.Typer, panel: str) -> None:
    root.add_typer(app, name="candidates", rich_help_panel=panel)
