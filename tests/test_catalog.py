"""`geoloc catalog build` on real data in each source's published layout."""

import os
import signal
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import polars as pl
import pytest
from datawriters import (
    gldv2_path,
    image_bytes,
    osv5m_row,
    photo,
    write_files,
    write_gldv2,
    write_mp16,
    write_osv5m,
    write_wwgeotag,
)
from typer.testing import CliRunner

from geoloc.catalog import QUARANTINE_REASONS, BuildOptions, CatalogError, build_catalog, open_store
from geoloc.catalog import scan as scan_module
from geoloc.cli import app

ROOT = Path(__file__).resolve().parents[1]
BERLIN, TOKYO = (52.516275, 13.377704), (35.658581, 139.745433)
LIMA, CAPE_TOWN = (-12.046374, -77.042793), (-33.9249, 18.4241)


def build(out: Path, sources, **options):
    return build_catalog(sources, out, BuildOptions(work_dir=out / ".work", workers=1, **options))


def read_outputs(out: Path) -> tuple[pl.DataFrame, pl.DataFrame]:
    return pl.read_parquet(out / "catalog.parquet"), pl.read_parquet(out / "quarantine.parquet")


def reasons(quarantine: pl.DataFrame) -> dict[str, str]:
    return dict(quarantine.select("image_id", "reason").iter_rows())


@pytest.fixture
def mp16(tmp_path) -> Path:
    root = tmp_path / "mp16"
    write_mp16(
        root,
        shards=[
            [("ba/08/1.jpg", photo(*BERLIN, seed=1)), ("ba/08/2.jpg", b"\xff\xd8 not really a jpeg")],
            [("cc/3.jpg", photo(*TOKYO, seed=3)), ("cc/4.jpg", photo(*TOKYO, seed=4)),
             ("cc/5.jpg", photo(*LIMA, seed=5)), ("cc/6.jpg", photo(*LIMA, seed=6)),
             ("cc/7.jpg", photo(*LIMA, seed=7))],
        ],
        metadata=[
            {"IMG_ID": "ba/08/1.jpg", "LAT": BERLIN[0], "LON": BERLIN[1], "city": "Berlin"},
            {"IMG_ID": "ba/08/2.jpg", "LAT": 1.0, "LON": 2.0, "city": "?"},
            {"IMG_ID": "cc/3.jpg", "LAT": 0.0, "LON": 0.0, "city": "nowhere"},
            {"IMG_ID": "cc/4.jpg", "LAT": 95.0, "LON": TOKYO[1], "city": "Tokyo"},
            {"IMG_ID": "cc/5.jpg", "LAT": LIMA[0], "LON": LIMA[1], "city": "Lima"},
            {"IMG_ID": "cc/5.jpg", "LAT": LIMA[0], "LON": LIMA[1], "city": "Lima again"},
            {"IMG_ID": "cc/7.jpg", "LAT": LIMA[0], "LON": LIMA[1], "city": "cut off"},
            {"IMG_ID": "gone.jpg", "LAT": LIMA[0], "LON": LIMA[1], "city": "Lima"},
        ],
        truncate_last=7,
    )
    return root


