"""`hull run --rm busybox true` vs `podman run --rm` on the same image, side by side.

    sudo .venv/bin/python bench/engine_run.py [--runs 20]

Both use --network none and private state directories (nothing of a user's
own is touched). The image is Hull's bootstrapped busybox, saved with
`hull save` and loaded into podman, so both run the same bytes. Podman runs
with runc (crun 1.8 refuses this host's hybrid cgroups) and with ulimits below
the host's hard limits (its defaults ask for more than root may have here).
docker is measured with a private dockerd (bench/peers.py) when Debian's
docker.io is installed: its own data root and socket, no bridge, no iptables.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from peers import have_tools, own_cgroup_parent, private_dockerd  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
HULL = REPO / ".venv" / "bin" / "hull"


def hyperfine(commands: dict[str, str], runs: int, out: Path) -> dict[str, dict]:
    args = ["hyperfine", "-N", "--warmup", "3", "--runs", str(runs), "--export-json", str(out)]
    for name, cmd in commands.items():
        args += ["-n", name, cmd]
    subprocess.run(args, check=True, stdout=subprocess.DEVNULL)
    return {r["command"]: r for r in json.loads(out.read_text())["results"]}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--runs", type=int, default=20)
    opts = parser.parse_args()
    own_cgroup_parent()
    if not have_tools("hyperfine", "podman"):
        return 1
    env = dict(os.environ)
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    with tempfile.TemporaryDirectory(prefix="hull-bench-run-") as tmp:
        base = Path(tmp)
        hull = f"{HULL} --root {base}/hull --runroot {base}/hull-run"
        subprocess.run(f"{hull} image bootstrap busybox", shell=True, check=True, env=env,
                       stdout=subprocess.DEVNULL)  # fmt: skip
        subprocess.run(f"{hull} save -o {base}/busybox.tar busybox", shell=True, check=True,
                       env=env)  # fmt: skip
        podman = (
            f"podman --root {base}/podman --runroot {base}/podman-run --runtime runc"
            " --cgroup-manager cgroupfs"
        )
        subprocess.run(f"{podman} load -q -i {base}/busybox.tar", shell=True, check=True,
                       stdout=subprocess.DEVNULL)  # fmt: skip
        commands = {
            "hull": f"{hull} run --rm --network none busybox true",
            "podman": f"{podman} run --rm --network none --ulimit nofile=1024:1024"
            " --ulimit nproc=4096:4096 busybox true",
        }
        with private_dockerd(base) as docker_env:
            if docker_env is not None:
                sock = docker_env["DOCKER_HOST"]
                subprocess.run(["docker", "-H", sock, "load", "-q", "-i", f"{base}/busybox.tar"],
                               check=True, stdout=subprocess.DEVNULL)  # fmt: skip
                commands["docker"] = f"docker -H {sock} run --rm --network none busybox true"
            try:
                results = hyperfine(commands, opts.runs, base / "results.json")
            finally:
                subprocess.run(f"{podman} rm -af", shell=True, capture_output=True)
                subprocess.run(f"{podman} system reset -f", shell=True, capture_output=True)
    peer = results["podman"]["median"]
    print(f"run --rm busybox true, --network none, {opts.runs} runs each (median, vs podman)")
    for name, r in results.items():
        print(f"  {name:<8}{r['median'] * 1000:>8.1f} ms {r['median'] / peer:>7.2f}x")
    if "docker" not in results:
        print("  docker   not measured (see above)")
    ratio = results["hull"]["median"] / peer
    print(f"target: hull <= 0.25x podman: {'met' if ratio <= 0.25 else 'NOT met'} ({ratio:.2f}x)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
