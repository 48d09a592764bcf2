"""Ranking candidate locations: GeoRanker's reward model, its multi-order distance loss, training and scoring.

Reads the candidates table, writes predictions. Heavy libraries (torch, transformers,
peft) load only when a ranker module is imported, never with `geoloc` itself.
"""
