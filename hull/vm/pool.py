"""A pool of restored, idle, warmed-up microVMs: a pooled start skips QEMU and TCG warm-up.

A warm restore (hull.vm.template) still launches QEMU (about 0.1 s) and then pays
for TCG translating the guest's first request (mounting the root disk, fork, exec:
0.15 to 0.35 s). A pooled VM has done both already: it was restored from the
template with its image's root disk, ran `true` once, and waits idle, so taking it
costs a few milliseconds and its first request runs at full speed.

Daemonless. Pooled VMs are detached QEMU processes registered under the runroot:

    <runroot>/vm-pool/<template key>-<chain>/<id>/entry.json   ready, idle VMs
    <runroot>/vm-pool/n-XXXXXXXX/                             one being made
    <runroot>/vm-pool/<key>.lock, refill.log

Nobody holds a pooled VM's sockets while it idles: the host ends of its agent and
QMP connections are parked inside QEMU itself (QMP `getfd`), and the VM that takes
it pulls them out with pidfd_getfd(2) (then `closefd`). Taking is one rename(2) of
the entry's directory, so two takers never get the same VM. After a take (or a
miss) a detached refill process, started in a new session, waits for the taker to
finish (so it does not compete with the run for the CPU), then restores and warms
replacements until the pool is full again.

Keyed by image as well as shape. microVMs have no hot-plug, and the root disk's
backend cannot be swapped after a restore with the template's command line: its
-drive has an auto-named block node, and QEMU 7.2's blockdev-reopen refuses it
("Cannot change the option 'node-name'"). (With node-name=... on the -drive,
blockdev-add of the image file plus blockdev-reopen of the raw node with the new
`file` child does work in 7.2: a way to pool VMs for any image later.) Keying by
image has a second reason: the warm-up can mount that image's disk and run a
process in it, which is where most of the first request's TCG cost is; a VM pooled
before its disk is known could only warm up the agent. Images are learned on use:
each VM start of an image (with the pool on) fills that image's pool; at most
MAX_IMAGES images keep VMs, the least recently taken one gives way.

The size comes from HULL_VM_POOL, else <root>/vm/pool.json (`hull vm pool --size
N`), else 0: off, nothing is pooled and a start pays one environment lookup and one
failed open. Size 0 stops every pooled VM. reconcile() (every refill, `hull vm pool
--size`) and sweep() (for the engine's start-up sweep: the same without applying
the size) remove entries whose QEMU died, VMs of templates that no longer exist
(kernel, agent or QEMU changed), half-made entries of dead refills, and taken VMs
whose taker died (a taken VM has no parent-death signal to end it).
"""

from __future__ import annotations

import array
import contextlib
import fcntl
import json
import os
import select
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

from hull.errors import (
    CommandNotFoundError,
    CommandNotInvokableError,
    ConfigError,
    HullError,
)
from hull.files import replace_text
from hull.flocks import held_elsewhere
from hull.paths import HullPaths
from hull.vm.microvm import (
    GuestAssets,
    MicroVm,
    VmShape,
    new_run_dir,
    set_migration_capabilities,
    vm_config,
)
from hull.vm.protocol import FrameReader, RunRequest
from hull.vm.qemu import QemuVm, RamFile, VmConfig
from hull.vm.qmp import QmpChannel
from hull.vm.rootdisk import root_disk_path

POOL_ENV = "HULL_VM_POOL"
SETTING_FILE = "pool.json"  # in <root>/vm
POOL_DIR = "vm-pool"
ENTRY_FILE = "entry.json"
ACTIVE_FILE = "refill.active"  # flock(LOCK_SH) held by every running refill process
OWNER_FILE = "pool-owner.json"  # in a taken VM's run dir: who must end it
MAX_SIZE = 16
MAX_IMAGES = 4
REFILL_WAIT = 2.0  # seconds a refill waits for its taker to finish first
RESTORE_TIMEOUT = 15.0
WARM_UP = RunRequest(["true"])
AGENT_FD, QMP_FD = "hull-agent", "hull-qmp"  # QMP getfd names of the parked host ends
SYS_PIDFD_GETFD = 438
LOG_LIMIT = 64 << 10


