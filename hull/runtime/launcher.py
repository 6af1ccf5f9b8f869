"""Write the fast `hull-runtime` launcher into the venv's bin directory.

pip's console-script wrapper starts the interpreter with site-packages (and
imports `re`): about 20 ms before Hull runs a line. The runtime needs nothing
outside the standard library, so its launcher runs `python -I -S` with the
package's own directory on sys.path: 6 ms.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

TEMPLATE = """#!{python} -IS
# Written by `python -m hull.runtime.launcher`: no site-packages, see its docstring.
import sys
sys.path.insert(0, {package_parent!r})
from hull.runtime.cli import main
code = main()
try:
    sys.stdout.flush()
    sys.stderr.flush()
except (OSError, ValueError):
    pass
import os
os._exit(code)  # skip interpreter teardown: nothing is left to finalize
"""


def write_launcher(bin_dir: Path, name: str = "hull-runtime") -> Path:
    import hull

    package_parent = str(Path(hull.__file__).resolve().parent.parent)
    python = Path(os.path.abspath(bin_dir)) / "python3"
    if not python.exists():
        python = Path(sys.executable)
    target = Path(os.path.abspath(bin_dir)) / name
    tmp = target.with_suffix(".tmp")
    tmp.write_text(TEMPLATE.format(python=python, package_parent=package_parent))
    os.chmod(tmp, 0o755)
    os.replace(tmp, target)
    return target


if __name__ == "__main__":
    bin_dir = Path(sys.argv[1]) if len(sys.argv) > 1 else Path(sys.executable).parent
    print(write_launcher(bin_dir))
