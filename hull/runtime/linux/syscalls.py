"""The only place that calls libc through ctypes.

Python 3.11 has no os.unshare/os.setns/mount, so the runtime reaches them
here. Every wrapper raises OSError with errno and a short description, like
the os module does, so callers can handle EPERM/ENOENT the usual way.
"""

from __future__ import annotations

import ctypes
import os

libc = ctypes.CDLL(None, use_errno=True)

# Namespace clone flags (linux/sched.h).
CLONE_NEWTIME = 0x00000080
CLONE_NEWNS = 0x00020000
CLONE_NEWCGROUP = 0x02000000
CLONE_NEWUTS = 0x04000000
CLONE_NEWIPC = 0x08000000
CLONE_NEWUSER = 0x10000000
CLONE_NEWPID = 0x20000000
CLONE_NEWNET = 0x40000000

# mount(2) flags (linux/mount.h).
MS_RDONLY = 1
MS_NOSUID = 2
MS_NODEV = 4
MS_NOEXEC = 8
MS_SYNCHRONOUS = 16
MS_REMOUNT = 32
MS_MANDLOCK = 64
MS_DIRSYNC = 128
MS_NOSYMFOLLOW = 256
MS_NOATIME = 1024
MS_NODIRATIME = 2048
MS_BIND = 4096
MS_MOVE = 8192
MS_REC = 16384
MS_SILENT = 32768
MS_UNBINDABLE = 1 << 17
MS_PRIVATE = 1 << 18
MS_SLAVE = 1 << 19
MS_SHARED = 1 << 20
MS_RELATIME = 1 << 21
MS_STRICTATIME = 1 << 24
MS_LAZYTIME = 1 << 25

MNT_DETACH = 2

# prctl(2) options.
PR_SET_PDEATHSIG = 1
PR_SET_DUMPABLE = 4
PR_SET_KEEPCAPS = 8
PR_SET_NAME = 15
PR_CAPBSET_READ = 23
PR_CAPBSET_DROP = 24
PR_SET_SECUREBITS = 28
PR_SET_NO_NEW_PRIVS = 38
PR_GET_NO_NEW_PRIVS = 39
PR_SET_CHILD_SUBREAPER = 36
PR_CAP_AMBIENT = 47
PR_CAP_AMBIENT_RAISE = 2
PR_CAP_AMBIENT_CLEAR_ALL = 4

# openat2(2) resolve flags.
RESOLVE_NO_XDEV = 0x01
RESOLVE_NO_MAGICLINKS = 0x02
RESOLVE_NO_SYMLINKS = 0x04
RESOLVE_BENEATH = 0x08
RESOLVE_IN_ROOT = 0x10

_SYSCALLS_X86_64 = {
    "capget": 125,
    "capset": 126,
    "pivot_root": 155,
    "setns": 308,
    "unshare": 272,
    "close_range": 436,
    "openat2": 437,
    "pidfd_open": 434,
    "pidfd_send_signal": 424,
}
_SYSCALLS_AARCH64 = {
    "capget": 90,
    "capset": 91,
    "pivot_root": 41,
    "setns": 268,
    "unshare": 97,
    "close_range": 436,
    "openat2": 437,
    "pidfd_open": 434,
    "pidfd_send_signal": 424,
}
# os.uname() rather than `platform`, whose import costs more than this whole module.
SYSCALL_NR = _SYSCALLS_AARCH64 if os.uname().machine == "aarch64" else _SYSCALLS_X86_64

libc.syscall.restype = ctypes.c_long
libc.mount.argtypes = [
    ctypes.c_char_p,
    ctypes.c_char_p,
    ctypes.c_char_p,
    ctypes.c_ulong,
    ctypes.c_void_p,
]
libc.umount2.argtypes = [ctypes.c_char_p, ctypes.c_int]
libc.prctl.argtypes = [ctypes.c_int, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong]
libc.prlimit.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_void_p, ctypes.c_void_p]
libc.setdomainname.argtypes = [ctypes.c_char_p, ctypes.c_size_t]
libc.sethostname.argtypes = [ctypes.c_char_p, ctypes.c_size_t]


def _check(result: int, what: str) -> int:
    if result < 0:
        err = ctypes.get_errno()
        raise OSError(err, f"{what}: {os.strerror(err)}")
    return result


def _b(value: str | bytes | None) -> bytes | None:
    if value is None or isinstance(value, bytes):
        return value
    return os.fsencode(value)


def unshare(flags: int) -> None:
    """Move the calling process into new namespaces (unshare(2))."""
    _check(libc.syscall(SYSCALL_NR["unshare"], ctypes.c_int(flags)), "unshare")


def setns(fd: int, nstype: int = 0) -> None:
    """Join the namespace that fd refers to (setns(2))."""
    _check(libc.syscall(SYSCALL_NR["setns"], ctypes.c_int(fd), ctypes.c_int(nstype)), "setns")


def mount(
    source: str | bytes | None,
    target: str | bytes,
    fstype: str | bytes | None,
    flags: int = 0,
    data: str | bytes | None = None,
) -> None:
    """mount(2); raises OSError naming the target."""
    raw_data = _b(data)
    result = libc.mount(
        _b(source),
        _b(target),
        _b(fstype),
        ctypes.c_ulong(flags),
        ctypes.c_char_p(raw_data) if raw_data is not None else None,
    )
    _check(result, f"mount {os.fsdecode(_b(target) or b'')}")


