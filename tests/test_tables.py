"""Atomic, durable writes: a temporary file beside the target, fsynced, renamed, the folder fsynced."""

import os

import polars as pl
import pytest

from geoloc import tables
from geoloc.tables import read_table, write_table, write_text


def test_a_failed_write_leaves_the_old_table_and_no_temporary(tmp_path, monkeypatch):
    path = tmp_path / "t.parquet"
    old = pl.DataFrame({"a": [1, 2, 3]})
    write_table(old, path)

    def half_then_fail(self, target, **kwargs):
        with open(target, "wb") as handle:
            handle.write(b"PAR1 half a file")
        raise OSError("disk full")

    monkeypatch.setattr(pl.DataFrame, "write_parquet", half_then_fail)
    with pytest.raises(OSError, match="disk full"):
        write_table(pl.DataFrame({"a": [9]}), path)
    assert read_table(path).equals(old)
    assert os.listdir(tmp_path) == ["t.parquet"]


def test_data_is_fsynced_before_the_rename_and_the_folder_after(tmp_path, monkeypatch):
    events = []
    real_fsync, real_replace = os.fsync, os.replace

    def fsync(descriptor):
        events.append(("fsync", os.readlink(f"/proc/self/fd/{descriptor}")))
        real_fsync(descriptor)

    def replace(source, target):
        events.append(("replace", str(source), str(target)))
        real_replace(source, target)

    monkeypatch.setattr(tables.os, "fsync", fsync)
    monkeypatch.setattr(tables.os, "replace", replace)
    path = tmp_path / "notes.txt"
    write_text(path, "first")
    write_text(path, "second")
    assert path.read_text() == "second"
    (synced, temporary), (renamed, source, target), (folder_synced, folder) = events[:3]
    assert (synced, renamed, folder_synced) == ("fsync", "replace", "fsync")
    assert temporary == source and source.startswith(str(tmp_path / ".notes.txt.")) and target == str(path)
    assert folder == str(tmp_path.resolve())
    write_table(pl.DataFrame({"a": ["x"]}), tmp_path / "t.csv")
    assert [kind for kind, *_ in events[6:]] == ["fsync", "replace", "fsync"]
    assert read_table(tmp_path / "t.csv")["a"].to_list() == ["x"]
