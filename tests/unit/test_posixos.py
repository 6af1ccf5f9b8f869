"""hull.runtime.posixos: os's API without importing os, for the start path.

It must behave as os does (the start path's modules use it as `os`), and it
must keep os out: a module on that path that imports os costs every
`hull-runtime run` ~0.7 ms.
"""

from __future__ import annotations

import os
import posix
import posixpath

import pytest

from hull.runtime import modpack, posixos
from hull.runtime.launcher import TEMPLATE
from tests.fixtures.launcher_python import launcher_stdout

# os and what only os imports: none may load on the start path.
OS_MODULES = ("os", "posixpath", "genericpath", "stat", "_collections_abc")

PATHS = [
    "", "/", "//", "///", "a", "/a", "a/", "/a/", "a//b", "/a/b/", "a/./b", "a/../b",
    "/../a", "../a/..", "./", ".", "..", "/a/b/c.txt", "//a//b//", "a/b/../../..",
    "/proc/self/ns/net", "é/ü", "a\udcffb",
]  # fmt: skip


def test_the_start_path_never_imports_os():
    """Both sides of the fork: what the launcher imports first, then each role's
    entry modules (a module pack holds what those import)."""
    entries = modpack.BEFORE_FORK + tuple(n for role in modpack.ROLES.values() for n in role)
    code = (
        f"for name in {entries!r}: __import__(name)\n"
        f"print(sorted(m for m in {OS_MODULES!r} if m in sys.modules))\n"
    )
    assert launcher_stdout(code) == "[]"


def test_the_launcher_exits_without_os():
    assert "import os" not in TEMPLATE
    assert "posix._exit(code)" in TEMPLATE


def test_what_os_takes_from_posix_is_the_same_object():
    assert not hasattr(posixos, "environ")  # posix's has bytes keys: a str lookup misses
    for name in dir(posix):
        if name != "environ" and (not name.startswith("_") or name == "_exit"):
            assert getattr(posixos, name) is getattr(posix, name), name
            if hasattr(os, name):
                assert getattr(posixos, name) is getattr(os, name), name


@pytest.mark.parametrize("name", ["dirname", "basename", "split", "normpath", "isabs"])
def test_path_functions_match_posixpath(name):
    ours, theirs = getattr(posixos.path, name), getattr(posixpath, name)
    for p in PATHS:
        assert ours(p) == theirs(p), p
        raw = os.fsencode(p)
        assert ours(raw) == theirs(raw), raw


def test_join_matches_posixpath():
    for a in PATHS:
        for b in ("", "b", "/b", "b/", "../c"):
            assert posixos.path.join(a, b) == posixpath.join(a, b), (a, b)
            assert posixos.path.join(a, b, "c") == posixpath.join(a, b, "c"), (a, b)
        assert posixos.path.join(a) == a
    assert posixos.path.join(b"/a", b"b") == b"/a/b"
    with pytest.raises(TypeError):
        posixos.path.join("/a", b"b")
    with pytest.raises(TypeError):
        posixos.path.join(b"/a") + "x"  # type: ignore[operator]


def test_abspath_matches_posixpath(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    for p in PATHS[:-1]:  # a lone surrogate has no place in a real cwd
        assert posixos.path.abspath(p) == posixpath.abspath(p), p
        assert posixos.path.abspath(os.fsencode(p)) == posixpath.abspath(os.fsencode(p)), p


def test_file_type_tests_match_os_path(tmp_path):
    (tmp_path / "file").write_text("x")
    (tmp_path / "dir").mkdir()
    (tmp_path / "link").symlink_to("file")
    (tmp_path / "dangling").symlink_to("absent")
    names = ["file", "dir", "link", "dangling", "absent", "file/under", "nul\0byte"]
    for name in names:
        p = str(tmp_path / name)
        for test in ("exists", "isdir", "isfile", "islink"):
            assert getattr(posixos.path, test)(p) == getattr(os.path, test)(p), (test, name)
    fd = os.open(tmp_path, os.O_RDONLY)
    try:
        assert posixos.path.exists(fd) and posixos.path.isdir(fd)  # an fd, as os.stat takes
    finally:
        os.close(fd)


def test_makedirs_makes_parents_and_honours_exist_ok(tmp_path):
    target = str(tmp_path / "a" / "b" / "c")
    posixos.makedirs(target, 0o750)
    assert os.path.isdir(target)
    assert os.stat(target).st_mode & 0o777 == 0o750 & ~_umask()
    posixos.makedirs(target, exist_ok=True)
    with pytest.raises(FileExistsError):
        posixos.makedirs(target)
    (tmp_path / "file").write_text("")
    with pytest.raises(FileExistsError):
        posixos.makedirs(str(tmp_path / "file"), exist_ok=True)  # there, but not a dir
    posixos.makedirs(str(tmp_path / "d" / "."))  # a trailing "." as os.makedirs allows
    assert os.path.isdir(tmp_path / "d")


def _umask() -> int:
    old = os.umask(0)
    os.umask(old)
    return old


def test_fs_codecs_and_getenv_match_os(monkeypatch):
    for p in PATHS:
        assert posixos.fsencode(p) == os.fsencode(p)
        assert posixos.fsdecode(os.fsencode(p)) == os.fsdecode(os.fsencode(p))
    assert posixos.fsencode(b"raw") == b"raw" and posixos.fsdecode("text") == "text"
    assert posixos.getenv("PATH") == os.getenv("PATH")
    assert posixos.getenv("HULL_SURELY_UNSET_VARIABLE", "dflt") == "dflt"
    assert posixos.devnull == os.devnull and posixos.sep == os.sep
    assert (posixos.SEEK_SET, posixos.SEEK_CUR, posixos.SEEK_END) == (
        os.SEEK_SET,
        os.SEEK_CUR,
        os.SEEK_END,
    )
