"""The init path: fork a container's first process into its namespaces.

    runtime ──fork──> stage 1 ──(user ns, setns, unshare)──fork──> stage 2 = PID 1
                      exits after reporting stage 2's pid           mounts, pivot_root,
                                                                    waits for `start`, exec

Stage 1 forks stage 2 with CLONE_PARENT, so stage 2 is the runtime's own child
(and can be waited for) without the runtime becoming a child subreaper; after
`create` returns it is reparented to the caller's subreaper, as with runc under
containerd's shim.
"""

from __future__ import annotations

import sys

from hull.errors import HullError
from hull.runtime import posixos as os
from hull.runtime.channel import Channel

# hull.runtime.linux.syscalls (ctypes, ~2 ms to import) is imported by the
# children, after the fork: the parent makes the cgroup in parallel meanwhile.

TYPE_CHECKING = False
if TYPE_CHECKING:  # typing imports cost start-up time: only for mypy
    from collections.abc import Callable

    from hull.runtime.linux.rootfs import RootfsBuilder


class InitRequest:
    """Everything the children need, computed before fork."""

    __slots__ = (
        "config",
        "rootfs",
        "bundle",
        "state_dir",
        "namespaces",
        "console_fd",
        "no_pivot",
        "wait_fifo",
        "preserve_fds",
        "hooks_in_init",
    )

    def __init__(
        self,
        config: dict,
        rootfs: str,
        bundle: str,
        state_dir: str,
        namespaces: dict[str, str | None],
        console_fd: int | None,
        no_pivot: bool,
        wait_fifo: bool,
        preserve_fds: int,
        hooks_in_init: bool,
    ) -> None:
        self.config = config
        self.rootfs = rootfs
        self.bundle = bundle
        self.state_dir = state_dir
        self.namespaces = namespaces
        self.console_fd = console_fd
        self.no_pivot = no_pivot
        self.wait_fifo = wait_fifo
        self.preserve_fds = preserve_fds
        self.hooks_in_init = hooks_in_init

    def send(self, chan: Channel) -> None:
        """To a stage 1 forked before the request existed (see prefork)."""
        chan.send_data("req", {name: getattr(self, name) for name in self.__slots__})

    @classmethod
    def receive(cls, chan: Channel) -> InitRequest:
        return cls(**chan.expect_data("req"))


def worker_main(
    chan: Channel,
    pid1: bool,
    cpus: set[int],
    seccomp: bool = False,
    ahead: int = 0,
    ahead_config: str | None = None,
) -> None:
    """A Stage1Worker (hull.runtime.prefork) after its fork: preload, wait for the
    request, then be stage 1 (or, as PID 1 already, the container's init); exit
    quietly when not used. Never returns.

    seccomp: the config will likely have a profile (the engine's do): load ctypes
    and libseccomp now, while the caller is still busy, rather than after "req".
    ahead: namespaces to create now too (prefork.AHEAD_DEFAULT); stage 1 sorts
    them out against the config. ahead_config: the bundle's config.json, to make
    only those of ahead that it creates (read while we wait anyway).
    """
    try:
        from hull.runtime.linux import syscalls as sc

        sc.prctl(sc.PR_SET_DUMPABLE, 0)
        _preload_init_modules()
        if seccomp:
            _preload_seccomp()
        if ahead_config is not None:
            ahead &= _new_in_config(ahead_config)
        made = _unshare_ahead(ahead)
        req = InitRequest.receive(chan)
        os.sched_setaffinity(0, cpus)  # the runtime's CPUs again: the container inherits them
    except BaseException:  # noqa: BLE001 - unused or interrupted: the runtime reports
        os._exit(0)
    child_main(stage1, chan, req, pid1, made)


# What a worker may make before its request (prefork.AHEAD_DEFAULT): never the mount
# namespace (its copy would miss the rootfs mounted later) nor pid, user, cgroup.
_AHEAD_KINDS = ("uts", "ipc", "network")


def _new_in_config(path: str) -> int:
    """Clone flags of the namespaces a config.json lets us make ahead (_made_anew);
    none if it cannot be read: the request is what counts."""
    from hull.runtime import fastjson

    try:
        with open(path, "rb") as f:
            config = fastjson.loads(f.read())
        namespaces = {e["type"]: e.get("path") or None for e in config["linux"]["namespaces"]}
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return 0
    return _made_anew(namespaces)


def _made_anew(namespaces: dict[str, str | None]) -> int:
    """Clone flags of the uts, ipc and network namespaces these create anew, i.e.
    that may be made ahead of the request: none with a user namespace, which must
    own them and so is made first."""
    from hull.runtime.linux import namespaces as ns

    if "user" in namespaces:
        return 0
    return sum(ns.CLONE_FLAGS[k] for k in _AHEAD_KINDS if k in namespaces and namespaces[k] is None)


