"""The guest kernel: Debian's cloud kernel, fetched with apt and unpacked into Hull's cache.

Debian ships the kernel as an LZ4-compressed bzImage whose virtio drivers are plain
modules (and no modules.dep). QEMU boots fastest from the uncompressed vmlinux (its
PVH entry skips the decompressor), so the vmlinux is cut out of the bzImage here,
the way the kernel's scripts/extract-vmlinux does, and the few modules a Hull guest
needs are copied next to it in load order.

Cache layout, one directory per Debian package version:
    <vm>/kernels/<version>/vmlinux, release, modules/<name>.ko, modules.order
"""

from __future__ import annotations

import lzma
import os
import re
import shutil
import subprocess
import tempfile
import zlib
from dataclasses import dataclass
from pathlib import Path

from hull.errors import HullError

META_PACKAGE = "linux-image-cloud-amd64"

# What /init loads, before dependencies are added: the virtio-mmio transport of
# QEMU's microvm machine, the root disk, the agent's serial port, the root's filesystems,
# the network card.
GUEST_MODULES = (
    "virtio_mmio",
    "virtio_blk",
    "virtio_console",
    "erofs",
    "overlay",
    "virtiofs",  # volumes: host directories shared through virtiofsd
    "virtio_net",  # --network: eth0 on a host tap (brings net_failover and failover)
)
WANTED_FILE = "modules.wanted"  # GUEST_MODULES as cached: a kernel cached with others is refetched

# Compressed-stream magics inside a bzImage, as scripts/extract-vmlinux tries them.
_LZ4_LEGACY = b"\x02\x21\x4c\x18"
_GZIP = b"\x1f\x8b\x08"
_XZ = b"\xfd7zXZ\x00"
_ZSTD = b"\x28\xb5\x2f\xfd"


@dataclass(frozen=True)
class GuestKernel:
    """An unpacked guest kernel in the cache."""

    directory: Path
    version: str  # the Debian package version, e.g. 6.1.192-2
    release: str  # what `uname -r` says in the guest, e.g. 6.1.0-56-cloud-amd64

    @property
    def vmlinux(self) -> Path:
        return self.directory / "vmlinux"

    @property
    def modules(self) -> list[Path]:
        """The module files in the order they must be loaded."""
        order = (self.directory / "modules.order").read_text().split()
        return [self.directory / "modules" / f"{name}.ko" for name in order]


def kernels_dir(vm_root: Path) -> Path:
    return vm_root / "kernels"


def cached_kernel(vm_root: Path) -> GuestKernel | None:
    """The newest complete kernel in the cache, without asking apt (no network, no cost)."""
    base = kernels_dir(vm_root)
    if not base.is_dir():
        return None
    found = [d for d in base.iterdir() if _usable(d)]
    if not found:
        return None
    newest = max(found, key=lambda d: _version_key(d.name))
    return GuestKernel(newest, newest.name, (newest / "release").read_text().strip())


def _version_key(version: str) -> list[tuple[int, str]]:
    return [(int(p), "") if p.isdigit() else (-1, p) for p in re.split(r"[.\-+~]", version)]


def ensure_kernel(vm_root: Path, refresh: bool = False) -> GuestKernel:
    """The guest kernel, fetched with apt on first use (or when refresh asks for the newest).

    A lean kernel made by `hull vm kernel build` wins when there is one (unless
    HULL_VM_KERNEL=debian); see hull.vm.kernel_build.
    """
    from hull.vm.kernel_build import selected_built_kernel

    built = selected_built_kernel(vm_root)
    if built is not None:
        return built
    if not refresh:
        kernel = cached_kernel(vm_root)
        if kernel is not None:
            return kernel
    package, version = _resolve_package()
    target = kernels_dir(vm_root) / version
    if _usable(target):
        return GuestKernel(target, version, (target / "release").read_text().strip())
    return _fetch_kernel(vm_root, package, version)


def _usable(directory: Path) -> bool:
    """A complete kernel directory holding the modules this Hull loads."""
    try:
        wanted = (directory / WANTED_FILE).read_text().split()
    except OSError:
        return False
    return (directory / "complete").exists() and wanted == list(GUEST_MODULES)


