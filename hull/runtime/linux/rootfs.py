"""The container's filesystem view: mounts, /dev, pivot_root, masked paths.

Runs in the container's init after it entered its new mount namespace and
before pivot_root. Every mount target is resolved inside the rootfs with
openat2(RESOLVE_IN_ROOT), so a symlink in an image can never point a mount
at the host (the runc CVE-2021-30465 class).
"""

from __future__ import annotations

import _stat as stat  # the C half: `stat` adds nothing used here, only an import
import errno

from hull.errors import ConfigError, KernelError
from hull.runtime import posixos as os
from hull.runtime.linux import mountopts
from hull.runtime.linux import syscalls as sc

DEFAULT_DEVICES = (
    ("/dev/null", "c", 1, 3),
    ("/dev/zero", "c", 1, 5),
    ("/dev/full", "c", 1, 7),
    ("/dev/random", "c", 1, 8),
    ("/dev/urandom", "c", 1, 9),
    ("/dev/tty", "c", 5, 0),
)
_RESOLVE = sc.RESOLVE_IN_ROOT | sc.RESOLVE_NO_MAGICLINKS
_PROPAGATION = mountopts.PROPAGATION
# Mounts that depend on which process makes them: proc shows the mounter's pid
# namespace (PID 1's, not stage 1's); cgroup views need the container's cgroup,
# which exists (and is joined) only after stage 1's "go".
_LATE_TYPES = frozenset({"proc", "cgroup", "cgroup2"})


def open_in_root(
    rootfd: int,
    path: str,
    create: str | None = None,
    mode: int = 0o755,
    no_symlinks: bool = False,
) -> int:
    """An O_PATH fd for path inside the root, never leaving it.

    create="dir" or "file" makes missing components (dirs, and the last one as
    a dir or an empty file), each created relative to its already-confined
    parent. Every lookup is an openat2(RESOLVE_IN_ROOT) from the root, so a
    symlink met on the way resolves inside it; no_symlinks=True refuses any
    symlink instead (ELOOP), before anything is created.
    """
    resolve = _RESOLVE | (sc.RESOLVE_NO_SYMLINKS if no_symlinks else 0)
    rel = path.strip("/") or "."
    try:
        return sc.openat2(rootfd, rel, os.O_PATH, resolve=resolve)
    except FileNotFoundError:
        if create is None:
            raise
    parts = [p for p in rel.split("/") if p and p != "."]
    # The deepest existing ancestor, nearest first: usually the parent exists.
    start = len(parts) - 1
    while True:
        prefix = "/".join(parts[:start]) or "."
        try:
            parent = sc.openat2(rootfd, prefix, os.O_PATH, resolve=resolve)
            break
        except FileNotFoundError:
            if start == 0:
                raise
            start -= 1
    try:
        for i in range(start, len(parts)):
            part = parts[i]
            prefix = "/".join(parts[: i + 1])
            try:
                if i == len(parts) - 1 and create == "file":
                    fd = os.open(
                        part,
                        os.O_CREAT | os.O_WRONLY | os.O_NOFOLLOW | os.O_CLOEXEC,
                        0o644,
                        dir_fd=parent,
                    )
                    os.close(fd)
                else:
                    os.mkdir(part, mode, dir_fd=parent)
            except FileExistsError:
                pass  # made meanwhile, or a dangling symlink: the lookup below decides
            child = sc.openat2(rootfd, prefix, os.O_PATH, resolve=resolve)
            os.close(parent)
            parent = child
        return parent
    except BaseException:
        os.close(parent)
        raise


def _fdpath(fd: int) -> str:
    return f"/proc/self/fd/{fd}"


def _nested(a: str, b: str) -> bool:
    """True when one of two absolute paths is the other or lies below it."""
    a, b = a.rstrip("/") + "/", b.rstrip("/") + "/"
    return a.startswith(b) or b.startswith(a)


