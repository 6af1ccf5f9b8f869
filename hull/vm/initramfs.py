"""The guest's initramfs: busybox, the guest kernel's modules, /init and the agent.

/init is a short busybox script: it loads the modules in order (the cloud kernel has
its virtio drivers as modules) and hands PID 1 to the agent, which mounts the image's
read-only erofs root disk (/dev/vda) under a tmpfs-backed overlay when the first
request comes (so a warm-start template never touches its placeholder disk) and runs
each workload chrooted into that root. The archive is cached under the hash of everything
in it, so the same inputs always give the same file (and the same VM templates).
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from pathlib import Path

from hull.vm.cpio import CpioWriter
from hull.vm.kernel import GuestKernel

BUSYBOX = Path("/bin/busybox")
INIT_SCRIPT = """#!/bin/busybox sh
# Hull guest init: API filesystems and modules, then the agent as PID 1.
B=/bin/busybox
$B mount -t devtmpfs -o nosuid devtmpfs /dev
$B mount -t proc -o nosuid,nodev,noexec proc /proc
$B mount -t sysfs -o nosuid,nodev,noexec sysfs /sys
fail() {
    echo "hull-init: $*" >/dev/kmsg
    $B poweroff -f
}
for m in $(cat /modules.order); do
    $B insmod /lib/modules/$m.ko || fail "cannot load module $m"
done
[ -e /dev/hvc0 ] && exec </dev/null >/dev/hvc0 2>&1
exec /hull-agent
"""


def initramfs_for(vm_root: Path, kernel: GuestKernel, agent: Path) -> Path:
    """The cached initramfs for this kernel and agent, built on first use."""
    modules = kernel.modules
    inputs = hashlib.sha256(INIT_SCRIPT.encode())
    for part in (BUSYBOX, agent, *modules):
        inputs.update(part.name.encode() + b"\0" + hashlib.sha256(part.read_bytes()).digest())
    target = vm_root / "initramfs" / f"{inputs.hexdigest()[:24]}.cpio"
    if target.exists():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    data = build_initramfs(BUSYBOX.read_bytes(), agent.read_bytes(), modules)
    fd, tmp = tempfile.mkstemp(prefix=".initramfs-", dir=target.parent)
    try:
        with os.fdopen(fd, "wb") as out:
            out.write(data)
        os.replace(tmp, target)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return target


def build_initramfs(busybox: bytes, agent: bytes, modules: list[Path]) -> bytes:
    """The archive's bytes: pure apart from reading the module files."""
    archive = CpioWriter()
    for d in ("bin", "dev", "proc", "sys", "mnt", "lib", "lib/modules"):
        archive.add_dir(d)
    # The kernel opens /dev/console for PID 1 before devtmpfs is mounted.
    archive.add_char_device("dev/console", 5, 1)
    archive.add_file("bin/busybox", busybox, 0o755)
    archive.add_symlink("bin/sh", "busybox")
    archive.add_file("init", INIT_SCRIPT.encode(), 0o755)
    archive.add_file("hull-agent", agent, 0o755)
    archive.add_file("modules.order", "".join(f"{m.stem}\n" for m in modules).encode())
    for module in modules:
        archive.add_file(f"lib/modules/{module.name}", module.read_bytes())
    return archive.render()
