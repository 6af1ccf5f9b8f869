"""The container verbs beyond the lifecycle: stats, top, cp, rename, update, diff,
commit, and the system-wide ones (df, prune, info, version).

Each is a function over a ContainerService, so the CLI and the API call the same
code. Pure parts (the stats arithmetic, `ps` parsing, Docker's cp path rules,
commit's --change instructions) are separate functions with no I/O, unit-tested
without root. Heavy modules are imported inside the functions that need them.
"""

from __future__ import annotations

import contextlib
import json
import os
import platform
import posixpath
import shlex
import stat
import sys
import tarfile
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any, cast

from hull.errors import ConfigError, HullError, KernelError, NotFoundError, StateError
from hull.records import dataclass, field, replace

if TYPE_CHECKING:
    from hull.engine.containers import ContainerLayout, ContainerRecord, ContainerService
    from hull.engine.images import ImageRecord
    from hull.engine.runconfig import RestartPolicy, RunConfig
    from hull.image.snapshots import Change
    from hull.runtime.linux.cgroups import CgroupManager

LIVE_STATES = ("running", "paused")
API_VERSION = "1.43"  # the Docker Engine API version Hull's API aims at
MIN_API_VERSION = "1.24"
NANOS = 1_000_000_000


def _running(record: ContainerRecord) -> bool:
    return record.state in LIVE_STATES


def cgroup_manager(service: ContainerService, record: ContainerRecord) -> CgroupManager:
    """The cgroup of a running container, from the runtime's state of it."""
    from hull.runtime.container import _cgroup
    from hull.runtime.state import StateStore

    if not _running(record):
        raise StateError(f"container {record.name} is not running")
    state = StateStore(str(service.layout(record).runtime_root)).load(record.id)
    manager: CgroupManager = _cgroup(state)
    return manager


# ================================================================== stats


@dataclass
class StatsSample:
    """One reading of a container's cgroup (zeros for a container that is not running)."""

    id: str
    name: str
    running: bool
    cpu_ns: int = 0  # the container's CPU time
    system_ns: int = 0  # the host's CPU time, all CPUs (Docker's SystemUsage)
    online_cpus: int = 1
    mem_used: int = 0  # usage minus inactive file cache, as `docker stats`
    mem_limit: int | None = None  # None: no limit of its own
    pids: int = 0
    block_read: int = 0
    block_write: int = 0


def sample_stats(service: ContainerService, record: ContainerRecord) -> StatsSample:
    sample = StatsSample(
        record.id,
        record.name,
        _running(record),
        system_ns=host_cpu_ns(),
        online_cpus=online_cpus(),
    )
    if not sample.running:
        return sample
    if record.run.isolation == "vm":  # no cgroup: the guest's figures and QEMU's CPU
        from hull.engine import vmbackend

        vmbackend.sample_stats(service, record, sample)
        return sample
    try:
        manager = cgroup_manager(service, record)
        stats = manager.stats()
        blkio = _block_io(manager)
    except (HullError, OSError):
        sample.running = False  # it exited between the listing and now
        return sample
    memory = stats.get("memory") or {}
    sample.mem_used = memory_in_use(memory.get("usage") or 0, memory.get("stats") or {})
    sample.mem_limit = memory.get("limit")
    sample.cpu_ns = (stats.get("cpu") or {}).get("usage_ns") or 0
    sample.pids = (stats.get("pids") or {}).get("current") or 0
    sample.block_read, sample.block_write = blkio
    return sample


def memory_in_use(usage: int, detail: dict[str, int]) -> int:
    """Docker's calculateMemUsageUnixNoCache: usage less the inactive file cache
    (total_inactive_file on cgroup v1, inactive_file on v2)."""
    for key in ("total_inactive_file", "inactive_file"):
        value = detail.get(key)
        if value is not None:
            return usage - value if value < usage else usage
    return usage


def cpu_percent(prev_cpu: int, cpu: int, prev_system: int, system: int, online_cpus: int) -> float:
    """Docker's calculateCPUPercentUnix: the container's share of the host's CPU time
    between two readings, times the online CPUs (two busy CPUs read 200%)."""
    cpu_delta = cpu - prev_cpu
    system_delta = system - prev_system
    if system_delta <= 0 or cpu_delta <= 0:
        return 0.0
    return cpu_delta / system_delta * online_cpus * 100.0


def stats_row(before: StatsSample | None, after: StatsSample, host_memory: int) -> dict[str, str]:
    """One row of `docker stats`, with Docker's --format field names."""
    from hull.cli.output import human_size

    if not after.running:
        return {
            "BlockIO": "0B / 0B",
            "CPUPerc": "0.00%",
            "Container": after.name,
            "ID": after.id[:12],
            "MemPerc": "0.00%",
            "MemUsage": "0B / 0B",
            "Name": after.name,
            "NetIO": "0B / 0B",
            "PIDs": "0",
        }
    cpu = 0.0
    if before is not None and before.running:
        cpu = cpu_percent(
            before.cpu_ns, after.cpu_ns, before.system_ns, after.system_ns, after.online_cpus
        )
    limit = after.mem_limit if after.mem_limit and after.mem_limit < host_memory else host_memory
    mem_percent = after.mem_used / limit * 100.0 if limit else 0.0
    return {
        "BlockIO": f"{human_size(after.block_read)} / {human_size(after.block_write)}",
        "CPUPerc": f"{cpu:.2f}%",
        "Container": after.name,
        "ID": after.id[:12],
        "MemPerc": f"{mem_percent:.2f}%",
        "MemUsage": f"{bytes_size(after.mem_used)} / {bytes_size(limit)}",
        "Name": after.name,
        "NetIO": "0B / 0B",  # no container networks yet
        "PIDs": str(after.pids),
    }


def bytes_size(size: float) -> str:
    """go-units BytesSize: binary units, four significant digits: 1.5MiB, 7.772GiB."""
    units = ["B", "KiB", "MiB", "GiB", "TiB", "PiB", "EiB", "ZiB", "YiB"]
    i = 0
    while size >= 1024 and i < len(units) - 1:
        size /= 1024.0
        i += 1
    return f"{size:.4g}{units[i]}"


def parse_proc_stat_cpu(text: str, clock_ticks: int) -> int:
    """The host's CPU time in ns from /proc/stat's `cpu` line (moby's getSystemCPUUsage:
    user nice system idle iowait irq softirq)."""
    for line in text.splitlines():
        parts = line.split()
        if parts and parts[0] == "cpu":
            ticks = sum(int(v) for v in parts[1:8])
            return ticks * NANOS // clock_ticks
    raise KernelError("/proc/stat has no cpu line")


def host_cpu_ns() -> int:
    with open("/proc/stat") as f:
        return parse_proc_stat_cpu(f.read(), os.sysconf("SC_CLK_TCK"))


def online_cpus() -> int:
    return int(os.sysconf("SC_NPROCESSORS_ONLN")) or 1


