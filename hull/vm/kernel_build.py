"""`hull vm kernel build`: a lean microVM guest kernel from Debian's linux-source package.

Debian's cloud kernel boots a Hull guest in about 1.7 s under TCG, most of it in
drivers and subsystems a microVM never has, and its virtio drivers are modules that
/init must load. This builds the same kernel source (apt-get install linux-source-6.1)
with `make allnoconfig` plus a fragment holding only what a Hull guest needs, every
driver built in:

- entry: 64-bit, SMP, the PVH ELF note (CONFIG_PVH, under HYPERVISOR_GUEST) that
  lets QEMU's -kernel start the uncompressed vmlinux directly (no decompressor, no
  bzImage real-mode setup); kvmclock (KVM_GUEST, PARAVIRT) next to the TSC;
- devices: virtio-mmio, whose devices QEMU's microvm machine declares in ACPI (and
  as virtio_mmio.device=... on the command line only with acpi=off, which Hull's
  command line does not ask for), so ACPI is in too (and PCI: without it, 6.1's
  ACPICA fails to install its default region handlers and loads no table); virtio
  blk/console/net/vsock/fs, the 8250 serial console;
- filesystems: erofs (root disks), overlayfs + tmpfs (the writable layer), ext4,
  devtmpfs, proc, sysfs, virtiofs (volumes);
- containers inside: cgroups, namespaces, seccomp, unix sockets, inet.

No PVM guest support: Linux 6.1 has none (PVM is an out-of-tree patch set for later
kernels), so on PVM hosts this kernel, like Debian's, runs under TCG.

The result lands, versioned by source package version and fragment hash, in
    <vm>/kernels-built/<version>+hull.<hash>/vmlinux, release, config, ...
in the layout of hull.vm.kernel's cache (an empty modules.order: nothing to load).
hull.vm.kernel.ensure_kernel picks the newest built kernel when one exists unless
HULL_VM_KERNEL=debian says otherwise (HULL_VM_KERNEL=<name> picks one by name).
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import re
import shutil
import struct
import subprocess
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from hull.errors import HullError
from hull.vm.kernel import GUEST_MODULES, WANTED_FILE, GuestKernel

FORMAT = 1  # bump when the build procedure changes in a way the fragment does not show
SOURCE_GLOB = "linux-source-*.tar.xz"
SOURCE_DIR = Path("/usr/src")
SELECT_ENV = "HULL_VM_KERNEL"
LOCALVERSION = "-hull"

# What a Hull guest needs, by reason. Every symbol here must come out of
# `make allnoconfig` with this value: kconfig silently drops a symbol whose
# dependencies are off, so the build checks the result (missing_symbols).
FRAGMENT: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("64-bit, several vCPUs, the timer", (
        "64BIT", "SMP", "HIGH_RES_TIMERS", "NO_HZ_IDLE", "HZ_100",
    )),
    ("PVH entry for QEMU's -kernel vmlinux; kvmclock", (
        "HYPERVISOR_GUEST", "PARAVIRT", "KVM_GUEST", "PVH",
    )),
    ("init, executables, the initramfs", (
        "BLK_DEV_INITRD", "BINFMT_ELF", "BINFMT_SCRIPT", "PRINTK", "MULTIUSER",
    )),
    ("syscalls that glibc, busybox and the agent use", (
        "FUTEX", "EPOLL", "SIGNALFD", "TIMERFD", "EVENTFD", "AIO", "POSIX_TIMERS",
        "FILE_LOCKING", "INOTIFY_USER", "FHANDLE", "SYSVIPC", "POSIX_MQUEUE",
        "MEMBARRIER", "RSEQ", "ADVISE_SYSCALLS", "PROC_SYSCTL",
    )),
    ("consoles: the agent's virtio-serial port, hvc0, the 8250 serial port, ptys", (
        "TTY", "VIRTIO_CONSOLE", "SERIAL_8250", "SERIAL_8250_CONSOLE", "UNIX98_PTYS",
    )),
    ("virtio-mmio; ACPI, where QEMU's microvm declares the devices and the power-off", (
        "VIRTIO_MENU", "VIRTIO_MMIO", "VIRTIO_MMIO_CMDLINE_DEVICES", "ACPI",
    )),
    ("PCI: without it 6.1's ACPICA cannot load any table (AE_BAD_PARAMETER)", (
        "PCI",
    )),
    ("root and scratch disks", (
        "BLOCK", "BLK_DEV", "VIRTIO_BLK",
    )),
    ("filesystems: erofs root, overlay + tmpfs writable layer, ext4, virtiofs volumes", (
        "MISC_FILESYSTEMS", "EROFS_FS", "OVERLAY_FS", "TMPFS", "SHMEM", "EXT4_FS",
        "DEVTMPFS", "PROC_FS", "SYSFS", "FUSE_FS", "VIRTIO_FS",
    )),
    ("xattrs: overlayfs keeps whiteouts and opaque dirs in the tmpfs upper's; images'", (
        "TMPFS_XATTR", "EROFS_FS_XATTR",
    )),
    ("networking: unix sockets, inet and inet6 (images listen on [::]), virtio-net, vsock", (
        "NET", "UNIX", "INET", "IPV6", "PACKET", "NETDEVICES", "NET_CORE", "VIRTIO_NET",
        "VSOCKETS", "VIRTIO_VSOCKETS",
    )),
    ("containers inside the guest: cgroups, namespaces, seccomp", (
        "CGROUPS", "MEMCG", "CGROUP_PIDS", "CGROUP_FREEZER", "CGROUP_DEVICE", "CPUSETS",
        "CGROUP_SCHED", "FAIR_GROUP_SCHED", "NAMESPACES", "UTS_NS", "IPC_NS", "PID_NS",
        "NET_NS", "USER_NS", "SECCOMP", "SECCOMP_FILTER",
    )),
)  # fmt: skip
STRINGS = {"LOCALVERSION": LOCALVERSION}


@dataclass(frozen=True)
class KernelSource:
    """Debian's kernel source tarball and the package version it came in."""

    tarball: Path
    version: str  # the Debian package version, e.g. 6.1.192-2


