"""`hull vm`: microVM assets. `kernel build|ls|rm` (a lean guest kernel), `pool` (idle VMs).

hull vm kernel build [--jobs N] [--force]   build from Debian's linux-source package
hull vm kernel ls                           built kernels and Debian's; which one boots
hull vm kernel rm NAME                      forget a built kernel
hull vm pool                                the setting and the pooled VMs
hull vm pool --size N [IMAGE...]            keep N idle VMs per image (0: off, stop all);
                                            IMAGEs are pooled now, others on first use
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

from hull.cli import output
from hull.errors import HullError
from hull.paths import HullPaths

# ---------------------------------------------------------------------- kernel


def kernel_args(p: argparse.ArgumentParser) -> None:
    actions = p.add_subparsers(dest="action", metavar="build|ls|rm")
    actions.required = True
    build = actions.add_parser("build", help="build a lean guest kernel (many minutes)")
    build.add_argument("-j", "--jobs", type=int, help="parallel compile jobs (default: all CPUs)")
    build.add_argument("--force", action="store_true", help="build even if one is cached")
    actions.add_parser("ls", help="list guest kernels")
    remove = actions.add_parser("rm", help="remove a built guest kernel")
    remove.add_argument("name")


def kernel(args: argparse.Namespace) -> int:
    from hull.vm import kernel_build

    paths: HullPaths = args.paths
    if args.action == "build":
        if args.jobs is not None and args.jobs < 1:
            raise HullError("--jobs must be at least 1")
        built = kernel_build.build_kernel(
            Path(Path(paths.vm)), jobs=args.jobs, progress=_say, force=args.force
        )
        print(built.version)
        return 0
    if args.action == "rm":
        kernel_build.remove_built(Path(Path(paths.vm)), args.name)
        return 0
    _kernel_ls(paths)
    return 0


def _kernel_ls(paths: HullPaths) -> None:
    from hull.vm.kernel import cached_kernel
    from hull.vm.kernel_build import built_kernels, selected_built_kernel

    try:
        selected = selected_built_kernel(Path(paths.vm))
    except HullError:
        selected = None
    rows = []
    for built in built_kernels(Path(paths.vm)):
        in_use = selected is not None and selected.directory == built.directory
        rows.append(["built", built.version, built.release, _size(built.vmlinux), _mark(in_use)])
    debian = cached_kernel(Path(paths.vm))
    if debian is not None:
        rows.append(
            ["debian", debian.version, debian.release, _size(debian.vmlinux), _mark(not selected)]
        )
    output.print_table(["KIND", "NAME", "RELEASE", "VMLINUX", "IN USE"], rows)


def _mark(flag: bool) -> str:
    return "*" if flag else ""


def _size(path: Path) -> str:
    try:
        return output.human_size(path.stat().st_size)
    except OSError:
        return "?"


# ---------------------------------------------------------------------- pool


def pool_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--size", type=int, help="idle VMs to keep per image (0: none, stop all)")
    p.add_argument("-m", "--memory", type=int, default=128, help="guest MiB of pooled VMs")
    p.add_argument("--cpus", type=int, default=1, help="vCPUs of pooled VMs")
    p.add_argument("images", nargs="*", help="images to pool now (others: on first use)")


def pool(args: argparse.Namespace) -> int:
    from hull.vm import pool as vm_pool

    paths: HullPaths = args.paths
    if args.size is not None:
        vm_pool.set_pool_size(paths, args.size)
    else:
        vm_pool.sweep(paths)  # dead and stale entries only: the size applies at --size
    if args.images:
        if vm_pool.pool_size(paths) == 0:
            raise HullError("the VM pool is off: give it a --size first")
        for name in args.images:
            _prefill(paths, name, args.memory, args.cpus)
    _pool_ls(paths)
    return 0


def _pool_ls(paths: HullPaths) -> None:
    from hull.vm import pool as vm_pool

    size = vm_pool.pool_size(paths)
    source = "HULL_VM_POOL" if os.environ.get(vm_pool.POOL_ENV, "").strip() else "setting"
    busy = "; refilling" if vm_pool.refilling(paths) else ""
    print(f"pool size: {size} idle VM(s) per image ({source}){'' if size else ': off'}{busy}")
    rows = []
    now = time.time()
    for entry in vm_pool.entries(paths):
        accel, memory, cpus = entry.record.get("shape", ["?", "?", "?"])
        chain = entry.key.partition("-")[2]
        age = output.human_duration(now - float(entry.record.get("created", now)))
        rows.append([chain[:12], f"{accel} {memory}M {cpus}cpu", str(entry.qemu_pid), age])
    if rows:
        output.print_table(["IMAGE CHAIN", "SHAPE", "QEMU PID", "IDLE FOR"], rows)


def _prefill(paths: HullPaths, name: str, memory_mib: int, cpus: int) -> None:
    """Make the image's root disk and the template now; a refill starts the VMs."""
    from hull.engine.images import ImageService
    from hull.oci.image import chain_ids
    from hull.vm import pool as vm_pool
    from hull.vm.microvm import VmShape, guest_assets, pick_accel
    from hull.vm.template import ensure_template

    with ImageService(paths) as images:
        image = images.resolve(name)
        if not image.diff_ids:
            raise HullError(f"image {name} has no layers to boot")
        chain = chain_ids(image.diff_ids)[-1]
        if not vm_pool.image_disk(paths, chain).exists():
            lowers = images.layer_store.ensure(
                [layer.descriptor() for layer in image.layers], image.diff_ids
            )
            _make_disk(paths, lowers, chain)
    assets = guest_assets(paths)
    shape = VmShape(pick_accel(paths, assets, _say), memory_mib, cpus)
    ensure_template(paths, assets, shape, _say)
    vm_pool.start_refill(paths, shape, chain, wait_for=0)
    _say(f"pooling {name}: VMs start in the background (see `hull vm pool`)")


def _make_disk(paths: HullPaths, lowers: list[Path], chain: str) -> None:
    """The image's erofs root disk, from its layers mounted read-only for a moment."""
    from hull.image.snapshots import mount_overlay, unmount
    from hull.vm.microvm import ROOT_DISK_SIZE
    from hull.vm.rootdisk import cached_root_disk, pad_disk

    target = Path(tempfile.mkdtemp(prefix="hull-vm-disk-"))
    try:
        mount_overlay(lowers, None, None, target, readonly=True)
        try:
            pad_disk(cached_root_disk(Path(Path(paths.vm)), target, chain), ROOT_DISK_SIZE)
        finally:
            unmount(target)
    finally:
        os.rmdir(target)


def _say(message: str) -> None:
    sys.stderr.write(f"hull: {message}\n")
    sys.stderr.flush()