def host_memory() -> int:
    """MemTotal in bytes."""
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith("MemTotal:"):
                return int(line.split()[1]) * 1024
    return 0


def parse_blkio_v1(text: str) -> tuple[int, int]:
    """Read and Write bytes of blkio.*io_service_bytes* ("8:0 Read 4096" lines)."""
    read = write = 0
    for line in text.splitlines():
        parts = line.split()
        if len(parts) == 3 and parts[2].isdigit():
            if parts[1].lower() == "read":
                read += int(parts[2])
            elif parts[1].lower() == "write":
                write += int(parts[2])
    return read, write


def parse_io_stat_v2(text: str) -> tuple[int, int]:
    """rbytes and wbytes of cgroup2 io.stat ("8:0 rbytes=1 wbytes=2 ..." lines)."""
    read = write = 0
    for line in text.splitlines():
        for item in line.split()[1:]:
            key, _, value = item.partition("=")
            if key == "rbytes" and value.isdigit():
                read += int(value)
            elif key == "wbytes" and value.isdigit():
                write += int(value)
    return read, write


def _block_io(manager: CgroupManager) -> tuple[int, int]:
    paths = manager.controller_paths()
    if "blkio" in paths:
        for name in (
            "blkio.io_service_bytes_recursive",
            "blkio.throttle.io_service_bytes_recursive",
            "blkio.throttle.io_service_bytes",
        ):
            with contextlib.suppress(OSError):
                with open(os.path.join(paths["blkio"], name)) as f:
                    return parse_blkio_v1(f.read())
    elif "" in paths:
        with contextlib.suppress(OSError):
            with open(os.path.join(paths[""], "io.stat")) as f:
                return parse_io_stat_v2(f.read())
    return 0, 0


# ================================================================== top


def top(
    service: ContainerService, ref: str, ps_args: list[str]
) -> tuple[list[str], list[list[str]]]:
    """`docker top`: host `ps` output (default -ef) limited to the container's processes."""
    import subprocess

    record = service.get(ref)
    if not _running(record):
        raise StateError(f"container {record.name} is not running")
    if record.run.isolation == "vm":  # the guest's process table, from its agent
        from hull.engine import vmbackend

        return vmbackend.top(service, record, ps_args)
    pids = set(cgroup_manager(service, record).pids())
    try:
        proc = subprocess.run(
            ["ps", *(ps_args or ["-ef"])], capture_output=True, text=True, check=False
        )
    except FileNotFoundError:
        raise HullError("top needs `ps` on the host (apt-get install procps)") from None
    if proc.returncode != 0:
        raise ConfigError(f"ps {' '.join(ps_args)} failed: {proc.stderr.strip()}")
    return parse_ps_output(proc.stdout, pids)


def parse_ps_output(text: str, pids: set[int]) -> tuple[list[str], list[list[str]]]:
    """moby's parsePSOutput: titles from the header, rows whose PID is one of pids,
    with the fields past the last title joined back (a CMD with spaces)."""
    lines = text.split("\n")
    titles = lines[0].split() if lines else []
    if "PID" not in titles:
        raise ConfigError("couldn't find PID field in ps output")
    pid_index = titles.index("PID")
    rows: list[list[str]] = []
    for line in lines[1:]:
        if not line.strip():
            continue
        fields = line.split()
        try:
            pid = int(fields[pid_index])
        except (IndexError, ValueError):
            raise ConfigError(f"unexpected pid in ps output: {line!r}") from None
        if pid in pids:
            head = fields[: len(titles) - 1]
            rows.append([*head, " ".join(fields[len(titles) - 1 :])])
    return titles, rows


# ================================================================== cp


@dataclass(frozen=True)
class CopyEndpoint:
    """One side of `cp`: a container and a path in it, or a host path (container None)."""

    container: str | None
    path: str


def parse_cp_arg(arg: str) -> CopyEndpoint:
    """Docker's splitCpArg: an absolute path, or one starting with '.', is local even
    with a ':' in it; otherwise CONTAINER:PATH splits at the first ':'."""
    if arg.startswith("/"):
        return CopyEndpoint(None, arg)
    name, sep, path = arg.partition(":")
    if not sep or name.startswith("."):
        return CopyEndpoint(None, arg)
    return CopyEndpoint(name, path)


def split_path_dir_entry(path: str) -> tuple[str, str]:
    """moby's SplitPathDirEntry: ('dir', 'base'), keeping a trailing '/.' as base '.'."""
    cleaned = posixpath.normpath(path) if path else "."
    if cleaned == "/":
        return "/", "."
    if posixpath.basename(path) == ".":
        cleaned = posixpath.join(cleaned, ".")
    return posixpath.dirname(cleaned) or ".", posixpath.basename(cleaned)


def asserts_directory(path: str) -> bool:
    """A path ending in '/' or '/.' must name a directory."""
    return path.endswith("/") or posixpath.basename(path) == "."


@dataclass(frozen=True)
class CopyPlan:
    """Where an archive of the source goes: extracted into `directory`, its top entry
    renamed from `rebase[0]` to `rebase[1]` when set."""

    directory: str
    rebase: tuple[str, str] | None


def plan_copy(
    src_path: str, src_is_dir: bool, dst_path: str, dst_exists: bool, dst_is_dir: bool
) -> CopyPlan:
    """moby's PrepareArchiveCopy: Docker's rules for what `cp SRC DST` makes.

    DST a directory: SRC lands inside it (SRC ending in '/.' copies its contents).
    DST an existing file: a file SRC replaces it; a directory SRC is an error.
    DST missing: SRC is created under DST's name (a file needs DST's parent to exist,
    and DST must not end in '/').
    """
    dst_dir, dst_base = split_path_dir_entry(dst_path)
    _, src_base = split_path_dir_entry(src_path)
    if dst_exists and dst_is_dir:
        return CopyPlan(dst_path, None)
    if dst_exists and src_is_dir:
        raise ConfigError(f"cannot copy a directory to a file: {dst_path} is not a directory")
    if not dst_exists and not src_is_dir and asserts_directory(dst_path):
        raise NotFoundError(f"destination directory {dst_path} does not exist")
    return CopyPlan(dst_dir, (src_base, dst_base))


def rebase_name(name: str, rebase: tuple[str, str] | None) -> str:
    """An archive entry's name with its top component renamed (moby's RebaseArchiveEntries)."""
    if rebase is None:
        return name
    old, new = rebase
    trimmed = name[2:] if name.startswith("./") and old != "." else name
    if trimmed == old or trimmed == old + "/":
        return new
    if old == ".":
        rest = name[2:] if name.startswith("./") else name
        return posixpath.join(new, rest) if rest not in ("", ".") else new
    if trimmed.startswith(old + "/"):
        return new + trimmed[len(old) :]
    return name


