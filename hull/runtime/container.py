"""Lifecycle operations of the runtime spec: create, start, run, kill, delete.

One function per operation, driven by `hull-runtime`'s verbs. Each failure
path undoes what it made: no state dir, cgroup, or process is left behind.
"""

from __future__ import annotations

import time

from hull.errors import ConfigError, NotFoundError, StateError
from hull.oci import runtime_spec
from hull.runtime import fastjson
from hull.runtime import posixos as os
from hull.runtime.channel import Channel, ChannelClosed, ChildError
from hull.runtime.init import InitRequest, flush_stdio, fork_child, stage1
from hull.runtime.prefork import Stage1Worker
from hull.runtime.state import (
    CREATED,
    PAUSED,
    RUNNING,
    STOPPED,
    ContainerState,
    StateStore,
    proc_start_time,
)

TYPE_CHECKING = False
if TYPE_CHECKING:
    from hull.runtime.linux.cgroups import CgroupManager

FORWARDED_SIGNALS = (1, 2, 3, 10, 12, 15, 28)  # HUP INT QUIT USR1 USR2 TERM WINCH
_INIT_HOOKS = ("prestart", "createRuntime", "createContainer", "startContainer")


def load_config(bundle: str) -> dict:
    path = os.path.join(bundle, "config.json")
    try:
        with open(path, "rb") as f:
            raw = f.read()
    except FileNotFoundError:
        raise ConfigError(f"no config.json in bundle {bundle}") from None
    except OSError as err:
        raise ConfigError(f"cannot read {path}: {err.strerror}") from None
    try:
        config = fastjson.loads(raw)
    except ValueError as err:
        raise ConfigError(f"{path} is not valid JSON: {err}") from None
    return runtime_spec.validate(config)


def _cgroup(state: ContainerState):
    from hull.runtime.linux.cgroups import manager_for

    return manager_for(state.data.get("cgroup_path"), state.id, mounts=state.cgroup_mounts)


def _check_host_support(namespaces: dict[str, str | None]) -> None:
    """Fail before stage 1 has its request on what the host plainly lacks."""
    for kind, path in namespaces.items():
        if path is not None and not os.path.exists(path):
            raise ConfigError(f"{kind} namespace path {path} does not exist")
        if path is None and kind in ("time", "cgroup", "user"):
            name = runtime_spec.NS_PROC_NAMES[kind]
            if not os.path.exists(f"/proc/self/ns/{name}"):
                raise ConfigError(f"this kernel has no {kind} namespace support")


def _check_process(process: dict) -> None:
    """Reject rlimits and capabilities this host cannot give, with a clear message.

    Called once stage 1 has "go": it cannot pass its cgroup join before that, so
    the checks cost the start nothing (stage 1 is busy meanwhile), and a failure
    aborts before any hook runs and leaves nothing behind (_abort). The seccomp
    profile needs no check here: stage 1 compiles it before "go" and reports
    libseccomp's refusal as an error.
    """
    if process.get("rlimits"):
        from hull.runtime.linux import rlimits

        rlimits.validate(process["rlimits"])
    if process.get("capabilities"):
        from hull.runtime.linux import capabilities

        capabilities.validate(process["capabilities"])


def state_json(state: ContainerState, status: str | None = None) -> str:
    data = state.oci_state()
    if status:
        data["status"] = status
    data["pid"] = state.pid
    return fastjson.dumps(data)


def run_state_hooks(config: dict, kind: str, state: ContainerState, status: str) -> None:
    """Hooks of one kind; the state JSON (a /proc read, a freezer read) only when any exist."""
    if (config.get("hooks") or {}).get(kind):
        run_runtime_hooks(config, (kind,), state_json(state, status))


def run_runtime_hooks(config: dict, kinds: tuple[str, ...], state_str: str) -> None:
    hooks = config.get("hooks") or {}
    if any(hooks.get(k) for k in kinds):
        from hull.runtime.hooks import run_hooks

        for kind in kinds:
            run_hooks(hooks.get(kind) or [], kind, state_str)


