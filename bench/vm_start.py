"""microVM start, side by side: cold boot, warm restore, the pool, a container; idle memory.

    sudo .venv/bin/python bench/vm_start.py [--runs 9] [--root DIR] [--containers 20]
                                            [--density-count 1000]

Run to exit of `true`, one fresh process per run, medians over --runs, all in one run:
- `hull run --rm --network none --isolation=vm busybox true`:
  - cold boot (HULL_VM_WARM=0);
  - warm restore from the template (the default; HULL_VM_POOL=0);
  - pooled (HULL_VM_POOL=1): before each run the bench waits for the pool's refill,
    so every run takes an idle, warmed-up VM (the hits are counted); then the same
    back to back with HULL_VM_POOL=2, where the refill competes with the runs;
- `hull run --rm --network none --isolation=container busybox true`;
- without the engine: run_in_vm (interpreter, imports, QEMU, guest, teardown) warm and
  pooled, and `hull-runtime run` of the same rootfs (the container runtime alone).
The main figures use Debian's cloud kernel (HULL_VM_KERNEL=debian). If the root
(--root) holds a kernel made by `hull vm kernel build`, it is timed too (cold boot
and warm restore).

Idle memory ("PSS+kernel", as bench/density.py counts a container): the summed Pss
(/proc/PID/smaps_rollup) of the processes plus the growth of the kernel's
unreclaimable memory (SUnreclaim, PageTables, Percpu, VmallocUsed; density.py's
settled /proc/meminfo snapshots), divided by their number, for:
- 6 pooled VMs (restored, warmed up by `true`, idle) and then 4 more restored ones
  beside them (each ran `true`, then all idle 3 s); 2 cold-booted ones (Pss only);
- --containers detached containers (`hull run -d --network none busybox sleep`: the
  sleep and its hull-shim), density.py's Hull side at a smaller count (or
  --container-mib: density.py's own PSS+kernel figure, e.g. from an idle host).
On a busy host the kernel part is noisy: the +- after it is how far the kernel
fields moved within the two sampling windows, per member.
How many idle microVMs fit where density.py fits its containers: density.py runs
--density-count containers, which take density_count x (container PSS+kernel); that
memory divided by a pooled microVM's PSS+kernel is the number of microVMs.

Everything lives in a temp root (or --root, to keep the kernel cache) and is removed
at the end; no VM, container or refill process is left.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench import density  # noqa: E402
from bench.peers import own_cgroup_parent  # noqa: E402
from hull.oci.runtime_spec import default_spec  # noqa: E402
from hull.paths import HullPaths  # noqa: E402
from hull.vm import pool  # noqa: E402
from hull.vm.kernel_build import SELECT_ENV, selected_built_kernel  # noqa: E402
from hull.vm.microvm import MicroVm, VmShape, guest_assets, pick_accel, root_disk  # noqa: E402
from hull.vm.protocol import RunRequest  # noqa: E402
from hull.vm.template import ensure_template, restore_vm  # noqa: E402
from tests.fixtures.busybox import build_busybox_rootfs  # noqa: E402

TARGET_WARM_S = 0.3
TARGET_PSS_MIB = 48.0
MEMORY_MIB = 128
REFILL_TIMEOUT = 30.0

VM_ONE_SHOT = """
import sys
from pathlib import Path
from hull.paths import HullPaths
from hull.vm.sandbox import run_in_vm
paths = HullPaths(Path(sys.argv[1]), Path(sys.argv[2]))
sys.exit(run_in_vm(Path(sys.argv[3]), ["true"], [], paths=paths, accel=sys.argv[4],
                   chain_id=sys.argv[5], warm=sys.argv[6] == "warm"))
