"""cgroup manager logic against a fake cgroupfs tree in tmp_path (no root needed).

FakeKernel stands in for the kernel: mkdir fills a new cgroup with the control
files its hierarchy offers, rmdir refuses busy or non-empty cgroups, and writes to
cgroup.subtree_control / cgroup.freeze update what the kernel would update.
"""

from __future__ import annotations

import errno
import logging
import os
import signal
import subprocess
from pathlib import Path

import pytest

from hull.errors import ConfigError, KernelError
from hull.runtime.linux.cgroups import (
    CgroupFiles,
    V1Manager,
    V2Manager,
    detect_layout,
    manager_for,
    normalise_cgroups_path,
)
from hull.runtime.linux.cgroups import resources as res
from hull.runtime.linux.cgroups.mounts import CgroupMount, layout_of, parse_mountinfo

UNLIMITED = "9223372036854771712"
COMMON_V1 = {"cgroup.procs": "", "tasks": "", "notify_on_release": "0"}
V1_FILES: dict[str, dict[str, str]] = {
    "cpu,cpuacct": {
        "cpu.shares": "1024",
        "cpu.cfs_period_us": "100000",
        "cpu.cfs_quota_us": "-1",
        "cpu.cfs_burst_us": "0",
        "cpu.rt_period_us": "1000000",
        "cpu.rt_runtime_us": "0",
        "cpu.idle": "0",
        "cpu.stat": "nr_periods 4\nnr_throttled 1\nthrottled_time 5000\n",
        "cpuacct.usage": "123456789",
        "cpuacct.usage_user": "100000000",
        "cpuacct.usage_sys": "23456789",
    },
    "cpuset": {"cpuset.cpus": "", "cpuset.mems": ""},
    "memory": {
        "memory.limit_in_bytes": UNLIMITED,
        "memory.memsw.limit_in_bytes": UNLIMITED,
        "memory.soft_limit_in_bytes": UNLIMITED,
        "memory.swappiness": "60",
        "memory.oom_control": "oom_kill_disable 0\nunder_oom 0\noom_kill 0\n",
        "memory.usage_in_bytes": "4096",
        "memory.max_usage_in_bytes": "8192",
        "memory.failcnt": "0",
        "memory.memsw.usage_in_bytes": "4096",
        "memory.kmem.limit_in_bytes": UNLIMITED,
        "memory.stat": "cache 0\nrss 4096\ntotal_cache 12\n",
    },
    "devices": {"devices.allow": "", "devices.deny": "", "devices.list": "a *:* rwm"},
    "freezer": {"freezer.state": "THAWED"},
    "blkio": {
        "blkio.bfq.weight": "100",
        "blkio.bfq.weight_device": "",
        "blkio.throttle.read_bps_device": "",
        "blkio.throttle.write_bps_device": "",
        "blkio.throttle.read_iops_device": "",
        "blkio.throttle.write_iops_device": "",
    },
    "pids": {"pids.max": "max", "pids.current": "0"},
    "hugetlb": {"hugetlb.2MB.limit_in_bytes": UNLIMITED, "hugetlb.1GB.limit_in_bytes": UNLIMITED},
    "systemd": {},
}
CORE_V2 = {
    "cgroup.procs": "",
    "cgroup.controllers": "",
    "cgroup.subtree_control": "",
    "cgroup.events": "populated 0\nfrozen 0\n",
    "cgroup.freeze": "0",
    "cgroup.kill": "",
    "cgroup.type": "domain",
    "cpu.stat": "usage_usec 1500\nuser_usec 1000\nsystem_usec 500\n",
}
V2_FILES: dict[str, dict[str, str]] = {
    "cpu": {"cpu.weight": "100", "cpu.max": "max 100000", "cpu.max.burst": "0", "cpu.idle": "0"},
    "cpuset": {"cpuset.cpus": "", "cpuset.mems": ""},
    "memory": {
        "memory.max": "max",
        "memory.low": "0",
        "memory.high": "max",
        "memory.swap.max": "max",
        "memory.current": "8192",
        "memory.peak": "16384",
        "memory.swap.current": "0",
        "memory.events": "low 0\nhigh 0\nmax 0\noom 0\noom_kill 0\n",
        "memory.stat": "anon 4096\nfile 4096\n",
    },
    "io": {"io.weight": "default 100", "io.max": ""},
    "pids": {"pids.max": "max", "pids.current": "1"},
    "hugetlb": {"hugetlb.2MB.max": "max", "hugetlb.1GB.max": "max"},
}
ALL_V2 = ("cpuset", "cpu", "io", "memory", "hugetlb", "pids")


