"""Run a process in a fresh microVM: root disk, boot, agent request, output, exit code.

MicroVm is one booted guest with its agent channel (the states are explicit:
booted, then idle between runs, then closed); run_in_vm is the one-shot path that
the engine's `--isolation=vm` builds on. Whatever happens (errors, Ctrl-C), QEMU is
killed and the VM's run directory, with its sockets, logs and per-run disk, removed.
"""

from __future__ import annotations

import shutil
import socket
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from hull.errors import CommandNotFoundError, CommandNotInvokableError, HullError
from hull.paths import HullPaths
from hull.vm.accel import choose_accel
from hull.vm.agent import agent_binary
from hull.vm.initramfs import initramfs_for
from hull.vm.kernel import GuestKernel, ensure_kernel
from hull.vm.protocol import (
    CONTROL,
    STDERR,
    STDOUT,
    AgentGone,
    FrameReader,
    RunRequest,
    encode_message,
    parse_control,
)
from hull.vm.qemu import Disk, QemuVm, VmConfig, host_tsc_khz
from hull.vm.rootdisk import cached_root_disk, make_erofs

BOOT_TIMEOUT = {"kvm": 15.0, "tcg": 60.0}
PROBE_TIMEOUT = 10.0
POWEROFF_GRACE = 2.0


class ByteSink(Protocol):
    def write(self, data: bytes, /) -> object: ...


@dataclass(frozen=True)
class GuestAssets:
    """What every VM boots from: kernel and initramfs (with the agent inside)."""

    kernel: GuestKernel
    initrd: Path


def guest_assets(paths: HullPaths) -> GuestAssets:
    """The cached kernel and initramfs, fetched or built on first use."""
    kernel = ensure_kernel(paths.vm)
    agent = agent_binary(paths.vm)
    return GuestAssets(kernel, initramfs_for(paths.vm, kernel, agent))


_notified: set[str] = set()


def stderr_notice(message: str) -> None:
    """Say a degraded mode once per process, on stderr."""
    if message in _notified:
        return
    _notified.add(message)
    try:
        sys.stderr.write(f"hull: notice: {message}\n")
        sys.stderr.flush()
    except (OSError, ValueError, AttributeError):
        pass


def pick_accel(
    paths: HullPaths, assets: GuestAssets, notice: Callable[[str], None] = stderr_notice
) -> str:
    """KVM if a probe guest boots under it on this host (cached), else TCG."""
    return choose_accel(paths.vm, assets.kernel.version, lambda: _probe_kvm(paths, assets), notice)


def _probe_kvm(paths: HullPaths, assets: GuestAssets) -> bool:
    empty = Path(tempfile.mkdtemp(prefix="hull-vm-probe-"))
    try:
        with MicroVm.boot(paths, assets, empty, accel="kvm", boot_timeout=PROBE_TIMEOUT):
            return True
    except HullError:
        return False
    finally:
        shutil.rmtree(empty, ignore_errors=True)


