"""VM containers without a VM: the spec file, run flags, exec's env, the supervisor's
command line, QEMU's command line for shared folders."""

from __future__ import annotations

from pathlib import Path

import pytest

from hull.engine.runconfig import MountSpec, RunConfig
from hull.engine.vmbackend import check_run_config, env_flags, merge_env, shape_of
from hull.errors import ConfigError, HullError
from hull.vm.protocol import RunRequest
from hull.vm.qemu import RamFile, Share, qemu_command
from hull.vm.supervisor import _parse, supervisor_command
from hull.vm.vmspec import ShareSpec, VmSpec
from tests.unit.test_vm_protocol import make_config


def test_vm_spec_round_trips_and_names_its_shares(tmp_path: Path) -> None:
    spec = VmSpec(
        root="/var/lib/hull",
        runroot="/run/hull",
        rootfs="/x/rootfs",
        chain_id="sha256:" + "a" * 64,
        accel="tcg",
        memory_mib=160,
        cpus=2,
        process=RunRequest(["sleep", "1"], env=["A=1"], uid=5).body(),
        shares=[ShareSpec("/host", "/data"), ShareSpec("/v", "/ro dir", readonly=True)],
    )
    spec.write(tmp_path)
    loaded = VmSpec.load(tmp_path)
    assert loaded == spec
    assert loaded.main_request() == RunRequest(["sleep", "1"], env=["A=1"], uid=5)
    assert loaded.mount_specs() == ["hullfs0 rw /data", "hullfs1 ro /ro dir"]
    (tmp_path / "vm.json").write_text("{")
    with pytest.raises(ConfigError):
        VmSpec.load(tmp_path)


def test_run_flags_a_vm_refuses_and_its_shape() -> None:
    check_run_config(RunConfig(image="busybox", isolation="vm", mounts=[
        MountSpec(type="bind", source="/tmp", target="/mnt"),
        MountSpec(type="volume", source="v", target="/data"),
    ]))  # fmt: skip
    check_run_config(RunConfig(image="busybox", tty=True, interactive=True))
    check_run_config(RunConfig(image="busybox", network="bridge", ports=["8080:80"]))
    check_run_config(RunConfig(image="busybox", network="mynet"))
    for bad in (
        RunConfig(image="busybox", mounts=[MountSpec(type="tmpfs", source=None, target="/t")]),
        RunConfig(image="busybox", network="host"),
        RunConfig(image="busybox", network="container:abc"),
        RunConfig(image="busybox", network="a", extra_networks=[{"network": "b"}]),
    ):
        with pytest.raises(ConfigError):
            check_run_config(bad)
    assert shape_of(RunConfig(image="busybox")) == (128, 1)
    assert shape_of(RunConfig(image="busybox", memory=256 << 20, cpus=1.5)) == (256, 2)


def test_exec_env_overrides_the_main_process_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FROM_HOST", "h")
    monkeypatch.delenv("UNSET_HERE", raising=False)
    assert env_flags(["A=1", "FROM_HOST", "UNSET_HERE"]) == ["A=1", "FROM_HOST=h"]
    merged = merge_env(["PATH=/bin", "A=0", "B=2"], ["A=1", "C=3"])
    assert merged == ["PATH=/bin", "A=1", "B=2", "C=3"]


def test_supervisor_is_run_as_a_runtime_by_the_shim() -> None:
    argv = supervisor_command()
    assert argv[1:3] == ["-IS", "-c"] and "hull.vm.supervisor" in argv[3]
    command, options, cid = _parse(
        ["--root", "/r", "create", "--bundle", "/b", "--pid-file", "/s/c.pid", "ID"]
    )
    assert (command, cid) == ("create", "ID")
    assert options == {"--root": "/r", "--bundle": "/b", "--pid-file": "/s/c.pid"}
    with pytest.raises(HullError):
        _parse(["create", "--bundle"])


def test_shared_folders_put_guest_ram_in_a_shared_memfd(tmp_path: Path) -> None:
    shares = (Share("hullfs0", tmp_path / "hullfs0.sock"),)
    argv = qemu_command(make_config(tmp_path, shares=shares), binary="qemu")
    assert "memory-backend-memfd,id=ram0,size=128M,share=on" in argv
    assert argv[argv.index("-M") + 1].endswith(",memory-backend=ram0")
    assert "virtio-mmio.force-legacy=false" in argv
    assert f"socket,id=fs0,path={tmp_path}/hullfs0.sock" in argv
    assert "vhost-user-fs-device,chardev=fs0,tag=hullfs0" in argv
    plain = qemu_command(make_config(tmp_path), binary="qemu")
    assert not any("vhost-user-fs" in a or "memfd" in a for a in plain)
    with pytest.raises(HullError, match="warm start"):
        qemu_command(
            make_config(tmp_path, shares=shares, ram_file=RamFile(tmp_path / "ram", False))
        )
