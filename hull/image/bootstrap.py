"""Base images built on this machine, for a world without Docker Hub.

`busybox` is Debian's static busybox binary, its applet links and a minimal
/etc; `debian:SUITE` is an mmdebstrap minbase tree. Each becomes a one-layer
OCI image: the layer tar is built deterministically (sorted entries, uid/gid 0,
mtime = SOURCE_DATE_EPOCH or 0) and gzipped without a timestamp, and the config
says created = that epoch, so the same inputs give the same digests.
"""

from __future__ import annotations

import gzip
import io
import json
import os
import shutil
import subprocess
import tarfile
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from hull.errors import ConfigError, HullError, NotFoundError
from hull.oci.digest import DigestVerifier
from hull.oci.image import (
    OCI_CONFIG,
    OCI_LAYER_GZIP,
    OCI_MANIFEST,
    Descriptor,
    Manifest,
    host_platform,
    parse_manifest,
)

BUSYBOX = "/bin/busybox"
PATH_ENV = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
BUSYBOX_DIRS = (
    "bin", "dev", "etc", "home", "proc", "root", "run", "sbin", "sys", "tmp",
    "usr", "usr/bin", "usr/sbin", "var", "var/tmp",
)  # fmt: skip
STICKY_DIRS = ("tmp", "var/tmp")
PASSWD = "root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/bin/false\n"
GROUP = "root:x:0:\nnogroup:x:65534:\n"
GZIP_LEVEL = 6
_CHUNK = 1 << 20


@dataclass(frozen=True)
class BootstrapSpec:
    kind: str  # "busybox" or "debian"
    suite: str | None
    default_tag: str


@dataclass
class BuiltImage:
    manifest_digest: str
    manifest: Manifest
    new_blobs: list[str]


def parse_kind(kind: str) -> BootstrapSpec:
    """`busybox`, `debian` (bookworm) or `debian:SUITE`."""
    name, _, suite = kind.partition(":")
    if name == "busybox" and not suite:
        return BootstrapSpec("busybox", None, "busybox:latest")
    if name == "debian":
        suite = suite or "bookworm"
        if not suite.replace("-", "").isalnum():
            raise ConfigError(f"invalid Debian suite {suite!r}")
        return BootstrapSpec("debian", suite, f"debian:{suite}")
    raise ConfigError(f"cannot bootstrap {kind!r}: choose busybox or debian:SUITE (e.g. bookworm)")


def source_date_epoch() -> int:
    raw = os.environ.get("SOURCE_DATE_EPOCH", "").strip()
    if not raw:
        return 0
    try:
        value = int(raw)
    except ValueError:
        raise ConfigError(f"SOURCE_DATE_EPOCH must be an integer, got {raw!r}") from None
    if value < 0:
        raise ConfigError("SOURCE_DATE_EPOCH must not be negative")
    return value


def build(spec: BootstrapSpec, store: Any, scratch: Path) -> BuiltImage:
    """Build the image's blobs in scratch and commit them to the store."""
    epoch = source_date_epoch()
    tar_path = scratch / "layer.tar"
    if spec.kind == "busybox":
        write_busybox_tar(tar_path, epoch)
        cmd, created_by = (
            ["sh"],
            f"hull image bootstrap busybox ({_package_version('busybox-static')})",
        )
    else:
        assert spec.suite is not None
        run_mmdebstrap(spec.suite, tar_path, epoch)
        cmd, created_by = ["bash"], f"hull image bootstrap debian:{spec.suite} (mmdebstrap minbase)"
    return _commit_image(store, tar_path, scratch / "layer.tar.gz", epoch, cmd, created_by)


# ------------------------------------------------------------------ busybox


def busybox_applets(busybox: str = BUSYBOX) -> list[str]:
    out = subprocess.run([busybox, "--list-full"], check=True, capture_output=True, text=True)
    return sorted({line.strip().strip("/") for line in out.stdout.split() if line.strip()})


def write_busybox_tar(dest: Path, epoch: int, busybox: str = BUSYBOX) -> None:
    """A busybox root filesystem as one deterministic tar."""
    if not os.path.isfile(busybox):
        raise NotFoundError(f"{busybox} is missing: install Debian's busybox-static package")
    entries: dict[str, tarfile.TarInfo] = {}
    contents: dict[str, bytes] = {}

    def add(name: str, kind: bytes, mode: int, data: bytes = b"", link: str = "") -> None:
        info = tarfile.TarInfo(name)
        info.type, info.mode, info.mtime = kind, mode, epoch
        info.uid = info.gid = 0
        info.uname = info.gname = ""
        info.linkname = link
        info.size = len(data) if kind == tarfile.REGTYPE else 0
        entries[name] = info
        if kind == tarfile.REGTYPE:
            contents[name] = data

    for d in BUSYBOX_DIRS:
        add(d, tarfile.DIRTYPE, 0o1777 if d in STICKY_DIRS else 0o755)
    add("bin/busybox", tarfile.REGTYPE, 0o755, Path(busybox).read_bytes())
    for applet in busybox_applets(busybox):
        if applet != "bin/busybox" and applet not in entries:
            parent = applet.rpartition("/")[0]
            if parent and parent not in entries:
                add(parent, tarfile.DIRTYPE, 0o755)
            add(applet, tarfile.SYMTYPE, 0o777, link="/bin/busybox")
    add("etc/passwd", tarfile.REGTYPE, 0o644, PASSWD.encode())
    add("etc/group", tarfile.REGTYPE, 0o644, GROUP.encode())
    with (
        open(dest, "wb") as f,
        tarfile.open(fileobj=f, mode="w", format=tarfile.USTAR_FORMAT) as tar,
    ):
        for name in sorted(entries):
            data = contents.get(name)
            tar.addfile(entries[name], io.BytesIO(data) if data is not None else None)


