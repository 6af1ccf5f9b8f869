"""hull-runtime vs crun vs runc: `run` of a /bin/true bundle, side by side.

    sudo .venv/bin/python bench/runtime_start.py [--runs 50]

Each runtime gets the same busybox bundle (same config.json, cgroups, default
mounts and namespaces). crun 1.8 refuses this host's hybrid cgroup layout, so
it alone runs inside a private mount namespace with /sys/fs/cgroup/unified
unmounted. hyperfine takes the times; the report is medians and ratios to crun.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from bench.peers import have_tools  # noqa: E402
from hull.oci.runtime_spec import default_spec  # noqa: E402
from tests.fixtures.busybox import build_busybox_rootfs  # noqa: E402


def make_bundle(base: Path) -> Path:
    bundle = base / "bundle"
    build_busybox_rootfs(bundle / "rootfs")
    config = default_spec()
    config["process"]["terminal"] = False
    config["process"]["args"] = ["/bin/true"]
    config["linux"]["cgroupsPath"] = "/hull-bench/true"
    (bundle / "config.json").write_text(json.dumps(config, indent=2))
    return bundle


def hyperfine(commands: dict[str, str], runs: int, out: Path) -> dict[str, dict]:
    args = ["hyperfine", "-N", "--warmup", "5", "--runs", str(runs), "--export-json", str(out)]
    for name, cmd in commands.items():
        args += ["-n", name, cmd]
    subprocess.run(args, check=True, stdout=subprocess.DEVNULL)
    results = json.loads(out.read_text())["results"]
    return {r["command"]: r for r in results}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--runs", type=int, default=60, help="runs per runtime, in all")
    parser.add_argument("--rounds", type=int, default=3, help="alternations of crun and the others")
    opts = parser.parse_args()
    if not have_tools("hyperfine", "crun", "runc"):
        return 1
    hull_runtime = REPO / ".venv" / "bin" / "hull-runtime"
    per_round = max(1, opts.runs // opts.rounds)
    times: dict[str, list[float]] = {"hull-runtime": [], "crun": [], "runc": []}
    ratios: list[float] = []
    with tempfile.TemporaryDirectory(prefix="hull-bench-") as tmp:
        base = Path(tmp)
        bundle = make_bundle(base)
        state = base / "state"
        crun_script = base / "crun.sh"
        crun_script.write_text(
            "#!/bin/sh\n"
            "umount /sys/fs/cgroup/unified 2>/dev/null\n"
            f"exec hyperfine -N --warmup 5 --runs {per_round} --export-json {base}/crun.json"
            f" -n crun 'crun --root {state}/crun run --bundle {bundle} bench-crun'"
            " >/dev/null\n"
        )
        os.chmod(crun_script, 0o755)
        # crun runs apart (its own mount namespace), so the machine may change speed
        # between its runs and the others': rounds alternate, and each round's ratio
        # compares runs made minutes apart at most.
        for _ in range(opts.rounds):
            subprocess.run(["unshare", "-m", str(crun_script)], check=True)
            crun = json.loads((base / "crun.json").read_text())["results"][0]
            others = hyperfine(
                {
                    "hull-runtime": (
                        f"{hull_runtime} --root {state}/hull run --bundle {bundle} bench-hull"
                    ),
                    "runc": f"runc --root {state}/runc run --bundle {bundle} bench-runc",
                },
                per_round,
                base / "others.json",
            )
            for name, result in (("crun", crun), *others.items()):
                times[name].extend(result["times"])
            ratios.append(others["hull-runtime"]["median"] / crun["median"])
    for hierarchy in Path("/sys/fs/cgroup").iterdir():
        try:
            (hierarchy / "hull-bench").rmdir()  # only when empty: a leak stays visible
        except OSError:
            pass
    crun_median = statistics.median(times["crun"])
    print(
        f"runtime start: `run` of /bin/true in a busybox bundle, {per_round * opts.rounds}"
        f" runs each in {opts.rounds} alternating rounds"
    )
    print(f"{'runtime':<14}{'median ms':>10}{'mean ms':>10}{'stddev':>9}{'vs crun':>9}")
    for name in ("hull-runtime", "crun", "runc"):
        samples = times[name]
        median = statistics.median(samples)
        print(
            f"{name:<14}{median * 1000:>10.1f}{statistics.mean(samples) * 1000:>10.1f}"
            f"{statistics.pstdev(samples) * 1000:>9.1f}{median / crun_median:>8.2f}x"
        )
    print("hull-runtime / crun by round: " + "  ".join(f"{r:.2f}x" for r in ratios))
    ratio = statistics.median(ratios)
    print(
        f"target: hull-runtime <= 2.00x crun: {'met' if ratio <= 2.0 else 'NOT met'}"
        f" (median of the rounds {ratio:.2f}x)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
