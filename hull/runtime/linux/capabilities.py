"""Linux capabilities of the container process: names, masks, bounding set, capset.

Runs in the container's init (or exec) process just before execve, in the order
runc's finalizeNamespace uses: drop_bounding() while still root (it needs
CAP_SETPCAP), then the lead's keepcaps + uid/gid switch, then apply().
"""

from __future__ import annotations

import errno

from hull.errors import ConfigError, KernelError
from hull.runtime.warn import warn

TYPE_CHECKING = False
if TYPE_CHECKING:  # `typing` and `collections` cost milliseconds on the start path
    from collections.abc import Iterable, Mapping
    from typing import Any

# linux/capability.h, in the OCI spelling.
CAPS: dict[str, int] = {
    "CAP_CHOWN": 0,
    "CAP_DAC_OVERRIDE": 1,
    "CAP_DAC_READ_SEARCH": 2,
    "CAP_FOWNER": 3,
    "CAP_FSETID": 4,
    "CAP_KILL": 5,
    "CAP_SETGID": 6,
    "CAP_SETUID": 7,
    "CAP_SETPCAP": 8,
    "CAP_LINUX_IMMUTABLE": 9,
    "CAP_NET_BIND_SERVICE": 10,
    "CAP_NET_BROADCAST": 11,
    "CAP_NET_ADMIN": 12,
    "CAP_NET_RAW": 13,
    "CAP_IPC_LOCK": 14,
    "CAP_IPC_OWNER": 15,
    "CAP_SYS_MODULE": 16,
    "CAP_SYS_RAWIO": 17,
    "CAP_SYS_CHROOT": 18,
    "CAP_SYS_PTRACE": 19,
    "CAP_SYS_PACCT": 20,
    "CAP_SYS_ADMIN": 21,
    "CAP_SYS_BOOT": 22,
    "CAP_SYS_NICE": 23,
    "CAP_SYS_RESOURCE": 24,
    "CAP_SYS_TIME": 25,
    "CAP_SYS_TTY_CONFIG": 26,
    "CAP_MKNOD": 27,
    "CAP_LEASE": 28,
    "CAP_AUDIT_WRITE": 29,
    "CAP_AUDIT_CONTROL": 30,
    "CAP_SETFCAP": 31,
    "CAP_MAC_OVERRIDE": 32,
    "CAP_MAC_ADMIN": 33,
    "CAP_SYSLOG": 34,
    "CAP_WAKE_ALARM": 35,
    "CAP_BLOCK_SUSPEND": 36,
    "CAP_AUDIT_READ": 37,
    "CAP_PERFMON": 38,
    "CAP_BPF": 39,
    "CAP_CHECKPOINT_RESTORE": 40,
}
_NAMES_BY_NUMBER = {number: name for name, number in CAPS.items()}

_SETS = ("bounding", "effective", "inheritable", "permitted", "ambient")

_last_cap: int | None = None


def __getattr__(name: str) -> list[str]:
    """DOCKER_DEFAULT, Docker's default capability set, read on first use.

    It lives with the default seccomp profile, whose module is too heavy to load
    on the start path of `hull-runtime run`, which never needs this list.
    """
    if name == "DOCKER_DEFAULT":
        from hull.oci.default_seccomp import DOCKER_DEFAULT_CAPS

        return list(DOCKER_DEFAULT_CAPS)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def last_cap() -> int:
    """The highest capability this kernel knows (/proc/sys/kernel/cap_last_cap)."""
    global _last_cap
    if _last_cap is None:
        try:
            with open("/proc/sys/kernel/cap_last_cap", "rb") as f:
                _last_cap = int(f.read())
        except (OSError, ValueError):
            # No /proc (e.g. before it is mounted): assume the kernel knows what we know.
            return max(CAPS.values())
    return _last_cap


def parse(names: Iterable[str]) -> int:
    """Turn OCI capability names into a bit mask.

    Unknown names are a config error; names this kernel is too old for are left out
    with a warning, as runc does, so one config runs on many kernels.
    """
    mask = 0
    unavailable = []
    for name in names:
        number = CAPS.get(name)
        if number is None:
            raise ConfigError(f"unknown capability {name!r}")
        if number > last_cap():
            unavailable.append(name)
            continue
        mask |= 1 << number
    if unavailable:
        warn(f"ignoring capabilities this kernel lacks: {', '.join(unavailable)}", __name__)
    return mask


