"""`hull run --rm busybox true` on the default bridge vs podman (and docker) on theirs.

    sudo .venv/bin/python bench/net_run.py [--runs 20]

Each run gets a network namespace, a veth on the engine's default bridge, an address
and its NAT rules, and gives them back at exit: the networking cost of a short
container, side by side under hyperfine. The image is Hull's bootstrapped busybox,
saved with `hull save` and loaded into podman (and docker), so all run the same bytes.

Hull runs in a private root with a bridge and nft table of its own (removed at the
end); podman in private --root/--runroot with runc, cgroupfs and ulimits below the
host's hard limits, as in bench/engine_run.py; docker through a private dockerd with
its default bridge (bench/peers.py) when docker.io is installed.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from peers import have_tools, own_cgroup_parent, private_dockerd  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
HULL = REPO / ".venv" / "bin" / "hull"
BRIDGE, TABLE = "hullbrun0", "hullbrun"
TARGET = 0.2


def hyperfine(commands: dict[str, str], runs: int, out: Path, env: dict[str, str]) -> dict:
    args = ["hyperfine", "-N", "--warmup", "3", "--runs", str(runs), "--export-json", str(out)]
    for name, cmd in commands.items():
        args += ["-n", name, cmd]
    subprocess.run(args, check=True, stdout=subprocess.DEVNULL, env=env)
    return {r["command"]: r for r in json.loads(out.read_text())["results"]}


def remove_docker_bridge() -> None:
    """dockerd leaves docker0 and its iptables rules behind when it stops: remove them
    (only called when the host had no docker0 before the run)."""
    for table in ("nat", "filter"):
        listing = subprocess.run(["iptables", "-t", table, "-S"], capture_output=True, text=True)
        chains = []
        for line in listing.stdout.splitlines():
            words = shlex.split(line)
            if words[:1] == ["-N"] and words[1].startswith("DOCKER"):
                chains.append(words[1])
            elif words[:1] == ["-A"] and (
                words[1].startswith("DOCKER")
                or "docker0" in words
                or words[-1].startswith("DOCKER")
            ):
                subprocess.run(["iptables", "-t", table, "-D", *words[1:]], capture_output=True)
        for chain in chains:
            subprocess.run(["iptables", "-t", table, "-X", chain], capture_output=True)
    subprocess.run(["ip", "link", "del", "docker0"], capture_output=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--runs", type=int, default=20)
    opts = parser.parse_args()
    own_cgroup_parent()
    if not have_tools("hyperfine", "podman"):
        return 1
    env = dict(os.environ, HULL_BRIDGE=BRIDGE, HULL_NFT_TABLE=TABLE)
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    with tempfile.TemporaryDirectory(prefix="hull-bench-netrun-") as tmp:
        base = Path(tmp)
        hull = f"{HULL} --root {base}/hull --runroot {base}/hull-run"
        podman = (
            f"podman --root {base}/podman --runroot {base}/podman-run --runtime runc"
            " --cgroup-manager cgroupfs"
        )
        ulimits = "--ulimit nofile=1024:1024 --ulimit nproc=4096:4096"
        commands = {
            "hull": f"{hull} run --rm busybox true",
            "podman": f"{podman} run --rm {ulimits} busybox true",
        }
        had_docker0 = True
        try:
            subprocess.run(f"{hull} image bootstrap busybox", shell=True, check=True, env=env,
                           stdout=subprocess.DEVNULL)  # fmt: skip
            subprocess.run(f"{hull} save -o {base}/busybox.tar busybox", shell=True, check=True,
                           env=env)  # fmt: skip
            subprocess.run(f"{podman} load -q -i {base}/busybox.tar", shell=True, check=True,
                           stdout=subprocess.DEVNULL)  # fmt: skip
            # The peers' bridges first: podman's takes 10.88.0.0/16 and docker's
            # 172.17.0.0/16 without looking at the host's routes; Hull's default bridge
            # then picks a subnet that is still free.
            subprocess.run(commands["podman"], shell=True, check=True)
            had_docker0 = os.path.exists("/sys/class/net/docker0")
            with private_dockerd(base, bridge=True) as docker_env:
                if docker_env is not None:
                    sock = docker_env["DOCKER_HOST"]
                    subprocess.run(["docker", "-H", sock, "load", "-q", "-i",
                                    f"{base}/busybox.tar"], check=True)  # fmt: skip
                    commands["docker"] = f"docker -H {sock} run --rm busybox true"
                subprocess.run(commands["hull"], shell=True, check=True, env=env)
                results = hyperfine(commands, opts.runs, base / "results.json", env)
        finally:
            if not had_docker0:
                remove_docker_bridge()
            subprocess.run(f"{podman} rm -af", shell=True, capture_output=True)
            subprocess.run(f"{podman} system reset -f", shell=True, capture_output=True)
            subprocess.run(["ip", "link", "del", BRIDGE], capture_output=True)
            subprocess.run(["nft", "delete", "table", "ip", TABLE], capture_output=True)
    peer = results["podman"]["median"]
    print(f"run --rm busybox true on the default bridge, {opts.runs} runs each (median, vs podman)")
    for name, r in results.items():
        print(f"  {name:<8}{r['median'] * 1000:>8.1f} ms {r['median'] / peer:>7.2f}x")
    if "docker" not in results:
        print("  docker   not measured (see above)")
    ratio = results["hull"]["median"] / peer
    verdict = "met" if ratio <= TARGET else "NOT met"
    print(f"target: hull <= {TARGET}x podman: {verdict} ({ratio:.2f}x)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