class MicroVm:
    """A booted microVM whose agent is ready for requests."""

    def __init__(self, qemu: QemuVm, run_dir: Path) -> None:
        self.qemu = qemu
        self.run_dir = run_dir
        self._channel: socket.socket | None = None
        self._reader: FrameReader | None = None
        self.boot_seconds = 0.0

    @classmethod
    def boot(
        cls,
        paths: HullPaths,
        assets: GuestAssets,
        rootfs: Path,
        *,
        accel: str,
        memory_mib: int = 128,
        cpus: int = 1,
        chain_id: str | None = None,
        boot_timeout: float | None = None,
    ) -> MicroVm:
        """Make the root disk, start QEMU and wait for the agent's "ready"."""
        started = time.monotonic()
        base = paths.runroot / "vm"
        base.mkdir(parents=True, exist_ok=True)
        run_dir = Path(tempfile.mkdtemp(prefix="", dir=base))
        qemu: QemuVm | None = None
        try:
            if chain_id is not None:
                disk = cached_root_disk(paths.vm, rootfs, chain_id)
            else:
                disk = make_erofs(rootfs, run_dir / "root.erofs")
            config = VmConfig(
                kernel=assets.kernel.vmlinux,
                initrd=assets.initrd,
                memory_mib=memory_mib,
                cpus=cpus,
                accel=accel,
                agent_socket=run_dir / "a.sock",
                qmp_socket=run_dir / "q.sock",
                console_log=run_dir / "console.log",
                qemu_log=run_dir / "qemu.log",
                disks=(Disk(disk, readonly=True),),
                tsc_khz=host_tsc_khz() if accel == "tcg" else None,
            )
            qemu = QemuVm.launch(config)
            vm = cls(qemu, run_dir)
            vm._wait_ready(boot_timeout or BOOT_TIMEOUT.get(accel, 60.0))
            vm.boot_seconds = time.monotonic() - started
            return vm
        except BaseException:
            if qemu is not None:
                qemu.close()
            shutil.rmtree(run_dir, ignore_errors=True)
            raise

    def _wait_ready(self, timeout: float) -> None:
        channel = self.qemu.accept_agent(timeout)
        self._channel = channel
        self._reader = FrameReader(channel)
        channel.settimeout(timeout)
        try:
            stream, payload = self._reader.read_frame()
        except (AgentGone, TimeoutError) as exc:
            raise HullError(self._boot_failure(exc)) from exc
        channel.settimeout(None)
        if stream != CONTROL or parse_control(payload).get("type") != "ready":
            raise HullError("the guest agent did not say it was ready")

    def _boot_failure(self, exc: BaseException) -> str:
        why = "timed out" if isinstance(exc, TimeoutError) else "the guest stopped"
        details = self.qemu.console_tail() or self.qemu.stderr()
        return f"the microVM did not boot ({why})" + (f":\n{details}" if details else "")

    def run(self, request: RunRequest, stdout: ByteSink, stderr: ByteSink) -> int:
        """Run one process to its end, streaming its output; its exit code (128+N if killed)."""
        if self._channel is None or self._reader is None:
            raise HullError("the microVM is not running")
        self._channel.sendall(request.encode())
        while True:
            try:
                stream, payload = self._reader.read_frame()
            except AgentGone as exc:
                raise HullError(self._boot_failure(exc).replace("did not boot", "stopped")) from exc
            if stream == STDOUT:
                stdout.write(payload)
            elif stream == STDERR:
                stderr.write(payload)
            else:
                return _exit_code(parse_control(payload))

    def poweroff(self, grace: float = POWEROFF_GRACE) -> None:
        """Ask the agent to power the guest off; kill QEMU if it takes too long."""
        if self._channel is not None and self.qemu.process.poll() is None:
            try:
                self._channel.sendall(encode_message({"type": "poweroff"}))
            except OSError:
                pass
        self.qemu.wait_or_kill(grace)

    def close(self) -> None:
        """Kill QEMU if it still runs and remove everything the VM had on disk."""
        try:
            if self._channel is not None:
                self._channel.close()
                self._channel = None
            self.qemu.close()
        finally:
            shutil.rmtree(self.run_dir, ignore_errors=True)

    def __enter__(self) -> MicroVm:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _exit_code(message: dict[str, object]) -> int:
    code = message.get("code")
    if not isinstance(code, int):
        raise HullError(f"the guest agent sent no exit code: {message}")
    if message["type"] == "exit":
        return code
    text = str(message.get("message", "the process could not start"))
    if code == 127:
        raise CommandNotFoundError(text)
    if code == 126:
        raise CommandNotInvokableError(text)
    raise HullError(text)


def run_in_vm(
    rootfs_dir: Path,
    args: list[str],
    env: list[str],
    cwd: str = "/",
    memory_mib: int = 128,
    cpus: int = 1,
    stdout: ByteSink | None = None,
    stderr: ByteSink | None = None,
    *,
    uid: int = 0,
    gid: int = 0,
    gids: list[int] | None = None,
    hostname: str | None = None,
    chain_id: str | None = None,
    paths: HullPaths | None = None,
    accel: str | None = None,
    notice: Callable[[str], None] = stderr_notice,
) -> int:
    """Boot a microVM on rootfs_dir, run args in it, and return the exit code.

    stdout and stderr receive the process's output as it comes (default: this
    process's own). chain_id, when given, keeps the root disk cached for the next VM
    of the same image. accel forces "kvm" or "tcg" (default: probe, cached).
    """
    paths = paths or HullPaths.from_env()
    out = stdout if stdout is not None else sys.stdout.buffer
    err = stderr if stderr is not None else sys.stderr.buffer
    request = RunRequest(
        args=args,
        env=env,
        cwd=cwd,
        uid=uid,
        gid=gid,
        gids=gids or [],
        hostname=hostname,
        realtime_ns=time.time_ns(),
    )
    request.encode()  # reject a bad request before booting anything
    assets = guest_assets(paths)
    chosen = accel or pick_accel(paths, assets, notice)
    with MicroVm.boot(
        paths,
        assets,
        rootfs_dir,
        accel=chosen,
        memory_mib=memory_mib,
        cpus=cpus,
        chain_id=chain_id,
    ) as vm:
        code = vm.run(request, out, err)
        vm.poweroff()
        return code
