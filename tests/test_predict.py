"""GeoCLIP through our code against the `geoclip` package itself, and `geoloc predict` end to end."""

import json
import shutil
import time
from pathlib import Path

import numpy as np
import polars as pl
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from geoloc.candidates import geoclip as geoclip_module
from geoloc.candidates.geoclip import GeoClip, geoclip_gallery
from geoloc.cli import app
from geoloc.encode.backbone import BackboneUnavailable
from geoloc.encode.loading import load_backbone
from geoloc.evaluate import evaluate_files
from geoloc.places.land import sea_flags

ROOT = Path(__file__).resolve().parents[1]
GALLERY_SUBSET = 2000


@pytest.fixture(autouse=True)
def private_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))


@pytest.fixture
def small_gallery(monkeypatch):
    """Every 50th point of GeoCLIP's real gallery: the same heads and math, a fiftieth of the work."""
    subset = geoclip_gallery()[::50][:GALLERY_SUBSET]
    monkeypatch.setattr(geoclip_module, "geoclip_gallery", lambda: subset)
    return subset


def noisy_photo(path: Path, seed: int, exif_gps: tuple[float, float] | None = None) -> Path:
    pixels = (np.random.default_rng(seed).random((96, 128, 3)) * 255).astype(np.uint8)
    image = Image.fromarray(pixels)
    exif = Image.Exif()
    if exif_gps is not None:
        lat, lon = exif_gps
        gps = exif.get_ifd(0x8825)
        gps[1], gps[2] = ("N" if lat >= 0 else "S"), (abs(lat), 0.0, 0.0)
        gps[3], gps[4] = ("E" if lon >= 0 else "W"), (abs(lon), 0.0, 0.0)
    image.save(path, format="JPEG", quality=95, exif=exif)
    return path


def test_same_top_k_as_the_geoclip_package(tiny_clip, small_gallery, tmp_path):
    from geoclip import GeoCLIP

    package = GeoCLIP(from_pretrained=True, clip_path=str(tiny_clip))
    package.gps_gallery = torch.from_numpy(small_gallery)
    ours = GeoClip(load_backbone(str(tiny_clip), device="cpu"))
    photos = [noisy_photo(tmp_path / f"{i}.jpg", seed=i) for i in range(3)]
    with torch.inference_mode():
        expected = [package.predict(str(photo), top_k=5) for photo in photos]
    images = [Image.open(photo) for photo in photos]
    guesses = ours.top_k(ours.backbone.pixel_values(images), 5)
    for row, (coordinates, probabilities) in enumerate(expected):
        np.testing.assert_array_equal(guesses.coordinates[row], coordinates.numpy())
        np.testing.assert_allclose(guesses.probabilities[row], probabilities.numpy(), rtol=1e-5, atol=1e-7)
    assert np.all(guesses.radius_km >= 0)
    # The gallery features went to the cache: a second model reads them back identically.
    again = GeoClip(load_backbone(str(tiny_clip), device="cpu"))
    assert torch.equal(again.location_features, ours.location_features)


