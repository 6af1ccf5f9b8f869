"""The engine side of VM containers (--isolation=vm): the MicroVMBackend behind the seam.

A VM container lives like any other: a row, a directory, an overlay-mounted rootfs, a
hull-shim that owns its log and exit file and runs `hull container cleanup` when it
ends. What differs is the shim's "runtime": the VM supervisor (hull.vm.supervisor),
which boots the microVM and runs the container's process in it through the guest
agent. ContainerService calls in here where it would call hull-runtime:

    start   the network (a tap on the bridge, as netsetup does a veth), write
            <bundle>/vm.json, spawn the shim with the supervisor, ask it to start
    signal  the main process, through the supervisor's vm.sock (kill, stop)
    pause   QEMU stops (or continues) the vCPUs
    exec    a new process in the guest, its streams through vm.sock
    stats   the guest's figures through the agent, the VM's host CPU time
    cleanup what a killed supervisor left: QEMU or virtiofsd, the VM's run directory
            (the network goes as a container's does: netsetup.teardown)

The guest assets (kernel, initramfs) and the warm-start template are made here, in
the `hull` process, so a first use says what takes time on the user's terminal
rather than in a log.
"""

from __future__ import annotations

import os
import shutil
import signal as signals
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from hull.errors import (
    CommandNotFoundError,
    CommandNotInvokableError,
    ConfigError,
    HullError,
    StateError,
)

if TYPE_CHECKING:
    from hull.engine.containers import ContainerLayout, ContainerRecord, ContainerService
    from hull.engine.operations import StatsSample
    from hull.engine.runconfig import RunConfig
    from hull.engine.shim import ShimHandle
    from hull.vm.guestnet import GuestInterface
    from hull.vm.vmspec import VmSpec

MIN_MEMORY_MIB = 128


def check_run_config(run: RunConfig) -> None:
    """What a VM container cannot do (yet), refused at create with a clear message."""
    for mount in run.mounts:
        if mount.type not in ("bind", "volume"):
            raise ConfigError(
                f"--isolation=vm shares host directories and volumes, not {mount.type} mounts"
            )
    if run.network == "host" or run.network.startswith("container:"):
        raise ConfigError(
            f"--isolation=vm cannot share a network namespace (--network {run.network}): "
            "use bridge, a user network or none"
        )
    if run.extra_networks:
        raise ConfigError("a microVM container has one network card: give one --network")


