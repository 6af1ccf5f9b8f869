"""One microVM and its agent channel: cold boot or warm restore, requests, teardown.

MicroVm is one running guest with its agent channel (the states are explicit:
started, then idle between runs, then closed). It starts in one of two ways:
- cold: QEMU boots the kernel and initramfs; the agent says "ready" (about 2 s
  under TCG);
- warm: QEMU restores a template's saved device state over a copy-on-write mapping
  of the template's RAM (hull.vm.template); the agent, saved idle, takes the next
  request straight away (about 0.1 s).
Both use the same command line (vm_config), which is what lets a template saved
from one restore into the other. Whatever happens (errors, Ctrl-C), close() kills
QEMU and removes the VM's run directory with its sockets, logs and per-run disk.
"""

from __future__ import annotations

import dataclasses
import shlex
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
    Frame,
    FrameReader,
    RunRequest,
    encode_message,
    parse_control,
)
from hull.vm.qemu import Disk, Nic, QemuVm, RamFile, Share, VmConfig, host_tsc_khz
from hull.vm.qmp import QmpChannel
from hull.vm.rootdisk import cached_root_disk, make_erofs, pad_disk

BOOT_TIMEOUT = {"kvm": 15.0, "tcg": 60.0}
RESTORE_TIMEOUT = 15.0
PROBE_TIMEOUT = 10.0
POWEROFF_GRACE = 2.0
# Every root disk is padded (sparsely) to this size so any image fits behind a
# template's placeholder disk: a restored guest keeps the size its template saw.
ROOT_DISK_SIZE = 16 << 30


class ByteSink(Protocol):
    def write(self, data: bytes, /) -> object: ...


@dataclass(frozen=True)
class GuestAssets:
    """What every VM boots from: kernel and initramfs (with the agent inside)."""

    kernel: GuestKernel
    initrd: Path


@dataclass(frozen=True)
class VmShape:
    """What a VM looks like from outside: a template serves only VMs of its shape."""

    accel: str
    memory_mib: int = 128
    cpus: int = 1


def guest_assets(paths: HullPaths) -> GuestAssets:
    """The cached kernel and initramfs, fetched or built on first use."""
    kernel = ensure_kernel(Path(paths.vm))
    agent = agent_binary(Path(paths.vm))
    return GuestAssets(kernel, initramfs_for(Path(paths.vm), kernel, agent))


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
    return choose_accel(
        Path(paths.vm), assets.kernel.version, lambda: _probe_kvm(paths, assets), notice
    )


def _probe_kvm(paths: HullPaths, assets: GuestAssets) -> bool:
    empty = Path(tempfile.mkdtemp(prefix="hull-vm-probe-"))
    try:
        with MicroVm.boot(paths, assets, empty, accel="kvm", boot_timeout=PROBE_TIMEOUT):
            return True
    except HullError:
        return False
    finally:
        shutil.rmtree(empty, ignore_errors=True)


def vm_config(
    assets: GuestAssets,
    shape: VmShape,
    run_dir: Path,
    disk: Path,
    ram_file: RamFile | None = None,
    incoming: bool = False,
    shares: tuple[Share, ...] = (),
    nic: Nic | None = None,
) -> VmConfig:
    """The one command line for every VM: a template and its restores must match
    (but for the network card's backend: nic, the placeholder unless given)."""
    return VmConfig(
        kernel=assets.kernel.vmlinux,
        initrd=assets.initrd,
        memory_mib=shape.memory_mib,
        cpus=shape.cpus,
        accel=shape.accel,
        agent_socket=run_dir / "a.sock",
        qmp_socket=run_dir / "q.sock",
        console_log=run_dir / "console.log",
        qemu_log=run_dir / "qemu.log",
        disks=(Disk(disk, readonly=True),),
        tsc_khz=host_tsc_khz() if shape.accel == "tcg" else None,
        ram_file=ram_file,
        incoming=incoming,
        shares=shares,
        nic=nic or Nic(),
    )


def new_run_dir(paths: HullPaths, fixed: Path | None = None) -> Path:
    """A fresh directory for one VM's sockets and logs (short: unix socket paths).

    fixed names it (a supervised VM keeps it in its container's shim directory);
    else a random one under <runroot>/vm.
    """
    if fixed is not None:
        fixed.mkdir(parents=True, exist_ok=True)
        return fixed
    base = Path(paths.runroot) / "vm"
    base.mkdir(parents=True, exist_ok=True)
    return Path(tempfile.mkdtemp(prefix="", dir=base))


def root_disk(paths: HullPaths, rootfs: Path, chain_id: str | None, run_dir: Path) -> Path:
    """The image's erofs disk, padded to ROOT_DISK_SIZE when it fits.

    Cached per chain ID when one is given, else made in run_dir for this VM only.
    """
    if chain_id is not None:
        disk = cached_root_disk(Path(paths.vm), rootfs, chain_id)
    else:
        disk = make_erofs(rootfs, run_dir / "root.erofs")
    pad_disk(disk, ROOT_DISK_SIZE)
    return disk


def set_migration_capabilities(qmp: QmpChannel) -> None:
    """RAM in a named shared file is not copied (x-ignore-shared); say when done (events)."""
    qmp.execute(
        "migrate-set-capabilities",
        {
            "capabilities": [
                {"capability": "x-ignore-shared", "state": True},
                {"capability": "events", "state": True},
            ]
        },
    )