# ---------------------------------------------------------------------- setting


def pool_root(paths: HullPaths) -> Path:
    return Path(paths.runroot) / POOL_DIR


def setting_path(paths: HullPaths) -> Path:
    return Path(paths.vm) / SETTING_FILE


def pool_size(paths: HullPaths) -> int:
    """Idle VMs to keep per image and shape: HULL_VM_POOL, else the saved setting, else 0."""
    value = os.environ.get(POOL_ENV)
    if value is not None and value.strip():
        return parse_size(value, POOL_ENV)
    try:
        saved = json.loads(setting_path(paths).read_text())
    except (OSError, ValueError):
        return 0
    return parse_size(str(saved.get("size", 0)), str(setting_path(paths)))


def parse_size(value: str, where: str) -> int:
    try:
        size = int(value.strip())
    except ValueError:
        raise ConfigError(f"{where}: the VM pool size must be a number, not {value!r}") from None
    if not 0 <= size <= MAX_SIZE:
        raise ConfigError(f"{where}: the VM pool size must be 0 to {MAX_SIZE} (got {size})")
    return size


def set_pool_size(paths: HullPaths, size: int) -> None:
    """Save the setting; shrinking stops the VMs beyond the new size (0: all of them)."""
    parse_size(str(size), "--size")
    Path(paths.vm).mkdir(parents=True, exist_ok=True)
    replace_text(setting_path(paths), json.dumps({"size": size}) + "\n")
    reconcile(paths, size=size)


# ---------------------------------------------------------------------- keys


def pool_key(template_key: str, chain_id: str) -> str:
    """A pool's directory name: which template it restores and which image disk it has."""
    return f"{template_key}-{chain_hex(chain_id)[:20]}"


def chain_hex(chain_id: str) -> str:
    return chain_id.removeprefix("sha256:")


def image_disk(paths: HullPaths, chain_id: str) -> Path:
    """The image's cached root disk (hull.vm.rootdisk names and builds it)."""
    return root_disk_path(Path(paths.vm), chain_id)


@dataclass(frozen=True)
class Entry:
    """One pooled VM as registered on disk."""

    directory: Path
    record: dict[str, Any]

    @property
    def key(self) -> str:
        return self.directory.parent.name

    @property
    def qemu_pid(self) -> int:
        return int(self.record["qemu"][0])

    @classmethod
    def load(cls, directory: Path) -> Entry | None:
        try:
            return cls(directory, json.loads((directory / ENTRY_FILE).read_text()))
        except (OSError, ValueError):
            return None


def entries(paths: HullPaths) -> list[Entry]:
    """Every ready pooled VM (for `hull vm pool`), oldest first."""
    found = []
    for key_dir in _key_dirs(pool_root(paths)):
        for directory in sorted(key_dir.iterdir()):
            entry = Entry.load(directory)
            if entry is not None:
                found.append(entry)
    return found


# ---------------------------------------------------------------------- take


def take(
    paths: HullPaths,
    assets: GuestAssets,
    shape: VmShape,
    chain_id: str | None,
    run_dir: Path | None = None,
    refill: bool = True,
) -> MicroVm | None:
    """A pooled VM of this shape and image, or None (pool off, empty, or no image).

    Either way (unless refill=False) a refill starts in the background while the
    pool is on, so the next start of this image finds a VM.
    """
    if chain_id is None:
        return None
    size = pool_size(paths)
    if size == 0:
        return None
    from hull.vm.template import template_key

    key = pool_key(template_key(assets, shape), chain_id)
    vm = _claim(paths, assets, shape, key, run_dir)
    if refill:
        with contextlib.suppress(OSError):  # no refill: the next start restores instead
            start_refill(paths, shape, chain_id)
    return vm


