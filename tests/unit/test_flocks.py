"""flock helpers: who holds a lock, and FileLock's with-block."""

from __future__ import annotations

import fcntl
import os
from pathlib import Path

from hull.flocks import FileLock, held_elsewhere


def _probe(path: Path) -> bool:
    return held_elsewhere(os.open(path, os.O_RDONLY | os.O_CLOEXEC))


def test_file_lock_holds_for_its_block_only(tmp_path: Path) -> None:
    path = tmp_path / "images.lock"
    with FileLock(str(path), exclusive=True):
        assert oct(path.stat().st_mode & 0o777) == oct(0o600)  # created root-only
        assert _probe(path)
    assert not _probe(path)


def test_a_shared_file_lock_admits_other_sharers_only(tmp_path: Path) -> None:
    path = str(tmp_path / "images.lock")
    with FileLock(path, exclusive=False):
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)  # raises if ours were exclusive
        finally:
            os.close(fd)
        assert _probe(Path(path))  # held_elsewhere asks for LOCK_EX
    assert not _probe(Path(path))
