"""Pure translation of OCI `linux.resources` into cgroup file values (no I/O).

Names follow the runtime-spec (config-linux.md, "Control groups"); the v1 -> v2
conversions follow runc so that a bundle behaves the same under either runtime.
"""

from __future__ import annotations

from hull.errors import ConfigError

TYPE_CHECKING = False
if TYPE_CHECKING:  # `typing` is not worth its import on the runtime's start path
    from typing import Any, TypeAlias

    Resources: TypeAlias = dict[str, Any]

CPU_CONTROLLER_KEYS = (
    "shares",
    "quota",
    "period",
    "realtimeRuntime",
    "realtimePeriod",
    "burst",
    "idle",
)
CPUSET_KEYS = ("cpus", "mems")
MEMORY_KEYS = ("limit", "reservation", "swap", "swappiness", "disableOOMKiller")
BLKIO_KEYS = (
    "weight",
    "leafWeight",
    "weightDevice",
    "throttleReadBpsDevice",
    "throttleWriteBpsDevice",
    "throttleReadIOPSDevice",
    "throttleWriteIOPSDevice",
)
# OCI blockIO throttle key -> (v1 file, v2 io.max key)
THROTTLES = {
    "throttleReadBpsDevice": ("blkio.throttle.read_bps_device", "rbps"),
    "throttleWriteBpsDevice": ("blkio.throttle.write_bps_device", "wbps"),
    "throttleReadIOPSDevice": ("blkio.throttle.read_iops_device", "riops"),
    "throttleWriteIOPSDevice": ("blkio.throttle.write_iops_device", "wiops"),
}


def section(resources: Resources | None, name: str) -> dict[str, Any]:
    """A resources sub-object, {} when absent or null."""
    value = (resources or {}).get(name)
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise ConfigError(f"linux.resources.{name} must be an object")
    return value


def is_set(obj: dict[str, Any], keys: tuple[str, ...]) -> bool:
    """True when any of keys carries a value (null counts as unset)."""
    return any(obj.get(key) is not None for key in keys)


def has_cpu(resources: Resources | None) -> bool:
    return is_set(section(resources, "cpu"), CPU_CONTROLLER_KEYS)


def has_cpuset(resources: Resources | None) -> bool:
    return any(section(resources, "cpu").get(key) for key in CPUSET_KEYS)


def has_memory(resources: Resources | None) -> bool:
    memory = section(resources, "memory")
    return is_set(memory, MEMORY_KEYS[:4]) or bool(memory.get("disableOOMKiller"))


def has_pids(resources: Resources | None) -> bool:
    return section(resources, "pids").get("limit") is not None


def has_blkio(resources: Resources | None) -> bool:
    return any(section(resources, "blockIO").get(key) for key in BLKIO_KEYS)


def hugepage_limits(resources: Resources | None) -> list[dict[str, Any]]:
    limits = (resources or {}).get("hugepageLimits") or []
    if not isinstance(limits, list):
        raise ConfigError("linux.resources.hugepageLimits must be a list")
    for entry in limits:
        if not isinstance(entry, dict) or not entry.get("pageSize") or "limit" not in entry:
            raise ConfigError(f"hugepageLimits entry needs pageSize and limit: {entry!r}")
        size = str(entry["pageSize"])
        if "/" in size or "." in size:
            raise ConfigError(f"invalid hugepage size {size!r}")
    return limits


def device_rules(resources: Resources | None) -> list[dict[str, Any]]:
    rules = (resources or {}).get("devices") or []
    if not isinstance(rules, list):
        raise ConfigError("linux.resources.devices must be a list")
    return rules


def _allow(kind: str, major: int | None, minor: int | None, access: str) -> dict[str, Any]:
    return {"allow": True, "type": kind, "major": major, "minor": minor, "access": access}


