"""The tenant path: run one more process inside a running container (exec).

Like init, but every namespace is joined from /proc/<init>/ns, the root is
the init's root, and the process is placed in the container's cgroup before
it runs anything.
"""

from __future__ import annotations

import os

from hull.errors import StateError
from hull.oci.runtime_spec import NS_PROC_NAMES, namespaces_of
from hull.runtime.channel import Channel, ChannelClosed, ChildError
from hull.runtime.container import FORWARDED_SIGNALS, _forward, load_config, wait_exit
from hull.runtime.init import child_main, fork_child
from hull.runtime.linux import namespaces as ns
from hull.runtime.linux import syscalls as sc
from hull.runtime.state import RUNNING, StateStore

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable


def build_process(
    config: dict,
    args: list[str] | None = None,
    process_file: str | None = None,
    tty: bool = False,
    cwd: str | None = None,
    env: list[str] | None = None,
    user: str | None = None,
    caps: list[str] | None = None,
    no_new_privs: bool | None = None,
) -> dict:
    """The process to exec: --process FILE, or the container's own with overrides."""
    from hull.oci.runtime_spec import validate_process
    from hull.runtime import fastjson

    if process_file:
        with open(process_file, "rb") as f:
            return validate_process(fastjson.loads(f.read()))
    base = dict(config["process"])
    base["args"] = list(args or [])
    base["terminal"] = tty
    if cwd:
        base["cwd"] = cwd
    if env:
        base["env"] = list(base.get("env") or []) + list(env)
    if user:
        uid, _, gid = user.partition(":")
        base["user"] = {"uid": int(uid), "gid": int(gid or 0)}
    if caps:
        merged = {k: list(v) for k, v in (base.get("capabilities") or {}).items()}
        for kind in ("bounding", "effective", "permitted", "ambient"):
            merged[kind] = sorted(set(merged.get(kind, [])) | set(caps))
        base["capabilities"] = merged
    if no_new_privs is not None:
        base["noNewPrivileges"] = no_new_privs
    base.pop("consoleSize", None)
    return validate_process(base)


def exec_process(
    store: StateStore,
    container_id: str,
    process: dict,
    detach: bool = False,
    pid_file: str | None = None,
    console_socket: str | None = None,
    preserve_fds: int = 0,
    console_fd: int | None = None,
    on_started: Callable[[int], None] | None = None,
) -> int:
    """Run process in the container; return its exit code (0 when detached).

    console_fd: an already connected console socket (the engine's socketpair);
    on_started(pid) runs once the process is exec'd, before waiting (tty proxy).
    """
    import _signal

    from hull.runtime.container import _cgroup, _connect_console, _reap, write_pid_file

    state = store.load(container_id)
    status = state.status()
    if status != RUNNING:
        raise StateError(f"cannot exec in a container that is {status}")
    config = load_config(state.data["bundle"])
    linux = config.get("linux") or {}
    init_pid = state.pid
    kinds = [k for k in namespaces_of(config) if k in NS_PROC_NAMES]
    opened = ns.open_for_tenant(init_pid, kinds)
    root_fd = os.open(f"/proc/{init_pid}/root", os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    if process.get("terminal") and console_fd is None:
        if not console_socket:
            raise StateError("exec --tty needs --console-socket")
        console_fd = _connect_console(console_socket)
    sc.prctl(sc.PR_SET_CHILD_SUBREAPER, 1)
    stage1_pid, chan = fork_child(
        _tenant_stage1,
        opened,
        root_fd,
        process,
        linux,
        console_fd,
        preserve_fds,
        state.dir,
        inherit_fd=console_fd,
    )
    for _, fd in opened:
        os.close(fd)
    os.close(root_fd)
    if console_fd is not None:
        os.close(console_fd)
    pid = 0
    try:
        pid = int(chan.expect("pid"))
        _reap(stage1_pid)
        stage1_pid = 0
        _cgroup(state).apply(pid)
        if not detach:
            for signum in FORWARDED_SIGNALS:
                _signal.signal(signum, lambda s, _f: _forward(pid, s))
        chan.send("go")
        try:
            kind, payload = chan.recv()
            if kind == "error":
                # The process could not be exec'd: report, then its 126/127.
                os.write(2, f"hull-runtime: {payload}\n".encode())
                return 0 if detach else wait_exit(pid)
        except ChannelClosed:
            pass
    except ChildError as err:
        for p in (stage1_pid, pid):
            if p:
                _reap(p)
        raise StateError(str(err)) from None
    finally:
        chan.close()
    if pid_file:
        write_pid_file(pid_file, pid)
    if detach:
        return 0
    if on_started is not None:
        on_started(pid)
    return wait_exit(pid)


def _tenant_stage1(
    chan: Channel,
    opened: list[tuple[str, int]],
    root_fd: int,
    process: dict,
    linux: dict,
    console_fd: int | None,
    preserve_fds: int,
    state_dir: str,
) -> None:
    from hull.runtime.process import preload

    sc.prctl(sc.PR_SET_DUMPABLE, 0)
    seccomp_filter = preload(process, linux, state_dir)
    ns.join(opened)
    pid = os.fork()
    if pid == 0:
        child_main(_tenant_stage2, chan, root_fd, process, seccomp_filter, console_fd, preserve_fds)
    chan.send("pid", str(pid))


def _tenant_stage2(
    chan: Channel,
    root_fd: int,
    process: dict,
    seccomp_filter: object,
    console_fd: int | None,
    preserve_fds: int,
) -> None:
    chan.expect("go")
    os.fchdir(root_fd)
    os.chroot(".")
    os.chdir("/")
    os.close(root_fd)
    os.setsid()
    if process.get("terminal") and console_fd is not None:
        from hull.runtime.process import setup_console

        setup_console(process, console_fd, bind_console=False)
    from hull.runtime.process import finalize_and_exec

    finalize_and_exec(process, seccomp_filter, preserve_fds)
