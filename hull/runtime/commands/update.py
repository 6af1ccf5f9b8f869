"""`update ID`: change a running container's resources (--resources FILE or flags)."""

from __future__ import annotations

import sys

from hull.errors import ConfigError, StateError
from hull.runtime.cli import Flags, require_id

USAGE = "ID [--resources FILE|-] [--memory N] [--memory-swap N] [--cpu-shares N] ..."
FLAGS: Flags = {
    "--resources": ("resources", True, False),
    "-r": ("resources", True, False),
    "--memory": ("memory", True, False),
    "--memory-swap": ("memory_swap", True, False),
    "--memory-reservation": ("memory_reservation", True, False),
    "--kernel-memory": ("kernel_memory", True, False),
    "--kernel-memory-tcp": ("kernel_memory_tcp", True, False),
    "--cpu-shares": ("cpu_shares", True, False),
    "--cpu-quota": ("cpu_quota", True, False),
    "--cpu-period": ("cpu_period", True, False),
    "--cpu-rt-period": ("cpu_rt_period", True, False),
    "--cpu-rt-runtime": ("cpu_rt_runtime", True, False),
    "--cpuset-cpus": ("cpuset_cpus", True, False),
    "--cpuset-mems": ("cpuset_mems", True, False),
    "--pids-limit": ("pids_limit", True, False),
    "--blkio-weight": ("blkio_weight", True, False),
    "--l3-cache-schema": ("l3_cache_schema", True, False),
    "--mem-bw-schema": ("mem_bw_schema", True, False),
    "--help": ("help", False, False),
}

_UNITS = {"": 1, "b": 1, "k": 1024, "m": 1024**2, "g": 1024**3, "t": 1024**4}


def parse_bytes(text: str) -> int:
    """Sizes as runc takes them: 1048576, 512k, 64m, 1g; -1 for unlimited."""
    value = text.strip().lower()
    if value == "-1":
        return -1
    if value.endswith("b") and len(value) > 1 and value[-2] in "kmgt":
        value = value[:-1]
    unit = value[-1] if value and value[-1] in "kmgtb" else ""
    number = value[: -len(unit)] if unit else value
    try:
        return int(float(number) * _UNITS[unit])
    except ValueError:
        raise ConfigError(f"invalid size {text!r}") from None


def _int(text: str, flag: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise ConfigError(f"{flag} needs an integer, got {text!r}") from None


def resources_from_flags(opts: dict) -> dict:
    res: dict = {}
    mem: dict = {}
    if "memory" in opts:
        mem["limit"] = parse_bytes(opts["memory"])
    if "memory_swap" in opts:
        mem["swap"] = parse_bytes(opts["memory_swap"])
    if "memory_reservation" in opts:
        mem["reservation"] = parse_bytes(opts["memory_reservation"])
    if mem:
        res["memory"] = mem
    cpu: dict = {}
    for key, field in (
        ("cpu_shares", "shares"),
        ("cpu_quota", "quota"),
        ("cpu_period", "period"),
        ("cpu_rt_period", "realtimePeriod"),
        ("cpu_rt_runtime", "realtimeRuntime"),
    ):
        if key in opts:
            cpu[field] = _int(opts[key], "--" + key.replace("_", "-"))
    for key, field in (("cpuset_cpus", "cpus"), ("cpuset_mems", "mems")):
        if key in opts:
            cpu[field] = opts[key]
    if cpu:
        res["cpu"] = cpu
    if "pids_limit" in opts:
        res["pids"] = {"limit": _int(opts["pids_limit"], "--pids-limit")}
    if "blkio_weight" in opts:
        res["blockIO"] = {"weight": _int(opts["blkio_weight"], "--blkio-weight")}
    return res


def main(ctx, verb: str, opts: dict, args: list[str]) -> int:
    from hull.runtime import fastjson
    from hull.runtime.container import _cgroup
    from hull.runtime.state import STOPPED

    state = ctx.store().load(require_id(args, verb))
    if state.status() == STOPPED:
        raise StateError("cannot update a stopped container")
    if opts.get("resources"):
        path = opts["resources"]
        if path == "-":
            raw = sys.stdin.read()
        else:
            with open(path) as f:
                raw = f.read()
        try:
            resources = fastjson.loads(raw)
        except ValueError as err:
            raise ConfigError(f"--resources: {err}") from None
        if not isinstance(resources, dict):
            raise ConfigError("--resources must hold a JSON object (linux.resources)")
    else:
        resources = resources_from_flags(opts)
    if not resources:
        raise ConfigError("update needs --resources or at least one limit flag")
    _cgroup(state).set(resources)
    return 0