# runc's AllowedDevices (libcontainer/specconv), appended after the config's own
# rules: a config that denies everything ("a *:* rwm", as `hull-runtime spec` and
# Docker write) still lets init mknod /dev/null & co. and the process use them.
DEFAULT_ALLOWED_DEVICES: tuple[dict[str, Any], ...] = (
    _allow("c", None, None, "m"),  # mknod of any char device
    _allow("b", None, None, "m"),  # ... and block device; using them stays denied
    _allow("c", 1, 3, "rwm"),  # /dev/null
    _allow("c", 1, 8, "rwm"),  # /dev/random
    _allow("c", 1, 7, "rwm"),  # /dev/full
    _allow("c", 5, 0, "rwm"),  # /dev/tty
    _allow("c", 1, 5, "rwm"),  # /dev/zero
    _allow("c", 1, 9, "rwm"),  # /dev/urandom
    _allow("c", 136, None, "rwm"),  # /dev/pts/*
    _allow("c", 5, 2, "rwm"),  # /dev/ptmx
)


def device_rules_with_defaults(resources: Resources | None) -> list[dict[str, Any]]:
    """The config's device rules followed by DEFAULT_ALLOWED_DEVICES, as runc writes
    them; [] when the config has none (the cgroup then keeps allowing everything)."""
    rules = device_rules(resources)
    return [*rules, *DEFAULT_ALLOWED_DEVICES] if rules else []


def unified(resources: Resources | None) -> dict[str, str]:
    values = (resources or {}).get("unified") or {}
    if not isinstance(values, dict):
        raise ConfigError("linux.resources.unified must be an object")
    for key in values:
        if "/" in key or key.startswith(".") or "." not in key:
            raise ConfigError(f"invalid linux.resources.unified key {key!r}")
    return {key: str(value) for key, value in values.items()}


def v1_controllers_needed(resources: Resources | None) -> set[str]:
    """The v1 subsystems that must be mounted for these resources to be honoured."""
    needed: set[str] = set()
    if has_cpu(resources):
        needed.add("cpu")
    if has_cpuset(resources):
        needed.add("cpuset")
    if has_memory(resources):
        needed.add("memory")
    if has_pids(resources):
        needed.add("pids")
    if has_blkio(resources):
        needed.add("blkio")
    if hugepage_limits(resources):
        needed.add("hugetlb")
    if device_rules(resources):
        needed.add("devices")
    network = section(resources, "network")
    if network.get("classID") is not None:
        needed.add("net_cls")
    if network.get("priorities"):
        needed.add("net_prio")
    return needed


def v2_controllers_needed(resources: Resources | None) -> set[str]:
    """The cgroup2 controllers these resources need (devices is eBPF, not a controller)."""
    needed: set[str] = set()
    if has_cpu(resources):
        needed.add("cpu")
    if has_cpuset(resources):
        needed.add("cpuset")
    if has_memory(resources):
        needed.add("memory")
    if has_pids(resources):
        needed.add("pids")
    if has_blkio(resources):
        needed.add("io")
    if hugepage_limits(resources):
        needed.add("hugetlb")
    for key in unified(resources):
        controller = key.split(".", 1)[0]
        if controller != "cgroup":
            needed.add(controller)
    return needed


def as_int(obj: dict[str, Any], key: str, where: str) -> int | None:
    """An integer field, None when absent; bools and floats are config errors."""
    value = obj.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise ConfigError(f"linux.resources.{where}.{key} must be an integer, got {value!r}")
    return value


def pids_max(limit: int) -> str:
    """pids.max value: 0 and negative numbers mean no limit."""
    return "max" if limit <= 0 else str(limit)


def v2_max(value: int) -> str:
    """A cgroup2 *.max value: -1 (the v1 'unlimited') becomes 'max'."""
    if value == -1:
        return "max"
    if value < 0:
        raise ConfigError(f"invalid limit {value}")
    return str(value)


def shares_to_weight(shares: int) -> int:
    """cpu.shares [2, 262144] -> cpu.weight [1, 10000], runc's linear mapping."""
    if shares == 0:
        return 0
    shares = min(max(shares, 2), 262144)
    return 1 + ((shares - 2) * 9999) // 262142


def blkio_to_io_weight(weight: int) -> int:
    """blkio.weight [10, 1000] -> io.weight [1, 10000], runc's linear mapping."""
    if weight == 0:
        return 0
    weight = min(max(weight, 10), 1000)
    return 1 + ((weight - 10) * 9999) // 990


