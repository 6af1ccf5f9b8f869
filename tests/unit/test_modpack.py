"""Module packs (hull/runtime/modpack.py): what a forked process imports, in one file."""

from __future__ import annotations

import json
import marshal
import os
from pathlib import Path

import pytest

from hull.runtime import modpack
from tests.fixtures.launcher_python import launcher_stdout as _python


@pytest.fixture(scope="module")
def worker_pack(tmp_path_factory: pytest.TempPathFactory) -> str:
    return modpack.build("worker", str(tmp_path_factory.mktemp("packs") / "worker.pack"))


def test_a_worker_imports_everything_from_its_pack(worker_pack: str) -> None:
    """What stage 1 imports before its request and after it (the preloads) comes from
    the pack: ROLES["worker"] covers it, so a new import on that path fails here."""
    imports = (
        "from hull.runtime import init\n"
        "init._preload_init_modules(); init._preload_late_modules()\n"
        "import hull.runtime.process, hull.runtime.linux.seccomp_cache, hull.runtime.fastjson\n"
    )
    assert _not_from_pack("worker", worker_pack, imports) == []


def test_the_launcher_imports_what_forks_stage1_from_its_pack(tmp_path: Path) -> None:
    """Past modpack itself, what hull-runtime loads before its fork comes from the
    launcher's pack: ROLES["launcher"] covers it."""
    pack = modpack.build("launcher", str(tmp_path / "launcher.pack"))
    imports = "from hull.runtime.prefork import prefork\nfrom hull.runtime.linux import pidns\n"
    assert _not_from_pack("launcher", pack, imports) == []


def _not_from_pack(role: str, pack: str, imports: str) -> list[str]:
    """The hull modules that imports loads, once the role's process has what it
    loads before its pack (modpack.LOADED_BEFORE) and the pack is installed, that
    do not come from the pack."""
    out = _python(
        "import json\n"
        f"for name in {modpack.LOADED_BEFORE[role]!r}: __import__(name)\n"
        "before = set(sys.modules)\n"
        "from hull.runtime import modpack\n"
        f"assert modpack.install({role!r}, {pack!r})\n"
        + imports
        + "loaders = {n: type(m.__loader__).__name__ for n, m in sys.modules.items()\n"
        "           if n not in before and n.startswith('hull.')}\n"
        "print(json.dumps(sorted(n for n, kind in loaders.items() if kind != 'ModulePack')))\n"
    )
    return json.loads(out)


def test_a_changed_source_is_imported_the_usual_way(tmp_path: Path) -> None:
    package = tmp_path / "packtest"
    package.mkdir()
    (package / "__init__.py").write_text("")
    module = package / "mod.py"
    module.write_text("VALUE = 1\n")
    pack = tmp_path / "test.pack"
    entries = {}
    for name, source in (("packtest", package / "__init__.py"), ("packtest.mod", module)):
        st = source.stat()
        code = compile(source.read_text(), str(source), "exec")
        entries[name] = (str(source), name == "packtest", st.st_mtime_ns, st.st_size, code)
    pack.write_bytes(marshal.dumps((modpack._KEY, entries)))
    os.chmod(pack, 0o644)
    code = (
        f"sys.path.insert(0, {str(tmp_path)!r})\n"
        "from hull.runtime import modpack\n"
        f"assert modpack.install('test', {str(pack)!r})\n"
        "import packtest.mod as m\n"
        "print(m.VALUE, type(m.__loader__).__name__, m.__file__)\n"
    )
    assert _python(code) == f"1 ModulePack {module}"
    module.write_text("VALUE = 22\n")  # another size: the pack's copy is stale
    assert _python(code) == f"22 SourceFileLoader {module}"


@pytest.mark.parametrize("damage", ["writable by others", "truncated", "another interpreter"])
def test_a_pack_we_cannot_trust_is_not_used(worker_pack: str, tmp_path: Path, damage: str) -> None:
    pack = tmp_path / "worker.pack"
    data = Path(worker_pack).read_bytes()
    if damage == "truncated":
        data = data[: len(data) // 2]
    elif damage == "another interpreter":
        _key, modules = marshal.loads(data)
        data = marshal.dumps(((0, b"\0\0\r\n", 0), modules))
    pack.write_bytes(data)
    os.chmod(pack, 0o666 if damage == "writable by others" else 0o644)
    assert (
        _python(f"from hull.runtime import modpack\nprint(modpack.install('w', {str(pack)!r}))")
        == "False"
    )


def test_no_pack_leaves_imports_alone(tmp_path: Path) -> None:
    assert not modpack.install("worker", str(tmp_path / "missing.pack"))
