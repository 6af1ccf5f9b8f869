"""The cgroup manager against the real kernel (root): limits, OOM, pids, freezer, teardown.

This host is hybrid (v1 controllers, a controller-less cgroup2 at
/sys/fs/cgroup/unified); the v2 tests use whatever cgroup2 mount exists and skip
the parts whose controllers are bound to v1.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from functools import partial
from pathlib import Path

import pytest

from hull.errors import KernelError
from hull.runtime.linux.cgroups import (
    CgroupManager,
    V1Manager,
    V2Manager,
    detect_layout,
    manager_for,
)
from hull.runtime.linux.cgroups.mounts import find_mounts

pytestmark = pytest.mark.root

MiB = 1 << 20
LAYOUT = detect_layout()
MOUNTS = find_mounts()
CGROUP2_MOUNT = next((m.mountpoint for m in MOUNTS if m.fstype == "cgroup2"), None)


def unique_path(prefix: str = "/hull-test") -> str:
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


def wait_for(check: Callable[[], bool], timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return True
        time.sleep(0.02)
    return check()


class Cgroups:
    """Makes managers and processes for one test, and cleans all of them up."""

    def __init__(self) -> None:
        self.managers: list[CgroupManager] = []
        self.procs: list[subprocess.Popen[bytes]] = []
        self.v2_roots: dict[str, set[str]] = {}

    def manager(self, path: str | None = None, root: str = "/sys/fs/cgroup") -> CgroupManager:
        if root != "/sys/fs/cgroup" and root not in self.v2_roots:
            control = Path(root, "cgroup.subtree_control")
            self.v2_roots[root] = set(control.read_text().split())
        manager = manager_for(path or unique_path(), "unused", root)
        self.managers.append(manager)
        return manager

    def spawn_in(self, manager: CgroupManager, argv: list[str]) -> subprocess.Popen[bytes]:
        """Start argv already inside the cgroup: a shell waits on stdin until it has
        been moved in, then execs argv (same pid)."""
        proc = subprocess.Popen(
            ["sh", "-c", 'read _ && exec "$@"', "sh", *argv],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        self.procs.append(proc)
        manager.apply(proc.pid)
        assert proc.stdin is not None
        proc.stdin.write(b"go\n")
        proc.stdin.close()
        proc.stdin = None  # so communicate() does not touch it
        return proc

    def cleanup(self) -> None:
        for manager in self.managers:
            with contextlib.suppress(Exception):
                if manager.exists():
                    with contextlib.suppress(Exception):
                        manager.thaw()
                    manager.kill_all(signal.SIGKILL)
        for proc in self.procs:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            proc.wait()
        for manager in self.managers:
            with contextlib.suppress(Exception):
                wait_for(partial(lambda m: not m.pids(), manager), timeout=5)
                manager.destroy()
        # undo the delegation a V2Manager made at a shared cgroup2 root
        for root, before in self.v2_roots.items():
            control = Path(root, "cgroup.subtree_control")
            for controller in set(control.read_text().split()) - before:
                with contextlib.suppress(OSError):
                    control.write_text(f"-{controller}")


@pytest.fixture
def cgroups() -> Iterator[Cgroups]:
    helper = Cgroups()
    try:
        yield helper
    finally:
        helper.cleanup()


def proc_state(pid: int) -> str:
    return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]


def cpu_ticks(pid: int) -> int:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return int(fields[11]) + int(fields[12])  # utime + stime


def knob(manager: CgroupManager, controller: str, name: str) -> str:
    return Path(manager.controller_paths()[controller], name).read_text().strip()


def all_hierarchy_dirs(path: str) -> list[Path]:
    """Where a cgroup at path would live in every hierarchy mounted on this host."""
    return [Path(m.mountpoint, path.lstrip("/")) for m in MOUNTS]


needs_v1 = pytest.mark.skipif(LAYOUT == "v2", reason="host has no cgroup v1 hierarchies")


def test_layout_matches_the_mount_table() -> None:
    fstypes = {line.split()[2] for line in Path("/proc/self/mounts").read_text().splitlines()}
    if Path("/sys/fs/cgroup/cgroup.controllers").exists():
        assert LAYOUT == "v2"
    elif "cgroup2" in fstypes:
        assert LAYOUT == "hybrid"
    else:
        assert LAYOUT == "v1"


# -- v1 / hybrid --------------------------------------------------------------------------


@needs_v1
def test_limits_reach_the_kernel_and_update_changes_them(cgroups: Cgroups) -> None:
    manager = cgroups.manager()
    assert isinstance(manager, V1Manager)
    resources = {"memory": {"limit": 32 * MiB}, "pids": {"limit": 20}}
    manager.create(resources)
    manager.set(resources)
    proc = cgroups.spawn_in(manager, ["sleep", "60"])
    assert knob(manager, "memory", "memory.limit_in_bytes") == str(32 * MiB)
    assert knob(manager, "pids", "pids.max") == "20"
    membership = Path(f"/proc/{proc.pid}/cgroup").read_text().splitlines()
    for line in membership:
        hierarchy, controllers, path = line.split(":", 2)
        if controllers or LAYOUT == "hybrid":  # every v1 hierarchy, and the cgroup2 one
            assert path == manager.path, line
    assert manager.pids() == [proc.pid]

    manager.set({"memory": {"limit": 64 * MiB}, "pids": {"limit": -1}})
    assert knob(manager, "memory", "memory.limit_in_bytes") == str(64 * MiB)
    assert knob(manager, "pids", "pids.max") == "max"
    stats = manager.stats()
    assert stats["memory"]["limit"] == 64 * MiB
    assert stats["pids"] == {"current": 1, "limit": None}


@needs_v1
def test_pids_limit_makes_fork_fail_with_eagain(cgroups: Cgroups) -> None:
    manager = cgroups.manager()
    manager.create({"pids": {"limit": 5}})
    manager.set({"pids": {"limit": 5}})
    assert knob(manager, "pids", "pids.max") == "5"
    forker = (
        "import os, time\n"
        "kids = []\n"
        "try:\n"
        "    for _ in range(20):\n"
        "        pid = os.fork()\n"
        "        if pid == 0:\n"
        "            time.sleep(30)\n"
        "            os._exit(0)\n"
        "        kids.append(pid)\n"
        "    print('forked', len(kids))\n"
        "except BlockingIOError as e:\n"
        "    print('EAGAIN' if e.errno == 11 else e, len(kids))\n"
        "finally:\n"
        "    for pid in kids:\n"
        "        os.kill(pid, 9)\n"
        "        os.waitpid(pid, 0)\n"
    )
    proc = cgroups.spawn_in(manager, [sys.executable, "-S", "-c", forker])
    out, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err
    assert out.decode().split() == ["EAGAIN", "4"]  # itself + 4 children = pids.max


@needs_v1
def test_deny_all_devices_still_allows_the_standard_nodes(cgroups: Cgroups, tmp_path: Path) -> None:
    # what `hull-runtime spec` writes: init must still mknod and use /dev/null & co.
    resources = {"devices": [{"allow": False, "access": "rwm"}]}
    manager = cgroups.manager()
    manager.create(resources)
    manager.set(resources)
    script = (
        'echo x > /dev/null && mknod "$1/null" c 1 3 && echo x > "$1/null" && echo ok; '
        ": < /dev/kmsg && echo kmsg-opened"
    )
    proc = cgroups.spawn_in(manager, ["sh", "-c", script, "sh", str(tmp_path)])
    out, err = proc.communicate(timeout=30)
    assert out.decode().split() == ["ok"], err
    assert b"Operation not permitted" in err  # /dev/kmsg (1:11) stays denied


@needs_v1
def test_memory_hog_is_oom_killed(cgroups: Cgroups) -> None:
    manager = cgroups.manager()
    resources = {"memory": {"limit": 16 * MiB, "swap": 16 * MiB}}
    manager.create(resources)
    manager.set(resources)
    assert not manager.oom_killed()
    hog = "b = b'x' * (256 << 20)\nprint('survived')"
    proc = cgroups.spawn_in(manager, [sys.executable, "-S", "-c", hog])
    out, _ = proc.communicate(timeout=60)
    assert proc.returncode == -signal.SIGKILL
    assert b"survived" not in out
    assert manager.oom_killed()


@needs_v1
def test_freeze_stops_the_process_and_thaw_resumes_it(cgroups: Cgroups) -> None:
    manager = cgroups.manager()
    manager.create(None)
    proc = cgroups.spawn_in(manager, ["sh", "-c", "while :; do :; done"])
    assert wait_for(lambda: cpu_ticks(proc.pid) > 0)
    manager.freeze()
    assert manager.frozen()
    assert knob(manager, "freezer", "freezer.state") == "FROZEN"
    assert proc_state(proc.pid) == "D"
    ticks = cpu_ticks(proc.pid)
    time.sleep(0.3)
    assert cpu_ticks(proc.pid) == ticks  # a busy loop accrues no CPU while frozen
    manager.thaw()
    assert not manager.frozen()
    assert knob(manager, "freezer", "freezer.state") == "THAWED"
    assert wait_for(lambda: cpu_ticks(proc.pid) > ticks)
    assert proc_state(proc.pid) in ("R", "S")


@needs_v1
def test_stats_report_real_usage(cgroups: Cgroups) -> None:
    manager = cgroups.manager()
    manager.create(None)
    toucher = "import time\nb = b'x' * (8 << 20)\ntime.sleep(60)"
    cgroups.spawn_in(manager, [sys.executable, "-S", "-c", toucher])
    assert wait_for(lambda: manager.stats()["memory"]["usage"] >= 8 * MiB)
    stats = manager.stats()
    assert stats["memory"]["max_usage"] >= 8 * MiB
    assert stats["cpu"]["usage_ns"] > 0
    assert stats["pids"]["current"] == 1


@needs_v1
def test_kill_all_reaches_every_process(cgroups: Cgroups) -> None:
    manager = cgroups.manager()
    manager.create(None)
    procs = [cgroups.spawn_in(manager, ["sleep", "60"]) for _ in range(3)]
    assert wait_for(lambda: len(manager.pids()) == 3)
    manager.kill_all(signal.SIGKILL)
    assert [p.wait(timeout=10) for p in procs] == [-signal.SIGKILL] * 3
    assert wait_for(lambda: manager.pids() == [])
    assert not manager.frozen()


@needs_v1
def test_destroy_leaves_no_dir_in_any_hierarchy(cgroups: Cgroups) -> None:
    top = unique_path()
    manager = cgroups.manager(f"{top}/inner")
    manager.create({"memory": {"limit": 64 * MiB}, "cpu": {"cpus": "0"}})
    proc = cgroups.spawn_in(manager, ["sleep", "60"])
    dirs = all_hierarchy_dirs(manager.path)
    assert all(d.is_dir() for d in dirs)
    if CGROUP2_MOUNT:
        assert Path(CGROUP2_MOUNT, top.lstrip("/"), "inner").is_dir()
    with pytest.raises(KernelError, match="pids still inside"):
        manager.destroy()  # busy: refused, and says why
    manager.kill_all(signal.SIGKILL)
    proc.wait(timeout=10)
    manager.destroy()
    assert not manager.exists()
    leftovers = [d for d in all_hierarchy_dirs(top) if d.exists()]
    assert leftovers == []
    manager.destroy()  # twice is fine


@needs_v1
def test_missing_v1_controller_is_refused(cgroups: Cgroups) -> None:
    manager = cgroups.manager()
    assert isinstance(manager, V1Manager)
    if "hugetlb" in manager.available():
        pytest.skip("hugetlb is mounted as a v1 hierarchy on this host")
    with pytest.raises(KernelError, match="cgroup controller 'hugetlb' is not available"):
        manager.create({"hugepageLimits": [{"pageSize": "2MB", "limit": 2 * MiB}]})
    assert not any(d.exists() for d in all_hierarchy_dirs(manager.path))


# -- v2 on a real cgroup2 hierarchy -----------------------------------------------------


@pytest.fixture
def v2_root() -> str:
    if LAYOUT == "v2":
        return "/sys/fs/cgroup"
    if CGROUP2_MOUNT is None:
        pytest.skip("no cgroup2 hierarchy is mounted on this host")
    return CGROUP2_MOUNT


def test_v2_membership_freeze_and_kill_on_real_cgroup2(cgroups: Cgroups, v2_root: str) -> None:
    """The core cgroup2 interface works without any controller."""
    manager = cgroups.manager(root=v2_root)
    assert isinstance(manager, V2Manager)
    manager.create(None)
    proc = cgroups.spawn_in(manager, ["sleep", "60"])
    assert manager.pids() == [proc.pid]
    relative = "/" + os.path.relpath(manager.controller_paths()[""], v2_root)
    assert f"0::{relative}" in Path(f"/proc/{proc.pid}/cgroup").read_text().splitlines()
    manager.freeze()
    assert manager.frozen()
    assert "frozen 1" in Path(manager.controller_paths()[""], "cgroup.events").read_text()
    manager.thaw()
    assert not manager.frozen()
    manager.kill_all(signal.SIGKILL)  # cgroup.kill
    assert proc.wait(timeout=10) == -signal.SIGKILL
    assert wait_for(lambda: manager.pids() == [])
    manager.destroy()
    assert not manager.exists()


def test_v2_limits_on_real_cgroup2(cgroups: Cgroups, v2_root: str) -> None:
    available = set(Path(v2_root, "cgroup.controllers").read_text().split())
    if not {"memory", "pids"} <= available:
        pytest.skip(
            f"the cgroup2 hierarchy at {v2_root} offers {sorted(available) or 'no controllers'}; "
            "memory and pids are bound to cgroup v1 on this host (unit tests cover v2 writes)"
        )
    manager = cgroups.manager(root=v2_root)
    resources = {"memory": {"limit": 32 * MiB}, "pids": {"limit": 10}}
    manager.create(resources)
    manager.set(resources)
    leaf = Path(manager.controller_paths()[""])
    assert (leaf / "memory.max").read_text().strip() == str(32 * MiB)
    assert (leaf / "pids.max").read_text().strip() == "10"
    manager.set({"memory": {"limit": -1}})
    assert (leaf / "memory.max").read_text().strip() == "max"


def test_v2_hugetlb_limit_on_real_cgroup2(cgroups: Cgroups, v2_root: str) -> None:
    available = set(Path(v2_root, "cgroup.controllers").read_text().split())
    if "hugetlb" not in available:
        pytest.skip(f"no hugetlb controller in the cgroup2 hierarchy at {v2_root}")
    manager = cgroups.manager(root=v2_root)
    resources = {"hugepageLimits": [{"pageSize": "2MB", "limit": 4 * MiB}]}
    manager.create(resources)
    manager.set(resources)
    leaf = Path(manager.controller_paths()[""])
    assert (leaf / "hugetlb.2MB.max").read_text().strip() == str(4 * MiB)
    with pytest.raises(KernelError, match="cgroup controller 'pids' is not available"):
        cgroups.manager(root=v2_root).create({"pids": {"limit": 5}})
