"""mount_setattr(2): change the flags of a whole mount tree in one system call.

A v1 cgroup view is a tmpfs with a bind mount per hierarchy; making it
read-only with mount(MS_REMOUNT) costs an open, a statfs and a remount per
bind. mount_setattr(AT_RECURSIVE) does the tree at once, and only ever adds
flags, so flags the kernel locked on a mount are kept without asking.
Linux >= 5.12; callers fall back to remounts when it is missing.
"""

from __future__ import annotations

from hull.runtime.linux import syscalls as sc

MOUNT_ATTR_RDONLY = 0x1
MOUNT_ATTR_NOSUID = 0x2
MOUNT_ATTR_NODEV = 0x4
MOUNT_ATTR_NOEXEC = 0x8
AT_EMPTY_PATH = 0x1000
AT_RECURSIVE = 0x8000

# MS_* flag -> MOUNT_ATTR_* flag, for the flags this module sets.
_FROM_MS = (
    (sc.MS_RDONLY, MOUNT_ATTR_RDONLY),
    (sc.MS_NOSUID, MOUNT_ATTR_NOSUID),
    (sc.MS_NODEV, MOUNT_ATTR_NODEV),
    (sc.MS_NOEXEC, MOUNT_ATTR_NOEXEC),
)


def set_recursive(fd: int, ms_flags: int) -> None:
    """Add ms_flags (MS_RDONLY, MS_NOSUID, MS_NODEV, MS_NOEXEC) to the mount at fd
    and every mount below it. Raises OSError (ENOSYS on kernels without it)."""
    attr_set = sum(a for ms, a in _FROM_MS if ms_flags & ms)
    attr = sc.u64_array(attr_set, 0, 0, 0)  # struct mount_attr: set, clr, propagation, userns_fd
    sc.syscall(
        "mount_setattr",
        "mount_setattr",
        fd,
        b"",
        AT_EMPTY_PATH | AT_RECURSIVE,
        attr,
        sc.sizeof(attr),
    )
