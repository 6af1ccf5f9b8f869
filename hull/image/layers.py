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
media type claims): gzip through zlib directly, zstd through the `zstd`
command-line tool in a pipe (Debian's zstd package; no PyPI dependency).

LayerUnpacker takes the blob's bytes as they come (a download, or a file):
decompression and hashing in the feeding thread, tar parsing and file creation
in a thread of its own, so a pull unpacks while it downloads and uses both
cores. A layer is published in the LayerStore only after the blob's digest and
size, the diff ID and the extraction have all checked out (StreamedLayer).
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import gzip
import os
import queue
import shutil
import stat
import subprocess
import tarfile
import tempfile
import threading
import zlib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO, NoReturn, TypeVar, cast

from hull.errors import ConfigError, HullError, NotFoundError, StateError
from hull.flocks import held_elsewhere
from hull.image import layer_paths
from hull.image.store import ContentError, ContentStore, fsync_dir
from hull.image.whiteout import OPAQUE_WHITEOUT, OPAQUE_XATTR, WHITEOUT_PREFIX
from hull.oci.digest import DigestVerifier
from hull.oci.image import LAYER_TYPES, Descriptor, chain_ids
from hull.runtime.linux import syscalls

GZIP_MAGIC = b"\x1f\x8b"
ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"
_PAX_XATTR = "SCHILY.xattr."
_CHUNK = 1 << 20
_FEED_CHUNK = 256 * 1024  # blob bytes per feed() when unpacking from a file
_OUT_CHUNK = 512 * 1024  # most uncompressed bytes one handoff carries
_PIPE_DEPTH = 16  # handoffs in flight between decompression and extraction
_POLL_SECONDS = 0.05  # how often a blocked side checks whether the other gave up
_MAX_HEADER_READ = 16 << 20  # pax and GNU long-name headers: far below this in practice
_GZIP_WBITS = 16 + zlib.MAX_WBITS  # zlib decodes the gzip wrapper and checks its trailer
_UNPACK_ERRORS = (OSError, EOFError, ValueError, OverflowError, zlib.error, tarfile.TarError)
_T = TypeVar("_T")
_RESOLVE = syscalls.RESOLVE_BENEATH | syscalls.RESOLVE_NO_SYMLINKS | syscalls.RESOLVE_NO_MAGICLINKS


# ------------------------------------------------------------ decompression


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


Emit = Callable[[bytes], None]


class _PlainDecoder:
    """An uncompressed tar: bytes pass straight through."""

    def __init__(self, emit: Emit) -> None:
        self.write = emit

    def close(self) -> None:
        pass

    def abort(self) -> None:
        pass


class _GzipDecoder:
    """gzip with zlib directly: one or more members, zero padding between them, as
    GzipFile reads it; zlib checks each member's CRC-32 and length. Output comes in
    pieces of at most _OUT_CHUNK, so a small bomb cannot make a huge buffer."""

    def __init__(self, emit: Emit) -> None:
        self._emit = emit
        self._zlib = zlib.decompressobj(_GZIP_WBITS)
        self._in_member = True

    def write(self, data: bytes) -> None:
        while data:
            if not self._in_member:
                data = data.lstrip(b"\x00")
                if not data:
                    return
                self._zlib = zlib.decompressobj(_GZIP_WBITS)
                self._in_member = True
            z = self._zlib
            pending = data
            while True:
                out = z.decompress(pending, _OUT_CHUNK)
                if out:
                    self._emit(out)
                if z.eof:
                    break
                pending = z.unconsumed_tail
                if not pending and len(out) < _OUT_CHUNK:
                    break  # all input used and nothing held back: wait for more
            if z.eof:
                self._in_member = False
                data = z.unused_data
            else:
                data = b""

    def close(self) -> None:
        if self._in_member:
            raise ContentError("the gzip stream ends before its end-of-stream marker")

    def abort(self) -> None:
        pass


class _ZstdDecoder:
    """zstd through the zstd tool (Debian's zstd package): we write its stdin, a
    thread of ours reads its stdout."""

    def __init__(self, emit: Emit, name: str) -> None:
        if shutil.which("zstd") is None:
            raise ConfigError("zstd layers need the zstd tool (apt-get install zstd)")
        self._emit = emit
        self._name = name
        self._errors = tempfile.TemporaryFile()  # noqa: SIM115 (closed by close/abort)
        self._proc = subprocess.Popen(
            ["zstd", "-d", "-c", "-q"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self._errors,
        )
        self._failure: BaseException | None = None
        self._pump = threading.Thread(target=self._read_output, name="hull-zstd", daemon=True)
        self._pump.start()

    def _read_output(self) -> None:
        assert self._proc.stdout is not None
        fd = self._proc.stdout.fileno()
        try:
            while data := os.read(fd, _OUT_CHUNK):
                self._emit(data)
        except BaseException as exc:
            self._failure = exc
            self._proc.kill()  # a writer blocked on its stdin gets EPIPE, not a hang

    def write(self, data: bytes) -> None:
        assert self._proc.stdin is not None
        try:
            self._proc.stdin.write(data)
        except BrokenPipeError:
            self.close()  # says why zstd stopped reading
            raise ContentError(f"corrupt zstd layer {self._name}") from None

    def close(self) -> None:
        assert self._proc.stdin is not None
        with contextlib.suppress(BrokenPipeError):
            self._proc.stdin.close()
        self._pump.join()
        code = self._proc.wait()
        self._errors.seek(0)
        message = self._errors.read().decode(errors="replace").strip()
        self._release()
        if self._failure is not None:
            raise self._failure
        if code != 0:
            raise ContentError(f"corrupt zstd layer {self._name}: {message}")

    def abort(self) -> None:
        if self._proc.poll() is None:
            self._proc.kill()
        with contextlib.suppress(OSError):
            assert self._proc.stdin is not None
            self._proc.stdin.close()
        self._pump.join()
        self._proc.wait()
        self._release()

    def _release(self) -> None:
        assert self._proc.stdout is not None
        self._proc.stdout.close()
        self._errors.close()


# ------------------------------------------------------- streamed unpacking


class _ExtractorStopped(Exception):
    """The extractor thread is gone (failed or aborted); it holds the reason."""


class _ChunkPipe:
    """A bounded hand-off of byte chunks (b"" ends the stream) to the extractor thread."""

    def __init__(self, depth: int = _PIPE_DEPTH) -> None:
        self._queue: queue.Queue[bytes] = queue.Queue(depth)
        self._stopped = threading.Event()

    def put(self, chunk: bytes) -> None:
        while not self._stopped.is_set():
            try:
                self._queue.put(chunk, timeout=_POLL_SECONDS)
                return
            except queue.Full:
                continue
        raise _ExtractorStopped

    def get(self) -> bytes:
        while not self._stopped.is_set():
            try:
                return self._queue.get(timeout=_POLL_SECONDS)
            except queue.Empty:
                continue
        raise _ExtractorStopped

    def stop(self) -> None:
        """No more hand-offs either way: the extractor ended, or the unpack is aborted."""
        self._stopped.set()


class _ChunkReader:
    """A forward-only file object over a source of chunks, for tarfile's "r:" mode.

    tarfile only ever seeks forward here (to skip padding); file contents bypass
    it entirely through copy_to(), straight from the chunks to the file.
    """

    def __init__(self, source: Callable[[], bytes]) -> None:
        self._source = source
        self._chunk = memoryview(b"")
        self._at = 0
        self._offset = 0
        self._eof = False

    def tell(self) -> int:
        return self._offset

    def _take(self, limit: int) -> memoryview | None:
        """Up to limit bytes from the current chunk (fetching the next if needed)."""
        while self._at >= len(self._chunk):
            if self._eof:
                return None
            data = self._source()
            if not data:
                self._eof = True
                return None
            self._chunk, self._at = memoryview(data), 0
        piece = self._chunk[self._at : self._at + limit]
        self._at += len(piece)
        self._offset += len(piece)
        return piece

    def read(self, size: int = -1) -> bytes:
        if size < 0 or size > _MAX_HEADER_READ:
            raise ContentError(f"refusing a tar header of {size} bytes")
        parts = []
        while size > 0 and (piece := self._take(size)) is not None:
            parts.append(piece)
            size -= len(piece)
        return b"".join(parts)

    def seek(self, pos: int, whence: int = os.SEEK_SET) -> int:
        if whence != os.SEEK_SET or pos < self._offset:
            raise OSError(errno.ESPIPE, "a layer stream only seeks forward")
        remaining = pos - self._offset
        while remaining > 0 and (piece := self._take(remaining)) is not None:
            remaining -= len(piece)
        return self._offset

    def copy_to(self, fd: int, size: int) -> None:
        """Write the next size bytes to fd."""
        while size > 0:
            piece = self._take(min(size, _CHUNK))
            if piece is None:
                raise EOFError("unexpected end of data in a file's contents")
            _write_all(fd, piece)
            size -= len(piece)

    def drain(self) -> None:
        """Read to the end: the tar's end blocks and any padding after them."""
        while self._take(1 << 30) is not None:
            pass


def _write_all(fd: int, data: memoryview | bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


class LayerUnpacker:
    """Unpacks one layer from its blob's bytes as they arrive, verifying as it goes.

    feed() the blob in order (from a download or a file), then finish(), which
    returns the diff ID once the tar is fully extracted and, if given, the diff ID
    and the blob's own digest and size all match. Decompression and hashing run
    in the feeding thread (zlib and hashlib release the GIL), tar parsing and file
    creation in a thread of the unpacker's own, so the two overlap on two cores.

    dest must not exist; the unpacker creates it. On any error, and on abort(),
    dest is removed completely: a failed unpacker leaves nothing behind. Errors
    come out of feed() as early as the extractor hits them, or out of finish().
    """

    def __init__(
        self,
        dest: Path,
        media_type: str,
        expected_diff_id: str | None = None,
        expected_blob: Descriptor | None = None,
        name: str | None = None,
    ) -> None:
        if media_type not in LAYER_TYPES:
            raise ConfigError(f"unsupported layer media type {media_type!r}")
        self.dest = Path(dest)
        self.name = name or self.dest.name
        self.expected_diff_id = expected_diff_id
        self.expected_blob = expected_blob
        self.fed = 0  # bytes of the blob seen so far
        self._diff = (
            DigestVerifier.for_digest(expected_diff_id) if expected_diff_id else DigestVerifier()
        )
        self._blob = DigestVerifier.for_digest(expected_blob.digest) if expected_blob else None
        try:
            os.mkdir(self.dest, 0o755)  # never unpack over (or later delete) what we did not create
        except FileExistsError:
            raise StateError(f"cannot unpack a layer into {self.dest}: it already exists") from None
        self._pipe = _ChunkPipe()
        self._decoder: _PlainDecoder | _GzipDecoder | _ZstdDecoder | None = None
        self._head = b""
        self._error: BaseException | None = None
        self._state = "open"  # -> "finished" or "aborted"
        self._thread = threading.Thread(target=self._extract, name="hull-unpack", daemon=True)
        self._thread.start()

    # -- the feeding side

    def feed(self, data: bytes) -> None:
        if self._state != "open":
            raise StateError(f"the unpack of layer {self.name} is already {self._state}")
        try:
            self.fed += len(data)
            if self._blob is not None:
                self._blob.update(data)
            if self._decoder is None:
                self._head += data
                if len(self._head) < len(ZSTD_MAGIC):
                    return
                data, self._head = self._head, b""
                self._decoder = self._decoder_for(data)
            self._decoder.write(data)
        except BaseException as exc:
            self._fail(exc)

    def finish(self) -> str:
        """Wait for the extractor and check everything; the diff ID of the layer."""
        if self._state != "open":
            raise StateError(f"the unpack of layer {self.name} is already {self._state}")
        try:
            if self._decoder is None:
                head, self._head = self._head, b""
                self._decoder = self._decoder_for(head)
                if head:
                    self._decoder.write(head)
            self._decoder.close()
            self._pipe.put(b"")
            self._thread.join()
            if self._error is not None:
                raise self._error
            self._check_blob()
            diff_id = self._diff.digest()
            if self.expected_diff_id and diff_id != self.expected_diff_id:
                raise ContentError(
                    f"diff ID mismatch for layer {self.expected_diff_id}: got {diff_id}"
                )
        except BaseException as exc:
            self._fail(exc)
        self._state = "finished"
        return diff_id

    def abort(self) -> None:
        """Stop and remove dest (a no-op once finished or aborted)."""
        if self._state != "open":
            return
        self._state = "aborted"
        self._pipe.stop()
        if self._decoder is not None:
            self._decoder.abort()
        self._thread.join()
        shutil.rmtree(self.dest, ignore_errors=True)

    def _check_blob(self) -> None:
        if self.expected_blob is None or self._blob is None:
            return
        if self.fed != self.expected_blob.size:
            raise ContentError(
                f"layer blob {self.expected_blob.digest} is {self.fed} bytes but its "
                f"descriptor says {self.expected_blob.size}"
            )
        if self._blob.digest() != self.expected_blob.digest:
            raise ContentError(
                f"digest mismatch for {self.expected_blob.digest}: got {self._blob.digest()}"
            )

    def _decoder_for(self, head: bytes) -> _PlainDecoder | _GzipDecoder | _ZstdDecoder:
        """By magic bytes, as Docker does, whatever the media type claims."""
        if head.startswith(GZIP_MAGIC):
            return _GzipDecoder(self._emit)
        if head.startswith(ZSTD_MAGIC):
            return _ZstdDecoder(self._emit, self.name)
        return _PlainDecoder(self._emit)

    def _emit(self, chunk: bytes) -> None:
        self._diff.update(chunk)
        self._pipe.put(chunk)

    def _fail(self, exc: BaseException) -> NoReturn:
        if isinstance(exc, _ExtractorStopped):
            self._thread.join()
            exc = self._error or ContentError(f"the unpack of layer {self.name} stopped")
        self.abort()
        if isinstance(exc, _UNPACK_ERRORS) and not isinstance(exc, HullError):
            raise ContentError(f"cannot unpack layer {self.name}: {exc}") from exc
        raise exc

    # -- the extractor thread

    def _extract(self) -> None:
        try:
            reader = _ChunkReader(self._pipe.get)
            with _Extractor(self.dest) as extractor:
                extractor.extract(reader)
            reader.drain()
        except BaseException as exc:
            self._error = exc
        finally:
            self._pipe.stop()


# --------------------------------------------------------------- extraction


def unpack_layer(blob_path: Path, media_type: str, dest: Path, expected_diff_id: str | None) -> str:
    """Extract a layer blob into dest (which must not exist yet); return its diff ID.

    The diff ID (sha256 of the uncompressed tar) must equal expected_diff_id if
    one is given. On any error dest is removed and the error re-raised.
    """
    unpacker = LayerUnpacker(dest, media_type, expected_diff_id, name=Path(blob_path).name)
    try:
        with open(blob_path, "rb") as blob:
            while data := blob.read(_FEED_CHUNK):
                unpacker.feed(data)
    except OSError as exc:
        unpacker.abort()
        raise ContentError(f"cannot unpack layer {Path(blob_path).name}: {exc}") from exc
    except BaseException:
        unpacker.abort()
        raise
    return unpacker.finish()


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

    def extract(self, reader: _ChunkReader) -> None:
        # "r:" reads the headers straight from the reader (no stream-mode buffering
        # layer); contents go from the reader's chunks to the files in _regular.
        with tarfile.open(fileobj=reader, mode="r:") as tar:  # type: ignore[call-overload]
            for member in tar:
                self._entry(tar, reader, member)
        self._restore_dir_times()

    def _entry(self, tar: tarfile.TarFile, reader: _ChunkReader, member: tarfile.TarInfo) -> None:
        rel = clean_entry_name(member.name)
        if rel == "":
            if not member.isdir():
                raise ContentError(f"refusing tar entry {member.name!r}: root is not a directory")
            self._apply_root(member)
            return
        parent_rel, _, base = rel.rpartition("/")
        pfd = self._parent_fd(parent_rel, member.name)
        if base.startswith(WHITEOUT_PREFIX):
            self._whiteout(pfd, parent_rel, base, member)
            return
        if member.isdir():
            self._directory(pfd, base, rel, member)
        elif member.isreg():
            self._regular(tar, reader, pfd, base, rel, member)
        elif member.issym():
            self._make(
                pfd, base, rel, member, lambda: os.symlink(member.linkname, base, dir_fd=pfd)
            )
            os.chown(base, member.uid, member.gid, dir_fd=pfd, follow_symlinks=False)
            self._xattrs(_proc_path(pfd, base), member, follow=False)
            _utime(pfd, base, member)
        elif member.islnk():
            self._hardlink(pfd, base, rel, member)
        elif member.ischr() or member.isblk():
            kind = stat.S_IFCHR if member.ischr() else stat.S_IFBLK
            device = os.makedev(member.devmajor, member.devminor)
            # inside dest, as Docker allows
            self._make(
                pfd, base, rel, member, lambda: os.mknod(base, kind | 0o600, device, dir_fd=pfd)
            )
            self._apply_meta(pfd, base, member)
            _utime(pfd, base, member)
        elif member.isfifo():
            self._make(pfd, base, rel, member, lambda: os.mkfifo(base, 0o600, dir_fd=pfd))
            self._apply_meta(pfd, base, member)
            _utime(pfd, base, member)
        else:
            raise ContentError(
                f"refusing tar entry {member.name!r}: unsupported type {member.type!r}"
            )

    def _make(
        self, pfd: int, base: str, rel: str, member: tarfile.TarInfo, create: Callable[[], _T]
    ) -> _T | None:
        """Create an entry; if the name is taken, the later entry wins, as in tar.

        Creating first and looking only on EEXIST saves an lstat per entry: names
        are almost always new.
        """
        try:
            return create()
        except FileExistsError:
            pass
        if member.islnk() and clean_entry_name(member.linkname) == rel:
            return None  # a hard link to itself: nothing to do
        existing = _lstat(pfd, base)
        if existing is not None:
            self._remove(pfd, base, rel, existing)
        return create()

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

    def _whiteout(self, pfd: int, parent_rel: str, base: str, member: tarfile.TarInfo) -> None:
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
            self._remove(pfd, name, f"{parent_rel}/{name}".lstrip("/"), existing)
        os.mknod(name, stat.S_IFCHR | 0o000, os.makedev(0, 0), dir_fd=pfd)
        os.chown(name, member.uid, member.gid, dir_fd=pfd, follow_symlinks=False)

    def _directory(self, pfd: int, base: str, rel: str, member: tarfile.TarInfo) -> None:
        try:
            os.mkdir(base, 0o700, dir_fd=pfd)
        except FileExistsError:
            existing = _lstat(pfd, base)
            if existing is None or not stat.S_ISDIR(existing.st_mode):
                if existing is not None:
                    self._remove(pfd, base, rel, existing)
                os.mkdir(base, 0o700, dir_fd=pfd)
        self._apply_dir(pfd, base, rel, member)

    def _regular(
        self,
        tar: tarfile.TarFile,
        reader: _ChunkReader,
        pfd: int,
        base: str,
        rel: str,
        member: tarfile.TarInfo,
    ) -> None:
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
        fd = self._make(pfd, base, rel, member, lambda: os.open(base, flags, 0o600, dir_fd=pfd))
        assert fd is not None
        try:
            if member.issparse():
                source = tar.extractfile(member)
                assert source is not None
                while data := source.read(_CHUNK):
                    _write_all(fd, data)
            else:
                reader.seek(member.offset_data)  # where the header left it: a no-op
                reader.copy_to(fd, member.size)
            os.fchown(fd, member.uid, member.gid)
            os.fchmod(fd, member.mode & 0o7777)  # after chown, which clears setuid
            self._xattrs(fd, member)
            os.utime(fd, ns=_times(member))
        finally:
            os.close(fd)

    def _hardlink(self, pfd: int, base: str, rel: str, member: tarfile.TarInfo) -> None:
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
            self._make(
                pfd,
                base,
                rel,
                member,
                lambda: os.link(tbase, base, src_dir_fd=tfd, dst_dir_fd=pfd, follow_symlinks=False),
            )
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

    def _remove(self, pfd: int, base: str, rel: str, existing: os.stat_result) -> None:
        """Make room for a later entry of the same name (later entries win, as in tar)."""
        if stat.S_ISDIR(existing.st_mode):
            shutil.rmtree(base, dir_fd=pfd)  # fd-based: never follows a symlink
            cached = self._parent[0] if self._parent else None
            if cached is not None and (cached == rel or cached.startswith(rel + "/")):
                self._drop_parent_cache()  # it pinned a directory that is gone
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

    MARKER = layer_paths.MARKER

    def __init__(self, root: str | Path, store: ContentStore) -> None:
        self._base = Path(root)
        self.root = self._base / "layers"
        self.store = store

    def _dir(self, chain_id: str) -> Path:
        return Path(layer_paths.layer_dir(self._base, chain_id))

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

    def stream(self, desc: Descriptor, diff_id: str, chain_id: str) -> StreamedLayer:
        """Unpack a layer from its blob's bytes while they download (see StreamedLayer)."""
        return StreamedLayer(self, desc, diff_id, chain_id)

    def _unpack(self, desc: Descriptor, diff_id: str, chain_id: str) -> None:
        blob = self.store.path(desc.digest)
        size = blob.stat().st_size
        if size != desc.size:
            raise ContentError(
                f"layer blob {desc.digest} is {size} bytes but its descriptor says {desc.size}"
            )
        tmp, tmp_fd = self._new_tmp()
        try:
            unpack_layer(blob, desc.media_type, tmp / "diff", diff_id)
            self._publish(tmp, chain_id)
        finally:
            self._drop_tmp(tmp, tmp_fd)

    def _new_tmp(self) -> tuple[Path, int]:
        """A private temp dir for one unpack, flocked (open fd) while the unpack lives."""
        with self._locked():  # so sweep() never sees the temp dir before it is flocked
            tmp = Path(tempfile.mkdtemp(prefix=".tmp-", dir=self.root))
            tmp_fd = os.open(tmp, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
            fcntl.flock(tmp_fd, fcntl.LOCK_EX)  # tells sweep() this unpack is alive
        return tmp, tmp_fd

    def _publish(self, tmp: Path, chain_id: str) -> None:
        """Move a verified unpack into place; the marker goes last, after the files are durable."""
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

    @staticmethod
    def _drop_tmp(tmp: Path, tmp_fd: int) -> None:
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


class StreamedLayer:
    """One layer unpacked while its blob downloads: feed() the blob's bytes as they
    arrive (from byte 0, in order), commit() once the download is complete.

    The layer becomes visible (renamed into place, marker written) only in
    commit(), and only if the bytes fed hash to the descriptor's digest and size
    and the tar hashes to the diff ID and extracted cleanly: the unpacker checks
    the blob itself, whatever the content store made of the same bytes. An
    error, abort() or a crash leaves at most a flocked temp dir, which abort()
    removes at once and LayerStore.sweep() after a crash.
    """

    def __init__(self, layers: LayerStore, desc: Descriptor, diff_id: str, chain_id: str) -> None:
        self.chain_id = chain_id
        self._layers = layers
        self._tmp, self._tmp_fd = layers._new_tmp()
        try:
            self._unpacker = LayerUnpacker(
                self._tmp / "diff", desc.media_type, diff_id, expected_blob=desc, name=desc.digest
            )
        except BaseException:
            layers._drop_tmp(self._tmp, self._tmp_fd)
            raise
        self._open = True

    @property
    def fed(self) -> int:
        """Bytes of the blob fed so far."""
        return self._unpacker.fed

    def feed(self, data: bytes) -> None:
        try:
            self._unpacker.feed(data)
        except BaseException:
            self.abort()
            raise

    def commit(self) -> Path:
        """Verify everything and publish the layer; its diff dir."""
        if not self._open:
            raise StateError(f"the unpack of layer {self.chain_id} was already closed")
        try:
            self._unpacker.finish()
            self._layers._publish(self._tmp, self.chain_id)
        finally:
            self._close()
        return self._layers.path(self.chain_id)

    def abort(self) -> None:
        if self._open:
            self._unpacker.abort()
            self._close()

    def _close(self) -> None:
        if self._open:
            self._open = False
            self._layers._drop_tmp(self._tmp, self._tmp_fd)


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
    return held_elsewhere(fd)


__all__ = [
    "ContentError",
    "LayerStore",
    "LayerUnpacker",
    "StreamedLayer",
    "clean_entry_name",
    "open_uncompressed",
    "unpack_layer",
]