def names(mask: int) -> list[str]:
    """The OCI names of the bits set in mask, lowest first."""
    return [name for number, name in sorted(_NAMES_BY_NUMBER.items()) if mask >> number & 1]


def validate(caps: Mapping[str, Any] | None) -> None:
    """Check an OCI process.capabilities object without touching the kernel.

    Used at create time so a bad config fails before anything is forked.
    """
    if caps is None:
        return
    if not isinstance(caps, dict):
        raise ConfigError("process.capabilities must be an object")
    for key in _SETS:
        value = caps.get(key)
        if value is None:
            continue
        if not isinstance(value, list) or not all(isinstance(n, str) for n in value):
            raise ConfigError(f"process.capabilities.{key} must be a list of names")
        for name in value:
            if name not in CAPS:
                raise ConfigError(f"unknown capability {name!r} in process.capabilities.{key}")


def _mask(caps: Mapping[str, Any], key: str) -> int:
    return parse(caps.get(key) or [])


def drop_bounding(caps: Mapping[str, Any] | None) -> None:
    """Drop from the bounding set every capability not in caps["bounding"].

    Must run while the process still holds CAP_SETPCAP, i.e. before the uid switch.
    """
    from hull.runtime.linux import syscalls  # ctypes: only where a syscall is made

    keep = _mask(caps or {}, "bounding")
    for number in range(last_cap() + 1):
        if keep >> number & 1:
            continue
        try:
            syscalls.prctl(syscalls.PR_CAPBSET_DROP, number)
        except OSError as e:
            # Without CAP_SETPCAP every drop fails, even of a capability that is
            # already gone; that one is fine. (Reading first would cost a syscall
            # per capability on the common path, where all are present.)
            if e.errno == errno.EPERM and not syscalls.prctl(syscalls.PR_CAPBSET_READ, number):
                continue
            name = _NAMES_BY_NUMBER.get(number, str(number))
            raise KernelError(f"cannot drop {name} from the bounding set: {e.strerror}") from e


def apply(caps: Mapping[str, Any] | None) -> None:
    """Set the effective, permitted and inheritable sets, then the ambient set.

    Ambient capabilities must be in both permitted and inheritable (the kernel's
    rule), so they are raised last, one by one, after clearing the set.
    """
    from hull.runtime.linux import syscalls  # ctypes: only where a syscall is made

    caps = caps or {}
    effective = _mask(caps, "effective")
    permitted = _mask(caps, "permitted")
    inheritable = _mask(caps, "inheritable")
    ambient = _mask(caps, "ambient")
    try:
        syscalls.capset(effective, permitted, inheritable)
    except OSError as e:
        hint = ""
        if e.errno == errno.EPERM:
            hint = (
                " (effective must be a subset of permitted, and permitted and inheritable"
                " cannot grow beyond what the process holds)"
            )
        raise KernelError(f"cannot set capabilities: {e.strerror}{hint}") from e
    _apply_ambient(ambient)


def _apply_ambient(ambient: int) -> None:
    from hull.runtime.linux import syscalls  # ctypes: only where a syscall is made

    try:
        syscalls.prctl(syscalls.PR_CAP_AMBIENT, syscalls.PR_CAP_AMBIENT_CLEAR_ALL)
    except OSError as e:
        if ambient == 0 and e.errno == errno.EINVAL:
            return  # kernel without ambient capabilities (< 4.3): nothing asked anyway
        raise KernelError(f"cannot clear ambient capabilities: {e.strerror}") from e
    for number in range(ambient.bit_length()):
        if not ambient >> number & 1:
            continue
        try:
            syscalls.prctl(syscalls.PR_CAP_AMBIENT, syscalls.PR_CAP_AMBIENT_RAISE, number)
        except OSError as e:
            raise KernelError(
                f"cannot raise ambient capability {_NAMES_BY_NUMBER[number]}: {e.strerror}"
                " (it must be in both permitted and inheritable)"
            ) from e
