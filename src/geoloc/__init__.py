"""geoloc: worldwide photo geolocalization, from geotagged photo collections to ranked GPS predictions."""

__version__ = "0.1.0"