def config_fragment() -> str:
    """The KCONFIG_ALLCONFIG file handed to `make allnoconfig` (pure)."""
    lines = ["# Hull microVM guest: allnoconfig plus these (hull/vm/kernel_build.py)"]
    for reason, symbols in FRAGMENT:
        lines.append(f"# {reason}")
        lines.extend(f"CONFIG_{symbol}=y" for symbol in symbols)
    lines.extend(f'CONFIG_{name}="{value}"' for name, value in STRINGS.items())
    return "\n".join(lines) + "\n"


def parse_config(text: str) -> dict[str, str]:
    """A .config (or fragment) as symbol -> value; "is not set" lines say "n"."""
    values: dict[str, str] = {}
    for line in text.splitlines():
        line = line.strip()
        unset = re.fullmatch(r"# (CONFIG_\w+) is not set", line)
        if unset:
            values[unset.group(1)] = "n"
        elif line.startswith("CONFIG_") and "=" in line:
            name, _, value = line.partition("=")
            values[name] = value
    return values


def missing_symbols(fragment: str, dotconfig: str) -> list[str]:
    """What the fragment asks for that the final .config does not have (kconfig dropped it)."""
    wanted = parse_config(fragment)
    got = parse_config(dotconfig)
    return sorted(
        f"{name}={value} (got {got.get(name, 'n')})"
        for name, value in wanted.items()
        if got.get(name, "n") != value
    )


def build_name(source: KernelSource) -> str:
    """The cache entry's name: source version and what the build did with it."""
    digest = hashlib.sha256(f"{FORMAT}\n{config_fragment()}".encode()).hexdigest()[:10]
    return f"{source.version}+hull.{digest}"


def built_dir(vm_root: Path) -> Path:
    return vm_root / "kernels-built"


