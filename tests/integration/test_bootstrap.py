"""Base images built on this machine: busybox from busybox-static, Debian with mmdebstrap."""

from __future__ import annotations

import json
import os
import shutil
import stat
import subprocess
from pathlib import Path

import pytest

from hull.engine.images import ImageService
from hull.errors import ConfigError
from hull.oci.image import OCI_LAYER_GZIP, Manifest, host_platform, parse_manifest
from hull.paths import HullPaths


@pytest.fixture
def service(hull_paths: HullPaths):
    svc = ImageService(hull_paths)
    yield svc
    svc.close()


def test_busybox_bootstrap_makes_a_runnable_image(service: ImageService) -> None:
    image = service.bootstrap("busybox")
    assert [ref.familiar() for ref in image.tags] == ["busybox:latest"]
    assert [i.id for i in service.list_images()] == [image.id]

    doc = service.inspect("busybox")
    assert doc["Id"] == image.id
    assert doc["Config"]["Cmd"] == ["sh"]
    assert any(e.startswith("PATH=") for e in doc["Config"]["Env"])
    assert doc["Created"] == "1970-01-01T00:00:00Z"
    assert doc["Architecture"] == host_platform().architecture and doc["Os"] == "linux"
    assert doc["RootFS"]["Type"] == "layers" and len(doc["RootFS"]["Layers"]) == 1
    assert doc["History"][0]["created_by"].startswith("hull image bootstrap busybox")

    manifest = parse_manifest(service.store.read_bytes(image.manifest_digest), None)
    assert isinstance(manifest, Manifest)
    assert [layer.media_type for layer in manifest.layers] == [OCI_LAYER_GZIP]

    (diff,) = service.layer_dirs("busybox")
    binary = diff / "bin" / "busybox"
    assert binary.is_file() and os.access(binary, os.X_OK)
    assert os.readlink(diff / "bin" / "sh") == "/bin/busybox"
    assert (diff / "etc" / "passwd").read_text().startswith("root:x:0:0:")
    tmp = os.lstat(diff / "tmp")
    assert stat.S_IMODE(tmp.st_mode) == 0o1777 and tmp.st_uid == 0
    out = subprocess.run([binary, "echo", "from the layer"], capture_output=True, text=True)
    assert out.stdout == "from the layer\n"
    assert binary.stat().st_size < image.size < 2 * binary.stat().st_size


def test_busybox_bootstrap_is_reproducible(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def build(name: str) -> tuple[str, str]:
        paths = HullPaths(tmp_path / name / "lib", tmp_path / name / "run")
        with ImageService(paths) as svc:
            image = svc.bootstrap("busybox", tag="bb:repro")
            return image.id, image.manifest_digest

    monkeypatch.delenv("SOURCE_DATE_EPOCH", raising=False)
    first, second = build("a"), build("b")
    assert first == second
    monkeypatch.setenv("SOURCE_DATE_EPOCH", "86400")
    later = build("c")
    assert later[0] != first[0]
    with ImageService(HullPaths(tmp_path / "c" / "lib", tmp_path / "c" / "run")) as svc:
        assert svc.inspect("bb:repro")["Created"] == "1970-01-02T00:00:00Z"


def test_bootstrap_of_something_unknown_is_refused(service: ImageService) -> None:
    with pytest.raises(ConfigError, match="cannot bootstrap"):
        service.bootstrap("alpine")
    assert service.list_images() == [] and service.store.digests() == []


@pytest.mark.skipif(shutil.which("mmdebstrap") is None, reason="mmdebstrap is not installed")
def test_debian_bootstrap(service: ImageService) -> None:
    """The one slow test here (~20 s): a real minbase tree from the Debian mirror."""
    image = service.bootstrap("debian:bookworm")
    assert [ref.familiar() for ref in image.tags] == ["debian:bookworm"]
    doc = service.inspect("debian:bookworm")
    assert doc["Config"]["Cmd"] == ["bash"]
    assert doc["Created"] == "1970-01-01T00:00:00Z"
    (diff,) = service.layer_dirs("debian:bookworm")
    assert (diff / "etc" / "debian_version").read_text().startswith("12")
    assert (diff / "usr" / "bin" / "bash").is_file()
    assert os.readlink(diff / "bin") == "usr/bin"
    assert not (diff / "dev" / "null").exists()  # /dev is the container's own
    status = (diff / "var" / "lib" / "dpkg" / "status").read_text()
    assert "Package: apt\n" in status
    config = json.loads(service.store.read_bytes(image.id))
    assert config["rootfs"]["diff_ids"] == doc["RootFS"]["Layers"]