class FakeKernel(CgroupFiles):
    """A cgroupfs stand-in over a temp dir, recording every write in order."""

    def __init__(self, root: Path, fail_mkdir_in: str | None = None) -> None:
        self.root = root
        self.writes: list[tuple[str, str]] = []
        self.fail_mkdir_in = fail_mkdir_in

    def rel(self, path: str) -> str:
        return os.path.relpath(path, self.root)

    def mkdir(self, path: str) -> bool:
        rel = self.rel(path)
        if self.fail_mkdir_in and rel.startswith(self.fail_mkdir_in + "/"):
            raise PermissionError(errno.EACCES, "Permission denied", path)
        if not super().mkdir(path):
            return False
        parent = os.path.dirname(path)
        v2_root = self._v2_root(path)
        if v2_root is None:
            hierarchy = rel.split("/")[0]
            files = dict(COMMON_V1, **V1_FILES[hierarchy])
        else:
            enabled = Path(parent, "cgroup.subtree_control").read_text().split()
            files = dict(CORE_V2, **{"cgroup.controllers": " ".join(enabled)})
            for controller in enabled:
                files.update(V2_FILES[controller])
        for name, content in files.items():
            Path(path, name).write_text(content)
        return True

    def _v2_root(self, path: str) -> Path | None:
        for candidate in (self.root, self.root / "unified"):
            if (candidate / "cgroup.controllers").exists() and self.rel(path).startswith(
                "" if candidate == self.root else "unified/"
            ):
                return candidate
        return None

    def rmdir(self, path: str) -> None:
        if not os.path.isdir(path):
            raise FileNotFoundError(errno.ENOENT, "No such file or directory", path)
        if self.subdirs(path):
            raise OSError(errno.ENOTEMPTY, "Directory not empty", path)
        if Path(path, "cgroup.procs").read_text().strip():
            raise OSError(errno.EBUSY, "Device or resource busy", path)
        for entry in os.listdir(path):
            os.unlink(os.path.join(path, entry))
        os.rmdir(path)

    def write(self, path: str, value: str) -> None:
        self.writes.append((self.rel(path), value))
        name = os.path.basename(path)
        if name == "cgroup.subtree_control":
            enabled = set(Path(path).read_text().split())
            available = set(Path(os.path.dirname(path), "cgroup.controllers").read_text().split())
            for item in value.split():
                if item[1:] not in available:
                    raise OSError(errno.EINVAL, "Invalid argument", path)
                (enabled.add if item[0] == "+" else enabled.discard)(item[1:])
            value = " ".join(sorted(enabled))
        elif name == "cgroup.freeze":
            Path(os.path.dirname(path), "cgroup.events").write_text(
                f"populated 1\nfrozen {value}\n"
            )
        super().write(path, value)

    def written(self, prefix: str) -> list[tuple[str, str]]:
        return [(p, v) for p, v in self.writes if p.startswith(prefix)]


def make_v1_tree(
    root: Path,
    hierarchies=(
        "cpu,cpuacct",
        "cpuset",
        "memory",
        "devices",
        "freezer",
        "blkio",
        "pids",
        "systemd",
    ),
) -> Path:
    for hierarchy in hierarchies:
        directory = root / hierarchy
        directory.mkdir(parents=True)
        for name, content in dict(COMMON_V1, **V1_FILES[hierarchy]).items():
            (directory / name).write_text(content)
    if (root / "cpuset").exists():
        (root / "cpuset" / "cpuset.cpus").write_text("0-3\n")
        (root / "cpuset" / "cpuset.mems").write_text("0\n")
    return root


