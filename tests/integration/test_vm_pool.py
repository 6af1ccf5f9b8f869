"""The microVM pool with real QEMU: fill, take, run, refill, and nothing left behind.

Pooled VMs are detached QEMU processes (no parent-death signal), so every test ends
with the pool drained and checks that no QEMU of its runroot is left.
"""

from __future__ import annotations

import hashlib
import io
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from hull.errors import HullError
from hull.paths import HullPaths
from hull.vm import pool
from tests.integration.engine_helpers import pids_with, require_vm_tools

MEMORY_MIB = 128


@pytest.fixture(scope="session")
def pool_root_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One Hull root for the session: guest assets and one template, or a skip."""
    root = tmp_path_factory.mktemp("hull-vm-pool")
    require_vm_tools()
    from hull.vm.microvm import VmShape, guest_assets, pick_accel
    from hull.vm.template import ensure_template

    paths = HullPaths(root, root / "run")
    try:
        assets = guest_assets(paths)
        ensure_template(paths, assets, VmShape(pick_accel(paths, assets), MEMORY_MIB, 1))
    except HullError as exc:
        pytest.skip(f"no warm-start microVMs here: {exc.message}")
    return root


class Pool:
    """A test's view: its own runroot beside the shared root, one image, its shape."""

    def __init__(self, root: Path, runroot: Path, rootfs: Path) -> None:
        from hull.vm.microvm import VmShape, guest_assets, pick_accel, root_disk

        self.paths = HullPaths(root, runroot)
        self.assets = guest_assets(self.paths)
        self.shape = VmShape(pick_accel(self.paths, self.assets), MEMORY_MIB, 1)
        self.rootfs = rootfs
        # A chain ID of this test's own, so tests never share pooled VMs.
        self.chain = "sha256:" + hashlib.sha256(str(runroot).encode()).hexdigest()
        scratch = runroot / "disk-scratch"
        scratch.mkdir(parents=True)
        root_disk(self.paths, rootfs, self.chain, scratch)
        shutil.rmtree(scratch)

    def take(self):
        return pool.take(self.paths, self.assets, self.shape, self.chain, refill=False)


