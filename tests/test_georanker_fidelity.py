"""`geoloc ranker score`, by default, equals GeoRanker's evaluate.py on the same raw files.

The reference below follows evaluate.py's documented steps, written here independently:
the query photo named by a `file://` path, each gallery photo read from MP16-Pro's tar
through `tar_index.pkl`, saved as JPEG by Pillow and passed as a base64 data URL, all of
them sized by `qwen_vl_utils.process_vision_info`; the prompts with their fixed
separators; the first 10 retrieval and 5 zero-shot candidates; batches of 4 messages over
the whole file, padded on the left. Our side is `geoloc ranker score` itself, with the
same weights saved as an adapter: what is compared is everything that reaches the model.
"""

import ast
import base64
import csv
import io
import pickle
import tarfile
from dataclasses import dataclass, field

import numpy as np
import polars as pl
import pytest
from datawriters import write_georanker_csv
from PIL import Image
from typer.testing import CliRunner

from geoloc.cli import app
from geoloc.rank.model import save_adapter
from geoloc.rank.prompts import render
from geoloc.rank.scoring import RewardScorer

QUERIES = {"1_q.jpg": (45, 70), "2_q.jpg": (61, 100)}  # (height, width): no side a multiple of 28
TOP, TOP_ZS, BATCH = 10, 5, 4


def textured_photo(rng, height: int, width: int, mode: str = "RGB") -> Image.Image:
    """Smooth colour gradients plus noise: JPEG re-encoding changes such pixels the way it changes photos."""
    y, x = np.mgrid[0:height, 0:width]
    base = np.stack([x * 255 / width, y * 255 / height, (x + y) * 127 / (width + height)], axis=-1)
    pixels = np.clip(base + rng.normal(0, 25, base.shape), 0, 255).astype(np.uint8)
    return Image.fromarray(pixels).convert(mode)


@pytest.fixture(scope="module")
def published_files(tmp_path_factory):
    """What a GeoRanker user holds: benchmark photos, MP16-Pro's tar and tar_index.pkl, the compiled CSV."""
    root = tmp_path_factory.mktemp("georanker")
    rng = np.random.default_rng(7)
    (root / "im2gps3ktest").mkdir()
    for name, (height, width) in QUERIES.items():
        textured_photo(rng, height, width).save(root / "im2gps3ktest" / name, quality=95)
    sizes = [(56, 56), (57, 90), (100, 75), (84, 112), (40, 160)]
    rows = []
    with tarfile.open(root / "mp-16-images.tar", "w") as archive:
        for query_number, query in enumerate(QUERIES):
            ids, gps, texts = [], [], []
            for j in range(20):
                height, width = sizes[j % len(sizes)]
                photo = textured_photo(rng, height, width, "L" if j == 3 else "RGB")
                encoded = io.BytesIO()
                photo.save(encoded, format="JPEG", quality=92)
                image_id = f"{query_number:02d}/{j:02d}/{1000 * query_number + j}.jpg"
                info = tarfile.TarInfo(f"mp16/{image_id}")
                info.size = len(encoded.getvalue())
                archive.addfile(info, io.BytesIO(encoded.getvalue()))
                ids.append(image_id)
                gps.append((round(float(rng.uniform(-60, 70)), 4), round(float(rng.uniform(-180, 180)), 4)))
                texts.append(["", f"City{j}", "", f"State{j}" if j % 2 else "", "", "Country" if j % 5 else ""])
            answers = [(round(float(rng.uniform(-60, 70)), 4), round(float(rng.uniform(-180, 180)), 4))
                       for _ in range(TOP_ZS)]
            answers[1] = (0.0, 0.0)
            rows.append({"IMG_ID": query, "LAT": 0.0, "LON": 0.0, "candidate_gps_lis": gps,
                         "candidate_text_lis": texts, "reverse_gps_lis": [], "zs_gps_lis": answers,
                         "candidate_img_lis": ids})
    with tarfile.open(root / "mp-16-images.tar") as archive:  # keyed by IMG_ID, as the published index is
        (root / "tar_index.pkl").write_bytes(pickle.dumps({m.name[len("mp16/"):]: m for m in archive.getmembers()}))
    write_georanker_csv(root / "im2gps3k.csv", rows)
    return root


def georanker_messages(root) -> tuple[list, list]:
    """evaluate.py's messages for every query of the file, and the candidate coordinates behind them."""
    messages, coordinates = [], []
    with open(root / "im2gps3k.csv", newline="") as handle, tarfile.open(root / "mp-16-images.tar") as archive:
        tar_index = {member.name[len("mp16/"):]: member for member in archive.getmembers()}  # tar_index.pkl's map
        for row in csv.DictReader(handle):
            gps, texts = ast.literal_eval(row["candidate_gps_lis"]), ast.literal_eval(row["candidate_text_lis"])
            images, answers = ast.literal_eval(row["candidate_img_lis"]), ast.literal_eval(row["zs_gps_lis"])
            named = [" ".join(field for field in (t[1], t[3], t[5]) if field) for t in texts]
            negatives = "; ".join(f"latitude: {lat}, longitude: {lon}, {name}"
                                  for (lat, lon), name in zip(gps[-5:], named[-5:]))
            query = {"type": "image", "image": f"file://{root}/im2gps3ktest/{row['IMG_ID']}"}
            for j in range(TOP):
                buffer = io.BytesIO()
                Image.open(archive.extractfile(tar_index[images[j]])).save(buffer, format="JPEG")
                gallery = f"data:image/jpeg;base64,{base64.b64encode(buffer.getvalue()).decode()}"
                messages.append([{"role": "user", "content": [
                    query,
                    {"type": "text", "text": f"How far is this place from latitude: {gps[j][0]}, "
                                             f"longitude: {gps[j][1]}, {named[j]}?"},
                    {"type": "image", "image": gallery},
                    {"type": "text", "text": f"Negative examples: {negatives}"},
                ]}])
                coordinates.append(gps[j])
            for lat, lon in answers[:TOP_ZS]:
                messages.append([{"role": "user", "content": [
                    query,
                    {"type": "text", "text": f"How far is this place from latitude: {lat}, longitude: {lon}?"},
                    {"type": "text", "text": f"Negative examples: {negatives}"},
                ]}])
                coordinates.append((lat, lon))
    return messages, coordinates


