"""GeoRanker's compiled candidate CSV read into our candidate table (`candidates compile --georanker`)."""

import polars as pl
import pytest
from datawriters import write_georanker_csv
from typer.testing import CliRunner

from geoloc.candidates.compile import compile_candidates
from geoloc.candidates.georanker import read_georanker_candidates
from geoloc.cli import app
from geoloc.rank.prompts import Place, candidate_prompt
from geoloc.rank.ranking import read_candidates, select_candidates
from geoloc.tables import TableError

PARIS_FIELDS = ["Montmartre", "Paris", "Paris", "Ile-de-France", "Metropolitan France", "France"]
AQUILA_FIELDS = ["", "L'Aquila", "", "Abruzzo", "", "Italy"]
NAMELESS_FIELDS = ["", "", "", "", "", ""]


def _neighbours(count: int) -> tuple[list, list, list]:
    gps = [(48.85 + i / 100, 2.35 + i / 1000) for i in range(count)]
    fields = [PARIS_FIELDS, AQUILA_FIELDS, NAMELESS_FIELDS] + [PARIS_FIELDS] * (count - 3)
    images = [f"{i:02d}/{i:02d}/{1000 + i}.jpg" for i in range(count)]
    return gps, fields, images


@pytest.fixture
def georanker_csv(tmp_path):
    gps, fields, images = _neighbours(20)
    path = tmp_path / "im2gps3k.csv"
    write_georanker_csv(path, [
        {"IMG_ID": "1000_a.jpg", "LAT": 48.86, "LON": 2.34, "candidate_gps_lis": gps, "candidate_text_lis": fields,
         "reverse_gps_lis": [], "zs_gps_lis": [(48.8566, 2.3522), (0.0, 0.0), (41.9, 12.5)],
         "candidate_img_lis": images},
        {"IMG_ID": "2000_b.jpg", "LAT": -33.9, "LON": 151.2, "candidate_gps_lis": gps[:3],
         "candidate_text_lis": fields[:3], "reverse_gps_lis": [], "zs_gps_lis": [(0.0, 0.0)],
         "candidate_img_lis": images[:3]},
    ])
    return path


def test_reader_keeps_list_order_texts_photos_and_failed_answers(georanker_csv):
    read = read_georanker_candidates(georanker_csv)
    table = read.table
    first = table.filter(pl.col("query_id") == "1000_a.jpg")
    retrieval = first.filter(pl.col("source") == "retrieval")
    assert retrieval["rank"].to_list() == list(range(20))
    assert retrieval["ref_uri"].to_list() == [f"{i:02d}/{i:02d}/{1000 + i}.jpg" for i in range(20)]
    assert (retrieval["lat"][5], retrieval["lon"][5]) == (48.9, 2.355)
    # city, state, country joined by spaces, empty ones skipped; nothing at all stays "" (not reverse-geocoded).
    assert retrieval["text"].to_list()[:3] == ["Paris Ile-de-France France", "L'Aquila Abruzzo Italy", ""]
    zeroshot = first.filter(pl.col("source") == "zeroshot")
    assert list(zip(zeroshot["lat"], zeroshot["lon"])) == [(48.8566, 2.3522), (0.0, 0.0), (41.9, 12.5)]
    assert zeroshot["text"].to_list() == [None] * 3 and zeroshot["ref_uri"].to_list() == [None] * 3
    assert read.failed_zeroshot == 2

    dropped = read_georanker_candidates(georanker_csv, drop_failed_zeroshot=True)
    answers = dropped.table.filter(pl.col("source") == "zeroshot")
    assert answers["query_id"].to_list() == ["1000_a.jpg", "1000_a.jpg"]
    assert answers["rank"].to_list() == [0, 2]
    assert dropped.failed_zeroshot == 2