@pytest.fixture
def vm_pool(
    pool_root_dir: Path, busybox_template: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    monkeypatch.setenv(pool.POOL_ENV, "2")
    runroot = tmp_path / "run"
    runroot.mkdir()
    state = Pool(pool_root_dir, runroot, busybox_template)
    yield state
    wait_refills(state.paths)
    pool.reconcile(state.paths, size=0)
    wait_no_qemu(runroot)
    (pool_root_dir / "vm" / "disks" / f"{pool.chain_hex(state.chain)}.erofs").unlink()


def qemu_pids_under(directory: Path) -> list[int]:
    """Live (not zombie) QEMUs whose command line names a path under directory."""
    return [pid for pid in pids_with(b"qemu-system", str(directory)) if pool._start_time(pid) >= 0]


def wait_no_qemu(directory: Path, timeout: float = 5.0) -> None:
    """Until the QEMUs under directory are gone (a SIGKILL takes a moment to land)."""
    deadline = time.monotonic() + timeout
    while qemu_pids_under(directory) and time.monotonic() < deadline:
        time.sleep(0.01)
    assert qemu_pids_under(directory) == []


def wait_refills(paths: HullPaths, timeout: float = 60.0) -> None:
    """Until no refill process of this runroot is left."""
    deadline = time.monotonic() + timeout
    while pool.refilling(paths):
        assert time.monotonic() < deadline, "a refill did not finish"
        time.sleep(0.05)


def test_a_pooled_vm_runs_a_request_and_leaves_nothing(vm_pool: Pool) -> None:
    from hull.vm.protocol import RunRequest

    assert pool.refill(vm_pool.paths, vm_pool.shape, vm_pool.chain) == 2
    entries = pool.entries(vm_pool.paths)
    assert len(entries) == 2
    vm = vm_pool.take()
    assert vm is not None
    assert len(pool.entries(vm_pool.paths)) == 1
    out, err = io.BytesIO(), io.BytesIO()
    with vm:
        code = vm.run(RunRequest(["sh", "-c", "echo out; echo err >&2; exit 3"]), out, err)
        assert vm.qemu.status() == "running"  # QMP, handed over from the pool
        pid = vm.qemu.pid
        run_dir = vm.run_dir
    assert (code, out.getvalue(), err.getvalue()) == (3, b"out\n", b"err\n")
    starts = {e.qemu_pid: e.record["qemu"][1] for e in entries}
    assert pid in starts
    assert not pool._alive(pid, starts[pid])  # closing the VM ended its QEMU
    assert not run_dir.exists()
    assert pool.refill(vm_pool.paths, vm_pool.shape, vm_pool.chain) == 1


def test_run_in_vm_takes_from_the_pool_and_refills_it(vm_pool: Pool) -> None:
    from hull.vm.sandbox import run_in_vm

    def run(args: list[str]) -> tuple[int, bytes]:
        out = io.BytesIO()
        code = run_in_vm(
            vm_pool.rootfs,
            args,
            [],
            memory_mib=MEMORY_MIB,
            stdout=out,
            stderr=io.BytesIO(),
            chain_id=vm_pool.chain,
            paths=vm_pool.paths,
            accel=vm_pool.shape.accel,
        )
        return code, out.getvalue()

    assert run(["true"]) == (0, b"")  # the pool is empty: a restore, then a refill
    wait_refills(vm_pool.paths)
    pooled = {e.qemu_pid for e in pool.entries(vm_pool.paths)}
    assert len(pooled) == 2
    assert run(["cat", "/etc/hostname-missing-so-it-fails"])[0] == 1
    assert run(["echo", "pooled"]) == (0, b"pooled\n")
    assert all(pool._start_time(pid) < 0 for pid in pooled)  # both taken and ended
    wait_refills(vm_pool.paths)
    assert len(pool.entries(vm_pool.paths)) == 2
    assert list((Path(vm_pool.paths.runroot) / "vm").iterdir()) == []


def test_a_dead_pooled_vm_is_skipped_and_removed(vm_pool: Pool) -> None:
    assert pool.refill(vm_pool.paths, vm_pool.shape, vm_pool.chain) == 2
    first, second = pool.entries(vm_pool.paths)
    os.kill(first.qemu_pid, signal.SIGKILL)
    deadline = time.monotonic() + 5
    while pool._start_time(first.qemu_pid) >= 0 and time.monotonic() < deadline:
        time.sleep(0.01)
    vm = vm_pool.take()
    assert vm is not None
    with vm:
        assert vm.qemu.pid == second.qemu_pid
    assert not first.directory.exists()
    assert pool.entries(vm_pool.paths) == []


def test_a_vm_whose_taker_was_killed_is_swept(vm_pool: Pool) -> None:
    assert pool.refill(vm_pool.paths, vm_pool.shape, vm_pool.chain) == 1 + 1
    taker_code = (
        "import sys, time\n"
        "from pathlib import Path\n"
        "from hull.paths import HullPaths\n"
        "from hull.vm import pool\n"
        "from hull.vm.microvm import VmShape, guest_assets\n"
        "paths = HullPaths(Path(sys.argv[1]), Path(sys.argv[2]))\n"
        "shape = VmShape(sys.argv[3], int(sys.argv[4]), 1)\n"
        "vm = pool.take(paths, guest_assets(paths), shape, sys.argv[5], refill=False)\n"
        "print(vm.qemu.pid, flush=True)\n"
        "time.sleep(60)\n"
    )
    paths, shape = vm_pool.paths, vm_pool.shape
    taker = subprocess.Popen(
        [sys.executable, "-c", taker_code, str(paths.root), str(paths.runroot), shape.accel,
         str(shape.memory_mib), vm_pool.chain],
        stdout=subprocess.PIPE,
        cwd=Path(__file__).resolve().parents[2],
    )  # fmt: skip
    assert taker.stdout is not None
    pid = int(taker.stdout.readline())
    start = pool._start_time(pid)
    taker.kill()
    taker.wait()
    assert pool._alive(pid, start)  # no parent-death signal reaches a pooled QEMU
    assert pool.reconcile(paths) == 1
    deadline = time.monotonic() + 5
    while pool._alive(pid, start) and time.monotonic() < deadline:
        time.sleep(0.01)
    assert not pool._alive(pid, start)
    assert list((Path(paths.runroot) / "vm").iterdir()) == []
    assert len(pool.entries(paths)) == 1  # the other pooled VM stays


def test_size_zero_stops_all_pooled_vms(vm_pool: Pool, monkeypatch: pytest.MonkeyPatch) -> None:
    assert pool.refill(vm_pool.paths, vm_pool.shape, vm_pool.chain) == 2
    assert len(qemu_pids_under(vm_pool.paths.runroot)) == 2
    monkeypatch.delenv(pool.POOL_ENV)
    pool.set_pool_size(vm_pool.paths, 0)
    wait_no_qemu(vm_pool.paths.runroot)
    assert pool.entries(vm_pool.paths) == []


def test_cli_pools_an_image_by_name_and_size_zero_stops_it(
    vm_pool: Pool, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from hull.cli.main import main

    paths = vm_pool.paths
    global_flags = ["--root", str(paths.root), "--runroot", str(paths.runroot)]
    assert main([*global_flags, "image", "bootstrap", "busybox", "-q"]) == 0
    monkeypatch.delenv(pool.POOL_ENV)  # the setting decides
    try:
        assert main([*global_flags, "vm", "pool", "--size", "1", "busybox"]) == 0
        wait_refills(paths)
        capsys.readouterr()
        assert main([*global_flags, "vm", "pool"]) == 0
        listing = capsys.readouterr().out
        assert "pool size: 1 idle VM(s) per image (setting)" in listing
        assert len(pool.entries(paths)) == 1
        assert len(qemu_pids_under(paths.runroot)) == 1
    finally:
        assert main([*global_flags, "vm", "pool", "--size", "0"]) == 0
    wait_no_qemu(paths.runroot)
    assert pool.entries(paths) == []
