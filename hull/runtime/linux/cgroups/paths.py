"""Normalise an OCI `linux.cgroupsPath` into the path Hull uses in every hierarchy."""

from __future__ import annotations

from hull.errors import ConfigError
from hull.runtime import posixos as os

DEFAULT_PARENT = "/hull"


def normalise_cgroups_path(cgroups_path: str | None, container_id: str) -> str:
    """Turn `linux.cgroupsPath` into an absolute, clean path below each hierarchy's root.

    - None or "" -> "/hull/<container_id>".
    - An absolute path is taken relative to each hierarchy's root (as runc's cgroupfs
      driver does): "/a/b" -> <mount>/a/b.
    - A relative path is *also* taken relative to the hierarchy root ("a/b" -> "/a/b").
      The spec says "relative to the runtime's cgroup", but a runtime invoked from a
      shell or an engine sits in an arbitrary cgroup; anchoring at the root keeps the
      container's place predictable and lets `delete` find it from any process.
    ".." components cannot climb above the root; the root itself is refused because
    a container must never be confined by (or destroy) the host's root cgroup.
    """
    if not cgroups_path:
        if not container_id or "/" in container_id or container_id in (".", ".."):
            raise ConfigError(f"invalid container id for a cgroup name: {container_id!r}")
        return f"{DEFAULT_PARENT}/{container_id}"
    if "\0" in cgroups_path:
        raise ConfigError("cgroupsPath contains a NUL byte")
    if ":" in cgroups_path and not cgroups_path.startswith("/"):
        raise ConfigError(
            f"cgroupsPath {cgroups_path!r} looks like a systemd 'slice:prefix:name' path; "
            "Hull drives cgroupfs directly, give a filesystem path instead"
        )
    path = os.path.normpath("/" + cgroups_path.lstrip("/"))
    if path.startswith("//"):
        path = "/" + path.lstrip("/")
    if path == "/":
        raise ConfigError(f"cgroupsPath {cgroups_path!r} names the root cgroup")
    return path


def path_components(path: str) -> list[str]:
    """The names along a normalised cgroups path, outermost first."""
    return [part for part in path.split("/") if part]
