"""Recipes: the file (validation naming lines, paths relative to it) and the whole system in one process,
which must give, photo for photo, what the separate commands give run one after the other."""

import hashlib
import json
from collections import defaultdict
from pathlib import Path

import polars as pl
import pytest
from conftest import build_tiny_clip
from datawriters import photo, write_files
from test_serve import launched_browser, ready_page, serving
from test_zeroshot import SECRET, Reply, serve  # noqa: F401 (serve is a fixture)
from typer.testing import CliRunner

from geoloc.candidates import geoclip as geoclip_module
from geoloc.candidates.geoclip import geoclip_gallery
from geoloc.cli import app
from geoloc.recipe import RecipeError, load_recipe

ROOT = Path(__file__).resolve().parents[1]
CITIES = [(48.85, 2.29), (-33.85, 151.21), (35.65, 139.74), (40.71, -74.0)]
GALLERY = [(lat + 0.01 * k, lon - 0.01 * k) for lat, lon in CITIES for k in range(3)]
"""Three photos a city: the cells a classifier needs (HDBSCAN, three photos a cell at least)."""
QUERIES = [(48.0, 2.0), (-30.0, 150.0), (36.0, 140.0), (52.0, 0.0)]


@pytest.fixture(autouse=True)
def private_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.setenv("GEOLOC_API_KEY", SECRET)
    subset = geoclip_gallery()[::50][:2000]
    monkeypatch.setattr(geoclip_module, "geoclip_gallery", lambda: subset)


def invoke(*arguments: str):
    result = CliRunner().invoke(app, [str(argument) for argument in arguments])
    assert result.exit_code == 0, result.output + repr(result.exception)
    return result


def test_recipe_errors_name_the_line_and_paths_are_relative_to_the_file(tmp_path):
    recipe = tmp_path / "recipes" / "r.yaml"
    recipe.parent.mkdir()
    (tmp_path / "recipes" / "clip").mkdir()
    recipe.write_text("sources:\n  retrieval:\n    index: ../index\n    k: 0\n  geoclip:\n    backbone: clip\n"
                      "    colour: red\nranker:\n  kind: light\n  model: light\n")
    with pytest.raises(RecipeError) as raised:
        load_recipe(recipe)
    message = str(raised.value)
    assert f"{recipe}, line 4: sources.retrieval.k: Input should be greater than or equal to 1" in message
    assert f"{recipe}, line 7: sources.geoclip.colour: Extra inputs are not permitted" in message
    recipe.write_text("sources:\n  retrieval:\n    index: ../index\n    reverse: 3\n  geoclip:\n    backbone: clip\n"
                      "ranker:\n  kind: light\n  model: light\n  top: {retrieval: 3}\n")
    with pytest.raises(RecipeError) as raised:
        load_recipe(recipe)
    assert str(raised.value).splitlines() == [
        f"{recipe}, line 3: sources.retrieval.index: no such file or folder: {tmp_path / 'recipes' / '../index'} "
        "(paths are relative to the recipe)",
        f"{recipe}, line 9: ranker.model: no such file or folder: {tmp_path / 'recipes' / 'light'} (paths are "
        "relative to the recipe)"]
    (tmp_path / "index").mkdir()
    (tmp_path / "recipes" / "light").mkdir()
    loaded = load_recipe(recipe)
    assert loaded.sources.retrieval.index.resolve() == (tmp_path / "index").resolve()
    assert loaded.sources.geoclip.backbone == str(tmp_path / "recipes" / "clip")  # a folder beside it: a path
    assert loaded.ranker.model == tmp_path / "recipes" / "light"
    assert loaded.source_names() == ["retrieval", "geoclip"]
    recipe.write_text("sources:\n  zeroshot:\n    model: Qwen/Qwen2-VL-7B-Instruct\n    base_url: http://127.0.0.1:1/v1\n")
    assert load_recipe(recipe).sources.zeroshot.model == "Qwen/Qwen2-VL-7B-Instruct"  # a model's name, not a path
    recipe.write_text("sources:\n  geoclip:\n    backbone: openai/clip-vit-large-patch14\n  zeroshot:\n"
                      "    model: m\n    base_url: http://127.0.0.1:1/v1\n    rag: [5]\n")
    with pytest.raises(RecipeError, match="line 1: .*rag above 0 names retrieval and reverse neighbours"):
        load_recipe(recipe)
    recipe.write_text("sources:\n  geoclip: {}\n  plonk:\n    model: x\n")
    with pytest.raises(RecipeError, match="line 3: sources.plonk: PLONK is not a recipe source"):
        load_recipe(recipe)
    recipe.write_text("sources:\n  geoclip: {}\n  geoclip: {}\n")
    with pytest.raises(RecipeError, match="line 3: sources.geoclip is given twice"):
        load_recipe(recipe)


