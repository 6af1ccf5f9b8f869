"""Compile and load the OCI `linux.seccomp` filter with libseccomp (through ctypes).

Semantics follow runc's libcontainer/seccomp: syscall names this architecture
does not know are skipped, rules whose action equals the default are dropped,
conditions on the same argument become separate rules, and libseccomp is told
not to set no_new_privs itself (that is process.noNewPrivileges' job).

Without no_new_privs, loading a filter needs CAP_SYS_ADMIN, so the runtime loads
it before dropping capabilities; with it, as late as possible, just before
execve, so that few syscalls run under the filter. `needs_early_load` says which.
Not done (yet): SCMP_ACT_NOTIFY and runc's -ENOSYS patching of the BPF program
for syscalls newer than the profile (they get the default action instead).
"""

from __future__ import annotations

import ctypes
import errno
import os
from _collections_abc import Mapping  # what collections.abc re-exports; os already loaded it

from hull.errors import ConfigError, KernelError
from hull.runtime.linux.seccomp_cache import load_error
from hull.runtime.warn import debug

TYPE_CHECKING = False
if TYPE_CHECKING:  # `typing` costs milliseconds on the runtime's start path
    from typing import Any, TypeGuard

# libseccomp's seccomp.h: actions. ERRNO and TRACE carry 16 bits of data.
_ACT_KILL_PROCESS = 0x80000000
_ACT_KILL_THREAD = 0x00000000
_ACT_TRAP = 0x00030000
_ACT_ERRNO = 0x00050000
_ACT_TRACE = 0x7FF00000
_ACT_LOG = 0x7FFC0000
_ACT_ALLOW = 0x7FFF0000
_ACT_NOTIFY = 0x7FC00000

_SIMPLE_ACTIONS = {
    "SCMP_ACT_KILL": _ACT_KILL_THREAD,
    "SCMP_ACT_KILL_THREAD": _ACT_KILL_THREAD,
    "SCMP_ACT_KILL_PROCESS": _ACT_KILL_PROCESS,
    "SCMP_ACT_TRAP": _ACT_TRAP,
    "SCMP_ACT_LOG": _ACT_LOG,
    "SCMP_ACT_ALLOW": _ACT_ALLOW,
}
_DATA_ACTIONS = {"SCMP_ACT_ERRNO": _ACT_ERRNO, "SCMP_ACT_TRACE": _ACT_TRACE}
ACTIONS = frozenset({*_SIMPLE_ACTIONS, *_DATA_ACTIONS, "SCMP_ACT_NOTIFY"})

# enum scmp_compare.
OPERATORS = {
    "SCMP_CMP_NE": 1,
    "SCMP_CMP_LT": 2,
    "SCMP_CMP_LE": 3,
    "SCMP_CMP_EQ": 4,
    "SCMP_CMP_GE": 5,
    "SCMP_CMP_GT": 6,
    "SCMP_CMP_MASKED_EQ": 7,
}

# OCI architecture name -> libseccomp's own name for it (seccomp_arch_resolve_name).
ARCHITECTURES = {
    f"SCMP_ARCH_{name.upper()}": name
    for name in (
        "x86",
        "x86_64",
        "x32",
        "arm",
        "aarch64",
        "loongarch64",
        "m68k",
        "mips",
        "mips64",
        "mips64n32",
        "mipsel",
        "mipsel64",
        "mipsel64n32",
        "ppc",
        "ppc64",
        "ppc64le",
        "s390",
        "s390x",
        "parisc",
        "parisc64",
        "riscv64",
        "sh",
        "sheb",
    )
}

# enum scmp_filter_attr.
_ATTR_CTL_NNP = 3
_ATTR_CTL_LOG = 6
_ATTR_CTL_SSB = 7
_ATTR_CTL_OPTIMIZE = 8
_ATTR_API_SYSRAWRC = 9

# OCI flag -> the filter attribute that sets it; TSYNC needs nothing in a
# single-threaded process about to exec (runc ignores it too).
_FLAG_ATTRS: dict[str, int | None] = {
    "SECCOMP_FILTER_FLAG_TSYNC": None,
    "SECCOMP_FILTER_FLAG_LOG": _ATTR_CTL_LOG,
    "SECCOMP_FILTER_FLAG_SPEC_ALLOW": _ATTR_CTL_SSB,
}

_NR_SCMP_ERROR = -1
_MAX_ARGS = 6


class _ArgCmp(ctypes.Structure):
    _fields_ = [
        ("arg", ctypes.c_uint),
        ("op", ctypes.c_int),
        ("datum_a", ctypes.c_uint64),
        ("datum_b", ctypes.c_uint64),
    ]


_loaded: ctypes.CDLL | None = None


