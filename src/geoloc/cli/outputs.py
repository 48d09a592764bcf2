"""What `geoloc predict` writes and says, with GeoCLIP or with a recipe: one copy for both."""

from __future__ import annotations

import json
from pathlib import Path

from geoloc.cli.common import errors
from geoloc.tables import write_table, write_text


def resuming(out: Path, advance):
    """`on_start` for a resumable run: the bar starts at what is done, and says so."""
    from geoloc.resumable import work_folder

    def on_start(done: int) -> None:
        if done:
            errors.print(f"resuming: {done} photo(s) already answered in {work_folder(out)}", highlight=False)
            advance(done)

    return on_start


def write_answers(answers: list, out: Path | None, map_file: Path | None, table, page) -> None:
    """`--out` (GeoJSON, else `table(answers)` as CSV/Parquet; its work folder removed) and `--map` (`page()`)."""
    from geoloc.predict import predictions_geojson
    from geoloc.resumable import work_folder
    from geoloc.tables import remove_folder

    if out is not None and out.suffix.lower() == ".geojson":
        write_text(out, json.dumps(predictions_geojson(answers)))
    elif out is not None:
        write_table(table(answers), out)
    if out is not None:
        remove_folder(work_folder(out))
    if map_file is not None:
        write_text(map_file, page())
