"""Find the cgroup hierarchies under a root and tell v1, v2 and hybrid layouts apart.

On a real host the mount table (/proc/self/mountinfo) is the truth: hierarchies
are found by filesystem type and super options, not by guessing directory names.
Unit tests point `root` at a fake tree in a temp dir, which has no mounts; then the
tree itself is read (a dir with cgroup.controllers is cgroup2, any other dir a v1
hierarchy named after its controllers).
"""

from __future__ import annotations

from hull.errors import KernelError
from hull.runtime import posixos as os

DEFAULT_ROOT = "/sys/fs/cgroup"
MOUNTINFO = "/proc/self/mountinfo"

# Every v1 subsystem the kernel has had; other super options (rw, xattr,
# clone_children, release_agent=...) are not controllers.
V1_SUBSYSTEMS = frozenset(
    {
        "cpuset",
        "cpu",
        "cpuacct",
        "blkio",
        "memory",
        "devices",
        "freezer",
        "net_cls",
        "perf_event",
        "net_prio",
        "hugetlb",
        "pids",
        "rdma",
        "misc",
        "debug",
    }
)

LAYOUTS = ("v1", "v2", "hybrid")


class CgroupMount:
    """One mounted hierarchy: where it is, its type, and the controllers bound to it.

    `controllers` holds v1 subsystem names and named hierarchies such as
    "name=systemd"; for cgroup2 it is empty (its controllers are read from
    cgroup.controllers when needed). An immutable value (a plain class, not a
    dataclass: `dataclasses` costs ~5 ms to import on the runtime's start path).
    """

    __slots__ = ("mountpoint", "fstype", "controllers")

    mountpoint: str
    fstype: str  # "cgroup" (v1) or "cgroup2"
    controllers: tuple[str, ...]

    def __init__(self, mountpoint: str, fstype: str, controllers: tuple[str, ...] = ()) -> None:
        object.__setattr__(self, "mountpoint", mountpoint)
        object.__setattr__(self, "fstype", fstype)
        object.__setattr__(self, "controllers", tuple(controllers))

    def __setattr__(self, name: str, value: object) -> None:
        raise AttributeError(f"CgroupMount is immutable (cannot set {name})")

    def __delattr__(self, name: str) -> None:
        raise AttributeError(f"CgroupMount is immutable (cannot delete {name})")

    def _key(self) -> tuple[str, str, tuple[str, ...]]:
        return (self.mountpoint, self.fstype, self.controllers)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, CgroupMount):
            return NotImplemented
        return self._key() == other._key()

    def __hash__(self) -> int:
        return hash(self._key())

    def __repr__(self) -> str:
        return (
            f"CgroupMount(mountpoint={self.mountpoint!r}, fstype={self.fstype!r}, "
            f"controllers={self.controllers!r})"
        )


def _unescape(value: str) -> str:
    """mountinfo escapes space, tab, newline and backslash as \\ooo octal."""
    if "\\" not in value:
        return value
    out: list[str] = []
    i = 0
    while i < len(value):
        code = value[i + 1 : i + 4]
        if value[i] == "\\" and len(code) == 3 and all(c in "01234567" for c in code):
            out.append(chr(int(code, 8)))
            i += 4
        else:
            out.append(value[i])
            i += 1
    return "".join(out)


def parse_mountinfo(text: str) -> list[CgroupMount]:
    """The cgroup and cgroup2 mounts in a mountinfo text, in mount order."""
    mounts: list[CgroupMount] = []
    for line in text.splitlines():
        left, sep, right = line.partition(" - ")
        if not sep:
            continue
        fields = left.split()
        tail = right.split()
        if len(fields) < 5 or len(tail) < 3:
            continue
        fstype, super_options = tail[0], tail[2]
        mountpoint = _unescape(fields[4])
        if fstype == "cgroup2":
            mounts.append(CgroupMount(mountpoint, "cgroup2"))
        elif fstype == "cgroup":
            controllers = tuple(
                opt
                for opt in super_options.split(",")
                if opt in V1_SUBSYSTEMS or opt.startswith("name=")
            )
            if controllers:
                mounts.append(CgroupMount(mountpoint, "cgroup", controllers))
    return mounts


def _mounts_from_table(root: str, mountinfo: str) -> list[CgroupMount]:
    """Mounts at root or directly below it; a later mount on the same point wins."""
    try:
        with open(mountinfo, encoding="utf-8") as f:
            text = f.read()
    except OSError:
        return []
    by_point: dict[str, CgroupMount] = {}
    for mount in parse_mountinfo(text):
        point = os.path.normpath(mount.mountpoint)
        if point == root or os.path.dirname(point) == root:
            by_point.pop(point, None)
            by_point[point] = mount
    return list(by_point.values())


def _mounts_from_tree(root: str) -> list[CgroupMount]:
    """Read a (fake or bind-mounted) tree: cgroup2 if root has cgroup.controllers."""
    if os.path.isfile(os.path.join(root, "cgroup.controllers")):
        return [CgroupMount(root, "cgroup2")]
    mounts: list[CgroupMount] = []
    try:
        names = sorted(os.listdir(root))
    except OSError:
        return []
    for name in names:
        path = os.path.join(root, name)
        if os.path.islink(path) or not os.path.isdir(path):
            continue  # e.g. cpu -> cpu,cpuacct
        if os.path.isfile(os.path.join(path, "cgroup.controllers")):
            mounts.append(CgroupMount(path, "cgroup2"))
            continue
        controllers = tuple(
            part if part in V1_SUBSYSTEMS else f"name={part}" for part in name.split(",")
        )
        mounts.append(CgroupMount(path, "cgroup", controllers))
    return mounts


def find_mounts(root: str = DEFAULT_ROOT, mountinfo: str = MOUNTINFO) -> list[CgroupMount]:
    """The hierarchies that make up the layout under root.

    The mount table decides when it has mounts at or under root; a tree with no
    mounts of its own (a unit test's temp dir) is read directly.
    """
    root = os.path.normpath(root)
    return _mounts_from_table(root, mountinfo) or _mounts_from_tree(root)


def layout_of(mounts: list[CgroupMount], root: str) -> str:
    """'v2' when cgroup2 is mounted at root, 'hybrid' when v1 hierarchies sit beside a
    cgroup2 mount, else 'v1'."""
    root = os.path.normpath(root)
    if any(m.fstype == "cgroup2" and os.path.normpath(m.mountpoint) == root for m in mounts):
        return "v2"
    v1 = [m for m in mounts if m.fstype == "cgroup"]
    if not v1:
        raise KernelError(f"no cgroup hierarchy is mounted under {root}")
    if any(m.fstype == "cgroup2" for m in mounts):
        return "hybrid"
    return "v1"