def test_the_examples_are_valid_recipes():
    examples = sorted((ROOT / "examples" / "recipes").glob("*.yaml"))
    assert [path.name for path in examples] == ["cpu-light.yaml", "geoclip.yaml", "georanker.yaml"]
    kinds = {path.name: load_recipe(path, check_paths=False).ranker.kind for path in examples}
    assert kinds == {"cpu-light.yaml": "light", "geoclip.yaml": "none", "georanker.yaml": "georanker"}


def answer_by_prompt(prompt: str) -> str:
    """The stand-in's answer depends on the words sent (a RAG prompt names the neighbours) and the choice."""
    digest = int(hashlib.sha256(prompt.encode()).hexdigest()[:6], 16)
    return f"latitude: {digest % 80 - 40}.{{i}}5, longitude: {digest % 300 - 150}.25"


@pytest.fixture
def world(tmp_path, tiny_clip, serve):  # noqa: F811
    """A gallery index, a GeoCLIP release trained on it, a light ranker, query photos (with EXIF, so they can
    be catalogued) and the endpoint."""
    from geoloc.rank.light import LightConfig, LightRanker, save_light_ranker

    write_files(tmp_path / "gallery", {f"g{n:02d}.jpg": photo(*where, seed=n) for n, where in enumerate(GALLERY)})
    write_files(tmp_path / "photos", {f"q{n}.jpg": photo(*where, seed=100 + n) for n, where in enumerate(QUERIES)})
    invoke("catalog", "build", "--source", f"photos={tmp_path / 'gallery'}", "--out", tmp_path / "gallery-catalog")
    invoke("embed", "--catalog", tmp_path / "gallery-catalog", "--backbone", tiny_clip, "--out",
           tmp_path / "gallery-embeddings", "--workers", "0", "--device", "cpu", "--batch-size", "2")
    invoke("index", "build", "--embeddings", tmp_path / "gallery-embeddings", "--catalog",
           tmp_path / "gallery-catalog", "--out", tmp_path / "index")
    save_light_ranker(LightRanker(LightConfig(dim=768, backbone=str(tiny_clip)), seed=5), tmp_path / "light")
    geoclip_clip = build_tiny_clip(tmp_path / "clip-224", image_size=224)  # GeoCLIP's training preprocessing
    invoke("embed", "--catalog", tmp_path / "gallery-catalog", "--backbone", geoclip_clip, "--features",
           "raw-geoclip-train", "--out", tmp_path / "raw-embeddings", "--workers", "0", "--device", "cpu")
    invoke("geoclip", "train", "--catalog", tmp_path / "gallery-catalog", "--embeddings", tmp_path / "raw-embeddings",
           "--out", tmp_path / "release", "--epochs", "1", "--batch-size", "4", "--queue-size", "8",
           "--sigmas", "1,16,256,4096")
    stand_in, base_url = serve(defaultdict(lambda: [Reply(content_for=answer_by_prompt)]))
    return tmp_path, base_url, stand_in


def recipe_text(base_url: str, classifier: str = "") -> str:
    return f"""\
sources:{classifier}
  geoclip:
    model: release            # on the backbone it records
    top_k: 3
  retrieval:
    index: index
    k: 4
    reverse: 3
  zeroshot:
    model: stand-in
    base_url: {base_url}
    preset: g3
    rag: [0, 2]
    samples: 2
    cache: recipe-answers.sqlite
ranker:
  kind: light
  model: light
  gallery_embeddings: gallery-embeddings
  gallery_table: index
  top: {{retrieval: 3, zeroshot: 4}}
region:
  share: 0.5
device: cpu
batch_size: 2
"""


