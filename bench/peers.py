"""Peers for the benchmarks: a private dockerd, started and torn down per run.

Docker is measured only when Debian's docker.io is installed (`apt-get install
docker.io`); the daemon runs with its own data root, exec root and socket under
the benchmark's temp dir, its own containerd namespace, and by default neither
a bridge nor iptables rules, so nothing of the host's (or of a developer's own
dockerd) is touched.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path


def have_tools(*tools: str) -> bool:
    """Whether every tool is on PATH; names the first one missing on stderr."""
    for tool in tools:
        if not shutil.which(tool):
            print(f"bench: {tool} is not installed (apt-get install {tool})", file=sys.stderr)
            return False
    return True


@contextlib.contextmanager
def private_dockerd(base: Path, bridge: bool = False) -> Iterator[dict[str, str] | None]:
    """Yield the environment that points `docker` at a fresh dockerd, or None when
    docker.io is not installed or the daemon does not come up (with a note why).

    bridge=True gives the daemon its default bridge and iptables rules (for the
    network benchmarks); they are removed when the daemon stops.
    """
    if not shutil.which("dockerd") or not shutil.which("docker"):
        print("  (docker not measured: dockerd is not installed; apt-get install docker.io)")
        yield None
        return
    root = base / "dockerd"
    root.mkdir(parents=True, exist_ok=True)
    sock = root / "docker.sock"
    args = [
        "dockerd",
        "--data-root", str(root / "data"),
        "--exec-root", str(root / "exec"),
        "--pidfile", str(root / "dockerd.pid"),
        "-H", f"unix://{sock}",
        "--containerd-namespace", "hull-bench",
        "--storage-driver", "overlay2",
    ]  # fmt: skip
    if not bridge:
        args += ["--bridge=none", "--iptables=false", "--ip6tables=false"]
    env = dict(os.environ, DOCKER_HOST=f"unix://{sock}")
    log = (root / "dockerd.log").open("wb")
    proc = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            probe = subprocess.run(["docker", "info"], env=env, capture_output=True)
            if probe.returncode == 0:
                break
            if proc.poll() is not None:
                break
            time.sleep(0.3)
        else:
            probe = None
        if probe is None or probe.returncode != 0:
            print(f"  (docker not measured: dockerd did not start; see {root}/dockerd.log)")
            yield None
            return
        yield env
    finally:
        subprocess.run(["docker", "rm", "-f", "-v", *_all_containers(env)], env=env,
                       capture_output=True)  # fmt: skip
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        log.close()
        _unmount_under(root)
        shutil.rmtree(root, ignore_errors=True)


def _all_containers(env: dict[str, str]) -> list[str]:
    listing = subprocess.run(["docker", "ps", "-aq"], env=env, capture_output=True, text=True)
    return listing.stdout.split()


def _unmount_under(root: Path) -> None:
    """Whatever the daemon left mounted under its roots (overlay, netns, shm)."""
    prefix = str(root) + "/"
    with open("/proc/self/mountinfo") as f:
        targets = [line.split()[4] for line in f]
    for target in sorted((t for t in targets if t.startswith(prefix)), reverse=True):
        subprocess.run(["umount", "-l", target], check=False)


def own_cgroup_parent(prefix: str = "hull-bench") -> str:
    """Give every hull this benchmark runs a cgroup parent of its own (through
    HULL_CGROUP_PARENT, inherited by hyperfine's children), removed at exit: the
    host's own "hull" parent is never touched or left behind."""
    import atexit

    name = f"{prefix}-{os.getpid()}"
    os.environ["HULL_CGROUP_PARENT"] = name
    atexit.register(_remove_cgroup_parent, name)
    return name


def _remove_cgroup_parent(name: str) -> None:
    for hierarchy in Path("/sys/fs/cgroup").iterdir():
        top = hierarchy / name
        if not top.is_dir():
            continue
        for parent, _dirs, _files in sorted(os.walk(top), key=lambda e: -len(e[0])):
            with contextlib.suppress(OSError):
                os.rmdir(parent)
