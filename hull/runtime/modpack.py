"""Module packs: what a freshly forked process imports, compiled, in one file.

Once the launcher has forked stage 1 (hull.runtime.prefork), each side imports
its own modules: the runtime its verbs, state and cgroups; the worker the init,
namespace and rootfs code. One by one, each import is a path search, a .pyc
read and an unmarshal of its own, and in a process just forked every page the
import machinery touches is a copy-on-write fault: packs cut ~0.5 ms from every
`hull-runtime run`, measured A/B. A pack holds one role's modules in one
marshal (strings shared across modules, read in one go); install() puts a
finder for it first on sys.meta_path.

`python -m hull.runtime.launcher` builds the packs (build_all) from what the
start path really imports, found by importing each role's entry modules in a
fresh interpreter. A module whose source changed since (mtime or size: what a
.pyc checks) is imported the usual way, so a stale pack is only slower; so is a
missing one. A pack is trusted as a .pyc is, and only when it is ours and
nobody else may write it.

No `from __future__`: prefork imports this before the fork.
"""

import marshal
import sys

from hull.runtime import posixos as os

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Sequence
    from importlib.machinery import ModuleSpec
    from types import ModuleType

_bootstrap = sys.modules["_frozen_importlib"]
# What a pack must have been written by: this format, this interpreter's bytecode.
_KEY = (1, sys.modules["_frozen_importlib_external"].MAGIC_NUMBER, sys.hexversion)

# The roles: the entry modules each imports (the pack holds them and everything they
# import that was not loaded before: LOADED_BEFORE).
ROLES = {
    # the hull-runtime launcher, before the fork: what forks stage 1 (hull.runtime.launcher)
    "launcher": ("hull.runtime.prefork", "hull.runtime.linux.pidns"),
    # the runtime's side of create/run: its verbs, the container and its cgroups
    "runtime": (
        "hull.runtime.cli",
        "hull.runtime.commands.create",
        "hull.runtime.commands.run",
        "hull.runtime.container",
        "hull.runtime.linux.cgroups.v1",
        "hull.runtime.linux.cgroups.v2",
        "hull.runtime.linux.capabilities",
        "hull.runtime.linux.rlimits",
    ),
    # stage 1: init and what it preloads (init._preload_init_modules, _late_modules)
    "worker": (
        "hull.runtime.init",
        "hull.runtime.fastjson",
        "hull.runtime.linux.namespaces",
        "hull.runtime.linux.rootfs",
        "hull.runtime.process",
        "hull.runtime.linux.seccomp_cache",
        "hull.runtime.linux.capabilities",
        "hull.runtime.linux.mountattr",
        "hull.runtime.linux.rlimits",
        "hull.runtime.linux.sibling",
    ),
}
# What the launcher imports the usual way, first: this module, to install the
# launcher's pack, and the GC pause.
LAUNCHER_FIRST = ("hull.gc_pause", "hull.runtime.modpack")
# What the launcher has loaded when it forks: never in the packs of the two sides.
BEFORE_FORK = LAUNCHER_FIRST + ROLES["launcher"]
# What a role's process has imported when it installs the role's pack.
LOADED_BEFORE = {"launcher": LAUNCHER_FIRST, "runtime": BEFORE_FORK, "worker": BEFORE_FORK}


def path_for(role: str) -> str:
    """Where a role's pack lives: beside this package's .pyc files."""
    tag = sys.implementation.cache_tag
    return os.path.join(os.path.dirname(__file__), "__pycache__", f"{role}.{tag}.pack")


