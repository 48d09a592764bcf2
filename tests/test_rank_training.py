"""Training end to end on a tiny model: the loss goes down, the adapter it writes scores."""

import json
import tarfile
from pathlib import Path

import numpy as np
import polars as pl
import pytest
import torch
import yaml
from typer.testing import CliRunner

from geoloc.cli import app
from geoloc.rank.dryrun import build_tiny_qwen2_vl, random_photo
from geoloc.rank.losses import multi_order_distance_loss
from geoloc.rank.model import load_processor, load_reward_model
from geoloc.rank.photos import StorePhotos
from geoloc.rank.training import GeoRankingCollator, GeoRankingDataset, TrainConfig, read_georanking, train

GROUP = 3
ROOT = Path(__file__).resolve().parents[1]


def toy_georanking(folder, rng, rows: int = 2, references: int = 6) -> None:
    """GeoRanking rows whose references lie at growing distances from the query."""
    (folder / "photos").mkdir()
    table = {name: [] for name in ("img_id", "gps", "ref_gps", "ref_img_id", "ref_texts")}
    for row in range(rows):
        lat, lon = rng.uniform(-60, 60), rng.uniform(-170, 170)
        table["img_id"].append(f"q{row}.jpg")
        random_photo(rng, 28 * 2).save(folder / "photos" / f"q{row}.jpg")
        table["gps"].append([lat, lon])
        table["ref_gps"].append([[lat + 3 * k, lon - 2 * k] for k in range(references)])
        table["ref_img_id"].append([f"r{row}_{k}.jpg" for k in range(references)])
        texts = [["", "Paris", "", "France"] if k % 2 else ["Lima", "", "Peru"] for k in range(references)]
        table["ref_texts"].append(texts)
        for k in range(references):
            random_photo(rng, 56).save(folder / "photos" / f"r{row}_{k}.jpg")
    table["ref_gps"][1] = table["ref_gps"][1][::-1]  # nearest reference last: the order must be learnt per row
    pl.DataFrame(table).write_parquet(folder / "georanking.parquet")
    with tarfile.open(folder / "photos.tar", "w") as archive:  # MP16-Pro's layout: one top folder
        for photo in sorted((folder / "photos").iterdir()):
            archive.add(photo, arcname=f"mp16/{photo.name}")


def group_loss(model, config: TrainConfig) -> float:
    frame, _ = read_georanking(config.dataset, GROUP + 1)
    dataset = GeoRankingDataset(frame)
    collate = GeoRankingCollator(load_processor(config.base), StorePhotos(config.images), config)
    batch = collate([dataset[index] for index in range(len(dataset))])
    distances = batch.pop("distances")
    model.eval()
    with torch.no_grad():
        rewards = model(**batch).view(distances.shape)
    return multi_order_distance_loss(rewards, distances, config.top_k, config.first_order_weight).item()


def test_training_lowers_the_loss_and_writes_an_adapter_that_loads(tmp_path):
    rng = np.random.default_rng(0)
    base = build_tiny_qwen2_vl(tmp_path / "tiny")
    toy_georanking(tmp_path, rng)
    settings = {
        "base": str(base), "dataset": "georanking.parquet", "images": "photos.tar", "output": "run",
        "group_size": GROUP, "top_k": None, "negatives": 2, "first_order_weight": 0.5,
        "lora": {"rank": 4, "alpha": 8, "dropout": 0.0}, "gradient_checkpointing": True,
        "training": {"learning_rate": 0.02, "per_device_train_batch_size": 2, "max_steps": 12,
                     "logging_steps": 1, "seed": 0, "use_cpu": True},
    }
    (tmp_path / "ranker.yaml").write_text(yaml.safe_dump(settings))
    config = TrainConfig.from_yaml(tmp_path / "ranker.yaml")
    assert config.dataset == tmp_path / "georanking.parquet"

    torch.manual_seed(0)
    said = []
    result = train(config, say=said.append)
    assert said == [
        "effective batch size 2 queries (2 per device x 1 accumulation steps x 1 processes), 3 candidates each"
    ]
    assert result.rows == 2 and result.too_short_rows == 0 and len(result.losses) == 12
    assert pl.read_parquet(config.output / "images_index.parquet")["member"].str.starts_with("mp16/").all()
    assert np.mean(result.losses[-3:]) < np.mean(result.losses[:3])
    trained = load_reward_model(str(base), result.adapter)
    assert group_loss(trained, config) < result.losses[0]


def test_config_refuses_unknown_settings(tmp_path):
    with pytest.raises(ValueError, match="unknown setting.*group_sise"):
        TrainConfig.from_dict({"base": "b", "dataset": "d", "images": "i", "output": "o", "group_sise": 5})


def test_example_config_reads_and_names_an_existing_deepspeed_file():
    config = TrainConfig.from_yaml(ROOT / "examples" / "ranker.yaml")
    assert config.lora.rank == 16 and config.lora.alpha == 32 and config.lora.modules_to_save == ("value_head",)
    zero2 = json.loads(Path(config.training["deepspeed"]).read_text())
    assert zero2["zero_optimization"]["stage"] == 2


def test_cli_train_reports_a_bad_config_cleanly(tmp_path):
    (tmp_path / "ranker.yaml").write_text("base: b\ndataset: d.parquet\nimages: i\noutput: o\ngroup_sise: 3\n")
    result = CliRunner().invoke(app, ["ranker", "train", "--config", str(tmp_path / "ranker.yaml")])
    assert result.exit_code == 2 and "group_sise" in result.output
