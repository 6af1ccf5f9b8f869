"""`hull vm kernel build` without a build: the config fragment, its check, the cache."""

from __future__ import annotations

import os
import struct
import time
from pathlib import Path

import pytest

from hull.errors import HullError
from hull.vm import kernel_build
from hull.vm.kernel_build import (
    KernelSource,
    build_name,
    config_fragment,
    find_source,
    has_pvh_note,
    missing_symbols,
    parse_config,
    selected_built_kernel,
)

# What a Hull guest cannot boot or work without (see the module docstring).
ESSENTIAL = (
    "64BIT",
    "PVH",
    "KVM_GUEST",
    "BLK_DEV_INITRD",
    "VIRTIO_MMIO",
    "VIRTIO_MMIO_CMDLINE_DEVICES",
    "VIRTIO_BLK",
    "VIRTIO_CONSOLE",
    "VIRTIO_NET",
    "VIRTIO_VSOCKETS",
    "VIRTIO_FS",
    "SERIAL_8250_CONSOLE",
    "EROFS_FS",
    "OVERLAY_FS",
    "TMPFS_XATTR",  # overlayfs's whiteouts in the tmpfs upper layer
    "EXT4_FS",
    "TMPFS",
    "DEVTMPFS",
    "PROC_FS",
    "SYSFS",
    "UNIX",
    "INET",
    "CGROUPS",
    "NAMESPACES",
    "SECCOMP_FILTER",
    "UNIX98_PTYS",
    "MULTIUSER",
)


def test_fragment_builds_in_everything_a_guest_needs() -> None:
    values = parse_config(config_fragment())
    for symbol in ESSENTIAL:
        assert values.get(f"CONFIG_{symbol}") == "y", symbol
    assert values["CONFIG_LOCALVERSION"] == '"-hull"'
    # Nothing is a module: the lean kernel has no modules for /init to load.
    assert all(value != "m" for value in values.values())


def test_fragment_lines_are_kconfig_assignments() -> None:
    for line in config_fragment().splitlines():
        assert line.startswith("# ") or (line.startswith("CONFIG_") and "=" in line), line


def test_parse_config_reads_values_and_unset_lines() -> None:
    text = 'CONFIG_A=y\n# CONFIG_B is not set\nCONFIG_C="x y"\n\n# a comment\nCONFIG_D=64\n'
    assert parse_config(text) == {
        "CONFIG_A": "y",
        "CONFIG_B": "n",
        "CONFIG_C": '"x y"',
        "CONFIG_D": "64",
    }


def test_missing_symbols_names_what_kconfig_dropped() -> None:
    fragment = 'CONFIG_PVH=y\nCONFIG_EROFS_FS=y\nCONFIG_LOCALVERSION="-hull"\n'
    dotconfig = 'CONFIG_PVH=y\n# CONFIG_EROFS_FS is not set\nCONFIG_LOCALVERSION="-hull"\n'
    assert missing_symbols(fragment, dotconfig) == ["CONFIG_EROFS_FS=y (got n)"]
    assert missing_symbols(fragment, dotconfig.replace("# CONFIG_EROFS_FS is not set", "")) == [
        "CONFIG_EROFS_FS=y (got n)"
    ]
    full = 'CONFIG_PVH=y\nCONFIG_EROFS_FS=y\nCONFIG_LOCALVERSION="-hull"\n'
    assert missing_symbols(fragment, full) == []


