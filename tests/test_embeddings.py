"""Reading some rows of an embeddings folder: the caller's order, every missing id named."""

import json

import numpy as np
import polars as pl
import pytest

from geoloc.embeddings import EmbeddingsError, embeddings_by_id, embeddings_meta, embeddings_of, write_part


@pytest.fixture
def folder(tmp_path):
    """Three parts of 4 photos (8 dims); photo p05 failed to embed."""
    ids = pl.Series("image_id", [f"p{n:02d}" for n in range(12)])
    vectors = np.arange(12 * 8, dtype=np.float32).reshape(12, 8)
    for number in range(3):
        rows = slice(4 * number, 4 * number + 4)
        problems = [("OSError: truncated" if n == 5 else None) for n in range(rows.start, rows.stop)]
        write_part(tmp_path, number, ids[rows], vectors[rows], problems)
    (tmp_path / "meta.json").write_text(json.dumps(embeddings_meta("b", 8, ids, 4)))
    return tmp_path, vectors


def test_rows_come_back_in_the_callers_order_across_parts(folder):
    path, vectors = folder
    wanted = pl.Series(["p11", "p00", "p07", "p00", "p04"])
    np.testing.assert_array_equal(embeddings_by_id(path, wanted, "photo(s)"), vectors[[11, 0, 7, 0, 4]])


def test_missing_and_failed_ids_are_named(folder):
    path, _ = folder
    with pytest.raises(EmbeddingsError, match=r"no embedding for 2 query photo\(s\): 'p05', 'zz'"):
        embeddings_by_id(path, pl.Series(["p01", "p05", "zz"]), "query photo(s)")


def test_only_the_rows_asked_for_are_returned(folder):
    path, vectors = folder
    meta, found, rows = embeddings_of(path, pl.Series(["p09", None, "p02", "nope", "p09"]))
    assert meta["backbone"] == "b" and len(found) == 2
    assert rows.tolist()[1] == -1 and rows.tolist()[3] == -1
    np.testing.assert_array_equal(found[rows[[0, 2, 4]]], vectors[[9, 2, 9]])


def test_the_ids_fingerprint_is_the_documented_sha256_and_stable_across_versions():
    """SHA-256 over the count, each id's UTF-8 length (8-byte little-endian) and the ids' bytes: a value
    pinned here, so a library upgrade cannot make a half-built folder look like another run's."""
    import hashlib
    import struct

    ids = pl.Series("image_id", ["a", "bc", "été", "x/1.jpg"])
    expected = hashlib.sha256(struct.pack("<5Q", 4, 1, 2, 5, 7) + "abcétéx/1.jpg".encode()).hexdigest()
    assert embeddings_meta("b", 8, ids, 4)["ids"] == expected
    assert expected == "51ea8c550337b9b25cfbaac3aa48dd614aabe93d9b98a1fdfd89296669c85081"
    assert embeddings_meta("b", 8, ids[1:3], 4)["ids"] == hashlib.sha256(
        struct.pack("<3Q", 2, 2, 5) + "bcété".encode()).hexdigest()
    split_elsewhere = embeddings_meta("b", 8, pl.Series(["ab", "c"]), 4)["ids"]
    assert split_elsewhere != embeddings_meta("b", 8, pl.Series(["a", "bc"]), 4)["ids"]