def shape_of(run: RunConfig) -> tuple[int, int]:
    """(guest RAM in MiB, vCPUs): -m is the guest's memory, --cpus its vCPUs (rounded up)."""
    memory = max(MIN_MEMORY_MIB, (run.memory or 0) >> 20)
    cpus = max(1, int(-(-(run.cpus or 1) // 1)))
    return memory, cpus


def setup_network(
    service: ContainerService, record: ContainerRecord, layout: ContainerLayout
) -> GuestInterface | None:
    """A VM on a bridge network: its tap, lease, published ports and /etc files, set up
    as a container's (netsetup; undone by netsetup.teardown); None for --network none."""
    from hull.engine import netsetup
    from hull.engine.runconfig import uses_network

    if not uses_network(record.run):
        return None
    warnings: list[str] = []
    image_config: dict[str, Any] = {}
    if record.run.publish_all:
        image = service.images.catalog.get(record.image_id)
        image_config = ((image.config if image else None) or {}).get("config") or {}
    try:
        netsetup.setup(
            service.paths,
            service.db,
            record.id,
            record.name,
            record.run,
            image_config,
            layout.dir,
            warnings,
        )
    finally:
        for warning in warnings:
            print(f"hull: warning: {warning}", file=sys.stderr)
    return guest_interface(service, record)


def guest_interface(service: ContainerService, record: ContainerRecord) -> GuestInterface | None:
    """The guest's eth0 from the VM's endpoint (None: it has none)."""
    from hull.engine.netsetup import endpoints
    from hull.net.links import host_mtu
    from hull.vm.guestnet import GuestInterface

    found = endpoints(service.db, record.id)
    if not found:
        return None
    ep = found[0]
    return GuestInterface(ep.host_ifname, ep.mac, ep.ip, ep.prefixlen, ep.gateway, host_mtu())


def prepare(
    service: ContainerService,
    record: ContainerRecord,
    layout: ContainerLayout,
    interface: GuestInterface | None = None,
) -> VmSpec:
    """The VM's spec for this start, written to <bundle>/vm.json; assets made if missing."""
    from hull.oci.image import chain_ids
    from hull.vm.guestnet import etc_files, file_specs
    from hull.vm.microvm import guest_assets, pick_accel, stderr_notice
    from hull.vm.protocol import RunRequest
    from hull.vm.sandbox import warm_start_enabled
    from hull.vm.vmspec import ShareSpec, VmSpec

    image, spec = _image_and_spec(service, record, layout, volumes=True)
    process = spec["process"]
    user = process.get("user") or {}
    request = RunRequest(
        args=process["args"],
        env=process.get("env") or [],
        cwd=process.get("cwd") or "/",
        uid=user.get("uid", 0),
        gid=user.get("gid", 0),
        gids=user.get("additionalGids") or [],
        hostname=spec.get("hostname"),
        tty=record.run.tty,
        stdin=record.run.interactive,
        interfaces=[interface.agent_spec()] if interface else [],
        files=file_specs(etc_files(Path(layout.dir))) if interface else [],
    )
    targets = {m.target for m in record.run.mounts}
    shares = [
        ShareSpec(m["source"], m["destination"], "ro" in m.get("options", []))
        for m in spec.get("mounts") or []
        if m.get("type") == "bind" and m.get("destination") in targets
    ]
    paths = service.paths
    assets = guest_assets(paths)
    accel = pick_accel(paths, assets, stderr_notice)
    memory, cpus = shape_of(record.run)
    warm = warm_start_enabled() and not shares
    if warm:
        from hull.vm.microvm import VmShape
        from hull.vm.template import ensure_template

        try:
            ensure_template(paths, assets, VmShape(accel, memory, cpus), stderr_notice)
        except HullError as exc:
            stderr_notice(f"microVM warm start failed, booting cold instead: {exc.message}")
            warm = False
    vm_spec = VmSpec(
        root=str(paths.root),
        runroot=str(paths.runroot),
        rootfs=str(layout.rootfs),
        chain_id=chain_ids(image.diff_ids)[-1] if image.diff_ids else None,
        accel=accel,
        memory_mib=memory,
        cpus=cpus,
        process=request.body(),
        warm=warm,
        shares=shares,
        interface=interface,
    )
    vm_spec.write(Path(layout.bundle))
    return vm_spec


def start(
    service: ContainerService,
    record: ContainerRecord,
    layout: ContainerLayout,
    before_start: Callable[[ContainerRecord, str], None] | None = None,
) -> ShimHandle:
    """Boot the VM under a new shim and start its main process; the shim's handle."""
    from hull.vm import control
    from hull.vm.supervisor import supervisor_command

    shim = None
    try:
        interface = setup_network(service, record, layout)
        prepare(service, record, layout, interface)
        shim = service._spawn_shim(record, layout, runtime=supervisor_command())
        if before_start is not None:
            before_start(record, layout.shim_dir)
        control.request(layout.shim_dir, {"type": "start"})
    except BaseException:
        if shim is not None:
            _kill_supervisor(shim.shim_pid, shim.container_pid)
            cleanup(layout)
        service._teardown_network(record.id)
        raise
    return shim


def _image_and_spec(
    service: ContainerService,
    record: ContainerRecord,
    layout: ContainerLayout,
    volumes: bool = False,
) -> tuple[Any, dict[str, Any]]:
    """The container's image record and the OCI spec its flags make (as for a container)."""
    from hull.engine.spec import build_spec

    image = service.images.catalog.get(record.image_id)
    if image is None:
        raise HullError(f"the image of container {record.name} is gone")
    spec = build_spec(
        record.run,
        (image.config or {}).get("config") or {},
        record.id,
        layout.dir,
        layout.rootfs,
        volume_source=service.volume_path if volumes else None,
    )
    return image, spec


def run_attached(
    service: ContainerService, record: ContainerRecord, layout: ContainerLayout
) -> int:
    """`hull run --isolation=vm` in the foreground (no terminal, no volume): this process
    runs the VM to the workload's end, on the container's network; its exit code.
    The network stays for the caller to tear down (it does so whatever happens)."""
    from hull.oci.image import chain_ids
    from hull.vm.guestnet import etc_files
    from hull.vm.sandbox import run_in_vm

    image, spec = _image_and_spec(service, record, layout)
    interface = setup_network(service, record, layout)
    process = spec["process"]
    user = process.get("user") or {}
    memory, cpus = shape_of(record.run)
    return run_in_vm(
        Path(layout.rootfs),
        process["args"],
        process.get("env") or [],
        process.get("cwd") or "/",
        memory_mib=memory,
        cpus=cpus,
        uid=user.get("uid", 0),
        gid=user.get("gid", 0),
        gids=user.get("additionalGids") or [],
        hostname=spec.get("hostname"),
        chain_id=chain_ids(image.diff_ids)[-1] if image.diff_ids else None,
        paths=service.paths,
        interface=interface,
        files=etc_files(Path(layout.dir)) if interface else None,
    )


# ------------------------------------------------------------------ stats, top


def guest_stats(service: ContainerService, record: ContainerRecord) -> dict[str, Any]:
    """The supervisor's "stats" answer (hull.vm.gueststats reads it); StateError when
    no supervisor runs the VM (stopped, or a foreground `run` without one)."""
    from hull.vm import control

    return control.request(service.layout(record).shim_dir, {"type": "stats"})


def sample_stats(service: ContainerService, record: ContainerRecord, sample: StatsSample) -> None:
    """sample filled with the VM's figures; running=False once it is gone.

    CPU is QEMU's (and virtiofsd's) on the host, against the host's CPU time as for a
    container: what the VM costs the host (under TCG a busy vCPU is a busy host core,
    and the guest's own idea of its CPU use says little about that). Memory is the
    guest's: used (MemTotal - MemAvailable) against its RAM (-m), which is the limit
    the workload lives in. PIDs are the guest's processes but the agent; block I/O is
    the root disk's, as the guest counts it.
    """
    from hull.vm.gueststats import GuestStats

    try:
        figures = GuestStats.from_reply(guest_stats(service, record))
    except HullError:
        sample.running = False
        return
    sample.cpu_ns = figures.host_cpu_ns
    sample.mem_used = figures.mem_used
    sample.mem_limit = figures.mem_total
    sample.pids = len(figures.processes)
    sample.block_read, sample.block_write = figures.read_bytes, figures.write_bytes


def top(
    service: ContainerService, record: ContainerRecord, ps_args: list[str]
) -> tuple[list[str], list[list[str]]]:
    """`hull top` of a VM container: the guest's process table (the agent excluded) in
    `ps -ef` columns; user names from the image's /etc/passwd."""
    from hull.vm.gueststats import GuestStats, passwd_names, ps_ef

    if ps_args and ps_args not in (["-ef"], ["-e", "-f"], ["-f", "-e"]):
        raise ConfigError(
            "top of a microVM container shows `ps -ef` columns only: ps options "
            "are not supported (use `hull exec CONTAINER ps ...`)"
        )
    figures = GuestStats.from_reply(guest_stats(service, record))
    try:
        passwd = (Path(service.layout(record).rootfs) / "etc" / "passwd").read_text()
    except OSError:
        passwd = ""
    return ps_ef(figures, passwd_names(passwd), time.time())


def signal(service: ContainerService, record: ContainerRecord, signum: int) -> None:
    """A signal for the main process; SIGKILL also powers the VM off if it lingers."""
    from hull.vm import control

    layout = service.layout(record)
    try:
        if signum == signals.SIGKILL and record.state == "paused":
            control.request(layout.shim_dir, {"type": "resume"})  # the guest must run to die
        control.request(layout.shim_dir, {"type": "signal", "signal": signum})
        return
    except StateError:
        pass  # no answer: signal the supervisor itself (it forwards what it can catch)
    if not _is_supervisor(record.pid):
        raise StateError(f"container {record.name} is not running")
    try:
        os.kill(record.pid, signum)
    except ProcessLookupError:
        raise StateError(f"container {record.name} is not running") from None


def pause(service: ContainerService, record: ContainerRecord, resume: bool = False) -> None:
    """QEMU stops the vCPUs (the guest's clock stands still too), or lets them run on."""
    from hull.vm import control

    try:
        control.request(service.layout(record).shim_dir, {"type": "resume" if resume else "pause"})
    except StateError:
        if not resume:  # resuming a VM that is gone (killed meanwhile) has nothing to do
            raise


def cleanup(layout: ContainerLayout) -> None:
    """After the supervisor: kill what it left running (it was killed) and its files."""
    from hull.vm.control import control_socket
    from hull.vm.supervisor import PID_FILE, run_dir_of

    run_dir = run_dir_of(layout.shim_dir)
    try:
        supervisor = int((Path(layout.shim_dir) / "container.pid").read_text())
    except (OSError, ValueError):
        supervisor = 0
    if supervisor and _is_supervisor(supervisor):  # its shim was killed a moment ago
        os.kill(supervisor, signals.SIGKILL)
    try:
        pids = [int(p) for p in (run_dir / PID_FILE).read_text().split()]
    except (OSError, ValueError):
        pids = []
    for pid in pids:
        if _runs_in(pid, run_dir):
            try:
                os.kill(pid, signals.SIGKILL)
            except ProcessLookupError:
                pass
    for pid in pids:
        _wait_gone(pid, run_dir)
    shutil.rmtree(run_dir, ignore_errors=True)
    try:
        os.unlink(control_socket(layout.shim_dir))
    except OSError:
        pass


def exec_in_vm(
    service: ContainerService,
    record: ContainerRecord,
    command: list[str],
    env: list[str],
    workdir: str | None,
    user: str | None,
    tty: bool,
    interactive: bool,
    detach: bool,
) -> int:
    """`hull exec` into a VM container: the process's exit code (126/127 as Docker's)."""
    from hull.vm.control import ExecClient
    from hull.vm.vmspec import VmSpec

    layout = service.layout(record)
    main = VmSpec.load(Path(layout.bundle)).process
    body: dict[str, Any] = dict(main)
    body.update(args=command, env=merge_env(main.get("env") or [], env_flags(env)), main=False)
    body.update(stdin=interactive and not detach, tty=tty, mounts=[])
    terminal = tty and interactive and not detach and os.isatty(sys.stdin.fileno())
    if terminal:
        size = os.get_terminal_size(sys.stdin.fileno())
        body.update(rows=size.lines, cols=size.columns)
    for key in ("hostname", "interfaces", "files"):  # the main process's alone
        body.pop(key, None)
    if workdir:
        body["cwd"] = workdir
    if user:
        from hull.engine.userdb import resolve_user

        resolved = resolve_user(layout.rootfs, user)
        body.update(uid=resolved.uid, gid=resolved.gid, gids=list(resolved.additional_gids))
    with ExecClient(layout.shim_dir, body) as client:
        if not terminal:
            return _pump_exec(client, interactive and not detach, detach)
        from hull.engine.relay import raw_terminal

        with raw_terminal(client, sys.stdin.fileno(), send_size_now=False):
            return _pump_exec(client, True, False)  # the size went with the request


def env_flags(flags: list[str]) -> list[str]:
    """-e K=V as given; -e K takes K from this environment (skipped if unset), as Docker."""
    return [
        item if "=" in item else f"{item}={os.environ[item]}"
        for item in flags
        if "=" in item or item in os.environ
    ]


def merge_env(base: list[str], extra: list[str]) -> list[str]:
    """base with extra's K=V replacing the same K (Docker's exec -e)."""
    merged = {item.partition("=")[0]: item for item in base}
    for item in extra:
        merged[item.partition("=")[0]] = item
    return list(merged.values())


def _pump_exec(client: Any, interactive: bool, detach: bool) -> int:
    from hull.engine.relay import relay
    from hull.vm.protocol import CONTROL, STDERR, parse_control

    out = {1: sys.stdout.buffer, 2: sys.stderr.buffer}

    def on_frame(frame: Any) -> int | None:
        if frame.stream != CONTROL:
            target = out[STDERR if frame.stream == STDERR else 1]
            target.write(frame.payload)
            target.flush()
            return None
        return _exec_outcome(parse_control(frame.payload), detach)

    code = relay(client, sys.stdin.fileno() if interactive else -1, on_frame)
    if code is None:
        raise HullError("the microVM's supervisor went away during exec")
    return code


def _exec_outcome(message: dict[str, Any], detach: bool) -> int | None:
    """The exit code a control message from the exec ends with, None to go on."""
    kind = message.get("type")
    if kind == "started" and detach:
        return 0
    if kind == "exit":
        return int(message.get("code", 255))
    if kind == "error":
        code = int(message.get("code", 125))
        text = str(message.get("message") or "cannot start the process")
        if code == 127:
            raise CommandNotFoundError(text)
        if code == 126:
            raise CommandNotInvokableError(text)
        raise HullError(text)
    return None


def _kill_supervisor(shim_pid: int, supervisor_pid: int) -> None:
    for pid in (supervisor_pid, shim_pid):
        try:
            os.kill(pid, signals.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass


def _is_supervisor(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/comm") as comm:
            return comm.read().strip() == "hull-vm"
    except OSError:
        return False


def _runs_in(pid: int, run_dir: Path) -> bool:
    """pid is a live process whose command line names run_dir (QEMU, virtiofsd)."""
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            cmdline = f.read()
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read()
    except OSError:
        return False
    state = stat[stat.rindex(b")") + 2 : stat.rindex(b")") + 3]
    return state != b"Z" and os.fsencode(run_dir) in cmdline


def _wait_gone(pid: int, run_dir: Path, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while _runs_in(pid, run_dir) and time.monotonic() < deadline:
        time.sleep(0.005)