"""


def timed(cmd: list[str], env: dict[str, str] | None = None) -> float:
    start = time.perf_counter()
    done = subprocess.run(cmd, capture_output=True, text=True, env=env)
    elapsed = time.perf_counter() - start
    if done.returncode != 0:
        raise SystemExit(f"{cmd[:6]} failed ({done.returncode}): {done.stderr.strip()}")
    return elapsed


def env_with(**values: str) -> dict[str, str]:
    return {**os.environ, **values}


def hull_cli() -> str:
    return shutil.which("hull") or str(Path(sys.executable).parent / "hull")


def hull_run(paths: HullPaths, isolation: str) -> list[str]:
    cmd = [hull_cli(), "--root", str(paths.root), "--runroot", str(paths.runroot)]
    return cmd + ["run", "--rm", "--network", "none", f"--isolation={isolation}", "busybox", "true"]


def bench_hull_run(
    paths: HullPaths,
    isolation: str,
    runs: int,
    env: dict[str, str] | None = None,
    before_each: Callable[[], object] | None = None,
) -> list[float]:
    cmd = hull_run(paths, isolation)
    timed(cmd, env)  # warm-up (first use of the image's disk; fills the pool)
    results = []
    for _ in range(runs):
        if before_each is not None:
            before_each()
        results.append(timed(cmd, env))
    return results


class PoolWatch:
    """Waits for the pool to be refilled before a run, and counts the runs it served."""

    def __init__(self, paths: HullPaths) -> None:
        self.paths = paths
        self.offered: set[int] = set()

    def wait_ready(self) -> None:
        deadline = time.monotonic() + REFILL_TIMEOUT
        while not pool.entries(self.paths) or refills_running(self.paths):
            if time.monotonic() > deadline:
                raise SystemExit("the VM pool was not refilled in time: see refill.log")
            time.sleep(0.02)
        self.offered.update(e.qemu_pid for e in pool.entries(self.paths))

    def note(self) -> None:
        """No waiting (back to back): only remember which VMs were on offer."""
        self.offered.update(e.qemu_pid for e in pool.entries(self.paths))

    def served(self) -> int:
        """Pooled VMs that were offered and have ended: each served one run."""
        return sum(1 for pid in self.offered if pool._start_time(pid) < 0)


def refills_running(paths: HullPaths) -> list[int]:
    return [pid for pid in density.processes_under(paths.runroot) if is_refill(pid)]


def is_refill(pid: int) -> bool:
    try:
        return b"refill_main" in Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return False


def stop_pool(paths: HullPaths) -> None:
    density.wait_gone(lambda: refills_running(paths), "refill processes", timeout=60)
    pool.reconcile(paths, size=0)


def bench_run_in_vm(
    paths: HullPaths, rootfs: Path, accel: str, chain_id: str, mode: str, runs: int, env=None
) -> list[float]:
    cmd = [sys.executable, "-c", VM_ONE_SHOT, str(paths.root), str(paths.runroot)]
    return [timed([*cmd, str(rootfs), accel, chain_id, mode], env) for _ in range(runs)]


def bench_container(work: Path, rootfs: Path, runs: int) -> list[float]:
    state = work / "runtime-state"
    runtime = shutil.which("hull-runtime") or str(Path(sys.executable).parent / "hull-runtime")
    results = []
    for _ in range(runs):
        bundle = work / f"bundle-{uuid.uuid4().hex[:8]}"
        bundle.mkdir()
        config = default_spec()
        config["root"] = {"path": str(rootfs), "readonly": True}
        config["process"]["terminal"] = False
        config["process"]["args"] = ["true"]
        parent = os.environ.get("HULL_CGROUP_PARENT", "hull-bench")  # own_cgroup_parent
        config["linux"]["cgroupsPath"] = f"/{parent}/{uuid.uuid4().hex[:12]}"
        (bundle / "config.json").write_text(json.dumps(config))
        cid = uuid.uuid4().hex[:12]
        results.append(timed([runtime, "--root", str(state), "run", "--bundle", str(bundle), cid]))
        shutil.rmtree(bundle)
    return results


# ---------------------------------------------------------------------- memory


class Memory:
    """PSS+kernel per member of a group started between two settled snapshots."""

    def __init__(self, count: int, pss_kib: int, before, after) -> None:
        self.count = count
        self.pss_mib = pss_kib / 1024 / count
        self.kernel_mib = (
            (density.kernel_used(after.fields) - density.kernel_used(before.fields)) / 1024 / count
        )
        self.noise_mib = (before.kernel_spread + after.kernel_spread) / 1024 / count

    @property
    def total_mib(self) -> float:
        return self.pss_mib + self.kernel_mib

    def line(self, name: str) -> str:
        return (
            f"  {name:<40} PSS {self.pss_mib:6.1f} + kernel {self.kernel_mib:5.2f}"
            f" (+-{self.noise_mib:.2f}) = {self.total_mib:6.1f} MiB"
        )


def qemu_pss_kib(vms: list[MicroVm]) -> int:
    return sum(density.pss_kib(vm.qemu.pid)[0] for vm in vms)


def idle_after_true(vms: list[MicroVm]) -> None:
    with open(os.devnull, "wb") as sink:
        for vm in vms:
            vm.run(RunRequest(["true"]), sink, sink)
    time.sleep(3)


def bench_vm_memory(
    paths: HullPaths, rootfs: Path, accel: str, chain_id: str, pooled: int, restored: int
) -> dict[str, Memory]:
    """Pooled VMs, then restored ones beside them; each group between two snapshots."""
    assets = guest_assets(paths)
    shape = VmShape(accel, MEMORY_MIB, 1)
    template = ensure_template(paths, assets, shape)
    figures: dict[str, Memory] = {}
    vms: list[MicroVm] = []
    os.environ[pool.POOL_ENV] = str(pooled)
    try:
        before = density.settled_snapshot()
        pool.refill(paths, shape, chain_id)
        entries = pool.entries(paths)
        time.sleep(3)
        middle = density.settled_snapshot()
        pss = sum(density.pss_kib(e.qemu_pid)[0] for e in entries)
        figures[f"{len(entries)} pooled (warmed up, idle)"] = Memory(
            len(entries), pss, before, middle
        )
        for _ in range(restored):
            vms.append(restore_vm(paths, assets, shape, template, rootfs, chain_id))
        idle_after_true(vms)
        after = density.settled_snapshot()
        figures[f"{restored} restored beside them (ran true)"] = Memory(
            restored, qemu_pss_kib(vms), middle, after
        )
    finally:
        for vm in vms:
            vm.close()
        pool.reconcile(paths, size=0)
        os.environ[pool.POOL_ENV] = "0"
    return figures


def bench_cold_pss(paths: HullPaths, rootfs: Path, accel: str, count: int) -> float:
    assets = guest_assets(paths)
    vms: list[MicroVm] = []
    try:
        for _ in range(count):
            vms.append(MicroVm.boot(paths, assets, rootfs, accel=accel, memory_mib=MEMORY_MIB))
        idle_after_true(vms)
        return qemu_pss_kib(vms) / 1024 / count
    finally:
        for vm in vms:
            vm.close()


class _NoCgroup:
    """density.HullSide runs `hull` from an engine cgroup; here from ours."""

    def wrap(self, argv: list[str]) -> list[str]:
        return list(argv)


def bench_container_memory(work: Path, count: int) -> Memory:
    side = density.HullSide(work / "density")
    side.prepare()
    try:
        before = density.settled_snapshot()
        side.start(count, 2, _NoCgroup())  # type: ignore[arg-type]
        after = density.settled_snapshot()
        pss = sum(
            density.pss_kib(pid)[0] for pids in side.user_processes(count).values() for pid in pids
        )
        return Memory(count, pss, before, after)
    finally:
        side.teardown(2)


# ---------------------------------------------------------------------- report


def show(name: str, values: list[float], extra: str = "") -> float:
    median = statistics.median(values)
    print(
        f"  {name:<50} median {median:6.3f} s  (min {min(values):.3f}, max {max(values):.3f},"
        f" n={len(values)}){extra}",
        flush=True,
    )
    return median


def verdict(met: bool) -> str:
    return "met" if met else "NOT met"


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--runs", type=int, default=9)
    parser.add_argument("--root", help="a Hull root to keep the guest kernel cache in")
    parser.add_argument("--containers", type=int, default=100, help="for the memory figure")
    parser.add_argument(
        "--container-mib",
        type=float,
        help="PSS+kernel per container from a density.py run (default: measure here)",
    )
    parser.add_argument("--density-count", type=int, default=1000, help="density.py's --count")
    args = parser.parse_args()
    own_cgroup_parent()  # the host's own /hull cgroup parent is never touched

    work = Path(tempfile.mkdtemp(prefix="hull-vm-bench-", dir="/tmp"))
    root = Path(args.root) if args.root else work / "root"
    paths = HullPaths(root, work / "run")
    lean = None
    try:
        paths.runroot.mkdir(parents=True)
        os.environ.pop(SELECT_ENV, None)
        lean = selected_built_kernel(paths.vm)
        os.environ[SELECT_ENV] = "debian"
        os.environ[pool.POOL_ENV] = "0"
        os.environ.pop("HULL_VM_WARM", None)
        rootfs = build_busybox_rootfs(work / "rootfs")
        assets = guest_assets(paths)
        accel = pick_accel(paths, assets)
        started = time.perf_counter()
        ensure_template(paths, assets, VmShape(accel, MEMORY_MIB, 1))
        built = time.perf_counter() - started
        print(f"guest kernel {assets.kernel.release} ({assets.kernel.version}), accel {accel}")
        print(f"warm-start template ({MEMORY_MIB} MiB, 1 vCPU): ready in {built:.2f} s")
        subprocess.run(
            [hull_cli(), "--root", str(root), "--runroot", str(paths.runroot)]
            + ["image", "bootstrap", "busybox"],
            check=True,
            capture_output=True,
        )
        runs = args.runs
        print("run to exit of `true` (a fresh process per run):", flush=True)
        show(
            "hull run --isolation=vm, cold boot",
            bench_hull_run(paths, "vm", 3, env_with(HULL_VM_WARM="0")),
        )
        warm = show("hull run --isolation=vm, warm restore", bench_hull_run(paths, "vm", runs))
        watch = PoolWatch(paths)
        pooled = show(
            "hull run --isolation=vm, pooled (refilled)",
            bench_hull_run(paths, "vm", runs, env_with(HULL_VM_POOL="1"), watch.wait_ready),
        )
        print(f"    pooled VMs that served a run: {watch.served()} of {runs}")
        stop_pool(paths)
        back_to_back = PoolWatch(paths)
        env = env_with(HULL_VM_POOL="2")
        timed(hull_run(paths, "vm"), env)  # fills the pool
        back_to_back.wait_ready()
        show(
            "hull run --isolation=vm, pool of 2, back to back",
            bench_hull_run(paths, "vm", runs, env, back_to_back.note),
        )
        print(f"    pooled VMs that served a run: {back_to_back.served()} of {runs + 1}")
        stop_pool(paths)
        show("hull run --isolation=container", bench_hull_run(paths, "container", runs))
        chain_id = "sha256:" + hashlib.sha256(str(rootfs).encode()).hexdigest()
        show(
            "run_in_vm, warm restore", bench_run_in_vm(paths, rootfs, accel, chain_id, "warm", runs)
        )
        in_vm_watch = PoolWatch(paths)
        pool_env = env_with(HULL_VM_POOL="1")
        bench_run_in_vm(paths, rootfs, accel, chain_id, "warm", 1, pool_env)  # fills the pool
        in_vm = []
        for _ in range(runs):
            in_vm_watch.wait_ready()
            in_vm += bench_run_in_vm(paths, rootfs, accel, chain_id, "warm", 1, pool_env)
        show("run_in_vm, pooled", in_vm)
        stop_pool(paths)
        show("hull-runtime run (container runtime alone)", bench_container(work, rootfs, runs))
        if lean is not None:
            os.environ[SELECT_ENV] = lean.version
            print(f"lean kernel {lean.release} ({lean.version}) from `hull vm kernel build`:")
            lean_assets = guest_assets(paths)
            ensure_template(paths, lean_assets, VmShape(accel, MEMORY_MIB, 1))
            show(
                "hull run --isolation=vm, cold boot (lean)",
                bench_hull_run(paths, "vm", 3, env_with(HULL_VM_WARM="0")),
            )
            show("hull run --isolation=vm, warm restore (lean)", bench_hull_run(paths, "vm", runs))
            os.environ[SELECT_ENV] = "debian"

        print(f"idle memory, {MEMORY_MIB} MiB microVMs (PSS+kernel per member):", flush=True)
        disk_dir = work / "disk-scratch"
        disk_dir.mkdir()
        root_disk(paths, rootfs, chain_id, disk_dir)
        vm_memory = bench_vm_memory(paths, rootfs, accel, chain_id, pooled=6, restored=4)
        for name, memory in vm_memory.items():
            print(memory.line(name))
        cold_pss = bench_cold_pss(paths, rootfs, accel, 2)
        print(f"  {'2 cold-booted (ran true)':<40} PSS {cold_pss:6.1f} MiB")
        if args.container_mib is None:
            containers = bench_container_memory(work, args.containers)
            print(containers.line(f"{args.containers} detached containers (sleep + shim)"))
            container_mib = containers.total_mib
        else:
            container_mib = args.container_mib
            print(f"  {'a container (density.py, --container-mib)':<40} {container_mib:.2f} MiB")
        pooled_memory = next(iter(vm_memory.values()))
        budget = args.density_count * container_mib
        fit = budget / pooled_memory.total_mib
        print(
            f"  density.py's {args.density_count} containers take {budget:.0f} MiB here:"
            f" room for {fit:.0f} idle pooled microVMs"
            f" ({container_mib:.2f} / {pooled_memory.total_mib:.1f} MiB ="
            f" {container_mib / pooled_memory.total_mib:.3f} microVM per container)"
        )
        print("targets:")
        print(
            f"  warm `hull run --rm --isolation=vm busybox true` <= {TARGET_WARM_S} s:"
            f" {verdict(warm <= TARGET_WARM_S)} ({warm:.3f} s); with the pool:"
            f" {verdict(pooled <= TARGET_WARM_S)} ({pooled:.3f} s)"
        )
        restored = list(vm_memory.values())[1]
        print(
            f"  PSS per idle restored microVM <= {TARGET_PSS_MIB:.0f} MiB:"
            f" {verdict(restored.pss_mib <= TARGET_PSS_MIB)} ({restored.pss_mib:.1f} MiB;"
            f" pooled {pooled_memory.pss_mib:.1f} MiB)"
        )
    finally:
        try:
            stop_pool(paths)
        finally:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
