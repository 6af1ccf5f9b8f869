"""Overlay snapshots: image layers as one root filesystem, and back again.

mount_overlay stacks unpacked layers (LayerStore.ensure's bottom-to-top list)
under a container's upper dir. diff_dir and tar_layer_from_upper read an upper
dir back as changes and as a layer tar (whiteouts in their tar form), for
`hull diff` and `hull commit`. Paths may be given as str or pathlib.Path; this
module works on str (it is on `hull run`'s path: hull.paths says why).
"""

from __future__ import annotations

import errno
import os
import stat
from os.path import join

from hull.errors import ConfigError, KernelError
from hull.image.whiteout import OPAQUE_WHITEOUT, OPAQUE_XATTR, WHITEOUT_PREFIX
from hull.records import dataclass
from hull.runtime.linux import syscalls

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Iterator, Sequence
    from typing import BinaryIO

    StrPath = str | os.PathLike[str]

_PAGE_SIZE = os.sysconf("SC_PAGE_SIZE")
_OVERLAY_INDEX = "/sys/module/overlay/parameters/index"


def mount_overlay(
    lowerdirs: Sequence[StrPath],
    upper: StrPath | None,
    work: StrPath | None,
    target: StrPath,
    readonly: bool = False,
) -> None:
    """Mount lowerdirs (bottom layer first, as LayerStore.ensure returns them) at target.

    With readonly the view has no upper dir (upper/work are ignored): several
    layers become a lower-only overlay, a single one a read-only bind mount.
    Options longer than a page (many layers, long roots) are passed as short
    /proc/self/fd/N paths, which also sidesteps ',' and ':' in paths; no chdir,
    so this is safe beside other threads.
    """
    if not lowerdirs:
        raise ConfigError("an overlay needs at least one lower directory")
    if readonly and len(lowerdirs) == 1:
        _bind_readonly(os.fspath(lowerdirs[0]), os.fspath(target))
        return
    dirs: dict[str, str] = {}
    if not readonly:
        if upper is None or work is None:
            raise ConfigError("a writable overlay needs an upper and a work directory")
        dirs = {"upperdir": os.fspath(upper), "workdir": os.fspath(work)}
    top_first = [os.fspath(p) for p in reversed(lowerdirs)]
    flags = syscalls.MS_RDONLY if readonly else 0
    options = _options(top_first, dirs)
    if len(options) < _PAGE_SIZE and not _needs_escaping([*top_first, *dirs.values()]):
        _mount(options, os.fspath(target), flags)
        return
    fds: list[int] = []
    try:
        for p in [*top_first, *dirs.values()]:
            fds.append(os.open(p, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC))
        names = [f"/proc/self/fd/{fd}" for fd in fds]
        extra = dict(zip(dirs, names[len(top_first) :], strict=True))
        options = _options(names[: len(top_first)], extra)
        if len(options) >= _PAGE_SIZE:
            raise ConfigError(
                f"too many layers for one overlay mount ({len(lowerdirs)}): "
                f"the options exceed the {_PAGE_SIZE}-byte limit even with short paths"
            )
        _mount(options, os.fspath(target), flags)
    finally:
        for fd in fds:
            os.close(fd)


def _options(lower_top_first: list[str], extra: dict[str, str]) -> str:
    parts = ["lowerdir=" + ":".join(lower_top_first)]
    parts += [f"{key}={value}" for key, value in extra.items()]
    if os.path.exists(_OVERLAY_INDEX):
        parts.append("index=off")  # layers are shared by many mounts; no inode index
    return ",".join(parts)


def _needs_escaping(paths: list[str]) -> bool:
    return any(c in p for p in paths for c in ",:\\")


def _mount(options: str, target: str, flags: int) -> None:
    try:
        syscalls.mount("overlay", target, "overlay", flags, options)
    except OSError as exc:
        raise KernelError(f"cannot mount overlay at {target}: {exc.strerror}") from exc


def _bind_readonly(source: str, target: str) -> None:
    try:
        syscalls.mount(source, target, None, syscalls.MS_BIND)
    except OSError as exc:
        raise KernelError(f"cannot bind {source} at {target}: {exc.strerror}") from exc
    try:
        syscalls.mount(
            None,
            target,
            None,
            syscalls.MS_BIND | syscalls.MS_REMOUNT | syscalls.MS_RDONLY,
        )
    except OSError as exc:
        syscalls.umount2(target, syscalls.MNT_DETACH)
        raise KernelError(f"cannot make {target} read-only: {exc.strerror}") from exc