def has_pvh_note(elf: bytes) -> bool:
    """Whether an ELF64 kernel carries the Xen PVH entry note QEMU's -kernel looks for.

    The note is name "Xen", type XEN_ELFNOTE_PHYS32_ENTRY (18), in a PT_NOTE segment.
    """
    if elf[:4] != b"\x7fELF" or elf[4] != 2 or elf[5] != 1:  # ELF64, little-endian
        return False
    (phoff,) = struct.unpack_from("<Q", elf, 0x20)
    phentsize, phnum = struct.unpack_from("<HH", elf, 0x36)
    for index in range(phnum):
        header = phoff + index * phentsize
        (p_type,) = struct.unpack_from("<I", elf, header)
        if p_type != 4:  # PT_NOTE
            continue
        (offset,) = struct.unpack_from("<Q", elf, header + 0x08)
        (size,) = struct.unpack_from("<Q", elf, header + 0x20)
        pos, end = offset, offset + size
        while pos + 12 <= end:
            namesz, descsz, kind = struct.unpack_from("<III", elf, pos)
            name = elf[pos + 12 : pos + 12 + namesz].rstrip(b"\0")
            if name == b"Xen" and kind == 18:
                return True
            pos += 12 + _align4(namesz) + _align4(descsz)
    return False


def _align4(n: int) -> int:
    return (n + 3) & ~3


# ---------------------------------------------------------------------- cache


def built_kernels(vm_root: Path) -> list[GuestKernel]:
    """Every complete built kernel, oldest first (by modification time)."""
    base = built_dir(vm_root)
    try:
        entries = [d for d in base.iterdir() if (d / "complete").exists()]
    except OSError:
        return []
    entries.sort(key=lambda d: d.stat().st_mtime)
    return [GuestKernel(d, d.name, (d / "release").read_text().strip()) for d in entries]


def selected_built_kernel(vm_root: Path) -> GuestKernel | None:
    """The built kernel guests boot, or None for Debian's (the hook in ensure_kernel).

    HULL_VM_KERNEL: unset or "auto" picks the newest built kernel if any; "debian"
    always Debian's; any other value names a built kernel (an error if missing).
    """
    choice = os.environ.get(SELECT_ENV, "auto").strip() or "auto"
    if choice == "debian":
        return None
    if not built_dir(vm_root).is_dir():  # the common case: nothing built, one stat
        if choice == "auto":
            return None
        raise HullError(f"no built guest kernel {choice!r} (see `hull vm kernel ls`)")
    kernels = built_kernels(vm_root)
    if choice == "auto":
        return kernels[-1] if kernels else None
    for kernel in kernels:
        if kernel.version == choice:
            return kernel
    raise HullError(f"no built guest kernel {choice!r} (see `hull vm kernel ls`)")


# ---------------------------------------------------------------------- build


