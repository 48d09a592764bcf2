"""GeoRanker's compiled candidate files (`dataset/im2gps3k/im2gps3k.csv`, `yfcc4k.csv`) as candidates.

One row per benchmark photo: `IMG_ID`, and Python list literals in CSV cells —
`candidate_gps_lis` (the 20 retrieval neighbours in rank order, as (lat, lon)),
`candidate_text_lis` (six place fields each: neighbourhood, city, county, state, region,
country), `candidate_img_lis` (the neighbours' MP16-Pro ids) and `zs_gps_lis` (the
vision-language model's answers). The literals are read with `ast.literal_eval`, which
builds only Python literals and runs no code.

Place text is the one GeoRanker's prompts write: city, state and country joined by
single spaces, empty fields skipped ("" when all are empty: the prompt still names
nothing after the coordinates' separator). GeoRanker recorded a failed zero-shot answer
as (0, 0) and scored it; such answers are kept unless asked otherwise, and counted.
"""

from __future__ import annotations

import ast
from dataclasses import dataclass
from pathlib import Path

import polars as pl

from geoloc.candidates import CANDIDATE_SCHEMA
from geoloc.places import GALLERY_PLACE_COLUMNS, place_text
from geoloc.tables import TableError, read_table

LIST_COLUMNS = ("candidate_gps_lis", "candidate_text_lis", "candidate_img_lis", "zs_gps_lis")
PLACE_FIELDS = ("neighbourhood", "city", "county", "state", "region", "country")
"""The six fields of a `candidate_text_lis` entry; the prompt names GALLERY_PLACE_COLUMNS of them."""
FAILED_ANSWER = (0.0, 0.0)


@dataclass(frozen=True)
class GeoRankerCandidates:
    table: pl.DataFrame
    failed_zeroshot: int
    """Zero-shot answers recorded as (0, 0): GeoRanker's mark of an answer without coordinates."""
    dropped_failed_zeroshot: bool


def _literal(cell: object, column: str, query: str, path: Path) -> list:
    try:
        value = ast.literal_eval(cell) if isinstance(cell, str) else None
    except (ValueError, SyntaxError, MemoryError, RecursionError) as error:
        raise TableError(f"{path}: {column} of {query!r} is not a Python list literal: {error}") from error
    if not isinstance(value, list | tuple):
        raise TableError(f"{path}: {column} of {query!r} is not a list: {str(cell)[:80]!r}")
    return list(value)


def _coordinates(values: list, column: str, query: str, path: Path) -> list[tuple[float, float]]:
    pairs = []
    for value in values:
        if not (isinstance(value, list | tuple) and len(value) == 2
                and all(isinstance(x, int | float) and not isinstance(x, bool) for x in value)):
            raise TableError(f"{path}: {column} of {query!r} holds {value!r}, not a (lat, lon) pair")
        pairs.append((float(value[0]), float(value[1])))
    return pairs


def read_georanker_candidates(path: Path, drop_failed_zeroshot: bool = False) -> GeoRankerCandidates:
    """The retrieval and zero-shot candidates of GeoRanker's compiled file, in its list orders.

    Retrieval rows keep all neighbours (the last five are GeoRanker's negatives); `ref_uri`
    is the neighbour's MP16-Pro id, a member name of MP16-Pro's tar.
    """
    frame = read_table(path)
    missing = [column for column in ("IMG_ID", *LIST_COLUMNS) if column not in frame.columns]
    if missing:
        raise TableError(f"{path}: not a GeoRanker candidate file: missing column(s) {', '.join(missing)}")
    names = [name for name in CANDIDATE_SCHEMA if name != "text"]
    columns: dict[str, list] = {name: [] for name in (*names, *PLACE_FIELDS)}
    failed = 0

    def add(query: str, source: str, rank: int, lat: float, lon: float, ref: str | None, fields: tuple) -> None:
        for name, value in zip(columns, (query, source, rank, lat, lon, None, ref, *fields), strict=True):
            columns[name].append(value)

    # A benchmark has a few thousand rows: parsing the literals one cell at a time is the job.
    for row in frame.select("IMG_ID", *LIST_COLUMNS).iter_rows():
        query, gps, texts, images, answers = str(row[0]), *row[1:]
        gps = _coordinates(_literal(gps, "candidate_gps_lis", query, path), "candidate_gps_lis", query, path)
        texts = _literal(texts, "candidate_text_lis", query, path)
        images = _literal(images, "candidate_img_lis", query, path)
        if not len(gps) == len(texts) == len(images):
            raise TableError(f"{path}: {query!r} has {len(gps)} candidate coordinates, {len(texts)} texts and "
                             f"{len(images)} photos; they must match one to one")
        for rank, ((lat, lon), fields, image) in enumerate(zip(gps, texts, images)):
            if not isinstance(fields, list | tuple) or len(fields) != len(PLACE_FIELDS):
                raise TableError(f"{path}: a candidate_text_lis entry of {query!r} is {fields!r}; expected the "
                                 f"{len(PLACE_FIELDS)} fields {', '.join(PLACE_FIELDS)}")
            add(query, "retrieval", rank, lat, lon, str(image), tuple(str(field) for field in fields))
        for rank, answer in enumerate(_coordinates(_literal(answers, "zs_gps_lis", query, path), "zs_gps_lis",
                                                   query, path)):
            failed += answer == FAILED_ANSWER
            if answer == FAILED_ANSWER and drop_failed_zeroshot:
                continue
            add(query, "zeroshot", rank, *answer, None, (None,) * len(PLACE_FIELDS))
    # The text by the one rule for gallery photos (geoloc.places.place_text); "" where it names nothing,
    # so that compile does not reverse-geocode what GeoRanker left nameless.
    text = pl.when(pl.col("source") == "retrieval").then(place_text(list(GALLERY_PLACE_COLUMNS)).fill_null(""))
    table = pl.DataFrame(columns, schema={**{n: CANDIDATE_SCHEMA[n] for n in names},
                                          **dict.fromkeys(PLACE_FIELDS, pl.Utf8)})
    table = table.with_columns(text.alias("text")).select(list(CANDIDATE_SCHEMA))
    return GeoRankerCandidates(table=table, failed_zeroshot=failed, dropped_failed_zeroshot=drop_failed_zeroshot)
