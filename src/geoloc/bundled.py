"""The files shipped inside the package (geoloc/data: Leaflet, the Natural Earth world outline), read offline."""

from __future__ import annotations

from importlib import resources


def bundled(name: str) -> str:
    """A bundled file's text (geoloc/data/...)."""
    return resources.files("geoloc").joinpath("data", name).read_text(encoding="utf-8")
