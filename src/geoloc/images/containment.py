"""The one rule for turning a catalog uri into a file: it must resolve below its root.

Catalogs and CSV tables may come from someone else; without this rule a row naming
`../../home/x/.ssh/id_rsa`, an absolute path or a symlink out of the dataset would make
`geoloc embed` (or the rankers) read that file.
"""

from __future__ import annotations

from pathlib import Path, PurePosixPath, PureWindowsPath

OUTSIDE_ROOT = "outside_root"
"""Quarantine reason of a catalog row whose uri does not resolve below its root."""


class OutsideRootError(ValueError):
    """A uri that is absolute or resolves (through `..` or a symlink) outside its root."""


def resolve_below(root: Path, relative: str, uri: str | None = None) -> Path:
    """`root / relative` with every symlink followed, or OutsideRootError naming `uri` (default `relative`).

    The path returned is the resolved one, so what is read is what was checked.
    """
    uri = relative if uri is None else uri
    if PurePosixPath(relative).is_absolute() or PureWindowsPath(relative).is_absolute() or relative.startswith("\\"):
        raise OutsideRootError(f"{uri!r}: an absolute path; catalog uris are relative to {root}")
    base = Path(root).resolve()
    path = (base / relative).resolve()
    if not path.is_relative_to(base):
        raise OutsideRootError(f"{uri!r} resolves to {path}, outside {base}")
    return path
