"""The only place that calls libc's system-call wrappers from Python.

Python 3.11 has no os.unshare/os.setns/mount, so the runtime reaches them
here. Every wrapper raises OSError with errno and a short description, like
the os module does, so callers can handle EPERM/ENOENT the usual way.

Built on `_ctypes`, the C half of ctypes, not on the `ctypes` package: this
module is on the critical path of every container start (stage 1 imports it
before it can unshare), and `import ctypes` with CDLL costs ~2 ms there, this
module ~0.6 ms. The few C types it needs are declared below; structures are
arrays of fixed-width integers. `libc`, a ctypes.CDLL, is still offered for
callers off the start path; it imports ctypes when first asked for.
"""

from __future__ import annotations

import _ctypes

from hull.runtime import posixos as os

TYPE_CHECKING = False
if TYPE_CHECKING:  # typing costs start-up time: only for mypy
    import ctypes

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
    "clone": 56,
    "pivot_root": 155,
    "setns": 308,
    "unshare": 272,
    "close_range": 436,
    "openat2": 437,
    "pidfd_open": 434,
    "pidfd_send_signal": 424,
    "mount_setattr": 442,
    "seccomp": 317,
}
_SYSCALLS_AARCH64 = {
    "capget": 90,
    "capset": 91,
    "clone": 220,
    "pivot_root": 41,
    "setns": 268,
    "unshare": 97,
    "close_range": 436,
    "openat2": 437,
    "pidfd_open": 434,
    "pidfd_send_signal": 424,
    "mount_setattr": 442,
    "seccomp": 277,
}
# os.uname() rather than `platform`, whose import costs more than this whole module.
SYSCALL_NR = _SYSCALLS_AARCH64 if os.uname().machine == "aarch64" else _SYSCALLS_X86_64


# C types, as ctypes declares them (c_int, c_long, ...): _SimpleCData by type code.
class _Int(_ctypes._SimpleCData):
    _type_ = "i"


class _Long(_ctypes._SimpleCData):
    _type_ = "l"


class _ULong(_ctypes._SimpleCData):
    _type_ = "L"


class _U32(_ctypes._SimpleCData):
    _type_ = "I"


class _U64(_ctypes._SimpleCData):
    _type_ = "Q"


class _CharP(_ctypes._SimpleCData):
    _type_ = "z"  # bytes or None (NULL)


class _VoidP(_ctypes._SimpleCData):
    _type_ = "P"


class _IntFunc(_ctypes.CFuncPtr):
    """A libc function returning int, errno saved for get_errno()."""

    _flags_ = _ctypes.FUNCFLAG_CDECL | _ctypes.FUNCFLAG_USE_ERRNO
    _restype_ = _Int


class _LongFunc(_ctypes.CFuncPtr):
    _flags_ = _ctypes.FUNCFLAG_CDECL | _ctypes.FUNCFLAG_USE_ERRNO
    _restype_ = _Long


class _Self:
    """What a CFuncPtr looks a symbol up in: our own process (libc is loaded)."""

    _handle = _ctypes.dlopen(None, 2)  # type: ignore[arg-type]  # None: ourselves; RTLD_NOW


def _libc_func(cls: type, name: str, argtypes: tuple[type, ...] | None = None):
    func = cls((name, _Self()))
    if argtypes is not None:
        func.argtypes = argtypes
    return func


_syscall = _libc_func(_LongFunc, "syscall")  # variadic: every argument is wrapped (_arg)
_mount = _libc_func(_IntFunc, "mount", (_CharP, _CharP, _CharP, _ULong, _VoidP))
_umount2 = _libc_func(_IntFunc, "umount2", (_CharP, _Int))
_prctl = _libc_func(_IntFunc, "prctl", (_Int, _ULong, _ULong, _ULong, _ULong))
_prlimit = _libc_func(_IntFunc, "prlimit", (_Int, _Int, _VoidP, _VoidP))
_sethostname = _libc_func(_IntFunc, "sethostname", (_CharP, _ULong))
_setdomainname = _libc_func(_IntFunc, "setdomainname", (_CharP, _ULong))


def __getattr__(name: str) -> ctypes.CDLL:
    """`libc`: a ctypes.CDLL of the C library, for callers off the start path."""
    if name != "libc":
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    import ctypes

    lib = ctypes.CDLL(None, use_errno=True)
    lib.syscall.restype = ctypes.c_long
    globals()["libc"] = lib
    return lib


def _check(result: int, what: str) -> int:
    if result < 0:
        err = _ctypes.get_errno()
        raise OSError(err, f"{what}: {os.strerror(err)}")
    return result


def _b(value: str | bytes | None) -> bytes | None:
    if value is None or isinstance(value, bytes):
        return value
    return os.fsencode(value)


def _arg(value: object) -> object:
    """A syscall(2) argument: an int as a C long (syscall is variadic: ctypes
    would pass an int); bytes, None and ctypes arrays pass as pointers."""
    return _Long(value) if isinstance(value, int) else value


def syscall(what: str, name: str, *args: object) -> int:
    """syscall(SYSCALL_NR[name], *args); raises OSError naming `what`.

    args: ints (passed as C longs), bytes (char *), None (NULL), or buffers
    from u32_array/u64_array (passed by address).
    """
    return _check(_syscall(_Long(SYSCALL_NR[name]), *map(_arg, args)), what)