def test_a_recipe_gives_what_the_separate_commands_give(world, tiny_clip):
    root, base_url, stand_in = world
    photos = root / "photos"
    invoke("cells", "build", "--catalog", root / "gallery-catalog", "--out", root / "cells", "--min-cluster-size", "3",
           "--levels", "2")
    invoke("classifier", "train", "--cells", root / "cells", "--embeddings", root / "gallery-embeddings", "--catalog",
           root / "gallery-catalog", "--out", root / "classifier", "--epochs", "1", "--batch-size", "8", "--hidden",
           "16")
    # By hand, one command after the other, files between them.
    invoke("candidates", "geoclip", photos, "--model", root / "release", "--top-k", "3", "--out",
           root / "geoclip.parquet", "--device", "cpu", "--batch-size", "2")
    invoke("retrieve", photos, "--index", root / "index", "--k", "4", "--reverse", "3", "--out",
           root / "neighbours.parquet", "--device", "cpu", "--batch-size", "2")
    invoke("candidates", "zeroshot", photos, "--model", "stand-in", "--base-url", base_url, "--preset", "g3",
           "--samples", "2", "--neighbours", root / "neighbours.parquet", "--rag", "0", "--rag", "2", "--out",
           root / "answers.parquet", "--cache", root / "by-hand.sqlite")
    invoke("catalog", "build", "--source", f"photos={photos}", "--out", root / "query-catalog")
    invoke("embed", "--catalog", root / "query-catalog", "--backbone", tiny_clip, "--out", root / "query-embeddings",
           "--workers", "0", "--device", "cpu", "--batch-size", "2")
    invoke("classifier", "predict", "--model", root / "classifier", "--embeddings", root / "query-embeddings",
           "--top-k", "2", "--nearest", "2", "--out", root / "classifier.parquet")
    invoke("candidates", "compile", "--candidates", root / "geoclip.parquet", "--candidates",
           root / "neighbours.parquet", "--candidates", root / "classifier.parquet", "--zeroshot",
           root / "answers.parquet", "--out", root / "candidates.parquet")
    invoke("ranker", "score", "--candidates", root / "candidates.parquet", "--adapter", root / "light",
           "--query-embeddings", root / "query-embeddings", "--gallery-embeddings", root / "gallery-embeddings",
           "--gallery-table", root / "index", "--top", "retrieval=3", "--top", "zeroshot=4",
           "--out", root / "by-hand.parquet")
    asked_by_hand = len(stand_in.requests)

    # The recipe, in one process.
    recipe = root / "recipe.yaml"
    recipe.write_text(recipe_text(base_url, "\n  classifier: {model: classifier, top_k: 2, nearest: 2}"))
    result = invoke("predict", "--recipe", recipe, photos, "--json", "--out", root / "recipe.parquet",
                    "--map", root / "map.html")
    assert len(stand_in.requests) == 2 * asked_by_hand, "the recipe asks the endpoint itself (its own cache)"
    answers = [json.loads(line) for line in result.stdout.splitlines() if line.startswith("{")]
    assert [Path(answer["image"]).name for answer in answers] == ["q0.jpg", "q1.jpg", "q2.jpg", "q3.jpg"]

    by_hand = pl.read_parquet(root / "candidates.parquet")
    assert set(by_hand["source"]) == {"geoclip", "retrieval", "reverse", "classifier", "zeroshot"}
    ours = pl.DataFrame([{"query_id": Path(answer["image"]).name, **candidate} for answer in answers
                         for candidate in answer["candidates"]])
    columns = ["query_id", "source", "rank", "lat", "lon", "score"]
    assert ours.select(columns).equals(by_hand.select(columns).with_columns(pl.col("rank").cast(pl.Int64)))

    expected = pl.read_parquet(root / "by-hand.parquet").sort("image_id")
    got = pl.read_parquet(root / "recipe.parquet").sort("image_id")
    assert got.select("image_id", "lat", "lon").equals(expected.select("image_id", "lat", "lon"))
    assert got["score"].to_list() == pytest.approx(expected["score"].to_list(), rel=1e-5)
    for answer in answers:
        chosen = [c for c in answer["candidates"] if (c["lat"], c["lon"]) == (answer["lat"], answer["lon"])]
        assert chosen and answer["source"] == chosen[0]["source"] and answer["place"]
        assert answer["radius_km"] >= 0 and answer["exif"] is not None
    # `geoloc run`, the batch form, gives the same predictions.
    invoke("run", recipe, "--photos", photos, "--out", root / "run.parquet")
    ran = pl.read_parquet(root / "run.parquet").sort("image_id")
    assert ran.select("image_id", "lat", "lon").equals(expected.select("image_id", "lat", "lon"))
    assert ran["score"].to_list() == pytest.approx(expected["score"].to_list(), rel=1e-5)
    # The map draws every source's candidates in its colour.
    page = (root / "map.html").read_text()
    for colour in ("#3182bd", "#e6550d", "#756bb1", "#31a354", "#d6616b"):
        assert f'"colour":"{colour}"' in page