def unmount(target: StrPath) -> None:
    """Unmount target; not mounted is fine, busy falls back to a lazy detach."""
    target = os.fspath(target)
    try:
        syscalls.umount2(target, 0)
    except OSError as exc:
        if exc.errno in (errno.EINVAL, errno.ENOENT):
            return
        if exc.errno != errno.EBUSY:
            raise KernelError(f"cannot unmount {target}: {exc.strerror}") from exc
        try:
            syscalls.umount2(target, syscalls.MNT_DETACH)
        except OSError as exc2:
            raise KernelError(f"cannot unmount {target}: {exc2.strerror}") from exc2


# ------------------------------------------------------------ reading uppers


@dataclass(frozen=True)
class Change:
    """One path changed in a container, as `docker diff` prints it (A, C or D)."""

    kind: str
    path: str

    def __str__(self) -> str:
        return f"{self.kind} {self.path}"


def _is_whiteout(st: os.stat_result) -> bool:
    return stat.S_ISCHR(st.st_mode) and st.st_rdev == os.makedev(0, 0)


def _is_opaque(path: str) -> bool:
    try:
        return os.getxattr(path, OPAQUE_XATTR, follow_symlinks=False) == b"y"
    except OSError:
        return False


def _walk(root: str, rel_dir: str = "") -> Iterator[tuple[str, str, os.stat_result]]:
    """(relative path, path, lstat) for everything under root, parents first, sorted."""
    folder = join(root, rel_dir) if rel_dir else root
    for name in sorted(os.listdir(folder)):
        rel = f"{rel_dir}/{name}" if rel_dir else name
        path = join(folder, name)
        st = os.lstat(path)
        yield rel, path, st
        if stat.S_ISDIR(st.st_mode):
            yield from _walk(root, rel)


def diff_dir(upper: StrPath, lowerdirs: Sequence[StrPath] | None = None) -> list[Change]:
    """Changes an upper dir holds: D for whiteouts, C if a lower layer has the path, else A."""
    lowers = [os.fspath(p) for p in lowerdirs or []]
    changes = []
    for rel, _path, st in _walk(os.fspath(upper)):
        if _is_whiteout(st):
            changes.append(Change("D", "/" + rel))
            continue
        in_lower = any(os.path.lexists(join(low, rel)) for low in lowers)
        changes.append(Change("C" if in_lower else "A", "/" + rel))
    return changes


class _HashingWriter:
    """Counts the diff ID of what tarfile writes."""

    def __init__(self, out: BinaryIO) -> None:
        import hashlib

        self._out = out
        self.hash = hashlib.sha256()

    def write(self, data: bytes) -> int:
        self.hash.update(data)
        self._out.write(data)
        return len(data)


def tar_layer_from_upper(upper: StrPath, out: BinaryIO) -> str:
    """Write upper as an OCI layer tar (whiteouts in tar form) to out; return its diff ID."""
    import tarfile

    writer = _HashingWriter(out)
    links: dict[tuple[int, int], str] = {}
    with tarfile.open(fileobj=writer, mode="w|", format=tarfile.PAX_FORMAT) as tar:  # type: ignore[call-overload]
        for rel, path, st in _walk(os.fspath(upper)):
            parent, _, name = rel.rpartition("/")
            if _is_whiteout(st):
                info = tarfile.TarInfo(f"{parent}/{WHITEOUT_PREFIX}{name}".lstrip("/"))
                info.mtime = int(st.st_mtime)
                tar.addfile(info)
                continue
            if stat.S_ISSOCK(st.st_mode):
                continue  # sockets do not travel in layers (Docker skips them too)
            info = tar.gettarinfo(path, arcname=rel)
            info.uname = info.gname = ""
            info.pax_headers = _xattr_headers(path)
            key = (st.st_dev, st.st_ino)
            if stat.S_ISREG(st.st_mode) and st.st_nlink > 1:
                if key in links:
                    info.type = tarfile.LNKTYPE
                    info.linkname = links[key]
                    info.size = 0
                else:
                    links[key] = rel
            if info.isreg():
                with open(path, "rb") as f:
                    tar.addfile(info, f)
            else:
                tar.addfile(info)
            if stat.S_ISDIR(st.st_mode) and _is_opaque(path):
                opaque = tarfile.TarInfo(f"{rel}/{OPAQUE_WHITEOUT}")
                opaque.mtime = int(st.st_mtime)
                tar.addfile(opaque)
    return "sha256:" + writer.hash.hexdigest()


def _xattr_headers(path: str) -> dict[str, str]:
    headers = {}
    try:
        names = os.listxattr(path, follow_symlinks=False)
    except OSError:
        return {}
    for name in names:
        if name.startswith(("trusted.overlay.", "user.overlay.")):
            continue
        try:
            value = os.getxattr(path, name, follow_symlinks=False)
        except OSError:
            continue
        headers["SCHILY.xattr." + name] = value.decode("utf-8", "surrogateescape")
    return headers


__all__ = [
    "Change",
    "diff_dir",
    "mount_overlay",
    "tar_layer_from_upper",
    "unmount",
]
