"""`geoloc embed`, `geoloc index build` and `geoloc retrieve`: the searchable gallery and its candidates."""

from __future__ import annotations

import functools
from pathlib import Path

import typer

from geoloc.cli.common import clean_errors, console, errors
from geoloc.progress import progress_bar
from geoloc.tables import read_table, write_table

index_app = typer.Typer(help="The searchable gallery (FAISS) with its coordinates and place texts.",
                        no_args_is_help=True)

BACKBONE_HELP = ("CLIP or any Hugging Face vision model (a hub id or a local folder), or g3:PATH for G3's geo-aligned "
                 "encoder (its g3.pth or a safetensors copy).")
CLIP_HELP = ("g3 backbone: the CLIP model whose configuration and image processor G3 uses, a hub id or a local "
             "folder (default openai/clip-vit-large-patch14).")


def _backbone_name(backbone: str, clip: str | None) -> str:
    """The name a backbone is recorded and reloaded under (G3's: absolute path and its CLIP)."""
    from geoloc.encode.g3 import g3_spec, is_g3

    if is_g3(backbone):
        return g3_spec(backbone, clip)
    if clip is not None:
        raise typer.BadParameter("goes with --backbone g3:PATH only", param_hint="--clip")
    return backbone


def embed_command(
    catalog: Path = typer.Option(..., "--catalog", help="Folder written by `geoloc catalog build`."),
    out: Path = typer.Option(..., "--out", help="Embeddings folder (resumable: run again to finish)."),
    backbone: str = typer.Option("openai/clip-vit-large-patch14", "--backbone", help=BACKBONE_HELP),
    clip: str | None = typer.Option(None, "--clip", help=CLIP_HELP),
    batch_size: int = typer.Option(64, "--batch-size", min=1, help="Photos per forward pass."),
    workers: int = typer.Option(2, "--workers", min=0, help="local engine: DataLoader processes reading and "
                                "decoding photos."),
    chunk_rows: int = typer.Option(50_000, "--chunk-rows", min=1, help="Photos per part file (resume unit)."),
    device: str = typer.Option("auto", "--device", help="auto, cpu, cuda, cuda:1 ..."),
    dtype: str = typer.Option("auto", "--dtype", help="auto (fp32 on CPU, bf16/fp16 on GPU), float32, float16, "
                              "bfloat16."),
    engine: str = typer.Option("local", "--engine", help="local (this machine) or ray (CPU tasks decode, GPU actors "
                               "embed; pip install 'geoloc\\[ray]')."),
    ray_address: str | None = typer.Option(None, "--ray-address", help="ray engine: the cluster (auto, "
                                           "ray://HEAD:10001); default: start a local Ray."),
    actors: int = typer.Option(1, "--actors", min=1, help="ray engine: embedding actors, each holding the model."),
    gpus_per_actor: float | None = typer.Option(None, "--gpus-per-actor", min=0, help="ray engine: GPUs per actor "
                                                "(default: 1 if the cluster has GPUs, else 0)."),
    features: str = typer.Option("normalized", "--features", help="normalized (retrieval, index, classifier), raw "
                                 "(the backbone's raw features), raw-geoclip-train (raw CLIP features through "
                                 "GeoCLIP's training preprocessing: what `geoloc geoclip train` reads)."),
    views: int = typer.Option(1, "--views", min=1, help="With --features raw-geoclip-train: K randomly augmented "
                              "views per photo (GeoCLIP's train transform); training uses one per epoch."),
) -> None:
    """Embed every photo of the catalog with a frozen backbone."""
    from geoloc.cluster import ClusterError, check_engine
    from geoloc.embeddings import EmbeddingsError
    from geoloc.encode import CatalogImages, embed_table
    from geoloc.encode.backbone import BackboneUnavailable
    from geoloc.encode.loading import load_backbone

    backbone = _backbone_name(backbone, clip)
    with clean_errors(BackboneUnavailable, ClusterError):
        items = read_table(catalog / "catalog.parquet", columns=["image_id", "uri", "source"])
        if check_engine(engine) == "ray" and (features != "normalized" or views != 1):
            raise EmbeddingsError(f"--features {features} runs on the local engine only")
        if engine == "ray":
            from geoloc.encode.ray_engine import embed_table_ray

            run = functools.partial(embed_table_ray, items, CatalogImages(catalog.resolve()), backbone, out,
                                    actors=actors, gpus_per_actor=gpus_per_actor, device=device, dtype=dtype,
                                    address=ray_address)
        else:
            model = load_backbone(backbone, device=device, dtype=dtype).with_features(features, views)
            run = functools.partial(embed_table, items, CatalogImages(catalog), model, out, workers=workers)
        with progress_bar() as progress:
            task = progress.add_task("embedding", total=len(items))
            summary = run(batch_size=batch_size, chunk_rows=chunk_rows, on_progress=lambda n: progress.advance(task, n))
    console.print(f"{summary.embedded:,} photo(s) embedded, {summary.failed:,} unreadable (see the error column), "
                  f"{summary.parts_skipped} part(s) already done -> {out}")


