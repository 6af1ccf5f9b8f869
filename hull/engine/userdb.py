"""Resolve `--user name|uid[:group|gid]` against an image's /etc/passwd and /etc/group.

The rules are runc's GetExecUser (which Docker uses): names are looked up, numbers
need no entry, and supplementary groups come from /etc/group membership only when
no group was given. The files are opened inside the rootfs with RESOLVE_IN_ROOT,
so an image whose /etc/passwd is a symlink cannot make us read the host's.
"""

from __future__ import annotations

import errno
import os

from hull.errors import ConfigError
from hull.records import dataclass, field

TYPE_CHECKING = False
if TYPE_CHECKING:
    StrPath = str | os.PathLike[str]

MAX_ID = 2147483647  # runc: uids and gids are int32 in the kernel ABI that matters


@dataclass(frozen=True)
class PasswdEntry:
    name: str
    uid: int
    gid: int
    home: str


@dataclass(frozen=True)
class GroupEntry:
    name: str
    gid: int
    members: tuple[str, ...]


@dataclass(frozen=True)
class ExecUser:
    """The process.user a container runs as, plus its HOME."""

    uid: int
    gid: int
    additional_gids: list[int] = field(default_factory=list)
    home: str = "/"


def parse_passwd(text: str) -> list[PasswdEntry]:
    """name:password:uid:gid:gecos:home:shell; lines that do not parse are skipped."""
    entries: list[PasswdEntry] = []
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        parts = line.split(":")
        if len(parts) < 4:
            continue
        try:
            uid, gid = int(parts[2]), int(parts[3])
        except ValueError:
            continue
        home = parts[5] if len(parts) > 5 else ""
        entries.append(PasswdEntry(parts[0], uid, gid, home))
    return entries


def parse_group(text: str) -> list[GroupEntry]:
    """name:password:gid:member,member; lines that do not parse are skipped."""
    entries: list[GroupEntry] = []
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        parts = line.split(":")
        if len(parts) < 3:
            continue
        try:
            gid = int(parts[2])
        except ValueError:
            continue
        members = (
            tuple(m.strip() for m in parts[3].split(",") if m.strip()) if len(parts) > 3 else ()
        )
        entries.append(GroupEntry(parts[0], gid, members))
    return entries


def read_in_root(rootfs: StrPath, path: str) -> str | None:
    """The text of `path` inside rootfs, symlinks resolved as if rootfs were `/`;
    None if it does not exist."""
    from hull.runtime.linux import syscalls

    root_fd = os.open(rootfs, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        try:
            fd = syscalls.openat2(
                root_fd,
                path.lstrip("/"),
                os.O_RDONLY,
                resolve=syscalls.RESOLVE_IN_ROOT | syscalls.RESOLVE_NO_MAGICLINKS,
            )
        except OSError as e:
            if e.errno in (errno.ENOENT, errno.ENOTDIR):
                return None
            raise ConfigError(f"cannot read {path} in the container: {e.strerror}") from None
        with os.fdopen(fd, "rb") as f:
            return f.read().decode("utf-8", errors="replace")
    finally:
        os.close(root_fd)


def _parse_id(text: str) -> int | None:
    try:
        value = int(text)
    except ValueError:
        return None
    if not 0 <= value <= MAX_ID:
        raise ConfigError(f"uids and gids must be in range 0-{MAX_ID}")
    return value


def match_user(spec: str | None, passwd: list[PasswdEntry], groups: list[GroupEntry]) -> ExecUser:
    """runc's GetExecUser over parsed files. spec None or '' means root (uid 0)."""
    user_arg, _, group_arg = (spec or "").partition(":")
    uid_arg = _parse_id(user_arg) if user_arg else 0
    if user_arg:
        matches = [
            p for p in passwd if p.name == user_arg or (uid_arg is not None and p.uid == uid_arg)
        ]
    else:
        matches = [p for p in passwd if p.uid == 0]
    if matches:
        entry = matches[0]
        uid, gid, home, name = entry.uid, entry.gid, entry.home or "/", entry.name
    elif uid_arg is not None:
        uid, gid, home, name = uid_arg, 0, "/", None
    else:
        raise ConfigError(f"unable to find user {user_arg}: no matching entries in passwd file")
    additional: list[int] = []
    if group_arg:
        gid_arg = _parse_id(group_arg)
        found = [
            g for g in groups if g.name == group_arg or (gid_arg is not None and g.gid == gid_arg)
        ]
        if found:
            gid = found[0].gid
        elif gid_arg is not None:
            gid = gid_arg
        else:
            raise ConfigError(
                f"unable to find group {group_arg}: no matching entries in group file"
            )
    elif name is not None:
        for g in groups:
            if name in g.members and g.gid not in additional:
                additional.append(g.gid)
    return ExecUser(uid, gid, additional, home)


def resolve_user(rootfs: StrPath, spec: str | None) -> ExecUser:
    """match_user against rootfs/etc/passwd and rootfs/etc/group (either may be missing)."""
    passwd = parse_passwd(read_in_root(rootfs, "/etc/passwd") or "")
    groups = parse_group(read_in_root(rootfs, "/etc/group") or "")
    return match_user(spec, passwd, groups)
