"""Compiled seccomp filters, kept as BPF programs between container starts.

libseccomp turns Docker's default profile (~350 rules) into BPF in ~10 ms here:
the rule adds, then the compile inside seccomp_load. The program depends only on
the profile, this architecture and libseccomp, so the first start compiles it
(seccomp_export_bpf) and saves it; later starts load the saved bytes with
seccomp(2) themselves, as seccomp_load would, and never load libseccomp at all.

The cache is a directory of the runtime's root (`@seccomp-bpf`: `@` is outside
the container id alphabet), root-only like the rest of that root and never
mounted into a container. Files are written whole (temp file, rename); one that
is not a whole number of BPF instructions is ignored and rewritten.
"""

from __future__ import annotations

import errno
import marshal

from hull.errors import KernelError
from hull.runtime import posixos as os

TYPE_CHECKING = False
if TYPE_CHECKING:
    from hull.runtime.linux.seccomp import Filter

CACHE_DIR_NAME = "@seccomp-bpf"
FORMAT = 1  # bump when what goes into a key or a file changes
_INSTRUCTION = 8  # sizeof(struct sock_filter)
# OCI flags that are seccomp(2) flags at load time (TSYNC: single-threaded, as runc).
_LOAD_FLAGS = {
    "SECCOMP_FILTER_FLAG_TSYNC": 0,
    "SECCOMP_FILTER_FLAG_LOG": 2,
    "SECCOMP_FILTER_FLAG_SPEC_ALLOW": 4,
}


class CachedFilter:
    """A BPF program ready for seccomp(2): the part of seccomp.Filter that
    process.prepare_exec uses (load, release)."""

    __slots__ = ("program", "flags")

    def __init__(self, program: bytes, flags: int) -> None:
        self.program = program
        self.flags = flags

    def load(self) -> None:
        from hull.runtime.linux import syscalls as sc  # loaded: stage 1 runs on it

        try:
            sc.seccomp_set_filter(self.program, self.flags)
        except OSError as err:
            raise load_error(err.errno or 0) from None

    def release(self) -> None:
        pass


def load_error(errnum: int) -> KernelError:
    """What a refused filter load says, from here or from libseccomp's seccomp_load."""
    reason = os.strerror(errnum)
    if errnum == errno.EACCES:
        reason += " (needs CAP_SYS_ADMIN or no_new_privs set first)"
    return KernelError(f"cannot load seccomp filter: {reason}")


def cache_dir_for(state_dir: str) -> str:
    """The cache beside a container's state dir (both under the runtime's root)."""
    return os.path.join(os.path.dirname(state_dir), CACHE_DIR_NAME)


def compile_cached(spec: dict, cache_dir: str | None) -> Filter | CachedFilter:
    """The filter for spec: from the cache when there, else compiled and saved.

    Without a usable cache (none given, unreadable: a user namespace's mapped
    root) this is seccomp.compile(spec), a libseccomp filter.
    """
    path = os.path.join(cache_dir, _key(spec) + ".bpf") if cache_dir else None
    if path is not None:
        program = _read(path)
        if program is not None:
            return CachedFilter(program, _load_flags(spec))
    from hull.runtime.linux import seccomp

    compiled = seccomp.compile(spec)
    if path is None:
        return compiled
    try:
        program = compiled.export_bpf()
    except OSError:
        return compiled
    compiled.release()
    _write(path, program)
    return CachedFilter(program, _load_flags(spec))


def _key(spec: dict) -> str:
    """sha256 of the profile as parsed (marshal: builtin, and stable for one
    interpreter), the format and the machine."""
    import _sha256

    # Version 2: no back-references, whose use depends on reference counts, so
    # equal profiles always give equal bytes (one file per profile, not several).
    data = marshal.dumps((FORMAT, os.uname().machine, spec), 2)
    return _sha256.sha256(data).hexdigest()


def _load_flags(spec: dict) -> int:
    flags = 0
    for name in spec.get("flags") or []:
        flags |= _LOAD_FLAGS.get(name, 0)  # seccomp.compile rejected any other
    return flags


def _read(path: str) -> bytes | None:
    try:
        with open(path, "rb") as f:
            program = f.read()
    except OSError:
        return None
    if not program or len(program) % _INSTRUCTION:
        return None
    return program


def _write(path: str, program: bytes) -> None:
    """Best effort: a start never fails because the cache cannot be written."""
    directory = os.path.dirname(path)
    tmp = f"{path}.{os.getpid()}.tmp"
    try:
        os.makedirs(directory, mode=0o700, exist_ok=True)
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
        try:
            os.write(fd, program)
        finally:
            os.close(fd)
        os.rename(tmp, path)
    except OSError:
        try:
            os.unlink(tmp)
        except OSError:
            pass
