"""hull pull vs skopeo copy + umoci unpack: debian:bookworm from a loopback registry.

    sudo .venv/bin/python bench/pull_unpack.py [--runs 5] [--cache /var/tmp/hull-bench-cache]

The image is bootstrapped once with `hull image bootstrap debian:bookworm` and kept
as a `hull save` archive in the cache dir; every run loads it into a scratch root,
pushes it to a private docker-registry on 127.0.0.1, then times, round by round
(alternating which tool goes first, each starting from an empty destination):

- hull:  `hull --root FRESH pull HOST/debian:bookworm` (download, verify, unpack the
         layers into the layer store, record the image);
- peers: `skopeo copy docker://HOST/debian:bookworm oci:DIR:bookworm`, then
         `umoci unpack --image DIR:bookworm BUNDLE`.

The destinations live on a fresh ext4 filesystem (a sparse image, loop-mounted)
unless --no-loop: this host's root filesystem has no journal, and ext4 without one
scans every recently deleted inode on each file creation (`recently_deleted` in
ext4's inode allocator), so after a few rounds of create-and-delete, timings there
measure the deletes of earlier rounds (and of anyone else on the box), not the
tools. Dirty pages are flushed (sync) before each timed command, outside the
timing. The report is medians, the ratio hull/peers and the unpacked sizes. The
registry, the mount and every scratch dir go away on exit, also after an error or
Ctrl-C.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from bench.peers import have_tools  # noqa: E402
from tests.integration.registry_server import RegistryServer, registry_available  # noqa: E402

HULL = REPO / ".venv" / "bin" / "hull"
IMAGE = "debian:bookworm"
ARCHIVE_NAME = "debian-bookworm.tar"
TARGET_RATIO = 0.8
LOOP_FS_BYTES = 4 << 30


@dataclass
class Timings:
    hull: list[float] = field(default_factory=list)
    skopeo: list[float] = field(default_factory=list)
    umoci: list[float] = field(default_factory=list)

    @property
    def peers(self) -> list[float]:
        return [s + u for s, u in zip(self.skopeo, self.umoci, strict=True)]


@dataclass
class TreeSize:
    files: int = 0
    bytes: int = 0

    def add(self, other: TreeSize) -> None:
        self.files += other.files
        self.bytes += other.bytes


def tree_size(path: Path) -> TreeSize:
    """Entries and apparent bytes of regular files and symlinks (what both tools write)."""
    size = TreeSize()
    for dirpath, dirnames, filenames in os.walk(path):
        size.files += len(dirnames)
        for name in filenames:
            st = os.lstat(os.path.join(dirpath, name))
            size.files += 1
            size.bytes += st.st_size
    return size


def run(argv: Sequence[str | Path], env: dict[str, str], quiet: bool = True) -> None:
    proc = subprocess.run(
        [str(a) for a in argv],
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL if quiet else None,
        stderr=subprocess.PIPE,
        text=True,
    )
    if proc.returncode != 0:
        command = " ".join(str(a) for a in argv)
        raise RuntimeError(f"{command} failed ({proc.returncode}):\n{proc.stderr.strip()}")


def timed(argv: Sequence[str | Path], env: dict[str, str]) -> float:
    os.sync()  # earlier rounds' writeback must not land in this one's time
    start = time.perf_counter()
    run(argv, env)
    return time.perf_counter() - start


def remove(path: Path) -> None:
    shutil.rmtree(path, ignore_errors=True)


@contextlib.contextmanager
def loop_filesystem(scratch: Path) -> Iterator[Path]:
    """A fresh ext4 (with a journal) on a sparse image file, mounted under scratch."""
    image, mountpoint = scratch / "fs.img", scratch / "fs"
    with open(image, "wb") as f:
        f.truncate(LOOP_FS_BYTES)  # sparse: only what the rounds write takes space
    run(["mkfs.ext4", "-q", "-F", image], {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin"})
    mountpoint.mkdir()
    run(["mount", "-o", "loop", image, mountpoint], {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin"})
    try:
        yield mountpoint
    finally:
        if subprocess.run(["umount", str(mountpoint)], capture_output=True).returncode != 0:
            subprocess.run(["umount", "-l", str(mountpoint)], capture_output=True)
        image.unlink(missing_ok=True)


def prepare_source(cache: Path, source_root: Path, env: dict[str, str]) -> None:
    """debian:bookworm in source_root: loaded from the cached archive, else bootstrapped."""
    archive = cache / ARCHIVE_NAME
    hull: list[str | Path] = [HULL, "--root", source_root]
    if archive.is_file():
        print(f"loading {IMAGE} from {archive}", flush=True)
        run([*hull, "load", "-q", "-i", archive], env)
        return
    print(f"bootstrapping {IMAGE} with mmdebstrap (once; cached in {cache})", flush=True)
    run([*hull, "image", "bootstrap", IMAGE, "-q"], env)
    cache.mkdir(parents=True, exist_ok=True)
    partial = cache / (ARCHIVE_NAME + ".partial")
    run([*hull, "save", "-o", partial, IMAGE], env)
    os.replace(partial, archive)


def hull_round(work: Path, ref: str, env: dict[str, str]) -> tuple[float, TreeSize]:
    root = work / "hull-root"
    remove(root)
    seconds = timed([HULL, "--root", root, "--runroot", work / "hull-run", "pull", "-q", ref], env)
    size = TreeSize()
    for layer in sorted((root / "layers").iterdir()):
        if (layer / "complete").is_file():
            size.add(tree_size(layer / "diff"))
    remove(root)
    remove(work / "hull-run")
    return seconds, size


def peers_round(work: Path, ref: str, env: dict[str, str]) -> tuple[float, float, TreeSize]:
    layout, bundle = work / "oci", work / "bundle"
    remove(layout)
    remove(bundle)
    copy = timed(
        [
            "skopeo", "copy", "--quiet", "--insecure-policy", "--src-tls-verify=false",
            f"docker://{ref}", f"oci:{layout}:bookworm",
        ],
        env,
    )  # fmt: skip
    unpack = timed(["umoci", "unpack", "--image", f"{layout}:bookworm", bundle], env)
    size = tree_size(bundle / "rootfs")
    remove(layout)
    remove(bundle)
    return copy, unpack, size


def report(t: Timings, runs: int, hull_size: TreeSize, peer_size: TreeSize) -> None:
    hull, peers = statistics.median(t.hull), statistics.median(t.peers)
    ratio = hull / peers
    print()
    print(f"pull + unpack of {IMAGE} from a loopback registry, {runs} rounds each (median s)")
    print(f"{'tool':<30}{'median s':>10}{'min s':>9}{'max s':>9}{'vs peers':>10}")
    rows = [
        ("hull pull", t.hull),
        ("skopeo copy + umoci unpack", t.peers),
        ("  skopeo copy", t.skopeo),
        ("  umoci unpack", t.umoci),
    ]
    for name, values in rows:
        print(
            f"{name:<30}{statistics.median(values):>10.2f}{min(values):>9.2f}"
            f"{max(values):>9.2f}{statistics.median(values) / peers:>9.2f}x"
        )
    print(
        f"unpacked: hull {hull_size.files} entries, {hull_size.bytes / 1e6:.1f} MB; "
        f"umoci {peer_size.files} entries, {peer_size.bytes / 1e6:.1f} MB"
    )
    verdict = "met" if ratio <= TARGET_RATIO else "NOT met"
    print(f"target: hull <= {TARGET_RATIO:.2f}x peers: {verdict} ({ratio:.2f}x)")


def _interrupt(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--runs", type=int, default=5, help="rounds per tool (default 5)")
    parser.add_argument(
        "--cache",
        type=Path,
        default=Path("/var/tmp/hull-bench-cache"),
        help="where the bootstrapped image archive is kept between runs",
    )
    parser.add_argument(
        "--workdir", type=Path, default=Path("/var/tmp"), help="parent of the scratch dir"
    )
    parser.add_argument(
        "--no-loop",
        action="store_true",
        help="time on the workdir's own filesystem, not on a fresh loop-mounted ext4",
    )
    opts = parser.parse_args()
    if os.geteuid() != 0:
        print("bench: run as root (sudo)", file=sys.stderr)
        return 1
    if not have_tools("skopeo", "umoci", "mmdebstrap"):
        return 1
    if not registry_available():
        print("bench: docker-registry is not installed", file=sys.stderr)
        return 1
    # Also SIGINT: a shell starts background jobs with it ignored, and we want out.
    for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(signum, _interrupt)
    opts.workdir.mkdir(parents=True, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(prefix="hull-bench-pull-", dir=opts.workdir))
    registry: RegistryServer | None = None
    mounts = contextlib.ExitStack()
    try:
        env = {
            "PATH": os.environ.get("PATH", "/usr/sbin:/usr/bin:/sbin:/bin"),
            "HOME": str(scratch),
            "HULL_CONFIG": str(scratch / "hull-config"),  # no credentials, no mirrors
        }
        prepare_source(opts.cache, scratch / "source", env)
        registry = RegistryServer(scratch / "registry").start()
        ref = f"{registry.host}/{IMAGE}"
        hull_src: list[str | Path] = [HULL, "--root", scratch / "source"]
        run([*hull_src, "tag", IMAGE, ref], env)
        run([*hull_src, "push", "-q", ref], env)
        remove(scratch / "source")
        print(f"pushed {ref}; {opts.runs} rounds", flush=True)
        t = Timings()
        hull_size = peer_size = TreeSize()
        if opts.no_loop:
            work = scratch / "rounds"
            work.mkdir()
        else:
            work = mounts.enter_context(loop_filesystem(scratch))
        for i in range(opts.runs):
            order = ("hull", "peers") if i % 2 == 0 else ("peers", "hull")
            for tool in order:
                if tool == "hull":
                    seconds, hull_size = hull_round(work, ref, env)
                    t.hull.append(seconds)
                else:
                    copy, unpack, peer_size = peers_round(work, ref, env)
                    t.skopeo.append(copy)
                    t.umoci.append(unpack)
            print(
                f"round {i + 1}: hull {t.hull[-1]:.2f}s, "
                f"skopeo {t.skopeo[-1]:.2f}s + umoci {t.umoci[-1]:.2f}s",
                flush=True,
            )
        report(t, opts.runs, hull_size, peer_size)
        return 0
    except KeyboardInterrupt:
        print("\nbench: interrupted; cleaning up", file=sys.stderr)
        return 130
    except RuntimeError as exc:
        print(f"bench: {exc}", file=sys.stderr)
        return 1
    finally:
        for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
            signal.signal(signum, signal.SIG_IGN)  # let the cleanup below finish
        try:
            mounts.close()
        finally:
            if registry is not None:
                registry.stop()
            remove(scratch)


if __name__ == "__main__":
    sys.exit(main())
