"""Launch one QEMU microVM and own its process: command line, sockets, QMP, teardown.

The command line is built by a pure function (unit-tested) from a VmConfig. The host
listens on both unix sockets (agent and QMP) *before* QEMU starts and QEMU connects
to them as a client: no polling for QEMU to create a socket, and (per the restore
notes in the VM issue) a guest's open agent port keeps working across a snapshot
restore only when QEMU is the client.

QMP goes through the `qemu.qmp` library, imported only when QMP is first used: a
run-to-exit VM never needs it (the agent powers the guest off).
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hull.errors import HullError
from hull.vm.qmp import QmpChannel

QEMU_BINARY = "qemu-system-x86_64"
AGENT_PORT_NAME = "hull.agent"  # guest/hull-agent.c looks for this port name
UNIX_PATH_MAX = 107
PLACEHOLDER_MAC = "02:42:00:00:00:01"  # a template's card, until the agent sets the real one


@dataclass(frozen=True)
class Disk:
    """A raw image attached as a virtio-blk-device (the first is the guest's /dev/vda)."""

    path: Path
    readonly: bool = True


@dataclass(frozen=True)
class RamFile:
    """Guest RAM in a file: shared while a warm-start template is made, private after.

    shared=True writes the guest's memory through to the file (the template);
    shared=False maps the file copy-on-write, so every restored VM starts from the
    template's pages and shares the ones it never writes.
    """

    path: Path
    shared: bool


@dataclass(frozen=True)
class Share:
    """A host directory served by a virtiofsd on socket, mounted in the guest by tag."""

    tag: str
    socket: Path


@dataclass(frozen=True)
class Nic:
    """The VM's network card (virtio-net, the guest's eth0) and its host backend.

    Every VM has one, so that a warm-start template (saved with the placeholder
    backend: microVMs have no hot-plug) serves networked VMs and others alike. tap
    names a host tap device (made and enslaved to a bridge by hull.net) for QEMU to
    open; None is the placeholder, a hub port that leads nowhere. The card's state
    (its MAC included) comes from the template on a restore, so the guest agent sets
    the MAC the host chose; mac here is what a cold boot starts with.
    """

    mac: str = PLACEHOLDER_MAC
    tap: str | None = None

    def args(self) -> list[str]:
        if self.tap is None:
            backend = "hubport,id=net0,hubid=0"
        else:
            # vhost=off: no vhost-net here, and TCG gains nothing from it.
            backend = f"tap,id=net0,ifname={self.tap},script=no,downscript=no,vhost=off"
        return ["-netdev", backend, "-device", f"virtio-net-device,netdev=net0,mac={self.mac}"]


@dataclass(frozen=True)
class VmConfig:
    """Everything that decides the QEMU command line of one microVM."""

    kernel: Path
    initrd: Path
    memory_mib: int
    cpus: int
    accel: str  # "tcg" or "kvm"
    agent_socket: Path
    qmp_socket: Path
    console_log: Path
    disks: tuple[Disk, ...] = ()
    tsc_khz: int | None = None
    kernel_args: tuple[str, ...] = ()
    tb_size_mib: int = 32  # TCG translation cache: 32 beats 16, 8 hurts (issue notes)
    qemu_log: Path | None = None  # QEMU's own stderr (a file: a pipe could fill and stall it)
    ram_file: RamFile | None = None  # None: anonymous memory (a cold boot)
    incoming: bool = False  # wait for a migration (warm restore) instead of booting
    # virtiofs shares: guest RAM then lives in a shared memfd that each virtiofsd maps
    # (a template's private copy-on-write RAM cannot be shared, so these VMs boot cold).
    shares: tuple[Share, ...] = ()
    nic: Nic = field(default_factory=Nic)


def kernel_cmdline(config: VmConfig) -> str:
    args = ["console=hvc0", "quiet", "panic=-1", "rdinit=/init"]
    if config.tsc_khz:
        # Without it about one TCG boot in twelve hangs calibrating the TSC.
        args.append(f"tsc_early_khz={config.tsc_khz}")
    args.extend(config.kernel_args)
    return " ".join(args)


def qemu_command(config: VmConfig, binary: str = QEMU_BINARY) -> list[str]:
    """The QEMU argv for config (pure: no file is touched)."""
    if config.memory_mib < 96:
        raise HullError(
            f"a microVM needs at least 96 MiB of memory (asked: {config.memory_mib} MiB): "
            "the guest kernel runs out of memory while booting below that"
        )
    if config.cpus < 1:
        raise HullError(f"a microVM needs at least one vCPU (asked: {config.cpus})")
    if config.accel == "kvm":
        accel, cpu = ["-accel", "kvm"], "host"
    elif config.accel == "tcg":
        accel, cpu = ["-accel", f"tcg,tb-size={config.tb_size_mib}"], "max"
    else:
        raise HullError(f"unknown accelerator {config.accel!r} (kvm or tcg)")
    # pit/pic: without them the kernel hangs calibrating its timer under TCG.
    machine = "microvm,pit=on,pic=on,rtc=on"
    memory: list[str] = []
    if config.shares and config.ram_file is not None:
        raise HullError("a microVM with shared folders cannot use a RAM file (warm start)")
    if config.shares:
        memory = [
            "-object",
            f"memory-backend-memfd,id=ram0,size={config.memory_mib}M,share=on",
            # vhost-user-fs needs virtio 1.0 (microvm's virtio-mmio defaults to legacy).
            "-global",
            "virtio-mmio.force-legacy=false",
        ]
        machine += ",memory-backend=ram0"
    if config.ram_file is not None:
        share = "on" if config.ram_file.shared else "off"
        memory = [
            "-object",
            f"memory-backend-file,id=ram0,size={config.memory_mib}M,"
            f"mem-path={config.ram_file.path},share={share}",
        ]
        machine += ",memory-backend=ram0"
    argv = [
        binary,
        "-M", machine,
        *memory,
        *accel,
        "-cpu", cpu,
        "-m", str(config.memory_mib),
        "-smp", str(config.cpus),
        "-nodefaults", "-no-user-config", "-nographic", "-no-reboot",
        "-kernel", str(config.kernel),
        "-initrd", str(config.initrd),
        "-append", kernel_cmdline(config),
        "-chardev", f"socket,id=qmp,path={config.qmp_socket},server=off",
        "-mon", "chardev=qmp,mode=control",
        "-device", "virtio-serial-device",
        "-chardev", f"file,id=console,path={config.console_log}",
        "-device", "virtconsole,chardev=console",
        "-chardev", f"socket,id=agent,path={config.agent_socket},server=off",
        "-device", f"virtserialport,chardev=agent,name={AGENT_PORT_NAME}",
    ]  # fmt: skip
    for index, disk in enumerate(config.disks):
        drive = f"if=none,id=disk{index},file={disk.path},format=raw"
        if disk.readonly:
            drive += ",readonly=on"
        argv += ["-drive", drive, "-device", f"virtio-blk-device,drive=disk{index}"]
    argv += config.nic.args()  # after the disks: a template and its restores keep the order
    for index, folder in enumerate(config.shares):
        argv += [
            "-chardev", f"socket,id=fs{index},path={folder.socket}",
            "-device", f"vhost-user-fs-device,chardev=fs{index},tag={folder.tag}",
        ]  # fmt: skip
    if config.incoming:
        argv += ["-incoming", "defer"]
    return argv


def host_tsc_khz() -> int | None:
    """The host's TSC frequency in kHz, which a TCG guest is told to skip calibrating."""
    try:
        return int(Path("/sys/devices/system/cpu/cpu0/tsc_freq_khz").read_text())
    except (OSError, ValueError):
        pass
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("cpu MHz"):
                return int(float(line.split(":", 1)[1]) * 1000)
    except (OSError, ValueError):
        pass
    return None


def qemu_binary() -> str:
    path = shutil.which(QEMU_BINARY)
    if path is None:
        raise HullError(
            f"{QEMU_BINARY} is not installed: --isolation=vm needs it "
            "(apt-get install qemu-system-x86)"
        )
    return path


def _listen(path: Path) -> socket.socket:
    if len(os.fsencode(path)) > UNIX_PATH_MAX:
        raise HullError(f"socket path too long for a unix socket: {path}")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
    try:
        sock.bind(os.fspath(path))
        sock.listen(1)
    except OSError:
        sock.close()
        raise
    return sock


def _die_with_parent() -> None:
    """In the QEMU child: a crashed or killed Hull must not leave a VM running."""
    from hull.runtime.linux.syscalls import PR_SET_PDEATHSIG, prctl

    prctl(PR_SET_PDEATHSIG, signal.SIGKILL)


@dataclass
class QemuVm:
    """One running QEMU process and the host ends of its sockets."""

    config: VmConfig
    process: subprocess.Popen[bytes]
    _agent_listener: socket.socket | None
    _qmp_listener: socket.socket | None
    _qmp: Any = field(default=None)
    _channel: QmpChannel | None = field(default=None)

    @classmethod
    def launch(cls, config: VmConfig, die_with_parent: bool = True) -> QemuVm:
        """Start QEMU on config; the guest boots in the background."""
        binary = qemu_binary()
        agent = qmp = None
        log = None
        try:
            if config.qemu_log is not None:
                log = open(config.qemu_log, "wb")  # noqa: SIM115 - handed to the child
            agent = _listen(config.agent_socket)
            qmp = _listen(config.qmp_socket)
            process = subprocess.Popen(
                qemu_command(config, binary),
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=log if log is not None else subprocess.DEVNULL,
                preexec_fn=_die_with_parent if die_with_parent else None,
            )
        except BaseException:
            for sock in (agent, qmp):
                if sock is not None:
                    sock.close()
            raise
        finally:
            if log is not None:
                log.close()
        return cls(config, process, agent, qmp)

    @property
    def pid(self) -> int:
        return self.process.pid

    def accept_agent(self, timeout: float) -> socket.socket:
        """The agent channel, once QEMU has connected to it (it does so at start-up)."""
        listener = self._agent_listener
        if listener is None:
            raise HullError("the agent channel was already taken")
        conn = self._accept(listener, timeout, "agent")
        listener.close()
        self._agent_listener = None
        return conn

    def _accept(self, listener: socket.socket, timeout: float, what: str) -> socket.socket:
        deadline = time.monotonic() + timeout
        listener.settimeout(0.05)
        while True:
            try:
                conn, _ = listener.accept()
                conn.settimeout(None)
                return conn
            except TimeoutError:
                pass
            if self.process.poll() is not None:
                raise HullError(f"QEMU exited before connecting its {what} socket: {self.stderr()}")
            if time.monotonic() > deadline:
                raise HullError(f"QEMU did not connect its {what} socket in {timeout:.0f} s")

    def qmp_channel(self, timeout: float = 10.0) -> QmpChannel:
        """Hull's small QMP client (the warm-start path), connected on first use.

        A VM uses either this or qmp(), never both: each takes the one connection.
        """
        if self._channel is None:
            listener = self._qmp_listener
            if listener is None:
                raise HullError("QMP is not available for this VM")
            conn = self._accept(listener, timeout, "QMP")
            listener.close()
            self._qmp_listener = None
            try:
                self._channel = QmpChannel(conn, timeout)
            except BaseException:
                conn.close()
                raise
        return self._channel

    def qmp(self, timeout: float = 10.0) -> Any:
        """A qemu.qmp legacy (synchronous) client, connected on first use."""
        if self._qmp is None:
            listener = self._qmp_listener
            if listener is None:
                raise HullError("QMP is not available for this VM")
            from qemu.qmp.legacy import QEMUMonitorProtocol

            conn = self._accept(listener, timeout, "QMP")
            listener.close()
            self._qmp_listener = None
            client = QEMUMonitorProtocol(conn)
            client.connect(negotiate=True)
            self._qmp = client
        return self._qmp

    def status(self) -> str:
        """QEMU's run state ("running", "paused", "internal-error", "shutdown", ...)."""
        if self._channel is not None:
            return str(self._channel.execute("query-status")["status"])
        return str(self.qmp().cmd("query-status")["status"])

    def quit(self, timeout: float = 5.0) -> None:
        """Ask QEMU to quit over QMP; kill it if it does not."""
        if self.process.poll() is None:
            try:
                if self._channel is not None:
                    self._channel.execute("quit")
                else:
                    self.qmp().cmd("quit")
            except Exception:  # noqa: BLE001 - any QMP failure ends in the kill below
                pass
        self.wait_or_kill(timeout)

    def wait_or_kill(self, timeout: float) -> int:
        try:
            return self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            return self.process.wait()

    def stderr(self) -> str:
        """What QEMU said on stderr (its log file)."""
        if self.config.qemu_log is None:
            return ""
        try:
            return self.config.qemu_log.read_text(errors="replace").strip()[-2000:]
        except OSError:
            return ""

    def console_tail(self, lines: int = 20) -> str:
        try:
            text = self.config.console_log.read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])

    def close(self) -> None:
        """Kill QEMU (if still running), reap it and close every host socket."""
        if self.process.poll() is None:
            self.process.kill()
        self.process.wait()
        if self._qmp is not None:
            try:
                self._qmp.close()
            except Exception:  # noqa: BLE001 - QEMU is gone; closing is best effort
                pass
            self._qmp = None
        if self._channel is not None:
            self._channel.close()
            self._channel = None
        for listener in (self._agent_listener, self._qmp_listener):
            if listener is not None:
                listener.close()
        self._agent_listener = self._qmp_listener = None


def qemu_identity() -> str:
    """Which QEMU build this is (path, size, mtime): a saved VM only restores into the same."""
    binary = qemu_binary()
    st = os.stat(binary)
    return f"{binary}:{st.st_size}:{st.st_mtime_ns}"
