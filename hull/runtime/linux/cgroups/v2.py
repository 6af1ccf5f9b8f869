"""cgroup v2 manager: one dir in the unified hierarchy, OCI values mapped as runc maps them."""

from __future__ import annotations

import errno

from hull.errors import ConfigError, KernelError
from hull.runtime import posixos as os
from hull.runtime.linux.cgroups import resources as res
from hull.runtime.linux.cgroups.base import FREEZE_TIMEOUT, SIGKILL, CgroupManager, wait_until
from hull.runtime.linux.cgroups.files import (
    CgroupFiles,
    add_pid,
    read_int,
    read_keyed,
    read_value,
    write_value,
)
from hull.runtime.linux.cgroups.paths import path_components
from hull.runtime.warn import debug, warn

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

    from hull.runtime.linux.cgroups.mounts import CgroupMount

# Interface files a `unified` entry must not touch: they move or kill processes.
FORBIDDEN_UNIFIED = frozenset({"cgroup.procs", "cgroup.threads", "cgroup.kill"})
DEFAULT_CPU_PERIOD = 100000


class V2Manager(CgroupManager):
    """A container cgroup in the unified (cgroup2) hierarchy."""

    layout = "v2"

    def __init__(
        self, path: str, mounts: list[CgroupMount], files: CgroupFiles | None = None
    ) -> None:
        super().__init__(path, mounts, files)
        unified = [m for m in mounts if m.fstype == "cgroup2"]
        if not unified:
            raise KernelError("no cgroup2 hierarchy is mounted")
        self.mountpoint = unified[0].mountpoint
        self.dir = self.dir_in(self.mountpoint)

    # -- shape ---------------------------------------------------------------------

    def hierarchy_dirs(self) -> dict[str, str]:
        return {self.mountpoint: self.dir}

    def controller_paths(self) -> dict[str, str]:
        return {"": self.dir}

    def _pids_dir(self) -> str | None:
        return self.dir if self.files.exists(self.dir) else None

    def _controllers(self, directory: str) -> set[str]:
        return set((read_value(self.files, directory, "cgroup.controllers") or "").split())

    def available(self) -> set[str]:
        """Controllers the hierarchy root offers."""
        return self._controllers(self.mountpoint)

    def _check(self, resources: dict[str, Any] | None, directory: str) -> None:
        res.validate(resources)
        missing = sorted(res.v2_controllers_needed(resources) - self._controllers(directory))
        if missing:
            names = ", ".join(f"'{m}'" for m in missing)
            noun = "controller" if len(missing) == 1 else "controllers"
            verb = "is" if len(missing) == 1 else "are"
            where = "this host" if directory == self.mountpoint else directory
            raise KernelError(f"cgroup {noun} {names} {verb} not available in {where}")

    # -- lifecycle -----------------------------------------------------------------

    def create(self, resources: dict[str, Any] | None) -> None:
        """mkdir the cgroup, enabling every available controller on the way down
        (as runc does, so stats and later updates work); limits come from set()."""
        self._check(resources, self.mountpoint)
        try:
            parent = self.mountpoint
            for name in path_components(self.path):
                self._enable_subtree(parent)
                current = os.path.join(parent, name)
                try:
                    self._remember(current, self.files.mkdir(current))
                except OSError as e:
                    raise KernelError(f"cannot create cgroup {current}: {e.strerror}") from e
                parent = current
            self._check(resources, self.dir)
        except BaseException:
            self._undo_create()
            raise

    def _enable_subtree(self, directory: str) -> None:
        """Delegate the parent's controllers to its children (cgroup.subtree_control).

        Best effort per controller: a parent holding processes refuses (no internal
        processes rule); the controller check afterwards reports what is missing.
        """
        wanted = self._controllers(directory)
        enabled = set((read_value(self.files, directory, "cgroup.subtree_control") or "").split())
        todo = sorted(wanted - enabled)
        if not todo:
            return
        path = os.path.join(directory, "cgroup.subtree_control")
        try:
            self.files.write(path, " ".join(f"+{c}" for c in todo))
        except OSError:
            for controller in todo:
                try:
                    self.files.write(path, f"+{controller}")
                except OSError as e:
                    debug(f"cannot enable {controller} in {directory}: {e}", __name__)

    def apply(self, pid: int) -> None:
        add_pid(self.files, self.dir, pid)

    def set(self, resources: dict[str, Any]) -> None:
        """Write the OCI resources; also what `update` calls on a running container."""
        self._check(resources, self.dir)
        if res.has_memory(resources):
            self._set_memory(res.section(resources, "memory"))
        if res.has_cpu(resources):
            self._set_cpu(res.section(resources, "cpu"))
        cpu = res.section(resources, "cpu")
        for key in res.CPUSET_KEYS:
            if cpu.get(key):
                write_value(self.files, self.dir, f"cpuset.{key}", cpu[key])
        if res.has_pids(resources):
            limit = res.section(resources, "pids")["limit"]
            write_value(self.files, self.dir, "pids.max", res.pids_max(limit))
        if res.has_blkio(resources):
            self._set_io(res.section(resources, "blockIO"))
        for entry in res.hugepage_limits(resources):
            knob = f"hugetlb.{entry['pageSize']}.max"
            if not self.files.exists(os.path.join(self.dir, knob)):
                raise ConfigError(
                    f"hugepage size {entry['pageSize']!r} is not supported by this host"
                )
            write_value(self.files, self.dir, knob, res.v2_max(entry["limit"]))
        rules = res.device_rules(resources)
        if rules:
            warn(
                "cgroup v2 device rules need an eBPF program, which Hull does not load yet: "
                f"{len(rules)} rule(s) in linux.resources.devices are NOT enforced for {self.path}",
                __name__,
            )
        network = res.section(resources, "network")
        if network.get("classID") is not None or network.get("priorities"):
            warn("linux.resources.network ignored: net_cls/net_prio are cgroup v1 only", __name__)
        for key, value in res.unified(resources).items():
            self._set_unified(key, value)

    def _set_memory(self, memory: dict[str, Any]) -> None:
        limit = memory.get("limit") or 0
        swap = res.swap_to_v2(memory.get("swap"), limit)  # 0 when swap == limit: no swap
        if swap is not None:
            if self.files.exists(os.path.join(self.dir, "memory.swap.max")):
                write_value(self.files, self.dir, "memory.swap.max", res.v2_max(swap))
            elif swap not in (-1, 0):
                warn("memory swap limit ignored: the kernel has no swap accounting", __name__)
        if limit:
            try:
                write_value(self.files, self.dir, "memory.max", res.v2_max(limit))
            except KernelError as e:
                cause = e.__cause__
                if isinstance(cause, OSError) and cause.errno == errno.EBUSY:
                    usage = read_int(self.files, self.dir, "memory.current")
                    raise KernelError(
                        f"cannot set memory limit to {limit}: below current usage ({usage} bytes)"
                    ) from cause
                raise
        if memory.get("reservation"):
            write_value(self.files, self.dir, "memory.low", res.v2_max(memory["reservation"]))
        if memory.get("swappiness") not in (None, -1):
            warn("memory swappiness ignored: cgroup v2 has no per-cgroup swappiness", __name__)
        if memory.get("disableOOMKiller"):
            warn("disableOOMKiller ignored: cgroup v2 cannot disable the OOM killer", __name__)

    def _set_cpu(self, cpu: dict[str, Any]) -> None:
        shares = cpu.get("shares")
        if shares:
            write_value(self.files, self.dir, "cpu.weight", str(res.shares_to_weight(shares)))
        quota, period = cpu.get("quota"), cpu.get("period")
        if quota is not None or period is not None:
            # cpu.max holds both; keep the half that was not given (update may send one)
            current = (read_value(self.files, self.dir, "cpu.max") or "").split()
            if quota is None:
                quota_text = current[0] if current else "max"
            else:
                quota_text = "max" if quota <= 0 else str(quota)
            if period is None:
                period = int(current[1]) if len(current) == 2 else DEFAULT_CPU_PERIOD
            write_value(self.files, self.dir, "cpu.max", f"{quota_text} {period}")
        if cpu.get("burst") is not None:
            if self.files.exists(os.path.join(self.dir, "cpu.max.burst")):
                write_value(self.files, self.dir, "cpu.max.burst", str(cpu["burst"]))
            else:
                warn("cpu burst ignored: this kernel has no cpu.max.burst", __name__)
        if cpu.get("idle") is not None:
            if self.files.exists(os.path.join(self.dir, "cpu.idle")):
                write_value(self.files, self.dir, "cpu.idle", str(cpu["idle"]))
            else:
                warn("cpu idle ignored: this kernel has no cpu.idle", __name__)
        if cpu.get("realtimeRuntime") is not None or cpu.get("realtimePeriod") is not None:
            warn("realtime cpu limits ignored: cgroup v2 has no rt bandwidth files", __name__)

    def _set_io(self, blkio: dict[str, Any]) -> None:
        # BFQ takes blkio-range weights as they are; io.weight needs runc's conversion.
        bfq = self.files.exists(os.path.join(self.dir, "io.bfq.weight"))
        knob = "io.bfq.weight" if bfq else "io.weight"

        def weight(value: int) -> str:
            return str(value if bfq else res.blkio_to_io_weight(value))

        if blkio.get("weight"):
            write_value(self.files, self.dir, knob, weight(blkio["weight"]))
        for entry in blkio.get("weightDevice") or []:
            if entry.get("weight") is not None:
                line = f"{entry['major']}:{entry['minor']} {weight(entry['weight'])}"
                write_value(self.files, self.dir, knob, line)
        if blkio.get("leafWeight"):
            warn("blockIO leafWeight ignored: cgroup v2 has no leaf weights", __name__)
        for key, (_, io_key) in res.THROTTLES.items():
            for device, rate in res.throttle_lines(blkio, key):
                write_value(self.files, self.dir, "io.max", f"{device} {io_key}={rate}")

    def _set_unified(self, key: str, value: str) -> None:
        if key in FORBIDDEN_UNIFIED:
            raise ConfigError(f"linux.resources.unified may not set {key}")
        if not self.files.exists(os.path.join(self.dir, key)):
            controller = key.split(".", 1)[0]
            raise ConfigError(
                f"linux.resources.unified key {key!r} is not a file of this cgroup "
                f"(is controller '{controller}' available?)"
            )
        write_value(self.files, self.dir, key, value)

    # -- freezer -------------------------------------------------------------------

    def _can_freeze(self) -> bool:
        return self.files.exists(os.path.join(self.dir, "cgroup.freeze"))

    def _set_frozen(self, frozen: bool) -> None:
        if not self._can_freeze():
            raise KernelError(f"cannot freeze {self.dir}: no cgroup.freeze (needs Linux 5.2+)")
        write_value(self.files, self.dir, "cgroup.freeze", "1" if frozen else "0")
        if not wait_until(lambda: self.frozen() == frozen, FREEZE_TIMEOUT):
            if frozen:
                write_value(self.files, self.dir, "cgroup.freeze", "0")
            action = "freeze" if frozen else "thaw"
            raise KernelError(f"cgroup {self.dir} did not {action} in {FREEZE_TIMEOUT:g}s")

    def freeze(self) -> None:
        """Write cgroup.freeze=1 and wait for cgroup.events to say 'frozen 1'."""
        self._set_frozen(True)

    def thaw(self) -> None:
        self._set_frozen(False)

    def frozen(self) -> bool:
        events = read_keyed(self.files, self.dir, "cgroup.events")
        if "frozen" in events:
            return events["frozen"] == 1
        return read_value(self.files, self.dir, "cgroup.freeze") == "1"

    def kill_all(self, sig: int) -> None:
        """SIGKILL goes through cgroup.kill (Linux 5.14+): atomic, no fork race."""
        kill_file = os.path.join(self.dir, "cgroup.kill")
        if sig == SIGKILL and self.files.exists(kill_file):
            write_value(self.files, self.dir, "cgroup.kill", "1")
            return
        super().kill_all(sig)

    # -- accounting ----------------------------------------------------------------

    def stats(self) -> dict[str, Any]:
        """Usage read from the kernel's files; a section is left out when its
        controller is not enabled here. Limits are None when 'max'."""
        out: dict[str, Any] = {}
        usage = read_int(self.files, self.dir, "memory.current")
        if usage is not None:
            detail = read_keyed(self.files, self.dir, "memory.stat")
            out["memory"] = {
                "usage": usage,
                "max_usage": read_int(self.files, self.dir, "memory.peak"),
                "limit": read_int(self.files, self.dir, "memory.max"),
                "swap_usage": read_int(self.files, self.dir, "memory.swap.current"),
                "cache": detail.get("file"),
                "events": read_keyed(self.files, self.dir, "memory.events"),
                "stats": detail,
            }
        cpu = read_keyed(self.files, self.dir, "cpu.stat")
        if cpu:
            throttled = cpu.get("throttled_usec")
            out["cpu"] = {
                "usage_ns": cpu.get("usage_usec", 0) * 1000,
                "user_ns": cpu.get("user_usec", 0) * 1000,
                "system_ns": cpu.get("system_usec", 0) * 1000,
                "periods": cpu.get("nr_periods"),
                "throttled_periods": cpu.get("nr_throttled"),
                "throttled_ns": None if throttled is None else throttled * 1000,
            }
        current = read_int(self.files, self.dir, "pids.current")
        if current is not None:
            out["pids"] = {"current": current, "limit": read_int(self.files, self.dir, "pids.max")}
        return out

    def oom_killed(self) -> bool:
        return read_keyed(self.files, self.dir, "memory.events").get("oom_kill", 0) > 0
