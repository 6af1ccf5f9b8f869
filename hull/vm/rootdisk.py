"""A VM's root disk: an image's root filesystem as a read-only erofs image.

mkfs.erofs needs no loop device or mount and takes milliseconds for small images.
The guest mounts it read-only under a tmpfs-backed overlay, so one disk can serve
every VM of the same image: disks named by an image's chain ID are kept in the
cache; others are made per run and removed with it.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import tempfile
from pathlib import Path

from hull.errors import ConfigError, HullError

MKFS_EROFS = "mkfs.erofs"
_CHAIN_ID = re.compile(r"^(sha256:)?[0-9a-f]{64}$")


def disks_dir(vm_root: str | Path) -> Path:
    return Path(vm_root) / "disks"


def root_disk_path(vm_root: str | Path, chain_id: str) -> Path:
    """Where the shared root disk of an image's layer chain lives (built or not)."""
    return disks_dir(vm_root) / f"{chain_id.removeprefix('sha256:')}.erofs"


def make_erofs(rootfs: Path, target: Path) -> Path:
    """Write rootfs as an erofs image at target (atomically: temp file, then rename)."""
    if not rootfs.is_dir():
        raise ConfigError(f"the VM's root filesystem {rootfs} is not a directory")
    mkfs = shutil.which(MKFS_EROFS)
    if mkfs is None:
        raise HullError(
            "mkfs.erofs is not installed: VM root disks need it (apt-get install erofs-utils)"
        )
    fd, tmp = tempfile.mkstemp(prefix=".erofs-", dir=target.parent)
    os.close(fd)
    try:
        # -T0: a fixed build time, so the same tree gives the same disk.
        done = subprocess.run(
            [mkfs, "--quiet", "-T0", tmp, str(rootfs)], capture_output=True, text=True
        )
        if done.returncode != 0:
            raise HullError(
                f"mkfs.erofs failed for {rootfs}: {(done.stderr or done.stdout).strip()}"
            )
        os.replace(tmp, target)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return target


def cached_root_disk(vm_root: Path, rootfs: Path, chain_id: str) -> Path:
    """The shared disk for an image's layer chain, made on first use."""
    if not _CHAIN_ID.match(chain_id):
        raise ConfigError(f"not a chain ID: {chain_id!r}")
    target = root_disk_path(vm_root, chain_id)
    target.parent.mkdir(parents=True, exist_ok=True)
    if target.exists():
        return target
    return make_erofs(rootfs, target)


def pad_disk(disk: Path, size: int) -> bool:
    """Grow disk (sparsely) to size bytes; False if it is already bigger.

    A restored VM keeps the disk size its template saw, so every root disk that goes
    behind the template's placeholder is padded to the same size. erofs never reads
    past its own end, and the holes cost no space.
    """
    current = disk.stat().st_size
    if current > size:
        return False
    if current < size:
        os.truncate(disk, size)
    return True


def make_placeholder(target: Path, size: int) -> Path:
    """An all-zero sparse disk of size bytes (what a template boots with)."""
    with open(target, "wb") as out:
        out.truncate(size)
    return target
