"""`geoloc ranker`: train GeoRanker's reward model and score candidates with it."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import typer

from geoloc.cli.common import clean_errors, console, errors
from geoloc.progress import progress_callback

if TYPE_CHECKING:
    from geoloc.rank.ranking import RankingReport

ranker_app = typer.Typer(
    help="GeoRanker: a vision-language reward model that ranks candidate locations.", no_args_is_help=True
)


def _parse_top(values: list[str]) -> dict[str, int]:
    top = {}
    for value in values:
        source, _, count = value.partition("=")
        if not source or not count.isdigit():
            raise typer.BadParameter(f"{value!r}: expected SOURCE=COUNT, e.g. retrieval=10")
        top[source] = int(count)
    return top


GEORANKER = "GeoRanker (--adapter is a LoRA adapter folder)"
LIGHT = "Light ranker (--adapter holds light_ranker.json)"


@ranker_app.command("score")
def score_command(
    candidates: Path = typer.Option(..., "--candidates", help="Candidates table (Parquet or CSV)."),
    images: Path | None = typer.Option(None, "--images", help="Folder or uncompressed .tar of the query "
                                       "photos; a query_id is a path in it.", rich_help_panel=GEORANKER),
    images_index: Path | None = typer.Option(None, "--images-index", help="Offset index of an --images tar: "
                                             "tar_index.pkl, or a .parquet (written on first use).",
                                             rich_help_panel=GEORANKER),
    adapter: Path = typer.Option(..., "--adapter", help="Adapter folder (ours or the published GeoRanker one), or "
                                 "a light ranker folder (with light_ranker.json)."),
    out: Path = typer.Option(..., "--out", help="Predictions file to write (Parquet or CSV)."),
    base: str | None = typer.Option(None, "--base", help="Base model: hub id or local folder (default: the "
                                    "adapter's own).", rich_help_panel=GEORANKER),
    gallery: Path | None = typer.Option(None, "--gallery", help="Folder or .tar of the gallery photos named by "
                                        "ref_uri (default: --images).", rich_help_panel=GEORANKER),
    gallery_index: Path | None = typer.Option(None, "--gallery-index", help="Offset index of a --gallery tar.",
                                              rich_help_panel=GEORANKER),
    top: list[str] = typer.Option(["retrieval=10", "zeroshot=5"], "--top", help="SOURCE=COUNT: score the COUNT "
                                  "best-ranked candidates of SOURCE (repeatable); other sources in full."),
    negatives: int = typer.Option(5, "--negatives", help="Worst-ranked retrieval candidates named as negatives.",
                                  rich_help_panel=GEORANKER),
    batch_size: int = typer.Option(8, "--batch-size", min=1, help="Prompts per forward pass.",
                                   rich_help_panel=GEORANKER),
    plain: bool = typer.Option(False, "--plain", help="Every prompt through the whole model, as GeoRanker does.",
                               rich_help_panel=GEORANKER),
    raw_photos: bool = typer.Option(False, "--raw-photos", help="Hand the processor the decoded photos as they "
                                    "are, instead of as GeoRanker's evaluate.py prepares them (gallery photos "
                                    "re-encoded as JPEG, every photo sized by qwen-vl-utils).",
                                    rich_help_panel=GEORANKER),
    dtype: str = typer.Option("float32", "--dtype", help="float32, bfloat16 or float16.", rich_help_panel=GEORANKER),
    device: str | None = typer.Option(None, "--device", help="cpu, cuda, cuda:1 ... (default: cuda if any; "
                                      "under a launcher, the process's own GPU).", rich_help_panel=GEORANKER),
    part_queries: int = typer.Option(64, "--part-queries", min=1, help="Queries per part kept in OUT.parts/ as "
                                     "they finish: a rerun scores only missing parts.", rich_help_panel=GEORANKER),
    restart: bool = typer.Option(False, "--restart", help="Discard the parts a previous run left in OUT.parts/.",
                                 rich_help_panel=GEORANKER),
    query_embeddings: Path | None = typer.Option(None, "--query-embeddings", help="Embeddings of the query photos"
                                                 ", image_id = query_id.", rich_help_panel=LIGHT),
    gallery_embeddings: Path | None = typer.Option(None, "--gallery-embeddings", help="Embeddings of "
                                                   "the gallery photos, image_id = ref_uri (or see --gallery-table).",
                                                   rich_help_panel=LIGHT),
    gallery_table: Path | None = typer.Option(None, "--gallery-table", help="A `geoloc index build` "
                                              "folder whose gallery.parquet maps ref_uri (uri) to image_id.",
                                              rich_help_panel=LIGHT),
    text_embeddings: Path | None = typer.Option(None, "--text-embeddings", help="Place-text "
                                                "embeddings, image_id = the candidate's text.", rich_help_panel=LIGHT),
) -> None:
    """Score every query's candidates and write the best one per query as predictions.

    With a GeoRanker adapter the photos are read (--images, --gallery); with a light ranker
    folder their embeddings are (--query-embeddings, --gallery-embeddings, --text-embeddings).
    """
    from geoloc.rank.light import is_light_ranker
    from geoloc.rank.model import ModelLoadError
    from geoloc.rank.ranking import score_file

    if is_light_ranker(adapter):
        _score_light(candidates, adapter, out, _parse_top(top), query_embeddings, gallery_embeddings, gallery_table,
                     text_embeddings)
        return
    if images is None:
        raise typer.BadParameter("--images is required to score with a GeoRanker adapter", param_hint="--images")
    with clean_errors(ModelLoadError), \
            progress_callback("scoring queries") as progress:
        report = score_file(
            candidates, out, images=images, adapter=adapter, base=base, gallery=gallery, images_index=images_index,
            gallery_index=gallery_index, top=_parse_top(top),
            num_negatives=negatives, batch_size=batch_size, shared_prefix=not plain, dtype=dtype, device=device,
            raw_photos=raw_photos, part_queries=part_queries, restart=restart, progress=progress,
            say=lambda line: errors.print(line, highlight=False),
        )
    _print_ranking_report(report, out)


def _print_ranking_report(report: RankingReport, out: Path) -> None:
    """What `geoloc ranker score` did: predictions written, or parts left to other processes; what was skipped."""
    from geoloc.resumable import work_folder

    if not report.written:
        left = (f"{report.pending_parts} part(s) still with other processes; the last to finish writes {out}"
                if report.pending_parts else f"another process writes {out}")
        console.print(f"this process's parts are done in {work_folder(out)}; {left}", highlight=False)
        return
    console.print(f"{report.predicted} of {report.queries} queries predicted -> {out}")
    if report.unreadable_queries:
        shown = ", ".join(repr(query) for query, _ in report.unreadable_queries[:5])
        errors.print(f"[yellow]warning:[/] {len(report.unreadable_queries)} query photo(s) unreadable, no prediction: "
                     f"{shown}", highlight=False)
    if report.dropped_candidates:
        errors.print(f"[yellow]warning:[/] {report.dropped_candidates} candidate(s) dropped: gallery photo unreadable",
                     highlight=False)


def _score_light(candidates: Path, adapter: Path, out: Path, top: dict[str, int], query_embeddings: Path | None,
                 gallery_embeddings: Path | None, gallery_table: Path | None, text_embeddings: Path | None) -> None:
    from geoloc.rank.light import Lookups, score_light_file

    if query_embeddings is None:
        raise typer.BadParameter("a light ranker scores from embeddings: pass --query-embeddings",
                                 param_hint="--query-embeddings")
    lookups = Lookups(query_embeddings, gallery_embeddings, gallery_table, text_embeddings)
    with clean_errors(), \
            progress_callback("scoring") as progress:
        predicted = score_light_file(candidates, out, adapter, lookups, top, progress=progress)
    console.print(f"{predicted} queries predicted -> {out}")


@ranker_app.command("train")
def train_command(
    config: Path = typer.Option(..., "--config", help="Training settings (YAML); see examples/ranker.yaml, or "
                                "examples/light_ranker.yaml with --light."),
    light: bool = typer.Option(False, "--light", help="Train the light ranker (embeddings, CPU) instead of "
                               "GeoRanker's reward model."),
) -> None:
    """Train the reward model's LoRA adapter and value head on GeoRanking data, or the light ranker."""
    if light:
        _train_light(config)
        return
    from geoloc.rank.model import ModelLoadError
    from geoloc.rank.training import TrainConfig, train

    with clean_errors(ModelLoadError):
        result = train(TrainConfig.from_yaml(config), say=lambda line: console.print(line, highlight=False))
    if not result.main_process:  # one report per run, not one per GPU
        return
    console.print(f"trained on {result.rows} queries -> {result.adapter}")
    if result.too_short_rows:
        errors.print(f"[yellow]warning:[/] {result.too_short_rows} row(s) skipped: fewer references than a group "
                     "and its negatives need", highlight=False)


def _train_light(config: Path) -> None:
    from geoloc.rank.light import LightTrainConfig, train_light_ranker

    with clean_errors(), \
            progress_callback("training") as progress:
        settings = LightTrainConfig.from_yaml(config)
        result = train_light_ranker(settings, say=lambda line: errors.print(line, highlight=False), progress=progress)
    console.print(f"trained on {result.queries} queries -> {settings.output}")
    if result.short_groups:
        errors.print(f"[yellow]warning:[/] {result.short_groups} quer(ies) skipped: fewer candidates than "
                     "group_size", highlight=False)


def register(app: typer.Typer, panel: str) -> None:
    app.add_typer(ranker_app, name="ranker", rich_help_panel=panel)
