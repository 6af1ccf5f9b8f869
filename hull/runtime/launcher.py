"""Write fast `hull-runtime` and `hull` launchers into the venv's bin directory.

pip's console-script wrapper starts the interpreter with `site` (every .pth
file, the editable-install finder) and imports `re`: about 20 ms before Hull
runs a line. These launchers run `python -I -S` with the package's directory
on sys.path: 6 ms. The runtime needs only the standard library; `hull` also
gets the venv's site-packages directory (httpx, rich), added as a plain path.
Run as a program, this also builds the runtime's module packs
(hull/runtime/modpack.py): hull-runtime loads what forks stage 1 from one
(`launcher`), and create/run each side's modules after the fork.
"""

from __future__ import annotations

import os
import sys
import sysconfig
from pathlib import Path

TEMPLATE = """#!{python} -IS
# Written by `python -m hull.runtime.launcher`: no `site`, see its docstring.
import sys
sys.path[:0] = {paths!r}
from hull.gc_pause import pause
pause()  # no garbage collection while we start (see hull/gc_pause.py)
{prelude}from {module} import main
code = main({main_args})
try:
    sys.stdout.flush()
    sys.stderr.flush()
except (OSError, ValueError):
    pass
import posix
posix._exit(code)  # skip interpreter teardown; posix: os is not loaded (runtime/posixos.py)
"""

LAUNCHERS = {"hull-runtime": "hull.runtime.cli", "hull": "hull.cli.main"}
# hull-runtime create/run: stage 1 is forked before hull.runtime.cli is even
# imported (hull.runtime.prefork), so its imports overlap all of ours.
PRELUDES = {
    "hull-runtime": (
        "from hull.runtime.modpack import install\n"
        "install('launcher')  # what forks stage 1, in one read\n"
        "from hull.runtime.prefork import from_argv\nworker = from_argv(sys.argv[1:])\n"
        "if worker is not None:  # the rest of create/run's imports, in one read\n"
        "    install('runtime')\n",
        "stage1_worker=worker",
    ),
}


def write_launcher(bin_dir: Path, name: str = "hull-runtime") -> Path:
    import hull

    package_parent = str(Path(hull.__file__).resolve().parent.parent)
    paths = [package_parent]
    if name != "hull-runtime":
        paths.append(sysconfig.get_paths()["purelib"])
    python = Path(os.path.abspath(bin_dir)) / "python3"
    if not python.exists():
        python = Path(sys.executable)
    if name == "hull-runtime":
        # The venv's python is a link to the base interpreter; started by its own
        # name, Python skips looking for pyvenv.cfg (~0.3 ms of every container
        # start). The runtime needs nothing of the venv, and never looks for
        # siblings of sys.executable; `hull` does (hull-shim, hull-runtime).
        python = Path(os.path.realpath(python))
    target = Path(os.path.abspath(bin_dir)) / name
    tmp = target.with_suffix(".tmp")
    prelude, main_args = PRELUDES.get(name, ("", ""))
    text = TEMPLATE.format(
        python=python, paths=paths, module=LAUNCHERS[name], prelude=prelude, main_args=main_args
    )
    tmp.write_text(text)
    os.chmod(tmp, 0o755)
    os.replace(tmp, target)
    return target


if __name__ == "__main__":
    from hull.runtime import modpack

    bin_dir = Path(sys.argv[1]) if len(sys.argv) > 1 else Path(sys.executable).parent
    for launcher in LAUNCHERS:
        print(write_launcher(bin_dir, launcher))
    for pack in modpack.build_all():
        print(pack)
