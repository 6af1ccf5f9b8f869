"""Warm start: boot a microVM once to an idle agent, save it, restore it for every run.

A template is two files under <vm>/templates/<key>/:
- ram: the guest's memory, written through a shared file mapping while the template
  VM ran; each restore maps it privately (copy-on-write), so restored VMs share the
  pages they only read;
- state: QEMU's device state (tens of KB), saved with x-ignore-shared so the RAM is
  not copied into it.
The template boots with an all-zero placeholder root disk that the agent never
mounts (it mounts /dev/vda at the first request); a restore puts the image's disk
behind the same device. microVMs have no hot-plug, so that is how a template serves
any image.

The key is a hash of everything the saved state depends on: the full QEMU command
line (kernel and initramfs, whose cache paths carry their version and content
hash; memory, vCPUs, accelerator, TSC frequency, devices) and the QEMU build. A
change to any of them names a new template; templates of other kernels, agents or
QEMU builds are removed when a new one is made.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from hull.errors import HullError
from hull.paths import HullPaths
from hull.vm.microvm import (
    ROOT_DISK_SIZE,
    GuestAssets,
    MicroVm,
    VmShape,
    new_run_dir,
    root_disk,
    vm_config,
)
from hull.vm.qemu import Nic, RamFile, qemu_command, qemu_identity
from hull.vm.rootdisk import make_placeholder

FORMAT = 1  # bump when the template layout or the save procedure changes
FAILURE_MEMORY = 600.0  # seconds a failed build keeps runs on cold boot before a retry


@dataclass(frozen=True)
class Template:
    """A saved idle VM, ready to restore."""

    directory: Path

    @property
    def key(self) -> str:
        return self.directory.name

    @property
    def ram(self) -> Path:
        return self.directory / "ram"

    @property
    def state(self) -> Path:
        return self.directory / "state"


def templates_dir(vm_root: str | Path) -> Path:
    return Path(vm_root) / "templates"


def assets_id(assets: GuestAssets) -> str:
    """What every template of this host shares: kernel, initramfs, QEMU build."""
    text = f"{assets.kernel.vmlinux}|{assets.initrd}|{qemu_identity()}"
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def template_key(assets: GuestAssets, shape: VmShape) -> str:
    """The template's name: changes whenever a saved state would not restore."""
    fixed = Path("/hull-template")
    config = vm_config(assets, shape, fixed, fixed / "disk", RamFile(fixed / "ram", shared=False))
    material = json.dumps(
        {
            "format": FORMAT,
            "argv": qemu_command(config, "qemu"),
            "qemu": qemu_identity(),
            "disk": ROOT_DISK_SIZE,
        },
        sort_keys=True,
    )
    return hashlib.sha256(material.encode()).hexdigest()[:24]


def find_template(paths: HullPaths, assets: GuestAssets, shape: VmShape) -> Template | None:
    template = Template(templates_dir(paths.vm) / template_key(assets, shape))
    return template if (template.directory / "complete").exists() else None


def ensure_template(
    paths: HullPaths,
    assets: GuestAssets,
    shape: VmShape,
    notice: Callable[[str], None] | None = None,
) -> Template:
    """The template for shape, built (once, under a lock) when missing."""
    key = template_key(assets, shape)
    base = templates_dir(paths.vm)
    template = Template(base / key)
    if (template.directory / "complete").exists():
        return template
    base.mkdir(parents=True, exist_ok=True)
    failed = base / f"{key}.failed"
    if _recent(failed):
        raise HullError(f"cannot save a microVM here: {failed.read_text().strip()}")
    with _locked(base / f"{key}.lock"):
        if (template.directory / "complete").exists():  # another process built it
            return template
        if notice is not None:
            notice("building a warm-start template for microVMs of this shape (once)")
        _remove_stale(base, assets_id(assets))
        try:
            _build(paths, assets, shape, template)
        except HullError as exc:
            failed.write_text(exc.message + "\n")
            raise
    return template


def restore_vm(
    paths: HullPaths,
    assets: GuestAssets,
    shape: VmShape,
    template: Template,
    rootfs: Path,
    chain_id: str | None = None,
    run_dir: Path | None = None,
    nic: Nic | None = None,
) -> MicroVm:
    """A new VM restored from template with rootfs as its root disk (in run_dir if given)
    and nic's backend behind the template's network card (its placeholder if None)."""
    run_dir = new_run_dir(paths, run_dir)
    try:
        disk = root_disk(paths, rootfs, chain_id, run_dir)
    except BaseException:
        shutil.rmtree(run_dir, ignore_errors=True)
        raise
    config = vm_config(
        assets, shape, run_dir, disk, RamFile(template.ram, shared=False), incoming=True, nic=nic
    )
    return MicroVm.restore(run_dir, config, template.state)


def remove_templates(vm_root: Path) -> None:
    """Drop every template (they are rebuilt on demand)."""
    shutil.rmtree(templates_dir(vm_root), ignore_errors=True)


def _build(paths: HullPaths, assets: GuestAssets, shape: VmShape, template: Template) -> None:
    """Boot a VM on a shared RAM file, save it idle, and publish the directory."""
    base = template.directory.parent
    work = Path(tempfile.mkdtemp(prefix=".build-", dir=base))
    try:
        placeholder = make_placeholder(work / "placeholder.img", ROOT_DISK_SIZE)
        run_dir = new_run_dir(paths)
        config = vm_config(assets, shape, run_dir, placeholder, RamFile(work / "ram", shared=True))
        with MicroVm.start(run_dir, config) as vm:
            vm.save(work / "state")
        placeholder.unlink()
        (work / "meta.json").write_text(
            json.dumps({"assets": assets_id(assets), "shape": shape.__dict__}) + "\n"
        )
        (work / "complete").write_text("")
        os.rename(work, template.directory)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _remove_stale(base: Path, current_assets: str) -> None:
    """Templates of another kernel, agent or QEMU can never be used again."""
    for entry in base.iterdir():
        if entry.suffix == ".failed":
            entry.unlink(missing_ok=True)
            continue
        if entry.name.startswith(".build-") and not _recent(entry):  # a crashed build
            shutil.rmtree(entry, ignore_errors=True)
            continue
        if not entry.is_dir() or entry.name.startswith("."):
            continue
        try:
            meta = json.loads((entry / "meta.json").read_text())
        except (OSError, ValueError):
            meta = {}
        if meta.get("assets") != current_assets:
            shutil.rmtree(entry, ignore_errors=True)
            with contextlib.suppress(OSError):
                (base / f"{entry.name}.lock").unlink()


def _recent(marker: Path) -> bool:
    try:
        return time.time() - marker.stat().st_mtime < FAILURE_MEMORY
    except OSError:
        return False


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)
