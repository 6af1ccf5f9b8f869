"""The handful of filesystem operations a cgroup manager performs.

Everything goes through one CgroupFiles object so unit tests can swap in a fake
kernel (a temp-dir tree that fills new dirs with control files) while the
integration tests exercise the real cgroupfs.
"""

from __future__ import annotations

import errno
import time

from hull.errors import KernelError
from hull.runtime import posixos as os


class CgroupFiles:
    """Real cgroupfs access. Each write is one write(2), as the kernel expects."""

    def mkdir(self, path: str) -> bool:
        """Create path; True if this call created it, False if it was already there."""
        try:
            os.mkdir(path, 0o755)
        except FileExistsError:
            return False
        return True

    def rmdir(self, path: str) -> None:
        os.rmdir(path)

    def write(self, path: str, value: str) -> None:
        fd = os.open(path, os.O_WRONLY | os.O_TRUNC | os.O_CLOEXEC)
        try:
            os.write(fd, value.encode())
        finally:
            os.close(fd)

    def read(self, path: str) -> str:
        # os.read rather than open(): a text file object costs five extra syscalls
        # (fstat, ioctl, lseeks) per control file, on the start path.
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        try:
            chunks = []
            while chunk := os.read(fd, 65536):
                chunks.append(chunk)
        finally:
            os.close(fd)
        return b"".join(chunks).decode()

    def exists(self, path: str) -> bool:
        return os.path.exists(path)

    def subdirs(self, path: str) -> list[str]:
        """Child cgroups of path (names), [] when path is gone."""
        try:
            with os.scandir(path) as entries:
                return [e.name for e in entries if e.is_dir(follow_symlinks=False)]
        except FileNotFoundError:
            return []


def write_value(files: CgroupFiles, directory: str, name: str, value: str) -> None:
    """Write one control file, turning the kernel's refusal into a readable KernelError."""
    path = os.path.join(directory, name)
    try:
        files.write(path, value)
    except OSError as e:
        reason = os.strerror(e.errno) if e.errno else str(e)
        if e.errno == errno.ENOENT:
            reason = "no such control file (controller not enabled here?)"
        raise KernelError(f"cannot write {value!r} to {path}: {reason}") from e


def read_value(files: CgroupFiles, directory: str, name: str) -> str | None:
    """A control file's text, stripped; None when the file does not exist."""
    try:
        return files.read(os.path.join(directory, name)).strip()
    except FileNotFoundError:
        return None
    except OSError as e:
        raise KernelError(f"cannot read {os.path.join(directory, name)}: {e.strerror}") from e


def read_int(files: CgroupFiles, directory: str, name: str) -> int | None:
    """An integer control file; None when missing or 'max'."""
    text = read_value(files, directory, name)
    if text is None or text == "max" or not text:
        return None
    try:
        return int(text.split()[0])
    except ValueError as e:
        raise KernelError(f"unexpected content in {directory}/{name}: {text!r}") from e


def read_keyed(files: CgroupFiles, directory: str, name: str) -> dict[str, int]:
    """A flat-keyed file ("key value" lines: memory.stat, cpu.stat, memory.events)."""
    text = read_value(files, directory, name)
    out: dict[str, int] = {}
    for line in (text or "").splitlines():
        parts = line.split()
        if len(parts) == 2 and parts[1].lstrip("-").isdigit():
            out[parts[0]] = int(parts[1])
    return out


def read_pids(files: CgroupFiles, directory: str) -> list[int]:
    text = read_value(files, directory, "cgroup.procs")
    return [int(line) for line in (text or "").split() if line.isdigit()]


def add_pid(files: CgroupFiles, directory: str, pid: int) -> None:
    """Write pid into cgroup.procs; EINVAL can mean the task is still being forked
    (TASK_NEW), so retry briefly as runc does."""
    path = os.path.join(directory, "cgroup.procs")
    for attempt in range(5):
        try:
            files.write(path, str(pid))
            return
        except OSError as e:
            if e.errno == errno.EINVAL and attempt < 4:
                time.sleep(0.03)
                continue
            if e.errno == errno.ESRCH:
                raise KernelError(f"cannot move pid {pid} into {directory}: no such process") from e
            raise KernelError(f"cannot move pid {pid} into {directory}: {e.strerror}") from e


def remove_tree(files: CgroupFiles, path: str) -> None:
    """rmdir path and any child cgroups under it, deepest first; gone already is fine.

    The plain rmdir comes first: a container's cgroup seldom has children, and
    listing a dir full of control files for nothing costs on every `delete`.
    """
    try:
        files.rmdir(path)
        return
    except FileNotFoundError:
        return
    except OSError as e:
        # the kernel says EBUSY for child cgroups (and for processes inside)
        if e.errno not in (errno.EBUSY, errno.ENOTEMPTY):
            raise
        children = files.subdirs(path)
        if not children:
            raise
    for name in children:
        remove_tree(files, os.path.join(path, name))
    try:
        files.rmdir(path)
    except FileNotFoundError:
        pass


def remove_with_retry(files: CgroupFiles, path: str, attempts: int = 6) -> None:
    """remove_tree, retrying on EBUSY while exiting tasks leave the cgroup."""
    delay = 0.01
    for attempt in range(attempts):
        try:
            remove_tree(files, path)
            return
        except OSError as e:
            if e.errno not in (errno.EBUSY, errno.ENOTEMPTY) or attempt == attempts - 1:
                raise KernelError(f"cannot remove cgroup {path}: {e.strerror}") from e
            time.sleep(delay)
            delay *= 2