def create(
    store: StateStore,
    container_id: str,
    bundle: str,
    pid_file: str | None = None,
    console_socket: str | None = None,
    no_pivot: bool = False,
    run_mode: bool = False,
    preserve_fds: int = 0,
    console_fd: int | None = None,
    config: dict | None = None,
    stage1_worker: Stage1Worker | None = None,
) -> tuple[ContainerState, Channel]:
    """Set up the container and leave its process waiting for start.

    config: the bundle's config.json when the caller already loaded it (run).
    stage1_worker: a stage 1 forked early by the caller (prefork.prefork); used
    unless a console fd must be handed down, and reaped here once taken.
    """
    bundle = os.path.abspath(bundle)
    if config is None:
        config = load_config(bundle)
    rootfs = os.path.join(bundle, config["root"]["path"])
    if not os.path.isdir(rootfs):
        raise ConfigError(f"rootfs {rootfs} does not exist or is not a directory")
    namespaces = runtime_spec.namespaces_of(config)
    _check_host_support(namespaces)
    linux = config.get("linux") or {}
    process = config["process"]
    if process.get("terminal") and not console_socket and not run_mode:
        raise ConfigError("process.terminal is true: --console-socket is required")

    state = store.new(
        container_id,
        {
            "ociVersion": config.get("ociVersion"),
            "bundle": bundle,
            "rootfs": rootfs,
            "annotations": config.get("annotations") or {},
            "cgroup_path": linux.get("cgroupsPath") or f"/hull/{container_id}",
        },
    )
    stage1_pid = init_pid = 0
    chan: Channel | None = None
    cg = None
    try:
        if process.get("terminal") and console_socket:
            console_fd = _connect_console(console_socket)
        req = InitRequest(
            config=config,
            rootfs=rootfs,
            bundle=bundle,
            state_dir=state.dir,
            namespaces=namespaces,
            console_fd=console_fd,
            no_pivot=no_pivot,
            wait_fifo=not run_mode,
            preserve_fds=preserve_fds,
            hooks_in_init=any((config.get("hooks") or {}).get(k) for k in _INIT_HOOKS),
        )
        if (
            stage1_worker is not None
            and console_fd is None
            and stage1_worker.usable_for(namespaces)
        ):
            pid1 = stage1_worker.pid1
            stage1_pid, chan = stage1_worker.take()
            if pid1:  # the worker is the container's init: no stage 1 of its own
                stage1_pid, init_pid = 0, stage1_pid
                state.data["pid"] = init_pid
                state.data["pid_start"] = proc_start_time(init_pid)
            req.send(chan)
        else:
            if stage1_worker is not None:
                stage1_worker.discard()  # no console fd for it, or the wrong pid ns
            stage1_pid, chan = fork_child(stage1, req, inherit_fd=console_fd)
        # No ctypes here: stage 1 forks PID 1 as our child (CLONE_PARENT).
        if console_fd is not None:
            os.close(console_fd)
            console_fd = None
        # Stage 1 unshares and mounts while we make the cgroup; "go" tells it where.
        from hull.runtime.linux.cgroups import manager_for

        cg = manager_for(state.data["cgroup_path"], container_id)
        state.cgroup_mounts = cg.mounts
        v2 = cg.layout == "v2"
        resources = runtime_spec.effective_resources(config)
        cg.create(resources)
        if resources:
            cg.set(resources)
        if not run_mode:
            os.mkfifo(state.fifo, 0o622)
        if v2:
            cg.apply(stage1_pid or init_pid)
        go = {"paths": _cgroup_mount_names(cg, v2), "v2": v2, "self_join": cg.self_join_files()}
        chan.send_data("go", go)
        _check_process(process)
        state.save()  # "creating", while stage 1 joins and forks PID 1
        while True:
            kind, payload = chan.recv()
            if kind == "userns":
                from hull.runtime.linux.namespaces import write_id_maps

                write_id_maps(stage1_pid, linux["uidMappings"], linux["gidMappings"])
                chan.send("ok")
            elif kind == "pid":
                init_pid = int(payload)  # stage 1 is reaped once PID 1 is ready
                state.data["pid"] = init_pid
                state.data["pid_start"] = proc_start_time(init_pid)
            elif kind == "hooks":
                hook_state = state_json(state, "creating")
                run_runtime_hooks(config, ("prestart", "createRuntime"), hook_state)
                chan.send("ok", hook_state)
            elif kind == "ready":
                break
            elif kind == "error":
                raise ChildError(payload)
        if stage1_pid:
            os.waitpid(stage1_pid, 0)
            stage1_pid = 0
        state.data["status"] = CREATED
        if not run_mode:
            state.save()  # run saves it right after "start", off the critical path
        if pid_file:
            write_pid_file(pid_file, init_pid)
        if not run_mode:
            late_join(cg, init_pid, background=True)
        return state, chan
    except ChannelClosed:
        message = _last_error(chan)
        _abort(state, cg, chan, stage1_pid, init_pid)
        raise StateError(message or "container init exited during setup") from None
    except ChildError as err:
        _abort(state, cg, chan, stage1_pid, init_pid)
        raise StateError(str(err)) from None
    except BaseException:
        _abort(state, cg, chan, stage1_pid, init_pid)
        raise
    finally:
        if console_fd is not None:
            os.close(console_fd)


