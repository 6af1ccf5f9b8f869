"""TCP throughput between the host and a container over a published port: Hull vs podman.

    sudo .venv/bin/python bench/net_throughput.py [--seconds 3] [--rounds 2]

An iperf3 server runs in a container on each engine's default bridge, published with
-p PORT:5201; iperf3 on the host connects to 127.0.0.1:PORT and to the host's own
address, and measures both ways (host -> container, and -R: container -> host). The
image is Hull's busybox plus Debian's iperf3 and its libraries (`hull commit`), saved
with `hull save` and loaded into podman, so both run the same bytes. Rounds alternate
hull and podman; the median of each is printed with the ratio hull / podman.

Hull runs in a private root with a bridge and nft table of its own (removed at the
end); podman in private --root/--runroot with runc, cgroupfs and ulimits below the
host's hard limits, as in bench/engine_run.py. Traffic stays on the host.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from peers import have_tools, own_cgroup_parent  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
HULL = REPO / ".venv" / "bin" / "hull"
IMAGE = "hull-bench-iperf3:latest"
BRIDGE, TABLE = "hullbnet0", "hullbnet"
LIB_DIRS = ("/lib/x86_64-linux-gnu", "/usr/lib/x86_64-linux-gnu", "/lib64")


def sh(cmd: str, env: dict[str, str] | None = None, quiet: bool = True) -> str:
    done = subprocess.run(cmd, shell=True, env=env, capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"{cmd}: {done.stderr.strip() or done.stdout.strip()}")
    return done.stdout


def iperf3_files() -> list[str]:
    """iperf3 and the shared objects it loads (ldd), as host paths."""
    binary = shutil.which("iperf3")
    if binary is None:
        raise RuntimeError("iperf3 is not installed (apt-get install -y iperf3)")
    files = [binary]
    for line in sh(f"ldd {binary}").splitlines():
        parts = line.split()
        path = parts[2] if "=>" in parts and len(parts) > 2 else parts[0]
        if path.startswith("/"):
            files.append(path)
    return files


def build_image(hull: str, env: dict[str, str], staging: Path) -> None:
    """busybox + iperf3 (symlinks resolved), committed as IMAGE."""
    for path in iperf3_files():
        dest = staging / path.lstrip("/")
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(path, dest)
    name = "iperf3-build"
    sh(f"{hull} create --name {name} busybox true", env)
    try:
        sh(f"{hull} cp -q {staging}/. {name}:/", env)
        sh(f"{hull} commit {name} {IMAGE}", env)
    finally:
        sh(f"{hull} rm -f {name}", env)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("0.0.0.0", 0))
        return int(sock.getsockname()[1])


def host_address() -> str:
    """The host's first global IPv4 address (no packet is sent to find it)."""
    for line in sh("ip -4 -o addr show scope global").splitlines():
        address = line.split()[3].split("/")[0]
        if not line.split()[1].startswith(("hull", "podman", "veth", "cni")):
            return address
    raise RuntimeError("the host has no global IPv4 address")