@index_app.command("build")
def build_command(
    embeddings: Path = typer.Option(..., "--embeddings", help="Folder written by `geoloc embed`."),
    catalog: Path = typer.Option(..., "--catalog", help="Catalog folder (catalog.parquet) or a catalog file."),
    out: Path = typer.Option(..., "--out", help="Index folder to write (an old index there is replaced whole)."),
    kind: str = typer.Option("auto", "--kind", help="auto (exact up to 200K photos, else IVF; compressed when that "
                             "does not fit --max-memory), flat, ivf, hnsw, ivfsq (8-bit vectors, 4x smaller), "
                             "ivfpq (least memory, lower recall)."),
    nlist: int | None = typer.Option(None, "--nlist", min=1, help="IVF lists (default about 4 sqrt(photos), "
                                     "1/256 of them probed)."),
    nprobe: int | None = typer.Option(None, "--nprobe", min=1, help="IVF lists searched per query."),
    max_memory: str | None = typer.Option(None, "--max-memory", help="Memory the build may use (32GB, 512MB); "
                                          "default: what this process may take now (its container's limit included)."),
) -> None:
    """Build the gallery index from embeddings and the catalog's coordinates, one embeddings part at a time."""
    from geoloc.embeddings import EmbeddingsError, open_embeddings, require_features
    from geoloc.index import (
        GALLERY_CATALOG_COLUMNS,
        build_streamed,
        gallery_table,
        parse_bytes,
        plan_index,
        resident_bytes,
        save_gallery_index,
    )
    from geoloc.machine import available_memory
    from geoloc.tables import table_columns

    with clean_errors():
        limit = parse_bytes(max_memory) if max_memory is not None else available_memory()
        parts = open_embeddings(embeddings)
        require_features(parts.meta, embeddings, ("normalized",), "a retrieval index")
        ids = parts.ids()
        if not len(ids):
            raise EmbeddingsError(f"{embeddings}: no photo was embedded successfully; nothing to index")
        catalog_file = catalog / "catalog.parquet" if catalog.is_dir() else catalog
        present = table_columns(catalog_file)
        gallery = gallery_table(ids, read_table(catalog_file, [c for c in GALLERY_CATALOG_COLUMNS if c in present]))
        held = resident_bytes() + gallery.estimated_size() + ids.estimated_size()
        plan = plan_index(len(ids), parts.dim, kind, nlist=nlist, nprobe=nprobe, max_memory=limit - held,
                          part_rows=parts.meta["chunk_rows"])
        peak = plan.peak_bytes() + held
        console.print(f"{plan.kind} index over {plan.rows:,} photos x {plan.dim} dims"
                      + (f", {plan.nlist} lists, {plan.nprobe} probed" if plan.nlist else "")
                      + f": about {size(plan.memory_bytes())} in memory, a peak of about {size(peak)} while "
                      f"building (limit {size(limit)})")
        if peak > limit:
            errors.print(f"[yellow]warning[/] the build may need more than the {size(limit)} limit; a larger "
                         "--max-memory, --kind ivfpq or fewer --nlist lists need less", highlight=False)
        with console.status("building the index", spinner="dots"):
            index = build_streamed(lambda: (vectors for _, vectors in parts.iter_parts()), plan)
        save_gallery_index(index, gallery, plan, out, parts.meta.get("backbone"))
    console.print(f"index -> {out}")