def _lib() -> ctypes.CDLL:
    """libseccomp.so.2, loaded on first use so importing this module costs nothing.

    Found by its soname through the dynamic loader's own search, as ctypes.util's
    find_library (which runs ldconfig -p, and costs an import) would find it.
    """
    global _loaded
    if _loaded is not None:
        return _loaded
    try:
        lib = ctypes.CDLL("libseccomp.so.2", use_errno=True)
    except OSError as e:
        raise KernelError(f"seccomp needs libseccomp (libseccomp.so.2): {e}") from e
    lib.seccomp_init.argtypes = [ctypes.c_uint32]
    lib.seccomp_init.restype = ctypes.c_void_p
    lib.seccomp_release.argtypes = [ctypes.c_void_p]
    lib.seccomp_release.restype = None
    lib.seccomp_arch_resolve_name.argtypes = [ctypes.c_char_p]
    lib.seccomp_arch_resolve_name.restype = ctypes.c_uint32
    lib.seccomp_arch_add.argtypes = [ctypes.c_void_p, ctypes.c_uint32]
    lib.seccomp_attr_set.argtypes = [ctypes.c_void_p, ctypes.c_int, ctypes.c_uint32]
    lib.seccomp_syscall_resolve_name.argtypes = [ctypes.c_char_p]
    lib.seccomp_syscall_resolve_name.restype = ctypes.c_int
    lib.seccomp_rule_add_array.argtypes = [
        ctypes.c_void_p,
        ctypes.c_uint32,
        ctypes.c_int,
        ctypes.c_uint,
        ctypes.POINTER(_ArgCmp),
    ]
    lib.seccomp_load.argtypes = [ctypes.c_void_p]
    lib.seccomp_export_bpf.argtypes = [ctypes.c_void_p, ctypes.c_int]
    _loaded = lib
    return lib


class Filter:
    """A compiled libseccomp filter context; release() (or `with`) frees it."""

    def __init__(self, ctx: int) -> None:
        self._ctx: int | None = ctx

    @property
    def ctx(self) -> int:
        if self._ctx is None:
            raise ValueError("seccomp filter already released")
        return self._ctx

    def load(self) -> None:
        """Install the filter on the calling thread (seccomp_load)."""
        rc = _lib().seccomp_load(self.ctx)
        if rc < 0:
            raise load_error(-rc)

    def export_bpf(self) -> bytes:
        """The BPF program the kernel would get, for inspection and tests."""
        fd = os.memfd_create("hull-seccomp-bpf", os.MFD_CLOEXEC)
        with open(fd, "rb") as f:
            rc = _lib().seccomp_export_bpf(self.ctx, fd)
            if rc < 0:
                raise KernelError(f"cannot export seccomp filter: {os.strerror(-rc)}")
            f.seek(0)
            return f.read()

    def release(self) -> None:
        if self._ctx is not None:
            _lib().seccomp_release(self._ctx)
            self._ctx = None

    def __enter__(self) -> Filter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


def _action(name: Any, errno_ret: Any, where: str) -> int:
    if name == "SCMP_ACT_NOTIFY":
        raise ConfigError(f"{where}: SCMP_ACT_NOTIFY is not supported by hull-runtime")
    if name in _SIMPLE_ACTIONS:
        return _SIMPLE_ACTIONS[name]
    if name in _DATA_ACTIONS:
        if errno_ret is None:
            errno_ret = errno.EPERM
        if not _is_uint(errno_ret) or errno_ret > 0xFFFF:
            raise ConfigError(f"{where}: errnoRet must be an integer 0..65535, got {errno_ret!r}")
        return _DATA_ACTIONS[name] | errno_ret
    raise ConfigError(
        f"{where}: unknown seccomp action {name!r} (expected one of {', '.join(sorted(ACTIONS))})"
    )


def _is_uint(value: Any) -> TypeGuard[int]:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _conditions(args: Any, where: str) -> list[_ArgCmp]:
    if args is None:
        return []
    if not isinstance(args, list):
        raise ConfigError(f"{where}: args must be a list")
    result = []
    for arg in args:
        if not isinstance(arg, Mapping):
            raise ConfigError(f"{where}: each args entry must be an object")
        index, op = arg.get("index"), arg.get("op")
        value, value_two = arg.get("value", 0), arg.get("valueTwo", 0)
        if not _is_uint(index) or index >= _MAX_ARGS:
            raise ConfigError(f"{where}: argument index must be 0..5, got {index!r}")
        if op not in OPERATORS:
            raise ConfigError(
                f"{where}: unknown seccomp operator {op!r} (expected one of {', '.join(OPERATORS)})"
            )
        for v in (value, value_two):
            if not _is_uint(v) or v >= 1 << 64:
                raise ConfigError(f"{where}: argument value must be a 64-bit unsigned int")
        result.append(_ArgCmp(index, OPERATORS[op], value, value_two))
    return result


def _rule_groups(conditions: list[_ArgCmp]) -> list[list[_ArgCmp]]:
    """runc's rule: two conditions on one argument cannot share a rule (libseccomp
    rejects it), so they become one rule each (an OR); otherwise one rule (an AND)."""
    indexes = [c.arg for c in conditions]
    if len(set(indexes)) != len(indexes):
        return [[c] for c in conditions]
    return [conditions]


def _check(rc: int, what: str) -> None:
    if rc < 0:
        raise ConfigError(f"{what}: {os.strerror(-rc)}")


