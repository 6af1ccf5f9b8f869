"""Fork a container's stage 1 before the runtime has read anything (Stage1Worker).

Stage 1 must import ctypes and the init modules (~4 ms) before it can unshare,
and that import was the critical path of a container start. Forked first thing,
the worker imports while its parent reads the config and makes the cgroup, then
gets its request (init.InitRequest) over the channel instead of at fork.

Who forks it: the `hull-runtime` launcher itself, before hull.runtime.cli is
imported (from_argv); `hull run --rm` in the foreground, once its flags say so
(hull.cli.containers.run); or cli.main when the launcher did not.

This module is what runs before that fork: it imports nothing but the channel,
the module packs and, for the pid namespace, linux.pidns (no `from __future__`,
no hull.errors).
"""

import sys

from hull.runtime import modpack
from hull.runtime import posixos as os
from hull.runtime.channel import Channel

# Global flags of hull-runtime that take a value (cli.GLOBAL_FLAGS; a unit test
# keeps the two in step): from_argv skips their values to find the verb.
GLOBAL_VALUE_FLAGS = ("--root", "--log", "--log-format", "--cgroup-manager", "--rootless", "--criu")
# Verbs that start a container: their stage 1 is forked early.
PREFORK_VERBS = ("create", "run")
# Namespaces a worker makes while it waits (unshare(2) flags; a unit test keeps them
# in step with linux.syscalls): creating a network namespace alone takes ~0.7 ms, on
# the container's critical path once the request is in. Stage 1 keeps those the
# config asks for and goes back to the host's others (init.stage1). Never the mount
# namespace: its copy would miss what the caller mounts later (the rootfs).
CLONE_NEWUTS, CLONE_NEWIPC, CLONE_NEWNET = 0x04000000, 0x08000000, 0x40000000
AHEAD_DEFAULT = CLONE_NEWUTS | CLONE_NEWIPC | CLONE_NEWNET  # what runc's default spec asks


class Stage1Worker:
    """A stage 1 forked before the config is read, waiting for its InitRequest.

    pid1: it was forked into a new pid namespace (linux.pidns): it is PID 1
    already, so for a config that asks for just that it becomes the container's
    init itself, without stage 1's second fork (see usable_for).

    Not a zygote: it belongs to one invocation and runs one container, or exits
    when not used. create() takes it over; the owner calls discard() afterwards
    in any case (a no-op once taken).
    """

    __slots__ = ("pid", "chan", "pid1")

    def __init__(self, pid: int, chan: Channel, pid1: bool = False) -> None:
        self.pid = pid
        self.chan = chan
        self.pid1 = pid1

    def usable_for(self, namespaces: "dict[str, str | None]") -> bool:
        """A PID 1 worker fits a new pid namespace without a user namespace (which
        must own the pid namespace) or a time namespace (which, like a pid
        namespace, only a child enters); a plain one fits any config."""
        if not self.pid:
            return False
        if not self.pid1:
            return True
        return (
            "pid" in namespaces
            and namespaces["pid"] is None
            and "user" not in namespaces
            and "time" not in namespaces
        )

    def take(self) -> "tuple[int, Channel]":
        """Hand the process and its channel to create(), which reaps it."""
        pid, chan = self.pid, self.chan
        self.pid = 0
        return pid, chan

    def discard(self) -> None:
        """Unused: closing the channel makes it exit; reap it."""
        if not self.pid:
            return
        self.chan.close()
        try:
            os.waitpid(self.pid, 0)
        except ChildProcessError:
            pass
        self.pid = 0


def prefork(
    pid1: bool = True,
    seccomp: bool = False,
    ahead: int = AHEAD_DEFAULT,
    ahead_config: str | None = None,
) -> Stage1Worker:
    """Fork a stage 1 that waits for its request (it holds no fd but what we hold
    now and the channel), as PID 1 of a new pid namespace when pid1 is asked for
    and the kernel lets us. seccomp: the config will likely carry a profile, so
    the worker loads libseccomp while it waits (init.worker_main). ahead: the
    namespaces (of AHEAD_DEFAULT) it creates meanwhile, the config's likely ones;
    ahead_config: a config.json to read them from instead (those of ahead it
    creates anew), for a caller that has not read it yet."""
    chan, child_chan = Channel.pair()
    _flush_stdio()
    cpus = os.sched_getaffinity(0)
    elsewhere = _other_cpus(cpus)
    pid = -1
    if pid1:
        try:
            from hull.runtime.linux.pidns import fork_pid1

            pid = fork_pid1()
        except OSError:
            pid1 = False
    if pid < 0:
        pid = os.fork()
    if pid == 0:
        _child(chan, child_chan, pid1, cpus, elsewhere, seccomp, ahead, ahead_config)
    _move(pid, elsewhere)
    child_chan.close()
    return Stage1Worker(pid, chan, pid1)


