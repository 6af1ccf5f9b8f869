"""The init path: fork a container's first process into its namespaces.

    runtime ──fork──> stage 1 ──(user ns, setns, unshare)──fork──> stage 2 = PID 1
                      exits after reporting stage 2's pid           mounts, pivot_root,
                                                                    waits for `start`, exec

The runtime is a child subreaper, so stage 2 is reparented to it (and can be
waited for) once stage 1 exits; after `create` returns it is reparented to the
caller's subreaper, as with runc under containerd's shim.
"""

from __future__ import annotations

import os
import sys

from hull.errors import HullError
from hull.runtime.channel import Channel

# hull.runtime.linux.syscalls (ctypes, ~2 ms to import) is imported by the
# children, after the fork: the parent makes the cgroup in parallel meanwhile.

TYPE_CHECKING = False
if TYPE_CHECKING:  # typing imports cost start-up time: only for mypy
    from collections.abc import Callable


class InitRequest:
    """Everything the children need, computed before fork."""

    __slots__ = (
        "config",
        "rootfs",
        "bundle",
        "state_dir",
        "namespaces",
        "cgroup_paths",
        "cgroup_v2",
        "console_fd",
        "no_pivot",
        "wait_fifo",
        "preserve_fds",
        "hooks_in_init",
        "cgroup_self_join",
        "cgroup_wait_go",
    )

    def __init__(
        self,
        config: dict,
        rootfs: str,
        bundle: str,
        state_dir: str,
        namespaces: dict[str, str | None],
        cgroup_paths: dict[str, str],
        cgroup_v2: bool,
        console_fd: int | None,
        no_pivot: bool,
        wait_fifo: bool,
        preserve_fds: int,
        hooks_in_init: bool,
        cgroup_self_join: list[str],
        cgroup_wait_go: bool,
    ) -> None:
        self.config = config
        self.rootfs = rootfs
        self.bundle = bundle
        self.state_dir = state_dir
        self.namespaces = namespaces
        self.cgroup_paths = cgroup_paths
        self.cgroup_v2 = cgroup_v2
        self.console_fd = console_fd
        self.no_pivot = no_pivot
        self.wait_fifo = wait_fifo
        self.preserve_fds = preserve_fds
        self.hooks_in_init = hooks_in_init
        self.cgroup_self_join = cgroup_self_join
        self.cgroup_wait_go = cgroup_wait_go


def child_main(fn: Callable[..., None], chan: Channel, *args: object) -> None:
    """Run fn in a forked child; report failures on the channel; never return."""
    code = 1
    try:
        fn(chan, *args)
        code = 0
    except HullError as err:
        _trace()
        code = err.exit_code if err.exit_code in (126, 127) else 1
        _report(chan, err.message)
    except OSError as err:
        _trace()
        _report(chan, f"{err.strerror or err}" + (f": {err.filename}" if err.filename else ""))
    except BaseException as err:  # noqa: BLE001 - a child must never unwind into the parent
        _trace()
        _report(chan, f"{type(err).__name__}: {err}")
    finally:
        os._exit(code)


def _trace() -> None:
    """HULL_RUNTIME_TRACE=1 prints a child's traceback, for debugging the runtime."""
    if os.environ.get("HULL_RUNTIME_TRACE"):
        import traceback

        traceback.print_exc()


def _report(chan: Channel, message: str) -> None:
    try:
        chan.send("error", message)
    except Exception:  # noqa: BLE001
        pass
    try:
        os.write(2, f"hull-runtime: {message}\n".encode())
    except OSError:
        pass


def stage1(chan: Channel, req: InitRequest) -> None:
    """Enter or create namespaces, then fork PID 1 of the new pid namespace."""
    from hull.runtime.linux import namespaces as ns
    from hull.runtime.linux import syscalls as sc

    sc.prctl(sc.PR_SET_DUMPABLE, 0)
    namespaces: dict[str, str | None] = req.namespaces
    # The parent makes the cgroup meanwhile and says "go" when it exists (v2:
    # once it moved us in). Import and unshare in the meantime; join before
    # the cgroup namespace (its root is our cgroup) and the fork.
    import hull.runtime.linux.rootfs  # noqa: F401
    import hull.runtime.process  # noqa: F401

    joined = False
    opened = ns.open_paths(namespaces)
    if "user" in namespaces:
        # Join while our credentials are still the host's; the id-map
        # exchange below must not cross "go".
        chan.expect("go")
        _join_cgroup(req)
        joined = True
        ns.join([o for o in opened if o[0] == "user"])
        if namespaces["user"] is None:
            sc.unshare(sc.CLONE_NEWUSER)
            chan.send("userns")
            chan.expect("ok")
        os.setresgid(0, 0, 0)
        os.setresuid(0, 0, 0)
    ns.join([o for o in opened if o[0] not in ("user", "cgroup")])
    flags = ns.new_flags(namespaces, exclude=("user", "cgroup"))
    if flags:
        try:
            sc.unshare(flags)
        except OSError as err:
            raise HullError(f"cannot create namespaces: {err.strerror}") from None
    if namespaces.get("time", "x") is None:
        ns.write_time_offsets((req.config.get("linux") or {}).get("timeOffsets") or {})
    if not joined:
        chan.expect("go")
        _join_cgroup(req)
    ns.join([o for o in opened if o[0] == "cgroup"])
    if "cgroup" in namespaces and namespaces["cgroup"] is None:
        try:
            sc.unshare(sc.CLONE_NEWCGROUP)
        except OSError as err:
            raise HullError(f"cannot create the cgroup namespace: {err.strerror}") from None
    pid = os.fork()
    if pid == 0:
        child_main(stage2, chan, req)
    chan.send("pid", str(pid))


