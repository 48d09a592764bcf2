"""Member lookups through sorted, memory-mapped arrays: the same bytes as the index says, on real shards and tars."""

import multiprocessing
import pickle

import msgpack
import numpy as np
import polars as pl
import pytest
from datawriters import photo, write_shard, write_tar

from geoloc.images import ArchiveError, ImageStore, MemberLookup, index_shard, index_tar
from geoloc.images.members import _string_buffers, key_hash, key_hashes
from geoloc.tables import write_table

SHARD_RECORDS = [{"id": name, "image": photo(48.85, 2.29, seed=n)}
                 for n, name in enumerate(["ba/08/0.jpg", "x#2.jpg", "é/ü 3.jpg", "ba/08/4.jpg"])]
TAR_FILES = {f"mp16/{n % 3}/{n}.jpg": photo(-33.85, 151.21, seed=10 + n) for n in range(5)}


@pytest.fixture
def dataset(tmp_path):
    """A shard whose last record is cut short, a tar, and one index file for both."""
    root = tmp_path / "root"
    write_shard(root / "shard_0.msg", [*SHARD_RECORDS, {"id": "cut.jpg", "image": photo(0, 0, seed=99)}],
                truncate_last=7)
    write_tar(root / "images.tar", TAR_FILES)
    index = pl.concat([index_shard(root / "shard_0.msg"), index_tar(root / "images.tar")])
    write_table(index, tmp_path / "index.parquet")
    return root, index, tmp_path / "index.parquet"


def _expected(root):
    """Every readable member's bytes as the container holds them, read without any index."""
    shard = msgpack.Unpacker(open(root / "shard_0.msg", "rb"), raw=False)
    records = []
    try:
        records.extend(shard)
    except ValueError:
        pass
    found = {f"shard_0.msg#{r['id']}": r["image"] for r in records}
    return found | {f"images.tar#{name}": data for name, data in TAR_FILES.items()}


def test_every_member_of_a_shard_and_a_tar_reads_the_same_bytes(dataset):
    root, index, index_path = dataset
    expected = _expected(root)
    assert len(expected) == len(SHARD_RECORDS) + len(TAR_FILES)
    mapped, in_memory = ImageStore.open_index(root, index_path), ImageStore(root, index)
    for uri, data in expected.items():
        assert mapped.read_bytes(uri) == in_memory.read_bytes(uri) == data
    assert len(list((index_path.parent / "index.parquet.lookup").glob("*/hash.npy"))) == 1


def test_missing_and_unreadable_members_are_the_same_clear_error(dataset):
    root, _, index_path = dataset
    store = ImageStore.open_index(root, index_path)
    cut = index_shard(root / "shard_0.msg").filter(pl.col("problem").is_not_null())["member"][0]
    for uri in ["shard_0.msg#zzz.jpg", f"shard_0.msg#{cut}", "images.tar#ba/08/0.jpg", "images.tar#mp16/0"]:
        with pytest.raises(ArchiveError, match=f"{uri}: not in the index of {uri.split('#')[0]}"):
            store.read_bytes(uri)


def _read_in_worker(store, uri):
    return type(store.members.hash.base).__name__, store.read_bytes(uri)


def test_workers_map_the_cache_instead_of_holding_a_dict(dataset):
    root, _, index_path = dataset
    store = ImageStore.open_index(root, index_path)
    assert not any(isinstance(value, dict) for value in vars(store.members).values())
    assert all(isinstance(getattr(store.members, name).base, np.memmap) for name in ("hash", "offset", "length"))
    sent = pickle.dumps(store)
    assert len(sent) < 1000 and b"mp16/0/0.jpg" not in sent  # the folder's path travels, not the members
    uri = "images.tar#mp16/1/4.jpg"
    with multiprocessing.get_context("spawn").Pool(1) as pool:
        kind, data = pool.apply(_read_in_worker, (store, uri))
    assert kind == "memmap" and data == TAR_FILES["mp16/1/4.jpg"]


