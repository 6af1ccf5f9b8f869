"""Drive the `hull` CLI as a user would, against a private Hull root."""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

from hull.paths import HullPaths


class Hull:
    """`hull --root R --runroot RR ...` as a subprocess."""

    def __init__(self, paths: HullPaths) -> None:
        self.paths = paths

    def cmd(self, *args: str) -> list[str]:
        return [
            sys.executable,
            "-m",
            "hull.cli.main",
            "--root",
            str(self.paths.root),
            "--runroot",
            str(self.paths.runroot),
            *args,
        ]

    def __call__(self, *args: str, timeout: float = 120, **kw) -> subprocess.CompletedProcess:
        """Run to completion; stdio to temp files so detached shims never hold our pipes."""
        with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
            if "input" not in kw:
                kw.setdefault("stdin", subprocess.DEVNULL)
            proc = subprocess.run(self.cmd(*args), stdout=out, stderr=err, timeout=timeout, **kw)
            out.seek(0)
            err.seek(0)
            return subprocess.CompletedProcess(proc.args, proc.returncode, out.read(), err.read())

    def ok(self, *args: str, **kw) -> str:
        result = self(*args, **kw)
        assert result.returncode == 0, (args, result.returncode, result.stdout, result.stderr)
        return result.stdout


def overlay_mounts_under(root: Path) -> list[str]:
    with open("/proc/self/mountinfo") as f:
        return [line.split()[4] for line in f if str(root) in line.split()[4]]


def shim_pids(runroot: Path) -> list[int]:
    """Live hull-shim processes of this Hull root (other tests' shims are theirs)."""
    pids = []
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            if Path(f"/proc/{name}/comm").read_text().strip() != "hull-shim":
                continue
            if str(runroot).encode() not in Path(f"/proc/{name}/cmdline").read_bytes():
                continue
            stat = Path(f"/proc/{name}/stat").read_text()
        except OSError:
            continue
        if stat[stat.rindex(")") + 2] != "Z":
            pids.append(int(name))
    return pids


def cgroup_dirs_for(container_id: str) -> list[str]:
    found = []
    for hierarchy in os.listdir("/sys/fs/cgroup"):
        parent = os.environ.get("HULL_CGROUP_PARENT", "hull")
        path = os.path.join("/sys/fs/cgroup", hierarchy, parent, container_id)
        if os.path.isdir(path):
            found.append(path)
    return found


def isolated_engine_session(paths: HullPaths, monkeypatch) -> Iterator[Hull]:  # type: ignore[no-untyped-def]
    """engine_session on a default bridge, subnet and nft table of the test's own (never
    the host's hull0: `hull run` is on the bridge unless told otherwise), removed after."""
    import random
    import secrets

    from hull.net import links, nft

    tag = secrets.token_hex(3)
    monkeypatch.setenv("HULL_BRIDGE", f"hulleb{tag}")
    monkeypatch.setenv("HULL_NFT_TABLE", f"hullet{tag}")
    monkeypatch.setenv("HULL_BRIDGE_SUBNET", f"10.212.{random.randrange(256)}.0/24")
    try:
        yield from engine_session(paths)
    finally:
        links.delete_link(f"hulleb{tag}")
        nft.delete_table(f"hullet{tag}")


def engine_session(paths: HullPaths) -> Iterator[Hull]:
    """Body of the engine tests' `hull` fixture: a busybox image, then a check that
    the test left no container, mount, cgroup or shim behind (shims are killed
    either way, so a failure never leaks into the next test)."""
    h = Hull(paths)
    h.ok("image", "bootstrap", "busybox")
    yield h
    ids = h("ps", "-aq", "--no-trunc").stdout.split()
    if ids:
        h("rm", "-f", *ids)
    assert overlay_mounts_under(paths.root) == []
    assert [d for cid in ids for d in cgroup_dirs_for(cid)] == []
    leftover = shim_pids(paths.runroot)
    for pid in leftover:
        try:
            os.kill(pid, 9)
        except ProcessLookupError:
            pass
    assert leftover == []


def wait_for(predicate, timeout: float = 20.0, step: float = 0.05):  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(step)
    raise AssertionError("condition not met in time")


VM_TOOLS = ("qemu-system-x86_64", "mkfs.erofs", "gcc")


def require_vm_tools() -> None:
    """Skip, naming it, when a tool a microVM needs (QEMU, the root disk's mkfs, the
    guest agent's compiler) is missing."""
    import shutil

    import pytest

    for tool in VM_TOOLS:
        if shutil.which(tool) is None:
            pytest.skip(f"{tool} is not installed: QEMU microVMs cannot boot here")


def pids_with(needle: bytes, path: str) -> list[int]:
    """Processes whose command line holds both needle and path."""
    pids = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            cmdline = Path(f"/proc/{entry}/cmdline").read_bytes()
        except OSError:
            continue
        if needle in cmdline and path.encode() in cmdline:
            pids.append(int(entry))
    return pids
