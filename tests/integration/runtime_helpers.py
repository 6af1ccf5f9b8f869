"""Helpers for hull-runtime integration tests: bundles, a CLI runner, leak checks."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import uuid
from pathlib import Path

from hull.oci.runtime_spec import default_spec

CGROUP_ROOT = "/sys/fs/cgroup"


class Runtime:
    """Runs `hull-runtime --root <private dir>` as a subprocess."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def cmd(self, *args: str) -> list[str]:
        return [sys.executable, "-m", "hull.runtime.cli", "--root", str(self.root), *args]

    def run(self, *args: str, timeout: float = 60, **kw) -> subprocess.CompletedProcess:
        kw.setdefault("capture_output", True)
        kw.setdefault("text", True)
        return subprocess.run(self.cmd(*args), timeout=timeout, **kw)

    def run_detached(self, *args: str, timeout: float = 60) -> subprocess.CompletedProcess:
        """For create and run --detach: the container keeps the runtime's stdio
        open, so capturing it through pipes would wait for the container's exit."""
        with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
            proc = subprocess.run(
                self.cmd(*args), stdout=out, stderr=err, stdin=subprocess.DEVNULL, timeout=timeout
            )
            out.seek(0)
            err.seek(0)
            return subprocess.CompletedProcess(proc.args, proc.returncode, out.read(), err.read())

    def state(self, cid: str) -> dict:
        out = self.run("state", cid)
        assert out.returncode == 0, out.stderr
        return json.loads(out.stdout)


def make_bundle(base: Path, rootfs: Path, args: list[str], **changes) -> tuple[Path, dict]:
    """A bundle dir with config.json from the default spec, a unique cgroup path."""
    bundle = base / f"bundle-{uuid.uuid4().hex[:8]}"
    bundle.mkdir()
    config = default_spec()
    config["root"] = {"path": str(rootfs), "readonly": False}
    config["process"]["terminal"] = False
    config["process"]["args"] = args
    config["linux"]["cgroupsPath"] = f"/hull-test/{uuid.uuid4().hex[:12]}"
    for key, value in changes.items():
        config[key] = value
    write_config(bundle, config)
    return bundle, config


def write_config(bundle: Path, config: dict) -> None:
    (bundle / "config.json").write_text(json.dumps(config))


def cgroup_dirs(cgroups_path: str) -> list[str]:
    """Every directory of this cgroup path that exists in any hierarchy."""
    found = []
    for hierarchy in os.listdir(CGROUP_ROOT):
        path = os.path.join(CGROUP_ROOT, hierarchy, cgroups_path.lstrip("/"))
        if os.path.isdir(path):
            found.append(path)
    return found


def processes_with(marker: str) -> list[int]:
    """Host pids whose command line contains marker."""
    pids = []
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/cmdline", "rb") as f:
                if marker.encode() in f.read():
                    pids.append(int(name))
        except OSError:
            continue
    return pids


def container_id() -> str:
    return f"t-{uuid.uuid4().hex[:10]}"
