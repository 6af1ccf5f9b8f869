"""`hull run --rm` in the foreground: the hull process supervises, no shim.

What must hold without a shim: stdio and exit codes pass straight through, stdin
is the container's only with -i, stop/kill from another hull process work, and a
kill -9 of the foreground hull leaves the container running, found by the sweep
and removed once it exits.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

import pytest

from tests.fixtures.launcher_python import launcher_stdout
from tests.integration.engine_helpers import (
    Hull,
    isolated_engine_session,
    overlay_mounts_under,
    shim_pids,
    wait_for,
)


@pytest.fixture
def hull(hull_paths, monkeypatch):
    yield from isolated_engine_session(hull_paths, monkeypatch)


def _running(hull: Hull, name: str) -> bool:
    return name in hull.ok("ps", "--format", "{{.Names}}").split()


def _start_foreground(hull: Hull, name: str, *command: str) -> subprocess.Popen:
    proc = subprocess.Popen(
        hull.cmd("run", "--rm", "--network", "none", "--name", name, "busybox", *command),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    wait_for(lambda: _running(hull, name))
    return proc


# What `hull run` must not import (docs/architecture.md, "Processes"): pathlib with
# re, enum and urllib.parse cost ~6 ms of its ~35; contextlib and dataclasses
# bring collections, functools, inspect.
HEAVY_FOR_RUN = ("pathlib", "re", "enum", "urllib.parse", "contextlib", "dataclasses", "typing")


def test_run_rm_imports_nothing_heavy(hull: Hull) -> None:
    """As the launcher starts it (python -I -S, the repo on sys.path)."""
    code = (
        "from hull.cli.main import main\n"
        "code = main()\n"
        f"print(sorted(m for m in {HEAVY_FOR_RUN!r} if m in sys.modules))\n"
        "sys.exit(code)\n"
    )
    args = ["--root", hull.paths.root, "--runroot", hull.paths.runroot]
    args += ["run", "--rm", "--network", "none", "busybox", "true"]
    assert launcher_stdout(code, *args) == "[]"


def test_foreground_rm_uses_no_shim_and_passes_stdio_through(hull: Hull) -> None:
    result = hull(
        "run", "--rm", "--network", "none", "busybox", "sh", "-c",
        "echo out; echo err >&2; ls /proc/self/fd | wc -l; exit 7",
    )  # fmt: skip
    assert result.returncode == 7
    out_lines = result.stdout.splitlines()
    assert out_lines[0] == "out" and result.stderr == "err\n"
    # stdin, stdout, stderr and the fd ls opened: no host fd leaked in
    assert int(out_lines[1]) == 4
    assert shim_pids(hull.paths.runroot) == []
    assert hull.ok("ps", "-aq") == ""


def test_stdin_reaches_the_container_only_with_i(hull: Hull) -> None:
    with_i = hull("run", "--rm", "-i", "--network", "none", "busybox", "cat", input=b"hello\n")
    assert with_i.stdout == "hello\n"
    without = hull("run", "--rm", "--network", "none", "busybox", "cat", input=b"hello\n")
    assert without.returncode == 0 and without.stdout == ""


def test_stop_from_another_hull_process(hull: Hull) -> None:
    script = "trap 'echo got-term; exit 5' TERM; while :; do sleep 0.1; done"
    proc = _start_foreground(hull, "fg-stop", "sh", "-c", script)
    hull.ok("stop", "-t", "5", "fg-stop")
    out, _ = proc.communicate(timeout=30)
    assert proc.returncode == 5 and "got-term" in out
    wait_for(lambda: hull.ok("ps", "-aq") == "")


def test_killed_foreground_hull_leaves_the_container_to_the_sweep(hull: Hull) -> None:
    marker = "/tmp/fg-sweep-done"
    proc = _start_foreground(hull, "fg-orphan", "sh", "-c", f"sleep 1.5; touch {marker}")
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(timeout=10)
    # Still running without its supervisor, and still listed.
    assert _running(hull, "fg-orphan")
    time.sleep(2.5)
    # Once it exited, the next hull invocation's sweep records it and applies --rm.
    wait_for(lambda: hull.ok("ps", "-aq") == "", timeout=10)
    assert overlay_mounts_under(hull.paths.root) == []
    containers = Path(hull.paths.root) / "containers"
    assert not containers.exists() or os.listdir(containers) == []


def test_sweep_leaves_a_supervised_container_to_its_hull_process(hull: Hull) -> None:
    """Between the container's exit and its own clean-up, a foreground `hull run`
    still owns the container: another hull's sweep must not record it as dead and
    remove it under the runner's feet (that race once leaked a container dir)."""
    from hull.engine.containers import (
        ContainerService,
        _claim_supervision,
        _release_supervision,
    )

    cid = hull.ok("create", "--rm", "--network", "none", "busybox", "true").strip()
    with ContainerService(hull.paths) as service:
        layout = service.layout(service.get(cid))
        # What run_foreground's row looks like once its container has exited.
        service.db.execute("UPDATE containers SET state = 'running', pid = 0 WHERE id = ?", (cid,))
        supervision = _claim_supervision(layout)
        try:
            assert hull.ok("ps", "-q", "--no-trunc").split() == [cid]  # ps sweeps first
        finally:
            _release_supervision(supervision)
    # With its supervisor gone, the sweep applies --rm.
    assert hull.ok("ps", "-aq") == ""
    assert not os.path.exists(layout.dir)