def make_v2_root(directory: Path, controllers: tuple[str, ...]) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "cgroup.controllers").write_text(" ".join(controllers) + "\n")
    (directory / "cgroup.subtree_control").write_text("\n")
    (directory / "cgroup.procs").write_text("1\n")
    (directory / "cpu.stat").write_text("usage_usec 0\n")
    return directory


def make_hybrid_tree(root: Path) -> Path:
    make_v1_tree(root)
    make_v2_root(root / "unified", ())
    return root


def read(path: Path) -> str:
    return path.read_text().strip()


FULL_RESOURCES = {
    "memory": {
        "limit": 32 << 20,
        "reservation": 16 << 20,
        "swap": 64 << 20,
        "kernel": -1,
        "kernelTCP": -1,
        "swappiness": 10,
        "disableOOMKiller": True,
    },
    "cpu": {
        "shares": 1024,
        "quota": 50000,
        "period": 100000,
        "realtimeRuntime": 0,
        "realtimePeriod": 1000000,
        "cpus": "1",
        "mems": "0",
    },
    "pids": {"limit": 64},
    "blockIO": {
        "weight": 500,
        "weightDevice": [{"major": 8, "minor": 0, "weight": 300}],
        "throttleReadBpsDevice": [{"major": 8, "minor": 0, "rate": 1048576}],
        "throttleWriteIOPSDevice": [{"major": 8, "minor": 16, "rate": 100}],
    },
    "devices": [
        {"allow": False, "access": "rwm"},
        {"allow": True, "type": "c", "major": 1, "minor": 3, "access": "rwm"},
        {"allow": True, "type": "c", "major": 136, "access": "rw"},
    ],
}


# -- detection and paths ------------------------------------------------------------


def test_detect_layout_of_fake_trees(tmp_path: Path) -> None:
    assert detect_layout(str(make_v1_tree(tmp_path / "v1"))) == "v1"
    assert detect_layout(str(make_v2_root(tmp_path / "v2", ALL_V2))) == "v2"
    assert detect_layout(str(make_hybrid_tree(tmp_path / "hybrid"))) == "hybrid"
    (tmp_path / "empty").mkdir()
    with pytest.raises(KernelError, match="no cgroup hierarchy"):
        detect_layout(str(tmp_path / "empty"))


HYBRID_MOUNTINFO = r"""
31 23 0:28 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755
32 31 0:29 / /sys/fs/cgroup/cpu,cpuacct rw,relatime - cgroup cgroup rw,cpu,cpuacct
34 31 0:31 / /sys/fs/cgroup/cpuset rw,relatime - cgroup cgroup rw,cpuset,clone_children
35 31 0:32 / /sys/fs/cgroup/memory rw,relatime - cgroup cgroup rw,memory
40 31 0:37 / /sys/fs/cgroup/systemd rw,relatime - cgroup cgroup rw,xattr,name=systemd
41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw,nsdelegate
50 23 0:40 / /mnt/odd\040dir rw - cgroup cgroup rw,pids
"""


def test_parse_mountinfo_finds_controllers_not_options() -> None:
    mounts = parse_mountinfo(HYBRID_MOUNTINFO)
    assert [m.mountpoint for m in mounts] == [
        "/sys/fs/cgroup/cpu,cpuacct",
        "/sys/fs/cgroup/cpuset",
        "/sys/fs/cgroup/memory",
        "/sys/fs/cgroup/systemd",
        "/sys/fs/cgroup/unified",
        "/mnt/odd dir",
    ]
    assert mounts[0].controllers == ("cpu", "cpuacct")
    assert mounts[1].controllers == ("cpuset",)
    assert mounts[3].controllers == ("name=systemd",)
    assert mounts[4] == CgroupMount("/sys/fs/cgroup/unified", "cgroup2")
    assert layout_of(mounts[:5], "/sys/fs/cgroup") == "hybrid"
    assert layout_of(mounts[:4], "/sys/fs/cgroup") == "v1"
    v2 = parse_mountinfo("30 23 0:26 / /sys/fs/cgroup rw - cgroup2 cgroup2 rw,nsdelegate\n")
    assert layout_of(v2, "/sys/fs/cgroup") == "v2"


