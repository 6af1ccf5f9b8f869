"""`hull pull` killed with SIGKILL mid-layer, and a hostile layer refused mid-pull:
either way the store keeps only verified blobs, no half-made image or layer shows,
and the next pull works (resuming what the killed one downloaded)."""

from __future__ import annotations

import gzip
import hashlib
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from hull.image.layers import LayerStore
from hull.image.registry import RegistryClient, push
from hull.image.store import ContentError, ContentStore
from hull.oci.digest import sha256_digest
from hull.oci.image import OCI_CONFIG, OCI_LAYER_GZIP, OCI_MANIFEST, Descriptor
from tests.fixtures import tarballs as tb
from tests.integration.registry_server import RegistryServer

HULL = Path(sys.executable).parent / "hull"
BIG_LAYER_BYTES = 30 * 1024 * 1024
STALL_AFTER = 4 * 1024 * 1024  # registry bytes let through before the first pull freezes
TIMEOUT = 60.0


# ------------------------------------------------------------------ images


@dataclass
class PushedImage:
    ref: str
    layer_digest: str
    diff_id: str


def layer_of(entries: list[tb.Entry]) -> tuple[bytes, str]:
    raw = tb.build_tar(entries)
    return gzip.compress(raw, compresslevel=1, mtime=0), sha256_digest(raw)


def push_image(
    registry: RegistryServer, tmp_path: Path, name: str, blob: bytes, diff_id: str
) -> PushedImage:
    """A one-layer image pushed to registry as NAME:v1, built in a scratch store."""
    source = ContentStore(tmp_path / f"source-{name}")
    layer = source.write_bytes(blob)
    config = json.dumps(
        {
            "architecture": "amd64",
            "os": "linux",
            "config": {"Cmd": ["/bin/sh"]},
            "rootfs": {"type": "layers", "diff_ids": [diff_id]},
        }
    ).encode()
    manifest = json.dumps(
        {
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "config": {
                "mediaType": OCI_CONFIG,
                "digest": source.write_bytes(config),
                "size": len(config),
            },
            "layers": [{"mediaType": OCI_LAYER_GZIP, "digest": layer, "size": len(blob)}],
        }
    ).encode()
    ref = f"{registry.host}/hull-test/{name}:v1"
    with RegistryClient() as client:
        push(ref, source, source.write_bytes(manifest), progress=None, client=client)
    return PushedImage(ref, layer, diff_id)


# ------------------------------------------------------------- the proxy


class StallingProxy:
    """A loopback TCP proxy in front of a registry that can freeze its answers.

    Once `stall_after` bytes have come back from the registry (all connections
    together), the rest waits until release(): a download frozen mid-blob for as
    long as the test needs, with no race against a fast loopback. It also keeps
    what clients sent, to see their requests.
    """

    def __init__(self, upstream_port: int, stall_after: int) -> None:
        self.upstream_port = upstream_port
        self.stall_after = stall_after
        self.requests = bytearray()
        self._answered = 0
        self._lock = threading.Lock()
        self._released = threading.Event()
        self._closing = threading.Event()
        self._sockets: list[socket.socket] = []
        self._threads: list[threading.Thread] = []
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = self._listener.getsockname()[1]
        self._spawn(self._accept)

    @property
    def host(self) -> str:
        return f"127.0.0.1:{self.port}"

    def _spawn(self, target: Callable[..., None], *args: object) -> None:
        thread = threading.Thread(target=target, args=args, daemon=True)
        self._threads.append(thread)
        thread.start()

    def _accept(self) -> None:
        while not self._closing.is_set():
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            upstream = socket.create_connection(("127.0.0.1", self.upstream_port))
            with self._lock:
                self._sockets += [client, upstream]
            self._spawn(self._pump, client, upstream, False)
            self._spawn(self._pump, upstream, client, True)

    def _pump(self, src: socket.socket, dst: socket.socket, answers: bool) -> None:
        try:
            while data := src.recv(65536):
                if answers:
                    self._wait_for_budget()
                    with self._lock:
                        self._answered += len(data)
                else:
                    with self._lock:
                        self.requests += data
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for sock in (src, dst):
                try:
                    sock.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

    def _wait_for_budget(self) -> None:
        while not self._released.is_set() and not self._closing.is_set():
            with self._lock:
                if self._answered < self.stall_after:
                    return
            self._released.wait(0.05)

    def release(self) -> None:
        self._released.set()

    def close(self) -> None:
        self._closing.set()
        self._released.set()
        self._listener.close()
        with self._lock:
            sockets = list(self._sockets)
        for sock in sockets:
            sock.close()
        for thread in self._threads:
            thread.join(timeout=5)


