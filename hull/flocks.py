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