def test_build_name_carries_the_source_version_and_changes_with_the_fragment(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    source = KernelSource(Path("/usr/src/linux-source-6.1.tar.xz"), "6.1.192-2")
    name = build_name(source)
    assert name.startswith("6.1.192-2+hull.")
    assert build_name(source) == name
    assert build_name(KernelSource(source.tarball, "6.1.193-1")) != name
    monkeypatch.setattr(kernel_build, "STRINGS", {"LOCALVERSION": "-other"})
    assert build_name(source) != name


def _elf_with_notes(notes: list[tuple[bytes, int]]) -> bytes:
    """A minimal ELF64 with one PT_NOTE segment holding notes (name, type)."""
    body = b""
    for name, kind in notes:
        name_z = name + b"\0"
        desc = b"\0" * 8
        body += struct.pack("<III", len(name_z), len(desc), kind)
        body += name_z + b"\0" * (-len(name_z) % 4) + desc
    phoff, phentsize = 64, 56
    offset = phoff + phentsize
    header = bytearray(64)
    header[:6] = b"\x7fELF\x02\x01"
    struct.pack_into("<Q", header, 0x20, phoff)
    struct.pack_into("<HH", header, 0x36, phentsize, 1)
    program = bytearray(phentsize)
    struct.pack_into("<I", program, 0, 4)  # PT_NOTE
    struct.pack_into("<Q", program, 0x08, offset)
    struct.pack_into("<Q", program, 0x20, len(body))
    return bytes(header) + bytes(program) + body


def test_pvh_note_is_found_only_where_it_is() -> None:
    assert has_pvh_note(_elf_with_notes([(b"GNU", 3), (b"Xen", 18)]))
    assert not has_pvh_note(_elf_with_notes([(b"GNU", 3), (b"Xen", 17)]))
    assert not has_pvh_note(_elf_with_notes([(b"Linux", 18)]))
    assert not has_pvh_note(b"MZ not an elf" + b"\0" * 64)


def _fake_built(vm_root: Path, name: str, release: str, age: float = 0.0) -> Path:
    directory = vm_root / "kernels-built" / name
    directory.mkdir(parents=True)
    (directory / "vmlinux").write_bytes(b"\x7fELF")
    (directory / "release").write_text(release + "\n")
    (directory / "modules.order").write_text("")
    (directory / "complete").write_text("")
    stamp = time.time() - age
    os.utime(directory, (stamp, stamp))
    return directory


def test_no_built_kernel_means_debian(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("HULL_VM_KERNEL", raising=False)
    assert selected_built_kernel(tmp_path) is None
    (tmp_path / "kernels-built" / ".build-x").mkdir(parents=True)  # a build in progress
    assert selected_built_kernel(tmp_path) is None


def test_newest_built_kernel_wins_unless_debian_is_asked_for(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("HULL_VM_KERNEL", raising=False)
    _fake_built(tmp_path, "6.1.1-1+hull.aaa", "6.1.1-hull", age=100)
    newest = _fake_built(tmp_path, "6.1.2-1+hull.bbb", "6.1.2-hull")
    chosen = selected_built_kernel(tmp_path)
    assert chosen is not None
    assert chosen.directory == newest
    assert chosen.release == "6.1.2-hull"
    assert chosen.modules == []  # nothing for /init to load
    monkeypatch.setenv("HULL_VM_KERNEL", "debian")
    assert selected_built_kernel(tmp_path) is None
    monkeypatch.setenv("HULL_VM_KERNEL", "6.1.1-1+hull.aaa")
    named = selected_built_kernel(tmp_path)
    assert named is not None and named.version == "6.1.1-1+hull.aaa"
    monkeypatch.setenv("HULL_VM_KERNEL", "6.9-nope")
    with pytest.raises(HullError, match="no built guest kernel"):
        selected_built_kernel(tmp_path)


def test_find_source_takes_the_newest_tarball_or_says_what_to_install(tmp_path: Path) -> None:
    with pytest.raises(HullError, match="apt-get install linux-source"):
        find_source(tmp_path)
    (tmp_path / "linux-source-6.1.tar.xz").write_bytes(b"")
    (tmp_path / "linux-source-6.10.tar.xz").write_bytes(b"")
    found = find_source(tmp_path)
    assert found.tarball.name in ("linux-source-6.1.tar.xz", "linux-source-6.10.tar.xz")
    assert found.version  # the package's version, or the tarball's when dpkg does not know it


def test_cli_kernel_actions_parse() -> None:
    from hull.cli.main import UsageError, parse

    parsed = parse(["vm", "kernel", "build", "--jobs", "1"])
    assert not isinstance(parsed, str)
    args, _ = parsed
    assert (args.action, args.jobs, args.force) == ("build", 1, False)
    parsed = parse(["vm", "kernel", "ls"])
    assert not isinstance(parsed, str) and parsed[0].action == "ls"
    with pytest.raises(UsageError):
        parse(["vm", "kernel", "compile"])
