"""`geoloc candidates compile` and `report` on the documented inputs."""

import numpy as np
import polars as pl
import pytest
from typer.testing import CliRunner

from geoloc.candidates.compile import G3Retrieval, compile_candidates
from geoloc.candidates.report import UNION, candidate_report
from geoloc.cli import app
from geoloc.evaluate import load_truth
from geoloc.geo import great_circle_km
from geoloc.tables import TableError

TRUTH = [("q-paris.jpg", 48.8584, 2.2945), ("q-sydney.jpg", -33.8568, 151.2153), ("q-nowhere.jpg", 0.5, 0.5)]
GALLERY = [
    # IMG_ID, LAT, LON, neighbourhood, city, county, state, region, country
    ("g/0.jpg", 48.8606, 2.3376, "Louvre", "Paris", "", "Île-de-France", "", "France"),
    ("g/1.jpg", 45.7640, 4.8357, "", "Lyon", "", "Auvergne-Rhône-Alpes", "", "France"),
    ("g/2.jpg", -33.8688, 151.2093, "", "Sydney", "", "New South Wales", "", "Australia"),
    ("g/3.jpg", -37.8136, 144.9631, "", "Melbourne", "", "Victoria", "", "Australia"),
    ("g/4.jpg", 51.5074, -0.1278, "", "London", "", "England", "", "United Kingdom"),
]
NEIGHBOURS = np.array([[1, 0, 4], [3, 2, 4], [4, 1, 0]], dtype=np.int64)


@pytest.fixture
def inputs(tmp_path):
    truth = tmp_path / "im2gps3k_places365.csv"
    truth.write_text("IMG_ID,AUTHOR,LAT,LON\n" + "".join(f"{i},a@N00,{lat},{lon}\n" for i, lat, lon in TRUTH))
    gallery = tmp_path / "MP16_Pro_filtered.csv"
    header = "IMG_ID,LAT,LON,neighbourhood,city,county,state,region,country\n"
    gallery.write_text(header + "".join(",".join(map(str, row)) + "\n" for row in GALLERY))
    index = tmp_path / "I.npy"
    np.save(index, NEIGHBOURS)
    zeroshot = tmp_path / "answers.parquet"
    pl.DataFrame({
        "query_id": ["q-paris.jpg", "q-paris.jpg", "q-sydney.jpg", "q-sydney.jpg"],
        "image": ["p", "p", "s", "s"],
        "sample": [0, 1, 0, 1],
        "lat": [None, 48.85, -33.86, -34.0],
        "lon": [None, 2.35, 151.21, 151.0],
        "answer": ["I can't tell", "48.85, 2.35", "x", "y"],
        "error": ["no coordinates in the answer", None, None, None],
    }).write_parquet(zeroshot)
    geoclip = tmp_path / "geoclip.parquet"
    pl.DataFrame({
        "query_id": ["q-nowhere.jpg"], "source": ["geoclip"], "rank": [0], "lat": [0.4], "lon": [0.6], "score": [0.3],
    }).write_parquet(geoclip)
    return truth, G3Retrieval(index=index, gallery=gallery, queries=truth), zeroshot, geoclip


def test_compile_merges_every_source_with_place_texts(inputs):
    truth, g3, zeroshot, geoclip = inputs
    table, summary = compile_candidates([geoclip], [zeroshot], g3)
    assert summary.candidates_per_source == {"retrieval": 9, "zeroshot": 3, "geoclip": 1}
    assert summary.zeroshot_unusable == 1
    paris = table.filter(pl.col("query_id") == "q-paris.jpg")
    assert paris["source"].to_list() == ["retrieval"] * 3 + ["zeroshot"]
    assert paris["rank"].to_list() == [0, 1, 2, 0]
    assert paris["ref_uri"].to_list() == ["g/1.jpg", "g/0.jpg", "g/4.jpg", None]
    # Gallery metadata gives the retrieval texts as GeoRanker's prompts name them: city, state and
    # country joined by spaces, empty ones skipped; zero-shot answers stay nameless.
    assert paris["text"][1] == "Paris Île-de-France France"
    assert paris["text"][3] is None
    assert (paris["lat"][0], paris["lon"][0]) == (45.7640, 4.8357)
    assert table.filter(pl.col("source") == "geoclip")["text"][0]  # a place name, even at sea
    assert table.columns == ["query_id", "source", "rank", "lat", "lon", "score", "text", "ref_uri"]


def test_compile_refuses_mismatched_g3_inputs(inputs, tmp_path):
    truth, g3, _, _ = inputs
    np.save(tmp_path / "short.npy", NEIGHBOURS[:2])
    with pytest.raises(TableError, match="has 2 rows but .* has 3 queries"):
        compile_candidates(g3=G3Retrieval(tmp_path / "short.npy", g3.gallery, truth))
    np.save(tmp_path / "far.npy", NEIGHBOURS + 10)
    with pytest.raises(TableError, match="outside the gallery's 5 rows"):
        compile_candidates(g3=G3Retrieval(tmp_path / "far.npy", g3.gallery, truth))
    np.save(tmp_path / "objects.npy", np.array([[1.5]]))
    with pytest.raises(TableError, match="2-D integer array"):
        compile_candidates(g3=G3Retrieval(tmp_path / "objects.npy", g3.gallery, truth))
    first, _ = compile_candidates(g3=g3)
    first.write_parquet(tmp_path / "retrieval.parquet")
    with pytest.raises(TableError, match="same source was given twice"):
        compile_candidates([tmp_path / "retrieval.parquet"], g3=g3)