def test_the_cache_follows_a_rewritten_index(dataset):
    root, index, index_path = dataset
    ImageStore.open_index(root, index_path)
    write_table(index.filter(pl.col("container") == "images.tar"), index_path)
    store = ImageStore.open_index(root, index_path)
    assert store.read_bytes("images.tar#mp16/0/0.jpg") == TAR_FILES["mp16/0/0.jpg"]
    with pytest.raises(FileNotFoundError):  # the shard has no index any more: its uris are plain paths
        store.read_bytes("shard_0.msg#ba/08/0.jpg")


def test_keys_sharing_a_hash_are_told_apart_by_their_bytes():
    keys = pl.Series(["a.msg#one", "a.msg#two"])
    data, starts = _string_buffers(keys)
    same = np.uint64(key_hash(b"a.msg#two"))
    lookup = MemberLookup(frozenset({"a.msg"}), np.array([same, same]), np.array([10, 20]), np.array([1, 2]),
                          starts, data)
    assert lookup.locate("a.msg#two") == (20, 2)
    assert lookup.locate("a.msg#one") is None  # its own hash is elsewhere: not found, never the other's row


def test_vectorized_hash_equals_the_hash_of_one_key():
    keys = pl.Series(["", "a", "a\x00", "shard_0.msg#é/ü 3.jpg", "x" * 301, "12345678", "images.tar#mp16/0/0.jpg",
                      ""]).slice(1, 7)
    data, starts = _string_buffers(keys)
    hashes = key_hashes(data, starts).tolist()
    assert hashes == [key_hash(key.encode()) for key in keys.to_list()]
    assert len(set(hashes)) == len(hashes)  # "a" and "a\x00" read the same word: the length tells them apart


def test_a_repeated_member_reads_its_last_row_and_an_empty_index_finds_nothing(dataset):
    root, index, _ = dataset
    tar = index.filter(pl.col("container") == "images.tar")
    moved = tar.filter(pl.col("member") == "mp16/2/2.jpg").with_columns(tar.filter(
        pl.col("member") == "mp16/0/3.jpg").select("offset", "length"))
    store = ImageStore(root, pl.concat([tar, moved, index.filter(pl.col("container") == "shard_0.msg")]))
    assert store.read_bytes("images.tar#mp16/2/2.jpg") == TAR_FILES["mp16/0/3.jpg"]  # as a dict of the rows did
    assert store.read_bytes("images.tar#mp16/1/1.jpg") == TAR_FILES["mp16/1/1.jpg"]
    empty = ImageStore(root, index.filter(pl.col("container") == "images.tar").clear())
    assert empty.members.locate("images.tar#mp16/1/1.jpg") is None


def test_a_late_builder_never_replaces_or_deletes_a_fresh_cache(dataset):
    """Two processes build the same cache: the second keeps the first one's files (a reader mapping them
    is undisturbed); after the index is rewritten, a builder of its old state removes no newer cache."""
    from geoloc.images.members import _cache_folder, _remove_stale_caches, _stamp

    root, index, index_path = dataset
    first = ImageStore.open_index(root, index_path)
    folder = first.members.folder
    before = {path.name: path.stat().st_ino for path in folder.iterdir()}
    late = MemberLookup.build(index, "#")
    late.save(folder, _stamp(index_path, "#"))  # finished second: its cache is as good, the first one stays
    assert {path.name: path.stat().st_ino for path in folder.iterdir()} == before
    assert first.read_bytes("images.tar#mp16/0/0.jpg") == TAR_FILES["mp16/0/0.jpg"]
    assert not [path for path in folder.parent.iterdir() if path.name.startswith(".")]  # its scratch is gone

    write_table(index.filter(pl.col("container") == "images.tar"), index_path)
    fresh = ImageStore.open_index(root, index_path).members.folder
    assert fresh != folder and not folder.exists()  # the stale version is removed by the builder of the new one
    _remove_stale_caches(index_path, "#", keep=folder)  # a builder of the old state, finishing late
    assert (fresh / "meta.json").is_file() and fresh == _cache_folder(index_path, _stamp(index_path, "#"))
