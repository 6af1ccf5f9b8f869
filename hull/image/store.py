"""The content store: blobs named by their digest, written atomically.

Layout under the Hull root:

    blobs/<alg>/<hex>        complete, verified blobs (only ever appear by rename)
    ingest/<hex>.partial     a download in progress; kept across crashes so a later
                             pull resumes it with an HTTP Range request
    ingest/tmp-*             scratch files of write_bytes; removed by sweep()

A blob is visible under blobs/ only after its size and digest were checked and
its bytes fsynced, so anything that finds a blob there may trust it. Writers of
one digest are serialised with flock on the partial: a second writer fails
fast with StateError rather than interleaving bytes.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import shutil
import tempfile
from pathlib import Path
from types import TracebackType

from hull.errors import HullError, NotFoundError, StateError
from hull.flocks import held_elsewhere
from hull.oci.digest import HEX_LENGTHS, DigestVerifier, parse_digest

_CHUNK = 1 << 20


class ContentError(HullError):
    """Content does not match what it claims to be (digest, size, tar entries)."""


def fsync_dir(path: Path) -> None:
    """Make a rename or unlink in path durable."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class ContentStore:
    """Content-addressed blobs under <root>/blobs; partial writes under <root>/ingest."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)
        self.blobs = self.root / "blobs"
        self.ingest = self.root / "ingest"

    # ------------------------------------------------------------ lookups

    def _blob_path(self, digest: str) -> Path:
        algorithm, encoded = parse_digest(digest)
        return self.blobs / algorithm / encoded

    def has(self, digest: str) -> bool:
        return self._blob_path(digest).is_file()

    def path(self, digest: str) -> Path:
        path = self._blob_path(digest)
        if not path.is_file():
            raise NotFoundError(f"blob {digest} is not in the content store")
        return path

    def size(self, digest: str) -> int:
        return self.path(digest).stat().st_size

    def read_bytes(self, digest: str) -> bytes:
        return self.path(digest).read_bytes()

    def digests(self) -> list[str]:
        out: list[str] = []
        for algorithm, length in HEX_LENGTHS.items():
            folder = self.blobs / algorithm
            if not folder.is_dir():
                continue
            for entry in folder.iterdir():
                if len(entry.name) == length and entry.is_file():
                    out.append(f"{algorithm}:{entry.name}")
        return sorted(out)

    # ------------------------------------------------------------ writes

    def write_bytes(self, data: bytes, expected_digest: str | None = None) -> str:
        """Store data atomically; refuse it if it does not hash to expected_digest."""
        verifier = (
            DigestVerifier.for_digest(expected_digest) if expected_digest else DigestVerifier()
        )
        verifier.update(data)
        digest = verifier.digest()
        if expected_digest and digest != expected_digest:
            raise ContentError(f"digest mismatch for {expected_digest}: got {digest}")
        if self.has(digest):
            return digest
        self.ingest.mkdir(parents=True, exist_ok=True)
        fd, tmp_name = tempfile.mkstemp(prefix="tmp-", dir=self.ingest)
        tmp = Path(tmp_name)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)  # sweep() skips files someone holds
            view = memoryview(data)
            while view:
                written = os.write(fd, view)
                view = view[written:]
            os.fchmod(fd, 0o644)
            os.fsync(fd)
            self._publish(tmp, digest)
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                tmp.unlink()
            raise
        finally:
            os.close(fd)
        return digest

    def _publish(self, tmp: Path, digest: str) -> None:
        """Rename a verified, fsynced file into blobs/ and make the rename durable."""
        target = self._blob_path(digest)
        target.parent.mkdir(parents=True, exist_ok=True)
        os.rename(tmp, target)
        fsync_dir(target.parent)

    def writer(self, expected_digest: str, expected_size: int | None = None) -> BlobWriter:
        """A resumable writer for a streamed download of expected_digest."""
        return BlobWriter(self, expected_digest, expected_size)

    def partial_path(self, digest: str) -> Path:
        return self.ingest / f"{parse_digest(digest)[1]}.partial"

    def delete(self, digest: str) -> None:
        """Remove a blob; deleting one that is absent is not an error (idempotent GC)."""
        path = self._blob_path(digest)
        try:
            path.unlink()
        except FileNotFoundError:
            return
        fsync_dir(path.parent)

    # ------------------------------------------------------------ crash recovery

    def sweep(self) -> None:
        """Start-up cleanup of what a crash left.

        Partials stay (a later pull resumes them) unless their blob is already
        complete; scratch files nobody holds a lock on go; so does anything in
        blobs/ that is not named like a digest (never a complete blob: those
        only appear by rename of a verified file).
        """
        if self.ingest.is_dir():
            for entry in self.ingest.iterdir():
                self._sweep_ingest_entry(entry)
        for algorithm, length in HEX_LENGTHS.items():
            folder = self.blobs / algorithm
            if not folder.is_dir():
                continue
            for entry in folder.iterdir():
                name = entry.name
                valid = len(name) == length and all(c in "0123456789abcdef" for c in name)
                if not valid or not entry.is_file() or entry.is_symlink():
                    _remove_any(entry)

    def _sweep_ingest_entry(self, entry: Path) -> None:
        name = entry.name
        if name.endswith(".partial") and entry.is_file() and not entry.is_symlink():
            hex_part = name[: -len(".partial")]
            algorithm = next((a for a, n in HEX_LENGTHS.items() if n == len(hex_part)), None)
            if algorithm is not None:
                try:
                    complete = self.has(f"{algorithm}:{hex_part}")
                except HullError:
                    complete = False
                else:
                    if not complete:
                        return  # resumable
        if entry.is_file() and not entry.is_symlink() and _is_locked(entry):
            return  # a live writer in another process
        _remove_any(entry)


def _is_locked(path: Path) -> bool:
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
    except OSError:
        return False
    return held_elsewhere(fd)


def _remove_any(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        with contextlib.suppress(FileNotFoundError):
            path.unlink()


class BlobWriter:
    """Streams one blob into ingest/<hex>.partial, resumable across processes.

    On open an existing partial is re-hashed and `offset` says how many bytes
    are already there (send `Range: bytes=<offset>-`). commit() checks size and
    digest before the blob becomes visible; leaving the context with an
    exception keeps the partial so the next attempt resumes.
    """

    def __init__(
        self, store: ContentStore, expected_digest: str, expected_size: int | None = None
    ) -> None:
        if expected_size is not None and expected_size < 0:
            raise ContentError(f"negative size {expected_size} for {expected_digest}")
        self.store = store
        self.expected_digest = expected_digest
        self.expected_size = expected_size
        self.partial = store.partial_path(expected_digest)
        self._verifier = DigestVerifier.for_digest(expected_digest)
        self.offset = 0
        self._fd: int | None = None
        store.ingest.mkdir(parents=True, exist_ok=True)
        self._fd = self._open_locked()
        try:
            self._resume()
        except BaseException:
            self._close()
            raise

    def _open_locked(self) -> int:
        """Open and flock the partial, making sure it was not renamed into blobs/ meanwhile."""
        flags = os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC
        for _ in range(10):
            fd = os.open(self.partial, flags, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                raise StateError(
                    f"blob {self.expected_digest} is already being written by another process"
                ) from None
            try:
                same = os.stat(self.partial, follow_symlinks=False).st_ino == os.fstat(fd).st_ino
            except FileNotFoundError:
                same = False
            if same:
                return fd
            os.close(fd)  # a writer committed (renamed) it between our open and flock
        raise StateError(f"could not lock the partial download of {self.expected_digest}")

    def _resume(self) -> None:
        """Hash what an earlier attempt left, or start over if it cannot be right."""
        assert self._fd is not None
        size = os.fstat(self._fd).st_size
        if self.expected_size is not None and size > self.expected_size:
            os.ftruncate(self._fd, 0)
            size = 0
        os.lseek(self._fd, 0, os.SEEK_SET)
        remaining = size
        while remaining:
            chunk = os.read(self._fd, min(_CHUNK, remaining))
            if not chunk:
                break
            self._verifier.update(chunk)
            remaining -= len(chunk)
        self.offset = size - remaining
        os.ftruncate(self._fd, self.offset)
        os.lseek(self._fd, self.offset, os.SEEK_SET)

    def write(self, chunk: bytes) -> None:
        if self._fd is None:
            raise StateError(f"writer for {self.expected_digest} is closed")
        if self.expected_size is not None and self.offset + len(chunk) > self.expected_size:
            raise ContentError(
                f"blob {self.expected_digest} is larger than its descriptor says "
                f"({self.expected_size} bytes)"
            )
        view = memoryview(chunk)
        while view:
            written = os.write(self._fd, view)
            view = view[written:]
        self._verifier.update(chunk)
        self.offset += len(chunk)

    def commit(self) -> str:
        """Verify size and digest, then publish the blob; a mismatch discards the partial."""
        if self._fd is None:
            raise StateError(f"writer for {self.expected_digest} is closed")
        if self.expected_size is not None and self.offset != self.expected_size:
            self.abort(keep_partial=self.offset < self.expected_size)
            raise ContentError(
                f"size mismatch for {self.expected_digest}: got {self.offset} bytes, "
                f"expected {self.expected_size}"
            )
        got = self._verifier.digest()
        if got != self.expected_digest:
            self.abort(keep_partial=False)
            raise ContentError(f"digest mismatch for {self.expected_digest}: got {got}")
        try:
            os.fsync(self._fd)
            self.store._publish(self.partial, self.expected_digest)
        except BaseException:
            self.abort(keep_partial=True)
            raise
        self._close()
        return self.expected_digest

    def abort(self, keep_partial: bool = True) -> None:
        if self._fd is None:
            return
        if not keep_partial:
            with contextlib.suppress(FileNotFoundError):
                self.partial.unlink()
        self._close()

    def _close(self) -> None:
        if self._fd is not None:
            fd, self._fd = self._fd, None
            os.close(fd)  # also drops the flock

    @property
    def closed(self) -> bool:
        return self._fd is None

    def __enter__(self) -> BlobWriter:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        # Without commit() a partial stays a partial: it never passes as a blob.
        self.abort(keep_partial=True)

    def __del__(self) -> None:
        if getattr(self, "_fd", None) is not None:
            with contextlib.suppress(OSError):
                self._close()


__all__ = ["BlobWriter", "ContentError", "ContentStore", "fsync_dir"]
