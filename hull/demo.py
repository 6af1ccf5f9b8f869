"""The README's main job: get an image, run it isolated, show what isolation means.

    python -m hull.demo [--keep]

Steps, each printed as it happens:
1. bootstrap a busybox OCI image from Debian's busybox-static (no registry needed);
2. unpack its layers and mount them with overlayfs as a container rootfs;
3. run it with hull-runtime (namespaces, cgroups, seccomp-ready), show what the
   process sees, and time a start;
4. run the same rootfs in a QEMU microVM with a kernel of its own (KVM when it
   can boot the guest, else TCG), and print the comparison.
Everything lives in a temporary Hull root that is removed at the end.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from hull.paths import HullPaths

SCRIPT = (
    "echo \"  pid inside:  $$ (host pids are invisible: $(ls /proc | grep -c '^[0-9]') visible)\";"
    'echo "  hostname:    $(hostname)";'
    'echo "  kernel:      $(uname -r) (shared with the host)";'
    'echo "  network:     $(ls /sys/class/net | tr "\\n" " ")";'
    'echo "  memory max:  $(cat /sys/fs/cgroup/memory/memory.limit_in_bytes 2>/dev/null'
    ' || cat /sys/fs/cgroup/memory.max)";'
    'echo "  caps:        $(grep CapEff /proc/self/status | cut -f2)"'
)


def runtime_cmd() -> list[str]:
    launcher = Path(sys.executable).parent / "hull-runtime"
    if launcher.exists():
        return [str(launcher)]
    return [sys.executable, "-m", "hull.runtime.cli"]


def _remove_empty_cgroup_parent(name: str) -> None:
    """rmdir removes a cgroup only when it is empty: a leak would stay visible."""
    root = Path("/sys/fs/cgroup")
    for hierarchy in root.iterdir() if root.is_dir() else []:
        try:
            (hierarchy / name).rmdir()
        except OSError:
            pass


def _run_vm(paths: HullPaths, rootfs: Path) -> str:
    """Boot the rootfs in a microVM twice (assets cached by the first); a table cell."""
    import io

    from hull.errors import HullError
    from hull.vm.sandbox import run_in_vm

    out = io.BytesIO()
    try:
        run_in_vm(rootfs, ["uname", "-r"], ["PATH=/bin:/usr/bin"], stdout=out, paths=paths)
        release = out.getvalue().decode().strip()
        print(f"   guest kernel: {release}")
        t0 = time.monotonic()
        run_in_vm(rootfs, ["true"], ["PATH=/bin:/usr/bin"], paths=paths)
        boot = time.monotonic() - t0
    except HullError as err:
        print(f"   skipped: {err.message}")
        return f"{'unavailable':>26}  ({err.message})"
    return f"{boot * 1000:>23.1f} ms  own: {release} (cold boot)"


def main() -> int:
    parser = argparse.ArgumentParser(description="Hull demo: an image run as a container")
    parser.add_argument("--keep", action="store_true", help="keep the temporary Hull root")
    opts = parser.parse_args()
    if os.geteuid() != 0:
        print("hull demo: run as root (namespaces, cgroups and mounts need it)", file=sys.stderr)
        return 1
    from hull.engine.images import ImageService
    from hull.image.snapshots import mount_overlay, unmount
    from hull.oci.runtime_spec import default_spec

    tmp = Path(tempfile.mkdtemp(prefix="hull-demo-"))
    paths = HullPaths(str(tmp / "lib"), str(tmp / "run"))
    rootfs = tmp / "bundle" / "rootfs"
    mounted = False
    try:
        print("1. image: bootstrapping busybox from Debian's busybox-static")
        t0 = time.monotonic()
        with ImageService(paths) as images:
            record = images.bootstrap("busybox")
            layers = images.layer_store.ensure(
                [layer.descriptor() for layer in record.layers], record.diff_ids
            )
        print(f"   {record.short_id}  {len(layers)} layer(s)  {time.monotonic() - t0:.2f}s")

        print("2. rootfs: overlayfs over the image's layers")
        for d in ("upper", "work"):
            (tmp / d).mkdir()
        rootfs.mkdir(parents=True)
        mount_overlay(layers, tmp / "upper", tmp / "work", rootfs)
        mounted = True

        config = default_spec()
        config["process"]["terminal"] = False
        config["process"]["args"] = ["sh", "-c", SCRIPT]
        config["root"]["readonly"] = False
        config["linux"]["cgroupsPath"] = f"/hull-demo/{os.getpid()}"
        config["linux"]["resources"]["memory"] = {"limit": 64 << 20}
        (tmp / "bundle" / "config.json").write_text(json.dumps(config))

        print("3. container: hull-runtime run (pid, uts, ipc, net, mount, cgroup namespaces)")
        cmd = runtime_cmd() + ["--root", str(paths.runtime_state), "run", "--bundle"]
        t0 = time.monotonic()
        out = subprocess.run(cmd + [str(tmp / "bundle"), "demo"], text=True, capture_output=True)
        elapsed = time.monotonic() - t0
        print(out.stdout.rstrip())
        if out.returncode != 0:
            print(out.stderr.rstrip(), file=sys.stderr)
            return out.returncode
        print(f"   host kernel: {os.uname().release}")
        times = []
        for i in range(5):
            (tmp / "bundle" / "config.json").write_text(
                json.dumps({**config, "process": {**config["process"], "args": ["true"]}})
            )
            t0 = time.monotonic()
            subprocess.run(cmd + [str(tmp / "bundle"), f"demo-{i}"], check=True)
            times.append(time.monotonic() - t0)
        median = sorted(times)[len(times) // 2]
        print(f"   first run with output: {elapsed * 1000:.1f} ms")

        print("4. microVM: the same rootfs, a kernel of its own (QEMU -M microvm)")
        vm_line = _run_vm(paths, rootfs)
        print("5. comparison")
        print(f"   {'isolation':<12}{'start to exit of `true`':>26}  kernel")
        print(f"   {'container':<12}{median * 1000:>23.1f} ms  shared: {os.uname().release}")
        print(f"   {'vm':<12}{vm_line}")
        return 0
    finally:
        if mounted:
            unmount(rootfs)
        if not opts.keep:
            subprocess.run(["rm", "-rf", "--one-file-system", str(tmp)], check=False)
        _remove_empty_cgroup_parent("hull-demo")


if __name__ == "__main__":
    sys.exit(main())
