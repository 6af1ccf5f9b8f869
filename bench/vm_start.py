"""microVM start: run-to-exit of `true` in a cold-booted VM next to hull-runtime, and PSS.

    sudo .venv/bin/python bench/vm_start.py [--runs 5] [--idle 3] [--root DIR]

- vm cold: a fresh `python -c run_in_vm(rootfs, ["true"])` per run, so interpreter
  start, imports, the per-run erofs disk, QEMU start, kernel boot, the agent's run and
  power-off are all inside the figure (guest assets are cached before timing).
- vm phases: in-process MicroVm.boot (to the agent's "ready"), run, power-off.
- container: `hull-runtime run --bundle B` of the same busybox rootfs, running `true`.
- idle PSS: N VMs booted side by side, left idle 3 s, Pss of each QEMU process from
  /proc/PID/smaps_rollup.
Medians over --runs. Everything lives in a temp root (or --root, to keep the kernel
cache between runs) and is removed at the end.
"""

from __future__ import annotations

import argparse
import json
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
from hull.vm.protocol import RunRequest  # noqa: E402
from hull.vm.sandbox import MicroVm, guest_assets, pick_accel  # noqa: E402
from tests.fixtures.busybox import build_busybox_rootfs  # noqa: E402

VM_ONE_SHOT = """
import sys
from pathlib import Path
from hull.paths import HullPaths
from hull.vm.sandbox import run_in_vm
paths = HullPaths(Path(sys.argv[1]), Path(sys.argv[2]))
sys.exit(run_in_vm(Path(sys.argv[3]), ["true"], [], paths=paths, accel=sys.argv[4]))
"""


def timed(cmd: list[str]) -> float:
    start = time.perf_counter()
    done = subprocess.run(cmd, capture_output=True, text=True)
    elapsed = time.perf_counter() - start
    if done.returncode != 0:
        raise SystemExit(f"{cmd[:4]} failed ({done.returncode}): {done.stderr.strip()}")
    return elapsed


def bench_vm_cold(paths: HullPaths, rootfs: Path, accel: str, runs: int) -> list[float]:
    cmd = [sys.executable, "-c", VM_ONE_SHOT, str(paths.root), str(paths.runroot)]
    return [timed([*cmd, str(rootfs), accel]) for _ in range(runs)]


def bench_vm_phases(
    paths: HullPaths, rootfs: Path, accel: str, runs: int
) -> dict[str, list[float]]:
    assets = guest_assets(paths)
    phases: dict[str, list[float]] = {"boot to ready": [], "run true": [], "power-off": []}
    sink = open("/dev/null", "wb")  # noqa: SIM115 - closed below
    try:
        for _ in range(runs):
            t0 = time.perf_counter()
            with MicroVm.boot(paths, assets, rootfs, accel=accel) as vm:
                t1 = time.perf_counter()
                vm.run(RunRequest(["true"]), sink, sink)
                t2 = time.perf_counter()
                vm.poweroff()
                t3 = time.perf_counter()
            phases["boot to ready"].append(t1 - t0)
            phases["run true"].append(t2 - t1)
            phases["power-off"].append(t3 - t2)
    finally:
        sink.close()
    return phases


def bench_container(work: Path, rootfs: Path, runs: int) -> list[float]:
    state = work / "runtime-state"
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
        runtime = shutil.which("hull-runtime") or str(Path(sys.executable).parent / "hull-runtime")
        cid = uuid.uuid4().hex[:12]
        results.append(timed([runtime, "--root", str(state), "run", "--bundle", str(bundle), cid]))
        shutil.rmtree(bundle)
    return results


def pss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
        if line.startswith("Pss:"):
            return int(line.split()[1])
    return 0


def bench_idle_pss(paths: HullPaths, rootfs: Path, accel: str, count: int) -> list[float]:
    assets = guest_assets(paths)
    vms: list[MicroVm] = []
    try:
        for _ in range(count):
            vms.append(MicroVm.boot(paths, assets, rootfs, accel=accel))
        time.sleep(3)
        return [pss_kib(vm.qemu.pid) / 1024 for vm in vms]
    finally:
        for vm in vms:
            vm.close()


def show(name: str, values: list[float], unit: str = "s") -> None:
    fmt = ".3f" if unit == "s" else ".1f"
    print(
        f"  {name:<28} median {statistics.median(values):{fmt}} {unit}"
        f"  (min {min(values):{fmt}}, max {max(values):{fmt}}, n={len(values)})"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--idle", type=int, default=3, help="idle VMs for the PSS figure")
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
        print(f"guest kernel {assets.kernel.release} ({assets.kernel.version}), accel {accel}")
        print("run-to-exit of `true`:")
        show("vm cold boot (process)", bench_vm_cold(paths, rootfs, accel, args.runs))
        for name, values in bench_vm_phases(paths, rootfs, accel, args.runs).items():
            show(f"  vm {name}", values)
        show("container (hull-runtime run)", bench_container(work, rootfs, args.runs))
        if args.idle > 0:
            print(f"idle microVMs ({args.idle} side by side, 128 MiB each):")
            show("PSS per QEMU", bench_idle_pss(paths, rootfs, accel, args.idle), "MiB")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