def _claim(
    paths: HullPaths, assets: GuestAssets, shape: VmShape, key: str, run_dir: Path | None
) -> MicroVm | None:
    key_dir = pool_root(paths) / key
    try:
        names = sorted(key_dir.iterdir())
    except OSError:
        return None
    for directory in names:
        pid, start = _identity(os.getpid())
        claimed = pool_root(paths) / f"c-{pid}-{start}-{os.urandom(4).hex()}"
        try:
            os.rename(directory, claimed)  # atomic: exactly one taker wins this entry
        except OSError:
            continue
        _touch(key_dir)  # the image was used: the last to give way to another
        try:
            return _adopt(paths, assets, shape, claimed, run_dir)
        except (HullError, OSError):
            _discard(claimed)  # dead or unusable: try the next one
    return None


def _adopt(
    paths: HullPaths, assets: GuestAssets, shape: VmShape, claimed: Path, run_dir: Path | None
) -> MicroVm:
    """The claimed entry's QEMU as a MicroVm of this process, in run_dir (or a new one)."""
    entry = Entry.load(claimed)
    if entry is None:
        raise HullError("a pooled VM without its record")
    pid, start = entry.record["qemu"]
    process = AdoptedProcess.open(pid, start)
    agent = qmp_sock = None
    target: Path | None = None
    try:
        agent = _pull_socket(process, int(entry.record["agent_inode"]))
        qmp_sock = _pull_socket(process, int(entry.record["qmp_inode"]))
        qmp = AdoptedQmp(qmp_sock)
        qmp.execute("closefd", {"fdname": AGENT_FD})
        qmp.execute("closefd", {"fdname": QMP_FD})
        target = new_run_dir(paths, run_dir)
        _write_json(target / OWNER_FILE, {"owner": _identity(os.getpid()), "qemu": [pid, start]})
        for name in ("console.log", "qemu.log"):
            with contextlib.suppress(OSError):
                os.rename(claimed / name, target / name)
        shutil.rmtree(claimed, ignore_errors=True)
        config = _config(
            assets, shape, target, Path(entry.record["disk"]), Path(entry.record["ram"])
        )
        qemu = QemuVm(config, cast("subprocess.Popen[bytes]", process), None, None)
        qemu._channel = qmp  # QemuVm.qmp_channel() hands out this (already negotiated) one
        vm = MicroVm(qemu, target)
        vm._channel = agent  # the agent channel, idle, as MicroVm.restore leaves it
        vm._reader = FrameReader(agent)
        return vm
    except BaseException:
        for sock in (agent, qmp_sock):
            if sock is not None:
                sock.close()
        process.kill()
        if target is not None:
            shutil.rmtree(target, ignore_errors=True)
        raise


def _config(assets: GuestAssets, shape: VmShape, run_dir: Path, disk: Path, ram: Path) -> VmConfig:
    """The pooled VM's command line: the template's, restoring with the image's disk."""
    return vm_config(assets, shape, run_dir, disk, RamFile(ram, shared=False), incoming=True)


# ---------------------------------------------------------------------- refill


def start_refill(
    paths: HullPaths, shape: VmShape, chain_id: str, wait_for: int | None = None
) -> subprocess.Popen[bytes]:
    """Refill this image's pool from a detached process (returns it at once).

    The child first waits (up to REFILL_WAIT) for wait_for (default: this process)
    to exit, so a run does not share its CPU with the next run's VM.
    """
    package_parent = str(Path(__file__).resolve().parents[2])
    bootstrap = (
        f"import sys;sys.path[:0]=[{package_parent!r}];"
        "from hull.vm.pool import refill_main;sys.exit(refill_main(sys.argv[1:]))"
    )
    argv = [
        sys.executable, "-I", "-S", "-c", bootstrap,
        str(paths.root), str(paths.runroot), shape.accel, str(shape.memory_mib),
        str(shape.cpus), chain_id, str(os.getpid() if wait_for is None else wait_for),
    ]  # fmt: skip
    root = pool_root(paths)
    root.mkdir(parents=True, exist_ok=True)
    log = open(root / "refill.log", "ab")  # noqa: SIM115 - handed to the child
    # A shared lock that the child inherits: held from before the child exists until
    # it exits, so refilling() never misses one (its /proc cmdline is blank at first).
    active = os.open(root / ACTIVE_FILE, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(active, fcntl.LOCK_SH)
        return subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=log,
            start_new_session=True,  # no terminal signals; outlives the caller
            close_fds=True,
            pass_fds=(active,),
        )
    finally:
        log.close()
        os.close(active)