def entry_parts(name: str) -> list[str]:
    """An archive entry's path components; '..' is refused (no escape from the destination)."""
    parts = [p for p in name.split("/") if p not in ("", ".")]
    if ".." in parts:
        raise ConfigError(f"archive entry {name!r} points outside the destination")
    return parts


class Root:
    """A directory that paths are resolved in, never leaving it: a container's rootfs
    (openat2 RESOLVE_IN_ROOT, so a symlink to / stays in it) or the host's /."""

    def __init__(self, path: Path | str) -> None:
        self.path = os.path.realpath(path)
        self.fd = os.open(self.path, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    def __enter__(self) -> Root:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def open(self, path: str, flags: int) -> int:
        """openat2 in the root, symlinks followed but confined to it."""
        from hull.runtime.linux import syscalls as sc

        rel = path.strip("/") or "."
        return sc.openat2(
            self.fd, rel, flags, resolve=sc.RESOLVE_IN_ROOT | sc.RESOLVE_NO_MAGICLINKS
        )

    def open_dir(self, path: str) -> int:
        return self.open(path, os.O_RDONLY | os.O_DIRECTORY)

    def lstat(self, path: str) -> os.stat_result | None:
        """lstat of path's last component (its parents resolved in the root); None if absent."""
        parent, base = split_path_dir_entry(path)
        try:
            fd = self.open_dir(parent)
        except (FileNotFoundError, NotADirectoryError):
            return None
        try:
            if base == ".":
                return os.fstat(fd)
            return os.stat(base, dir_fd=fd, follow_symlinks=False)
        except FileNotFoundError:
            return None
        finally:
            os.close(fd)

    def stat(self, path: str) -> os.stat_result | None:
        """stat following symlinks (inside the root); None if absent."""
        try:
            fd = self.open(path, os.O_PATH)
        except (FileNotFoundError, NotADirectoryError):
            return None
        try:
            return os.fstat(fd)
        finally:
            os.close(fd)

    def resolve(self, path: str) -> str:
        """path with every symlink resolved, as a path inside the root."""
        fd = self.open(path, os.O_PATH)
        try:
            real = os.readlink(f"/proc/self/fd/{fd}")
        finally:
            os.close(fd)
        base = self.path.rstrip("/")
        if real == base:
            return "/"
        if base and not real.startswith(base + "/"):
            raise StateError(f"{path} resolves outside {self.path}")
        return real[len(base) :] or "/"


def write_archive(root: Root, path: str, out: IO[bytes], follow_link: bool = False) -> None:
    """A tar of path in root to out, its top entry named as the source's base name
    ('.' for 'dir/.': the directory's contents). Nothing below the root is followed:
    the walk uses dir fds and O_NOFOLLOW, a symlink travels as a symlink."""
    parent, base = split_path_dir_entry(path)
    st = root.lstat(path)
    if st is None:
        raise NotFoundError(f"could not find the file {path} in the container")
    if stat.S_ISLNK(st.st_mode) and (follow_link or asserts_directory(path)):
        target = root.resolve(path)
        parent, real_base = split_path_dir_entry(target)
        st = root.lstat(target) or st
    else:
        real_base = base
    if asserts_directory(path) and not stat.S_ISDIR(st.st_mode):
        raise ConfigError(f"{path} is not a directory")
    parent_fd = root.open_dir(parent)
    try:
        with tarfile.open(fileobj=out, mode="w|", format=tarfile.PAX_FORMAT) as tar:
            links: dict[tuple[int, int], str] = {}
            if real_base == ".":
                _archive_entry(tar, parent_fd, ".", base, os.fstat(parent_fd), links)
            else:
                _archive_entry(tar, parent_fd, real_base, base, st, links)
    finally:
        os.close(parent_fd)


def _archive_entry(
    tar: tarfile.TarFile,
    dir_fd: int,
    name: str,
    arcname: str,
    st: os.stat_result,
    links: dict[tuple[int, int], str],
) -> None:
    info = tarfile.TarInfo(arcname)
    info.mode = stat.S_IMODE(st.st_mode)
    info.uid, info.gid = st.st_uid, st.st_gid
    info.mtime = int(st.st_mtime)
    mode = st.st_mode
    if stat.S_ISDIR(mode):
        info.type = tarfile.DIRTYPE
        tar.addfile(info)
        flags = os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC
        child_fd = os.open(name, flags | (0 if name == "." else os.O_NOFOLLOW), dir_fd=dir_fd)
        try:
            for child in sorted(os.listdir(child_fd)):
                child_st = os.stat(child, dir_fd=child_fd, follow_symlinks=False)
                child_arc = child if arcname == "." else f"{arcname}/{child}"
                _archive_entry(tar, child_fd, child, child_arc, child_st, links)
        finally:
            os.close(child_fd)
    elif stat.S_ISREG(mode):
        key = (st.st_dev, st.st_ino)
        if st.st_nlink > 1 and key in links:
            info.type = tarfile.LNKTYPE
            info.linkname = links[key]
            tar.addfile(info)
            return
        if st.st_nlink > 1:
            links[key] = arcname
        fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=dir_fd)
        with os.fdopen(fd, "rb") as f:
            info.size = os.fstat(f.fileno()).st_size
            tar.addfile(info, f)
    elif stat.S_ISLNK(mode):
        info.type = tarfile.SYMTYPE
        info.linkname = os.readlink(name, dir_fd=dir_fd)
        tar.addfile(info)
    elif stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        info.type = tarfile.CHRTYPE if stat.S_ISCHR(mode) else tarfile.BLKTYPE
        info.devmajor, info.devminor = os.major(st.st_rdev), os.minor(st.st_rdev)
        tar.addfile(info)
    elif stat.S_ISFIFO(mode):
        info.type = tarfile.FIFOTYPE
        tar.addfile(info)
    # sockets do not travel (Docker skips them too)


def extract_archive(
    root: Root,
    directory: str,
    stream: IO[bytes],
    rebase: tuple[str, str] | None = None,
    owner: tuple[int, int] | None = (0, 0),
) -> None:
    """Unpack a tar into directory (a path in root), every path resolved in the root.

    owner: the uid/gid every entry gets (Docker: root in the container, the caller on
    the host), or None to keep the archive's (cp --archive). Modes and mtimes are kept.
    """
    try:
        os.close(root.open_dir(directory))
    except FileNotFoundError:
        raise NotFoundError(f"destination directory {directory} does not exist") from None
    except NotADirectoryError:
        raise ConfigError(f"destination {directory} is not a directory") from None
    dir_times: list[tuple[str, float]] = []
    try:
        tar = tarfile.open(fileobj=stream, mode="r|*")  # noqa: SIM115 (closed just below)
    except tarfile.ReadError as err:
        raise ConfigError(f"cannot read the archive: {err}") from None
    with tar:
        for member in tar:
            parts = entry_parts(rebase_name(member.name, rebase))
            if not parts:
                continue  # the destination directory itself
            path = posixpath.join(directory, *parts)
            parent_fd = _open_parent(root, posixpath.join(directory, *parts[:-1]))
            try:
                _extract_entry(root, directory, tar, member, parent_fd, parts, owner, rebase)
            finally:
                os.close(parent_fd)
            if member.isdir():
                dir_times.append((path, member.mtime))
    for path, mtime in reversed(dir_times):
        with contextlib.suppress(OSError):
            fd = root.open_dir(path)
            try:
                os.utime(fd, (mtime, mtime))
            finally:
                os.close(fd)


