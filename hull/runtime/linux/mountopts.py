"""Turn OCI mount options into mount(2) flags and fs data. Pure logic."""

from __future__ import annotations

from hull.runtime.linux import syscalls as sc

# option -> (clear?, flag)
_FLAGS: dict[str, tuple[bool, int]] = {
    "async": (True, sc.MS_SYNCHRONOUS),
    "atime": (True, sc.MS_NOATIME),
    "bind": (False, sc.MS_BIND),
    "defaults": (False, 0),
    "dev": (True, sc.MS_NODEV),
    "diratime": (True, sc.MS_NODIRATIME),
    "dirsync": (False, sc.MS_DIRSYNC),
    "exec": (True, sc.MS_NOEXEC),
    "lazytime": (False, sc.MS_LAZYTIME),
    "nolazytime": (True, sc.MS_LAZYTIME),
    "loud": (True, sc.MS_SILENT),
    "mand": (False, sc.MS_MANDLOCK),
    "noatime": (False, sc.MS_NOATIME),
    "nodev": (False, sc.MS_NODEV),
    "nodiratime": (False, sc.MS_NODIRATIME),
    "noexec": (False, sc.MS_NOEXEC),
    "nomand": (True, sc.MS_MANDLOCK),
    "norelatime": (True, sc.MS_RELATIME),
    "nostrictatime": (True, sc.MS_STRICTATIME),
    "nosuid": (False, sc.MS_NOSUID),
    "nosymfollow": (False, sc.MS_NOSYMFOLLOW),
    "symfollow": (True, sc.MS_NOSYMFOLLOW),
    "rbind": (False, sc.MS_BIND | sc.MS_REC),
    "relatime": (False, sc.MS_RELATIME),
    "remount": (False, sc.MS_REMOUNT),
    "ro": (False, sc.MS_RDONLY),
    "rw": (True, sc.MS_RDONLY),
    "silent": (False, sc.MS_SILENT),
    "strictatime": (False, sc.MS_STRICTATIME),
    "suid": (True, sc.MS_NOSUID),
    "sync": (False, sc.MS_SYNCHRONOUS),
}
PROPAGATION = {
    "private": sc.MS_PRIVATE,
    "rprivate": sc.MS_PRIVATE | sc.MS_REC,
    "shared": sc.MS_SHARED,
    "rshared": sc.MS_SHARED | sc.MS_REC,
    "slave": sc.MS_SLAVE,
    "rslave": sc.MS_SLAVE | sc.MS_REC,
    "unbindable": sc.MS_UNBINDABLE,
    "runbindable": sc.MS_UNBINDABLE | sc.MS_REC,
}
# Recursive attributes (mount_setattr): applied as plain flags per mount here,
# which holds for the mount itself; submounts of an rbind keep their own.
_RECURSIVE = {
    "rro": "ro",
    "rrw": "rw",
    "rnosuid": "nosuid",
    "rsuid": "suid",
    "rnodev": "nodev",
    "rdev": "dev",
    "rnoexec": "noexec",
    "rexec": "exec",
    "rnodiratime": "nodiratime",
    "rdiratime": "diratime",
    "rrelatime": "relatime",
    "rnorelatime": "norelatime",
    "rnoatime": "noatime",
    "ratime": "atime",
    "rstrictatime": "strictatime",
    "rnostrictatime": "nostrictatime",
    "rnosymfollow": "nosymfollow",
    "rsymfollow": "symfollow",
}


class MountOptions:
    """flags: for mount(2); propagation: applied after; data: fs-specific options."""

    __slots__ = ("flags", "propagation", "data", "tmpcopyup")

    def __init__(self) -> None:
        self.flags = 0
        self.propagation: list[int] = []
        self.data: list[str] = []
        self.tmpcopyup = False

    @property
    def is_bind(self) -> bool:
        return bool(self.flags & sc.MS_BIND)


def parse(options: list[str] | None) -> MountOptions:
    out = MountOptions()
    for opt in options or []:
        opt = _RECURSIVE.get(opt, opt)
        if opt in _FLAGS:
            clear, flag = _FLAGS[opt]
            if clear:
                out.flags &= ~flag
            else:
                out.flags |= flag
        elif opt in PROPAGATION:
            out.propagation.append(PROPAGATION[opt])
        elif opt == "tmpcopyup":
            out.tmpcopyup = True
        elif opt in ("idmap", "ridmap"):
            continue
        else:
            out.data.append(opt)
    return out


def statvfs_to_ms(f_flag: int) -> int:
    """Mount flags the kernel locked on a mount (ST_* from statvfs -> MS_*).

    A bind remount must repeat them or it fails with EPERM in a user namespace.
    """
    ms = 0
    for st, flag in (
        (1, sc.MS_RDONLY),
        (2, sc.MS_NOSUID),
        (4, sc.MS_NODEV),
        (8, sc.MS_NOEXEC),
        (1024, sc.MS_NOATIME),
        (2048, sc.MS_NODIRATIME),
        (4096, sc.MS_RELATIME),
    ):
        if f_flag & st:
            ms |= flag
    return ms