def _child(
    chan: Channel,
    child_chan: Channel,
    pid1: bool,
    cpus: "set[int]",
    elsewhere: "set[int] | None",
    seccomp: bool,
    ahead: int,
    ahead_config: str | None,
) -> None:
    """The worker's side of the fork: never returns into the caller's code."""
    _move(0, elsewhere)  # if we run first, we took the caller's CPU: hand it back
    try:
        chan.close()
        modpack.install("worker")  # init and what it preloads, in one read
        from hull.runtime.init import worker_main
    except BaseException:  # noqa: BLE001 - the runtime reports when nobody answers
        os._exit(0)
    worker_main(child_chan, pid1, cpus, seccomp, ahead, ahead_config)
    os._exit(0)


def stdin_from_devnull() -> None:
    """Without -i a container reads nothing: fd 0 becomes /dev/null, as Docker's.
    A caller that runs the container in-process does it before prefork(), since
    the worker's fd 0 is the container's stdin."""
    fd = os.open(os.devnull, os.O_RDONLY)
    if fd != 0:
        os.dup2(fd, 0)
        os.close(fd)


def _other_cpus(cpus: "set[int]") -> "set[int] | None":
    """The CPUs we are not on, for the worker, so that it starts now, not when we yield.

    After the fork we go on importing at once. A fork child queued behind a busy
    parent waits for the load balancer (1-3 ms measured here); one that preempts
    its parent (EEVDF places a new task to run soon) stalls the parent as long.
    Read before the fork: after it, the read costs page-copy faults. The worker
    restores the full set (init.worker_main) once its request came.
    """
    if len(cpus) < 2:
        return None
    try:
        with open("/proc/self/stat", "rb") as f:
            here = int(f.read().rsplit(b")", 1)[1].split()[36])  # field 39: processor
    except (OSError, ValueError, IndexError):
        return None
    return (cpus - {here}) or None


def _move(pid: int, cpus: "set[int] | None") -> None:
    """Both sides call it (pid 0: the worker itself): whichever runs first after the
    fork moves the worker off the caller's CPU."""
    if cpus:
        try:
            os.sched_setaffinity(pid, cpus)
        except OSError:
            pass  # only an optimization


def _flush_stdio() -> None:
    """Flush Python's buffers before fork so the child does not repeat output."""
    try:
        sys.stdout.flush()
        sys.stderr.flush()
    except (OSError, ValueError, AttributeError):
        pass


def wants_stage1(argv: "list[str]") -> bool:
    """Whether `hull-runtime ARGV` is create or run (and not their --help)."""
    return _verb_index(argv) >= 0


def _verb_index(argv: "list[str]") -> int:
    """Where create or run is in argv (not with --help), else -1."""
    i = 0
    while i < len(argv):
        arg = argv[i]
        if arg == "--":
            return -1
        if not arg.startswith("-") or arg == "-":
            rest = argv[i + 1 :]
            wanted = arg in PREFORK_VERBS and "--help" not in rest and "-h" not in rest
            return i if wanted else -1
        if arg in GLOBAL_VALUE_FLAGS:
            i += 1  # its value (--root=DIR carries it itself)
        elif arg.partition("=")[0] in ("--help", "-h", "--version", "-v"):
            return -1
        i += 1
    return -1


def bundle_config(argv: "list[str]") -> str:
    """The config.json that `hull-runtime create|run ... [--bundle B]` will run
    (commands.create: --bundle or -b, else the working directory)."""
    rest = argv[_verb_index(argv) + 1 :]
    bundle = ""
    for i, arg in enumerate(rest):
        name, eq, value = arg.partition("=")
        if name in ("--bundle", "-b"):
            bundle = value if eq else (rest[i + 1] if i + 1 < len(rest) else "")
    return os.path.join(bundle or os.getcwd(), "config.json")


def from_argv(argv: "list[str]") -> "Stage1Worker | None":
    """For the launcher: fork the worker when argv starts a container.

    Any failure leaves the start to cli.main, which forks stage 1 itself.
    """
    if not wants_stage1(argv):
        return None
    try:
        return prefork(ahead_config=bundle_config(argv))
    except Exception:  # noqa: BLE001 - only an optimization
        return None
