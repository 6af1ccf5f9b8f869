"""Warm start without a VM: command lines, template keys, disk padding, QMP, build bookkeeping."""

from __future__ import annotations

import json
import os
import socket
import threading
from pathlib import Path

import pytest

import hull.vm.microvm
import hull.vm.template as template_mod
from hull.errors import HullError
from hull.paths import HullPaths
from hull.vm.kernel import GuestKernel
from hull.vm.microvm import GuestAssets, VmShape, vm_config
from hull.vm.qemu import RamFile, VmConfig, qemu_command
from hull.vm.qmp import QmpChannel, QmpError
from hull.vm.rootdisk import make_placeholder, pad_disk


@pytest.fixture
def assets(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> GuestAssets:
    monkeypatch.setattr(template_mod, "qemu_identity", lambda: "/usr/bin/qemu:1:2")
    monkeypatch.setattr(hull.vm.microvm, "host_tsc_khz", lambda: 2_000_000)
    kernel = GuestKernel(tmp_path / "kernels" / "6.1-1", "6.1-1", "6.1.0-cloud-amd64")
    return GuestAssets(kernel, tmp_path / "initramfs" / "abc.cpio")


def config(tmp_path: Path, **changes: object) -> VmConfig:
    base = VmConfig(
        kernel=tmp_path / "vmlinux",
        initrd=tmp_path / "initrd",
        memory_mib=128,
        cpus=1,
        accel="tcg",
        agent_socket=tmp_path / "a.sock",
        qmp_socket=tmp_path / "q.sock",
        console_log=tmp_path / "console.log",
    )
    return VmConfig(**{**base.__dict__, **changes})  # type: ignore[arg-type]


def test_ram_file_becomes_the_machine_memory_backend(tmp_path: Path) -> None:
    shared = qemu_command(config(tmp_path, ram_file=RamFile(tmp_path / "ram", shared=True)))
    machine = shared[shared.index("-M") + 1]
    assert machine.endswith(",memory-backend=ram0")
    backend = shared[shared.index("-object") + 1]
    assert backend == f"memory-backend-file,id=ram0,size=128M,mem-path={tmp_path}/ram,share=on"
    private = qemu_command(config(tmp_path, ram_file=RamFile(tmp_path / "ram", shared=False)))
    assert private[private.index("-object") + 1].endswith(",share=off")
    plain = qemu_command(config(tmp_path))
    assert "-object" not in plain and "memory-backend" not in " ".join(plain)
    assert "-incoming" not in plain


def test_incoming_waits_for_a_deferred_migration(tmp_path: Path) -> None:
    argv = qemu_command(config(tmp_path, incoming=True))
    assert argv[-2:] == ["-incoming", "defer"]


def test_template_and_restore_share_one_command_line_but_for_paths(
    assets: GuestAssets, tmp_path: Path
) -> None:
    shape = VmShape("tcg", 128, 1)
    saving = vm_config(assets, shape, tmp_path / "a", tmp_path / "p", RamFile(tmp_path / "r", True))
    restoring = vm_config(
        assets, shape, tmp_path / "b", tmp_path / "d", RamFile(tmp_path / "r", False), True
    )
    a, b = qemu_command(saving), qemu_command(restoring)
    assert [x for x in a if str(tmp_path) not in x] == [
        x for x in b if str(tmp_path) not in x and x not in ("-incoming", "defer")
    ]


def test_template_key_follows_shape_assets_and_qemu(
    assets: GuestAssets, monkeypatch: pytest.MonkeyPatch
) -> None:
    key = template_mod.template_key(assets, VmShape("tcg", 128, 1))
    assert key == template_mod.template_key(assets, VmShape("tcg", 128, 1))
    others = {
        template_mod.template_key(assets, VmShape("tcg", 160, 1)),
        template_mod.template_key(assets, VmShape("tcg", 128, 2)),
        template_mod.template_key(assets, VmShape("kvm", 128, 1)),
        template_mod.template_key(
            GuestAssets(assets.kernel, assets.initrd.with_name("def.cpio")),
            VmShape("tcg", 128, 1),
        ),
    }
    assert key not in others and len(others) == 4
    monkeypatch.setattr(template_mod, "qemu_identity", lambda: "/usr/bin/qemu:1:3")
    assert template_mod.template_key(assets, VmShape("tcg", 128, 1)) != key


def test_pad_disk_grows_sparsely_and_keeps_the_content(tmp_path: Path) -> None:
    disk = tmp_path / "root.erofs"
    disk.write_bytes(b"erofs" * 100)
    assert pad_disk(disk, 1 << 30)
    assert disk.stat().st_size == 1 << 30
    assert disk.stat().st_blocks * 512 < 1 << 20  # holes, not zeros on disk
    assert disk.read_bytes()[:500] == b"erofs" * 100
    assert pad_disk(disk, 1 << 30)  # already padded: unchanged
    assert not pad_disk(disk, 4096)  # too big for the placeholder
    placeholder = make_placeholder(tmp_path / "p.img", 1 << 30)
    assert placeholder.stat().st_size == 1 << 30


class FakeQemu:
    """The QEMU end of a QMP socket: answers from a script, records what it got."""

    def __init__(self, script: list[list[dict]]) -> None:
        self.host, self.qemu = socket.socketpair()
        self.received: list[dict] = []
        self.script = script
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        self.qemu.sendall(b'{"QMP": {"version": {}, "capabilities": []}}\r\n')
        reader = self.qemu.makefile("rb")
        for replies in self.script:
            line = reader.readline()
            if not line:
                return
            self.received.append(json.loads(line))
            for reply in replies:
                self.qemu.sendall(json.dumps(reply).encode() + b"\r\n")

    def close(self) -> None:
        self.qemu.close()
        self.host.close()


def test_qmp_channel_negotiates_runs_commands_and_waits_for_migration() -> None:
    migration = {"event": "MIGRATION", "data": {"status": "completed"}}
    fake = FakeQemu(
        [
            [{"return": {}}],
            [{"event": "MIGRATION", "data": {"status": "active"}}, {"return": {}}],
            [{"return": {"status": "running"}}, migration],
        ]
    )
    try:
        channel = QmpChannel(fake.host, timeout=5)
        assert channel.execute("migrate-incoming", {"uri": "exec:cat x"}) == {}
        assert channel.execute("query-status") == {"status": "running"}
        channel.wait_migration(5)
        assert [m["execute"] for m in fake.received] == [
            "qmp_capabilities",
            "migrate-incoming",
            "query-status",
        ]
        assert fake.received[1]["arguments"] == {"uri": "exec:cat x"}
    finally:
        fake.close()


def test_qmp_channel_reports_errors_and_failed_migrations() -> None:
    fake = FakeQemu(
        [
            [{"return": {}}],
            [{"error": {"class": "GenericError", "desc": "no such capability"}}],
            [{"return": {}}, {"event": "MIGRATION", "data": {"status": "failed"}}],
        ]
    )
    try:
        channel = QmpChannel(fake.host, timeout=5)
        with pytest.raises(QmpError, match="no such capability"):
            channel.execute("migrate-set-capabilities")
        channel.execute("migrate-incoming")
        with pytest.raises(QmpError, match="failed"):
            channel.wait_migration(5)
    finally:
        fake.close()


def test_qmp_channel_times_out_on_a_silent_monitor() -> None:
    host, qemu = socket.socketpair()
    try:
        with pytest.raises(QmpError, match="did not answer"):
            QmpChannel(host, timeout=0.2)
    finally:
        host.close()
        qemu.close()


def test_a_failed_build_is_remembered_for_a_while(
    assets: GuestAssets, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    paths = HullPaths(tmp_path / "root", tmp_path / "run")
    calls = []

    def failing_build(*args: object) -> None:
        calls.append(args)
        raise HullError("migration is not supported")

    monkeypatch.setattr(template_mod, "_build", failing_build)
    shape = VmShape("tcg", 128, 1)
    for _ in range(2):
        with pytest.raises(HullError, match="migration is not supported"):
            template_mod.ensure_template(paths, assets, shape)
    assert len(calls) == 1
    marker = next(template_mod.templates_dir(paths.vm).glob("*.failed"))
    os.utime(marker, (0, 0))  # long ago: try again
    with pytest.raises(HullError):
        template_mod.ensure_template(paths, assets, shape)
    assert len(calls) == 2


def test_building_removes_templates_of_other_assets(
    assets: GuestAssets, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    paths = HullPaths(tmp_path / "root", tmp_path / "run")
    base = template_mod.templates_dir(paths.vm)
    current = template_mod.assets_id(assets)
    for name, owner in (("old", "0" * 16), ("sibling", current)):
        (base / name).mkdir(parents=True)
        (base / name / "meta.json").write_text(json.dumps({"assets": owner}))
        (base / name / "complete").write_text("")

    def fake_build(paths: HullPaths, assets: GuestAssets, shape: VmShape, template) -> None:
        template.directory.mkdir()
        (template.directory / "complete").write_text("")

    monkeypatch.setattr(template_mod, "_build", fake_build)
    built = template_mod.ensure_template(paths, assets, VmShape("tcg", 128, 1))
    assert built.directory.is_dir()
    assert not (base / "old").exists()
    assert (base / "sibling").exists()
    assert template_mod.find_template(paths, assets, VmShape("tcg", 128, 1)) == built
