"""Guest assets without a VM: cpio archives, vmlinux extraction, module order, initramfs."""

from __future__ import annotations

import gzip
import lzma
import stat
from pathlib import Path

import pytest

from hull.errors import HullError
from hull.vm.cpio import CpioWriter
from hull.vm.initramfs import INIT_SCRIPT, build_initramfs
from hull.vm.kernel import extract_vmlinux, module_depends, module_load_order

ELF = b"\x7fELF" + bytes(range(256)) * 64


def read_newc(data: bytes) -> dict[str, tuple[int, bytes, tuple[int, int]]]:
    """A minimal newc reader: name -> (mode, data, (rdev major, minor))."""
    entries = {}
    pos = 0
    while True:
        assert data[pos : pos + 6] == b"070701"
        fields = [int(data[pos + 6 + i * 8 : pos + 14 + i * 8], 16) for i in range(13)]
        mode, size, namesize = fields[1], fields[6], fields[11]
        name_start = pos + 110
        name = data[name_start : name_start + namesize - 1].decode()
        body = name_start + namesize
        body += -body % 4
        content = data[body : body + size]
        pos = body + size
        pos += -pos % 4
        if name == "TRAILER!!!":
            return entries
        entries[name] = (mode, content, (fields[9], fields[10]))


def test_cpio_round_trips_files_dirs_links_and_devices() -> None:
    archive = CpioWriter()
    archive.add_dir("bin")
    archive.add_file("bin/tool", b"#!/bin/sh\necho hi\n", 0o755)
    archive.add_symlink("bin/sh", "busybox")
    archive.add_char_device("console", 5, 1)
    data = archive.render()
    assert len(data) % 512 == 0
    entries = read_newc(data)
    assert stat.S_ISDIR(entries["bin"][0])
    mode, content, _ = entries["bin/tool"]
    assert stat.S_ISREG(mode) and stat.S_IMODE(mode) == 0o755
    assert content == b"#!/bin/sh\necho hi\n"
    assert stat.S_ISLNK(entries["bin/sh"][0]) and entries["bin/sh"][1] == b"busybox"
    assert stat.S_ISCHR(entries["console"][0]) and entries["console"][2] == (5, 1)


def test_cpio_is_reproducible_and_rejects_repeats() -> None:
    def build() -> bytes:
        archive = CpioWriter()
        archive.add_dir("etc")
        archive.add_file("etc/x", b"1")
        return archive.render()

    assert build() == build()
    archive = CpioWriter()
    archive.add_dir("etc")
    with pytest.raises(ValueError):
        archive.add_dir("/etc/")


@pytest.mark.parametrize(
    "compress", [gzip.compress, lambda data: lzma.compress(data, format=lzma.FORMAT_XZ)]
)
def test_extract_vmlinux_finds_the_compressed_elf_after_a_header(compress) -> None:
    image = b"MZ setup code \x1f\x8b not a stream" + compress(ELF) + b"trailing junk" * 10
    assert extract_vmlinux(image) == ELF


def test_extract_vmlinux_passes_an_elf_through_and_rejects_garbage() -> None:
    assert extract_vmlinux(ELF) == ELF
    with pytest.raises(HullError):
        extract_vmlinux(b"MZ" + b"\0" * 4096)


def test_module_depends_reads_the_modinfo_section() -> None:
    ko = b"\x7fELF...\0license=GPL\0depends=virtio,virtio-ring\0vermagic=6.1\0"
    assert module_depends(ko) == ["virtio", "virtio_ring"]
    assert module_depends(b"\0depends=\0name=x\0") == []


def test_module_load_order_puts_dependencies_first_once() -> None:
    depends = {
        "virtio_mmio": ["virtio", "virtio_ring"],
        "virtio": ["virtio_ring"],
        "virtio_ring": [],
        "virtio_blk": ["virtio", "virtio_ring"],
        "erofs": ["libcrc32c"],
        "libcrc32c": [],
    }
    order = module_load_order(("virtio_mmio", "virtio_blk", "erofs"), depends)
    assert order == ["virtio_ring", "virtio", "virtio_mmio", "virtio_blk", "libcrc32c", "erofs"]
    with pytest.raises(HullError):
        module_load_order(("a",), {"a": ["b"], "b": ["a"]})


def test_initramfs_holds_init_agent_busybox_and_modules_in_order(tmp_path: Path) -> None:
    modules = []
    for name in ("virtio_ring", "virtio", "erofs"):
        path = tmp_path / f"{name}.ko"
        path.write_bytes(name.encode())
        modules.append(path)
    entries = read_newc(build_initramfs(b"BUSYBOX", b"AGENT", modules))
    assert entries["init"][1] == INIT_SCRIPT.encode()
    assert stat.S_IMODE(entries["init"][0]) == 0o755
    assert entries["hull-agent"][1] == b"AGENT"
    assert entries["bin/busybox"][1] == b"BUSYBOX"
    assert entries["modules.order"][1] == b"virtio_ring\nvirtio\nerofs\n"
    assert entries["lib/modules/erofs.ko"][1] == b"erofs"
    assert entries["dev/console"][2] == (5, 1)
    assert INIT_SCRIPT.startswith("#!/bin/busybox sh\n") and "exec /hull-agent" in INIT_SCRIPT
