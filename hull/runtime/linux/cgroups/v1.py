"""cgroup v1 (and hybrid) manager: one dir per mounted hierarchy.

On the hybrid layout the v1 hierarchies carry every limit, and the controller-less
cgroup2 mount (usually /sys/fs/cgroup/unified) still gets a dir holding the
container's pids, as runc does, so tools that look there (systemd, crun, PSI
readers) find the container.
"""

from __future__ import annotations

import errno

from hull.errors import ConfigError, KernelError
from hull.runtime import posixos as os
from hull.runtime.linux.cgroups import resources as res
from hull.runtime.linux.cgroups.base import FREEZE_TIMEOUT, CgroupManager, wait_until
from hull.runtime.linux.cgroups.files import (
    CgroupFiles,
    add_pid,
    read_int,
    read_keyed,
    read_value,
    write_value,
)
from hull.runtime.linux.cgroups.paths import path_components
from hull.runtime.warn import warn

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

    from hull.runtime.linux.cgroups.mounts import CgroupMount

# memory.limit_in_bytes reads back as PAGE_COUNTER_MAX * page size when unlimited.
UNLIMITED_THRESHOLD = 1 << 62
# Preferred order to find "every pid of the container": these see all tasks.
PIDS_SOURCES = ("pids", "freezer", "memory", "devices", "cpu", "name=systemd")