def swap_to_v2(swap: int | None, memory: int | None) -> int | None:
    """OCI swap is memory+swap (the v1 memsw limit); memory.swap.max is swap alone.

    Returns None when nothing should be written, -1 for "max".
    """
    mem = memory or 0
    swp = swap or 0
    if mem == -1 and swp == 0:
        return -1  # unlimited memory and no swap given: unlimited swap too
    if swp in (-1, 0):
        return None if swp == 0 else -1
    if mem in (0, -1):
        raise ConfigError("cannot set a swap limit without a memory limit")
    if mem < 0:
        raise ConfigError(f"invalid memory limit {mem}")
    if swp < mem:
        raise ConfigError(f"memory+swap limit ({swp}) must be >= the memory limit ({mem})")
    return swp - mem


def check_swappiness(value: int) -> None:
    if not 0 <= value <= 100:
        raise ConfigError(f"memory swappiness must be 0-100, got {value}")


def _device_number(value: object, what: str) -> str:
    if value is None or value == -1:
        return "*"
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ConfigError(f"invalid device {what} number {value!r}")
    return str(value)


def device_rule_line(rule: dict[str, Any]) -> tuple[bool, str]:
    """An OCI device rule -> (allow, "type major:minor access") for devices.allow/deny."""
    if not isinstance(rule, dict) or not isinstance(rule.get("allow"), bool):
        raise ConfigError(f"device rule needs a boolean 'allow': {rule!r}")
    kind = rule.get("type") or "a"
    if kind not in ("a", "b", "c"):
        raise ConfigError(f"invalid device type {kind!r} (want a, b or c)")
    access = rule.get("access") or "rwm"
    if not isinstance(access, str) or not set(access) <= set("rwm"):
        raise ConfigError(f"invalid device access {access!r} (want letters from 'rwm')")
    major = _device_number(rule.get("major"), "major")
    minor = _device_number(rule.get("minor"), "minor")
    return rule["allow"], f"{kind} {major}:{minor} {access}"


def throttle_lines(blkio: dict[str, Any], key: str) -> list[tuple[str, int]]:
    """[("major:minor", rate)] for one throttle list."""
    out: list[tuple[str, int]] = []
    for entry in blkio.get(key) or []:
        major, minor, rate = entry.get("major"), entry.get("minor"), entry.get("rate")
        if not all(isinstance(v, int) and not isinstance(v, bool) for v in (major, minor, rate)):
            raise ConfigError(f"blockIO.{key} entry needs integer major, minor, rate: {entry!r}")
        out.append((f"{major}:{minor}", rate))
    return out


def validate(resources: Resources | None) -> None:
    """Check the shape and ranges of resources before any dir is made or file written."""
    if resources is None:
        return
    if not isinstance(resources, dict):
        raise ConfigError("linux.resources must be an object")
    memory = section(resources, "memory")
    for key in ("limit", "reservation", "swap", "kernel", "kernelTCP", "swappiness"):
        as_int(memory, key, "memory")
    limit, swap = memory.get("limit"), memory.get("swap")
    if limit and swap and limit > 0 and 0 < swap < limit:
        raise ConfigError(f"memory+swap limit ({swap}) must be >= the memory limit ({limit})")
    if memory.get("swappiness") is not None and memory["swappiness"] != -1:
        check_swappiness(memory["swappiness"])
    cpu = section(resources, "cpu")
    for key in CPU_CONTROLLER_KEYS:
        as_int(cpu, key, "cpu")
    for key in CPUSET_KEYS:
        if cpu.get(key) is not None and not isinstance(cpu[key], str):
            raise ConfigError(f"linux.resources.cpu.{key} must be a string like '0-3'")
    as_int(section(resources, "pids"), "limit", "pids")
    blkio = section(resources, "blockIO")
    as_int(blkio, "weight", "blockIO")
    as_int(blkio, "leafWeight", "blockIO")
    for key in THROTTLES:
        throttle_lines(blkio, key)
    for rule in device_rules(resources):
        device_rule_line(rule)
    hugepage_limits(resources)
    unified(resources)