def _unshare_ahead(flags: int) -> list[tuple[str, int]]:
    """Create the namespaces of flags before the request names them; returns
    (kind, fd of the host's namespace of that kind) for each one made, for
    stage 1 to go back to where the config wants the host's. Nothing on failure
    (no privilege): stage 1 then creates them itself, as without a worker."""
    from hull.runtime.linux import namespaces as ns
    from hull.runtime.linux import syscalls as sc

    kinds = [kind for kind in _AHEAD_KINDS if flags & ns.CLONE_FLAGS[kind]]
    if not kinds:
        return []
    saved: list[tuple[str, int]] = []
    try:
        for kind in kinds:
            path = f"/proc/self/ns/{'net' if kind == 'network' else kind}"
            saved.append((kind, os.open(path, os.O_RDONLY | os.O_CLOEXEC)))
        sc.unshare(sum(ns.CLONE_FLAGS[kind] for kind in kinds))
    except OSError:
        for _, fd in saved:
            os.close(fd)
        return []
    return saved


def _settle_ahead(made: list[tuple[str, int]], namespaces: dict[str, str | None]) -> int:
    """Keep the namespaces made ahead that the config creates; go back to the host's
    for the others (it joins another, keeps the host's, or a user namespace must
    own them, so they are made after it). Returns the clone flags kept."""
    from hull.runtime.linux import namespaces as ns
    from hull.runtime.linux import syscalls as sc

    wanted = _made_anew(namespaces)
    kept = 0
    try:
        for kind, fd in made:
            if wanted & ns.CLONE_FLAGS[kind]:
                kept |= ns.CLONE_FLAGS[kind]
            else:
                sc.setns(fd, ns.CLONE_FLAGS[kind])
    finally:
        for _, fd in made:
            os.close(fd)  # the host's namespaces: never left open for the container
    return kept


def _preload_init_modules() -> None:
    """What stage 1 needs up to its mounts, loaded while the host's files are visible."""
    import hull.runtime.linux.namespaces  # noqa: F401
    import hull.runtime.linux.rootfs  # noqa: F401
    import hull.runtime.process  # noqa: F401


def _preload_seccomp() -> None:
    try:
        from hull.runtime.linux import seccomp

        seccomp.preload()
    except HullError:
        pass  # no libseccomp: a profile in the config fails later, with this message


def _preload_late_modules() -> None:
    """What the steps after "go" need: loaded while the parent makes the cgroup."""
    import hull.runtime.linux.capabilities  # noqa: F401
    import hull.runtime.linux.mountattr  # noqa: F401
    import hull.runtime.linux.rlimits  # noqa: F401
    import hull.runtime.linux.sibling  # noqa: F401


def fork_child(
    fn: Callable[..., None], *args: object, inherit_fd: int | None = None
) -> tuple[int, Channel]:
    """Fork a child that runs fn(its channel end, *args) under child_main; returns
    (its pid, our channel end). inherit_fd (a console) stays open across its exec."""
    chan, child_chan = Channel.pair()
    flush_stdio()
    try:
        pid = os.fork()
    except OSError:
        chan.close()
        child_chan.close()
        raise
    if pid == 0:
        chan.close()
        if inherit_fd is not None:
            os.set_inheritable(inherit_fd, True)
        child_main(fn, child_chan, *args)
    child_chan.close()
    return pid, chan


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
    if os.getenv("HULL_RUNTIME_TRACE"):
        import traceback

        traceback.print_exc()


def _report(chan: Channel, message: str) -> None:
    """Tell the runtime, which says it once (on stderr, in --log); only when nobody
    listens any more (`start` after `create` exited) is stderr ours to write."""
    try:
        chan.send("error", message)
        return
    except Exception:  # noqa: BLE001
        pass
    try:
        os.write(2, f"hull-runtime: {message}\n".encode())
    except OSError:
        pass


