"""A microVM's network and stats without a VM: the card on QEMU's command line, what the
agent is told, the spec file, and the agent's stats read for `hull stats` and `top`."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from hull.errors import ConfigError, HullError
from hull.vm.guestnet import GuestInterface, etc_files, file_specs
from hull.vm.gueststats import GuestStats, cpu_time, passwd_names, ps_ef, start_time, tty_name
from hull.vm.protocol import RunRequest, parse_control, stats_request
from hull.vm.qemu import PLACEHOLDER_MAC, Nic, RamFile, qemu_command
from hull.vm.vmspec import VmSpec
from tests.unit.test_vm_protocol import make_config

INTERFACE = GuestInterface("tap0123456789", "02:42:0a:57:00:05", "10.87.0.5", 16, "10.87.0.1", 1500)


def test_every_vm_has_a_card_whose_backend_is_the_only_difference(tmp_path: Path) -> None:
    """A template is saved with the placeholder; a restore differs in the backend only,
    and the card comes after the disks (a template and its restores keep the order)."""
    ram = RamFile(tmp_path / "ram", shared=False)
    plain = qemu_command(make_config(tmp_path, ram_file=ram), binary="qemu")
    tapped = qemu_command(make_config(tmp_path, ram_file=ram, nic=INTERFACE.nic()), binary="qemu")
    assert plain[plain.index("-netdev") + 1] == "hubport,id=net0,hubid=0"
    card = plain[plain.index("-netdev") + 3]
    assert card == f"virtio-net-device,netdev=net0,mac={PLACEHOLDER_MAC}"
    backend = tapped[tapped.index("-netdev") + 1]
    assert backend == "tap,id=net0,ifname=tap0123456789,script=no,downscript=no,vhost=off"
    assert tapped[tapped.index("-netdev") + 3].endswith(",mac=02:42:0a:57:00:05")
    differs = [(a, b) for a, b in zip(plain, tapped, strict=True) if a != b]
    assert len(differs) == 2
    assert plain.index("-netdev") > max(i for i, a in enumerate(plain) if a == "-drive")


def test_the_agent_gets_eth0_and_the_etc_files(tmp_path: Path) -> None:
    assert INTERFACE.agent_spec() == "eth0 02:42:0a:57:00:05 10.87.0.5/16 10.87.0.1 1500"
    without_route = GuestInterface("tapx", "02:00:00:00:00:01", "192.168.1.2", 24, None, 1400)
    assert without_route.agent_spec().endswith(" 192.168.1.2/24 - 1400")
    (tmp_path / "hosts").write_text("127.0.0.1\tlocalhost\n")
    (tmp_path / "hostname").write_text("box\n")
    files = etc_files(tmp_path)
    assert files == {"/etc/hostname": "box\n", "/etc/hosts": "127.0.0.1\tlocalhost\n"}
    assert file_specs(files) == ["/etc/hostname\nbox\n", "/etc/hosts\n127.0.0.1\tlocalhost\n"]
    with pytest.raises(ConfigError):
        file_specs({"etc/relative": "x"})
    body = RunRequest(["true"], interfaces=[INTERFACE.agent_spec()], files=file_specs(files)).body()
    assert body["interfaces"] == [INTERFACE.agent_spec()] and len(body["files"]) == 2
    assert "interfaces" not in RunRequest(["true"]).body()
    assert RunRequest.from_body(body).files == file_specs(files)


@pytest.mark.parametrize(
    "changes",
    [
        {"mac": "03:42:0a:57:00:05"},  # multicast
        {"mac": "02:42:0a:57:00"},
        {"address": "10.87.0.300"},
        {"prefixlen": 33},
        {"gateway": "gw"},
        {"mtu": 10},
        {"tap": "a-very-long-tap-name"},
        {"tap": "tap x"},
    ],
)
def test_a_bad_interface_is_refused(changes: dict[str, object]) -> None:
    values = {**INTERFACE.__dict__, **changes}
    with pytest.raises(ConfigError):
        GuestInterface(**values)  # type: ignore[arg-type]


def test_the_vm_spec_keeps_its_interface(tmp_path: Path) -> None:
    spec = VmSpec(
        root="/r",
        runroot="/rr",
        rootfs="/x",
        chain_id=None,
        accel="tcg",
        memory_mib=128,
        cpus=1,
        process=RunRequest(["true"], interfaces=[INTERFACE.agent_spec()]).body(),
        interface=INTERFACE,
    )
    spec.write(tmp_path)
    loaded = VmSpec.load(tmp_path)
    assert loaded == spec and loaded.interface is not None
    assert loaded.interface.nic() == Nic("02:42:0a:57:00:05", "tap0123456789")
    assert loaded.main_request().interfaces == [INTERFACE.agent_spec()]


REPLY = {
    "type": "stats",
    "id": 7,
    "code": 0,
    "mem_total_kb": 94936,
    "mem_available_kb": 50000,
    "cpu": [100, 0, 50, 1000, 0, 1, 2, 0],
    "cpus": 1,
    "btime": 1700000000,
    "uptime_ms": 120_000,
    "read_bytes": 4096,
    "write_bytes": 0,
    "clk_tck": 100,
    "page_size": 4096,
    "procs": [
        [42, 1, 0, "S", 30_000, 11_000, 0, 100, "sleep 100"],
        [7, 1, 1000, "R", 150, 2_000, 34816, 50, "sh -c x y"],
    ],
    "host_cpu_ns": 5_000_000_000,
}


def test_stats_are_read_from_the_agents_reply() -> None:
    stats = GuestStats.from_reply(REPLY)
    assert stats.mem_total == 94936 * 1024
    assert stats.mem_used == (94936 - 50000) * 1024
    assert stats.host_cpu_ns == 5_000_000_000 and stats.read_bytes == 4096
    assert [p.pid for p in stats.processes] == [7, 42]
    assert stats.processes[0].command == "sh -c x y"
    with pytest.raises(HullError):
        GuestStats.from_reply({"procs": [[1, 2]]})
    assert parse_control(stats_request(9)[8:]) == {"type": "stats", "id": 9}


def test_top_shows_ps_ef_columns() -> None:
    now = time.mktime((2026, 11, 26, 12, 0, 0, 0, 0, -1))
    titles, rows = ps_ef(GuestStats.from_reply(REPLY), passwd_names("root:x:0:0::/:/bin/sh\n"), now)
    assert titles == ["UID", "PID", "PPID", "C", "STIME", "TTY", "TIME", "CMD"]
    sh, sleep = rows
    # sh started 20 s after boot, 100 s ago; 1.5 s of CPU: 1 %, on pts/0
    assert sh == ["1000", "7", "1", "1", "11:58", "pts/0", "00:00:01", "sh -c x y"]
    # sleep started 110 s after boot (10 s ago) and used 300 s of CPU: capped at 99 %
    assert sleep == ["root", "42", "1", "99", "11:59", "?", "00:05:00", "sleep 100"]


def test_ps_formats() -> None:
    assert tty_name(0) == "?" and tty_name((136 << 8) | 3) == "pts/3"
    assert tty_name((4 << 8) | 1) == "tty1" and tty_name((5 << 8) | 1) == "console"
    assert cpu_time(59) == "00:00:59" and cpu_time(90061) == "1-01:01:01"
    now = time.mktime((2026, 11, 26, 12, 0, 0, 0, 0, -1))
    assert start_time(now - 3600, now) == "11:00"
    assert start_time(now - 3 * 86400, now) == "Nov23"
    assert start_time(now - 400 * 86400, now) == "2025"
    assert passwd_names("a:x:5:5::/:/bin/sh\nb:x:5:5::/:/bin/sh\nbad\n") == {5: "a"}