class MicroVm:
    """A running microVM whose agent takes requests."""

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
        run_dir: Path | None = None,
        shares: tuple[Share, ...] = (),
        nic: Nic | None = None,
    ) -> MicroVm:
        """Make the root disk, boot QEMU cold and wait for the agent's "ready"."""
        run_dir = new_run_dir(paths, run_dir)
        try:
            disk = root_disk(paths, rootfs, chain_id, run_dir)
        except BaseException:
            shutil.rmtree(run_dir, ignore_errors=True)
            raise
        shape = VmShape(accel, memory_mib, cpus)
        config = vm_config(assets, shape, run_dir, disk, shares=shares, nic=nic)
        return cls.start(run_dir, config, boot_timeout)

    @classmethod
    def start(cls, run_dir: Path, config: VmConfig, timeout: float | None = None) -> MicroVm:
        """Cold boot on config; run_dir becomes the VM's (removed on failure too)."""
        started = time.monotonic()
        qemu: QemuVm | None = None
        try:
            qemu = QemuVm.launch(config)
            vm = cls(qemu, run_dir)
            vm._wait_ready(timeout or BOOT_TIMEOUT.get(config.accel, 60.0))
            vm.boot_seconds = time.monotonic() - started
            return vm
        except BaseException:
            if qemu is not None:
                qemu.close()
            shutil.rmtree(run_dir, ignore_errors=True)
            raise

    @classmethod
    def restore(
        cls, run_dir: Path, config: VmConfig, state: Path, timeout: float = RESTORE_TIMEOUT
    ) -> MicroVm:
        """Warm start: load a template's device state into a QEMU started with -incoming.

        config must be the template's command line with a private RAM mapping
        (shared=False: writing through to the template would corrupt it) and
        incoming=True. Returns once the migration has completed and the guest runs.
        """
        if config.ram_file is None or config.ram_file.shared or not config.incoming:
            raise HullError("a restore needs a private RAM file mapping and -incoming")
        started = time.monotonic()
        qemu: QemuVm | None = None
        try:
            qemu = QemuVm.launch(config)
            vm = cls(qemu, run_dir)
            qmp = qemu.qmp_channel(timeout)
            set_migration_capabilities(qmp)
            qmp.execute("migrate-incoming", {"uri": f"exec:cat {shlex.quote(str(state))}"})
            qmp.wait_migration(timeout)
            vm._channel = qemu.accept_agent(timeout)
            vm._reader = FrameReader(vm._channel)
            vm.boot_seconds = time.monotonic() - started
            return vm
        except BaseException as exc:
            details = qemu.stderr() if qemu is not None else ""
            if qemu is not None:
                qemu.close()
            shutil.rmtree(run_dir, ignore_errors=True)
            if isinstance(exc, HullError) and details:
                raise HullError(f"{exc.message}: {details}") from exc
            raise

    def save(self, state: Path, timeout: float = RESTORE_TIMEOUT) -> None:
        """Write the device state to state (RAM stays in the shared file), then quit QEMU.

        Only for a VM started on a shared RAM file whose agent is idle: that file and
        state together are a warm-start template.
        """
        qmp = self.qemu.qmp_channel(timeout)
        set_migration_capabilities(qmp)
        qmp.execute("migrate", {"uri": f"exec:cat > {shlex.quote(str(state))}"})
        qmp.wait_migration(timeout)
        self.qemu.quit(timeout)

    def _wait_ready(self, timeout: float) -> None:
        channel = self.qemu.accept_agent(timeout)
        self._channel = channel
        self._reader = FrameReader(channel)
        channel.settimeout(timeout)
        try:
            frame = self._reader.read_frame()
        except (AgentGone, TimeoutError) as exc:
            raise HullError(self._boot_failure(exc)) from exc
        channel.settimeout(None)
        if frame.stream != CONTROL or parse_control(frame.payload).get("type") != "ready":
            raise HullError("the guest agent did not say it was ready")

    def _boot_failure(self, exc: BaseException) -> str:
        why = "timed out" if isinstance(exc, TimeoutError) else "the guest stopped"
        details = self.qemu.console_tail() or self.qemu.stderr()
        return f"the microVM did not boot ({why})" + (f":\n{details}" if details else "")

    def run(self, request: RunRequest, stdout: ByteSink, stderr: ByteSink) -> int:
        """Run one process to its end, streaming its output; its exit code (128+N if killed).

        The guest clock is set to the host's as the request leaves (unless the request
        says otherwise): a restored guest's clock stands where its template stopped.
        """
        if request.realtime_ns is None:
            request = dataclasses.replace(request, realtime_ns=time.time_ns())
        self.send(request.encode())
        while True:
            frame = self.read_frame()
            if frame.id != request.id:
                continue  # another process's (none run beside a one-shot request)
            if frame.stream == STDOUT:
                stdout.write(frame.payload)
            elif frame.stream == STDERR:
                stderr.write(frame.payload)
            else:
                message = parse_control(frame.payload)
                if message["type"] in ("exit", "error"):
                    return exit_code(message)

    def send(self, data: bytes) -> None:
        """Frames to the agent (callers sending from several threads serialize this)."""
        if self._channel is None:
            raise HullError("the microVM is not running")
        self._channel.sendall(data)

    def read_frame(self) -> Frame:
        """The agent's next frame; HullError once the guest is gone."""
        if self._reader is None:
            raise HullError("the microVM is not running")
        try:
            return self._reader.read_frame()
        except AgentGone as exc:
            raise AgentGone(self._boot_failure(exc).replace("did not boot", "stopped")) from exc

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


def exit_code(message: dict[str, object]) -> int:
    """The code of an "exit" message; an "error" one raised as Docker's 126/127/125."""
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
