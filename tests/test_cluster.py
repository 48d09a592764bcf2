"""The Ray engines' edges that need no Ray: lazy imports, clear errors, the engine switch."""

import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from geoloc.cli import app
from geoloc.cluster import ClusterError, check_engine, import_ray, unique_rows

ROOT = Path(__file__).resolve().parents[1]


def test_the_cli_never_imports_ray():
    code = "import sys, geoloc.cli, geoloc.catalog, geoloc.encode; print('ray' in sys.modules)"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                            env={"PYTHONPATH": str(ROOT / "src")})
    assert result.stdout.strip() == "False"


def test_without_ray_the_error_says_how_to_install_it(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "ray", None)
    with pytest.raises(ClusterError, match=r"pip install 'geoloc\[ray\]'"):
        import_ray()
    photos = tmp_path / "photos"
    photos.mkdir()
    (photos / "a.jpg").write_bytes(b"\xff\xd8 not much")
    result = CliRunner().invoke(app, ["catalog", "build", "--source", f"photos={photos}", "--out",
                                      str(tmp_path / "out"), "--engine", "ray"])
    assert result.exit_code == 2 and "geoloc[ray]" in result.output


def test_engines_are_checked():
    assert check_engine("ray") == "ray"
    with pytest.raises(ClusterError, match="expected one of local, ray"):
        check_engine("dask")


def test_a_result_handed_back_twice_is_taken_once():
    rows = [{"part": 0, "start": 0}, {"part": 0, "start": 4}, {"part": 0, "start": 0}, {"part": 1, "start": 0}]
    assert list(unique_rows(iter(rows), "part", "start")) == [rows[0], rows[1], rows[3]]
