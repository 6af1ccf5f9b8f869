"""mount_setattr(2): change the flags of a whole mount tree in one system call.

A v1 cgroup view is a tmpfs with a bind mount per hierarchy; making it
read-only with mount(MS_REMOUNT) costs an open, a statfs and a remount per
bind. mount_setattr(AT_RECURSIVE) does the tree at once, and only ever adds
flags, so flags the kernel locked on a mount are kept without asking.
Linux >= 5.12; callers fall back to remounts when it is missing.
"""

from __future__ import annotations

import ctypes
import os

from hull.runtime.linux import syscalls as sc

MOUNT_ATTR_RDONLY = 0x1
MOUNT_ATTR_NOSUID = 0x2
MOUNT_ATTR_NODEV = 0x4
MOUNT_ATTR_NOEXEC = 0x8
AT_EMPTY_PATH = 0x1000
AT_RECURSIVE = 0x8000
_NR_MOUNT_SETATTR = 442  # the same on every architecture (a post-4.20 syscall)

# MS_* flag -> MOUNT_ATTR_* flag, for the flags this module sets.
_FROM_MS = (
    (sc.MS_RDONLY, MOUNT_ATTR_RDONLY),
    (sc.MS_NOSUID, MOUNT_ATTR_NOSUID),
    (sc.MS_NODEV, MOUNT_ATTR_NODEV),
    (sc.MS_NOEXEC, MOUNT_ATTR_NOEXEC),
)


class _MountAttr(ctypes.Structure):
    _fields_ = [
        ("attr_set", ctypes.c_uint64),
        ("attr_clr", ctypes.c_uint64),
        ("propagation", ctypes.c_uint64),
        ("userns_fd", ctypes.c_uint64),
    ]


def set_recursive(fd: int, ms_flags: int) -> None:
    """Add ms_flags (MS_RDONLY, MS_NOSUID, MS_NODEV, MS_NOEXEC) to the mount at fd
    and every mount below it. Raises OSError (ENOSYS on kernels without it)."""
    attr = _MountAttr(sum(a for ms, a in _FROM_MS if ms_flags & ms), 0, 0, 0)
    result = sc.libc.syscall(
        ctypes.c_long(_NR_MOUNT_SETATTR),
        ctypes.c_int(fd),
        ctypes.c_char_p(b""),
        ctypes.c_uint(AT_EMPTY_PATH | AT_RECURSIVE),
        ctypes.byref(attr),
        ctypes.c_size_t(ctypes.sizeof(attr)),
    )
    if result < 0:
        err = ctypes.get_errno()
        raise OSError(err, f"mount_setattr: {os.strerror(err)}")
