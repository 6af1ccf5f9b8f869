"""Garbage collection paused for a start (hull/gc_pause.py), resumed for the rest."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def _python(code: str) -> str:
    """Run code as the launchers run (-I -S, the repo on sys.path): own GC state."""
    prelude = f"import sys; sys.path[:0] = [{str(REPO)!r}]\n"
    result = subprocess.run(
        [sys.executable, "-I", "-S", "-c", prelude + code], capture_output=True, text=True
    )
    assert result.returncode == 0, result.stderr
    return result.stdout.strip()


def test_resume_collects_again_and_leaves_the_start_out() -> None:
    out = _python(
        "import gc\n"
        "from hull.gc_pause import pause, resume\n"
        "pause(); paused = gc.isenabled()\n"
        "resume(); print(paused, gc.isenabled(), gc.get_freeze_count() > 0)\n"
    )
    assert out == "False True True"


def test_hull_resumes_for_every_verb_but_run(tmp_path: Path) -> None:
    out = _python(
        "import gc, os\n"
        "from hull.gc_pause import pause\n"
        "pause()\n"
        "from hull.cli.main import main\n"
        f"code = main(['--root', {str(tmp_path / 'lib')!r}, '--runroot', {str(tmp_path / 'run')!r},"
        " 'images', '-q'])\n"
        "print(code, gc.isenabled())\n"
    )
    assert out == "0 True"


def test_the_launchers_pause_collection_first(tmp_path: Path) -> None:
    from hull.runtime.launcher import LAUNCHERS, write_launcher

    for name in LAUNCHERS:
        text = write_launcher(tmp_path, name).read_text()
        assert text.index("pause()") < text.index("import main")