def _open_parent(root: Root, path: str) -> int:
    """The dir fd of path in root, making missing directories (a tar may omit them)."""
    try:
        return root.open_dir(path)
    except FileNotFoundError:
        pass
    parent, base = split_path_dir_entry(path)
    parent_fd = _open_parent(root, parent)
    try:
        with contextlib.suppress(FileExistsError):
            os.mkdir(base, 0o755, dir_fd=parent_fd)
    finally:
        os.close(parent_fd)
    return root.open_dir(path)


def _extract_entry(
    root: Root,
    directory: str,
    tar: tarfile.TarFile,
    member: tarfile.TarInfo,
    dir_fd: int,
    parts: list[str],
    owner: tuple[int, int] | None,
    rebase: tuple[str, str] | None,
) -> None:
    name = parts[-1]
    uid, gid = owner if owner is not None else (member.uid, member.gid)
    existing = _lstat_at(dir_fd, name)
    if existing is not None and stat.S_ISLNK(existing.st_mode) and member.isdir():
        target = root.stat(posixpath.join(directory, *parts))
        if target is not None and stat.S_ISDIR(target.st_mode):
            return  # a symlink to a directory stays; what goes in it follows it (in the root)
    if existing is not None:
        if stat.S_ISDIR(existing.st_mode) and not member.isdir():
            raise ConfigError(f"cannot overwrite directory {name} with a non-directory")
        if not stat.S_ISDIR(existing.st_mode) and member.isdir():
            raise ConfigError(f"cannot overwrite non-directory {name} with a directory")
        if not member.isdir():
            os.unlink(name, dir_fd=dir_fd)
    if member.isdir():
        if existing is None:
            os.mkdir(name, 0o700, dir_fd=dir_fd)
        fd = os.open(
            name, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=dir_fd
        )
        try:
            os.fchown(fd, uid, gid)
            os.fchmod(fd, member.mode & 0o7777)
        finally:
            os.close(fd)
        return
    if member.isreg():
        source = tar.extractfile(member)
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
        fd = os.open(name, flags, 0o600, dir_fd=dir_fd)
        with os.fdopen(fd, "wb") as f:
            if source is not None:
                while chunk := source.read(1 << 20):
                    f.write(chunk)
            os.fchown(fd, uid, gid)
            os.fchmod(fd, member.mode & 0o7777)  # after chown, which clears setuid bits
            os.utime(fd, (member.mtime, member.mtime))
        return
    if member.issym():
        os.symlink(member.linkname, name, dir_fd=dir_fd)
    elif member.islnk():
        link_parts = entry_parts(rebase_name(member.linkname, rebase))
        if not link_parts:
            raise ConfigError(f"hard link {member.name} has no target")
        target_fd = _open_parent(root, posixpath.join(directory, *link_parts[:-1]))
        try:
            os.link(
                link_parts[-1], name, src_dir_fd=target_fd, dst_dir_fd=dir_fd, follow_symlinks=False
            )
        finally:
            os.close(target_fd)
        return
    elif member.ischr() or member.isblk():
        kind = stat.S_IFCHR if member.ischr() else stat.S_IFBLK
        os.mknod(
            name,
            kind | (member.mode & 0o7777),
            os.makedev(member.devmajor, member.devminor),
            dir_fd=dir_fd,
        )
    elif member.isfifo():
        os.mkfifo(name, member.mode & 0o7777, dir_fd=dir_fd)
    else:
        return  # unknown entry types are skipped, as tar does
    os.chown(name, uid, gid, dir_fd=dir_fd, follow_symlinks=False)
    with contextlib.suppress(OSError):
        os.utime(name, (member.mtime, member.mtime), dir_fd=dir_fd, follow_symlinks=False)


def _lstat_at(dir_fd: int, name: str) -> os.stat_result | None:
    try:
        return os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
    except FileNotFoundError:
        return None


@contextlib.contextmanager
def container_rootfs(service: ContainerService, record: ContainerRecord) -> Iterator[Path]:
    """The container's merged rootfs: its live mount while it runs, else a temporary
    overlay mount, unmounted on the way out. The container's lock is held throughout,
    so it is neither started nor cleaned up under our feet."""
    from hull.engine.containers import ContainerLock
    from hull.image.snapshots import unmount

    layout = service.layout(record)
    with ContainerLock(layout):
        mounted = service.mount_rootfs(record, layout)
        try:
            yield Path(layout.rootfs)
        finally:
            if mounted:
                unmount(layout.rootfs)


def _pipe_archive(
    produce: Callable[[IO[bytes]], None], consume: Callable[[IO[bytes]], None]
) -> None:
    """Run produce (writing a tar) in a thread and consume (reading it) here, through a pipe."""
    read_fd, write_fd = os.pipe()
    failure: list[BaseException] = []

    def writer() -> None:
        try:
            with open(write_fd, "wb") as out:
                produce(out)
        except BrokenPipeError:
            pass  # the reader gave up first; its error is the one to report
        except BaseException as err:  # handed to the main thread
            failure.append(err)

    thread = threading.Thread(target=writer, name="hull-cp-archive", daemon=True)
    thread.start()
    try:
        with open(read_fd, "rb") as source:
            consume(source)
            while source.read(1 << 16):  # the tar's padding, so the writer can finish
                pass
    except BaseException:
        thread.join()  # the read end is closed: a writer still writing gets EPIPE
        if failure:
            raise failure[0] from None  # the reader's error is only a symptom
        raise
    thread.join()
    if failure:
        raise failure[0]


def copy_from_container(
    service: ContainerService,
    ref: str,
    src: str,
    dest: str | IO[bytes],
    follow_link: bool = False,
    archive: bool = False,
) -> int:
    """`docker cp CONTAINER:SRC DEST`; DEST '-' or a stream gets the tar itself.
    Returns the bytes of the archive copied."""
    record = service.get(ref)
    src = _container_path(src)
    counted = _Counter()
    with (
        _os_errors("cannot copy"),
        container_rootfs(service, record) as rootfs,
        Root(rootfs) as root,
    ):
        if root.lstat(src) is None:
            raise NotFoundError(f"could not find the file {src} in container {record.name}")
        src_is_dir = _source_is_dir(root, src, follow_link)
        if not isinstance(dest, str):
            write_archive(root, src, _counting_writer(dest, counted), follow_link)
            return counted.total
        with Root("/") as host:
            dest_abs = _host_path(dest)
            plan = _plan_for(host, dest_abs, src, src_is_dir)
            owner = None if archive else (os.getuid(), os.getgid())
            _pipe_archive(
                lambda out: write_archive(root, src, _counting_writer(out, counted), follow_link),
                lambda source: extract_archive(host, plan.directory, source, plan.rebase, owner),
            )
    return counted.total