def size(count: int) -> str:
    """Bytes for a person: GiB from 1 GiB on, else MiB."""
    return f"{count / 2**30:.2f} GiB" if count >= 2**30 else f"{count / 2**20:.0f} MiB"


def retrieve_command(
    images: list[Path] = typer.Argument(..., help="Query photos, or folders of photos."),
    index: Path = typer.Option(..., "--index", help="Folder written by `geoloc index build`."),
    out: Path = typer.Option(..., "--out", help="Candidates table (.parquet or .csv), source=retrieval (and reverse)."),
    k: int = typer.Option(20, "--k", min=1, help="Candidates per photo."),
    reverse: int = typer.Option(0, "--reverse", min=0, help="Also the K gallery photos nearest to the negated query "
                                "vector (source=reverse: G3's dissimilar images, as we define them)."),
    backbone: str | None = typer.Option(None, "--backbone", help="Defaults to the one that embedded the gallery."),
    clip: str | None = typer.Option(None, "--clip", help=CLIP_HELP),
    batch_size: int = typer.Option(64, "--batch-size", min=1),
    device: str = typer.Option("auto", "--device"),
) -> None:
    """The k gallery photos nearest to each query photo (and the --reverse K farthest), as candidates."""
    from geoloc.candidates.retrieval import retrieve_photos
    from geoloc.encode.backbone import BackboneUnavailable
    from geoloc.encode.loading import load_backbone
    from geoloc.images import find_photos
    from geoloc.index import GalleryIndex

    with clean_errors(BackboneUnavailable):
        gallery = GalleryIndex.load(index)
        photos = find_photos(images)
        model = load_backbone(_backbone_name(backbone or gallery.info["backbone"], clip), device=device)
        with progress_bar() as progress:
            task = progress.add_task("embedding", total=len(photos))
            retrieved = retrieve_photos(photos, gallery, model, k, reverse, batch_size,
                                        on_progress=lambda n: progress.advance(task, n))
        for photo, problem in zip(photos, retrieved.problems):
            if problem is not None:
                errors.print(f"[yellow]skipped[/] {photo.path}: {problem}", highlight=False)
        write_table(retrieved.candidates, out)
    readable = retrieved.problems.count(None)
    console.print(f"{readable} photo(s), {len(retrieved.candidates)} candidates -> {out}")


@index_app.command("convert-g3")
def convert_g3_command(
    checkpoint: Path = typer.Argument(..., help="G3's g3.pth (a state dict)."),
    out: Path | None = typer.Option(None, "--out", help="Default: the same name with .safetensors, beside it."),
) -> None:
    """Copy G3's checkpoint to safetensors once: later loads run no pickle code and read only the vision parts."""
    from geoloc.encode.backbone import BackboneUnavailable
    from geoloc.encode.g3 import convert_g3

    out = out or checkpoint.with_suffix(".safetensors")
    with clean_errors(BackboneUnavailable):
        count = convert_g3(checkpoint, out)
    console.print(f"{count:,} tensors -> {out}; use --backbone g3:{out}")


def register(app: typer.Typer, panel: str) -> None:
    app.command("embed", rich_help_panel=panel)(embed_command)
    app.add_typer(index_app, name="index", rich_help_panel=panel)
    app.command("retrieve", rich_help_panel=panel)(retrieve_command)