def _package_version(package: str) -> str:
    try:
        out = subprocess.run(
            ["dpkg-query", "-W", "-f=${Version}", package], capture_output=True, text=True
        )
    except FileNotFoundError:
        return package
    return f"{package} {out.stdout.strip()}" if out.returncode == 0 else package


# ------------------------------------------------------------------- debian


def run_mmdebstrap(suite: str, dest: Path, epoch: int) -> None:
    """A minbase tree as a tar; /dev is left out (containers get their own)."""
    if shutil.which("mmdebstrap") is None:
        raise NotFoundError("mmdebstrap is not installed (apt-get install mmdebstrap)")
    argv = [
        "mmdebstrap",
        "--quiet",
        "--variant=minbase",
        "--skip=output/dev",
        "--format=tar",
        suite,
        str(dest),
    ]
    if mirror := os.environ.get("HULL_DEBIAN_MIRROR"):
        argv.append(mirror)
    env = {**os.environ, "SOURCE_DATE_EPOCH": str(epoch)}
    # stdin is closed: mmdebstrap reads sources.list from a non-terminal stdin.
    proc = subprocess.run(argv, stdin=subprocess.DEVNULL, capture_output=True, text=True, env=env)
    if proc.returncode != 0:
        tail = "\n".join((proc.stderr or proc.stdout).strip().splitlines()[-5:])
        raise HullError(f"mmdebstrap failed for debian:{suite} (exit {proc.returncode}): {tail}")


# ------------------------------------------------------------------- images


class _HashingFile:
    """A write-only file that hashes what goes through it (the compressed digest)."""

    def __init__(self, f: io.BufferedWriter) -> None:
        self.f = f
        self.verifier = DigestVerifier()

    def write(self, data: bytes) -> int:
        self.verifier.update(data)
        return self.f.write(data)

    def flush(self) -> None:
        self.f.flush()


def gzip_layer(tar_path: Path, gz_path: Path) -> tuple[Descriptor, str]:
    """Gzip a tar without timestamp or name; return its descriptor and diff ID."""
    diff = DigestVerifier()
    with open(gz_path, "wb") as raw:
        hashing = _HashingFile(raw)
        with (
            open(tar_path, "rb") as src,
            gzip.GzipFile(
                filename="",
                mode="wb",
                compresslevel=GZIP_LEVEL,
                fileobj=hashing,
                mtime=0,
            ) as gz,
        ):
            while chunk := src.read(_CHUNK):
                diff.update(chunk)
                gz.write(chunk)
    return Descriptor(
        OCI_LAYER_GZIP, hashing.verifier.digest(), hashing.verifier.size
    ), diff.digest()


def _commit_image(
    store: Any, tar_path: Path, gz_path: Path, epoch: int, cmd: list[str], created_by: str
) -> BuiltImage:
    layer, diff_id = gzip_layer(tar_path, gz_path)
    tar_path.unlink()
    created = datetime.fromtimestamp(epoch, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    platform = host_platform()
    config: dict[str, Any] = {
        "architecture": platform.architecture,
        "os": platform.os,
        "created": created,
        "config": {"Env": [PATH_ENV], "Cmd": cmd},
        "rootfs": {"type": "layers", "diff_ids": [diff_id]},
        "history": [{"created": created, "created_by": created_by}],
    }
    if platform.variant:
        config["variant"] = platform.variant
    config_raw = _canonical(config)
    new_blobs: list[str] = []
    try:
        if not store.has(layer.digest):
            with store.writer(layer.digest, layer.size) as w, open(gz_path, "rb") as f:
                while chunk := f.read(_CHUNK):
                    w.write(chunk)
                w.commit()
            new_blobs.append(layer.digest)
        config_desc = Descriptor(OCI_CONFIG, _put(store, config_raw, new_blobs), len(config_raw))
        manifest_raw = _canonical(
            {
                "schemaVersion": 2,
                "mediaType": OCI_MANIFEST,
                "config": config_desc.to_dict(),
                "layers": [layer.to_dict()],
            }
        )
        manifest_digest = _put(store, manifest_raw, new_blobs)
    except BaseException:
        for digest in new_blobs:
            store.delete(digest)
        raise
    manifest = parse_manifest(manifest_raw, OCI_MANIFEST)
    assert isinstance(manifest, Manifest)
    return BuiltImage(manifest_digest, manifest, new_blobs)


def _put(store: Any, data: bytes, new_blobs: list[str]) -> str:
    from hull.oci.digest import sha256_digest

    digest = sha256_digest(data)
    if not store.has(digest):
        store.write_bytes(data, digest)
        new_blobs.append(digest)
    return digest


def _canonical(doc: dict[str, Any]) -> bytes:
    return json.dumps(doc, sort_keys=True, separators=(",", ":")).encode()


__all__ = ["BootstrapSpec", "BuiltImage", "build", "parse_kind", "write_busybox_tar"]