def test_mp16_keeps_good_rows_exactly_and_refuses_the_rest(mp16, tmp_path):
    out = tmp_path / "out"
    summary = build(out, [("mp16", mp16)])
    catalog, quarantine = read_outputs(out)
    assert catalog.select("image_id", "lat", "lon", "source", "city").rows() == [
        ("ba/08/1.jpg", *BERLIN, "mp16", "Berlin"), ("cc/5.jpg", *LIMA, "mp16", "Lima")]
    assert catalog["uri"].to_list() == ["shard_00000.msg#ba/08/1.jpg", "shard_00001.msg#cc/5.jpg"]
    unreadable_record = quarantine.filter(pl.col("image_id").str.starts_with("@"))["image_id"][0]
    assert reasons(quarantine) == {
        "ba/08/2.jpg": "corrupt_image", "cc/3.jpg": "null_island", "cc/4.jpg": "bad_coordinates",
        "cc/5.jpg": "duplicate", "cc/6.jpg": "missing_metadata", "cc/7.jpg": "missing_image",
        "gone.jpg": "missing_image", unreadable_record: "corrupt_image",
    }
    assert summary.kept == {"mp16": 2} and summary.total_refused == quarantine.height == 8
    store = open_store(out, "mp16")
    assert store.read_bytes(catalog["uri"][0]) == photo(*BERLIN, seed=1)
    assert pl.read_csv(out / "path_to_coords.csv").rows() == [
        ("shard_00000.msg#ba/08/1.jpg", *BERLIN), ("shard_00001.msg#cc/5.jpg", *LIMA)]


def test_gldv2_coordinates_come_from_the_landmark_table(tmp_path):
    root = tmp_path / "gldv2"
    root.mkdir()
    write_gldv2(root, {
        "abc0000000000001": (7, photo(*BERLIN, seed=11)),
        "abd0000000000002": (8, photo(*TOKYO, seed=12)),
        "fff0000000000003": (7, None),
        "0a10000000000004": (7, b"GIF89a broken"),
    }, {7: "Brandenburg_Gate", 8: "Tokyo_Tower"})
    coords = tmp_path / "coords.csv"
    pl.DataFrame({"landmark_id": [7, 9], "lat": [BERLIN[0], 1.0], "lon": [BERLIN[1], 2.0]}).write_csv(coords)
    out = tmp_path / "out"
    build(out, [("gldv2", root)], landmark_coords=coords)
    catalog, quarantine = read_outputs(out)
    assert catalog.select("image_id", "uri", "lat", "lon", "landmark_id").rows() == [
        ("abc0000000000001", gldv2_path("abc0000000000001"), *BERLIN, "7")]
    assert reasons(quarantine) == {"abd0000000000002": "unresolved_landmark", "fff0000000000003": "missing_image",
                                   "0a10000000000004": "corrupt_image"}


def test_gldv2_without_landmark_coordinates_is_a_clear_error(tmp_path):
    root = tmp_path / "gldv2"
    root.mkdir()
    write_gldv2(root, {"abc": (1, photo(*BERLIN))}, {1: "X"})
    with pytest.raises(CatalogError, match="--landmark-coords"):
        build(tmp_path / "out", [("gldv2", root)])


def test_wwgeotag_reads_gps_from_exif_and_ignores_the_side_files(tmp_path):
    root = tmp_path / "geotag"
    write_wwgeotag(root, {
        "1/a.jpg": photo(*TOKYO, seed=21),
        "1/sub/b.jpg": photo(*CAPE_TOWN, encoding="degrees", seed=22),
        "2/c.jpg": image_bytes(None),
        "2/d.jpg": b"truncated",
        "2/e.png": photo(*LIMA, fmt="PNG", seed=23),
    })
    out = tmp_path / "out"
    build(out, [("wwgeotag", root)])
    catalog, quarantine = read_outputs(out)
    kept = {row[0]: row[1:] for row in catalog.select("image_id", "lat", "lon").iter_rows()}
    assert kept.keys() == {"1/a.jpg", "1/sub/b.jpg", "2/e.png"}
    assert kept["1/sub/b.jpg"] == pytest.approx(CAPE_TOWN, abs=1e-6)
    assert reasons(quarantine) == {"2/c.jpg": "no_gps", "2/d.jpg": "corrupt_image"}