def test_detect_layout_reads_the_mount_table(tmp_path: Path) -> None:
    table = tmp_path / "mountinfo"
    table.write_text(HYBRID_MOUNTINFO)
    assert detect_layout("/sys/fs/cgroup", mountinfo=str(table)) == "hybrid"
    assert detect_layout("/sys/fs/cgroup/unified", mountinfo=str(table)) == "v2"


@pytest.mark.parametrize(
    ("given", "expected"),
    [
        (None, "/hull/c1"),
        ("", "/hull/c1"),
        ("/machine/c1", "/machine/c1"),
        ("machine/c1", "/machine/c1"),
        ("//a//b/", "/a/b"),
        ("/a/../../b", "/b"),
        ("/a/./b/..", "/a"),
    ],
)
def test_normalise_cgroups_path(given: str | None, expected: str) -> None:
    assert normalise_cgroups_path(given, "c1") == expected


@pytest.mark.parametrize("given", ["/", "/..", "a/..", "system.slice:docker:c1"])
def test_normalise_cgroups_path_refuses(given: str) -> None:
    with pytest.raises(ConfigError):
        normalise_cgroups_path(given, "c1")


def test_manager_for_picks_the_driver(tmp_path: Path) -> None:
    v1 = manager_for(None, "c1", str(make_v1_tree(tmp_path / "v1")))
    hybrid = manager_for("/x", "c1", str(make_hybrid_tree(tmp_path / "h")))
    v2 = manager_for("y", "c1", str(make_v2_root(tmp_path / "v2", ALL_V2)))
    assert isinstance(v1, V1Manager) and v1.layout == "v1" and v1.path == "/hull/c1"
    assert isinstance(hybrid, V1Manager) and hybrid.layout == "hybrid"
    assert isinstance(v2, V2Manager) and v2.path == "/y"
    assert v2.controller_paths() == {"": str(tmp_path / "v2" / "y")}
    assert v1.controller_paths()["cpuacct"] == str(tmp_path / "v1" / "cpu,cpuacct/hull/c1")
    assert v1.controller_paths()["name=systemd"] == str(tmp_path / "v1" / "systemd/hull/c1")


# -- pure conversions -----------------------------------------------------------------


def test_runc_conversions() -> None:
    assert [res.shares_to_weight(s) for s in (0, 2, 1024, 262144)] == [0, 1, 39, 10000]
    assert [res.blkio_to_io_weight(w) for w in (0, 10, 500, 1000)] == [0, 1, 4950, 10000]
    assert res.swap_to_v2(None, -1) == -1
    assert res.swap_to_v2(-1, 100) == -1
    assert res.swap_to_v2(None, 100) is None
    assert res.swap_to_v2(300, 100) == 200
    assert res.swap_to_v2(100, 100) == 0
    with pytest.raises(ConfigError, match=">= the memory limit"):
        res.swap_to_v2(50, 100)
    with pytest.raises(ConfigError, match="without a memory limit"):
        res.swap_to_v2(50, None)
    assert [res.pids_max(n) for n in (-1, 0, 7)] == ["max", "max", "7"]
    assert res.v2_max(-1) == "max"


def test_device_rule_lines() -> None:
    assert res.device_rule_line({"allow": False, "access": "rwm"}) == (False, "a *:* rwm")
    assert res.device_rule_line({"allow": True, "type": "b", "major": 8, "minor": -1}) == (
        True,
        "b 8:* rwm",
    )
    for bad in ({"allow": True, "type": "x"}, {"allow": True, "access": "rwx"}, {"type": "c"}):
        with pytest.raises(ConfigError):
            res.device_rule_line(bad)


# -- v1 ---------------------------------------------------------------------------------


def v1_manager(root: Path, path: str = "/hull/c1", **kw) -> tuple[V1Manager, FakeKernel]:
    kernel = FakeKernel(root, **kw)
    manager = manager_for(path, "c1", str(root), files=kernel)
    assert isinstance(manager, V1Manager)
    return manager, kernel