def wait_listening(address: str, port: int, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            probe = subprocess.run(
                ["iperf3", "-c", address, "-p", str(port), "-n", "1K", "-J"],
                capture_output=True,
                text=True,
                timeout=10,
            )
            if probe.returncode == 0:
                return
        except subprocess.TimeoutExpired:
            pass
        time.sleep(0.2)
    raise RuntimeError(f"no iperf3 server answered on {address}:{port}")


def gbits(address: str, port: int, seconds: int, reverse: bool) -> float:
    args = ["iperf3", "-c", address, "-p", str(port), "-t", str(seconds), "-O", "1", "-J"]
    if reverse:
        args.append("-R")
    for _ in range(20):
        done = subprocess.run(args, capture_output=True, text=True, timeout=seconds + 30)
        result = json.loads(done.stdout or "{}")
        error = str(result.get("error", ""))
        if "busy" not in error and "refused" not in error:  # the server is between tests
            break
        time.sleep(0.5)
    end = result.get("end", {})
    if done.returncode != 0 or "sum_received" not in end:
        raise RuntimeError(f"iperf3 {' '.join(args[1:])}: {result.get('error')} {done.stderr}")
    return float(end["sum_received"]["bits_per_second"]) / 1e9


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seconds", type=int, default=3)
    parser.add_argument("--rounds", type=int, default=2)
    opts = parser.parse_args()
    own_cgroup_parent()
    if not have_tools("podman", "iperf3"):
        return 1
    env = dict(os.environ, HULL_BRIDGE=BRIDGE, HULL_NFT_TABLE=TABLE)
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    host_ip = host_address()
    with tempfile.TemporaryDirectory(prefix="hull-bench-net-") as tmp:
        base = Path(tmp)
        hull = f"{HULL} --root {base}/hull --runroot {base}/hull-run"
        podman = (
            f"podman --root {base}/podman --runroot {base}/podman-run --runtime runc"
            " --cgroup-manager cgroupfs"
        )
        ports = {"hull": free_port(), "podman": free_port()}
        try:
            sh(f"{hull} image bootstrap busybox", env)
            build_image(hull, env, base / "staging")
            sh(f"{hull} save -o {base}/iperf3.tar {IMAGE}", env)
            sh(f"{podman} load -q -i {base}/iperf3.tar")
            # podman first: its bridge takes 10.88.0.0/16 without looking at the host's
            # routes; Hull's default bridge then picks a subnet that is still free.
            sh(
                f"{podman} run -d --name iperf3 -p {ports['podman']}:5201"
                f" --ulimit nofile=1024:1024 --ulimit nproc=4096:4096 {IMAGE} iperf3 -s"
            )
            sh(f"{hull} run -d --name iperf3 -p {ports['hull']}:5201 {IMAGE} iperf3 -s", env)
            for port in ports.values():
                wait_listening("127.0.0.1", port)
            results = measure(ports, host_ip, opts.seconds, opts.rounds)
        finally:
            subprocess.run(f"{hull} rm -f iperf3", shell=True, env=env, capture_output=True)
            subprocess.run(f"{podman} rm -af", shell=True, capture_output=True)
            subprocess.run(f"{podman} system reset -f", shell=True, capture_output=True)
            subprocess.run(["ip", "link", "del", BRIDGE], capture_output=True)
            subprocess.run(["nft", "delete", "table", "ip", TABLE], capture_output=True)
    report(results, opts)
    return 0


Results = dict[tuple[str, str], dict[str, list[float]]]


def measure(ports: dict[str, int], host_ip: str, seconds: int, rounds: int) -> Results:
    """(target, direction) -> engine -> Gbit/s per round; engines alternate."""
    results: Results = {}
    for _ in range(rounds):
        for target in ("127.0.0.1", host_ip):
            for reverse in (False, True):
                key = (target, "container -> host" if reverse else "host -> container")
                for engine, port in ports.items():
                    try:
                        value = gbits(target, port, seconds, reverse)
                    except RuntimeError as e:
                        raise RuntimeError(f"{engine}: {e}") from None
                    results.setdefault(key, {}).setdefault(engine, []).append(value)
    return results


def report(results: Results, opts: argparse.Namespace) -> None:
    print(
        f"TCP over a published port, iperf3 -t {opts.seconds:g}, {opts.rounds} rounds each"
        " (median Gbit/s, hull / podman)"
    )
    ratios = []
    for (target, direction), engines in results.items():
        hull, podman = (statistics.median(engines[e]) for e in ("hull", "podman"))
        ratios.append(hull / podman)
        print(
            f"  {target:<15} {direction:<18} hull {hull:7.2f}  podman {podman:7.2f}"
            f"  {hull / podman:5.2f}x"
        )
    worst = min(ratios)
    print(
        f"target: hull >= 1.0x podman: {'met' if worst >= 1.0 else 'NOT met'} (worst {worst:.2f}x)"
    )


if __name__ == "__main__":
    sys.exit(main())
