"""`geoloc cells build | assign | plot` end to end on a small catalog.parquet: files, schemas, consistency."""

import json
from pathlib import Path

import numpy as np
import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

from geoloc.cells import CellIndex, CellsOptions, build_cells
from geoloc.cli import app
from geoloc.geo import EARTH_RADIUS_KM, from_unit_vectors, great_circle_km, spherical_mean, to_unit_vectors

LEVELS = 3
CLUSTERS = [f"cluster_{level}" for level in range(LEVELS)]
PLACES = [  # (lat, lon, photos, radius km, repeated geotags): towns, an antimeridian town, the North Pole,
    # a landmark (one geotag for all its photos), countryside
    (48.857, 2.352, 120, 3.0, True), (51.507, -0.128, 100, 3.0, True), (40.713, -74.006, 90, 4.0, True),
    (35.676, 139.650, 80, 4.0, True), (-16.8, 180.0, 60, 2.0, False), (90.0, 0.0, 40, 2.0, False),
    (-33.857, 151.215, 30, 0.0, False), (52.0, 10.0, 60, 300.0, True), (-1.29, 36.82, 50, 5.0, True),
    (-22.9, -43.2, 50, 5.0, True),
]


def photo_coordinates(seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    lats, lons = [], []
    for lat, lon, photos, radius_km, repeated in PLACES:
        centre = to_unit_vectors(lat, lon)
        offsets = rng.normal(size=(photos, 3)) * (radius_km / EARTH_RADIUS_KM)
        offsets -= (offsets @ centre)[:, None] * centre
        place_lat, place_lon = from_unit_vectors(centre + offsets)
        repeats = np.where(rng.random(photos) < 0.2, rng.integers(2, 6, photos), 1) if repeated else 1
        lats.append(np.repeat(np.round(place_lat, 6), repeats))
        lons.append(np.repeat(np.round(place_lon, 6), repeats))
    return np.concatenate(lats), np.concatenate(lons)


def write_catalog(folder: Path, lat: np.ndarray, lon: np.ndarray) -> Path:
    """catalog.parquet with the catalog schema's columns, as `geoloc catalog build` writes it."""
    folder.mkdir(parents=True, exist_ok=True)
    n = len(lat)
    table = pa.table({
        "image_id": pa.array([f"{i:06d}.jpg" for i in range(n)], pa.string()),
        "uri": pa.array([f"photos/{i % 7}/{i:06d}.jpg" for i in range(n)], pa.string()),
        "lat": pa.array(lat, pa.float64()),
        "lon": pa.array(lon, pa.float64()),
        "source": pa.array(["photos"] * n, pa.string()),
        "content_hash": pa.array([f"{i:016x}" for i in range(n)], pa.string()),
    })
    pq.write_table(table, folder / "catalog.parquet")
    return folder


@pytest.fixture(scope="module")
def built(tmp_path_factory) -> tuple[Path, np.ndarray, np.ndarray]:
    root = tmp_path_factory.mktemp("cells")
    lat, lon = photo_coordinates()
    catalog = write_catalog(root / "catalog", lat, lon)
    result = CliRunner().invoke(app, ["cells", "build", "--catalog", str(catalog), "--out", str(root / "cells")])
    assert result.exit_code == 0, result.output
    assert "cluster_0" in result.stdout
    return root / "cells", lat, lon


def read_both(folder: Path, stem: str) -> tuple[pl.DataFrame, pl.DataFrame]:
    return pl.read_csv(folder / f"{stem}.csv"), pl.read_parquet(folder / f"{stem}.parquet")


def test_files_have_the_data_documents_columns(built):
    folder, lat, _ = built
    expected = {
        "clustered_coords": ["path", "lat", "lon", "cluster"],
        "hierarchical_clustered_coords": ["path", "lat", "lon", *CLUSTERS],
        "hierarchical_cluster_centroids": [*CLUSTERS, "lat", "lon", "avg_dist"],
        "hierarchical_structure": [*CLUSTERS, "num_items", "children"],
    }
    for stem, columns in expected.items():
        csv, parquet = read_both(folder, stem)
        assert csv.columns == columns and parquet.columns == columns, stem
        assert len(csv) == len(parquet), stem
    coords, parquet = read_both(folder, "clustered_coords")
    assert len(coords) == len(lat)
    assert coords["path"].to_list() == pl.read_parquet(folder.parent / "catalog" / "catalog.parquet")["uri"].to_list()
    assert parquet.schema["cluster"] == pl.Int64
    assert coords["cluster"].to_list() == parquet["cluster"].to_list()
    description = json.loads((folder / "cells.json").read_text())
    assert description["parameters"]["min_cluster_size"] == 5 and description["photos"] == len(lat)
    assert [level["cells"] for level in description["levels"]][0] == parquet["cluster"].max() + 1
    assert {"scikit-learn", "numpy"} <= set(description["libraries"])
    assert not list(folder.glob("*.pkl")) and not list(folder.glob(".*.part"))


def test_cluster_ids_are_dense_and_levels_coarser(built):
    folder, _, _ = built
    coords = pl.read_parquet(folder / "hierarchical_clustered_coords.parquet")
    counts = []
    for column in CLUSTERS:
        ids = coords[column].filter(coords[column] != -1).unique().sort().to_list()
        assert ids == list(range(len(ids)))
        counts.append(len(ids))
    assert counts[0] >= 9 and counts[0] > counts[1] > counts[2] >= 1
    noise = coords["cluster_0"] == -1
    for column in CLUSTERS[1:]:
        assert ((coords[column] == -1) == noise).all(), "noise stays noise at every level"


def test_special_places_are_one_cell_each(built):
    folder, _, _ = built
    coords = pl.read_parquet(folder / "hierarchical_clustered_coords.parquet")
    antimeridian = coords.filter((pl.col("lat") - (-16.8)).abs() < 0.2)
    assert antimeridian["lon"].min() < -179.9 and antimeridian["lon"].max() > 179.9
    pole = coords.filter(pl.col("lat") > 89.5)
    landmark = coords.filter((pl.col("lat") == -33.857) & (pl.col("lon") == 151.215))
    for group in (antimeridian, pole, landmark):
        cells = group["cluster_0"].unique().to_list()
        assert len(cells) == 1 and cells[0] != -1
        assert len(coords.filter(pl.col("cluster_0") == cells[0])) == len(group)


def test_centroids_are_spherical_means_with_mean_great_circle_spread(built):
    folder, _, _ = built
    coords = pl.read_parquet(folder / "hierarchical_clustered_coords.parquet")
    centroids, parquet = read_both(folder, "hierarchical_cluster_centroids")
    assert centroids.shape == parquet.shape
    for column in CLUSTERS:
        rows = parquet.filter(pl.col(column).is_not_null())
        others = [name for name in CLUSTERS if name != column]
        assert rows.select(others).null_count().sum_horizontal().item() == len(rows) * len(others), "sparse"
        assert rows[column].to_list() == list(range(len(rows)))
        for row in rows.iter_rows(named=True):
            members = coords.filter(pl.col(column) == row[column])
            lat, lon = spherical_mean(members["lat"].to_numpy(), members["lon"].to_numpy())
            assert great_circle_km(lat, lon, row["lat"], row["lon"]) < 1e-6
            spread = great_circle_km(members["lat"].to_numpy(), members["lon"].to_numpy(), lat, lon).mean()
            assert row["avg_dist"] == pytest.approx(spread, rel=1e-6, abs=1e-6)
    pole = parquet.filter(pl.col("cluster_0").is_not_null() & (pl.col("lat") > 89.9))
    assert len(pole) == 1 and pole["avg_dist"][0] < 5


def test_structure_is_a_tree_matching_the_labels(built):
    folder, _, _ = built
    coords = pl.read_parquet(folder / "hierarchical_clustered_coords.parquet").filter(pl.col("cluster_0") != -1)
    csv, structure = read_both(folder, "hierarchical_structure")
    root = structure.row(0, named=True)
    assert all(root[name] is None for name in CLUSTERS)
    assert root["num_items"] == len(coords)
    assert sorted(root["children"]) == sorted(coords["cluster_2"].unique().to_list())
    for level, column in enumerate(CLUSTERS):
        finer_unset = [pl.col(name).is_null() for name in CLUSTERS[:level]] or [pl.lit(True)]
        rows = structure.filter(pl.col(column).is_not_null() & pl.all_horizontal(finer_unset))
        assert rows[column].n_unique() == len(rows) == coords[column].n_unique()
        assert rows.select(CLUSTERS[level:]).null_count().sum_horizontal().item() == 0, "right-triangular"
        coarser = CLUSTERS[level + 1:]
        if coarser:
            parents = coords.group_by(column).agg(pl.col(coarser).n_unique())
            assert (parents.select(coarser).to_numpy() == 1).all(), "one parent each"
        sizes = coords.group_by(column).len()
        joined = rows.join(sizes, on=column)
        assert (joined["num_items"] == joined["len"]).all()
        for row in rows.iter_rows(named=True):
            members = coords.filter(pl.col(column) == row[column])
            if level == 0:
                assert row["children"] == []
            else:
                assert row["children"] == sorted(members[CLUSTERS[level - 1]].unique().to_list())
            assert members.select(CLUSTERS[level:]).unique().rows() == [tuple(row[name] for name in CLUSTERS[level:])]
    assert csv["children"][0].startswith("[") and csv["children"][-1] == "[]"


def test_cell_index_maps_training_photos_back_to_their_cells(built):
    folder, lat, lon = built
    coords = pl.read_parquet(folder / "hierarchical_clustered_coords.parquet")
    index = CellIndex.load(folder)
    assigned = index.assign(lat, lon)
    assert assigned.shape == (len(lat), LEVELS)
    clustered = (coords["cluster_0"] != -1).to_numpy()
    assert np.array_equal(assigned[clustered], coords.select(CLUSTERS).to_numpy()[clustered])
    near_pole = index.assign(89.999, 123.0)
    assert near_pole[0, 0] == coords.filter(pl.col("lat") > 89.5)["cluster_0"][0]
    far = index.assign([0.0, 95.0], [-140.0, 0.0], max_distance_km=100.0)
    assert (far == -1).all(), "mid-Pacific is far from every cell; lat 95 is no coordinate"


def test_cli_assign_and_plot(built, tmp_path):
    folder, _, _ = built
    points = tmp_path / "points.csv"
    pl.DataFrame({"name": ["paris", "nowhere"], "lat": [48.86, -60.0], "lon": [2.35, -120.0]}).write_csv(points)
    runner = CliRunner()
    result = runner.invoke(app, ["cells", "assign", str(points), "--cells", str(folder), "--out",
                                 str(tmp_path / "assigned.parquet"), "--max-distance-km", "50"])
    assert result.exit_code == 0, result.output
    assigned = pl.read_parquet(tmp_path / "assigned.parquet")
    assert assigned.columns == ["name", "lat", "lon", *CLUSTERS]
    assert assigned["cluster_0"][0] >= 0 and assigned["cluster_0"][1] == -1
    picture = tmp_path / "cells.png"
    result = runner.invoke(app, ["cells", "plot", str(folder), "--out", str(picture), "--level", "1"])
    assert result.exit_code == 0, result.output
    assert picture.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and picture.stat().st_size > 20_000
    result = runner.invoke(app, ["cells", "plot", str(folder), "--out", str(picture), "--level", "7"])
    assert result.exit_code == 2 and "level 7" in result.output


def test_assign_noise_leaves_no_photo_without_a_cell(tmp_path):
    lat, lon = photo_coordinates(1)
    catalog = write_catalog(tmp_path / "catalog", lat, lon)
    summary = build_cells(catalog, tmp_path / "cells", CellsOptions(assign_noise=True, levels=2))
    coords = pl.read_parquet(tmp_path / "cells" / "hierarchical_clustered_coords.parquet")
    assert summary.noise_photos == 0 and (coords["cluster_0"] != -1).all()
    assert coords.columns == ["path", "lat", "lon", "cluster_0", "cluster_1"]


@pytest.mark.parametrize("case,lat,lon,message", [
    ("empty", [], [], "no photos"),
    ("identical", [41.9] * 30, [12.45] * 30, "share one coordinate"),
    ("too few", [41.9, 41.91, 41.92], [12.45, 12.46, 12.47], "fewer than --min-cluster-size"),
])
def test_bad_input_gives_a_message_and_valid_all_noise_files(tmp_path, case, lat, lon, message):
    catalog = write_catalog(tmp_path / "catalog", np.array(lat, dtype=float), np.array(lon, dtype=float))
    result = CliRunner().invoke(app, ["cells", "build", "--catalog", str(catalog), "--out", str(tmp_path / "cells")])
    assert result.exit_code == 0, result.output
    assert message in result.output and "Traceback" not in result.output
    coords, parquet = read_both(tmp_path / "cells", "hierarchical_clustered_coords")
    assert coords.columns == parquet.columns == ["path", "lat", "lon", *CLUSTERS]
    assert len(parquet) == len(lat) and (parquet.select(CLUSTERS).to_numpy() == -1).all()
    _, centroids = read_both(tmp_path / "cells", "hierarchical_cluster_centroids")
    assert len(centroids) == 0 and centroids.columns == [*CLUSTERS, "lat", "lon", "avg_dist"]
    _, structure = read_both(tmp_path / "cells", "hierarchical_structure")
    assert len(structure) == 1 and structure["children"][0].to_list() == []
    assert (CellIndex.load(tmp_path / "cells").assign([41.9], [12.45]) == -1).all()


def test_unusable_catalog_exits_2_with_the_reason(tmp_path):
    runner = CliRunner()
    result = runner.invoke(app, ["cells", "build", "--catalog", str(tmp_path), "--out", str(tmp_path / "cells")])
    assert result.exit_code == 2 and "catalog.parquet" in result.output
    write_catalog(tmp_path, np.array([10.0, 95.0]), np.array([0.0, 0.0]))
    result = runner.invoke(app, ["cells", "build", "--catalog", str(tmp_path), "--out", str(tmp_path / "cells")])
    assert result.exit_code == 2 and "impossible coordinates" in result.output
    result = runner.invoke(app, ["cells", "build", "--catalog", str(tmp_path), "--out", str(tmp_path / "cells"),
                                 "--min-cluster-size", "1"])
    assert result.exit_code == 2 and "--min-cluster-size" in result.output


def test_a_cell_whose_photos_cancel_out_is_centred_on_its_heaviest_coordinate():
    from geoloc.cells.hierarchy import centroids_and_spread

    vectors = to_unit_vectors([0.0, 0.0, 40.0, 41.0], [0.0, 180.0, 10.0, 10.0])
    lat, lon, avg_km, counts = centroids_and_spread(vectors, np.array([2, 2, 1, 1]), np.array([0, 0, 1, 1]))
    assert (lat[0], lon[0]) == (0.0, 0.0)  # antipodes of equal weight: the first
    assert avg_km[0] == pytest.approx(np.pi * EARTH_RADIUS_KM / 2)
    assert lat[1] == pytest.approx(40.5, abs=0.01) and counts.tolist() == [4, 2]
