"""Garbage collection paused for a start (hull/gc_pause.py), resumed for the rest."""

from __future__ import annotations

from pathlib import Path

from tests.fixtures.launcher_python import launcher_stdout as _python


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
