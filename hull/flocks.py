"""Whether another process holds a flock(2) lock: one probe for every lock file
that marks a live writer (a container's lock, a refill, a store writer)."""

import fcntl
import os


def held_elsewhere(fd: int) -> bool:
    """True if a lock conflicting with LOCK_EX is held through another open file
    (another process). Takes a freshly opened fd and closes it; flock(2) locks are
    per open file, so ours is dropped with it."""
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)
    return False


class FileLock:
    """`with FileLock(path, exclusive):` flock(2) on path (created 0600), held for the
    block. A class rather than @contextmanager: contextlib costs `hull run` ~1 ms of
    imports (collections, functools) on modules that only define such locks."""

    __slots__ = ("path", "exclusive", "fd")

    def __init__(self, path: str, exclusive: bool) -> None:
        self.path = path
        self.exclusive = exclusive
        self.fd = -1

    def __enter__(self) -> None:
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX if self.exclusive else fcntl.LOCK_SH)
        except BaseException:
            os.close(fd)
            raise
        self.fd = fd

    def __exit__(self, *exc: object) -> None:
        os.close(self.fd)
        self.fd = -1
