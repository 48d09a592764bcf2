"""Atomic, durable writes: a temporary file beside the target, fsynced, renamed, the folder fsynced."""

import os
import stat
from pathlib import Path

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


@pytest.mark.parametrize("umask", [0o022, 0o002, 0o077])
def test_outputs_follow_the_umask(tmp_path, umask):
    """A table, a text file and a folder swapped in whole get the permissions a file made in place would."""
    from geoloc.tables import replace_folder_durably

    previous = os.umask(umask)
    try:
        write_table(pl.DataFrame({"a": [1]}), tmp_path / "t.parquet")
        write_text(tmp_path / "t.json", "{}")
        replace_folder_durably(tmp_path / "folder", lambda partial: write_text(partial / "x.txt", "x"))
    finally:
        os.umask(previous)
    for file in (tmp_path / "t.parquet", tmp_path / "t.json", tmp_path / "folder" / "x.txt"):
        assert stat.S_IMODE(file.stat().st_mode) == 0o666 & ~umask, file
    assert stat.S_IMODE((tmp_path / "folder").stat().st_mode) == 0o777 & ~umask


def test_the_answer_cache_is_its_owners_alone_whatever_the_umask(tmp_path):
    """Photo hashes -> places: the SQLite file and its WAL are 0600, a folder made for it 0700, and an
    existing world-readable cache is closed."""
    from geoloc.tables import open_answer_cache

    previous = os.umask(0o002)
    try:
        path = tmp_path / "cache" / "answers.sqlite"
        connection = open_answer_cache(path, "CREATE TABLE IF NOT EXISTS answers (key TEXT PRIMARY KEY, answer TEXT)")
        connection.execute("INSERT INTO answers VALUES ('photo', '48.85,2.29')")
        connection.commit()
        modes = {p.name: stat.S_IMODE(p.stat().st_mode) for p in path.parent.iterdir()}
        assert modes == {"answers.sqlite": 0o600, "answers.sqlite-wal": 0o600, "answers.sqlite-shm": 0o600}
        assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
        connection.close()
        path.chmod(0o644)
        open_answer_cache(path).close()
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
    finally:
        os.umask(previous)


def test_an_answer_cache_in_memory_writes_no_file(tmp_path, monkeypatch):
    """The web app's cache is SQLite's in-memory database: nothing appears on disk, not even a file named
    after it in the working folder."""
    from geoloc.tables import IN_MEMORY, open_answer_cache

    monkeypatch.chdir(tmp_path)
    connection = open_answer_cache(Path(IN_MEMORY), "CREATE TABLE answers (key TEXT PRIMARY KEY, answer TEXT)")
    connection.execute("INSERT INTO answers VALUES ('photo', '48.85,2.29')")
    assert connection.execute("SELECT answer FROM answers").fetchall() == [("48.85,2.29",)]
    connection.close()
    assert list(tmp_path.iterdir()) == []