def test_photos_and_csv_sources_with_cross_source_dedupe(tmp_path):
    shared = photo(*BERLIN, seed=31)
    photos = tmp_path / "photos"
    write_files(photos, {"trip/x.jpg": shared, "trip/y.heic": photo(*TOKYO, fmt="HEIF", seed=32), "notes.txt": b"hi"})
    table_dir = tmp_path / "table"
    write_files(table_dir, {"img/p.jpg": shared, "img/q.jpg": photo(*LIMA, seed=33)})
    pl.DataFrame({"file": ["img/p.jpg", "img/q.jpg", "img/r.jpg"], "y": [1.0, LIMA[0], 3.0], "x": [2.0, LIMA[1], 4.0]}
                 ).write_csv(table_dir / "points.csv")
    out = tmp_path / "out"
    build(out, [("photos", photos), ("csv", table_dir / "points.csv")],
          csv_id_column="file", csv_lat_column="y", csv_lon_column="x")
    catalog, quarantine = read_outputs(out)
    assert catalog.select("image_id", "source").rows() == [("trip/x.jpg", "photos"), ("trip/y.heic", "photos"),
                                                          ("img/q.jpg", "csv")]
    assert quarantine.select("image_id", "reason", "detail").rows() == [
        ("img/p.jpg", "duplicate", "same bytes as photos:trip/x.jpg"), ("img/r.jpg", "missing_image", "no such file")]
    assert open_store(out, "csv").read_bytes("img/q.jpg") == photo(*LIMA, seed=33)


def test_every_quarantine_reason_is_documented_and_reachable(mp16, tmp_path):
    """Builds all the above at once: each reason in QUARANTINE_REASONS occurs, and nothing is lost."""
    gldv2 = tmp_path / "gldv2"
    gldv2.mkdir()
    write_gldv2(gldv2, {"abc": (1, photo(*BERLIN, seed=1))}, {1: "Same_bytes_as_mp16"})
    geotag = tmp_path / "geotag"
    write_wwgeotag(geotag, {"1/no.jpg": image_bytes(None), "1/kept.jpg": photo(*TOKYO, seed=99)})
    (geotag / "1" / "leak.jpg").symlink_to(mp16 / "shard_00000.msg")
    (geotag / "1" / os.fsdecode(b"\xff.jpg")).write_bytes(photo(*TOKYO, seed=98))
    coords = tmp_path / "coords.csv"
    pl.DataFrame({"landmark_id": [2], "lat": [1.0], "lon": [1.0]}).write_csv(coords)
    out = tmp_path / "out"
    summary = build(out, [("mp16", mp16), ("gldv2", gldv2), ("wwgeotag", geotag)], landmark_coords=coords)
    catalog, quarantine = read_outputs(out)
    assert set(quarantine["reason"]) == set(QUARANTINE_REASONS)
    candidates = 10 + 1 + 4
    assert catalog.height + quarantine.height == candidates
    assert sum(summary.kept.values()) + summary.total_refused == candidates


def test_rerun_is_idempotent_and_redoes_nothing(mp16, tmp_path, monkeypatch):
    out = tmp_path / "out"
    build(out, [("mp16", mp16)])
    first = (out / "catalog.parquet").read_bytes(), (out / "quarantine.parquet").read_bytes()
    monkeypatch.setattr("geoloc.catalog.sources.index_shard", lambda *a: pytest.fail("re-indexed a finished shard"))
    build(out, [("mp16", mp16)])
    assert ((out / "catalog.parquet").read_bytes(), (out / "quarantine.parquet").read_bytes()) == first