def preload() -> None:
    """Load libseccomp ahead of compile() (the early stage 1 worker does, while it
    waits for a config that most likely has a profile)."""
    _lib()


def compile(spec: Mapping[str, Any]) -> Filter:
    """Validate an OCI linux.seccomp object and build its libseccomp filter.

    Nothing is loaded; the caller loads or inspects the Filter and releases it.
    """
    if not isinstance(spec, Mapping):
        raise ConfigError("linux.seccomp must be an object")
    if spec.get("listenerPath") or spec.get("listenerMetadata"):
        raise ConfigError("linux.seccomp: listenerPath (seccomp notify) is not supported")
    default_action = _action(
        spec.get("defaultAction"), spec.get("defaultErrnoRet"), "linux.seccomp.defaultAction"
    )
    arch_tokens = [_arch_token(a) for a in spec.get("architectures") or []]
    flag_attrs = [(f, _flag_attr(f)) for f in spec.get("flags") or []]
    syscall_rules = spec.get("syscalls") or []
    if not isinstance(syscall_rules, list):
        raise ConfigError("linux.seccomp.syscalls must be a list")

    lib = _lib()
    ctx = lib.seccomp_init(default_action)
    if not ctx:
        raise KernelError("seccomp_init failed (libseccomp out of memory or bad action)")
    flt = Filter(ctx)
    try:
        for token in arch_tokens:
            rc = lib.seccomp_arch_add(ctx, token)
            if rc < 0 and -rc != errno.EEXIST:  # the native arch is always present
                _check(rc, "linux.seccomp: cannot add architecture")
        for flag, attr in flag_attrs:
            if attr is not None:
                _check(lib.seccomp_attr_set(ctx, attr, 1), f"linux.seccomp: cannot set {flag}")
        # no_new_privs is process.noNewPrivileges' business, not libseccomp's.
        _check(lib.seccomp_attr_set(ctx, _ATTR_CTL_NNP, 0), "linux.seccomp: clearing NNP")
        # Report the kernel's own errno from seccomp_load (EACCES...), not ECANCELED.
        lib.seccomp_attr_set(ctx, _ATTR_API_SYSRAWRC, 1)
        if len(syscall_rules) > 32:
            # Binary-tree dispatch: big profiles otherwise cost a linear scan per syscall.
            lib.seccomp_attr_set(ctx, _ATTR_CTL_OPTIMIZE, 2)
        for number, rule in enumerate(syscall_rules):
            _add_rule(lib, ctx, rule, default_action, f"linux.seccomp.syscalls[{number}]")
    except BaseException:
        flt.release()
        raise
    return flt


def _arch_token(name: Any) -> int:
    lib_name = ARCHITECTURES.get(name) if isinstance(name, str) else None
    token = _lib().seccomp_arch_resolve_name(lib_name.encode()) if lib_name else 0
    if not token:
        raise ConfigError(f"linux.seccomp: unknown or unsupported architecture {name!r}")
    return int(token)


def _flag_attr(flag: Any) -> int | None:
    if flag not in _FLAG_ATTRS:
        raise ConfigError(
            f"linux.seccomp: unsupported flag {flag!r} (supported: {', '.join(_FLAG_ATTRS)})"
        )
    return _FLAG_ATTRS[flag]


def _add_rule(lib: ctypes.CDLL, ctx: int, rule: Any, default_action: int, where: str) -> None:
    if not isinstance(rule, Mapping):
        raise ConfigError(f"{where} must be an object")
    names = rule.get("names")
    if not isinstance(names, list) or not names or not all(isinstance(n, str) and n for n in names):
        raise ConfigError(f"{where}.names must be a non-empty list of syscall names")
    action = _action(rule.get("action"), rule.get("errnoRet"), where)
    groups = _rule_groups(_conditions(rule.get("args"), where))
    if action == default_action:
        return  # redundant; libseccomp would refuse it
    for name in names:
        number = lib.seccomp_syscall_resolve_name(name.encode())
        if number == _NR_SCMP_ERROR:
            debug(f"seccomp: syscall {name!r} unknown on this architecture, skipped", __name__)
            continue
        for group in groups:
            array = (_ArgCmp * len(group))(*group)
            rc = lib.seccomp_rule_add_array(ctx, action, number, len(group), array)
            _check(rc, f"{where}: cannot add rule for {name}")


def load(spec: Mapping[str, Any]) -> None:
    """Compile the filter and install it on the calling process."""
    with compile(spec) as flt:
        flt.load()


def validate(spec: Mapping[str, Any] | None) -> None:
    """Compile without loading, to reject a bad profile at create time."""
    if spec is not None:
        compile(spec).release()


def needs_early_load(no_new_privs: bool) -> bool:
    """Whether to load the filter before capabilities are dropped.

    Without no_new_privs the kernel only lets a process holding CAP_SYS_ADMIN
    install a filter, so it must go in while the process still has it (the
    filter then also governs the remaining setup syscalls, as in runc).
    """
    return not no_new_privs