def refilling(paths: HullPaths) -> bool:
    """Some refill process of this root still runs."""
    try:
        fd = os.open(pool_root(paths) / ACTIVE_FILE, os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        return False
    return held_elsewhere(fd)


def refill_main(argv: list[str]) -> int:
    """The refill process: `ROOT RUNROOT ACCEL MEMORY CPUS CHAIN WAIT_PID`."""
    root, runroot, accel, memory, cpus, chain_id, wait_pid = argv
    paths = HullPaths(root, runroot)
    _wait_exit(int(wait_pid), REFILL_WAIT)
    try:
        made = refill(paths, VmShape(accel, int(memory), int(cpus)), chain_id)
    except (HullError, OSError) as exc:
        message = exc.message if isinstance(exc, HullError) else str(exc)
        _log(paths, f"refill of {chain_id[:19]} failed: {message}")
        return 1
    if made:
        _log(paths, f"refill of {chain_id[:19]}: {made} VM(s) made")
    return 0


def refill(paths: HullPaths, shape: VmShape, chain_id: str) -> int:
    """Make idle VMs of shape and image until the pool holds its size; how many were made.

    One refill per image at a time (a lock; a second one leaves at once). Needs the
    template and the image's cached disk, which the start that asked for it made.
    """
    from hull.vm.microvm import guest_assets
    from hull.vm.template import find_template, template_key

    reconcile(paths)
    size = pool_size(paths)
    if size == 0:
        return 0
    assets = guest_assets(paths)
    template = find_template(paths, assets, shape)
    disk = image_disk(paths, chain_id)
    if template is None or not disk.exists():
        return 0
    key = pool_key(template_key(assets, shape), chain_id)
    root = pool_root(paths)
    root.mkdir(parents=True, exist_ok=True)
    made = 0
    with _try_lock(root / f"{key}.lock") as locked:
        if not locked:
            return 0
        key_dir = root / key
        key_dir.mkdir(exist_ok=True)
        _touch(key_dir)
        _evict_images(root, keep=key)
        while _count(key_dir) < pool_size(paths):
            entry = make_entry(paths, assets, shape, template.ram, template.state, disk)
            key_dir.mkdir(exist_ok=True)  # a sweep may have removed it meanwhile
            os.rename(entry, key_dir / f"{time.time_ns():020d}")
            made += 1
    return made


def make_entry(
    paths: HullPaths, assets: GuestAssets, shape: VmShape, ram: Path, state: Path, disk: Path
) -> Path:
    """Restore a VM from the template with disk, warm it up, park its sockets; its directory.

    QEMU is launched without a parent-death signal: it must outlive this process.
    """
    root = pool_root(paths)
    directory = Path(tempfile.mkdtemp(prefix="n-", dir=root))
    owner = _identity(os.getpid())
    _write_json(directory / ENTRY_FILE, {"owner": owner})
    qemu: QemuVm | None = None
    try:
        config = _config(assets, shape, directory, disk, ram)
        qemu = QemuVm.launch(config, die_with_parent=False)
        _write_json(directory / ENTRY_FILE, {"owner": owner, "qemu": _identity(qemu.pid)})
        qmp = qemu.qmp_channel(RESTORE_TIMEOUT)
        set_migration_capabilities(qmp)
        qmp.execute("migrate-incoming", {"uri": f"exec:cat {_quote(state)}"})
        qmp.wait_migration(RESTORE_TIMEOUT)
        agent = qemu.accept_agent(RESTORE_TIMEOUT)
        vm = MicroVm(qemu, directory)
        vm._channel, vm._reader = agent, FrameReader(agent)
        with (
            open(os.devnull, "wb") as sink,
            contextlib.suppress(CommandNotFoundError, CommandNotInvokableError),
        ):
            vm.run(WARM_UP, sink, sink)  # TCG translates the request path once, here
        _park(qmp, AGENT_FD, agent)
        _park(qmp, QMP_FD, qmp._sock)
        record = {
            "qemu": _identity(qemu.pid),
            "agent_inode": os.fstat(agent.fileno()).st_ino,
            "qmp_inode": os.fstat(qmp._sock.fileno()).st_ino,
            "disk": str(disk),
            "ram": str(ram),
            "shape": [shape.accel, shape.memory_mib, shape.cpus],
            "created": time.time(),
        }
        _write_json(directory / ENTRY_FILE, record)
        agent.close()
        qmp.close()
        for name in ("a.sock", "q.sock"):
            with contextlib.suppress(OSError):
                (directory / name).unlink()
        return directory
    except BaseException:
        if qemu is not None:
            qemu.close()
        shutil.rmtree(directory, ignore_errors=True)
        raise


# ---------------------------------------------------------------------- sweep


def reconcile(paths: HullPaths, size: int | None = None) -> int:
    """Remove what must not live on; how many QEMUs were stopped.

    - ready VMs whose QEMU died, whose template is gone (rebuilt for a new kernel,
      agent or QEMU), or beyond the pool size (all of them at size 0);
    - half-made entries whose refill process died;
    - taken VMs (in <runroot>/vm) whose taker died.
    """
    root = pool_root(paths)
    size = pool_size(paths) if size is None else size
    stopped = 0
    if root.is_dir():
        for directory in root.glob("n-*"):
            if directory.is_dir():
                stopped += _sweep_orphan(directory, directory / ENTRY_FILE)
        for directory in root.glob("c-*"):
            _, pid, start, _ = (directory.name.split("-") + ["", "", ""])[:4]
            if directory.is_dir() and not _alive(int(pid or 0), int(start or -1)):
                stopped += _discard(directory)  # its taker died while adopting it
        templates = Path(paths.vm) / "templates"
        for key_dir in _key_dirs(root):
            template_gone = not (templates / key_dir.name.split("-")[0] / "complete").exists()
            kept = 0
            for directory in sorted(key_dir.iterdir(), reverse=True):  # newest kept first
                entry = Entry.load(directory)
                alive = entry is not None and _alive(*entry.record["qemu"])
                if alive and not template_gone and kept < size:
                    kept += 1
                    continue
                stopped += _discard(directory)
            if kept == 0:
                _remove_key(root, key_dir)
    runs = Path(paths.runroot) / "vm"
    if runs.is_dir():
        for owner_file in runs.glob(f"*/{OWNER_FILE}"):
            stopped += _sweep_orphan(owner_file.parent, owner_file)
    return stopped


def drain(paths: HullPaths) -> int:
    """Stop every pooled VM (the setting stays)."""
    return reconcile(paths, size=0)


def sweep(paths: HullPaths) -> int:
    """The engine's start-up sweep: what is dead or stale, never live VMs within MAX_SIZE.

    Unlike reconcile() it does not apply the size: a `hull` command run without
    HULL_VM_POOL must not stop VMs that a HULL_VM_POOL=N run pooled.
    """
    return reconcile(paths, size=MAX_SIZE)


def _sweep_orphan(directory: Path, record_file: Path) -> int:
    """A directory whose owner died: stop its QEMU and remove it."""
    try:
        record = json.loads(record_file.read_text())
    except (OSError, ValueError):
        record = {}
    owner = record.get("owner")
    if owner is not None and _alive(*owner):
        return 0
    if owner is None and not _older_than(directory, 60.0):
        return 0  # being written right now
    return _discard(directory, record)


def _discard(directory: Path, record: dict[str, Any] | None = None) -> int:
    """Kill the directory's QEMU (if it is still the same process) and remove the directory."""
    if record is None:
        entry = Entry.load(directory)
        record = entry.record if entry is not None else {}
    stopped = 0
    qemu = record.get("qemu")
    if qemu is not None and _alive(*qemu):
        with contextlib.suppress(OSError):
            os.kill(int(qemu[0]), signal.SIGKILL)
            stopped = 1
    shutil.rmtree(directory, ignore_errors=True)
    return stopped


def _remove_key(root: Path, key_dir: Path) -> None:
    """An image's empty pool directory and lock, unless a refill holds the lock now."""
    lock = root / f"{key_dir.name}.lock"
    with _try_lock(lock) as locked, contextlib.suppress(OSError):
        if locked:
            key_dir.rmdir()
            lock.unlink()


def _evict_images(root: Path, keep: str) -> None:
    """Past MAX_IMAGES images, the least recently taken give way."""
    others = [d for d in _key_dirs(root) if d.name != keep]
    others.sort(key=lambda d: d.stat().st_mtime)
    while len(others) >= MAX_IMAGES:
        victim = others.pop(0)
        for directory in list(victim.iterdir()):
            _discard(directory)
        with contextlib.suppress(OSError):
            victim.rmdir()


def _key_dirs(root: Path) -> list[Path]:
    try:
        return [d for d in root.iterdir() if d.is_dir() and d.name[:2] not in ("n-", "c-")]
    except OSError:
        return []


def _count(key_dir: Path) -> int:
    return sum(1 for d in key_dir.iterdir() if (d / ENTRY_FILE).exists())


# ---------------------------------------------------------------------- processes


def _identity(pid: int) -> list[int]:
    """[pid, start time]: a pid alone may be reused by another process."""
    return [pid, _start_time(pid)]


def _start_time(pid: int) -> int:
    """The process's start time in ticks; -1 if it is gone (or a zombie)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    except OSError:
        return -1
    return -1 if fields[0] in ("Z", "X") else int(fields[19])


def _alive(pid: int, start: int) -> bool:
    return start >= 0 and _start_time(int(pid)) == int(start)


def _wait_exit(pid: int, timeout: float) -> None:
    try:
        pidfd = os.pidfd_open(pid)
    except OSError:
        return
    try:
        select.select([pidfd], [], [], timeout)
    finally:
        os.close(pidfd)


def _older_than(path: Path, seconds: float) -> bool:
    try:
        return time.time() - path.stat().st_mtime > seconds
    except OSError:
        return True


class AdoptedProcess:
    """Popen's poll/wait/kill for a QEMU this process did not start (it came from the pool).

    It is not our child, so no exit status: 0 once it is gone, -9 if we killed it.
    """

    def __init__(self, pid: int, pidfd: int) -> None:
        self.pid = pid
        self._pidfd: int | None = pidfd
        self.returncode: int | None = None
        self._killed = False

    @classmethod
    def open(cls, pid: int, start: int) -> AdoptedProcess:
        try:
            pidfd = os.pidfd_open(pid)
        except OSError as exc:
            raise HullError(f"the pooled VM's QEMU ({pid}) is gone") from exc
        if not _alive(pid, start):  # checked after pidfd_open: the pidfd is that process
            os.close(pidfd)
            raise HullError(f"the pooled VM's QEMU ({pid}) is gone")
        return cls(pid, pidfd)

    def poll(self) -> int | None:
        return self._wait(0.0)

    def wait(self, timeout: float | None = None) -> int:
        code = self._wait(timeout)
        if code is None:
            raise subprocess.TimeoutExpired(["qemu"], timeout or 0.0)
        return code

    def kill(self) -> None:
        self.send_signal(signal.SIGKILL)

    def send_signal(self, signum: int) -> None:
        if self._pidfd is None:
            return
        with contextlib.suppress(OSError):
            signal.pidfd_send_signal(self._pidfd, signum)
            self._killed = self._killed or signum == signal.SIGKILL

    @property
    def pidfd(self) -> int:
        if self._pidfd is None:
            raise HullError("the pooled VM's QEMU has ended")
        return self._pidfd

    def _wait(self, timeout: float | None) -> int | None:
        if self._pidfd is None:
            return self.returncode
        ready, _, _ = select.select([self._pidfd], [], [], timeout)
        if not ready:
            return None
        os.close(self._pidfd)
        self._pidfd = None
        self.returncode = -signal.SIGKILL if self._killed else 0
        return self.returncode


# ---------------------------------------------------------------------- sockets


class AdoptedQmp(QmpChannel):
    """A QMP connection negotiated by the process that pooled the VM (no greeting comes)."""

    def __init__(self, sock: socket.socket, timeout: float = 10.0) -> None:
        self._sock = sock
        self._buffer = bytearray()
        self._events: deque[dict[str, Any]] = deque()
        self._timeout = timeout


def _park(qmp: QmpChannel, name: str, sock: socket.socket) -> None:
    """Hand a copy of sock to QEMU (QMP getfd): it keeps the connection open while we are gone.

    QmpChannel has no way to send a file descriptor, so this writes the command on
    its socket itself and reads the answer through the channel's own buffer.
    """
    message = json.dumps({"execute": "getfd", "arguments": {"fdname": name}}).encode() + b"\n"
    fds = array.array("i", [sock.fileno()])
    qmp._sock.sendmsg([message], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, fds)])
    deadline = time.monotonic() + RESTORE_TIMEOUT
    while True:
        reply = qmp._read_message(deadline)
        if "event" in reply:
            qmp._events.append(reply)
        elif "return" in reply:
            return
        else:
            raise HullError(f"QEMU refused to keep the pooled VM's socket: {reply}")


def _pull_socket(process: AdoptedProcess, inode: int) -> socket.socket:
    """Duplicate the socket with this inode out of QEMU's file table (pidfd_getfd)."""
    from hull.runtime.linux.syscalls import libc

    wanted = f"socket:[{inode}]"
    fd_dir = Path(f"/proc/{process.pid}/fd")
    try:
        numbers = [int(n) for n in os.listdir(fd_dir)]
    except OSError as exc:
        raise HullError(f"cannot look into the pooled VM's QEMU: {exc}") from exc
    for number in numbers:
        try:
            if os.readlink(fd_dir / str(number)) != wanted:
                continue
        except OSError:
            continue
        fd = libc.syscall(SYS_PIDFD_GETFD, process.pidfd, number, 0)
        if fd < 0:
            raise HullError("cannot take the pooled VM's socket (pidfd_getfd failed)")
        os.set_inheritable(fd, False)
        return socket.socket(fileno=fd)
    raise HullError("the pooled VM's QEMU no longer holds its socket")


# ---------------------------------------------------------------------- files


def _write_json(path: Path, data: dict[str, Any]) -> None:
    replace_text(path, json.dumps(data) + "\n")


def _touch(path: Path) -> None:
    with contextlib.suppress(OSError):
        os.utime(path)


def _quote(path: Path) -> str:
    import shlex

    return shlex.quote(str(path))


@contextlib.contextmanager
def _try_lock(path: Path) -> Iterator[bool]:
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            yield False
            return
        yield True
    finally:
        os.close(fd)


def _log(paths: HullPaths, message: str) -> None:
    path = pool_root(paths) / "refill.log"
    with contextlib.suppress(OSError):
        if path.stat().st_size > LOG_LIMIT:
            path.write_text("")
    sys.stderr.write(f"{time.strftime('%Y-%m-%d %H:%M:%S')} {message}\n")


__all__ = [
    "AdoptedProcess",
    "Entry",
    "drain",
    "entries",
    "make_entry",
    "pool_size",
    "reconcile",
    "refill",
    "refilling",
    "set_pool_size",
    "start_refill",
    "sweep",
    "take",
]
