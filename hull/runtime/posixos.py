"""The part of os's API that the container start path uses, without importing os.

`import os` costs ~0.7 ms of every `hull-runtime run` (measured A/B: -0.78 ms
without it), most of it `_collections_abc`, which os loads only for
os.environ; posixpath imports os too. Every function os takes from the
`posix` built-in (open, fork, execve, waitpid, the O_* and W* constants...) is
the same object here. What os and posixpath write in Python, this module
writes as they do, for what the start path calls: path.join and its kin,
makedirs, fsencode/fsdecode, getenv, devnull.

Used as `from hull.runtime import posixos as os`, so the code reads as it
would with os, and mypy flags any os function this module lacks. Tests keep os
off the start path and compare these functions with os's own
(tests/unit/test_posixos.py).

No `from __future__`: the launcher imports this before its fork.
"""

import posix
import sys
from posix import *  # noqa: F403 - os re-exports all of posix the same way
from posix import _exit  # noqa: F401 - a star import skips it

del environ  # noqa: F821 - posix's has bytes keys, os's str: a str lookup would miss. getenv()

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import AnyStr

sep = "/"
curdir = "."
devnull = "/dev/null"
SEEK_SET, SEEK_CUR, SEEK_END = 0, 1, 2

_ENCODING = sys.getfilesystemencoding()
_ERRORS = sys.getfilesystemencodeerrors()
_S_IFMT, _S_IFDIR, _S_IFREG, _S_IFLNK = 0o170000, 0o040000, 0o100000, 0o120000


def fsencode(filename: "str | bytes") -> bytes:
    """os.fsencode: str to bytes in the filesystem encoding (surrogateescape)."""
    filename = posix.fspath(filename)
    if isinstance(filename, str):
        return filename.encode(_ENCODING, _ERRORS)
    return filename


def fsdecode(filename: "str | bytes") -> str:
    """os.fsdecode: bytes to str in the filesystem encoding (surrogateescape)."""
    filename = posix.fspath(filename)
    if isinstance(filename, bytes):
        return filename.decode(_ENCODING, _ERRORS)
    return filename


def getenv(key: str, default: "str | None" = None) -> "str | None":
    """os.getenv, from the environment the process started with."""
    value = posix.environ.get(fsencode(key))
    return default if value is None else fsdecode(value)


def makedirs(name: str, mode: int = 0o777, exist_ok: bool = False) -> None:
    """os.makedirs: make name and any missing parents."""
    head, tail = path.split(name)
    if not tail:
        head, tail = path.split(head)
    if head and tail and not path.exists(head):
        try:
            makedirs(head, exist_ok=exist_ok)
        except FileExistsError:
            pass  # made meanwhile by someone else
        if tail == curdir:
            return
    try:
        posix.mkdir(name, mode)
    except OSError:
        if not exist_ok or not path.isdir(name):
            raise


def _sep(p: "str | bytes") -> "str | bytes":
    return b"/" if isinstance(p, bytes) else "/"


def _mode(name: "str | bytes | int") -> int:
    """The file type bits of name; 0 when it cannot be stat()ed, as genericpath's tests."""
    try:
        return posix.stat(name).st_mode & _S_IFMT
    except (OSError, ValueError):
        return 0


class path:
    """os.path's functions that the start path calls, as posixpath writes them:
    each takes and returns str or bytes. (A class, not a module of its own: one
    file less to find and read before the fork.)"""

    @staticmethod
    def join(a: "AnyStr", *p: "AnyStr") -> "AnyStr":
        """Join path components; an absolute one discards those before it."""
        a = posix.fspath(a)
        slash = _sep(a)
        result = a
        if not p:
            result[:0] + slash  # type: ignore[operator]  # refuses str with bytes, as posixpath
        for b in map(posix.fspath, p):
            if b.startswith(slash):  # type: ignore[arg-type]
                result = b
            elif not result or result.endswith(slash):  # type: ignore[arg-type]
                result += b
            else:
                result += slash + b  # type: ignore[operator]
        return result

    @staticmethod
    def split(p: "AnyStr") -> "tuple[AnyStr, AnyStr]":
        """(head, tail): tail is what follows the last slash."""
        p = posix.fspath(p)
        slash = _sep(p)
        i = p.rfind(slash) + 1  # type: ignore[arg-type]
        head, tail = p[:i], p[i:]
        if head and head != slash * len(head):
            head = head.rstrip(slash)  # type: ignore[arg-type]
        return head, tail

    @staticmethod
    def dirname(p: "AnyStr") -> "AnyStr":
        return path.split(p)[0]

    @staticmethod
    def basename(p: "AnyStr") -> "AnyStr":
        p = posix.fspath(p)
        return p[p.rfind(_sep(p)) + 1 :]  # type: ignore[arg-type]

    @staticmethod
    def isabs(p: "str | bytes") -> bool:
        p = posix.fspath(p)
        return p.startswith(_sep(p))  # type: ignore[arg-type]

    @staticmethod
    def normpath(p: "AnyStr") -> "AnyStr":
        """Collapse repeated slashes and . and .. components (in C, as posixpath)."""
        p = posix.fspath(p)
        if isinstance(p, bytes):
            return fsencode(posix._path_normpath(fsdecode(p))) or b"."  # type: ignore[attr-defined]
        return posix._path_normpath(p) or "."  # type: ignore[attr-defined]

    @staticmethod
    def abspath(p: "AnyStr") -> "AnyStr":
        p = posix.fspath(p)
        if not path.isabs(p):
            cwd = posix.getcwdb() if isinstance(p, bytes) else posix.getcwd()
            p = path.join(cwd, p)
        return path.normpath(p)

    @staticmethod
    def exists(p: "str | bytes | int") -> bool:
        try:
            posix.stat(p)
        except (OSError, ValueError):
            return False
        return True

    @staticmethod
    def isdir(p: "str | bytes | int") -> bool:
        return _mode(p) == _S_IFDIR

    @staticmethod
    def isfile(p: "str | bytes | int") -> bool:
        return _mode(p) == _S_IFREG

    @staticmethod
    def islink(p: "str | bytes") -> bool:
        try:
            return posix.lstat(p).st_mode & _S_IFMT == _S_IFLNK
        except (OSError, ValueError):
            return False