def copy_to_container(
    service: ContainerService,
    ref: str,
    src: str | IO[bytes],
    dest: str,
    follow_link: bool = False,
    archive: bool = False,
) -> int:
    """`docker cp SRC CONTAINER:DEST`; SRC '-' or a stream is a tar to unpack into DEST."""
    record = service.get(ref)
    if record.run.read_only:
        raise StateError(f"container {record.name}'s rootfs is read-only (--read-only)")
    dest = _container_path(dest)
    owner = None if archive else (0, 0)
    counted = _Counter()
    if isinstance(src, str):
        src_abs = _host_path(src)
        with _os_errors("cannot copy"), Root("/") as host:
            if host.lstat(src_abs) is None:
                raise NotFoundError(f"no such file or directory: {src}")
            src_is_dir = _source_is_dir(host, src_abs, follow_link)
            with container_rootfs(service, record) as rootfs, Root(rootfs) as root:
                plan = _plan_for(root, dest, src_abs, src_is_dir)
                _pipe_archive(
                    lambda out: write_archive(
                        host, src_abs, _counting_writer(out, counted), follow_link
                    ),
                    lambda source: extract_archive(
                        root, plan.directory, source, plan.rebase, owner
                    ),
                )
        return counted.total
    with (
        _os_errors("cannot copy"),
        container_rootfs(service, record) as rootfs,
        Root(rootfs) as root,
    ):
        st = root.stat(dest)
        if st is None or not stat.S_ISDIR(st.st_mode):
            raise ConfigError(f"destination {dest} must be a directory when copying from stdin")
        extract_archive(root, dest, _counting_reader(src, counted), None, owner)
    return counted.total


def _source_is_dir(root: Root, path: str, follow_link: bool) -> bool:
    """Whether the (existing) source is a directory; a trailing '/' or -L follows a symlink."""
    follow = follow_link or asserts_directory(path)
    st = root.stat(path) if follow else root.lstat(path)
    if st is None:
        raise NotFoundError(f"{path} is a symlink to nothing")
    is_dir = stat.S_ISDIR(st.st_mode)
    if asserts_directory(path) and not is_dir:
        raise ConfigError(f"{path} is not a directory")
    return is_dir


@contextlib.contextmanager
def _os_errors(what: str) -> Iterator[None]:
    """A file system error met while copying becomes a message, not a traceback."""
    try:
        yield
    except OSError as err:
        where = f" ({err.filename})" if err.filename else ""
        raise HullError(f"{what}: {err.strerror or err}{where}") from err


def _plan_for(root: Root, dest: str, src: str, src_is_dir: bool) -> CopyPlan:
    st = root.stat(dest)
    is_dir = st is not None and stat.S_ISDIR(st.st_mode)
    plan = plan_copy(src, src_is_dir, dest, st is not None, is_dir)
    if is_dir:
        return plan
    parent = root.stat(plan.directory)
    if parent is None or not stat.S_ISDIR(parent.st_mode):
        raise NotFoundError(f"destination directory {plan.directory} does not exist")
    return plan


def _container_path(path: str) -> str:
    """Container paths are relative to its /, as in Docker."""
    if not path:
        return "/"
    return path if path.startswith("/") else "/" + path


def _host_path(path: str) -> str:
    """An absolute host path, keeping a trailing '/' or '/.' (they mean 'a directory')."""
    return path if path.startswith("/") else os.path.join(os.getcwd(), path)


@dataclass
class _Counter:
    total: int = 0


class _CountingWriter:
    """A write-only file that counts what passes (the size `cp` reports)."""

    def __init__(self, out: IO[bytes], counter: _Counter) -> None:
        self._out = out
        self._counter = counter

    def write(self, data: bytes) -> int:
        self._counter.total += len(data)
        self._out.write(data)
        return len(data)

    def flush(self) -> None:
        self._out.flush()


def _counting_writer(out: IO[bytes], counter: _Counter) -> IO[bytes]:
    return cast(IO[bytes], _CountingWriter(out, counter))


def _counting_reader(source: IO[bytes], counter: _Counter) -> IO[bytes]:
    return cast(IO[bytes], _CountingReader(source, counter))


class _CountingReader:
    """A read-only file that counts what passes."""

    def __init__(self, source: IO[bytes], counter: _Counter) -> None:
        self._source = source
        self._counter = counter

    def read(self, size: int = -1) -> bytes:
        data = self._source.read(size)
        self._counter.total += len(data)
        return data


# ================================================================== port


def port_mappings(service: ContainerService, ref: str) -> dict[str, list[str]]:
    """`docker port`: "80/tcp" -> ["0.0.0.0:8080", ...], while the container runs."""
    from hull.engine.netsetup import published_ports

    record = service.get(ref)
    mappings: dict[str, list[str]] = {}
    for key, binding in published_ports(service.db, record.id):
        mappings.setdefault(key, []).append(binding)
    return mappings


def normalize_port_key(text: str) -> str:
    """`hull port C 80` asks for 80/tcp; "80/udp" stays; anything else is refused."""
    number, _, proto = text.partition("/")
    proto = (proto or "tcp").lower()
    if not number.isdigit() or not 0 < int(number) < 65536 or proto not in ("tcp", "udp"):
        raise ConfigError(f"invalid port {text!r}: use PORT[/tcp|udp]")
    return f"{int(number)}/{proto}"


# ================================================================== rename, update


def rename(service: ContainerService, ref: str, new_name: str) -> None:
    """`docker rename`: the name rules and uniqueness of create, in one transaction."""
    from hull.engine.containers import check_name

    record = service.get(ref)
    name = new_name.lstrip("/")
    if not name:
        raise ConfigError("the new name cannot be empty")
    check_name(name)
    if name == record.name:
        raise ConfigError("renaming a container with the same name as its current name")
    run = replace(record.run, name=name)
    with service.db.transaction() as conn:
        row = conn.execute("SELECT id FROM containers WHERE name = ?", (name,)).fetchone()
        if row is not None:
            raise StateError(
                f'the container name "/{name}" is already in use by container '
                f'"{row["id"]}": remove it or choose another name'
            )
        conn.execute(
            "UPDATE containers SET name = ?, run_config = ? WHERE id = ?",
            (name, json.dumps(run.to_dict()), record.id),
        )


@dataclass
class ResourceUpdate:
    """What `docker update` asks to change; None leaves a setting as it is."""

    memory: int | None = None
    memory_swap: int | None = None  # -1: unlimited swap
    cpus: float | None = None
    cpu_shares: int | None = None
    cpuset_cpus: str | None = None
    pids_limit: int | None = None  # 0 or -1: unlimited
    restart: RestartPolicy | None = None

    def is_empty(self) -> bool:
        return all(getattr(self, name) is None for name in self.__dataclass_fields__)