@pytest.fixture
def proxy(registry: RegistryServer) -> Iterator[StallingProxy]:
    server = StallingProxy(registry.port, STALL_AFTER)
    try:
        yield server
    finally:
        server.close()


# ----------------------------------------------------------------- helpers


def hull_command(root: Path, tmp_path: Path, *argv: str) -> tuple[list[str], dict[str, str]]:
    env = {
        **os.environ,
        "HULL_CONFIG": str(tmp_path / "hull-config"),  # no credentials, no mirrors
        "HULL_REGISTRY_MIRRORS": "",
    }
    return [str(HULL), "--root", str(root), "--runroot", str(tmp_path / "run"), *argv], env


def hull(root: Path, tmp_path: Path, *argv: str) -> subprocess.CompletedProcess[str]:
    cmd, env = hull_command(root, tmp_path, *argv)
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=TIMEOUT)


def listed(root: Path, tmp_path: Path) -> list[str]:
    proc = hull(root, tmp_path, "images", "--format", "{{.Repository}}:{{.Tag}}")
    assert proc.returncode == 0, proc.stderr
    return proc.stdout.split()


def assert_blobs_verified(root: Path) -> list[str]:
    """Every file in blobs/sha256 hashes to its name; the digests found."""
    found = []
    folder = root / "blobs" / "sha256"
    for entry in sorted(folder.iterdir()) if folder.is_dir() else []:
        h = hashlib.sha256()
        with open(entry, "rb") as f:
            while chunk := f.read(1 << 20):
                h.update(chunk)
        assert h.hexdigest() == entry.name, f"blob {entry.name} holds other bytes"
        found.append("sha256:" + entry.name)
    return found


def wait_for_partial(partial: Path, at_least: int, proc: subprocess.Popen[bytes]) -> int:
    deadline = time.monotonic() + TIMEOUT
    while time.monotonic() < deadline:
        assert proc.poll() is None, "hull pull ended before it was killed"
        size = partial.stat().st_size if partial.exists() else 0
        if size >= at_least:
            return size
        time.sleep(0.02)
    raise AssertionError(f"{partial} never reached {at_least} bytes")


# ------------------------------------------------------------------- tests


def test_kill_9_mid_layer_then_pull_again(
    registry: RegistryServer, proxy: StallingProxy, tmp_path: Path
) -> None:
    payload = os.urandom(BIG_LAYER_BYTES)  # incompressible: the blob is ~30 MB too
    blob, diff_id = layer_of([tb.directory("data"), tb.file("data/random.bin", payload)])
    image = push_image(registry, tmp_path, "big", blob, diff_id)
    ref = image.ref.replace(registry.host, proxy.host)  # the same registry, through the proxy
    root = tmp_path / "hull-root"
    partial = ContentStore(root).partial_path(image.layer_digest)

    cmd, env = hull_command(root, tmp_path, "pull", "-q", ref)
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_for_partial(partial, 1024 * 1024, proc)
        proc.send_signal(signal.SIGKILL)
        assert proc.wait(timeout=TIMEOUT) == -signal.SIGKILL
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    kept = partial.stat().st_size
    assert 0 < kept < len(blob)

    # Only verified blobs (the config, maybe), no layer published, no image recorded.
    assert image.layer_digest not in assert_blobs_verified(root)
    assert not LayerStore(root, ContentStore(root)).has(diff_id)
    assert ref.split("/", 1)[1] not in " ".join(listed(root, tmp_path))
    assert listed(root, tmp_path) == []

    proxy.release()
    requests_before = len(proxy.requests)
    again = hull(root, tmp_path, "pull", "-q", ref)
    assert again.returncode == 0, again.stderr
    assert again.stdout.strip() == ref

    assert listed(root, tmp_path) == [ref]
    assert image.layer_digest in assert_blobs_verified(root)
    layers = LayerStore(root, ContentStore(root))
    assert layers.has(diff_id)  # one layer: its chain ID is its diff ID
    assert (layers.path(diff_id) / "data/random.bin").read_bytes() == payload
    assert not partial.exists()
    # The second pull resumed the blob where the killed one stopped.
    resumed = bytes(proxy.requests[requests_before:]).lower()
    assert f"range: bytes={kept}-".encode() in resumed


