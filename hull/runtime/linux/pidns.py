"""fork_pid1(): fork a child that is PID 1 of a new pid namespace.

unshare(CLONE_NEWPID) moves only the caller's future children, so the runtime
unshares, forks, and at once setns()es back to its own pid namespace: the one
child is the container's init from its first instruction, and no second fork
is needed to get a PID 1 (runc's and crun's init double-fork for that).

The runtime calls this before it has read anything (hull.runtime.prefork), so
the two system calls go through `_ctypes` directly, as linux.syscalls does, but
without that module's other wrappers: this is what both processes wait for. No
`from __future__` either: that is one more module to load before the fork.

(Making the namespace in the worker instead, so that the runtime would need no
ctypes, was measured slower: the worker's PID 1 is then a third process that
starts late, queued behind its parents on 2 CPUs.)
"""

import _ctypes

from hull.runtime import posixos as os

CLONE_NEWPID = 0x20000000
_RTLD_NOW = 2
_NR = {"x86_64": (272, 308), "aarch64": (97, 268)}  # (unshare, setns)


class _Long(_ctypes._SimpleCData):
    _type_ = "l"


class _Syscall(_ctypes.CFuncPtr):
    _flags_ = _ctypes.FUNCFLAG_CDECL | _ctypes.FUNCFLAG_USE_ERRNO
    _restype_ = _Long


class _Libc:
    _handle = _ctypes.dlopen(None, _RTLD_NOW)  # type: ignore[arg-type]  # None: ourselves


_syscall = _Syscall(("syscall", _Libc()))  # type: ignore[arg-type]  # any object with _handle


def _call(what: str, nr: int, *args: int) -> None:
    if _syscall(_Long(nr), *(_Long(a) for a in args)) < 0:
        err = _ctypes.get_errno()
        raise OSError(err, f"{what}: {os.strerror(err)}")


def fork_pid1() -> int:
    """os.fork() whose child is PID 1 of a new pid namespace (0 in the child).

    Raises OSError, with nothing forked, when the kernel refuses (an unknown
    architecture, no CAP_SYS_ADMIN): the caller then forks as usual.
    """
    nr_unshare, nr_setns = _NR.get(os.uname().machine, (-1, -1))
    if nr_unshare < 0:
        raise OSError(38, "fork_pid1: unknown architecture")
    own = os.open("/proc/self/ns/pid", os.O_RDONLY | os.O_CLOEXEC)
    try:
        _call("unshare", nr_unshare, CLONE_NEWPID)
        pid = -1
        try:
            pid = os.fork()
        finally:
            if pid != 0:
                _restore(nr_setns, own, pid)
        return pid
    finally:
        os.close(own)


def _restore(nr_setns: int, own: int, child: int) -> None:
    """Make our later children ours again; without that, kill the one just forked."""
    try:
        _call("setns", nr_setns, own, CLONE_NEWPID)
    except OSError:
        if child > 0:
            os.kill(child, 9)
            os.waitpid(child, 0)
        raise