def test_prompts_from_the_file_are_georankers_strings(georanker_csv, tmp_path):
    """GeoRanker's evaluate.py: a retrieval candidate always has ', ' after the longitude, a zero-shot one
    never; the negatives are the last five of the twenty neighbours, each with ', ' and its names."""
    table, summary = compile_candidates(georanker_files=[georanker_csv])
    assert summary.georanker_failed_zeroshot == 2
    out = tmp_path / "candidates.parquet"
    table.write_parquet(out)
    scored, negatives = select_candidates(read_candidates(out), {"retrieval": 10, "zeroshot": 5}, 5)
    query = scored.filter(pl.col("query_id") == "1000_a.jpg")
    negative_places = [Place(*row) for row in negatives.filter(pl.col("query_id") == "1000_a.jpg")
                       .select("lat", "lon", "text").iter_rows()]
    expected_negatives = "; ".join(f"latitude: {48.85 + i / 100}, longitude: {2.35 + i / 1000}, "
                                   "Paris Ile-de-France France" for i in range(15, 20))

    def texts(row: int, gallery) -> list[str]:
        lat, lon, text = query.row(row)[3], query.row(row)[4], query["text"][row]
        prompt = candidate_prompt(None, Place(lat, lon, text), gallery, negative_places)
        return [part["text"] for part in prompt.messages[0]["content"] if part["type"] == "text"]

    assert texts(2, gallery="photo") == ["How far is this place from latitude: 48.870000000000005, "
                                         "longitude: 2.352, ?", f"Negative examples: {expected_negatives}"]
    assert texts(1, gallery="photo")[0] == "How far is this place from latitude: 48.86, longitude: 2.351, " \
                                           "L'Aquila Abruzzo Italy?"
    assert texts(11, gallery=None)[0] == "How far is this place from latitude: 0.0, longitude: 0.0?"


def test_reader_refuses_code_and_malformed_cells_without_running_them(tmp_path):
    gps, fields, images = _neighbours(3)
    marker = tmp_path / "ran"
    bad = tmp_path / "bad.csv"
    write_georanker_csv(bad, [{"IMG_ID": "q.jpg", "LAT": 0, "LON": 0, "candidate_gps_lis": gps,
                               "candidate_text_lis": f"__import__('pathlib').Path('{marker}').touch()",
                               "reverse_gps_lis": [], "zs_gps_lis": [], "candidate_img_lis": images}])
    with pytest.raises(TableError, match="candidate_text_lis of 'q.jpg' is not a Python list literal"):
        read_georanker_candidates(bad)
    assert not marker.exists()
    write_georanker_csv(bad, [{"IMG_ID": "q.jpg", "LAT": 0, "LON": 0, "candidate_gps_lis": gps,
                               "candidate_text_lis": fields[:2], "reverse_gps_lis": [], "zs_gps_lis": [],
                               "candidate_img_lis": images}])
    with pytest.raises(TableError, match="3 candidate coordinates, 2 texts and 3 photos"):
        read_georanker_candidates(bad)
    write_georanker_csv(bad, [{"IMG_ID": "q.jpg", "LAT": 0, "LON": 0, "candidate_gps_lis": gps,
                               "candidate_text_lis": fields, "reverse_gps_lis": [], "zs_gps_lis": [("48", 2)],
                               "candidate_img_lis": images}])
    with pytest.raises(TableError, match=r"zs_gps_lis of 'q.jpg' holds \('48', 2\)"):
        read_georanker_candidates(bad)


def test_cli_compile_says_how_many_answers_failed(georanker_csv, tmp_path):
    out = tmp_path / "candidates.parquet"
    result = CliRunner().invoke(app, ["candidates", "compile", "--georanker", str(georanker_csv), "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert "2 zero-shot answer(s) in the GeoRanker file(s) are (0, 0)" in result.output and "kept" in result.output
    assert pl.read_parquet(out).height == 20 + 3 + 3 + 1
    result = CliRunner().invoke(app, ["candidates", "compile", "--georanker", str(georanker_csv), "--out", str(out),
                                      "--drop-failed-zeroshot"])
    assert result.exit_code == 0 and "left out" in result.output
    assert pl.read_parquet(out).height == 20 + 3 + 2
