"""Unpack image layers safely, and keep them unpacked once per chain ID.

A layer is a tar changeset from a registry: untrusted input. Extraction never
follows a symlink and never writes outside its destination:

- entry names that are absolute or contain `..` are REFUSED (ContentError naming
  the entry), as are hard links whose target is absolute, contains `..` or is
  not an entry of this layer;
- every parent directory is resolved with openat2(RESOLVE_BENEATH |
  RESOLVE_NO_SYMLINKS) from the destination, so an entry that goes *through* a
  symlink (`link -> /`, then `link/etc/evil`) is refused, whatever the link
  points at. Symlinks themselves are stored as they are;
- device nodes are created (as Docker does), always inside the destination;
- overlay's own xattrs (trusted.overlay.*) from the tar are dropped, so a layer
  cannot forge redirects or opaque markers except through real whiteouts.

Whiteouts are converted to what overlayfs reads in a lowerdir: `.wh.NAME`
becomes a 0/0 character device NAME, `.wh..wh..opq` sets
trusted.overlay.opaque=y on its directory. On any error the destination is
removed completely.

Compression is recognised by magic bytes (Docker does the same, whatever the
media type claims): gzip through the gzip module, zstd through the `zstd`
command-line tool in a pipe (Debian's zstd package; no PyPI dependency).
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import gzip
import os
import shutil
import stat
import subprocess
import tarfile
import tempfile
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import IO, cast

from hull.errors import ConfigError, NotFoundError, StateError
from hull.image.store import ContentError, ContentStore, fsync_dir
from hull.oci.digest import DigestVerifier, parse_digest
from hull.oci.image import LAYER_TYPES, Descriptor, chain_ids
from hull.runtime.linux import syscalls

GZIP_MAGIC = b"\x1f\x8b"
ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"
WHITEOUT_PREFIX = ".wh."
OPAQUE_WHITEOUT = ".wh..wh..opq"
OPAQUE_XATTR = "trusted.overlay.opaque"
_PAX_XATTR = "SCHILY.xattr."
_CHUNK = 1 << 20
_RESOLVE = syscalls.RESOLVE_BENEATH | syscalls.RESOLVE_NO_SYMLINKS | syscalls.RESOLVE_NO_MAGICLINKS


# ------------------------------------------------------------ decompression


class _HashingReader:
    """A read-only stream that hashes everything read through it (the diff ID)."""

    def __init__(self, raw: IO[bytes], verifier: DigestVerifier) -> None:
        self._raw = raw
        self.verifier = verifier

    def read(self, size: int = -1) -> bytes:
        data = self._raw.read(size)
        self.verifier.update(data)
        return data

    def drain(self) -> None:
        """Hash the rest (padding after the tar's end blocks counts toward the diff ID)."""
        while self.read(_CHUNK):
            pass


@contextlib.contextmanager
def open_uncompressed(blob_path: Path) -> Iterator[IO[bytes]]:
    """The tar stream inside a layer blob, however it was compressed."""
    with open(blob_path, "rb") as raw:
        magic = raw.read(4)
        raw.seek(0)
        if magic.startswith(GZIP_MAGIC):
            with gzip.GzipFile(fileobj=raw, mode="rb") as gz:
                yield cast(IO[bytes], gz)
            return
        if magic == ZSTD_MAGIC:
            with _zstd_stream(blob_path) as stream:
                yield stream
            return
        yield raw


@contextlib.contextmanager
def _zstd_stream(blob_path: Path) -> Iterator[IO[bytes]]:
    if shutil.which("zstd") is None:
        raise ConfigError("zstd layers need the zstd tool (apt-get install zstd)")
    with tempfile.TemporaryFile() as errors:
        proc = subprocess.Popen(
            ["zstd", "-d", "-c", "-q", "--", str(blob_path)],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=errors,
        )
        assert proc.stdout is not None
        try:
            yield proc.stdout
            proc.stdout.close()
            if proc.wait() != 0:
                errors.seek(0)
                message = errors.read().decode(errors="replace").strip()
                raise ContentError(f"corrupt zstd layer {blob_path.name}: {message}")
        finally:
            if proc.poll() is None:
                proc.kill()
            proc.wait()
            proc.stdout.close()


# --------------------------------------------------------------- extraction


def unpack_layer(blob_path: Path, media_type: str, dest: Path, expected_diff_id: str | None) -> str:
    """Extract a layer blob into dest (which must not exist yet); return its diff ID.

    The diff ID (sha256 of the uncompressed tar) must equal expected_diff_id if
    one is given. On any error dest is removed and the error re-raised.
    """
    if media_type not in LAYER_TYPES:
        raise ConfigError(f"unsupported layer media type {media_type!r}")
    verifier = DigestVerifier.for_digest(expected_diff_id) if expected_diff_id else DigestVerifier()
    dest = Path(dest)
    try:
        os.mkdir(dest, 0o755)  # never unpack over (or later delete) what we did not create
    except FileExistsError:
        raise StateError(f"cannot unpack a layer into {dest}: it already exists") from None
    try:
        with open_uncompressed(blob_path) as stream:
            reader = _HashingReader(stream, verifier)
            with _Extractor(dest) as extractor:
                extractor.extract(reader)
            reader.drain()
        diff_id = verifier.digest()
        if expected_diff_id and diff_id != expected_diff_id:
            raise ContentError(f"diff ID mismatch for layer {expected_diff_id}: got {diff_id}")
    except (OSError, EOFError, ValueError, OverflowError, zlib.error, tarfile.TarError) as exc:
        shutil.rmtree(dest, ignore_errors=True)
        raise ContentError(f"cannot unpack layer {blob_path.name}: {exc}") from exc
    except BaseException:
        shutil.rmtree(dest, ignore_errors=True)
        raise
    return diff_id


def clean_entry_name(name: str) -> str:
    """The entry's path relative to the layer root ("" is the root); refuses escapes."""
    if "\x00" in name:
        raise ContentError(f"refusing tar entry {name!r}: NUL in name")
    if name.startswith("/"):
        raise ContentError(f"refusing tar entry {name!r}: absolute path")
    parts = [p for p in name.split("/") if p not in ("", ".")]
    if ".." in parts:
        raise ContentError(f"refusing tar entry {name!r}: '..' in path")
    return "/".join(parts)


class _Extractor:
    """Writes tar entries beneath one directory fd, never through a symlink."""

    def __init__(self, dest: Path) -> None:
        self.dest = dest
        self.root_fd = os.open(dest, os.O_PATH | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
        self._parent: tuple[str, int] | None = None  # one-entry cache: tars are sorted
        self._dir_times: dict[str, tuple[int, int]] = {}

    def __enter__(self) -> _Extractor:
        return self

    def __exit__(self, *exc: object) -> None:
        self._drop_parent_cache()
        os.close(self.root_fd)

    # -- driving

    def extract(self, stream: _HashingReader) -> None:
        with tarfile.open(fileobj=stream, mode="r|") as tar:  # type: ignore[call-overload]
            for member in tar:
                self._entry(tar, member)
        self._restore_dir_times()

    def _entry(self, tar: tarfile.TarFile, member: tarfile.TarInfo) -> None:
        rel = clean_entry_name(member.name)
        if rel == "":
            if not member.isdir():
                raise ContentError(f"refusing tar entry {member.name!r}: root is not a directory")
            self._apply_root(member)
            return
        parent_rel, _, base = rel.rpartition("/")
        pfd = self._parent_fd(parent_rel, member.name)
        if base.startswith(WHITEOUT_PREFIX):
            self._whiteout(pfd, base, member)
            return
        existing = _lstat(pfd, base)
        if existing is not None and not (member.isdir() and stat.S_ISDIR(existing.st_mode)):
            if member.islnk() and clean_entry_name(member.linkname) == rel:
                return  # a hard link to itself: nothing to do
            self._remove(pfd, base, existing)
        if member.isdir():
            if existing is None or not stat.S_ISDIR(existing.st_mode):
                os.mkdir(base, 0o700, dir_fd=pfd)
            self._apply_dir(pfd, base, rel, member)
        elif member.isreg():
            self._regular(tar, pfd, base, member)
        elif member.issym():
            os.symlink(member.linkname, base, dir_fd=pfd)
            os.chown(base, member.uid, member.gid, dir_fd=pfd, follow_symlinks=False)
            self._xattrs(_proc_path(pfd, base), member, follow=False)
            _utime(pfd, base, member)
        elif member.islnk():
            self._hardlink(pfd, base, member)
        elif member.ischr() or member.isblk():
            kind = stat.S_IFCHR if member.ischr() else stat.S_IFBLK
            device = os.makedev(member.devmajor, member.devminor)
            os.mknod(base, kind | 0o600, device, dir_fd=pfd)  # inside dest, as Docker allows
            self._apply_meta(pfd, base, member)
            _utime(pfd, base, member)
        elif member.isfifo():
            os.mkfifo(base, 0o600, dir_fd=pfd)
            self._apply_meta(pfd, base, member)
            _utime(pfd, base, member)
        else:
            raise ContentError(
                f"refusing tar entry {member.name!r}: unsupported type {member.type!r}"
            )

    # -- path resolution

    def _parent_fd(self, parent_rel: str, entry_name: str) -> int:
        """An O_PATH fd of the entry's parent, creating missing directories (0755)."""
        if parent_rel == "":
            return self.root_fd
        if self._parent and self._parent[0] == parent_rel:
            return self._parent[1]
        self._drop_parent_cache()
        try:
            fd = syscalls.openat2(self.root_fd, parent_rel, os.O_PATH | os.O_DIRECTORY, 0, _RESOLVE)
        except OSError as exc:
            if exc.errno != errno.ENOENT:
                raise _path_error(entry_name, exc) from None
            fd = self._make_parents(parent_rel, entry_name)
        self._parent = (parent_rel, fd)
        return fd

    def _make_parents(self, parent_rel: str, entry_name: str) -> int:
        fd = os.dup(self.root_fd)
        try:
            for part in parent_rel.split("/"):
                with contextlib.suppress(FileExistsError):
                    os.mkdir(part, 0o755, dir_fd=fd)
                try:
                    child = syscalls.openat2(fd, part, os.O_PATH | os.O_DIRECTORY, 0, _RESOLVE)
                except OSError as exc:
                    raise _path_error(entry_name, exc) from None
                os.close(fd)
                fd = child
        except BaseException:
            os.close(fd)
            raise
        return fd

    def _resolve_existing(self, rel: str, entry_name: str) -> tuple[int, str]:
        """(parent fd, base) of an existing entry, for hard link targets; caller closes."""
        parent_rel, _, base = rel.rpartition("/")
        if parent_rel == "":
            return os.dup(self.root_fd), base
        try:
            fd = syscalls.openat2(self.root_fd, parent_rel, os.O_PATH | os.O_DIRECTORY, 0, _RESOLVE)
        except OSError as exc:
            raise _path_error(entry_name, exc, link=True) from None
        return fd, base

    def _drop_parent_cache(self) -> None:
        if self._parent is not None:
            os.close(self._parent[1])
            self._parent = None

    # -- entry kinds

    def _whiteout(self, pfd: int, base: str, member: tarfile.TarInfo) -> None:
        if base == OPAQUE_WHITEOUT:
            os.setxattr(f"/proc/self/fd/{pfd}", OPAQUE_XATTR, b"y")
            return
        if base.startswith(WHITEOUT_PREFIX + WHITEOUT_PREFIX):
            return  # other .wh..wh.* names are aufs bookkeeping (image-spec layer.md)
        name = base[len(WHITEOUT_PREFIX) :]
        if name in ("", ".", ".."):
            raise ContentError(f"refusing tar entry {member.name!r}: invalid whiteout")
        existing = _lstat(pfd, name)
        if existing is not None:
            self._remove(pfd, name, existing)
        os.mknod(name, stat.S_IFCHR | 0o000, os.makedev(0, 0), dir_fd=pfd)
        os.chown(name, member.uid, member.gid, dir_fd=pfd, follow_symlinks=False)

    def _regular(self, tar: tarfile.TarFile, pfd: int, base: str, member: tarfile.TarInfo) -> None:
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
        fd = os.open(base, flags, 0o600, dir_fd=pfd)
        try:
            source = tar.extractfile(member)
            if source is not None:
                with os.fdopen(os.dup(fd), "wb") as out:
                    shutil.copyfileobj(source, out, _CHUNK)
            os.fchown(fd, member.uid, member.gid)
            os.fchmod(fd, member.mode & 0o7777)  # after chown, which clears setuid
            self._xattrs(fd, member)
            os.utime(fd, ns=_times(member))
        finally:
            os.close(fd)

    def _hardlink(self, pfd: int, base: str, member: tarfile.TarInfo) -> None:
        try:
            target = clean_entry_name(member.linkname)
        except ContentError:
            raise ContentError(
                f"refusing hard link {member.name!r} -> {member.linkname!r}: "
                "target is outside the layer"
            ) from None
        if target == "":
            raise ContentError(f"refusing hard link {member.name!r} to the layer root")
        tfd, tbase = self._resolve_existing(target, member.name)
        try:
            os.link(tbase, base, src_dir_fd=tfd, dst_dir_fd=pfd, follow_symlinks=False)
        except FileNotFoundError:
            raise ContentError(
                f"refusing hard link {member.name!r} -> {member.linkname!r}: "
                "target is not in this layer"
            ) from None
        except PermissionError:
            raise ContentError(
                f"refusing hard link {member.name!r} -> {member.linkname!r}: target is a directory"
            ) from None
        finally:
            os.close(tfd)

    def _apply_dir(self, pfd: int, base: str, rel: str, member: tarfile.TarInfo) -> None:
        self._apply_meta(pfd, base, member)
        self._dir_times[rel] = _times(member)

    def _apply_root(self, member: tarfile.TarInfo) -> None:
        os.chown(self.dest, member.uid, member.gid, follow_symlinks=False)
        os.chmod(self.dest, member.mode & 0o7777)
        self._xattrs(str(self.dest), member, follow=False)
        self._dir_times[""] = _times(member)

    def _apply_meta(self, pfd: int, base: str, member: tarfile.TarInfo) -> None:
        """Owner, then mode (chown clears setuid), then xattrs; never through a symlink."""
        fd = os.open(base, os.O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=pfd)
        try:
            if stat.S_ISLNK(os.fstat(fd).st_mode):
                raise ContentError(f"refusing tar entry {member.name!r}: became a symlink")
            path = f"/proc/self/fd/{fd}"
            os.chown(path, member.uid, member.gid)
            os.chmod(path, member.mode & 0o7777)
            self._xattrs(path, member)
        finally:
            os.close(fd)

    def _xattrs(self, target: int | str, member: tarfile.TarInfo, follow: bool = True) -> None:
        for key, value in member.pax_headers.items():
            if not key.startswith(_PAX_XATTR):
                continue
            name = key[len(_PAX_XATTR) :]
            if name.startswith(("trusted.overlay.", "user.overlay.")):
                continue  # only real whiteouts may speak to overlayfs
            data = value.encode("utf-8", "surrogateescape")
            try:
                os.setxattr(target, name, data, follow_symlinks=follow)
            except OSError as exc:
                if exc.errno not in (errno.ENOTSUP, errno.EOPNOTSUPP):
                    raise

    def _remove(self, pfd: int, base: str, existing: os.stat_result) -> None:
        """Make room for a later entry of the same name (later entries win, as in tar)."""
        if stat.S_ISDIR(existing.st_mode):
            shutil.rmtree(base, dir_fd=pfd)  # fd-based: never follows a symlink
        else:
            os.unlink(base, dir_fd=pfd)

    def _restore_dir_times(self) -> None:
        """Directory mtimes last: creating their children changed them."""
        self._drop_parent_cache()
        for rel, times in sorted(self._dir_times.items(), key=lambda kv: -kv[0].count("/")):
            if rel == "":
                os.utime(self.dest, ns=times, follow_symlinks=False)
                continue
            try:
                fd = syscalls.openat2(self.root_fd, rel, os.O_PATH | os.O_DIRECTORY, 0, _RESOLVE)
            except OSError:
                continue  # replaced or whited out later in the same layer
            try:
                os.utime(f"/proc/self/fd/{fd}", ns=times)
            finally:
                os.close(fd)


def _lstat(pfd: int, base: str) -> os.stat_result | None:
    try:
        return os.stat(base, dir_fd=pfd, follow_symlinks=False)
    except FileNotFoundError:
        return None


def _proc_path(pfd: int, base: str) -> str:
    """A path to base in the directory pfd pins, for calls that lack a dir_fd."""
    return f"/proc/self/fd/{pfd}/{base}"


def _times(member: tarfile.TarInfo) -> tuple[int, int]:
    mtime = int(float(member.mtime) * 1_000_000_000)
    atime_raw = member.pax_headers.get("atime")
    try:
        atime = int(float(atime_raw) * 1_000_000_000) if atime_raw else mtime
    except ValueError:
        atime = mtime
    return atime, mtime


def _utime(pfd: int, base: str, member: tarfile.TarInfo) -> None:
    os.utime(base, ns=_times(member), dir_fd=pfd, follow_symlinks=False)


def _path_error(entry_name: str, exc: OSError, link: bool = False) -> ContentError:
    what = "hard link target of" if link else "tar entry"
    if exc.errno in (errno.ELOOP, errno.EXDEV):
        return ContentError(f"refusing {what} {entry_name!r}: its path goes through a symlink")
    if exc.errno == errno.ENOTDIR:
        return ContentError(f"refusing {what} {entry_name!r}: a parent is not a directory")
    if exc.errno == errno.ENOENT and link:
        return ContentError(f"refusing {what} {entry_name!r}: target is not in this layer")
    return ContentError(f"cannot resolve {what} {entry_name!r}: {exc.strerror}")


# ------------------------------------------------------------- layer store


class LayerStore:
    """Unpacked layers, one per chain ID, shared by every image that has them.

        <root>/layers/<chain-hex>/diff       the layer, an overlay lowerdir
        <root>/layers/<chain-hex>/complete   written last; without it the dir is junk
        <root>/layers/.tmp-*                 unpacks in progress (flocked) or crash debris

    Unpacks happen in a private temp dir without a lock; only the rename into
    place and the marker are serialised (flock on the layers dir), so two pulls
    sharing a base layer never see it half-made.
    """

    MARKER = "complete"

    def __init__(self, root: Path, store: ContentStore) -> None:
        self.root = Path(root) / "layers"
        self.store = store

    def _dir(self, chain_id: str) -> Path:
        return self.root / parse_digest(chain_id)[1]

    def has(self, chain_id: str) -> bool:
        return (self._dir(chain_id) / self.MARKER).is_file()

    def path(self, chain_id: str) -> Path:
        if not self.has(chain_id):
            raise NotFoundError(f"layer {chain_id} is not unpacked")
        return self._dir(chain_id) / "diff"

    def chain_ids(self) -> list[str]:
        if not self.root.is_dir():
            return []
        out = []
        for entry in self.root.iterdir():
            algorithm = {64: "sha256", 128: "sha512"}.get(len(entry.name))
            if algorithm and (entry / self.MARKER).is_file():
                out.append(f"{algorithm}:{entry.name}")
        return sorted(out)

    def ensure(self, layers: list[Descriptor], diff_ids: list[str]) -> list[Path]:
        """Unpack whatever is missing; the diff dirs, bottom layer first."""
        if len(layers) != len(diff_ids):
            raise ConfigError(
                f"image has {len(layers)} layers but its config lists {len(diff_ids)} diff IDs"
            )
        out = []
        for desc, diff_id, chain_id in zip(layers, diff_ids, chain_ids(diff_ids), strict=True):
            if not self.has(chain_id):
                self._unpack(desc, diff_id, chain_id)
            out.append(self._dir(chain_id) / "diff")
        return out

    def _unpack(self, desc: Descriptor, diff_id: str, chain_id: str) -> None:
        blob = self.store.path(desc.digest)
        size = blob.stat().st_size
        if size != desc.size:
            raise ContentError(
                f"layer blob {desc.digest} is {size} bytes but its descriptor says {desc.size}"
            )
        with self._locked():  # so sweep() never sees the temp dir before it is flocked
            tmp = Path(tempfile.mkdtemp(prefix=".tmp-", dir=self.root))
            tmp_fd = os.open(tmp, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
            fcntl.flock(tmp_fd, fcntl.LOCK_EX)  # tells sweep() this unpack is alive
        try:
            unpack_layer(blob, desc.media_type, tmp / "diff", diff_id)
            os.sync()  # the marker must not reach the disk before the files do
            with self._locked():
                if self.has(chain_id):
                    return  # another process finished it first
                final = self._dir(chain_id)
                if final.exists():
                    shutil.rmtree(final)  # debris of a crash: no marker
                os.rename(tmp, final)
                _write_marker(final / self.MARKER, chain_id)
                fsync_dir(self.root)
        finally:
            os.close(tmp_fd)
            if tmp.exists():
                shutil.rmtree(tmp, ignore_errors=True)

    def remove(self, chain_id: str) -> None:
        """Delete an unpacked layer (callers make sure no image or mount uses it)."""
        final = self._dir(chain_id)
        with self._locked():
            if not final.exists():
                return
            trash = Path(tempfile.mkdtemp(prefix=".tmp-rm-", dir=self.root))
            os.rename(final, trash / "layer")
            fsync_dir(self.root)
        shutil.rmtree(trash, ignore_errors=True)

    def sweep(self) -> None:
        """Start-up cleanup: temp dirs nobody holds and layer dirs without a marker."""
        if not self.root.is_dir():
            return
        with self._locked():
            for entry in self.root.iterdir():
                if entry.name == ".lock":
                    continue
                if entry.name.startswith(".tmp-"):
                    if not _dir_locked(entry):
                        shutil.rmtree(entry, ignore_errors=True)
                elif not (entry / self.MARKER).is_file() or entry.is_symlink():
                    if entry.is_dir() and not entry.is_symlink():
                        shutil.rmtree(entry, ignore_errors=True)
                    else:
                        entry.unlink(missing_ok=True)
                else:
                    (entry / f"{self.MARKER}.tmp").unlink(missing_ok=True)

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        self.root.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.root / ".lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)


def _write_marker(path: Path, chain_id: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w") as f:
        f.write(chain_id + "\n")
        f.flush()
        os.fsync(f.fileno())
    os.rename(tmp, path)
    fsync_dir(path.parent)


def _dir_locked(path: Path) -> bool:
    try:
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)
    return False


__all__ = [
    "ContentError",
    "LayerStore",
    "clean_entry_name",
    "open_uncompressed",
    "unpack_layer",
]
