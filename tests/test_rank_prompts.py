"""Prompt strings pinned to GeoRanker's evaluate.py and training conventions."""

from PIL import Image

from geoloc.rank.prompts import Place, candidate_prompt
from geoloc.rank.training import GeoRankingCollator


def _texts(prompt):
    return [part["text"] for part in prompt.messages[0]["content"] if part["type"] == "text"]


def test_gallery_candidate_keeps_the_separator_without_names():
    photo = Image.new("RGB", (28, 28))
    negatives = [Place(-1.29, 36.82), Place(35.68, 139.69, "Tokyo Japan")]
    prompt = candidate_prompt(photo, Place(48.85, 2.35), photo, negatives)
    assert _texts(prompt) == [
        "How far is this place from latitude: 48.85, longitude: 2.35, ?",
        "Negative examples: latitude: -1.29, longitude: 36.82, ; latitude: 35.68, longitude: 139.69, Tokyo Japan",
    ]
    assert len(prompt.images) == 2


def test_zero_shot_candidate_ends_at_the_longitude():
    photo = Image.new("RGB", (28, 28))
    prompt = candidate_prompt(photo, Place(0.0, 0.0), None, [])
    assert _texts(prompt) == ["How far is this place from latitude: 0.0, longitude: 0.0?"]
    named = candidate_prompt(photo, Place(40.71, -74.0, "New York USA"), None, [])
    assert _texts(named) == ["How far is this place from latitude: 40.71, longitude: -74.0, New York USA?"]


def test_training_joins_every_place_field_empty_ones_included():
    example = {"ref_gps": [(48.85, 2.35)], "ref_texts": [["Paris", "", "France", None]]}
    assert GeoRankingCollator._place(example, 0) == Place(48.85, 2.35, "Paris  France ")
