"""The one rule for turning a catalog uri into a file: it must resolve below its root.

Catalogs and CSV tables may come from someone else; without this rule a row naming
`../../home/x/.ssh/id_rsa`, an absolute path or a symlink out of the dataset would make
`geoloc embed` (or the rankers) read that file.

A `RootFolder` resolves its root once. Each uri is refused without touching the disk
when it is absolute or climbs out by `..`; otherwise the file is opened and the real
path of what was opened (the kernel's: `/proc/self/fd` on Linux, `F_GETPATH` on macOS)
must lie below the root. One open and one look-up per file, where following every
component with `realpath` cost a system call per component and made the catalog scan
1.5 times slower; and what is read is exactly what was checked. Where the OS gives no
real path of an open file (Windows), the opened path is resolved with `realpath` instead
(a symlink swapped between the open and that look-up is not caught there).
"""

from __future__ import annotations

import os
from pathlib import Path, PureWindowsPath
from typing import BinaryIO

from geoloc.errors import InputError

OUTSIDE_ROOT = "outside_root"
"""Quarantine reason of a catalog row whose uri does not resolve below its root."""

_PROC_FD = Path("/proc/self/fd")
_HAS_PROC_FD = _PROC_FD.is_dir()


class OutsideRootError(InputError):
    """A uri that is absolute or resolves (through `..` or a symlink) outside its root."""


def _opened_path(descriptor: int) -> str | None:
    """The real path of an open file as the kernel knows it, or None where the OS cannot tell."""
    if _HAS_PROC_FD:
        return os.readlink(_PROC_FD / str(descriptor))
    try:
        import fcntl

        return fcntl.fcntl(descriptor, fcntl.F_GETPATH, bytes(1024)).rstrip(b"\0").decode()
    except (ImportError, AttributeError, OSError):
        return None


class RootFolder:
    """A dataset root, resolved once, that opens relative uris below it and refuses any other."""

    def __init__(self, root: Path | str) -> None:
        self.path = Path(root).resolve()
        self._prefix = os.path.join(str(self.path), "")

    def _refuse_outside(self, real: str, uri: str) -> None:
        if not real.startswith(self._prefix):
            raise OutsideRootError(f"{uri!r} resolves to {real}, outside {self.path}")

    def open(self, relative: str, uri: str | None = None) -> BinaryIO:
        """`root / relative` opened for reading, or OutsideRootError naming `uri` (default `relative`)."""
        uri = relative if uri is None else uri
        if relative.startswith(("/", "\\")) or (":" in relative and PureWindowsPath(relative).is_absolute()):
            raise OutsideRootError(f"{uri!r}: an absolute path; catalog uris are relative to {self.path}")
        if os.path.normpath(relative).split(os.sep, 1)[0] == os.pardir:
            raise OutsideRootError(f"{uri!r} resolves to {os.path.normpath(self._prefix + relative)}, "
                                   f"outside {self.path}")
        path = self._prefix + relative
        handle = open(path, "rb")  # noqa: SIM115 - returned to the caller, closed here when refused
        try:
            real = _opened_path(handle.fileno())
            self._refuse_outside(os.path.realpath(path) if real is None else real, uri)
        except BaseException:
            handle.close()
            raise
        return handle

    def read_bytes(self, relative: str, uri: str | None = None) -> bytes:
        """The whole file below the root (see `open`)."""
        with self.open(relative, uri) as handle:
            return handle.read()
