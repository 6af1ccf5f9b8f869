"""Resource limits (process.rlimits) of the container process.

validate() is the pure check done at create time; apply() runs in the forked
container process before execve. Raising a hard limit needs CAP_SYS_RESOURCE,
which some hosts (this one) do not grant even to root: rather than fail the
container, apply() clamps such a request to the current hard limit and warns.
"""

from __future__ import annotations

from hull.errors import ConfigError, KernelError
from hull.runtime.warn import warn

TYPE_CHECKING = False
if TYPE_CHECKING:  # `typing` and `collections` cost milliseconds on the start path
    from collections.abc import Mapping, Sequence
    from typing import Any

# asm-generic/resource.h numbering (x86_64 and aarch64 share it): the OCI names
# runtime_spec.validate accepts. Here, not there: stage 1 imports this module, and
# the spec module would cost it ~0.2 ms more.
RLIMITS: dict[str, int] = {
    "RLIMIT_CPU": 0,
    "RLIMIT_FSIZE": 1,
    "RLIMIT_DATA": 2,
    "RLIMIT_STACK": 3,
    "RLIMIT_CORE": 4,
    "RLIMIT_RSS": 5,
    "RLIMIT_NPROC": 6,
    "RLIMIT_NOFILE": 7,
    "RLIMIT_MEMLOCK": 8,
    "RLIMIT_AS": 9,
    "RLIMIT_LOCKS": 10,
    "RLIMIT_SIGPENDING": 11,
    "RLIMIT_MSGQUEUE": 12,
    "RLIMIT_NICE": 13,
    "RLIMIT_RTPRIO": 14,
    "RLIMIT_RTTIME": 15,
}

# The OCI spec's values are uint64, as is the kernel's rlim_t, and prlimit goes
# through ctypes (syscalls.prlimit), so values pass unchanged: all ones is
# RLIM_INFINITY, the largest value, and limits compare as plain integers.
_UINT64_MAX = 2**64 - 1  # RLIM_INFINITY


def _limit_value(entry: Mapping[str, Any], key: str, where: str) -> int:
    value = entry.get(key)
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= _UINT64_MAX:
        raise ConfigError(f"{where}.{key} must be an unsigned 64-bit integer, got {value!r}")
    return value


def _parsed(rlimits: Sequence[Mapping[str, Any]] | None) -> list[tuple[str, int, int]]:
    if rlimits is None:
        return []
    if not isinstance(rlimits, list):
        raise ConfigError("process.rlimits must be a list")
    result: list[tuple[str, int, int]] = []
    seen: set[str] = set()
    for number, entry in enumerate(rlimits):
        where = f"process.rlimits[{number}]"
        if not isinstance(entry, dict):
            raise ConfigError(f"{where} must be an object")
        kind = entry.get("type")
        if kind not in RLIMITS:
            raise ConfigError(f"{where}: unknown rlimit type {kind!r}")
        if kind in seen:
            raise ConfigError(f"{where}: {kind} is given more than once")
        seen.add(kind)
        soft = _limit_value(entry, "soft", where)
        hard = _limit_value(entry, "hard", where)
        if soft > hard:
            raise ConfigError(
                f"{where}: {kind} soft limit {_show(soft)} is above its hard limit {_show(hard)}"
            )
        result.append((kind, soft, hard))
    return result


def validate(rlimits: Sequence[Mapping[str, Any]] | None) -> None:
    """Reject unknown types, duplicates, bad values and soft > hard, touching nothing."""
    _parsed(rlimits)


def apply(rlimits: Sequence[Mapping[str, Any]] | None) -> None:
    """Set each limit on the calling process (prlimit on ourselves)."""
    for kind, soft, hard in _parsed(rlimits):
        _apply_one(kind, RLIMITS[kind], soft, hard)


def _apply_one(kind: str, number: int, soft: int, hard: int) -> None:
    from hull.runtime.linux import syscalls  # ctypes: only where a syscall is made

    try:
        syscalls.prlimit(0, number, (soft, hard))
        return
    except PermissionError:
        pass  # a hard limit above ours, without CAP_SYS_RESOURCE (or above nr_open)
    except OSError as e:
        raise KernelError(f"cannot set {kind}: {e}") from e
    _, current_hard = syscalls.prlimit(0, number)
    if hard <= current_hard:
        raise KernelError(f"cannot set {kind} to soft={soft} hard={hard}: permission denied")
    clamped_soft = min(soft, current_hard)
    warn(
        f"{kind} hard limit {_show(hard)} is above the allowed {_show(current_hard)} "
        f"(no CAP_SYS_RESOURCE); using soft={_show(clamped_soft)} hard={_show(current_hard)}",
        __name__,
    )
    try:
        syscalls.prlimit(0, number, (clamped_soft, current_hard))
    except OSError as e:
        raise KernelError(f"cannot set {kind}: {e}") from e


def _show(value: int) -> str:
    return "unlimited" if value == _UINT64_MAX else str(value)