class ModulePack:
    """Finder and loader over one pack's modules (importlib's MetaPathFinder, Loader)."""

    def __init__(self, modules: "dict[str, tuple]") -> None:
        self.modules = modules  # name -> (source, is a package, its mtime_ns, size, code)

    def find_spec(
        self, name: str, path: "Sequence[str] | None" = None, target: "ModuleType | None" = None
    ) -> "ModuleSpec | None":
        entry = self.modules.get(name)
        if entry is None:
            return None
        origin, is_package, mtime_ns, size, _code = entry
        try:
            st = os.stat(origin)
        except OSError:
            return None
        if st.st_mtime_ns != mtime_ns or st.st_size != size:
            return None  # changed since the pack was built: the usual import
        spec = _bootstrap.ModuleSpec(name, self, origin=origin, is_package=is_package)
        if is_package:
            spec.submodule_search_locations = [os.path.dirname(origin)]
        spec.has_location = True  # __file__ is the source, as for a .pyc
        return spec

    def create_module(self, spec: "ModuleSpec") -> None:
        return None  # the default module object

    def exec_module(self, module: "ModuleType") -> None:
        exec(self.modules[module.__name__][4], module.__dict__)


def install(role: str, path: "str | None" = None) -> bool:
    """Put the role's pack (at path_for(role) unless path is given) first on
    sys.meta_path; False (nothing changed) when there is no usable pack."""
    modules = _read(path or path_for(role))
    if not modules:
        return False
    sys.meta_path.insert(0, ModulePack(modules))
    return True


def _read(path: str) -> "dict[str, tuple]":
    """A pack's modules; none when it is absent, damaged, of another interpreter, or
    may have been written by someone else (not ours, or writable by others)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return {}
    try:
        st = os.fstat(fd)
        if st.st_uid not in (0, os.geteuid()) or st.st_mode & 0o022:
            return {}
        with open(fd, "rb", closefd=False) as f:
            key, modules = marshal.loads(f.read())  # marshal.load(f) reads item by item
    except (OSError, EOFError, ValueError, TypeError):
        return {}
    finally:
        os.close(fd)
    return modules if key == _KEY and isinstance(modules, dict) else {}


# -- building (python -m hull.runtime.launcher)


def build_all() -> "list[str]":
    """Build every role's pack; the paths written."""
    return [build(role) for role in ROLES]


def build(role: str, path: "str | None" = None) -> str:
    """Write the role's pack (at path_for(role) unless path is given), whole: a
    temporary file renamed over it, mode 0644. Returns its path."""
    modules = {}
    for name, origin, is_package in _imported_by(ROLES[role], LOADED_BEFORE[role]):
        with open(origin, "rb") as f:
            source = f.read()
        st = os.stat(origin)
        code = compile(source, origin, "exec", dont_inherit=True)
        modules[name] = (origin, is_package, st.st_mtime_ns, st.st_size, code)
    path = path or path_for(role)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    tmp = f"{path}.{os.getpid()}.tmp"
    try:
        with open(tmp, "wb") as f:
            f.write(marshal.dumps((_KEY, modules)))
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
    return path


def _imported_by(
    entries: "tuple[str, ...]", before: "tuple[str, ...]"
) -> "list[tuple[str, str, bool]]":
    """(name, source, is a package) of each Python source module that importing
    entries loads once before is imported, in a fresh `python -I -S`."""
    import json
    import subprocess

    package_parent = os.path.dirname(os.path.dirname(os.path.dirname(__file__)))
    code = (
        "import json, sys\n"
        f"sys.path[:0] = [{package_parent!r}]\n"
        f"for name in {before!r}: __import__(name)\n"
        "before = set(sys.modules)\n"
        f"for name in {entries!r}: __import__(name)\n"
        "found = []\n"
        "for name in sorted(set(sys.modules) - before):\n"
        "    spec = sys.modules[name].__spec__\n"
        "    if spec and spec.origin and spec.origin.endswith('.py'):\n"
        "        found.append((name, spec.origin, spec.submodule_search_locations is not None))\n"
        "print(json.dumps(found))\n"
    )
    out = subprocess.run(
        [sys.executable, "-I", "-S", "-c", code], capture_output=True, text=True, check=True
    )
    return [(name, origin, is_package) for name, origin, is_package in json.loads(out.stdout)]