def _last_error(chan: Channel | None) -> str | None:
    """What a child reported before it exited, when our send found it gone (its
    message and exit can come before we read: a failed unshare before "go")."""
    if chan is None:
        return None
    try:
        while True:
            kind, payload = chan.recv()  # no writer is left: data, then EOF
            if kind == "error":
                return payload
    except (ChannelClosed, OSError, UnicodeDecodeError):
        return None


def _cgroup_mount_names(cg, v2: bool) -> dict[str, str]:
    """Name under /sys/fs/cgroup inside the container -> the container's host dir."""
    dirs = cg.hierarchy_dirs()
    if v2:
        return {"": next(iter(dirs.values()))} if dirs else {}
    return {os.path.basename(mountpoint): d for mountpoint, d in dirs.items()}


def late_join(cg: CgroupManager, pid: int, background: bool = False) -> None:
    """Join dirs that limit nothing (hybrid's cgroup2) off the critical path.

    Moving another process waits for an RCU grace period (up to 20 ms here):
    `create` leaves that wait to a forked child it does not wait for, a
    foreground `run` skips it, as it would delay a short-lived container's exit.
    """
    if cg.layout == "v2":
        return
    dirs = cg.late_join_dirs()
    if not dirs:
        return
    if background:
        flush_stdio()
        if os.fork() != 0:
            return
        os.setsid()
        # Hold nothing of create's: the channel's read end above all, where stage 2
        # would otherwise leave a `start` error unread instead of on its stderr.
        os.closerange(3, 1 << 20)
    for directory in dirs:
        try:
            with open(os.path.join(directory, "cgroup.procs"), "w") as f:
                f.write(str(pid))
        except OSError:
            pass  # the process may already be gone; these dirs hold no limits
    if background:
        os._exit(0)


def _connect_console(path: str) -> int:
    import socket

    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.connect(path)
    except OSError as err:
        sock.close()
        raise ConfigError(f"cannot connect to console socket {path}: {err.strerror}") from None
    return sock.detach()


