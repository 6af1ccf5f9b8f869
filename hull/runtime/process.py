"""The last steps before execve, shared by init (create) and tenant (exec).

Order as runc's finalizeNamespace: rlimits, (seccomp if it must load while
privileged), bounding set, user and groups with keepcaps, capabilities,
no_new_privs, seccomp, close-on-exec for every fd above the preserved ones,
then execve. Runs in a forked, single-threaded child.
"""

from __future__ import annotations

import _signal  # built in and loaded at start: what `signal` wraps, without its enums

from hull.errors import CommandNotFoundError, CommandNotInvokableError, KernelError
from hull.runtime import posixos as os
from hull.runtime.linux import syscalls as sc

DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


def preload(process: dict, linux: dict, state_dir: str | None = None):
    """Import what the last steps need while the host's files are still visible.

    After pivot_root (or joining the container's mount namespace) neither the
    hull package, the standard library nor libseccomp can be found, on purpose.
    Returns the compiled seccomp filter (or None), loaded just before execve;
    state_dir: the container's; compiled filters are cached beside it.
    """
    from hull.runtime.linux import capabilities, rlimits  # noqa: F401

    compiled = None
    if linux.get("seccomp"):
        from hull.runtime.linux.seccomp_cache import cache_dir_for, compile_cached

        cache = cache_dir_for(state_dir) if state_dir else None
        compiled = compile_cached(linux["seccomp"], cache)
    if process.get("terminal"):
        import fcntl  # noqa: F401
        import socket  # noqa: F401
        import struct  # noqa: F401
        import termios  # noqa: F401
    return compiled


def env_dict(env_list: list[str]) -> dict[str, str]:
    env: dict[str, str] = {}
    for item in env_list:
        key, _, value = item.partition("=")
        env[key] = value
    return env


def find_executable(name: str, path_var: str) -> str:
    """PATH lookup with Docker's split: 127 when missing, 126 when not runnable."""
    if "/" in name:
        candidates = [name]
    else:
        candidates = [os.path.join(d or ".", name) for d in path_var.split(":")]
    denied = None
    for cand in candidates:
        try:
            st = os.stat(cand)
        except OSError:
            continue
        if (st.st_mode & 0o170000) == 0o040000:
            denied = f"{cand} is a directory"
            continue
        if not os.access(cand, os.X_OK):
            denied = f"{cand}: permission denied"
            continue
        return cand
    if denied:
        raise CommandNotInvokableError(f"exec: {denied}")
    raise CommandNotFoundError(f"exec: {name!r}: executable file not found in $PATH")