def test_v1_create_makes_a_dir_per_hierarchy_and_copies_cpuset(tmp_path: Path) -> None:
    manager, _ = v1_manager(make_v1_tree(tmp_path))
    manager.create(FULL_RESOURCES)
    for hierarchy in (
        "cpu,cpuacct",
        "cpuset",
        "memory",
        "devices",
        "freezer",
        "blkio",
        "pids",
        "systemd",
    ):
        assert (tmp_path / hierarchy / "hull" / "c1" / "cgroup.procs").exists(), hierarchy
    for directory in (tmp_path / "cpuset/hull", tmp_path / "cpuset/hull/c1"):
        assert read(directory / "cpuset.cpus") == "0-3"
        assert read(directory / "cpuset.mems") == "0"
    assert manager.exists()


def test_v1_set_writes_exact_files(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    manager, kernel = v1_manager(make_v1_tree(tmp_path))
    manager.create(FULL_RESOURCES)
    kernel.writes.clear()
    manager.set(FULL_RESOURCES)
    paths = manager.controller_paths()
    mem, cpu, blkio = Path(paths["memory"]), Path(paths["cpu"]), Path(paths["blkio"])
    assert read(mem / "memory.limit_in_bytes") == str(32 << 20)
    assert read(mem / "memory.memsw.limit_in_bytes") == str(64 << 20)
    assert read(mem / "memory.soft_limit_in_bytes") == str(16 << 20)
    assert read(mem / "memory.swappiness") == "10"
    assert read(mem / "memory.oom_control") == "1"
    assert read(mem / "memory.kmem.limit_in_bytes") == UNLIMITED  # kernel: ignored
    assert read(cpu / "cpu.shares") == "1024"
    assert read(cpu / "cpu.cfs_quota_us") == "50000"
    assert read(cpu / "cpu.cfs_period_us") == "100000"
    assert read(cpu / "cpu.rt_period_us") == "1000000"
    assert read(cpu / "cpu.rt_runtime_us") == "0"
    assert read(Path(paths["cpuset"]) / "cpuset.cpus") == "1"
    assert read(Path(paths["pids"]) / "pids.max") == "64"
    assert read(blkio / "blkio.bfq.weight") == "500"
    assert read(blkio / "blkio.bfq.weight_device") == "8:0 300"
    assert read(blkio / "blkio.throttle.read_bps_device") == "8:0 1048576"
    assert read(blkio / "blkio.throttle.write_iops_device") == "8:16 100"
    devices = kernel.written("devices/")
    # the config's rules, then runc's default allowed devices (init must mknod /dev/null)
    assert devices == [
        ("devices/hull/c1/devices.deny", "a *:* rwm"),
        ("devices/hull/c1/devices.allow", "c 1:3 rwm"),
        ("devices/hull/c1/devices.allow", "c 136:* rw"),
        ("devices/hull/c1/devices.allow", "c *:* m"),
        ("devices/hull/c1/devices.allow", "b *:* m"),
        ("devices/hull/c1/devices.allow", "c 1:3 rwm"),
        ("devices/hull/c1/devices.allow", "c 1:8 rwm"),
        ("devices/hull/c1/devices.allow", "c 1:7 rwm"),
        ("devices/hull/c1/devices.allow", "c 5:0 rwm"),
        ("devices/hull/c1/devices.allow", "c 1:5 rwm"),
        ("devices/hull/c1/devices.allow", "c 1:9 rwm"),
        ("devices/hull/c1/devices.allow", "c 136:* rwm"),
        ("devices/hull/c1/devices.allow", "c 5:2 rwm"),
    ]
    # the memory limit goes in before memsw while memsw is still unlimited
    memory_writes = [p.rsplit("/", 1)[1] for p, _ in kernel.written("memory/")]
    assert memory_writes.index("memory.limit_in_bytes") < memory_writes.index(
        "memory.memsw.limit_in_bytes"
    )
    assert "unified" not in caplog.text


def test_v1_update_raising_limits_writes_memsw_first(tmp_path: Path) -> None:
    manager, kernel = v1_manager(make_v1_tree(tmp_path))
    manager.create(None)
    manager.set({"memory": {"limit": 32 << 20, "swap": 32 << 20}})
    kernel.writes.clear()
    manager.set({"memory": {"limit": 128 << 20, "swap": 256 << 20}})
    assert [p.rsplit("/", 1)[1] for p, _ in kernel.writes] == [
        "memory.memsw.limit_in_bytes",
        "memory.limit_in_bytes",
    ]
    kernel.writes.clear()
    manager.set({"memory": {"limit": -1}})
    mem = Path(manager.controller_paths()["memory"])
    assert read(mem / "memory.memsw.limit_in_bytes") == "-1"
    assert read(mem / "memory.limit_in_bytes") == "-1"
    manager.set({"pids": {"limit": 0}})
    assert read(Path(manager.controller_paths()["pids"]) / "pids.max") == "max"


def test_v1_missing_controller_is_a_clear_error_and_leaves_nothing(tmp_path: Path) -> None:
    manager, _ = v1_manager(make_v1_tree(tmp_path))
    hugepages = {"hugepageLimits": [{"pageSize": "2MB", "limit": 1 << 21}]}
    with pytest.raises(KernelError, match="cgroup controller 'hugetlb' is not available"):
        manager.create(hugepages)
    assert not manager.exists()
    assert not (tmp_path / "memory" / "hull").exists()


def test_v1_hugepage_limits_when_mounted(tmp_path: Path) -> None:
    root = make_v1_tree(tmp_path, hierarchies=("memory", "hugetlb"))
    manager, _ = v1_manager(root)
    manager.create(None)
    manager.set({"hugepageLimits": [{"pageSize": "2MB", "limit": 1 << 22}]})
    assert read(Path(manager.controller_paths()["hugetlb"]) / "hugetlb.2MB.limit_in_bytes") == str(
        1 << 22
    )
    with pytest.raises(ConfigError, match="hugepage size '64KB'"):
        manager.set({"hugepageLimits": [{"pageSize": "64KB", "limit": 1}]})


def test_v1_failed_create_removes_what_it_made(tmp_path: Path) -> None:
    manager, _ = v1_manager(make_v1_tree(tmp_path), fail_mkdir_in="pids")
    with pytest.raises(KernelError, match="cannot create cgroup"):
        manager.create(None)
    leftovers = [p for p in tmp_path.rglob("hull")]
    assert leftovers == []


def test_bad_config_is_refused_before_any_dir(tmp_path: Path) -> None:
    manager, _ = v1_manager(make_v1_tree(tmp_path))
    with pytest.raises(ConfigError, match="swappiness"):
        manager.create({"memory": {"swappiness": 101}})
    with pytest.raises(ConfigError, match="device type"):
        manager.create({"devices": [{"allow": True, "type": "z"}]})
    with pytest.raises(ConfigError, match="needs cgroup v2"):
        manager.create({"unified": {"memory.high": "1G"}})
    assert not manager.exists()


def test_v1_freeze_thaw_and_oom(tmp_path: Path) -> None:
    manager, _ = v1_manager(make_v1_tree(tmp_path))
    manager.create(None)
    assert not manager.frozen()
    manager.freeze()
    assert manager.frozen()
    assert read(Path(manager.controller_paths()["freezer"]) / "freezer.state") == "FROZEN"
    manager.thaw()
    assert not manager.frozen()
    assert not manager.oom_killed()
    oom = Path(manager.controller_paths()["memory"]) / "memory.oom_control"
    oom.write_text("oom_kill_disable 0\nunder_oom 0\noom_kill 1\n")
    assert manager.oom_killed()


def test_v1_stats_come_from_the_files(tmp_path: Path) -> None:
    manager, _ = v1_manager(make_v1_tree(tmp_path))
    manager.create(None)
    manager.set({"pids": {"limit": 9}})
    stats = manager.stats()
    assert stats["memory"]["usage"] == 4096
    assert stats["memory"]["max_usage"] == 8192
    assert stats["memory"]["limit"] is None  # unlimited reads back as a huge number
    assert stats["memory"]["cache"] == 12
    assert stats["cpu"]["usage_ns"] == 123456789
    assert stats["cpu"]["throttled_periods"] == 1
    assert stats["pids"] == {"current": 0, "limit": 9}


def test_hybrid_uses_the_unified_mount_too(tmp_path: Path) -> None:
    manager, kernel = v1_manager(make_hybrid_tree(tmp_path))
    manager.create(None)
    unified = tmp_path / "unified" / "hull" / "c1"
    assert unified.is_dir()
    assert str(unified) in manager.hierarchy_dirs().values()
    assert "" not in manager.controller_paths()
    manager.apply(4242)
    procs = [p for p, v in kernel.writes if p.endswith("cgroup.procs") and v == "4242"]
    assert "unified/hull/c1/cgroup.procs" in procs
    assert len(procs) == 9  # 8 v1 hierarchies + the cgroup2 mount
    with pytest.raises(ConfigError, match="needs cgroup v2"):
        manager.set({"unified": {"memory.high": "1G"}})


def test_destroy_removes_every_dir_deepest_first(tmp_path: Path) -> None:
    manager, kernel = v1_manager(make_hybrid_tree(tmp_path))
    other, _ = v1_manager(tmp_path, path="/hull/other")
    other.files = kernel
    other.create(None)
    manager.create(None)
    kernel.mkdir(str(tmp_path / "memory/hull/c1/nested"))  # a cgroup the container made
    manager.destroy()
    for hierarchy in ("cpu,cpuacct", "memory", "pids", "systemd", "unified"):
        assert not (tmp_path / hierarchy / "hull" / "c1").exists()
        assert (tmp_path / hierarchy / "hull" / "other").is_dir()  # shared parent stays
    assert not manager.exists()
    manager.destroy()  # already gone: fine
    other.destroy()
    assert not (tmp_path / "memory" / "hull").exists()
    assert not (tmp_path / "unified" / "hull").exists()


def test_destroy_reports_a_busy_cgroup(tmp_path: Path) -> None:
    manager, kernel = v1_manager(make_v1_tree(tmp_path))
    manager.create(None)
    kernel.write(str(tmp_path / "pids/hull/c1/cgroup.procs"), "777")
    with pytest.raises(KernelError, match="pids still inside: 777"):
        manager.destroy()


def test_pids_are_collected_recursively(tmp_path: Path) -> None:
    manager, kernel = v1_manager(make_v1_tree(tmp_path))
    manager.create(None)
    leaf = tmp_path / "pids/hull/c1"
    kernel.mkdir(str(leaf / "sub"))
    (leaf / "cgroup.procs").write_text("10\n11\n")
    (leaf / "sub" / "cgroup.procs").write_text("12\n10\n")
    assert manager.pids() == [10, 11, 12]


def test_kill_all_signals_every_pid_frozen(tmp_path: Path) -> None:
    manager, kernel = v1_manager(make_v1_tree(tmp_path))
    manager.create(None)
    child = subprocess.Popen(["sleep", "30"])
    try:
        (tmp_path / "pids/hull/c1/cgroup.procs").write_text(f"{child.pid}\n")
        manager.kill_all(signal.SIGTERM)
        assert child.wait(timeout=10) == -signal.SIGTERM
    finally:
        child.kill()
        child.wait()
    states = [v for p, v in kernel.writes if p.endswith("freezer.state")]
    assert states == ["FROZEN", "THAWED"]


# -- v2 -----------------------------------------------------------------------------------


def v2_manager(root: Path, controllers=ALL_V2, path: str = "/hull/c1"):
    make_v2_root(root, controllers)
    kernel = FakeKernel(root)
    manager = manager_for(path, "c1", str(root), files=kernel)
    assert isinstance(manager, V2Manager)
    return manager, kernel


def test_v2_create_enables_controllers_down_the_path(tmp_path: Path) -> None:
    manager, kernel = v2_manager(tmp_path)
    manager.create(FULL_RESOURCES)
    assert read(tmp_path / "cgroup.subtree_control").split() == sorted(ALL_V2)
    assert read(tmp_path / "hull" / "cgroup.subtree_control").split() == sorted(ALL_V2)
    assert set(read(tmp_path / "hull/c1/cgroup.controllers").split()) == set(ALL_V2)
    assert read(tmp_path / "hull/c1/cgroup.subtree_control") == ""  # the leaf delegates nothing


def test_v2_set_maps_values_like_runc(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    manager, _ = v2_manager(tmp_path)
    resources = dict(
        FULL_RESOURCES,
        hugepageLimits=[{"pageSize": "2MB", "limit": 1 << 22}],
        unified={"memory.high": "30M"},
    )
    manager.create(resources)
    with caplog.at_level(logging.WARNING):
        manager.set(resources)
    leaf = tmp_path / "hull" / "c1"
    assert read(leaf / "memory.max") == str(32 << 20)
    assert read(leaf / "memory.low") == str(16 << 20)
    assert read(leaf / "memory.swap.max") == str(32 << 20)  # 64M memory+swap - 32M memory
    assert read(leaf / "memory.high") == "30M"
    assert read(leaf / "cpu.weight") == "39"
    assert read(leaf / "cpu.max") == "50000 100000"
    assert read(leaf / "cpuset.cpus") == "1"
    assert read(leaf / "cpuset.mems") == "0"
    assert read(leaf / "pids.max") == "64"
    assert read(leaf / "io.max") == "8:16 wiops=100"  # last of the throttle writes
    assert read(leaf / "io.weight") == "8:0 2930"  # weightDevice after the default weight
    assert read(leaf / "hugetlb.2MB.max") == str(1 << 22)
    assert "device rules need an eBPF program" in caplog.text
    assert "3 rule(s)" in caplog.text


def test_v2_unlimited_values_are_max(tmp_path: Path) -> None:
    manager, kernel = v2_manager(tmp_path)
    manager.create(None)
    manager.set({"memory": {"limit": 1 << 30}, "cpu": {"quota": 20000}})
    manager.set({"memory": {"limit": -1}, "pids": {"limit": -1}, "cpu": {"quota": -1}})
    leaf = tmp_path / "hull" / "c1"
    assert read(leaf / "memory.max") == "max"
    assert read(leaf / "memory.swap.max") == "max"
    assert read(leaf / "pids.max") == "max"
    assert read(leaf / "cpu.max") == "max 100000"
    manager.set({"cpu": {"period": 50000}})  # update keeps the quota it was not given
    assert read(leaf / "cpu.max") == "max 50000"
    manager.set({"blockIO": {"weight": 500}})
    assert read(leaf / "io.weight") == "4950"


def test_v2_missing_controller(tmp_path: Path) -> None:
    manager, _ = v2_manager(tmp_path, controllers=("cpu", "memory"))
    with pytest.raises(KernelError, match="cgroup controller 'pids' is not available"):
        manager.create({"pids": {"limit": 5}})
    with pytest.raises(KernelError, match="'hugetlb', 'io' are not available"):
        manager.create(
            {"blockIO": {"weight": 100}, "hugepageLimits": [{"pageSize": "2MB", "limit": 1}]}
        )
    assert not manager.exists()
    manager.create({"memory": {"limit": 1 << 20}})
    with pytest.raises(KernelError, match="controller 'pids' is not available"):
        manager.set({"unified": {"pids.max": "5"}})
    with pytest.raises(ConfigError, match="'memory.bogus' is not a file"):
        manager.set({"unified": {"memory.bogus": "5"}})
    with pytest.raises(ConfigError, match="may not set cgroup.procs"):
        manager.set({"unified": {"cgroup.procs": "1"}})


def test_v2_freeze_stats_oom_kill_and_destroy(tmp_path: Path) -> None:
    manager, kernel = v2_manager(tmp_path)
    manager.create(None)
    manager.freeze()
    assert manager.frozen()
    assert read(tmp_path / "hull/c1/cgroup.freeze") == "1"
    manager.thaw()
    assert not manager.frozen()
    stats = manager.stats()
    assert stats["memory"]["usage"] == 8192
    assert stats["memory"]["max_usage"] == 16384
    assert stats["memory"]["limit"] is None
    assert stats["cpu"]["usage_ns"] == 1500 * 1000
    assert stats["pids"] == {"current": 1, "limit": None}
    assert not manager.oom_killed()
    (tmp_path / "hull/c1/memory.events").write_text("oom 1\noom_kill 1\n")
    assert manager.oom_killed()
    manager.kill_all(signal.SIGKILL)
    assert ("hull/c1/cgroup.kill", "1") in kernel.writes
    manager.destroy()
    assert not (tmp_path / "hull").exists()
    assert not manager.exists()