class RootfsBuilder:
    """Mounts the config's view onto the bundle's rootfs (pre-pivot)."""

    def __init__(
        self,
        config: dict,
        rootfs: str,
        bundle: str,
        cgroup_paths: dict[str, str],
        cgroup_v2: bool,
        in_userns: bool,
    ) -> None:
        self.config = config
        self.rootfs = rootfs
        self.bundle = bundle
        self.cgroup_paths = cgroup_paths
        self.cgroup_v2 = cgroup_v2
        self.in_userns = in_userns
        self.rootfd = -1
        self.dev_is_bind = False
        self.late: list[dict] = []  # mounts prepare_early() left for prepare_rest()
        self.devices_done = False
        self.early_proc = False

    def prepare(self) -> None:
        """Private propagation, rootfs bind, every mount, /dev."""
        self.prepare_early()
        self.prepare_rest()

    def prepare_early(self, in_pid_namespace: bool = False) -> None:
        """Propagation, the rootfs bind, and the mounts stage 1 can make before PID 1
        exists (it shares PID 1's mount namespace): the work overlaps the parent's
        cgroup setup. Left for prepare_rest(): proc (unless in_pid_namespace: we are
        PID 1 ourselves) and cgroup mounts, binds, and any mount nested with one of
        those or reached through a symlink, so the result is the one the config's
        order gives.
        """
        self.early_proc = in_pid_namespace
        sc.mount(None, "/", None, sc.MS_SLAVE | sc.MS_REC)
        sc.mount(self.rootfs, self.rootfs, None, sc.MS_BIND | sc.MS_REC)
        prop = (self.config.get("linux") or {}).get("rootfsPropagation")
        if prop:
            sc.mount(None, self.rootfs, None, _PROPAGATION[prop])
        self.rootfd = os.open(self.rootfs, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
        for mount in self.config.get("mounts") or []:
            if not self._early(mount) or not self._mount_early(mount):
                self.late.append(mount)
        if not any(_nested("/dev", m["destination"]) for m in self.late):
            self._devices_early()

    def prepare_rest(self) -> None:
        """The mounts prepare_early() left, in the config's order, then /dev."""
        late, self.late = self.late, []
        for mount in late:
            self.mount_one(mount)
        if not self.devices_done:
            self.make_devices()
            self.devices_done = True

    def _early(self, m: dict) -> bool:
        kind = m.get("type") or ""
        if kind == "proc" and self.early_proc:
            kind = ""
        if kind in _LATE_TYPES or kind == "bind" or "bind" in (m.get("options") or ()):
            return False
        if "rbind" in (m.get("options") or ()):
            return False
        return not any(_nested(m["destination"], late["destination"]) for late in self.late)

    def _mount_early(self, m: dict) -> bool:
        """mount_one, unless the destination's existing part holds a symlink."""
        try:
            fd = open_in_root(self.rootfd, m["destination"], "dir", no_symlinks=True)
        except OSError as err:
            if err.errno == errno.ELOOP:
                return False
            raise
        os.close(fd)
        self.mount_one(m)
        return True

    def _devices_early(self) -> None:
        for path in ["/dev"] + [
            d["path"].rsplit("/", 1)[0] or "/"
            for d in (self.config.get("linux") or {}).get("devices") or []
        ]:
            try:
                os.close(open_in_root(self.rootfd, path, "dir", no_symlinks=True))
            except OSError as err:
                if err.errno == errno.ELOOP:
                    return
                raise
        self.make_devices()
        self.devices_done = True

    def mount_one(self, m: dict) -> None:
        dest = m["destination"]
        kind = m.get("type") or ""
        opts = mountopts.parse(m.get("options"))
        source = m.get("source") or kind or "none"
        if kind == "bind" or opts.is_bind:
            self._bind(m, dest, source, opts)
            return
        if kind == "cgroup":
            self._cgroup(dest, opts)
            return
        fd = open_in_root(self.rootfd, dest, "dir")
        try:
            data = ",".join(opts.data) or None
            try:
                sc.mount(source, _fdpath(fd), kind, opts.flags & ~sc.MS_REMOUNT, data)
            except PermissionError:
                if kind != "sysfs":
                    raise
                # No new network namespace (or a user namespace): sysfs may
                # not be mounted; runc falls back to a read-only rbind.
                sc.mount("/sys", _fdpath(fd), None, sc.MS_BIND | sc.MS_REC)
                self._remount(dest, opts.flags | sc.MS_RDONLY)
            self._propagate(dest, opts.propagation)
        except OSError as err:
            raise KernelError(f"cannot mount {kind} on {dest}: {err.strerror}") from None
        finally:
            os.close(fd)

    def _bind(self, m: dict, dest: str, source: str, opts: mountopts.MountOptions) -> None:
        if not source.startswith("/"):
            source = os.path.join(self.bundle, source)
        try:
            st = os.stat(source)
        except OSError as err:
            raise ConfigError(f"bind mount source {source} for {dest}: {err.strerror}") from None
        fd = open_in_root(self.rootfd, dest, "dir" if stat.S_ISDIR(st.st_mode) else "file")
        try:
            flags = sc.MS_BIND | (opts.flags & sc.MS_REC)
            sc.mount(source, _fdpath(fd), None, flags)
            extra = opts.flags & ~(sc.MS_BIND | sc.MS_REC | sc.MS_REMOUNT)
            if extra:
                self._remount(dest, extra)
            self._propagate(dest, opts.propagation)
            if dest.rstrip("/") == "/dev":
                self.dev_is_bind = True
        except OSError as err:
            raise KernelError(f"cannot bind {source} on {dest}: {err.strerror}") from None
        finally:
            os.close(fd)

    def _remount(self, dest: str, flags: int) -> None:
        """Change flags of the mount now at dest, keeping the ones the kernel locked.

        dest is opened afresh: an fd taken before the mount points below it.
        """
        fd = open_in_root(self.rootfd, dest)
        try:
            locked = mountopts.statvfs_to_ms(os.statvfs(_fdpath(fd)).f_flag)
            if not flags & sc.MS_RDONLY and locked & sc.MS_RDONLY:
                locked &= ~sc.MS_RDONLY
            sc.mount(None, _fdpath(fd), None, sc.MS_BIND | sc.MS_REMOUNT | flags | locked)
        finally:
            os.close(fd)

    def _propagate(self, dest: str, propagation: list[int]) -> None:
        if not propagation:
            return
        fd = open_in_root(self.rootfd, dest)
        try:
            for prop in propagation:
                sc.mount(None, _fdpath(fd), None, prop)
        finally:
            os.close(fd)

    def _cgroup(self, dest: str, opts: mountopts.MountOptions) -> None:
        """cgroup v2: mount cgroup2. v1/hybrid: a tmpfs with each controller bound in."""
        ro = bool(opts.flags & sc.MS_RDONLY)
        base = opts.flags & (sc.MS_NOSUID | sc.MS_NODEV | sc.MS_NOEXEC)
        fd = open_in_root(self.rootfd, dest, "dir")
        try:
            if self.cgroup_v2:
                try:
                    sc.mount("cgroup", _fdpath(fd), "cgroup2", opts.flags)
                except PermissionError:
                    host = self.cgroup_paths.get("", "/sys/fs/cgroup")
                    sc.mount(host, _fdpath(fd), None, sc.MS_BIND | sc.MS_REC)
                    self._remount(dest, base | (sc.MS_RDONLY if ro else 0))
                return
            sc.mount("tmpfs", _fdpath(fd), "tmpfs", base, "mode=755")
            self._bind_v1_hierarchies(dest, base | (sc.MS_RDONLY if ro else 0))
        except OSError as err:
            raise KernelError(f"cannot mount cgroups on {dest}: {err}") from None
        finally:
            os.close(fd)

    def _bind_v1_hierarchies(self, dest: str, flags: int) -> None:
        """Bind each hierarchy's container dir into the fresh tmpfs at dest, then give
        the whole tree flags (nosuid, nodev, noexec, ro) at once.

        The tmpfs was mounted just now by us and nothing else writes to it, so its
        subdirs are made and opened relative to it without a lookup from the root.
        """
        from hull.runtime.linux import mountattr

        names = []
        top = open_in_root(self.rootfd, dest)
        try:
            for name, host_dir in sorted(self.cgroup_paths.items()):
                if not name or "/" in name or not os.path.isdir(host_dir):
                    continue
                os.mkdir(name, 0o755, dir_fd=top)
                sub = os.open(name, os.O_PATH | os.O_NOFOLLOW | os.O_DIRECTORY, dir_fd=top)
                try:
                    sc.mount(host_dir, _fdpath(sub), None, sc.MS_BIND)
                except OSError as err:
                    raise OSError(err.errno, f"{host_dir}: {err.strerror}") from None
                finally:
                    os.close(sub)
                names.append(name)
            if not flags:
                return
            try:
                mountattr.set_recursive(top, flags)
                return
            except OSError:
                pass  # no mount_setattr (Linux < 5.12): remount one by one
        finally:
            os.close(top)
        for name in names:
            self._remount(f"{dest}/{name}", flags)
        if flags & sc.MS_RDONLY:
            self._remount(dest, flags)

    def make_devices(self) -> None:
        """The spec's default devices, linux.devices, and the /dev links."""
        if self.dev_is_bind:
            return
        devices = [
            {"path": p, "type": t, "major": ma, "minor": mi, "fileMode": 0o666, "uid": 0, "gid": 0}
            for p, t, ma, mi in DEFAULT_DEVICES
        ]
        for dev in (self.config.get("linux") or {}).get("devices") or []:
            devices = [d for d in devices if d["path"] != dev["path"]] + [dev]
        dirs: dict[str, int] = {}  # parent dir -> its fd, opened once for all its nodes
        try:
            for dev in devices:
                self.make_device(dev, dirs)
            devdir = self._dir_fd("/dev", dirs)
            for name, target in (
                ("fd", "/proc/self/fd"),
                ("stdin", "/proc/self/fd/0"),
                ("stdout", "/proc/self/fd/1"),
                ("stderr", "/proc/self/fd/2"),
                ("ptmx", "pts/ptmx"),
            ):
                if name == "ptmx":
                    try:
                        os.unlink(name, dir_fd=devdir)
                    except FileNotFoundError:
                        pass
                try:
                    os.symlink(target, name, dir_fd=devdir)
                except FileExistsError:
                    pass
        finally:
            for fd in dirs.values():
                os.close(fd)

    def _dir_fd(self, path: str, dirs: dict[str, int]) -> int:
        fd = dirs.get(path)
        if fd is None:
            fd = dirs[path] = open_in_root(self.rootfd, path, "dir")
        return fd

    def make_device(self, dev: dict, dirs: dict[str, int] | None = None) -> None:
        """One node (a bind of the host's in a user namespace); dirs caches parent fds."""
        path = dev["path"]
        kind = dev.get("type", "c")
        parent_path, name = path.rsplit("/", 1)
        own = dirs is None
        if dirs is None:
            dirs = {}
        try:
            parent = self._dir_fd(parent_path or "/", dirs)
            if self.in_userns:
                # mknod is not allowed in a user namespace: bind the host's node.
                try:
                    os.close(
                        os.open(name, os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=parent)
                    )
                except FileExistsError:
                    pass
                target = open_in_root(self.rootfd, path)
                try:
                    sc.mount(path, _fdpath(target), None, sc.MS_BIND)
                finally:
                    os.close(target)
                return
            mode = dev.get("fileMode", 0o666) & 0o7777
            fmt = {"c": stat.S_IFCHR, "u": stat.S_IFCHR, "b": stat.S_IFBLK, "p": stat.S_IFIFO}[kind]
            device = os.makedev(dev.get("major", 0), dev.get("minor", 0)) if kind != "p" else 0
            try:
                os.unlink(name, dir_fd=parent)
            except FileNotFoundError:
                pass
            except IsADirectoryError:
                raise ConfigError(f"device path {path} is a directory in the rootfs") from None
            old = os.umask(0)
            try:
                os.mknod(name, fmt | mode, device, dir_fd=parent)
            finally:
                os.umask(old)
            os.chown(
                name, dev.get("uid", 0), dev.get("gid", 0), dir_fd=parent, follow_symlinks=False
            )
        except OSError as err:
            raise KernelError(f"cannot create device {path}: {err.strerror}") from None
        finally:
            if own:
                for fd in dirs.values():
                    os.close(fd)

    def close(self) -> None:
        if self.rootfd >= 0:
            os.close(self.rootfd)
            self.rootfd = -1


def pivot(rootfs: str) -> None:
    """pivot_root(".", ".") then detach the old root, as runc does."""
    oldroot = os.open("/", os.O_DIRECTORY | os.O_RDONLY | os.O_CLOEXEC)
    newroot = os.open(rootfs, os.O_DIRECTORY | os.O_RDONLY | os.O_CLOEXEC)
    try:
        os.fchdir(newroot)
        sc.pivot_root(".", ".")
        os.fchdir(oldroot)
        sc.mount(None, ".", None, sc.MS_SLAVE | sc.MS_REC)
        sc.umount2(".", sc.MNT_DETACH)
        os.chdir("/")
    except OSError as err:
        raise KernelError(f"pivot_root into {rootfs} failed: {err.strerror}") from None
    finally:
        os.close(oldroot)
        os.close(newroot)


def move_root(rootfs: str) -> None:
    """--no-pivot: MS_MOVE the rootfs over / and chroot (for ramdisk roots)."""
    try:
        os.chdir(rootfs)
        sc.mount(rootfs, "/", None, sc.MS_MOVE)
        os.chroot(".")
        os.chdir("/")
    except OSError as err:
        raise KernelError(f"cannot move the root to {rootfs}: {err.strerror}") from None


def finish(config: dict) -> None:
    """After pivot: sysctls, masked and readonly paths, a readonly root."""
    linux = config.get("linux") or {}
    for key, value in (linux.get("sysctl") or {}).items():
        try:
            with open("/proc/sys/" + key.replace(".", "/"), "w") as f:
                f.write(value)
        except OSError as err:
            raise KernelError(f"cannot set sysctl {key}: {err.strerror}") from None
    for path in linux.get("maskedPaths") or []:
        mask_path(path)
    for path in linux.get("readonlyPaths") or []:
        readonly_path(path)
    if (config.get("root") or {}).get("readonly"):
        locked = mountopts.statvfs_to_ms(os.statvfs("/").f_flag)
        sc.mount(None, "/", None, sc.MS_BIND | sc.MS_REMOUNT | sc.MS_RDONLY | locked)


def mask_path(path: str) -> None:
    try:
        if stat.S_ISDIR(os.lstat(path).st_mode):  # one lstat: most masked paths are absent
            sc.mount("tmpfs", path, "tmpfs", sc.MS_RDONLY)
        else:
            sc.mount("/dev/null", path, None, sc.MS_BIND)
    except OSError as err:
        if err.errno not in (errno.ENOENT, errno.ENOTDIR):
            raise KernelError(f"cannot mask {path}: {err.strerror}") from None


def readonly_path(path: str) -> None:
    try:
        sc.mount(path, path, None, sc.MS_BIND | sc.MS_REC)
        locked = mountopts.statvfs_to_ms(os.statvfs(path).f_flag)
        sc.mount(None, path, None, sc.MS_BIND | sc.MS_REMOUNT | sc.MS_RDONLY | locked)
    except OSError as err:
        if err.errno not in (errno.ENOENT, errno.ENOTDIR):
            raise KernelError(f"cannot make {path} read-only: {err.strerror}") from None