def _resolve_package() -> tuple[str, str]:
    """The versioned image package that the cloud meta-package points at."""
    try:
        out = subprocess.run(
            ["apt-cache", "show", "--no-all-versions", META_PACKAGE],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
    except (OSError, subprocess.CalledProcessError) as exc:
        raise HullError(
            f"cannot find the guest kernel package {META_PACKAGE} with apt-cache "
            f"(run apt-get update?): {exc}"
        ) from exc
    version = re.search(r"^Version: (\S+)", out, re.M)
    depends = re.search(r"^Depends: (linux-image-\S+)", out, re.M)
    if not version or not depends:
        raise HullError(f"apt-cache show {META_PACKAGE} names no kernel image package")
    return depends.group(1), version.group(1)


def _fetch_kernel(vm_root: Path, package: str, version: str) -> GuestKernel:
    base = kernels_dir(vm_root)
    base.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=".fetch-", dir=base))
    try:
        os.chmod(work, 0o755)  # apt drops to the _apt user to download
        deb = _apt_download(package, work)
        unpacked = work / "deb"
        subprocess.run(["dpkg-deb", "-x", str(deb), str(unpacked)], check=True)
        out = work / "kernel"
        (out / "modules").mkdir(parents=True)
        vmlinuz = _only(sorted((unpacked / "boot").glob("vmlinuz-*")), "vmlinuz")
        release = vmlinuz.name.removeprefix("vmlinuz-")
        (out / "vmlinux").write_bytes(extract_vmlinux(vmlinuz.read_bytes()))
        modules_root = unpacked / "lib" / "modules" / release
        order = _install_modules(modules_root, out / "modules")
        (out / "modules.order").write_text("\n".join(order) + "\n")
        (out / "release").write_text(release + "\n")
        (out / "package").write_text(f"{package} {version}\n")
        (out / WANTED_FILE).write_text(" ".join(GUEST_MODULES) + "\n")
        (out / "complete").write_text("")
        target = base / version
        if target.exists() and not _usable(target):  # cached with other modules
            shutil.rmtree(target, ignore_errors=True)
        try:
            out.rename(target)
        except OSError:
            if not _usable(target):  # lost a race to another fetch: fine
                raise
        return GuestKernel(target, version, release)
    except (OSError, subprocess.CalledProcessError) as exc:
        raise HullError(f"cannot prepare the guest kernel {package} {version}: {exc}") from exc
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _apt_download(package: str, into: Path) -> Path:
    done = subprocess.run(
        ["apt-get", "download", "-q", package], cwd=into, capture_output=True, text=True
    )
    debs = list(into.glob("*.deb"))
    if done.returncode != 0 or not debs:
        raise HullError(f"apt-get download {package} failed: {done.stderr.strip()}")
    return debs[0]


def _only(items: list[Path], what: str) -> Path:
    if len(items) != 1:
        raise HullError(f"expected one {what} in the kernel package, found {len(items)}")
    return items[0]


def extract_vmlinux(image: bytes) -> bytes:
    """The uncompressed ELF kernel inside a bzImage (scripts/extract-vmlinux, in Python)."""
    if image[:4] == b"\x7fELF":
        return image
    for magic, decompress in (
        (_LZ4_LEGACY, _unlz4),
        (_GZIP, _gunzip),
        (_XZ, _unxz),
        (_ZSTD, _unzstd),
    ):
        start = image.find(magic)
        while start >= 0:
            data = decompress(image[start:])
            if data[:4] == b"\x7fELF":
                return data
            start = image.find(magic, start + 1)
    raise HullError("no compressed ELF kernel found in the kernel image")


def _unlz4(data: bytes) -> bytes:
    # lz4(1) stops with an error at the bzImage's trailing bytes but has written the
    # whole kernel by then, as extract-vmlinux relies on too.
    return _pipe(["lz4", "-dc"], data)


def _unzstd(data: bytes) -> bytes:
    return _pipe(["zstd", "-dc"], data)


def _pipe(cmd: list[str], data: bytes) -> bytes:
    try:
        return subprocess.run(cmd, input=data, capture_output=True).stdout
    except OSError as exc:
        raise HullError(f"{cmd[0]} is needed to unpack the guest kernel: {exc}") from exc


def _gunzip(data: bytes) -> bytes:
    try:
        return zlib.decompressobj(wbits=31).decompress(data)  # stops at the stream's end
    except zlib.error:
        return b""


def _unxz(data: bytes) -> bytes:
    try:
        return lzma.LZMADecompressor().decompress(data)
    except lzma.LZMAError:
        return b""


def module_depends(ko: bytes) -> list[str]:
    """The `depends=` list of a module's .modinfo section, names normalised to underscores."""
    match = re.search(rb"(?:^|\0)depends=([^\0]*)\0", ko)
    if not match or not match.group(1):
        return []
    return [name.replace("-", "_") for name in match.group(1).decode().split(",") if name]


def module_load_order(wanted: tuple[str, ...], depends: dict[str, list[str]]) -> list[str]:
    """Each wanted module after its dependencies, each once (what modprobe would do)."""
    order: list[str] = []
    visiting: set[str] = set()

    def visit(name: str) -> None:
        if name in order:
            return
        if name in visiting:
            raise HullError(f"kernel modules depend on each other in a cycle at {name}")
        visiting.add(name)
        for dep in depends.get(name, []):
            visit(dep)
        visiting.discard(name)
        order.append(name)

    for name in wanted:
        visit(name)
    return order


def _install_modules(modules_root: Path, dest: Path) -> list[str]:
    builtin = {
        Path(line).name.removesuffix(".ko").replace("-", "_")
        for line in (modules_root / "modules.builtin").read_text().split()
    }
    files = {p.name[: -len(".ko")].replace("-", "_"): p for p in modules_root.rglob("*.ko")}
    depends: dict[str, list[str]] = {}
    pending = [m for m in GUEST_MODULES if m not in builtin]
    while pending:
        name = pending.pop()
        if name in depends:
            continue
        if name not in files:
            raise HullError(f"the guest kernel has no module {name}")
        depends[name] = [d for d in module_depends(files[name].read_bytes()) if d not in builtin]
        pending.extend(depends[name])
    order = module_load_order(tuple(m for m in GUEST_MODULES if m not in builtin), depends)
    for name in order:
        shutil.copyfile(files[name], dest / f"{name}.ko")
    return order
