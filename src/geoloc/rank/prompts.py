"""GeoRanker's prompt, built by one function for training and for scoring.

One prompt per (query photo, candidate): the query photo; "How far is this place from
latitude: …, longitude: …, <place names>?"; the candidate's gallery photo when it has
one (zero-shot candidates have none); "Negative examples: …" naming the group's
farthest candidates. The photos themselves travel beside the messages, in order.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from PIL import Image


@dataclass(frozen=True)
class Place:
    """A candidate location as the prompt names it."""

    lat: float
    lon: float
    text: str = ""
    """Place names, space separated (neighbourhood, city, country ...); may be empty."""

    def describe(self, separated: bool = True) -> str:
        """As GeoRanker's evaluate.py writes it: the ", " after the coordinates stays even when
        there are no names (negatives, gallery candidates); only a candidate without a gallery
        photo and without names (a zero-shot answer) ends at the longitude."""
        coordinates = f"latitude: {self.lat}, longitude: {self.lon}"
        return f"{coordinates}, {self.text}" if separated or self.text else coordinates


@dataclass(frozen=True)
class Prompt:
    """Chat messages with image placeholders, and the photos that fill them, in order."""

    messages: list[dict]
    images: list[Image.Image]


def candidate_prompt(
    query_photo: Image.Image,
    candidate: Place,
    gallery_photo: Image.Image | None,
    negatives: Sequence[Place],
) -> Prompt:
    """The prompt that asks how far the query photo is from one candidate."""
    content: list[dict] = [
        {"type": "image"},
        {"type": "text", "text": f"How far is this place from {candidate.describe(gallery_photo is not None)}?"},
    ]
    images = [query_photo]
    if gallery_photo is not None:
        content.append({"type": "image"})
        images.append(gallery_photo)
    if negatives:
        content.append({"type": "text", "text": "Negative examples: " + "; ".join(n.describe() for n in negatives)})
    return Prompt(messages=[{"role": "user", "content": content}], images=images)


def render(processor, prompts: Sequence[Prompt]) -> list[str]:
    """The prompts as text, through the model's own chat template, ready for the reward token."""
    return [
        processor.apply_chat_template(prompt.messages, tokenize=False, add_generation_prompt=True)
        for prompt in prompts
    ]