def apply_update(run: RunConfig, change: ResourceUpdate) -> RunConfig:
    """The run config with the change applied, checked as Docker's daemon checks it."""
    from hull.engine.runconfig import MIN_MEMORY

    if change.restart is not None and change.restart.name != "no" and run.rm:
        raise ConfigError(
            "restart policy cannot be updated because AutoRemove is enabled for the container"
        )
    memory = change.memory if change.memory is not None else run.memory
    swap = change.memory_swap if change.memory_swap is not None else run.memory_swap
    if change.memory is not None and change.memory < MIN_MEMORY:
        raise ConfigError("minimum memory limit allowed is 6MB")
    if change.memory_swap is not None and change.memory_swap != -1:
        if not memory:
            raise ConfigError(
                "you should always set the memory limit when using the memoryswap limit"
            )
        if change.memory_swap < memory:
            raise ConfigError(
                "minimum memoryswap limit should be larger than memory limit, see usage"
            )
    elif change.memory is not None and swap and swap != -1 and change.memory > swap:
        raise ConfigError(
            "memory limit should be smaller than already set memoryswap limit, "
            "update the memoryswap at the same time"
        )
    updated = replace(run, memory=memory, memory_swap=swap)
    for name in ("cpus", "cpu_shares", "cpuset_cpus", "pids_limit", "restart"):
        value = getattr(change, name)
        if value is not None:
            updated = replace(updated, **{name: value})
    return updated


def live_resources(run: RunConfig, change: ResourceUpdate) -> dict[str, Any]:
    """OCI linux.resources for what the change touches, from the updated run config
    (the same shapes hull.engine.spec builds at start)."""
    from hull.engine.spec import CPU_PERIOD

    resources: dict[str, Any] = {}
    if (change.memory is not None or change.memory_swap is not None) and run.memory:
        swap = run.memory_swap if run.memory_swap else 2 * run.memory
        resources["memory"] = {"limit": run.memory, "swap": swap}
    cpu: dict[str, Any] = {}
    if change.cpus is not None and run.cpus:
        cpu["quota"] = int(round(run.cpus * CPU_PERIOD))
        cpu["period"] = CPU_PERIOD
    if change.cpu_shares is not None and run.cpu_shares:
        cpu["shares"] = run.cpu_shares
    if change.cpuset_cpus is not None and run.cpuset_cpus:
        cpu["cpus"] = run.cpuset_cpus
    if cpu:
        resources["cpu"] = cpu
    if change.pids_limit is not None:
        limit = run.pids_limit or 0
        resources["pids"] = {"limit": limit if limit > 0 else -1}
    return resources


def update(service: ContainerService, ref: str, change: ResourceUpdate) -> ContainerRecord:
    """`docker update`: new limits written live to a running container's cgroup, and
    always into its stored run config so the next start keeps them."""
    record = service.get(ref)
    run = apply_update(record.run, change)
    if _running(record):
        resources = live_resources(run, change)
        if resources:
            try:
                cgroup_manager(service, record).set(resources)
            except HullError as err:
                raise StateError(f"cannot update container {record.name}: {err.message}") from None
    with service.db.transaction() as conn:
        conn.execute(
            "UPDATE containers SET run_config = ? WHERE id = ?",
            (json.dumps(run.to_dict()), record.id),
        )
    return service.get(record.id)


# ================================================================== diff


def mount_targets(run: RunConfig) -> set[str]:
    """Paths the runtime mounts over: created as empty mount points when missing, and
    not changes a user made (Docker keeps them in its hidden init layer)."""
    from hull.engine.spec import ETC_FILES

    targets = {"/proc", "/sys", "/dev"}
    targets.update(f"/etc/{name}" for name in ETC_FILES)
    targets.update(m.target for m in run.mounts)
    return targets


def hide_mount_points(changes: list[Change], targets: set[str]) -> list[Change]:
    """Drop the added mount points, and the parent dirs shown as changed only for them."""
    dropped = [c.path for c in changes if c.kind == "A" and c.path in targets]
    if not dropped:
        return changes
    kept = [c for c in changes if not (c.kind == "A" and c.path in targets)]
    paths = [c.path for c in kept]

    def only_for_mount_points(change: Change) -> bool:
        prefix = change.path.rstrip("/") + "/"
        if change.kind != "C" or not any(d.startswith(prefix) for d in dropped):
            return False
        return not any(p.startswith(prefix) for p in paths)

    return [c for c in kept if not only_for_mount_points(c)]


def diff(service: ContainerService, ref: str) -> list[Change]:
    """`docker diff`: what the container's upper dir holds, as A/C/D lines."""
    from hull.image.snapshots import diff_dir

    record = service.get(ref)
    layout = service.layout(record)
    return hide_mount_points(
        diff_dir(layout.upper, _lower_dirs(service, record)), mount_targets(record.run)
    )


def _lower_dirs(service: ContainerService, record: ContainerRecord) -> list[Path]:
    image = service.images.catalog.get(record.image_id)
    if image is None:
        return []
    return service.images.layer_store.ensure(
        [layer.descriptor() for layer in image.layers], image.diff_ids
    )


# ================================================================== commit

CHANGE_INSTRUCTIONS = (
    "CMD",
    "ENTRYPOINT",
    "ENV",
    "EXPOSE",
    "LABEL",
    "ONBUILD",
    "STOPSIGNAL",
    "USER",
    "VOLUME",
    "WORKDIR",
)


def apply_changes(config: dict[str, Any], changes: list[str]) -> dict[str, Any]:
    """Docker's `commit --change`: Dockerfile instructions applied to an image's
    `config` section (a copy is returned)."""
    out = json.loads(json.dumps(config))
    for change in changes:
        text = change.strip()
        keyword, _, rest = text.partition(" ")
        keyword = keyword.upper()
        rest = rest.strip()
        if keyword not in CHANGE_INSTRUCTIONS:
            raise ConfigError(
                f"{keyword or change!r} is not a valid change command: use one of "
                + ", ".join(CHANGE_INSTRUCTIONS)
            )
        if not rest:
            raise ConfigError(f"{keyword} requires at least one argument")
        if keyword in ("CMD", "ENTRYPOINT"):
            shell = out.get("Shell") or ["/bin/sh", "-c"]
            command = _json_list(rest)
            out["Cmd" if keyword == "CMD" else "Entrypoint"] = (
                command if command is not None else [*shell, rest]
            )
        elif keyword == "ENV":
            env = [e for e in out.get("Env") or []]
            for key, value in _key_values(rest, keyword):
                env = [e for e in env if e.partition("=")[0] != key] + [f"{key}={value}"]
            out["Env"] = env
        elif keyword == "LABEL":
            labels = dict(out.get("Labels") or {})
            labels.update(_key_values(rest, keyword))
            out["Labels"] = labels
        elif keyword == "EXPOSE":
            ports = dict(out.get("ExposedPorts") or {})
            for item in rest.split():
                for port in _expose(item):
                    ports[port] = {}
            out["ExposedPorts"] = ports
        elif keyword == "VOLUME":
            volumes = dict(out.get("Volumes") or {})
            for path in _json_list(rest) or rest.split():
                volumes[path] = {}
            out["Volumes"] = volumes
        elif keyword == "WORKDIR":
            out["WorkingDir"] = posixpath.normpath(
                posixpath.join(out.get("WorkingDir") or "/", rest)
            )
        elif keyword == "USER":
            out["User"] = rest
        elif keyword == "STOPSIGNAL":
            out["StopSignal"] = rest
        elif keyword == "ONBUILD":
            out["OnBuild"] = [*(out.get("OnBuild") or []), rest]
    return out