def test_predict_recipe_out_resumes(world, tiny_clip, monkeypatch):
    from geoloc.recipe import engine

    root, base_url, stand_in = world
    recipe = root / "recipe.yaml"
    recipe.write_text(recipe_text(base_url))
    out = root / "recipe.parquet"
    calls = []
    answer = engine.RecipeEngine.answer

    def dies_at_the_second_batch(self, photos, *rest):
        calls.append(len(photos))
        if len(calls) == 2:
            raise KeyboardInterrupt
        return answer(self, photos, *rest)

    monkeypatch.setattr(engine.RecipeEngine, "answer", dies_at_the_second_batch)
    result = CliRunner().invoke(app, ["predict", "--recipe", str(recipe), str(root / "photos"), "--out", str(out),
                                      "--part-photos", "2"])
    assert result.exit_code != 0 and not out.exists()
    monkeypatch.setattr(engine.RecipeEngine, "answer", answer)
    result = invoke("predict", "--recipe", recipe, root / "photos", "--out", out, "--part-photos", "2")
    assert "resuming: 2 photo(s) already answered" in result.stderr
    assert pl.read_parquet(out)["image_id"].sort().to_list() == ["q0.jpg", "q1.jpg", "q2.jpg", "q3.jpg"]


def test_run_reruns_only_what_changed(world, tiny_clip):
    root, base_url, stand_in = world
    recipe = root / "recipe.yaml"
    text = recipe_text(base_url)
    recipe.write_text(text)
    truth = root / "truth.csv"
    truth.write_text("image_id,lat,lon\n" + "".join(f"q{n}.jpg,{lat},{lon}\n" for n, (lat, lon) in enumerate(QUERIES)))

    def run() -> tuple[str, dict]:
        result = invoke("run", recipe, "--photos", root / "photos", "--truth", truth)
        return result.stdout.split("ran: ")[1].split(";")[0], json.loads(result.stdout.splitlines()[-1])

    ran, metrics = run()
    assert ran == "geoclip, retrieval, zeroshot, embed, ranking" and (metrics["n"], metrics["missing"]) == (4, 0)
    assert (root / "recipe.work" / "predictions.evaluation.json").is_file()
    assert run()[0] == "nothing"
    asked = len(stand_in.requests)
    recipe.write_text(text.replace("top: {retrieval: 3, zeroshot: 4}", "top: {retrieval: 2, zeroshot: 6}"))
    assert run()[0] == "ranking"
    recipe.write_text(text.replace("k: 4", "k: 5"))  # retrieval changes, and the RAG prompts that name it
    assert run()[0] == "retrieval, zeroshot, ranking"
    assert len(stand_in.requests) == asked, "RAG at K=2 names the same first neighbours: the answer cache serves"