def umount2(target: str | bytes, flags: int = 0) -> None:
    _check(libc.umount2(_b(target), flags), f"umount {os.fsdecode(_b(target) or b'')}")


def pivot_root(new_root: str | bytes, put_old: str | bytes) -> None:
    _check(
        libc.syscall(
            SYSCALL_NR["pivot_root"], ctypes.c_char_p(_b(new_root)), ctypes.c_char_p(_b(put_old))
        ),
        "pivot_root",
    )


def prctl(option: int, arg2: int = 0, arg3: int = 0, arg4: int = 0, arg5: int = 0) -> int:
    return _check(libc.prctl(option, arg2, arg3, arg4, arg5), f"prctl({option})")


def sethostname(name: str) -> None:
    raw = name.encode()
    _check(libc.sethostname(raw, len(raw)), "sethostname")


def setdomainname(name: str) -> None:
    raw = name.encode()
    _check(libc.setdomainname(raw, len(raw)), "setdomainname")


def close_range(first: int, last: int = 0xFFFFFFFF, flags: int = 0) -> None:
    """Close every fd in [first, last]; flags=CLOSE_RANGE_CLOEXEC (4) marks them instead."""
    _check(
        libc.syscall(
            SYSCALL_NR["close_range"],
            ctypes.c_uint(first),
            ctypes.c_uint(last),
            ctypes.c_uint(flags),
        ),
        "close_range",
    )


CLOSE_RANGE_CLOEXEC = 4


class _OpenHow(ctypes.Structure):
    _fields_ = [
        ("flags", ctypes.c_uint64),
        ("mode", ctypes.c_uint64),
        ("resolve", ctypes.c_uint64),
    ]


def openat2(dirfd: int, path: str, flags: int, mode: int = 0, resolve: int = 0) -> int:
    """openat2(2): open path relative to dirfd with RESOLVE_* confinement."""
    how = _OpenHow(flags | os.O_CLOEXEC, mode, resolve)
    return _check(
        libc.syscall(
            SYSCALL_NR["openat2"],
            ctypes.c_int(dirfd),
            ctypes.c_char_p(os.fsencode(path)),
            ctypes.byref(how),
            ctypes.c_size_t(ctypes.sizeof(how)),
        ),
        f"openat2 {path}",
    )


def pidfd_open(pid: int) -> int:
    return _check(
        libc.syscall(SYSCALL_NR["pidfd_open"], ctypes.c_int(pid), ctypes.c_uint(0)), "pidfd_open"
    )


class CapHeader(ctypes.Structure):
    _fields_ = [("version", ctypes.c_uint32), ("pid", ctypes.c_int)]


class CapData(ctypes.Structure):
    _fields_ = [
        ("effective", ctypes.c_uint32),
        ("permitted", ctypes.c_uint32),
        ("inheritable", ctypes.c_uint32),
    ]


_LINUX_CAPABILITY_VERSION_3 = 0x20080522


def capget(pid: int = 0) -> tuple[int, int, int]:
    """Return (effective, permitted, inheritable) as 64-bit masks."""
    header = CapHeader(_LINUX_CAPABILITY_VERSION_3, pid)
    data = (CapData * 2)()
    _check(libc.syscall(SYSCALL_NR["capget"], ctypes.byref(header), data), "capget")
    return (
        data[0].effective | (data[1].effective << 32),
        data[0].permitted | (data[1].permitted << 32),
        data[0].inheritable | (data[1].inheritable << 32),
    )


def capset(effective: int, permitted: int, inheritable: int) -> None:
    header = CapHeader(_LINUX_CAPABILITY_VERSION_3, 0)
    data = (CapData * 2)()
    mask = 0xFFFFFFFF
    data[0].effective, data[1].effective = effective & mask, effective >> 32
    data[0].permitted, data[1].permitted = permitted & mask, permitted >> 32
    data[0].inheritable, data[1].inheritable = inheritable & mask, inheritable >> 32
    _check(libc.syscall(SYSCALL_NR["capset"], ctypes.byref(header), data), "capset")


# prlimit(2): rlim_t is 64-bit unsigned on every Linux ABI Hull runs on, so the
# OCI uint64 values pass through unchanged; all ones is RLIM_INFINITY.
RLIM_INFINITY = (1 << 64) - 1


class _Rlimit(ctypes.Structure):
    _fields_ = [("soft", ctypes.c_uint64), ("hard", ctypes.c_uint64)]


def prlimit(pid: int, resource: int, limits: tuple[int, int] | None = None) -> tuple[int, int]:
    """Set (when limits is given) and return the previous (soft, hard) of a resource.

    Unlike the `resource` module (not worth its import on the start path), values
    are unsigned: RLIM_INFINITY is 2**64-1, not -1.
    """
    old = _Rlimit()
    new = _Rlimit(*limits) if limits is not None else None
    _check(
        libc.prlimit(
            pid, resource, ctypes.byref(new) if new is not None else None, ctypes.byref(old)
        ),
        f"prlimit({resource})",
    )
    return old.soft, old.hard