def test_report_first_and_best_per_source_and_union(inputs):
    truth_path, g3, zeroshot, geoclip = inputs
    table, _ = compile_candidates([geoclip], [zeroshot], g3)
    report = candidate_report(table, load_truth(truth_path))
    rows = {(r["source"], r["pick"]): r for r in report.iter_rows(named=True)}
    assert set(rows) == {(s, p) for s in ("retrieval", "geoclip", "zeroshot", UNION) for p in ("first", "best")}

    def distance(query, lat, lon):
        t = next(t for t in TRUTH if t[0] == query)
        return float(great_circle_km(t[1], t[2], lat, lon))

    # Retrieval first picks: Lyon for Paris (392 km), Melbourne for Sydney (714 km), London for nowhere.
    first = rows[("retrieval", "first")]
    assert first["acc_750km"] == pytest.approx(2 / 3) and first["acc_200km"] == 0.0
    # Best picks: the Louvre (3 km), Sydney (1.7 km); nowhere's best is still thousands of km off.
    best = rows[("retrieval", "best")]
    assert best["acc_25km"] == pytest.approx(2 / 3)
    assert best["median_km"] == pytest.approx(
        np.median([distance("q-paris.jpg", 48.8606, 2.3376), distance("q-sydney.jpg", -33.8688, 151.2093),
                   distance("q-nowhere.jpg", 45.7640, 4.8357)]))
    # Zero-shot has no candidate for the third photo: a miss, counted.
    assert rows[("zeroshot", "first")]["missing"] == 1
    # GeoCLIP alone answered only the third photo, 15.7 km off.
    assert rows[("geoclip", "best")]["acc_25km"] == pytest.approx(1 / 3)
    union = rows[(UNION, "best")]
    assert union["missing"] == 0 and union["acc_25km"] == pytest.approx(1.0)
    assert rows[(UNION, "first")]["acc_25km"] == pytest.approx(0.0)


def test_cli_compile_then_report(inputs, tmp_path):
    truth, g3, zeroshot, geoclip = inputs
    out = tmp_path / "candidates.parquet"
    runner = CliRunner()
    result = runner.invoke(app, ["candidates", "compile", "--out", str(out), "--candidates", str(geoclip),
                                 "--zeroshot", str(zeroshot), "--g3-index", str(g3.index),
                                 "--g3-gallery", str(g3.gallery), "--g3-queries", str(g3.queries)])
    assert result.exit_code == 0, result.output
    assert "3 queries, 13 candidates" in result.stdout
    assert "1 zero-shot answer(s) had no usable coordinates" in result.stdout
    assert pl.read_parquet(out).height == 13
    result = runner.invoke(app, ["candidates", "report", str(out), "--truth", str(truth)], env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    assert UNION in result.stdout and "retrieval" in result.stdout
    result = runner.invoke(app, ["candidates", "compile", "--out", str(out), "--g3-index", str(g3.index)])
    assert result.exit_code == 2 and "needs all of" in result.stderr


def test_source_positions_are_stable_for_trained_light_rankers():
    """A light ranker's per-source features sit at these positions; reordering them breaks saved models."""
    from geoloc.candidates import SOURCES
    from geoloc.rank.light import RANKED_SOURCES, SCALARS

    assert SOURCES[:5] == ("retrieval", "reverse", "classifier", "geoclip", "zeroshot")
    assert RANKED_SOURCES == SOURCES[:5] and SCALARS == 8, "saved light rankers read 8 scalars per candidate"


def test_zeroshot_tables_of_several_runs_rank_as_one_source_by_rag_then_sample(inputs, tmp_path):
    _, _, plain, _ = inputs  # written before the rag column existed: K = 0
    rag = tmp_path / "rag.csv"
    pl.DataFrame({"query_id": ["q-paris.jpg"] * 4, "image": ["p"] * 4, "rag": [10, 5, 10, 5], "sample": [0, 1, 1, 0],
                  "lat": [10.0, 5.1, 10.1, 5.0], "lon": [1.0] * 4, "answer": ["x"] * 4, "error": [None] * 4,
                  "rag_retrieval": [10, 5, 10, 5], "rag_reverse": [10, 5, 10, 5]}).write_csv(rag)
    table, summary = compile_candidates(zeroshot_tables=[rag, plain])
    paris = table.filter(pl.col("query_id") == "q-paris.jpg")
    assert paris["rank"].to_list() == [0, 1, 2, 3, 4] and paris["lat"].to_list() == [48.85, 5.0, 5.1, 10.0, 10.1]
    assert summary.zeroshot_unusable == 1
    with pytest.raises(TableError, match=r"share a \(query, rag, sample\).*given twice"):
        compile_candidates(zeroshot_tables=[rag, plain, rag])


def test_report_radius_rule_below_by_default_at_most_with_inclusive(inputs, monkeypatch):
    import geoloc.candidates.report as report_module

    truth_path, g3, _, _ = inputs
    table, _ = compile_candidates(g3=g3)
    monkeypatch.setattr(report_module, "distance_km", lambda *args, **kwargs: np.full(len(args[0]), 25.0))
    below = candidate_report(table, load_truth(truth_path))
    at_most = candidate_report(table, load_truth(truth_path), inclusive=True)
    assert set(below["acc_25km"]) == {0.0} and set(at_most["acc_25km"]) == {1.0}
