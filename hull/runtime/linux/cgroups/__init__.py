"""cgroupfs manager for OCI `linux.resources` on cgroup v1, v2 and the hybrid layout.

    manager = manager_for(spec_linux.get("cgroupsPath"), container_id)
    manager.create(resources)   # dirs in every hierarchy, controllers checked
    manager.set(resources)      # limits written (again on `update`)
    manager.apply(pid)          # the container process joins
    ...
    manager.destroy()

The layout is detected from the mount table under root (default /sys/fs/cgroup):
"v2" when cgroup2 is mounted at root; "hybrid" when v1 hierarchies hold the
controllers and a cgroup2 mount sits beside them (crun 1.8 refuses it, Hull
handles it like runc); "v1" otherwise. A root with no mounts of its own (a unit
test's temp dir) is read as a tree instead.
"""

from __future__ import annotations

from hull.runtime import posixos as os
from hull.runtime.linux.cgroups.base import CgroupManager
from hull.runtime.linux.cgroups.files import CgroupFiles
from hull.runtime.linux.cgroups.mounts import (
    DEFAULT_ROOT,
    MOUNTINFO,
    CgroupMount,
    find_mounts,
    layout_of,
)
from hull.runtime.linux.cgroups.paths import normalise_cgroups_path

# The managers load on first use: a host needs one of them, and the start path of
# `hull-runtime run` pays for every module it imports.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from hull.runtime.linux.cgroups.v1 import V1Manager
    from hull.runtime.linux.cgroups.v2 import V2Manager

__all__ = [
    "CgroupFiles",
    "CgroupManager",
    "CgroupMount",
    "V1Manager",
    "V2Manager",
    "detect_layout",
    "manager_for",
    "normalise_cgroups_path",
]


def __getattr__(name: str) -> type:
    if name == "V1Manager":
        from hull.runtime.linux.cgroups.v1 import V1Manager

        return V1Manager
    if name == "V2Manager":
        from hull.runtime.linux.cgroups.v2 import V2Manager

        return V2Manager
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def detect_layout(root: str = DEFAULT_ROOT, *, mountinfo: str = MOUNTINFO) -> str:
    """'v1', 'v2' or 'hybrid' for the cgroup hierarchies under root."""
    return layout_of(find_mounts(root, mountinfo), root)


def manager_for(
    cgroups_path: str | None,
    container_id: str,
    root: str = DEFAULT_ROOT,
    *,
    mounts: list[CgroupMount] | None = None,
    files: CgroupFiles | None = None,
    mountinfo: str = MOUNTINFO,
) -> CgroupManager:
    """The manager for one container's cgroup under root.

    cgroups_path follows `linux.cgroupsPath`: None -> "/hull/<container_id>"; an
    absolute or relative path is placed below each hierarchy's root (see
    normalise_cgroups_path). `mounts` and `files` let tests supply a mount table
    and a fake kernel.
    """
    path = normalise_cgroups_path(cgroups_path, container_id)
    found = mounts if mounts is not None else find_mounts(root, mountinfo)
    layout = layout_of(found, os.path.normpath(root))
    if layout == "v2":
        from hull.runtime.linux.cgroups.v2 import V2Manager

        at_root = [m for m in found if os.path.normpath(m.mountpoint) == os.path.normpath(root)]
        return V2Manager(path, at_root, files)
    from hull.runtime.linux.cgroups.v1 import V1Manager

    return V1Manager(path, found, files)