class V1Manager(CgroupManager):
    """A container cgroup spread over the v1 hierarchies (plus cgroup2 on hybrid)."""

    def __init__(
        self,
        path: str,
        mounts: list[CgroupMount],
        files: CgroupFiles | None = None,
    ) -> None:
        super().__init__(path, mounts, files)
        self.v1_mounts: list[CgroupMount] = []
        seen: set[str] = set()
        for mount in mounts:
            if mount.fstype == "cgroup" and mount.mountpoint not in seen:
                seen.add(mount.mountpoint)
                self.v1_mounts.append(mount)
        unified = [m for m in mounts if m.fstype == "cgroup2"]
        self.unified_mount: str | None = unified[0].mountpoint if unified else None
        self.layout = "hybrid" if self.unified_mount else "v1"
        self._mount_of: dict[str, str] = {}
        for mount in self.v1_mounts:
            for controller in mount.controllers:
                self._mount_of.setdefault(controller, mount.mountpoint)

    # -- shape ---------------------------------------------------------------------

    def available(self) -> set[str]:
        return set(self._mount_of)

    def hierarchy_dirs(self) -> dict[str, str]:
        dirs = {m.mountpoint: self.dir_in(m.mountpoint) for m in self.v1_mounts}
        if self.unified_mount:
            dirs[self.unified_mount] = self.dir_in(self.unified_mount)
        return dirs

    def controller_paths(self) -> dict[str, str]:
        """controller -> dir, e.g. {"cpu": ".../cpu/hull/x", "name=systemd": ...}.

        Co-mounted controllers (cpu,cpuacct) share one dir. The cgroup2 dir of the
        hybrid layout is not a controller; find it in hierarchy_dirs().
        """
        return {c: self.dir_in(mp) for c, mp in self._mount_of.items()}

    def _dir(self, controller: str) -> str | None:
        mountpoint = self._mount_of.get(controller)
        return self.dir_in(mountpoint) if mountpoint else None

    def _require(self, controller: str) -> str:
        directory = self._dir(controller)
        if directory is None:
            raise KernelError(
                f"cgroup controller '{controller}' is not available "
                "(no cgroup v1 hierarchy has it mounted)"
            )
        return directory

    def _pids_dir(self) -> str | None:
        for controller in PIDS_SOURCES:
            directory = self._dir(controller)
            if directory and self.files.exists(directory):
                return directory
        for directory in self.hierarchy_dirs().values():
            if self.files.exists(directory):
                return directory
        return None

    def _check(self, resources: dict[str, Any] | None) -> None:
        res.validate(resources)
        if res.unified(resources):
            raise ConfigError(
                "linux.resources.unified needs cgroup v2, but this host's controllers "
                f"are on cgroup v1 (layout: {self.layout})"
            )
        missing = sorted(res.v1_controllers_needed(resources) - self.available())
        if len(missing) == 1:
            self._require(missing[0])
        if missing:
            names = ", ".join(f"'{m}'" for m in missing)
            raise KernelError(f"cgroup controllers {names} are not available on this host")

    # -- lifecycle -----------------------------------------------------------------

    def create(self, resources: dict[str, Any] | None) -> None:
        """mkdir the cgroup in every hierarchy (limits are written by set()).

        New cpuset dirs get cpuset.cpus/mems copied from their parent, since an
        empty cpuset refuses tasks. On any failure the dirs made here are removed.
        """
        self._check(resources)
        try:
            for mount in self.v1_mounts:
                self._mkdirs(mount.mountpoint)
                if "cpuset" in mount.controllers:
                    self._fill_cpusets(mount.mountpoint)
            if self.unified_mount:
                self._mkdirs(self.unified_mount)
        except BaseException:
            self._undo_create()
            raise

    def _fill_cpusets(self, mountpoint: str) -> None:
        parent = mountpoint
        for name in path_components(self.path):
            current = os.path.join(parent, name)
            for knob in ("cpuset.cpus", "cpuset.mems"):
                if not read_value(self.files, current, knob):
                    inherited = read_value(self.files, parent, knob) or ""
                    write_value(self.files, current, knob, inherited)
            parent = current

    def apply(self, pid: int) -> None:
        for directory in self.hierarchy_dirs().values():
            add_pid(self.files, directory, pid)

    def self_join_files(self) -> list[str]:
        """`tasks` files a single-threaded process writes "0" to, to join itself.

        Moving *another* process (cgroup.procs) takes the global threadgroup
        rwsem and waits for an RCU grace period (2-22 ms measured here); a
        thread moving itself through `tasks` skips that lock (kernel >= 6.0).
        """
        dirs = self.hierarchy_dirs()
        return [
            os.path.join(d, "tasks") for mount, d in dirs.items() if mount != self.unified_mount
        ]

    def late_join_dirs(self) -> list[str]:
        """Dirs the parent joins the process to itself (hybrid's controller-less cgroup2)."""
        return [self.dir_in(self.unified_mount)] if self.unified_mount else []

    def set(self, resources: dict[str, Any]) -> None:
        """Write the OCI resources; also what `update` calls on a running container."""
        self._check(resources)
        if res.has_memory(resources):
            self._set_memory(res.section(resources, "memory"))
        if res.has_cpu(resources):
            self._set_cpu(res.section(resources, "cpu"))
        if res.has_cpuset(resources):
            cpu = res.section(resources, "cpu")
            directory = self._require("cpuset")
            for key in res.CPUSET_KEYS:
                if cpu.get(key):
                    write_value(self.files, directory, f"cpuset.{key}", cpu[key])
        if res.has_pids(resources):
            limit = res.section(resources, "pids")["limit"]
            write_value(self.files, self._require("pids"), "pids.max", res.pids_max(limit))
        if res.has_blkio(resources):
            self._set_blkio(res.section(resources, "blockIO"))
        for entry in res.hugepage_limits(resources):
            self._set_hugepage(entry)
        rules = res.device_rules_with_defaults(resources)
        if rules:
            directory = self._require("devices")
            for rule in rules:
                allow, line = res.device_rule_line(rule)
                knob = "devices.allow" if allow else "devices.deny"
                write_value(self.files, directory, knob, line)
        self._set_network(res.section(resources, "network"))

    def _optional(self, directory: str, knob: str, value: str, what: str) -> None:
        """Write a knob the kernel may lack; warn instead of failing when it does."""
        if self.files.exists(os.path.join(directory, knob)):
            write_value(self.files, directory, knob, value)
        else:
            warn(f"{what} ignored: this kernel has no {knob}", __name__)

    def _set_memory(self, memory: dict[str, Any]) -> None:
        directory = self._require("memory")
        limit = memory.get("limit") or 0  # 0 means "not set", as in runc
        swap = memory.get("swap") or 0
        memsw = "memory.memsw.limit_in_bytes"
        has_memsw = self.files.exists(os.path.join(directory, memsw))
        if limit == -1 and swap == 0 and has_memsw:
            swap = -1  # unlimited memory: lift the memory+swap limit with it
        if swap and not has_memsw:
            warn("memory swap limit ignored: the kernel has no swap accounting", __name__)
            swap = 0
        if limit and swap:
            # The kernel insists memory.limit <= memsw.limit after every write, so
            # raise memsw first when the new memory limit would exceed the current one.
            current_memsw = read_int(self.files, directory, memsw) or 0
            if swap == -1 or limit == -1 or limit > current_memsw:
                write_value(self.files, directory, memsw, str(swap))
                self._write_memory_limit(directory, limit)
            else:
                self._write_memory_limit(directory, limit)
                write_value(self.files, directory, memsw, str(swap))
        elif limit:
            self._write_memory_limit(directory, limit)
        elif swap:
            write_value(self.files, directory, memsw, str(swap))
        if memory.get("reservation"):
            write_value(
                self.files, directory, "memory.soft_limit_in_bytes", str(memory["reservation"])
            )
        swappiness = memory.get("swappiness")
        if swappiness is not None and swappiness != -1:
            self._optional(directory, "memory.swappiness", str(swappiness), "memory swappiness")
        if memory.get("disableOOMKiller"):
            write_value(self.files, directory, "memory.oom_control", "1")
        # memory.kernel / kernelTCP: deprecated by the spec and by the kernel; ignored.

    def _write_memory_limit(self, directory: str, limit: int) -> None:
        try:
            write_value(self.files, directory, "memory.limit_in_bytes", str(limit))
        except KernelError as e:
            cause = e.__cause__
            if isinstance(cause, OSError) and cause.errno == errno.EBUSY:
                usage = read_int(self.files, directory, "memory.usage_in_bytes")
                raise KernelError(
                    f"cannot set memory limit to {limit}: below current usage ({usage} bytes)"
                ) from cause
            raise

    def _set_cpu(self, cpu: dict[str, Any]) -> None:
        directory = self._require("cpu")
        if cpu.get("shares") is not None:
            write_value(self.files, directory, "cpu.shares", str(cpu["shares"]))
        period, quota = cpu.get("period"), cpu.get("quota")
        if period is not None:
            try:
                write_value(self.files, directory, "cpu.cfs_period_us", str(period))
            except KernelError:
                if quota is None:
                    raise
                # a shorter period can clash with the old quota: quota first, then retry
                write_value(self.files, directory, "cpu.cfs_quota_us", str(quota))
                write_value(self.files, directory, "cpu.cfs_period_us", str(period))
        if quota is not None:
            write_value(self.files, directory, "cpu.cfs_quota_us", str(quota))
        if cpu.get("burst") is not None:
            self._optional(directory, "cpu.cfs_burst_us", str(cpu["burst"]), "cpu burst")
        if cpu.get("realtimePeriod") is not None:
            self._optional(
                directory, "cpu.rt_period_us", str(cpu["realtimePeriod"]), "realtime period"
            )
        if cpu.get("realtimeRuntime") is not None:
            self._optional(
                directory, "cpu.rt_runtime_us", str(cpu["realtimeRuntime"]), "realtime runtime"
            )
        if cpu.get("idle") is not None:
            self._optional(directory, "cpu.idle", str(cpu["idle"]), "cpu idle")

    def _set_blkio(self, blkio: dict[str, Any]) -> None:
        directory = self._require("blkio")
        # CFQ's blkio.weight is gone from modern kernels; BFQ offers blkio.bfq.weight.
        bfq = not self.files.exists(os.path.join(directory, "blkio.weight"))
        prefix = "blkio.bfq." if bfq else "blkio."
        if blkio.get("weight"):
            self._optional(directory, prefix + "weight", str(blkio["weight"]), "blkio weight")
        if blkio.get("leafWeight"):
            self._optional(
                directory, "blkio.leaf_weight", str(blkio["leafWeight"]), "blkio leaf weight"
            )
        for entry in blkio.get("weightDevice") or []:
            device = f"{entry['major']}:{entry['minor']}"
            if entry.get("weight") is not None:
                self._optional(
                    directory,
                    prefix + "weight_device",
                    f"{device} {entry['weight']}",
                    "blkio device weight",
                )
            if entry.get("leafWeight") is not None:
                self._optional(
                    directory,
                    "blkio.leaf_weight_device",
                    f"{device} {entry['leafWeight']}",
                    "blkio device leaf weight",
                )
        for key, (knob, _) in res.THROTTLES.items():
            for device, rate in res.throttle_lines(blkio, key):
                write_value(self.files, directory, knob, f"{device} {rate}")

    def _set_hugepage(self, entry: dict[str, Any]) -> None:
        directory = self._require("hugetlb")
        knob = f"hugetlb.{entry['pageSize']}.limit_in_bytes"
        if not self.files.exists(os.path.join(directory, knob)):
            raise ConfigError(f"hugepage size {entry['pageSize']!r} is not supported by this host")
        write_value(self.files, directory, knob, str(entry["limit"]))

    def _set_network(self, network: dict[str, Any]) -> None:
        if network.get("classID") is not None:
            write_value(
                self.files, self._require("net_cls"), "net_cls.classid", str(network["classID"])
            )
        for prio in network.get("priorities") or []:
            write_value(
                self.files,
                self._require("net_prio"),
                "net_prio.ifpriomap",
                f"{prio['name']} {prio['priority']}",
            )

    # -- freezer -------------------------------------------------------------------

    def _can_freeze(self) -> bool:
        directory = self._dir("freezer")
        return directory is not None and self.files.exists(directory)

    def _freezer_state(self) -> str:
        return read_value(self.files, self._require("freezer"), "freezer.state") or ""

    def freeze(self) -> None:
        """Write FROZEN and wait until the kernel reports every task frozen."""
        directory = self._require("freezer")
        write_value(self.files, directory, "freezer.state", "FROZEN")
        if not wait_until(
            lambda: self._freezer_state() == "FROZEN",
            FREEZE_TIMEOUT,
            poke=lambda: write_value(self.files, directory, "freezer.state", "FROZEN"),
        ):
            write_value(self.files, directory, "freezer.state", "THAWED")
            raise KernelError(f"cgroup {directory} did not freeze in {FREEZE_TIMEOUT:g}s")

    def thaw(self) -> None:
        directory = self._require("freezer")
        write_value(self.files, directory, "freezer.state", "THAWED")
        if not wait_until(lambda: self._freezer_state() == "THAWED", FREEZE_TIMEOUT):
            raise KernelError(f"cgroup {directory} did not thaw in {FREEZE_TIMEOUT:g}s")

    def frozen(self) -> bool:
        directory = self._dir("freezer")
        if directory is None:
            return False
        return read_value(self.files, directory, "freezer.state") == "FROZEN"

    # -- accounting ----------------------------------------------------------------

    def stats(self) -> dict[str, Any]:
        """Usage read from the kernel's files; a section is left out when its
        controller is not mounted. Limits are None when unlimited."""
        out: dict[str, Any] = {}
        memory = self._dir("memory")
        if memory and self.files.exists(memory):
            limit = read_int(self.files, memory, "memory.limit_in_bytes")
            detail = read_keyed(self.files, memory, "memory.stat")
            out["memory"] = {
                "usage": read_int(self.files, memory, "memory.usage_in_bytes") or 0,
                "max_usage": read_int(self.files, memory, "memory.max_usage_in_bytes"),
                "limit": None if limit is None or limit >= UNLIMITED_THRESHOLD else limit,
                "failcnt": read_int(self.files, memory, "memory.failcnt"),
                "swap_usage": read_int(self.files, memory, "memory.memsw.usage_in_bytes"),
                "cache": detail.get("total_cache", detail.get("cache")),
                "stats": detail,
            }
        cpuacct = self._dir("cpuacct")
        if cpuacct and self.files.exists(cpuacct):
            cpu_stats: dict[str, Any] = {
                "usage_ns": read_int(self.files, cpuacct, "cpuacct.usage") or 0,
                "user_ns": read_int(self.files, cpuacct, "cpuacct.usage_user"),
                "system_ns": read_int(self.files, cpuacct, "cpuacct.usage_sys"),
            }
            cpu_dir = self._dir("cpu")
            if cpu_dir and self.files.exists(cpu_dir):
                throttling = read_keyed(self.files, cpu_dir, "cpu.stat")
                cpu_stats["periods"] = throttling.get("nr_periods")
                cpu_stats["throttled_periods"] = throttling.get("nr_throttled")
                cpu_stats["throttled_ns"] = throttling.get("throttled_time")
            out["cpu"] = cpu_stats
        pids = self._dir("pids")
        if pids and self.files.exists(pids):
            out["pids"] = {
                "current": read_int(self.files, pids, "pids.current") or 0,
                "limit": read_int(self.files, pids, "pids.max"),
            }
        return out

    def oom_killed(self) -> bool:
        """True once the kernel's OOM killer has killed a task in this cgroup."""
        memory = self._dir("memory")
        if memory is None:
            return False
        return read_keyed(self.files, memory, "memory.oom_control").get("oom_kill", 0) > 0