def _abort(state, cg, chan, stage1_pid: int, init_pid: int) -> None:
    """Undo a failed create: kill the children, drop the cgroup (cg: None when it
    was not made yet) and state dir."""
    for pid in (init_pid, stage1_pid):
        if pid:
            try:
                os.kill(pid, 9)
            except ProcessLookupError:
                pass
    for pid in (stage1_pid, init_pid):
        if pid:
            _reap(pid)
    if chan is not None:
        chan.close()
    if cg is not None:
        try:
            for pid in cg.pids():
                os.kill(pid, 9)
        except OSError:
            pass
        cg.destroy()
    state.data["status"] = STOPPED
    StateStore(os.path.dirname(state.dir)).remove(state.id)


def _reap(pid: int) -> None:
    try:
        os.waitpid(pid, 0)
    except ChildProcessError:
        pass


def write_pid_file(path: str, pid: int) -> None:
    tmp = f"{path}.{os.getpid()}.tmp"
    with open(tmp, "w") as f:
        f.write(str(pid))
    os.rename(tmp, path)


def start(store: StateStore, container_id: str) -> None:
    """Release a created container's process (the runtime spec's "start")."""
    state = store.load(container_id)
    status = state.status()
    if status != CREATED:
        raise StateError(f"cannot start a container that is {status}")
    fd = os.open(state.fifo, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    try:
        os.set_blocking(fd, True)
        deadline = time.monotonic() + 10
        while True:
            data = os.read(fd, 1)
            if data:
                break
            if not state.alive():
                raise StateError("container init exited before start")
            if time.monotonic() > deadline:
                raise StateError("container init did not answer start")
            time.sleep(0.001)
    finally:
        os.close(fd)
    os.unlink(state.fifo)
    run_state_hooks(_config_of(state), "poststart", state, RUNNING)


def _config_of(state: ContainerState) -> dict:
    try:
        return load_config(state.data["bundle"])
    except ConfigError:
        return {}


def run(
    store: StateStore,
    container_id: str,
    bundle: str,
    detach: bool = False,
    pid_file: str | None = None,
    console_socket: str | None = None,
    no_pivot: bool = False,
    preserve_fds: int = 0,
    keep: bool = False,
    on_created=None,
    stage1_worker: Stage1Worker | None = None,
) -> int:
    """create + start; in the foreground, wait and return the exit code.

    on_created(state), when given, runs once the container exists and before it
    starts: the engine records the pid there when it runs a container in-process.
    """
    import _signal

    config = load_config(os.path.abspath(bundle))
    console_fd = tty_sock = None
    if not console_socket and not detach and config["process"].get("terminal"):
        # No console socket: the pty master comes back to us and we proxy our stdio.
        import socket

        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        tty_sock, console_fd = ours.detach(), theirs.detach()
    try:
        state, chan = create(
            store,
            container_id,
            bundle,
            pid_file=pid_file,
            console_socket=console_socket,
            no_pivot=no_pivot,
            run_mode=True,
            preserve_fds=preserve_fds,
            console_fd=console_fd,
            config=config,
            stage1_worker=stage1_worker,
        )
    except BaseException:
        if tty_sock is not None:
            os.close(tty_sock)
        raise
    pid = state.pid
    if on_created is not None:
        try:
            on_created(state)
        except BaseException:
            chan.close()
            destroy(store, state)
            raise
    master = None
    if tty_sock is not None:
        from hull.runtime.tty import receive_master

        master = receive_master(tty_sock)
    if not detach:
        for signum in FORWARDED_SIGNALS:
            _signal.signal(signum, lambda s, _f: _forward(pid, s))
    try:
        chan.send("start")
    except ChannelClosed:
        pass  # it failed ahead of "start" (run drops privileges early): its error is queued
    try:
        state.save()  # "created": from now on the status is derived (running, stopped)
    except BaseException:
        chan.close()
        destroy(store, state, config)
        raise
    if detach:
        late_join(_cgroup(state), pid)
    if not detach and master is None and not (config.get("hooks") or {}).get("poststart"):
        # Nothing to do between the exec and the exit: wait for the exit alone (an
        # exec error is in the channel by then) rather than wake up at the exec too.
        code = wait_exit(pid)
        os.set_blocking(chan.rfd, False)
        exec_error = _last_error(chan)
        chan.close()
        if exec_error is not None:
            os.write(2, f"hull-runtime: {exec_error}\n".encode())
        if not keep:
            destroy(store, state, config, reaped=True)
        return code
    exec_error = None
    try:
        kind, payload = chan.recv()
        if kind == "error":
            exec_error = payload
    except ChannelClosed:
        pass
    chan.close()
    if exec_error is None:
        run_state_hooks(config, "poststart", state, RUNNING)
    if detach:
        if exec_error is not None:
            _reap(pid)
            destroy(store, state, config)
            raise StateError(exec_error)
        return 0
    if master is not None:
        from hull.runtime.tty import proxy

        proxy(master)
    code = wait_exit(pid)
    if exec_error is not None:
        os.write(2, f"hull-runtime: {exec_error}\n".encode())
    if not keep:
        destroy(store, state, config, reaped=True)
    return code


def _own_pid_namespace(config: dict | None) -> bool:
    if config is None:
        return False
    for ns in (config.get("linux") or {}).get("namespaces") or []:
        if ns.get("type") == "pid":
            return not ns.get("path")
    return False


def _forward(pid: int, signum: int) -> None:
    try:
        os.kill(pid, signum)
    except ProcessLookupError:
        pass


def wait_exit(pid: int) -> int:
    """Wait for our child (stage 1 forked it with CLONE_PARENT); 128+N for a signal."""
    from hull.gc_pause import resume

    resume()  # the launcher paused collection for the start; a wait may be long
    _, status = os.waitpid(pid, 0)
    code = os.waitstatus_to_exitcode(status)
    return 128 - code if code < 0 else code


def kill(store: StateStore, container_id: str, signum: int, all_processes: bool = False) -> None:
    state = store.load(container_id)
    status = state.status()
    if status not in (CREATED, RUNNING, PAUSED) and not all_processes:
        raise StateError(f"cannot kill a container that is {status}")
    if all_processes:
        cg = _cgroup(state)
        cg.kill_all(signum)
        if status == PAUSED and signum == 9:
            cg.thaw()
        return
    try:
        os.kill(state.pid, signum)
    except ProcessLookupError:
        raise StateError("container process is already gone") from None


def delete(store: StateStore, container_id: str, force: bool = False) -> None:
    try:
        state = store.load(container_id)
    except NotFoundError:
        if force:
            return
        raise
    status = state.status()
    if status in (RUNNING, PAUSED) and not force:
        raise StateError(f"cannot delete a container that is {status}: stop it or use --force")
    destroy(store, state)


def destroy(
    store: StateStore, state: ContainerState, config: dict | None = None, reaped: bool = False
) -> None:
    """Kill what is left, remove the cgroup, run poststop hooks, drop the state.

    config: the bundle's config when the caller has it (run), else it is read.
    reaped: the caller waited for the init (run): when it was PID 1 of its own pid
    namespace, the kernel killed and waited for every other process in it, so the
    cgroup is removed at once; the search for processes left is the fallback.
    """
    cg = _cgroup(state)
    if reaped and _own_pid_namespace(config) and cg.try_destroy():
        run_state_hooks(_config_of(state) if config is None else config, "poststop", state, STOPPED)
        store.remove(state.id)
        return
    if not reaped and state.alive():
        try:
            os.kill(state.pid, 9)
        except ProcessLookupError:
            pass
    deadline = time.monotonic() + 5
    while cg.exists():
        try:
            pids = cg.pids()
        except OSError:
            break
        if not pids:
            break
        cg.kill_all(9)
        if cg.frozen():
            cg.thaw()
        if time.monotonic() > deadline:
            break
        time.sleep(0.005)
    cg.destroy()
    run_state_hooks(_config_of(state) if config is None else config, "poststop", state, STOPPED)
    store.remove(state.id)