def _json_list(text: str) -> list[str] | None:
    """The exec (JSON) form of CMD/ENTRYPOINT/VOLUME, or None for the shell form."""
    if not text.startswith("["):
        return None
    try:
        value = json.loads(text)
    except ValueError:
        return None
    if isinstance(value, list) and all(isinstance(v, str) for v in value):
        return value
    return None


def _key_values(text: str, keyword: str) -> list[tuple[str, str]]:
    """ENV/LABEL arguments: `K=V K2="v 2"`, or the old `K value with spaces` form."""
    try:
        words = shlex.split(text)
    except ValueError as err:
        raise ConfigError(f"{keyword} {text}: {err}") from None
    if words and "=" not in words[0]:
        if len(words) < 2:
            raise ConfigError(f"{keyword} needs a value: {keyword} {text}")
        return [(words[0], text.split(None, 1)[1].strip())]
    pairs = []
    for word in words:
        key, sep, value = word.partition("=")
        if not sep or not key:
            raise ConfigError(f"{keyword} {text}: {word!r} is not KEY=VALUE")
        pairs.append((key, value))
    return pairs


def _expose(item: str) -> list[str]:
    port, _, proto = item.partition("/")
    proto = (proto or "tcp").lower()
    if proto not in ("tcp", "udp", "sctp"):
        raise ConfigError(f"invalid protocol in EXPOSE {item}")
    low, sep, high = port.partition("-")
    if not low.isdigit() or (sep and not high.isdigit()):
        raise ConfigError(f"invalid port in EXPOSE {item}")
    first, last = int(low), int(high) if sep else int(low)
    if not 0 < first <= last <= 65535:
        raise ConfigError(f"invalid port range in EXPOSE {item}")
    return [f"{p}/{proto}" for p in range(first, last + 1)]


def container_config(image_config: dict[str, Any], run: RunConfig) -> dict[str, Any]:
    """The image `config` a commit starts from: the base image's, with what the
    container was run with merged in (Docker commits the container's own config)."""
    out = json.loads(json.dumps(image_config))
    if run.env:
        env = list(out.get("Env") or [])
        for item in run.env:
            key, sep, _ = item.partition("=")
            env = [e for e in env if e.partition("=")[0] != key]
            if sep:
                env.append(item)
        out["Env"] = env
    if run.entrypoint is not None:
        out["Entrypoint"] = list(run.entrypoint) or None
        if run.command is None:
            out["Cmd"] = None  # a new entrypoint drops the image's Cmd, as in Docker
    if run.command is not None:
        out["Cmd"] = list(run.command)
    if run.workdir:
        out["WorkingDir"] = run.workdir
    if run.user:
        out["User"] = run.user
    if run.labels:
        out["Labels"] = {**(out.get("Labels") or {}), **run.labels}
    if run.stop_signal:
        out["StopSignal"] = run.stop_signal
    return {k: v for k, v in out.items() if v is not None}


@dataclass
class CommitOptions:
    repository: str | None = None  # REPO[:TAG]; None leaves the image untagged
    message: str = ""
    author: str = ""
    changes: list[str] = field(default_factory=list)
    pause: bool = True


def commit(service: ContainerService, ref: str, options: CommitOptions) -> ImageRecord:
    """`docker commit`: the container's upper dir as a new layer on its image's layers."""
    import tempfile

    record = service.get(ref)
    images = service.images
    base = images.catalog.get(record.image_id)
    if base is None:
        raise NotFoundError(f"the image of container {record.name} is gone ({record.image_id})")
    if options.repository:
        from hull.engine.images import parse_tag

        parse_tag(options.repository)  # a bad name fails before any work
    changes_config = apply_changes(
        container_config(base.config.get("config") or {}, record.run), options.changes
    )
    layout = service.layout(record)
    scratch = Path(service.paths.root) / "tmp"
    scratch.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=scratch, prefix="commit-") as tmp:
        layer_path = Path(tmp) / "layer.tar.gz"
        with _paused(service, record, options.pause and record.state == "running"):
            diff_id = _write_layer(layout, layer_path)
        config = _commit_config(base, record, changes_config, options)
        return images.commit(base.id, layer_path, diff_id, config, options.repository)


@contextlib.contextmanager
def _paused(service: ContainerService, record: ContainerRecord, pause: bool) -> Iterator[None]:
    """Freeze the container while its upper dir is read, so the layer is consistent."""
    if not pause:
        yield
        return
    service.pause(record.id)
    try:
        yield
    finally:
        with contextlib.suppress(HullError):
            service.unpause(record.id)


def _write_layer(layout: ContainerLayout, dest: Path) -> str:
    """The upper dir as a gzipped layer tar; its diff ID (digest of the plain tar)."""
    import gzip

    from hull.image.snapshots import tar_layer_from_upper

    with open(dest, "wb") as raw:
        with gzip.GzipFile(filename="", mode="wb", compresslevel=6, fileobj=raw, mtime=0) as gz:
            diff_id = tar_layer_from_upper(layout.upper, gz)  # type: ignore[arg-type]
        raw.flush()
        os.fsync(raw.fileno())
    return diff_id


def _commit_config(
    base: ImageRecord, record: ContainerRecord, config: dict[str, Any], options: CommitOptions
) -> dict[str, Any]:
    from datetime import UTC, datetime

    from hull.engine.containers import command_of

    created = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    out = {k: v for k, v in base.config.items() if k not in ("rootfs", "history", "config")}
    out["created"] = created
    out["config"] = config
    if options.author:
        out["author"] = options.author
    else:
        out.pop("author", None)
    entry: dict[str, Any] = {"created": created, "created_by": " ".join(command_of(record))}
    if options.author:
        entry["author"] = options.author
    if options.message:
        entry["comment"] = options.message
    out["history"] = [*(base.config.get("history") or []), entry]
    return out


# ================================================================== system


@dataclass
class UsageRow:
    """One row of `docker system df`: counts and bytes."""

    type: str
    total: int
    active: int
    size: int
    reclaimable: int