def home_of(uid: int) -> str:
    """HOME from the container's /etc/passwd (raw reads: no text-file machinery)."""
    try:
        fd = os.open("/etc/passwd", os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return "/"
    try:
        chunks = []
        while chunk := os.read(fd, 65536):
            chunks.append(chunk)
    except OSError:
        return "/"
    finally:
        os.close(fd)
    wanted = str(uid).encode()
    for line in b"".join(chunks).splitlines():
        fields = line.split(b":")
        if len(fields) >= 6 and fields[2] == wanted:
            return os.fsdecode(fields[5])
    return "/"


def setup_console(process: dict, console_fd: int, bind_console: bool = True) -> None:
    """Open a pty in the container's devpts, send the master over the console socket."""
    import fcntl
    import socket
    import termios

    master, slave = os.openpty()
    size = process.get("consoleSize")
    if size:
        import struct

        winsize = struct.pack("HHHH", size.get("height", 0), size.get("width", 0), 0, 0)
        fcntl.ioctl(slave, termios.TIOCSWINSZ, winsize)
    try:
        if not bind_console:
            raise OSError("exec: /dev/console belongs to the container's init")
        if os.path.exists("/dev") and not os.path.exists("/dev/console"):
            os.close(os.open("/dev/console", os.O_CREAT | os.O_WRONLY | os.O_CLOEXEC, 0o600))
        sc.mount(os.ttyname(slave), "/dev/console", None, sc.MS_BIND)
    except OSError:
        pass  # a read-only /dev or none: the pty still works without /dev/console
    sock = socket.socket(fileno=console_fd)
    try:
        socket.send_fds(sock, [b"/dev/ptmx"], [master])
    finally:
        sock.close()
        os.close(master)
    fcntl.ioctl(slave, termios.TIOCSCTTY, 0)
    for target in (0, 1, 2):
        os.dup2(slave, target)
    if slave > 2:
        os.close(slave)


def finalize_and_exec(process: dict, seccomp_filter, preserve_fds: int = 0) -> None:
    """Drop privileges as the spec says and exec the container's process."""
    exec_prepared(prepare_exec(process, seccomp_filter), preserve_fds)


class PreparedExec:
    """What prepare_exec() leaves for the moment of execve."""

    __slots__ = ("path", "args", "env", "seccomp_filter")

    def __init__(self, path: str, args: list[str], env: dict[str, str], seccomp_filter) -> None:
        self.path = path
        self.args = args
        self.env = env
        self.seccomp_filter = seccomp_filter  # still to load, or None


def unprivileged_ahead(process: dict, seccomp_filter) -> bool:
    """True when prepare_exec() loads no seccomp filter: then it may run before the
    container is started (as runc's init does), leaving only the filter, fd
    closing and execve for after."""
    return seccomp_filter is None or bool(process.get("noNewPrivileges"))


def prepare_exec(process: dict, seccomp_filter) -> PreparedExec:
    """Everything up to execve but no_new_privs' seccomp filter: rlimits, cwd, the
    executable, HOME, bounding set, user and groups, capabilities, no_new_privs."""
    from hull.runtime.linux import capabilities, rlimits

    env = env_dict(process.get("env") or [])
    user = process.get("user") or {}
    uid, gid = user.get("uid", 0), user.get("gid", 0)
    caps = process.get("capabilities") or {}
    nnp = bool(process.get("noNewPrivileges"))

    rlimits.apply(process.get("rlimits") or [])
    cwd = process.get("cwd") or "/"
    try:
        os.chdir(cwd)
    except OSError as err:
        raise KernelError(f"cannot change to the working directory {cwd}: {err.strerror}") from None
    path = find_executable(process["args"][0], env.get("PATH", DEFAULT_PATH))
    env.setdefault("HOME", home_of(uid))

    # Without no_new_privs only a CAP_SYS_ADMIN holder may install a filter,
    # so it goes in before capabilities are dropped (as runc does).
    if seccomp_filter is not None and not nnp:
        seccomp_filter.load()
        seccomp_filter = None
    capabilities.drop_bounding(caps)
    sc.prctl(sc.PR_SET_KEEPCAPS, 1)
    try:
        groups = user.get("additionalGids") or []
        try:
            os.setgroups(groups)
        except PermissionError:
            if groups:
                raise
        os.setresgid(gid, gid, gid)
        os.setresuid(uid, uid, uid)
    except OSError as err:
        raise KernelError(f"cannot switch to user {uid}:{gid}: {err.strerror}") from None
    sc.prctl(sc.PR_SET_KEEPCAPS, 0)
    os.umask(user.get("umask", 0o022) if user.get("umask") is not None else 0o022)
    capabilities.apply(caps)
    if nnp:
        sc.prctl(sc.PR_SET_NO_NEW_PRIVS, 1)
    return PreparedExec(path, process["args"], env, seccomp_filter)


# Signals Python ignores from its start (SIG_IGN survives execve): a container's
# process must get them with their default action, as under runc or crun.
PYTHON_IGNORED_SIGNALS = (_signal.SIGPIPE, _signal.SIGXFSZ)


def default_signals() -> None:
    """Give back the dispositions Python changed: before exec, none may stay ignored."""
    for signum in PYTHON_IGNORED_SIGNALS:
        _signal.signal(signum, _signal.SIG_DFL)


def exec_prepared(prepared: PreparedExec, preserve_fds: int = 0) -> None:
    """The seccomp filter (so few syscalls run under it), close-on-exec, execve."""
    default_signals()
    if prepared.seccomp_filter is not None:
        prepared.seccomp_filter.load()
    sc.close_range(3 + preserve_fds, 0xFFFFFFFF, sc.CLOSE_RANGE_CLOEXEC)
    path = prepared.path
    try:
        os.execve(path, prepared.args, prepared.env)
    except PermissionError as err:
        raise CommandNotInvokableError(f"exec {path}: {err.strerror}") from None
    except OSError as err:
        raise CommandNotInvokableError(f"exec {path}: {err.strerror}") from None
