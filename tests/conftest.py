"""Shared fixtures: a busybox rootfs, a private Hull root, and root/kernel guards."""

from __future__ import annotations

import os
import shutil
import uuid
from pathlib import Path

import pytest

from tests.fixtures.busybox import build_busybox_rootfs

IS_ROOT = os.geteuid() == 0


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Integration tests need root and a real kernel: skip them, saying why, otherwise."""
    if IS_ROOT:
        return
    skip = pytest.mark.skip(reason="integration tests need root (namespaces, cgroups, mounts)")
    for item in items:
        if "integration" in item.nodeid.split(os.sep) or "/integration/" in item.nodeid:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def busybox_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One busybox rootfs per session; tests copy it rather than rebuild."""
    return build_busybox_rootfs(tmp_path_factory.mktemp("busybox-template") / "rootfs")


@pytest.fixture
def busybox_rootfs(busybox_template: Path, tmp_path: Path) -> Path:
    """A private copy of the busybox rootfs that a test may change freely."""
    dest = tmp_path / "rootfs"
    shutil.copytree(busybox_template, dest, symlinks=True)
    return dest


@pytest.fixture
def hull_paths(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """A private Hull root (lib and run dirs) so the suite never touches real state."""
    from hull.paths import HullPaths

    root = tmp_path / "hull-lib"
    runroot = tmp_path / "hull-run"
    root.mkdir()
    runroot.mkdir()
    monkeypatch.setenv("HULL_ROOT", str(root))
    monkeypatch.setenv("HULL_RUNROOT", str(runroot))
    # Containers of this test go under their own cgroup parent, removed afterwards.
    parent = f"hull-test-{uuid.uuid4().hex[:10]}"
    monkeypatch.setenv("HULL_CGROUP_PARENT", parent)
    yield HullPaths(root, runroot)
    for hierarchy in os.listdir("/sys/fs/cgroup") if IS_ROOT else []:
        path = os.path.join("/sys/fs/cgroup", hierarchy, parent)
        if os.path.isdir(path):
            try:
                os.rmdir(path)
            except OSError:
                pass  # a leak: the test that made it asserts on it


@pytest.fixture(scope="session", autouse=True)
def remove_test_cgroup_parents():
    """The runtime tests' shared cgroup parent (/hull-test) goes once the session ends.

    rmdir only removes an empty cgroup, so a leaked container cgroup stays visible.
    """
    yield
    if not IS_ROOT or not os.path.isdir("/sys/fs/cgroup"):
        return
    for hierarchy in os.listdir("/sys/fs/cgroup"):
        try:
            os.rmdir(os.path.join("/sys/fs/cgroup", hierarchy, "hull-test"))
        except OSError:
            pass
