"""Reading and writing small files by str path.

For the modules on `hull run`'s path, which keep paths as str (hull.paths says
why): what pathlib.Path.read_text and write_text would do there.
"""

from __future__ import annotations

import os


def read_text(path: str | os.PathLike[str]) -> str:
    with open(path, encoding="utf-8") as f:
        return f.read()


def write_text(path: str | os.PathLike[str], text: str) -> None:
    with open(path, "w", encoding="utf-8") as f:
        f.write(text)


def replace_text(path: str | os.PathLike[str], text: str) -> None:
    """Write path.tmp, then rename it over path: readers see the old file or the
    new one whole, never a part (no fsync: see docs/architecture.md)."""
    path = os.fspath(path)
    tmp = path + ".tmp"
    write_text(tmp, text)
    os.replace(tmp, path)