def test_serve_answers_through_the_recipe_over_http_and_in_the_browser(world, tiny_clip, tmp_path):
    import httpx

    from geoloc.cli.serve import _recipe_guesser
    from geoloc.serve import ServeSettings, create_app

    root, base_url, stand_in = world
    recipe = root / "recipe.yaml"
    recipe.write_text(recipe_text(base_url))
    result = invoke("predict", "--recipe", recipe, root / "photos", "--json")
    by_hand = {Path(answer["image"]).name: answer for answer in map(json.loads, result.stdout.splitlines())}
    (root / "recipe-answers.sqlite").unlink()
    settings, load = _recipe_guesser(recipe, ServeSettings(tiles=None))
    assert settings.sources == ("geoclip", "retrieval", "zeroshot") and settings.photo_leaves_for == (base_url,)
    with serving(create_app(load, settings)) as port:
        url = f"http://127.0.0.1:{port}"
        with httpx.Client(base_url=url, timeout=60) as client:
            while client.get("/api/health").status_code != 200:
                pass
            for name, expected in by_hand.items():
                answer = client.post("/api/predict", files={"photo": (root / "photos" / name).read_bytes()}).json()
                assert (answer["lat"], answer["lon"], answer["source"]) == (expected["lat"], expected["lon"],
                                                                            expected["source"])
                keys = ("source", "rank", "lat", "lon", "place")
                assert [[c[k] for k in keys] for c in answer["candidates"]] == \
                    [[c[k] for k in keys] for c in expected["candidates"]]
                assert answer["region"] and answer["region_bounds"]
        assert not (root / "recipe-answers.sqlite").exists(), "the app keeps the endpoint's answers in memory"
        with launched_browser() as browser:  # after predict: Playwright runs an event loop in this thread
            page, problems = ready_page(browser, url)
            note = page.inner_text("#recipe-note")
            assert "leaves this machine" in note and base_url in note
            page.set_input_files("#photo", str(root / "photos" / "q0.jpg"))
            page.wait_for_selector(".guess-marker", timeout=30_000)
            expected = by_hand["q0.jpg"]
            assert page.locator(".alternative-marker").count() == len(expected["candidates"])
            for source in ("geoclip", "retrieval", "reverse", "zeroshot"):
                assert page.locator(f".source-{source}").count() == sum(c["source"] == source
                                                                         for c in expected["candidates"])
            assert f"chosen from {expected['source']}" in page.inner_text("#coordinates")
            page.screenshot(path=str(tmp_path / "recipe-page.png"))
            assert (tmp_path / "recipe-page.png").stat().st_size > 10_000
            assert problems == []
            page.close()


def test_a_recipe_with_georanker_gives_what_ranker_score_gives(world, tiny_clip):
    import torch

    from geoloc.rank.dryrun import build_tiny_qwen2_vl
    from geoloc.rank.model import LoraSettings, new_reward_model, save_adapter

    root, base_url, _ = world
    base = build_tiny_qwen2_vl(root / "base")
    torch.manual_seed(3)
    model = new_reward_model(str(base), LoraSettings(rank=4, alpha=8))
    with torch.no_grad():
        for parameter in model.parameters():
            if parameter.requires_grad:
                parameter.normal_(std=0.5)  # far from the initial values, so rewards differ
    save_adapter(model, root / "adapter")
    photos = root / "photos"
    invoke("retrieve", photos, "--index", root / "index", "--k", "3", "--reverse", "2", "--out",
           root / "neighbours.parquet", "--device", "cpu")
    invoke("candidates", "zeroshot", photos, "--model", "stand-in", "--base-url", base_url, "--samples", "2",
           "--out", root / "answers.parquet", "--cache", root / "by-hand.sqlite")
    invoke("candidates", "compile", "--candidates", root / "neighbours.parquet", "--zeroshot",
           root / "answers.parquet", "--out", root / "candidates.parquet")
    invoke("ranker", "score", "--candidates", root / "candidates.parquet", "--images", photos, "--gallery",
           root / "gallery", "--adapter", root / "adapter", "--base", base, "--top", "retrieval=2", "--top",
           "zeroshot=2", "--top", "reverse=0", "--negatives", "1", "--device", "cpu", "--out", root / "by-hand.parquet")
    recipe = root / "georanker.yaml"
    recipe.write_text(f"""\
sources:
  retrieval: {{index: index, k: 3, reverse: 2}}
  zeroshot: {{model: stand-in, base_url: {base_url}, samples: 2, cache: recipe.sqlite}}
ranker:
  kind: georanker
  adapter: adapter
  base: base
  gallery: gallery
  top: {{retrieval: 2, zeroshot: 2, reverse: 0}}
  negatives: 1
device: cpu
batch_size: 2
""")
    invoke("predict", "--recipe", recipe, photos, "--out", root / "recipe.parquet")
    expected = pl.read_parquet(root / "by-hand.parquet").sort("image_id")
    got = pl.read_parquet(root / "recipe.parquet").sort("image_id")
    assert got.select("image_id", "lat", "lon").equals(expected.select("image_id", "lat", "lon"))
    assert got["score"].to_list() == pytest.approx(expected["score"].to_list(), rel=1e-4)
    assert expected["score"].n_unique() == 4, "the rewards differ from photo to photo"
