"""The agent protocol, QEMU's command line and the accelerator choice, without a VM."""

from __future__ import annotations

import json
import socket
from pathlib import Path

import pytest

from hull.errors import HullError
from hull.vm import accel
from hull.vm.protocol import (
    CONTROL,
    HEADER,
    HOST_STREAMS,
    MAX_FRAME,
    STDERR,
    STDIN,
    STDOUT,
    AgentGone,
    FrameReader,
    RunRequest,
    encode_frame,
    resize_request,
    signal_request,
    stdin_frames,
)
from hull.vm.qemu import Disk, VmConfig, kernel_cmdline, qemu_command


def test_run_request_is_one_control_frame() -> None:
    frame = RunRequest(
        ["sh", "-c", "echo ü"], ["A=1"], "/tmp", uid=5, gid=6, gids=[7], id=9
    ).encode()
    word, length = HEADER.unpack(frame[: HEADER.size])
    assert (word >> 24, word & 0xFFFFFF, length) == (CONTROL, 9, len(frame) - HEADER.size)
    body = json.loads(frame[HEADER.size :])
    assert body == {
        "type": "run",
        "id": 9,
        "args": ["sh", "-c", "echo ü"],
        "env": ["A=1"],
        "cwd": "/tmp",
        "uid": 5,
        "gid": 6,
        "gids": [7],
        "main": True,
        "tty": False,
        "stdin": False,
    }
    assert frame[HEADER.size :].isascii()  # non-ASCII goes as \u escapes, which the agent decodes
    request = RunRequest(["x"], tty=True, rows=24, cols=80, mounts=["vol0 rw /data"], main=False)
    assert RunRequest.from_body(request.body()) == request


def test_requests_for_running_processes() -> None:
    assert json.loads(signal_request(4, 15)[HEADER.size :]) == {
        "type": "signal",
        "id": 4,
        "signal": 15,
    }
    assert json.loads(resize_request(4, 30, 100)[HEADER.size :])["rows"] == 30
    big = stdin_frames(4, b"x" * (MAX_FRAME + 5))
    assert [len(f) - HEADER.size for f in big] == [MAX_FRAME, 5]
    assert stdin_frames(4, b"") == [encode_frame(STDIN, b"", 4)]
    with pytest.raises(HullError):
        RunRequest(["x"], id=0).encode()
    with pytest.raises(HullError):
        RunRequest(["x"], id=1 << 24).encode()


def test_run_request_rejects_nul_and_empty_commands() -> None:
    with pytest.raises(HullError):
        RunRequest(["echo", "a\0b"]).encode()
    with pytest.raises(HullError):
        RunRequest([]).encode()


def test_frame_reader_splits_streams_across_partial_reads() -> None:
    host, guest = socket.socketpair()
    with host, guest:
        data = (
            encode_frame(STDOUT, b"out", 7)
            + encode_frame(STDERR, b"")
            + encode_frame(CONTROL, b'{"type":"exit","code":3}', 7)
        )
        for i in range(0, len(data), 5):
            guest.sendall(data[i : i + 5])
        guest.shutdown(socket.SHUT_WR)
        reader = FrameReader(host)
        assert reader.read_frame() == (STDOUT, b"out", 7)
        assert reader.read_frame() == (STDERR, b"", 0)
        assert reader.read_control() == {"type": "exit", "code": 3}
        with pytest.raises(AgentGone):
            reader.read_frame()


def test_frame_reader_rejects_unknown_streams() -> None:
    host, guest = socket.socketpair()
    with host, guest:
        guest.sendall(encode_frame(9, b"x"))
        with pytest.raises(HullError):
            FrameReader(host).read_frame()
    host, client = socket.socketpair()
    with host, client:
        client.sendall(encode_frame(STDIN, b"in", 2) + encode_frame(STDOUT, b"x"))
        reader = FrameReader(host, HOST_STREAMS)
        assert reader.read_frame() == (STDIN, b"in", 2)
        with pytest.raises(HullError):
            reader.read_frame()


def make_config(tmp: Path, **changes) -> VmConfig:
    values = dict(
        kernel=tmp / "vmlinux",
        initrd=tmp / "initrd",
        memory_mib=128,
        cpus=2,
        accel="tcg",
        agent_socket=tmp / "a.sock",
        qmp_socket=tmp / "q.sock",
        console_log=tmp / "console.log",
        disks=(Disk(tmp / "root.erofs"),),
        tsc_khz=2596096,
    )
    values.update(changes)
    return VmConfig(**values)  # type: ignore[arg-type]


def test_qemu_command_for_tcg(tmp_path: Path) -> None:
    argv = qemu_command(make_config(tmp_path), binary="qemu")
    joined = " ".join(argv)
    assert argv[0] == "qemu"
    assert argv[argv.index("-M") + 1] == "microvm,pit=on,pic=on,rtc=on"
    assert argv[argv.index("-accel") + 1] == "tcg,tb-size=32"
    assert argv[argv.index("-cpu") + 1] == "max"
    assert argv[argv.index("-m") + 1] == "128" and argv[argv.index("-smp") + 1] == "2"
    assert "-nodefaults" in argv and "-no-user-config" in argv and "-no-reboot" in argv
    assert f"socket,id=agent,path={tmp_path}/a.sock,server=off" in argv
    assert "virtserialport,chardev=agent,name=hull.agent" in argv
    assert f"if=none,id=disk0,file={tmp_path}/root.erofs,format=raw,readonly=on" in joined
    assert "tsc_early_khz=2596096" in argv[argv.index("-append") + 1]


def test_qemu_command_for_kvm_and_limits(tmp_path: Path) -> None:
    argv = qemu_command(make_config(tmp_path, accel="kvm", tsc_khz=None), binary="qemu")
    assert argv[argv.index("-accel") + 1] == "kvm"
    assert argv[argv.index("-cpu") + 1] == "host"
    assert "tsc_early_khz" not in kernel_cmdline(make_config(tmp_path, tsc_khz=None))
    with pytest.raises(HullError, match="96 MiB"):
        qemu_command(make_config(tmp_path, memory_mib=64))
    with pytest.raises(HullError):
        qemu_command(make_config(tmp_path, accel="hvf"))


def test_accel_probe_runs_once_and_is_cached(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.delenv(accel.ACCEL_ENV, raising=False)
    monkeypatch.setattr(accel, "kvm_usable", lambda: True)
    probes: list[int] = []
    notices: list[str] = []

    def failing_probe() -> bool:
        probes.append(1)
        return False

    assert accel.choose_accel(tmp_path, "1.0", failing_probe, notices.append) == "tcg"
    assert accel.choose_accel(tmp_path, "1.0", failing_probe, notices.append) == "tcg"
    assert len(probes) == 1 and notices == [accel.TCG_NOTICE, accel.TCG_NOTICE]
    assert accel.choose_accel(tmp_path, "2.0", lambda: True, notices.append) == "kvm"


def test_accel_env_and_missing_kvm(tmp_path: Path, monkeypatch) -> None:
    def never() -> bool:
        raise AssertionError("no probe expected")

    monkeypatch.setenv(accel.ACCEL_ENV, "kvm")
    assert accel.choose_accel(tmp_path, "1.0", never, print) == "kvm"
    monkeypatch.delenv(accel.ACCEL_ENV)
    monkeypatch.setattr(accel, "kvm_usable", lambda: False)
    notices: list[str] = []
    assert accel.choose_accel(tmp_path, "1.0", never, notices.append) == "tcg"
    assert notices and "/dev/kvm" in notices[0]
