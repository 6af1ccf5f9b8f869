"""Namespaces: which to create, which to join, and user-namespace id maps.

Order matters and follows runc's nsexec: the user namespace comes first
(joined or created, then mapped by the parent), then the others; the pid and
time namespaces only take effect for children, hence the second fork.
"""

from __future__ import annotations

from hull.errors import KernelError
from hull.runtime import posixos as os
from hull.runtime.linux import syscalls as sc

CLONE_FLAGS = {
    "pid": sc.CLONE_NEWPID,
    "network": sc.CLONE_NEWNET,
    "mount": sc.CLONE_NEWNS,
    "ipc": sc.CLONE_NEWIPC,
    "uts": sc.CLONE_NEWUTS,
    "user": sc.CLONE_NEWUSER,
    "cgroup": sc.CLONE_NEWCGROUP,
    "time": sc.CLONE_NEWTIME,
}
# Join order for existing namespaces: user first (it grants the rights for the
# rest), mount last but one so paths stay resolvable, pid anywhere (children).
JOIN_ORDER = ("user", "ipc", "uts", "network", "pid", "time", "cgroup", "mount")


def new_flags(namespaces: dict[str, str | None], exclude: tuple[str, ...] = ()) -> int:
    flags = 0
    for kind, path in namespaces.items():
        if path is None and kind not in exclude:
            flags |= CLONE_FLAGS[kind]
    return flags


def open_paths(namespaces: dict[str, str | None]) -> list[tuple[str, int]]:
    """Open every namespace to join up front, so a bad path fails before fork."""
    opened: list[tuple[str, int]] = []
    try:
        for kind in JOIN_ORDER:
            path = namespaces.get(kind)
            if path:
                try:
                    opened.append((kind, os.open(path, os.O_RDONLY | os.O_CLOEXEC)))
                except OSError as err:
                    raise KernelError(
                        f"cannot open {kind} namespace {path}: {err.strerror}"
                    ) from None
    except BaseException:
        for _, fd in opened:
            os.close(fd)
        raise
    return opened


def join(opened: list[tuple[str, int]]) -> None:
    for kind, fd in opened:
        try:
            sc.setns(fd, CLONE_FLAGS[kind])
        except OSError as err:
            raise KernelError(f"cannot join {kind} namespace: {err.strerror}") from None
        os.close(fd)


def same_namespace(pid: int, kind: str) -> bool:
    """True when pid is already in our namespace of this kind (setns would fail)."""
    from hull.oci.runtime_spec import NS_PROC_NAMES  # exec only: not on stage 1's path

    name = NS_PROC_NAMES[kind]
    try:
        return os.stat(f"/proc/{pid}/ns/{name}").st_ino == os.stat(f"/proc/self/ns/{name}").st_ino
    except OSError:
        return False


def open_for_tenant(pid: int, kinds: list[str]) -> list[tuple[str, int]]:
    """The namespaces of a running container that an exec'd process must join."""
    from hull.oci.runtime_spec import NS_PROC_NAMES

    paths = {k: f"/proc/{pid}/ns/{NS_PROC_NAMES[k]}" for k in kinds if not same_namespace(pid, k)}
    return open_paths(dict(paths))


def format_id_map(mappings: list[dict]) -> str:
    return "".join(f"{m['containerID']} {m['hostID']} {m['size']}\n" for m in mappings)


def write_id_maps(pid: int, uid_mappings: list[dict], gid_mappings: list[dict]) -> None:
    """Map ids for a child's new user namespace; the parent (root on the host) writes."""
    try:
        with open(f"/proc/{pid}/uid_map", "w") as f:
            f.write(format_id_map(uid_mappings))
        with open(f"/proc/{pid}/gid_map", "w") as f:
            f.write(format_id_map(gid_mappings))
    except OSError as err:
        raise KernelError(f"cannot write user namespace id maps: {err.strerror}") from None


def write_time_offsets(offsets: dict) -> None:
    """linux.timeOffsets, written after unshare(CLONE_NEWTIME) and before the fork."""
    lines = []
    for clock, value in offsets.items():
        name = {"monotonic": "monotonic", "boottime": "boottime"}.get(clock)
        if name is None:
            raise KernelError(f"unknown clock {clock!r} in linux.timeOffsets")
        lines.append(f"{name} {int(value.get('secs', 0))} {int(value.get('nanosecs', 0))}\n")
    if lines:
        with open("/proc/self/timens_offsets", "w") as f:
            f.write("".join(lines))