def disk_usage(service: ContainerService) -> list[UsageRow]:
    """Images (shared layers counted once), containers' upper dirs, volumes, build cache."""
    from hull.engine.images import tree_size
    from hull.engine.volumes import VolumeService
    from hull.oci.image import chain_ids

    containers = service.list_containers(all=True)
    used_images = {c.image_id for c in containers}
    images = service.images.catalog.all()
    layer_sizes: dict[str, int] = {}
    active_layers: set[str] = set()
    for image in images:
        chains = chain_ids(image.diff_ids)
        for chain, layer in zip(chains, image.layers, strict=True):
            layer_sizes[chain] = layer.unpacked_size
        if image.id in used_images:
            active_layers.update(chains)
    image_size = sum(layer_sizes.values())
    image_active = sum(1 for image in images if image.id in used_images)
    image_reclaimable = image_size - sum(layer_sizes[c] for c in active_layers)

    container_size = container_reclaimable = container_active = 0
    for record in containers:
        size = tree_size(Path(service.layout(record).upper))
        container_size += size
        if _running(record):
            container_active += 1
        else:
            container_reclaimable += size

    volumes = VolumeService(service.paths, service.db)
    volume_size = volume_reclaimable = volume_active = 0
    all_volumes = volumes.list_volumes()
    for doc in all_volumes:
        size = tree_size(Path(doc["Mountpoint"]))
        volume_size += size
        if volumes.users(doc["Name"]):
            volume_active += 1
        else:
            volume_reclaimable += size
    return [
        UsageRow("Images", len(images), image_active, image_size, image_reclaimable),
        UsageRow(
            "Containers", len(containers), container_active, container_size, container_reclaimable
        ),
        UsageRow("Local Volumes", len(all_volumes), volume_active, volume_size, volume_reclaimable),
        UsageRow("Build Cache", 0, 0, 0, 0),
    ]


@dataclass
class PruneReport:
    containers: list[str] = field(default_factory=list)
    images: list[dict[str, str]] = field(default_factory=list)
    volumes: list[str] = field(default_factory=list)
    reclaimed: int = 0


def system_prune(
    service: ContainerService, all_images: bool = False, volumes: bool = False
) -> PruneReport:
    """`docker system prune`: stopped containers, dangling images (every unused one
    with all_images) and, with volumes, unused anonymous volumes."""
    from hull.engine.images import tree_size
    from hull.engine.volumes import VolumeService

    report = PruneReport()
    for record in service.list_containers(all=True):
        if _running(record):
            continue
        size = tree_size(Path(service.layout(record).upper))
        try:
            service.remove(record.id, volumes=True)
        except HullError as err:
            print(
                f"hull: warning: removing container {record.short_id}: {err.message}",
                file=sys.stderr,
            )
            continue
        report.containers.append(record.id)
        report.reclaimed += size
    if volumes:
        store = VolumeService(service.paths, service.db)
        sizes = {
            row["name"]: tree_size(Path(row["mountpoint"]))
            for row in service.db.execute(
                "SELECT name, mountpoint FROM volumes WHERE anonymous = 1"
            ).fetchall()
        }
        report.volumes = store.prune()
        report.reclaimed += sum(sizes.get(name, 0) for name in report.volumes)
    result = service.images.prune(all=all_images)
    report.images = result.get("ImagesDeleted") or []
    report.reclaimed += int(result.get("SpaceReclaimed") or 0)
    return report


def system_info(service: ContainerService) -> dict[str, Any]:
    """`docker info`'s server fields that mean something for Hull (Docker's JSON keys)."""
    from hull import __version__
    from hull.runtime.linux.cgroups import detect_layout

    containers = service.list_containers(all=True)
    running = sum(1 for c in containers if c.state == "running")
    paused = sum(1 for c in containers if c.state == "paused")
    layout = _cgroup_layout(detect_layout)
    uname = os.uname()
    return {
        "ID": "",
        "Containers": len(containers),
        "ContainersRunning": running,
        "ContainersPaused": paused,
        "ContainersStopped": len(containers) - running - paused,
        "Images": len(service.images.catalog.all()),
        "Driver": "overlay",
        "DriverStatus": [["Backing Filesystem", _filesystem_of(Path(service.paths.root))]],
        "LoggingDriver": "json-file",
        "CgroupDriver": "cgroupfs",
        "CgroupVersion": "2" if layout == "v2" else "1",
        "CgroupLayout": layout,
        "KernelVersion": uname.release,
        "OperatingSystem": _os_name(),
        "OSType": "linux",
        "Architecture": uname.machine,
        "NCPU": os.cpu_count() or 1,
        "MemTotal": host_memory(),
        "DockerRootDir": str(service.paths.root),
        "Name": uname.nodename,
        "ServerVersion": __version__,
        "Runtimes": {"hull-runtime": {"path": "hull-runtime"}},
        "DefaultRuntime": "hull-runtime",
        "Isolation": "container",
        "SecurityOptions": ["name=seccomp,profile=builtin"],
        "Swarm": {"LocalNodeState": "inactive"},
    }


def _cgroup_layout(detect: Callable[[], str]) -> str:
    try:
        return detect()
    except (HullError, OSError):
        return "unknown"


def _filesystem_of(path: Path) -> str:
    """The filesystem type holding path, from /proc/self/mountinfo (longest match)."""
    best, kind = "", "unknown"
    target = str(path)
    with contextlib.suppress(OSError):
        with open("/proc/self/mountinfo") as f:
            for line in f:
                fields = line.split()
                mountpoint = fields[4]
                fs = fields[fields.index("-") + 1] if "-" in fields else "unknown"
                within = target == mountpoint or target.startswith(mountpoint.rstrip("/") + "/")
                if within and len(mountpoint) >= len(best):
                    best, kind = mountpoint, fs
    return kind


def _os_name() -> str:
    with contextlib.suppress(OSError):
        with open("/etc/os-release") as f:
            for line in f:
                key, _, value = line.strip().partition("=")
                if key == "PRETTY_NAME":
                    return value.strip('"')
    return platform.system()


def version_info() -> dict[str, Any]:
    """`docker version`: Client and Server sections (Python's version where Go's would be)."""
    from hull import __version__

    arch = {"x86_64": "amd64", "aarch64": "arm64"}.get(platform.machine(), platform.machine())
    python = platform.python_version()
    common = {
        "Version": __version__,
        "ApiVersion": API_VERSION,
        "PythonVersion": python,
        "Os": "linux",
        "Arch": arch,
    }
    return {
        "Client": {**common, "Context": "default"},
        "Server": {
            **common,
            "MinAPIVersion": MIN_API_VERSION,
            "KernelVersion": os.uname().release,
            "Components": [
                {"Name": "Engine", "Version": __version__},
                {"Name": "hull-runtime", "Version": __version__},
                {"Name": "hull-shim", "Version": __version__},
            ],
        },
    }