def test_predict_end_to_end(tiny_clip, small_gallery, tmp_path):
    folder = tmp_path / "photos"
    folder.mkdir()
    noisy_photo(folder / "plain.jpg", seed=7)
    noisy_photo(folder / "tagged.jpg", seed=7, exif_gps=(-33.5, 151.25))
    (folder / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not a JPEG at all")
    out, page = tmp_path / "predictions.parquet", tmp_path / "map.html"
    truth = tmp_path / "truth.csv"
    truth.write_text("image_id,lat,lon\nplain.jpg,0,0\ntagged.jpg,-33.5,151.25\nbroken.jpg,1,1\n")
    result = CliRunner().invoke(app, ["predict", str(folder), "--backbone", str(tiny_clip), "--top-k", "3",
                                      "--json", "--out", str(out), "--map", str(page), "--truth", str(truth),
                                      "--device", "cpu"])
    assert result.exit_code == 0, result.output
    lines = [json.loads(line) for line in result.stdout.splitlines() if line.startswith("{")]
    assert [Path(line["image"]).name for line in lines] == ["plain.jpg", "tagged.jpg"]
    plain, tagged = lines
    assert set(plain) == {"image", "lat", "lon", "place", "radius_km", "candidates", "exif", "at_sea"}
    expected_sea = sea_flags([plain["lat"]], [plain["lon"]])
    assert plain["at_sea"] == (None if expected_sea is None else bool(expected_sea[0]))
    assert len(plain["candidates"]) == 3
    assert set(plain["candidates"][0]) == {"lat", "lon", "prob", "place"}
    assert plain["candidates"][0]["prob"] >= plain["candidates"][1]["prob"] >= plain["candidates"][2]["prob"]
    assert (plain["lat"], plain["lon"]) == (plain["candidates"][0]["lat"], plain["candidates"][0]["lon"])
    assert plain["place"] and plain["exif"] is None
    # EXIF GPS is reported beside the guess and never used to make it: same pixels, same guess.
    assert tagged["exif"] == {"lat": pytest.approx(-33.5), "lon": pytest.approx(151.25)}
    assert tagged["candidates"] == plain["candidates"]
    assert "broken.jpg" in result.stderr
    table = pl.read_parquet(out)
    assert table.columns == ["image_id", "lat", "lon", "score", "at_sea"] and table.height == 2
    assert evaluate_files(out, truth).metrics["missing"] == 1
    # The map is one self-contained file: Leaflet, the outline and the data inlined, no tiles.
    html = page.read_text()
    assert "<script src" not in html and "<link" not in html and "tile.openstreetmap" not in html
    assert '"image":"' + str(folder / "tagged.jpg") + '"' in html and '"error_km":' in html
    assert '"FeatureCollection"' in html and "L.map(" in html


def test_geoclip_candidates_follow_the_schema(tiny_clip, small_gallery, tmp_path):
    photo = noisy_photo(tmp_path / "a.jpg", seed=3)
    out = tmp_path / "geoclip.parquet"
    result = CliRunner().invoke(app, ["candidates", "geoclip", str(photo), "--backbone", str(tiny_clip),
                                      "--top-k", "4", "--out", str(out), "--device", "cpu"])
    assert result.exit_code == 0, result.output
    table = pl.read_parquet(out)
    assert table["source"].unique().to_list() == ["geoclip"]
    assert table["rank"].to_list() == [0, 1, 2, 3]
    assert table["query_id"].unique().to_list() == ["a.jpg"]


def test_missing_backbone_says_what_is_missing_and_what_to_do(tmp_path, monkeypatch, tiny_clip):
    import huggingface_hub.constants

    # As HF_HUB_OFFLINE=1 would, had it been set before huggingface_hub was imported.
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(BackboneUnavailable, match="not a local folder.*pass --backbone DIR"):
        load_backbone("nobody/no-such-clip", device="cpu")
    partial = tmp_path / "partial"
    shutil.copytree(tiny_clip, partial)
    (partial / "model.safetensors").unlink()
    with pytest.raises(BackboneUnavailable, match="lacks model.safetensors or pytorch_model.bin"):
        load_backbone(str(partial), device="cpu")
    result = CliRunner().invoke(app, ["predict", str(ROOT / "examples" / "kauai.jpg"), "--backbone",
                                      "nobody/no-such-clip"])
    assert result.exit_code == 2 and "pass --backbone DIR" in result.stderr


def test_predict_out_resumes_after_an_interruption_and_refuses_other_settings(tiny_clip, small_gallery, tmp_path,
                                                                             monkeypatch):
    from geoloc import predict as predict_module
    from geoloc.resumable import work_folder

    folder = tmp_path / "photos"
    folder.mkdir()
    for seed in range(6):
        noisy_photo(folder / f"{seed}.jpg", seed=seed, exif_gps=(10.0 + seed, 20.0) if seed % 2 else None)
    (folder / "3b-broken.jpg").write_bytes(b"not a photo")

    def predict(out: Path, *extra: str):
        return CliRunner().invoke(app, ["predict", str(folder), "--backbone", str(tiny_clip), "--json", "--out",
                                        str(out), "--batch-size", "2", "--part-photos", "2", "--device", "cpu",
                                        *extra])

    whole = predict(tmp_path / "whole.geojson")
    assert whole.exit_code == 0, whole.output
    out = tmp_path / "resumed.geojson"
    batches = []
    guess_images = predict_module.guess_images

    def dies_at_the_third_batch(*arguments):
        batches.append(1)
        if len(batches) == 3:
            raise KeyboardInterrupt
        return guess_images(*arguments)

    monkeypatch.setattr(predict_module, "guess_images", dies_at_the_third_batch)
    assert predict(out).exit_code != 0
    assert not out.exists() and len(list(work_folder(out).glob("part-*.parquet"))) == 2

    refused = predict(out, "--top-k", "3")
    assert refused.exit_code == 2 and "different top_k" in refused.output and "--restart" in refused.output

    batches.clear()
    resumed = predict(out)
    assert resumed.exit_code == 0, resumed.output
    assert len(batches) == 2  # photos 4-7 only: 4 of 7 were answered (the broken one among them)
    assert "resuming: 4 photo(s) already answered" in resumed.stderr
    assert "3b-broken.jpg" in resumed.stderr.replace("\n", "")
    assert not work_folder(out).exists()
    # The kept answers come back exactly; those computed again match to float32 rounding (a model's CPU
    # kernels need not give the last bit alike for one photo after a different history of batches).
    expected, got = (json.loads(path.read_text())["features"] for path in (tmp_path / "whole.geojson", out))
    assert got[:4] == expected[:4] and len(got) == len(expected) == 6
    for mine, theirs in zip(got[4:], expected[4:]):
        assert mine["geometry"] == theirs["geometry"]
        assert [c["place"] for c in mine["properties"]["candidates"]] == \
            [c["place"] for c in theirs["properties"]["candidates"]]
        assert [c["prob"] for c in mine["properties"]["candidates"]] == \
            pytest.approx([c["prob"] for c in theirs["properties"]["candidates"]], rel=1e-5)
    assert [line for line in resumed.stdout.splitlines() if line.startswith("{")][:4] == \
        [line for line in whole.stdout.splitlines() if line.startswith("{")][:4]


@pytest.fixture
def confident_geoclip(monkeypatch):
    """GeoCLIP's real heads with a logit scale so large that the best gallery point holds all the belief."""
    real_heads = geoclip_module.GeoClipHeads.from_package

    def sure_of_itself():
        heads = real_heads()
        heads.logit_scale = torch.tensor(40.0)
        return heads

    monkeypatch.setattr(geoclip_module.GeoClipHeads, "from_package", staticmethod(sure_of_itself))


def test_a_confident_model_gets_a_small_region_on_the_map_and_from_serve(tiny_clip, small_gallery,
                                                                         confident_geoclip, tmp_path):
    from fastapi.testclient import TestClient

    from geoloc.predict import guess_images
    from geoloc.serve import ServeSettings, create_app

    photo = noisy_photo(tmp_path / "a.jpg", seed=5)
    out, page = tmp_path / "predictions.csv", tmp_path / "map.html"
    result = CliRunner().invoke(app, ["predict", str(photo), "--backbone", str(tiny_clip), "--json", "--out",
                                      str(out), "--map", str(page), "--device", "cpu"])
    assert result.exit_code == 0, result.output
    (answer,) = [json.loads(line) for line in result.stdout.splitlines() if line.startswith("{")]
    assert answer["radius_km"] == 0 and answer["candidates"][0]["prob"] > 0.99
    assert '"region":[[[' in page.read_text() and out.is_file()

    geoclip = GeoClip(load_backbone(str(tiny_clip), device="cpu"))
    with TestClient(create_app(lambda: lambda photos: guess_images(photos, geoclip, 3), ServeSettings(tiles=None)),
                    base_url="http://127.0.0.1:8000") as client:
        deadline = time.monotonic() + 30
        while client.get("/api/health").status_code != 200:
            assert time.monotonic() < deadline, "the model never became ready"
            time.sleep(0.05)
        served = client.post("/api/predict", files={"photo": ("a.jpg", photo.read_bytes())})
    assert served.status_code == 200, served.text
    (south, _), (north, _) = served.json()["region_bounds"]
    assert served.json()["radius_km"] == 0 and 0 < north - south < 0.1


def test_two_photos_with_one_id_are_refused_and_answers_follow_positions(tiny_clip, small_gallery, tmp_path):
    from geoloc.images import Photo, find_photos
    from geoloc.predict import PhotoGuess, Unreadable, guess_photos

    for folder in ("a", "b"):
        (tmp_path / folder).mkdir()
    (tmp_path / "a" / "x.jpg").write_bytes(b"\xff\xd8 not a photo")
    noisy_photo(tmp_path / "b" / "x.jpg", seed=1)
    noisy_photo(tmp_path / "b" / "y.jpg", seed=2)
    result = CliRunner().invoke(app, ["predict", str(tmp_path / "a"), str(tmp_path / "b"), "--backbone",
                                      str(tiny_clip), "--device", "cpu"])
    assert result.exit_code == 2
    message = " ".join(result.stderr.split())
    assert str(tmp_path / "a" / "x.jpg") in message and str(tmp_path / "b" / "x.jpg") in message
    assert "'x.jpg'" in message and "common parent folder" in message
    # Their common parent gives distinct ids; a file named twice is one photo.
    assert [p.query_id for p in find_photos([tmp_path, tmp_path / "b" / "y.jpg", tmp_path / "b" / "y.jpg"])] \
        == ["a/x.jpg", "b/x.jpg", "b/y.jpg", "y.jpg"]

    # Photos that do share an id (built by hand) still get their own answers, in their order.
    geoclip = GeoClip(load_backbone(str(tiny_clip), device="cpu"))
    photos = [Photo("x.jpg", tmp_path / "a" / "x.jpg"), Photo("x.jpg", tmp_path / "b" / "x.jpg"),
              Photo("y.jpg", tmp_path / "b" / "y.jpg")]
    unreadable, readable, other = guess_photos(photos, geoclip, top_k=2)
    assert isinstance(unreadable, Unreadable) and unreadable.image == str(tmp_path / "a" / "x.jpg")
    assert isinstance(readable, PhotoGuess) and readable.image == str(tmp_path / "b" / "x.jpg")
    assert isinstance(other, PhotoGuess) and other.image == str(tmp_path / "b" / "y.jpg")