def stage1(
    chan: Channel,
    req: InitRequest,
    pid1: bool = False,
    made_ahead: list[tuple[str, int]] | None = None,
) -> None:
    """Enter or create namespaces, then fork PID 1 of the new pid namespace.

    pid1: we are PID 1 of the container's new pid namespace already (a worker
    forked by linux.pidns, see Stage1Worker.usable_for): go on as stage 2.
    made_ahead: namespaces the worker created before the request (_unshare_ahead).
    """
    from hull.runtime.linux import namespaces as ns
    from hull.runtime.linux import syscalls as sc

    sc.prctl(sc.PR_SET_DUMPABLE, 0)
    namespaces: dict[str, str | None] = req.namespaces
    # The parent makes the cgroup meanwhile and says "go" when it exists (v2:
    # once it moved us in). Import and unshare in the meantime; join before
    # the cgroup namespace (its root is our cgroup) and the fork.
    _preload_init_modules()

    cgroup: dict | None = None  # from "go": where the parent made our cgroup
    kept_ahead = _settle_ahead(made_ahead, namespaces) if made_ahead else 0
    opened = ns.open_paths(namespaces)
    if "user" in namespaces:
        # Past the id switch below we are the mapped uid, which may not read Hull's
        # own files (an install dir of mode 0700): load what the rest of stage 1
        # imports while we are still the host's root.
        _preload_late_modules()
        if (req.config.get("linux") or {}).get("seccomp"):
            import hull.runtime.linux.seccomp  # noqa: F401
            import hull.runtime.linux.seccomp_cache  # noqa: F401
        # Join while our credentials are still the host's; the id-map
        # exchange below must not cross "go".
        cgroup = _join_cgroup(chan)
        ns.join([o for o in opened if o[0] == "user"])
        if namespaces["user"] is None:
            sc.unshare(sc.CLONE_NEWUSER)
            chan.send("userns")
            chan.expect("ok")
        os.setresgid(0, 0, 0)
        os.setresuid(0, 0, 0)
    ns.join([o for o in opened if o[0] not in ("user", "cgroup")])
    flags = ns.new_flags(
        namespaces, exclude=("user", "cgroup", "pid") if pid1 else ("user", "cgroup")
    )
    flags &= ~kept_ahead
    if flags:
        try:
            sc.unshare(flags)
        except OSError as err:
            raise HullError(f"cannot create namespaces: {err.strerror}") from None
    if namespaces.get("time", "x") is None:
        ns.write_time_offsets((req.config.get("linux") or {}).get("timeOffsets") or {})
    # While the parent still makes the cgroup: compile seccomp and make the mounts
    # that need neither PID 1 nor the cgroup. PID 1 inherits both (it shares our
    # mount namespace) and finishes the rootfs.
    from hull.runtime.process import preload

    seccomp_filter = preload(req.config["process"], req.config.get("linux") or {}, req.state_dir)
    builder = None
    if "mount" in namespaces:
        from hull.runtime.linux.rootfs import RootfsBuilder

        builder = RootfsBuilder(req.config, req.rootfs, req.bundle, {}, False, "user" in namespaces)
        builder.prepare_early(pid1)
    _preload_late_modules()
    if cgroup is None:
        cgroup = _join_cgroup(chan)
    if builder is not None:
        builder.cgroup_paths, builder.cgroup_v2 = cgroup["paths"], cgroup["v2"]
    ns.join([o for o in opened if o[0] == "cgroup"])
    if "cgroup" in namespaces and namespaces["cgroup"] is None:
        try:
            sc.unshare(sc.CLONE_NEWCGROUP)
        except OSError as err:
            raise HullError(f"cannot create the cgroup namespace: {err.strerror}") from None
    if pid1:
        stage2(chan, req, seccomp_filter, builder)  # execs the container's process
        return
    from hull.runtime.linux.sibling import fork_sibling

    pid = fork_sibling()  # the runtime's child, not ours: it waits for it directly
    if pid == 0:
        child_main(stage2, chan, req, seccomp_filter, builder)
    chan.send("pid", str(pid))


def _join_cgroup(chan: Channel) -> dict:
    """Wait for "go" and its cgroup: {"paths": name -> host dir for the cgroup mount,
    "v2": bool, "self_join": [tasks files]}.

    cgroup v1: write "0" to each `tasks` file ourselves. A thread moving itself
    skips the grace period (2-22 ms here) that moving another process waits for.
    (v2: the parent moved us before "go".)
    """
    cgroup: dict = chan.expect_data("go")
    for tasks in cgroup["self_join"]:
        fd = os.open(tasks, os.O_WRONLY | os.O_CLOEXEC)
        try:
            os.write(fd, b"0")
        except OSError as err:
            raise HullError(
                f"cannot join cgroup {os.path.dirname(tasks)}: {err.strerror}"
            ) from None
        finally:
            os.close(fd)
    return cgroup


def stage2(
    chan: Channel,
    req: InitRequest,
    seccomp_filter: object = None,
    builder: RootfsBuilder | None = None,
) -> None:
    """PID 1: finish the root filesystem, wait for start, exec the process.

    seccomp_filter: compiled by stage 1 (process.preload), loaded just before exec.
    builder: the rootfs stage 1 began in the mount namespace we share with it.
    """
    from hull.runtime.linux import rootfs as rootfs_mod
    from hull.runtime.linux import syscalls as sc

    config: dict = req.config
    namespaces: dict[str, str | None] = req.namespaces
    process = config["process"]
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
    if builder is not None:
        builder.prepare_rest()
        builder.close()
    from hull.runtime.process import exec_prepared, prepare_exec, unprivileged_ahead

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
    prepared = None
    start_hooks = req.hooks_in_init and (config.get("hooks") or {}).get("startContainer")
    if not req.wait_fifo and not start_hooks and unprivileged_ahead(process, seccomp_filter):
        # `run`: drop privileges while the parent records the container, as runc's
        # init does before it waits (create's fifo needs them: it waits first).
        prepared = prepare_exec(process, seccomp_filter)
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
    if prepared is None:
        prepared = prepare_exec(process, seccomp_filter)
    exec_prepared(prepared, req.preserve_fds or 0)


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
