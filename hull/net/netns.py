"""Named network namespaces: a bind mount of an nsfs file keeps one alive with no process in it.

A network namespace is per thread in Linux, so a short-lived thread that unshares (or
joins) one does the work and then ends: no fork, which keeps this safe in a
multi-threaded engine, and the calling thread never leaves the host's namespace.
"""

from __future__ import annotations

import errno
import os
import threading

from hull.errors import HullError, KernelError
from hull.runtime.linux import syscalls as sc

TYPE_CHECKING = False  # typing is not imported at run time: it costs `hull run` ~2 ms
if TYPE_CHECKING:
    from collections.abc import Callable
    from typing import TypeVar

    T = TypeVar("T")


def _in_thread(work: Callable[[], T]) -> T:
    """Run work in a fresh thread (whose namespaces it may change) and return its result."""
    result: list[T] = []
    failure: list[BaseException] = []

    def main() -> None:
        try:
            result.append(work())
        except BaseException as e:  # handed back to the caller below
            failure.append(e)

    thread = threading.Thread(target=main, name="hull-netns")
    thread.start()
    thread.join()
    if failure:
        raise failure[0]
    return result[0]


def create_netns(path: str) -> None:
    """A new network namespace, bound at path (an empty file is created for the mount)."""
    parent = os.path.dirname(path)
    if parent:
        os.makedirs(parent, mode=0o755, exist_ok=True)
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o444)
    except FileExistsError:
        raise HullError(f"network namespace {path} already exists") from None
    os.close(fd)

    def bind_new_namespace() -> None:
        sc.unshare(sc.CLONE_NEWNET)
        sc.mount(f"/proc/self/task/{threading.get_native_id()}/ns/net", path, None, sc.MS_BIND)

    try:
        _in_thread(bind_new_namespace)
    except OSError as e:
        os.unlink(path)
        raise KernelError(f"cannot create network namespace {path}: {e.strerror}") from None
    except BaseException:
        os.unlink(path)
        raise


def delete_netns(path: str) -> None:
    """Unmount and remove a named namespace; a missing one is not an error."""
    try:
        sc.umount2(path, sc.MNT_DETACH)
    except OSError as e:
        if e.errno not in (errno.EINVAL, errno.ENOENT):
            raise KernelError(f"cannot unmount network namespace {path}: {e.strerror}") from None
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass


def netns_exists(path: str) -> bool:
    """Whether path is a bound network namespace (not just a leftover empty file)."""
    try:
        return os.stat(path).st_dev != os.stat(os.path.dirname(path) or ".").st_dev
    except OSError:
        return False


def run_in_netns(path: str, work: Callable[[], T]) -> T:
    """Run work in the network namespace bound at path (sockets it opens stay there)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except OSError as e:
        raise KernelError(f"cannot open network namespace {path}: {e.strerror}") from None

    def joined() -> T:
        try:
            sc.setns(fd, sc.CLONE_NEWNET)
        except OSError as e:
            raise KernelError(f"cannot join network namespace {path}: {e.strerror}") from None
        return work()

    try:
        return _in_thread(joined)
    finally:
        os.close(fd)