def u32_array(*values: int) -> _ctypes.Array:
    """A C uint32_t[] holding values: a struct of 32-bit fields, for syscall()."""
    return (_U32 * len(values))(*values)


def u64_array(*values: int) -> _ctypes.Array:
    """A C uint64_t[] holding values: a struct of 64-bit fields, for syscall()."""
    return (_U64 * len(values))(*values)


def sizeof(buffer: _ctypes.Array) -> int:
    return _ctypes.sizeof(buffer)


def unshare(flags: int) -> None:
    """Move the calling process into new namespaces (unshare(2))."""
    syscall("unshare", "unshare", flags)


def setns(fd: int, nstype: int = 0) -> None:
    """Join the namespace that fd refers to (setns(2))."""
    syscall("setns", "setns", fd, nstype)


def mount(
    source: str | bytes | None,
    target: str | bytes,
    fstype: str | bytes | None,
    flags: int = 0,
    data: str | bytes | None = None,
) -> None:
    """mount(2); raises OSError naming the target."""
    raw_target = _b(target)
    result = _mount(_b(source), raw_target, _b(fstype), flags, _b(data))
    _check(result, f"mount {os.fsdecode(raw_target or b'')}")


def umount2(target: str | bytes, flags: int = 0) -> None:
    raw_target = _b(target)
    _check(_umount2(raw_target, flags), f"umount {os.fsdecode(raw_target or b'')}")


def pivot_root(new_root: str | bytes, put_old: str | bytes) -> None:
    syscall("pivot_root", "pivot_root", _b(new_root), _b(put_old))


def prctl(option: int, arg2: int = 0, arg3: int = 0, arg4: int = 0, arg5: int = 0) -> int:
    return _check(_prctl(option, arg2, arg3, arg4, arg5), f"prctl({option})")


def sethostname(name: str) -> None:
    raw = name.encode()
    _check(_sethostname(raw, len(raw)), "sethostname")


def setdomainname(name: str) -> None:
    raw = name.encode()
    _check(_setdomainname(raw, len(raw)), "setdomainname")


def close_range(first: int, last: int = 0xFFFFFFFF, flags: int = 0) -> None:
    """Close every fd in [first, last]; flags=CLOSE_RANGE_CLOEXEC (4) marks them instead."""
    syscall("close_range", "close_range", first, last, flags)


CLOSE_RANGE_CLOEXEC = 4


def openat2(dirfd: int, path: str, flags: int, mode: int = 0, resolve: int = 0) -> int:
    """openat2(2): open path relative to dirfd with RESOLVE_* confinement."""
    how = u64_array(flags | os.O_CLOEXEC, mode, resolve)  # struct open_how
    return syscall(f"openat2 {path}", "openat2", dirfd, os.fsencode(path), how, sizeof(how))


SECCOMP_SET_MODE_FILTER = 1


def seccomp_set_filter(program: bytes, flags: int = 0) -> None:
    """seccomp(SECCOMP_SET_MODE_FILTER, flags, &prog): install a BPF program
    (struct sock_filter[], 8 bytes each), as libseccomp's seccomp_load does."""
    count = len(program) // 8
    instructions = (_U64 * count).from_buffer_copy(program)
    # struct sock_fprog: unsigned short len (padded to 8 bytes), then the pointer.
    fprog = u64_array(count, _ctypes.addressof(instructions))
    syscall("seccomp", "seccomp", SECCOMP_SET_MODE_FILTER, flags, fprog)


def pidfd_open(pid: int) -> int:
    return syscall("pidfd_open", "pidfd_open", pid, 0)


_LINUX_CAPABILITY_VERSION_3 = 0x20080522


def capget(pid: int = 0) -> tuple[int, int, int]:
    """Return (effective, permitted, inheritable) as 64-bit masks."""
    header = u32_array(_LINUX_CAPABILITY_VERSION_3, pid)  # struct __user_cap_header_struct
    data = u32_array(0, 0, 0, 0, 0, 0)  # struct __user_cap_data_struct[2]
    syscall("capget", "capget", header, data)
    return (
        data[0] | (data[3] << 32),
        data[1] | (data[4] << 32),
        data[2] | (data[5] << 32),
    )


def capset(effective: int, permitted: int, inheritable: int) -> None:
    header = u32_array(_LINUX_CAPABILITY_VERSION_3, 0)
    mask = 0xFFFFFFFF
    data = u32_array(
        effective & mask,
        permitted & mask,
        inheritable & mask,
        effective >> 32,
        permitted >> 32,
        inheritable >> 32,
    )
    syscall("capset", "capset", header, data)


# prlimit(2): rlim_t is 64-bit unsigned on every Linux ABI Hull runs on, so the
# OCI uint64 values pass through unchanged; all ones is RLIM_INFINITY.
RLIM_INFINITY = (1 << 64) - 1


def prlimit(pid: int, resource: int, limits: tuple[int, int] | None = None) -> tuple[int, int]:
    """Set (when limits is given) and return the previous (soft, hard) of a resource.

    Unlike the `resource` module (not worth its import on the start path), values
    are unsigned: RLIM_INFINITY is 2**64-1, not -1.
    """
    old = u64_array(0, 0)  # struct rlimit
    new = u64_array(*limits) if limits is not None else None
    _check(
        _prlimit(pid, resource, new, old),
        f"prlimit({resource})",
    )
    return old[0], old[1]