def test_a_killed_build_resumes_without_redoing_finished_chunks(tmp_path, monkeypatch):
    photos = tmp_path / "photos"
    count = 1500
    write_files(photos, {f"{n:05d}.jpg": photo(*TOKYO, seed=n) for n in range(count)})
    out = tmp_path / "out"
    script = (
        "import sys; from pathlib import Path; from geoloc.catalog import build_catalog, BuildOptions\n"
        "out = Path(sys.argv[2])\n"
        "build_catalog([('photos', Path(sys.argv[1]))], out, BuildOptions(out / '.work', workers=1, chunk_files=1))\n"
    )
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    process = subprocess.Popen([sys.executable, "-c", script, str(photos), str(out)], env=env,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    chunks = out / ".work" / "photos-files"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and process.poll() is None:
        if chunks.is_dir() and len(list(chunks.glob("*.parquet"))) >= 5:
            break
        time.sleep(0.01)
    process.send_signal(signal.SIGKILL)
    assert process.wait(timeout=30) == -signal.SIGKILL
    assert not (out / "catalog.parquet").exists()
    finished = len(list(chunks.glob("*.parquet")))
    assert 5 <= finished < count
    calls = []
    inspect = scan_module.inspect_files
    monkeypatch.setattr(scan_module, "inspect_files", lambda *a: calls.append(1) or inspect(*a))
    build_catalog([("photos", photos)], out, BuildOptions(out / ".work", workers=1, chunk_files=1))
    assert len(calls) == count - finished
    assert pl.read_parquet(out / "catalog.parquet").height == count


def test_parallel_scan_matches_the_sequential_one(tmp_path):
    photos = tmp_path / "photos"
    write_files(photos, {f"{n:03d}.jpg": photo(LIMA[0] + n / 1000, LIMA[1], seed=n) for n in range(40)})
    sequential = build(tmp_path / "one", [("photos", photos)], chunk_files=7)
    parallel = build_catalog([("photos", photos)], tmp_path / "two",
                             BuildOptions(tmp_path / "two" / ".work", workers=2, chunk_files=7))
    assert sequential == parallel
    first, second = (pl.read_parquet(tmp_path / run / "catalog.parquet") for run in ("one", "two"))
    assert first.equals(second)


def test_cli_build_prints_the_summary_and_refuses_bad_arguments(mp16, tmp_path):
    runner = CliRunner()
    result = runner.invoke(app, ["catalog", "build", "--source", f"mp16={mp16}", "--out", str(tmp_path / "out"),
                                 "--workers", "1"])
    assert result.exit_code == 0, result.output
    assert "missing_metadata" in result.output and "Kept" in result.output
    assert str(BERLIN[0]) not in result.output
    result = runner.invoke(app, ["catalog", "build", "--source", f"flickr={mp16}", "--out", str(tmp_path / "x")])
    assert result.exit_code == 2 and "KIND one of" in result.output
    result = runner.invoke(app, ["catalog", "build", "--source", f"wwgeotag={mp16}", "--out", str(tmp_path / "x")])
    assert result.exit_code == 2 and "numbered photo folders" in result.output


def test_uris_outside_the_root_are_quarantined_and_a_hash_is_a_file_name(tmp_path):
    outside = tmp_path / "elsewhere.jpg"
    outside.write_bytes(photo(*TOKYO, seed=41))
    table_dir = tmp_path / "table"
    write_files(table_dir, {"a#1.jpg": photo(*LIMA, seed=42), "img/b.jpg": photo(*BERLIN, seed=43)})
    (table_dir / "in.jpg").symlink_to(table_dir / "img" / "b.jpg")
    (table_dir / "out.jpg").symlink_to(outside)
    uris = ["a#1.jpg", "in.jpg", "../elsewhere.jpg", str(outside), "/etc/passwd", "out.jpg"]
    pl.DataFrame({"path": uris, "lat": [LIMA[0], BERLIN[0], 1.0, 2.0, 3.0, 4.0],
                  "lon": [LIMA[1], BERLIN[1], 1.0, 2.0, 3.0, 4.0]}).write_csv(table_dir / "points.csv")
    photos = tmp_path / "photos"
    write_files(photos, {"trip/c#2.jpg": photo(*CAPE_TOWN, seed=44)})
    (photos / "trip" / "leak.jpg").symlink_to(outside)
    out = tmp_path / "out"
    summary = build(out, [("csv", table_dir / "points.csv"), ("photos", photos)])
    catalog, quarantine = read_outputs(out)
    assert catalog.select("uri", "source").rows() == [("a#1.jpg", "csv"), ("in.jpg", "csv"),
                                                     ("trip/c#2.jpg", "photos")]
    refused = quarantine.filter(pl.col("reason") == "outside_root")
    assert refused.select("source", "uri").rows() == [("csv", "../elsewhere.jpg"), ("csv", str(outside)),
                                                      ("csv", "/etc/passwd"), ("csv", "out.jpg"),
                                                      ("photos", "trip/leak.jpg")]
    assert all(f"'{uri}'" in detail for uri, detail in refused.select("uri", "detail").iter_rows())
    assert summary.refused == {("csv", "outside_root"): 4, ("photos", "outside_root"): 1}
    assert open_store(out, "csv").read_bytes("a#1.jpg") == photo(*LIMA, seed=42)


def test_every_malformed_row_is_quarantined_with_its_reason_and_the_build_goes_on(tmp_path):
    """An empty path cell, a NUL byte, a coordinate that is no number, an empty IMG_ID, a file name that is
    not UTF-8: each row refused with its own reason and detail; the good rows are kept."""
    table = tmp_path / "table"
    write_files(table, {"a.jpg": photo(*LIMA, seed=61), "b.jpg": photo(*BERLIN, seed=62),
                        "c.jpg": photo(*TOKYO, seed=63)})
    (table / "points.csv").write_bytes(b"path,lat,lon\na.jpg,-12.05,-77.04\n,1,2\nb\x00.jpg,3,4\n"
                                       b"c.jpg,abc,139.7\nb.jpg,52.52, 13.38 \n")
    photos = tmp_path / "photos"
    write_files(photos, {"trip/ok.jpg": photo(*CAPE_TOWN, seed=64)})
    (photos / "trip" / os.fsdecode(b"caf\xe9.jpg")).write_bytes(photo(*TOKYO, seed=65))
    mp16 = tmp_path / "mp16"
    write_mp16(mp16, shards=[[("m/1.jpg", photo(*BERLIN, seed=66))]],
               metadata=[{"IMG_ID": "m/1.jpg", "LAT": "52.5", "LON": "east"}, {"IMG_ID": "", "LAT": 1, "LON": 2}])
    gldv2 = tmp_path / "gldv2"
    gldv2.mkdir()
    write_gldv2(gldv2, {"abc0000000000001": (7, photo(*BERLIN, seed=67)), "": (7, None)}, {7: "Gate"})
    coords = tmp_path / "coords.csv"
    pl.DataFrame({"landmark_id": [7], "lat": [BERLIN[0]], "lon": [BERLIN[1]]}).write_csv(coords)
    out = tmp_path / "out"
    summary = build(out, [("csv", table / "points.csv"), ("photos", photos), ("mp16", mp16), ("gldv2", gldv2)],
                    landmark_coords=coords)
    catalog, quarantine = read_outputs(out)
    assert catalog.select("source", "uri").rows() == [("csv", "a.jpg"), ("csv", "b.jpg"), ("photos", "trip/ok.jpg"),
                                                     ("gldv2", gldv2_path("abc0000000000001"))]
    assert sorted(quarantine.select("source", "uri", "reason", "detail").rows(), key=str) == sorted([
        ("csv", None, "bad_uri", "empty path cell"),
        ("csv", "b\x00.jpg", "bad_uri", "a NUL byte in the path"),
        ("csv", "c.jpg", "bad_coordinates", "lat 'abc' is not a number"),
        ("photos", "trip/caf\\xe9.jpg", "bad_uri", "file name is not valid UTF-8"),
        ("mp16", "shard_00000.msg#m/1.jpg", "bad_coordinates", "lon 'east' is not a number"),
        ("mp16", None, "bad_uri", "empty IMG_ID cell in MP16_Pro_places365.csv"),
        ("gldv2", None, "bad_uri", "empty id cell in train.csv"),
    ], key=str)
    assert summary.total_refused == 7 and set(quarantine["reason"]) <= set(QUARANTINE_REASONS)


def test_osv5m_is_read_in_place_from_its_zips_with_its_labels(tmp_path):
    root = tmp_path / "osv5m"
    paris, lima = (48.8566, 2.3522), (-12.0464, -77.0428)
    berlin_photo, lima_photo, deflated_photo = photo(*BERLIN, seed=11), photo(*LIMA, seed=12), photo(*paris, seed=13)
    zips = write_osv5m(root, "test", [
        [("1001.jpg", berlin_photo), ("1002.jpg", lima_photo), ("1004.jpg", photo(*TOKYO, seed=14))],
        [("1003.jpg", deflated_photo), ("9999.jpg", photo(*TOKYO, seed=15))],
        [],
    ], [
        osv5m_row("1001", *BERLIN, "DE", "Berlin", "Berlin"),
        osv5m_row("1002", *lima, "PE"),
        osv5m_row("1003", *paris, "FR", "Ile-de-France", "Paris"),
        osv5m_row("1004", *TOKYO, "JP"),
        osv5m_row("1005", *TOKYO, "JP"),
    ])
    with zipfile.ZipFile(zips[1], "w", compression=zipfile.ZIP_DEFLATED) as archive:  # deflated members read too
        archive.writestr("1003.jpg", deflated_photo)
        archive.writestr("9999.jpg", photo(*TOKYO, seed=15))
    corrupt = bytearray(zips[0].read_bytes())  # one byte of 1004.jpg's data flipped: its CRC no longer holds
    member = zipfile.ZipFile(zips[0]).getinfo("1004.jpg")
    corrupt[member.header_offset + 30 + len("1004.jpg") + 100] ^= 0xFF
    zips[0].write_bytes(bytes(corrupt))
    zips[2].write_bytes(b"PK\x03\x04 this zip was cut off")
    out = tmp_path / "out"

    summary = build(out, [("osv5m", root)], osv5m_split="test")

    catalog, quarantine = read_outputs(out)
    assert catalog.select("image_id", "uri", "lat", "lon", "unique_country", "unique_city").rows() == [
        ("1001", "images/test/00.zip#1001.jpg", *BERLIN, "DE", "Berlin_Berlin_DE"),
        ("1002", "images/test/00.zip#1002.jpg", *lima, "PE", "nan"),
        ("1003", "images/test/01.zip#1003.jpg", *paris, "FR", "Paris_Ile-de-France_FR"),
    ]
    assert {"unique_region", "unique_sub-region", "drive_side", "source"} <= set(catalog.columns)
    assert reasons(quarantine) == {"1004": "corrupt_image", "9999": "missing_metadata", "1005": "missing_image",
                                   "images/test/02.zip#@zip": "corrupt_image"}
    assert "CRC" in quarantine.filter(pl.col("image_id") == "1004")["detail"][0]
    assert summary.kept == {"osv5m": 3}
    store = open_store(out, "osv5m")
    assert [store.read_bytes(uri) for uri in catalog["uri"]] == [berlin_photo, lima_photo, deflated_photo]
    assert not any(path.suffix == ".jpg" for path in root.rglob("*"))  # nothing was unpacked


def test_osv5m_needs_its_layout_and_a_known_split(tmp_path):
    write_osv5m(tmp_path / "osv5m", "train", [[("1.jpg", photo(*BERLIN))]], [osv5m_row("1", *BERLIN, "DE")])
    with pytest.raises(CatalogError, match="test.csv and images/test/NN.zip"):
        build(tmp_path / "out", [("osv5m", tmp_path / "osv5m")], osv5m_split="test")
    with pytest.raises(CatalogError, match="--osv5m-split 'val'"):
        build(tmp_path / "out", [("osv5m", tmp_path / "osv5m")], osv5m_split="val")
    summary = build(tmp_path / "out", [("osv5m", tmp_path / "osv5m")])
    assert summary.kept == {"osv5m": 1}
