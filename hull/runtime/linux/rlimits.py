"""Resource limits (process.rlimits) of the container process.

validate() is the pure check done at create time; apply() runs in the forked
container process before execve. Raising a hard limit needs CAP_SYS_RESOURCE,
which some hosts (this one) do not grant even to root: rather than fail the
container, apply() clamps such a request to the current hard limit and warns.
"""

from __future__ import annotations

import logging
import resource
from collections.abc import Mapping, Sequence
from typing import Any

from hull.errors import ConfigError, KernelError

log = logging.getLogger(__name__)

# asm-generic/resource.h (x86_64 and aarch64 use the generic numbering).
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

# The OCI spec's values are uint64; RLIM_INFINITY is all ones. Values that do not
# fit Python's signed rlim_t conversion are that large only to mean "unlimited".
_UINT64_MAX = (1 << 64) - 1
_SIGNED_MAX = (1 << 63) - 1


def _to_rlim(value: int) -> int:
    return resource.RLIM_INFINITY if value > _SIGNED_MAX else value


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
        if not isinstance(entry, Mapping):
            raise ConfigError(f"{where} must be an object")
        kind = entry.get("type")
        if kind not in RLIMITS:
            raise ConfigError(f"{where}: unknown rlimit type {kind!r}")
        if kind in seen:
            raise ConfigError(f"{where}: {kind} is given more than once")
        seen.add(kind)
        soft = _limit_value(entry, "soft", where)
        hard = _limit_value(entry, "hard", where)
        if _above(_to_rlim(soft), _to_rlim(hard)):
            shown_soft, shown_hard = _show(_to_rlim(soft)), _show(_to_rlim(hard))
            raise ConfigError(
                f"{where}: {kind} soft limit {shown_soft} is above its hard limit {shown_hard}"
            )
        result.append((kind, soft, hard))
    return result


def validate(rlimits: Sequence[Mapping[str, Any]] | None) -> None:
    """Reject unknown types, duplicates, bad values and soft > hard, touching nothing."""
    _parsed(rlimits)


def apply(rlimits: Sequence[Mapping[str, Any]] | None) -> None:
    """Set each limit on the calling process (prlimit on ourselves)."""
    for kind, soft, hard in _parsed(rlimits):
        _apply_one(kind, RLIMITS[kind], _to_rlim(soft), _to_rlim(hard))


def _above(a: int, b: int) -> bool:
    """a > b with RLIM_INFINITY (-1 in Python) as the largest value."""
    inf = resource.RLIM_INFINITY
    if a == b:
        return False
    return a == inf or (b != inf and a > b)


def _apply_one(kind: str, number: int, soft: int, hard: int) -> None:
    try:
        resource.prlimit(0, number, (soft, hard))
        return
    except PermissionError:
        pass  # a hard limit above ours, without CAP_SYS_RESOURCE (or above nr_open)
    except (OSError, ValueError) as e:
        raise KernelError(f"cannot set {kind}: {e}") from e
    _, current_hard = resource.getrlimit(number)
    if not _above(hard, current_hard):
        raise KernelError(f"cannot set {kind} to soft={soft} hard={hard}: permission denied")
    clamped_soft = current_hard if _above(soft, current_hard) else soft
    log.warning(
        "%s hard limit %s is above the allowed %s (no CAP_SYS_RESOURCE); using soft=%s hard=%s",
        kind,
        _show(hard),
        _show(current_hard),
        _show(clamped_soft),
        _show(current_hard),
    )
    try:
        resource.prlimit(0, number, (clamped_soft, current_hard))
    except (OSError, ValueError) as e:
        raise KernelError(f"cannot set {kind}: {e}") from e


def _show(value: int) -> str:
    return "unlimited" if value == resource.RLIM_INFINITY else str(value)
