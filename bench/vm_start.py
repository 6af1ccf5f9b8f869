"""microVM start: warm restore vs cold boot vs a container, run to exit of `true`; idle PSS.

    sudo .venv/bin/python bench/vm_start.py [--runs 9] [--root DIR]

Run to exit of `true`, one fresh process per run, medians over --runs:
- hull run: `hull run --rm --isolation=vm busybox true` (warm, the default), the same
  with HULL_VM_WARM=0 (cold boot), and `--isolation=container`, on the busybox image
  made by `hull image bootstrap busybox`: the issue's target figure;
- run_in_vm: `python -c run_in_vm(rootfs, ["true"])` warm and cold (interpreter,
  imports, QEMU, guest, teardown; no engine), next to `hull-runtime run` of the same
  rootfs (the container runtime alone).
Guest assets and the warm-start template are made before timing.
Idle PSS: 4 VMs restored side by side (each ran `true`, then idles 3 s) against 2
cold-booted ones; the sum of Pss from /proc/PID/smaps_rollup of their QEMU processes
divided by their number. Everything lives in a temp root (or --root, to keep the
kernel cache) and is removed at the end.
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
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from hull.oci.runtime_spec import default_spec  # noqa: E402
from hull.paths import HullPaths  # noqa: E402
from hull.vm.microvm import MicroVm, VmShape, guest_assets, pick_accel  # noqa: E402
from hull.vm.protocol import RunRequest  # noqa: E402
from hull.vm.template import ensure_template, restore_vm  # noqa: E402
from tests.fixtures.busybox import build_busybox_rootfs  # noqa: E402

TARGET_WARM_S = 0.3
TARGET_PSS_MIB = 48.0
MEMORY_MIB = 128

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


def bench_run_in_vm(
    paths: HullPaths, rootfs: Path, accel: str, mode: str, runs: int
) -> list[float]:
    chain_id = "sha256:" + hashlib.sha256(str(rootfs).encode()).hexdigest()
    cmd = [sys.executable, "-c", VM_ONE_SHOT, str(paths.root), str(paths.runroot)]
    return [timed([*cmd, str(rootfs), accel, chain_id, mode]) for _ in range(runs)]


def hull_cli() -> str:
    return shutil.which("hull") or str(Path(sys.executable).parent / "hull")


def bench_hull_run(
    paths: HullPaths, isolation: str, runs: int, env: dict[str, str] | None = None
) -> list[float]:
    cmd = [hull_cli(), "--root", str(paths.root), "--runroot", str(paths.runroot)]
    cmd += ["run", "--rm", "--network", "none", f"--isolation={isolation}", "busybox", "true"]
    timed(cmd, env)  # warm-up (first use of the image's disk)
    return [timed(cmd, env) for _ in range(runs)]


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
        config["linux"]["cgroupsPath"] = f"/hull-bench/{uuid.uuid4().hex[:12]}"
        (bundle / "config.json").write_text(json.dumps(config))
        cid = uuid.uuid4().hex[:12]
        results.append(timed([runtime, "--root", str(state), "run", "--bundle", str(bundle), cid]))
        shutil.rmtree(bundle)
    return results


def pss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
        if line.startswith("Pss:"):
            return int(line.split()[1])
    return 0


def idle_pss_per_vm(vms: list[MicroVm]) -> float:
    """MiB: every VM ran `true`, then all idle 3 s; total Pss of their QEMUs / count."""
    with open(os.devnull, "wb") as sink:
        for vm in vms:
            vm.run(RunRequest(["true"]), sink, sink)
    time.sleep(3)
    return sum(pss_kib(vm.qemu.pid) for vm in vms) / 1024 / len(vms)


def bench_pss(paths: HullPaths, rootfs: Path, accel: str, warm: int, cold: int) -> dict[str, float]:
    assets = guest_assets(paths)
    shape = VmShape(accel, MEMORY_MIB, 1)
    template = ensure_template(paths, assets, shape)
    figures = {}
    vms: list[MicroVm] = []
    try:
        for _ in range(warm):
            vms.append(restore_vm(paths, assets, shape, template, rootfs))
        figures[f"{warm} restored"] = idle_pss_per_vm(vms)
    finally:
        for vm in vms:
            vm.close()
    vms = []
    try:
        for _ in range(cold):
            vms.append(MicroVm.boot(paths, assets, rootfs, accel=accel, memory_mib=MEMORY_MIB))
        figures[f"{cold} cold-booted"] = idle_pss_per_vm(vms)
    finally:
        for vm in vms:
            vm.close()
    return figures


def show(name: str, values: list[float]) -> float:
    median = statistics.median(values)
    print(
        f"  {name:<44} median {median:6.3f} s  (min {min(values):.3f}, max {max(values):.3f},"
        f" n={len(values)})"
    )
    return median


def verdict(met: bool) -> str:
    return "met" if met else "NOT met"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=9)
    parser.add_argument("--root", help="a Hull root to keep the guest kernel cache in")
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="hull-vm-bench-", dir="/tmp"))
    try:
        root = Path(args.root) if args.root else work / "root"
        paths = HullPaths(root, work / "run")
        paths.runroot.mkdir(parents=True)
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
        cold_env = {**os.environ, "HULL_VM_WARM": "0"}
        print("run to exit of `true` (a fresh process per run):")
        warm = show("hull run --rm --isolation=vm (warm)", bench_hull_run(paths, "vm", args.runs))
        show("hull run --rm --isolation=vm (cold boot)", bench_hull_run(paths, "vm", 3, cold_env))
        show("hull run --rm --isolation=container", bench_hull_run(paths, "container", args.runs))
        show("run_in_vm warm restore", bench_run_in_vm(paths, rootfs, accel, "warm", args.runs))
        show("run_in_vm cold boot", bench_run_in_vm(paths, rootfs, accel, "cold", 3))
        show("container (hull-runtime run)", bench_container(work, rootfs, args.runs))
        print(f"idle microVMs, {MEMORY_MIB} MiB each (Pss of QEMU, per VM):")
        pss = bench_pss(paths, rootfs, accel, warm=4, cold=2)
        for name, value in pss.items():
            print(f"  {name:<44} {value:6.1f} MiB")
        print("targets:")
        print(
            f"  warm `hull run --rm --isolation=vm busybox true` <= {TARGET_WARM_S} s:"
            f" {verdict(warm <= TARGET_WARM_S)} ({warm:.3f} s)"
        )
        restored = pss["4 restored"]
        print(
            f"  PSS per idle restored microVM <= {TARGET_PSS_MIB:.0f} MiB:"
            f" {verdict(restored <= TARGET_PSS_MIB)} ({restored:.1f} MiB)"
        )
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