def georanker_rewards(model, processor, messages) -> np.ndarray:
    from qwen_vl_utils import process_vision_info

    rewards = []
    for start in range(0, len(messages), BATCH):
        batch = messages[start:start + BATCH]
        text = processor.apply_chat_template(batch, tokenize=False, add_generation_prompt=True)
        images, videos = process_vision_info(batch)
        inputs = processor(text=text, images=images, videos=videos, padding=True, padding_side="left",
                           return_tensors="pt")
        rewards.extend(model(**inputs).detach().tolist())
    return np.array(rewards)


@pytest.fixture(scope="module")
def compiled(published_files):
    out = published_files / "candidates.parquet"
    result = CliRunner().invoke(app, ["candidates", "compile", "--georanker", str(published_files / "im2gps3k.csv"),
                                      "--out", str(out)])
    assert result.exit_code == 0, result.output
    return out


@pytest.fixture(scope="module")
def reference(tiny, published_files):
    _, model, processor = tiny
    messages, coordinates = georanker_messages(published_files)
    texts = processor.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    return texts, georanker_rewards(model, processor, messages), coordinates


@pytest.fixture(scope="module")
def adapter(tiny, tmp_path_factory):
    _, model, _ = tiny
    return save_adapter(model, tmp_path_factory.mktemp("fidelity") / "adapter")


def score_with_the_cli(tiny, root, compiled, adapter, out, *flags: str) -> None:
    base, _, _ = tiny
    result = CliRunner().invoke(app, [
        "ranker", "score", "--candidates", str(compiled), "--images", str(root / "im2gps3ktest"),
        "--gallery", str(root / "mp-16-images.tar"), "--gallery-index", str(root / "tar_index.pkl"),
        "--adapter", str(adapter), "--base", base, "--out", str(out), "--device", "cpu", *flags,
    ])
    assert result.exit_code == 0, result.output


@dataclass
class Recorded:
    texts: list[str] = field(default_factory=list)
    scores: list[float] = field(default_factory=list)


def our_scores(tiny, root, compiled, adapter, tmp_path, monkeypatch, *flags: str) -> Recorded:
    """Every prompt text and reward of `geoloc ranker score`, through the command line's own path."""
    recorded, rewards = Recorded(), RewardScorer.rewards

    def recording(scorer, group):
        scores = rewards(scorer, group)
        recorded.texts.extend(render(scorer.processor, group.prompts()))
        recorded.scores.extend(scores.tolist())
        return scores

    monkeypatch.setattr(RewardScorer, "rewards", recording)
    score_with_the_cli(tiny, root, compiled, adapter, tmp_path / "predictions.csv", *flags)
    return recorded


@pytest.mark.parametrize("flags", [(), ("--plain",)], ids=["shared-prefix", "plain"])
def test_prompts_and_rewards_equal_georankers(tiny, published_files, compiled, adapter, reference, flags, tmp_path,
                                              monkeypatch):
    texts, rewards, _ = reference
    ours = our_scores(tiny, published_files, compiled, adapter, tmp_path, monkeypatch, *flags)
    assert ours.texts == texts  # character for character, through the chat template
    np.testing.assert_allclose(ours.scores, rewards, rtol=0, atol=1e-4)


def test_photos_as_they_are_would_not_be_georankers(tiny, published_files, compiled, adapter, reference, tmp_path,
                                                     monkeypatch):
    """The preparation matters: without it the same model on the same files scores otherwise."""
    _, rewards, _ = reference
    raw = our_scores(tiny, published_files, compiled, adapter, tmp_path, monkeypatch, "--raw-photos")
    assert np.abs(np.array(raw.scores) - rewards).max() > 1e-3


def test_cli_score_picks_georankers_winner(tiny, published_files, compiled, adapter, reference, tmp_path):
    _, rewards, coordinates = reference
    out = tmp_path / "predictions.csv"
    score_with_the_cli(tiny, published_files, compiled, adapter, out)
    predictions = pl.read_csv(out)
    per_query = TOP + TOP_ZS
    for number, query in enumerate(QUERIES):
        scores = rewards[number * per_query:(number + 1) * per_query]
        best = int(np.argmax(scores))
        row = predictions.row(number, named=True)
        assert row["image_id"] == query
        assert (row["lat"], row["lon"]) == coordinates[number * per_query + best]
        assert row["score"] == pytest.approx(scores[best], abs=1e-4)