def _join_cgroup(req: InitRequest) -> None:
    """cgroup v1: write "0" to each `tasks` file ourselves. A thread moving itself
    skips the grace period (2-22 ms here) that moving another process waits for."""
    for tasks in req.cgroup_self_join:
        fd = os.open(tasks, os.O_WRONLY | os.O_CLOEXEC)
        try:
            os.write(fd, b"0")
        except OSError as err:
            raise HullError(
                f"cannot join cgroup {os.path.dirname(tasks)}: {err.strerror}"
            ) from None
        finally:
            os.close(fd)


def stage2(chan: Channel, req: InitRequest) -> None:
    """PID 1: build the root filesystem, wait for start, exec the process."""
    from hull.runtime.linux import rootfs as rootfs_mod
    from hull.runtime.linux import syscalls as sc

    config: dict = req.config
    namespaces: dict[str, str | None] = req.namespaces
    process = config["process"]
    linux = config.get("linux") or {}
    os.setsid()
    if process.get("oomScoreAdj") is not None:
        try:
            with open("/proc/self/oom_score_adj", "w") as f:
                f.write(str(process["oomScoreAdj"]))
        except OSError as err:
            raise HullError(f"cannot set oomScoreAdj: {err.strerror}") from None
    fifo_dir = -1
    if req.wait_fifo:
        fifo_dir = os.open(req.state_dir, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
    if "mount" in namespaces:
        builder = rootfs_mod.RootfsBuilder(
            config,
            req.rootfs,
            req.bundle,
            req.cgroup_paths,
            bool(req.cgroup_v2),
            "user" in namespaces,
        )
        builder.prepare()
        builder.close()
    from hull.runtime.process import finalize_and_exec, preload

    seccomp_filter = preload(process, linux)
    hook_state = ""
    if req.hooks_in_init:
        import hull.runtime.hooks  # noqa: F401  (startContainer hooks run after pivot_root)

        chan.send("hooks")
        hook_state = chan.expect("ok")
        _run_hooks(config, "createContainer", hook_state)
    if "mount" in namespaces:
        if req.no_pivot:
            rootfs_mod.move_root(req.rootfs)
        else:
            rootfs_mod.pivot(req.rootfs)
    else:
        os.chroot(req.rootfs)
        os.chdir("/")
    if config.get("hostname"):
        sc.sethostname(config["hostname"])
    if config.get("domainname"):
        sc.setdomainname(config["domainname"])
    if "mount" in namespaces:
        rootfs_mod.finish(config)
    if process.get("terminal") and req.console_fd is not None:
        from hull.runtime.process import setup_console

        setup_console(process, req.console_fd)
    chan.send("ready")
    if req.wait_fifo:
        # Blocks until `start` opens the fifo for reading (runtime-spec "start").
        fd = os.open("exec.fifo", os.O_WRONLY | os.O_CLOEXEC, dir_fd=fifo_dir)
        os.write(fd, b"0")
        os.close(fd)
        os.close(fifo_dir)
    else:
        chan.expect("start")
    if req.hooks_in_init:
        _run_hooks(config, "startContainer", hook_state)
    finalize_and_exec(process, seccomp_filter, req.preserve_fds or 0)


def _run_hooks(config: dict, kind: str, state_json: str) -> None:
    """Run in the container's namespaces; hull.runtime.hooks is preloaded by stage 2."""
    hooks = (config.get("hooks") or {}).get(kind) or []
    if hooks:
        from hull.runtime.hooks import run_hooks

        run_hooks(hooks, kind, state_json)


def flush_stdio() -> None:
    """Flush Python's buffers before fork so children do not repeat output."""
    try:
        sys.stdout.flush()
        sys.stderr.flush()
    except (OSError, ValueError):
        pass