def find_source(directory: Path = SOURCE_DIR) -> KernelSource:
    """Debian's newest installed linux-source tarball and its package version."""
    tarballs = sorted(directory.glob(SOURCE_GLOB))
    if not tarballs:
        raise HullError(
            f"no kernel source in {directory}: install it with "
            "`apt-get install linux-source-6.1` (and flex bison bc libelf-dev gcc make)"
        )
    tarball = tarballs[-1]
    package = tarball.name.removesuffix(".tar.xz")
    try:
        version = subprocess.run(
            ["dpkg-query", "-W", "-f", "${Version}", package],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        version = ""
    return KernelSource(tarball, version or package.removeprefix("linux-source-"))


def build_kernel(
    vm_root: Path,
    jobs: int | None = None,
    progress: Callable[[str], None] = lambda _: None,
    source: KernelSource | None = None,
    force: bool = False,
) -> GuestKernel:
    """Build (or find cached) the lean guest kernel; returns it as hull.vm.kernel sees kernels.

    The work tree (about 1.3 GB unpacked) is a temporary directory beside the cache,
    removed afterwards whatever happens; one build runs at a time (a lock), and
    removes what a killed one left first.
    """
    source = source or find_source()
    name = build_name(source)
    base = built_dir(vm_root)
    target = base / name
    if (target / "complete").exists() and not force:
        progress(f"already built: {name}")
        return _kernel_at(target)
    _check_tools()
    base.mkdir(parents=True, exist_ok=True)
    fd = os.open(base / ".lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        if (target / "complete").exists() and not force:  # built meanwhile by another
            return _kernel_at(target)
        for stale in base.glob(".build-*"):
            shutil.rmtree(stale, ignore_errors=True)
        return _build(source, target, jobs, progress)
    finally:
        os.close(fd)


def _build(
    source: KernelSource, target: Path, jobs: int | None, progress: Callable[[str], None]
) -> GuestKernel:
    name = target.name
    work = Path(tempfile.mkdtemp(prefix=".build-", dir=target.parent))
    log_path = work / "build.log"
    try:
        with open(log_path, "wb") as log:
            tree = _unpack(source, work, log, progress)
            _configure(tree, log, progress)
            jobs = max(1, jobs or os.cpu_count() or 1)
            progress(f"compiling vmlinux with {jobs} job(s) (many minutes under load)")
            _make(tree, log, f"-j{jobs}", "vmlinux")
            release = _make(tree, None, "-s", "kernelrelease").strip()
        vmlinux = (tree / "vmlinux").read_bytes()
        if not has_pvh_note(vmlinux):
            raise HullError("the built vmlinux has no PVH entry note: QEMU cannot boot it")
        out = work / "kernel"
        out.mkdir()
        (out / "vmlinux").write_bytes(vmlinux)
        shutil.copyfile(tree / ".config", out / "config")
        (out / "release").write_text(release + "\n")
        (out / "modules.order").write_text("")  # everything is built in
        (out / "modules").mkdir()
        (out / WANTED_FILE).write_text(" ".join(GUEST_MODULES) + "\n")
        (out / "source").write_text(f"{source.tarball} {source.version}\n")
        (out / "complete").write_text("")
        if target.exists():
            shutil.rmtree(target)
        out.rename(target)
        progress(f"built {name} (uname -r: {release})")
        return _kernel_at(target)
    except HullError as exc:
        raise HullError(f"{exc.message}\n{_tail(log_path)}".rstrip()) from exc
    finally:
        shutil.rmtree(work, ignore_errors=True)


def remove_built(vm_root: Path, name: str) -> None:
    target = built_dir(vm_root) / name
    if not (target / "complete").exists():
        raise HullError(f"no built guest kernel {name!r} (see `hull vm kernel ls`)")
    shutil.rmtree(target)


def _kernel_at(directory: Path) -> GuestKernel:
    return GuestKernel(directory, directory.name, (directory / "release").read_text().strip())


def _check_tools() -> None:
    missing = [tool for tool in ("make", "gcc", "flex", "bison", "bc") if not shutil.which(tool)]
    if missing:
        raise HullError(
            f"building a guest kernel needs {', '.join(missing)}: "
            "apt-get install make gcc flex bison bc libelf-dev"
        )


def _unpack(
    source: KernelSource, work: Path, log: IO[bytes] | None, progress: Callable[[str], None]
) -> Path:
    progress(f"unpacking {source.tarball.name} ({source.version})")
    tree = work / "src"
    tree.mkdir()
    _run(["tar", "-xf", str(source.tarball), "-C", str(tree), "--strip-components=1"], log)
    return tree


def _configure(tree: Path, log: IO[bytes] | None, progress: Callable[[str], None]) -> None:
    progress("configuring: allnoconfig + the microVM fragment")
    fragment = config_fragment()
    (tree / "hull.fragment").write_text(fragment)
    _make(tree, log, "KCONFIG_ALLCONFIG=hull.fragment", "allnoconfig")
    missing = missing_symbols(fragment, (tree / ".config").read_text())
    if missing:
        raise HullError("kconfig dropped options the guest needs: " + ", ".join(missing))


def _make(tree: Path, log: IO[bytes] | None, *args: str) -> str:
    return _run(["make", "-C", str(tree), "ARCH=x86_64", *args], log)


def _run(cmd: list[str], log: IO[bytes] | None) -> str:
    """Run cmd; its output goes to log (or is returned when log is None)."""
    try:
        done = subprocess.run(
            cmd,
            stdin=subprocess.DEVNULL,
            stdout=log if log is not None else subprocess.PIPE,
            stderr=log if log is not None else subprocess.PIPE,
        )
    except OSError as exc:
        raise HullError(f"cannot run {cmd[0]}: {exc}") from exc
    if done.returncode != 0:
        raise HullError(f"{' '.join(cmd[:1] + cmd[3:])} failed (exit {done.returncode})")
    return (done.stdout or b"").decode(errors="replace") if log is None else ""


def _tail(log_path: Path, lines: int = 15) -> str:
    try:
        text = log_path.read_text(errors="replace")
    except OSError:
        return ""
    return "\n".join(text.splitlines()[-lines:])
