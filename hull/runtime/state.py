"""Container state under --root: one directory per container.

    <root>/<id>/state.json   what `state` reports plus what later verbs need
    <root>/<id>/exec.fifo    exists while the container is "created"

The status is derived, as runc does, from facts that survive a crash of the
runtime: the fifo, whether the init pid is alive (and still the same process:
its start time is recorded), and the cgroup freezer.
"""

from __future__ import annotations

import errno
import time

from hull.errors import ConfigError, NotFoundError, StateError
from hull.runtime import fastjson
from hull.runtime import posixos as os

DEFAULT_ROOT = "/run/hull-runtime"
CREATING, CREATED, RUNNING, PAUSED, STOPPED = "creating", "created", "running", "paused", "stopped"


def check_id(container_id: str) -> str:
    """IDs become directory names: keep them to runc's alphabet."""
    ok = container_id and container_id not in (".", "..") and len(container_id) <= 1024
    if ok:
        ok = all(c.isalnum() or c in "_+-." for c in container_id) and container_id.isascii()
    if not ok:
        raise ConfigError(f"invalid container id {container_id!r}")
    return container_id


def proc_start_time(pid: int) -> int | None:
    """Field 22 of /proc/PID/stat: tells a live pid from a recycled one."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            data = f.read()
    except OSError:
        return None
    fields = data[data.rindex(b")") + 2 :].split()
    if fields[0] == b"Z":  # a zombie has exited; only its parent's wait is missing
        return None
    return int(fields[19])


class ContainerState:
    """The persisted record of one container."""

    __slots__ = ("dir", "data", "cgroup_mounts")

    def __init__(self, state_dir: str, data: dict) -> None:
        self.dir = state_dir
        self.data = data
        # The cgroup mount table create() read (not saved): later steps of the same
        # `run` rebuild the manager from it instead of parsing mountinfo again.
        self.cgroup_mounts: list | None = None

    @property
    def id(self) -> str:
        return self.data["id"]

    @property
    def pid(self) -> int:
        return self.data.get("pid", 0)

    @property
    def fifo(self) -> str:
        return os.path.join(self.dir, "exec.fifo")

    def alive(self) -> bool:
        pid = self.pid
        return pid > 0 and proc_start_time(pid) == self.data.get("pid_start")

    def status(self) -> str:
        if self.data.get("status") == CREATING:
            return CREATING if self.alive() else STOPPED
        if not self.alive():
            return STOPPED
        if os.path.exists(self.fifo):
            return CREATED
        if self.data.get("cgroup_path") and _frozen(self):
            return PAUSED
        return RUNNING

    def oci_state(self) -> dict:
        """The state of the runtime spec's "Query State" operation (plus runc's extras)."""
        status = self.status()
        out = {
            "ociVersion": self.data.get("ociVersion", "1.1.0"),
            "id": self.id,
            "status": status,
            "bundle": self.data["bundle"],
            "rootfs": self.data.get("rootfs", ""),
            "created": self.data.get("created", ""),
            "owner": "",
        }
        if status in (CREATED, RUNNING, PAUSED, CREATING):
            out["pid"] = self.pid
        else:
            out["pid"] = 0
        if self.data.get("annotations"):
            out["annotations"] = self.data["annotations"]
        return out

    def save(self) -> None:
        """Atomic: write a temp file, rename over the old one.

        No fsync: runtime state is volatile by design (--root lives under /run,
        gone at reboot), and the rename alone keeps readers from ever seeing a
        torn file. An fsync cost 4-8 ms a call on this host's disk.
        """
        path = os.path.join(self.dir, "state.json")
        tmp = path + ".tmp"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
        try:
            os.write(fd, fastjson.dumps(self.data).encode())
        finally:
            os.close(fd)
        os.rename(tmp, path)


def _frozen(state: ContainerState) -> bool:
    from hull.runtime.linux.cgroups import manager_for

    try:
        return manager_for(state.data["cgroup_path"], state.id, mounts=state.cgroup_mounts).frozen()
    except OSError:
        return False


class StateStore:
    """All containers under one --root."""

    def __init__(self, root: str = DEFAULT_ROOT) -> None:
        self.root = root

    def path(self, container_id: str) -> str:
        return os.path.join(self.root, check_id(container_id))

    def new(self, container_id: str, data: dict) -> ContainerState:
        os.makedirs(self.root, mode=0o700, exist_ok=True)
        state_dir = self.path(container_id)
        try:
            os.mkdir(state_dir, 0o700)
        except FileExistsError:
            raise StateError(f"container {container_id!r} already exists") from None
        data.setdefault("id", container_id)
        data.setdefault("created", _now_rfc3339())
        data.setdefault("status", CREATING)
        return ContainerState(state_dir, data)

    def load(self, container_id: str) -> ContainerState:
        state_dir = self.path(container_id)
        try:
            with open(os.path.join(state_dir, "state.json"), "rb") as f:
                return ContainerState(state_dir, fastjson.loads(f.read()))
        except FileNotFoundError:
            raise NotFoundError(f"container {container_id!r} does not exist") from None

    def ids(self) -> list[str]:
        try:
            names = sorted(os.listdir(self.root))
        except FileNotFoundError:
            return []
        return [n for n in names if os.path.exists(os.path.join(self.root, n, "state.json"))]

    def remove(self, container_id: str) -> None:
        state_dir = self.path(container_id)
        # state.json is all a started container leaves; the others only before
        # start or after a crash, so they are looked for when the dir is not empty.
        _unlink(state_dir, "state.json")
        try:
            os.rmdir(state_dir)
            return
        except FileNotFoundError:
            return
        except OSError as err:
            if err.errno != errno.ENOTEMPTY:
                raise
        _unlink(state_dir, "state.json.tmp")
        _unlink(state_dir, "exec.fifo")
        try:
            os.rmdir(state_dir)
        except FileNotFoundError:
            pass


def _unlink(directory: str, name: str) -> None:
    try:
        os.unlink(os.path.join(directory, name))
    except FileNotFoundError:
        pass


def _now_rfc3339() -> str:
    now = time.time()
    frac = int((now % 1) * 1e9)
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(now)) + f".{frac:09d}Z"