def test_hostile_layer_is_refused_and_the_store_stays_usable(
    registry: RegistryServer, tmp_path: Path
) -> None:
    hostile_blob, hostile_diff = layer_of(
        [tb.file("ok", b"fine"), tb.file("../escape", b"pwned"), tb.file("after", b"x" * 70000)]
    )
    hostile = push_image(registry, tmp_path, "hostile", hostile_blob, hostile_diff)
    good_blob, good_diff = layer_of([tb.directory("etc"), tb.file("etc/hostname", b"good\n")])
    good = push_image(registry, tmp_path, "good", good_blob, good_diff)
    root = tmp_path / "sandbox" / "hull-root"
    root.mkdir(parents=True)

    refused = hull(root, tmp_path, "pull", "-q", hostile.ref)
    assert refused.returncode != 0
    assert "refusing tar entry '../escape'" in refused.stderr
    assert "Traceback" not in refused.stderr

    assert_blobs_verified(root)
    layers = LayerStore(root, ContentStore(root))
    assert layers.chain_ids() == []
    assert [p.name for p in (root / "layers").iterdir() if p.name != ".lock"] == []
    for escaped in (root / "escape", root.parent / "escape", root / "layers" / "escape"):
        assert not escaped.exists()
    assert listed(root, tmp_path) == []

    pulled = hull(root, tmp_path, "pull", "-q", good.ref)
    assert pulled.returncode == 0, pulled.stderr
    assert listed(root, tmp_path) == [good.ref]
    assert (layers.path(good_diff) / "etc/hostname").read_text() == "good\n"
    assert layers.chain_ids() == [good_diff]
    assert_blobs_verified(root)


def test_streamed_unpack_matches_the_blob_it_came_from(tmp_path: Path) -> None:
    """A StreamedLayer fed in odd-sized pieces publishes exactly what unpack_layer makes;
    fed wrong bytes (right size, wrong digest) it publishes nothing."""
    raw_entries = [
        tb.directory("d", mode=0o750, uid=7, gid=8),
        tb.file("d/f", os.urandom(300_000), mode=0o640),
        tb.symlink("d/s", "f"),
        tb.hardlink("d/h", "d/f"),
        tb.file("d/" + "long-" * 40, b"x"),
    ]
    blob, diff_id = layer_of(raw_entries)
    store = ContentStore(tmp_path / "root")
    layers = LayerStore(tmp_path / "root", store)
    desc = Descriptor(OCI_LAYER_GZIP, sha256_digest(blob), len(blob))
    streamed = layers.stream(desc, diff_id, diff_id)
    view = memoryview(blob)
    step = 1
    while view:
        streamed.feed(bytes(view[:step]))
        view = view[step:]
        step = step * 3 + 1
    assert streamed.fed == len(blob)
    out = streamed.commit()
    assert out == layers.path(diff_id)
    assert os.readlink(out / "d/s") == "f"
    assert os.stat(out / "d/h").st_ino == os.stat(out / "d/f").st_ino
    st = os.stat(out / "d")
    assert (st.st_uid, st.st_gid, st.st_mode & 0o7777) == (7, 8, 0o750)

    tampered = bytearray(blob)
    tampered[len(tampered) // 2] ^= 0x01
    other = layers.stream(desc, diff_id, "sha256:" + "ab" * 32)
    with pytest.raises(ContentError):
        other.feed(bytes(tampered))
        other.commit()
    assert not layers.has("sha256:" + "ab" * 32)
    assert [p.name for p in layers.root.iterdir() if p.name.startswith(".tmp-")] == []
