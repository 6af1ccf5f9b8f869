"""hull load/save: docker-archive and OCI layouts, skopeo interop, whiteouts, hostile input."""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import shutil
import stat
import subprocess
import tarfile
from pathlib import Path

import pytest

from hull.engine.images import ImageService
from hull.errors import HullError, NotFoundError
from hull.image.archive import ArchiveError
from hull.oci.image import host_platform
from hull.paths import HullPaths

needs_skopeo = pytest.mark.skipif(shutil.which("skopeo") is None, reason="skopeo not installed")


@pytest.fixture
def service(hull_paths: HullPaths):
    svc = ImageService(hull_paths)
    yield svc
    svc.close()


@pytest.fixture
def busybox(service: ImageService) -> str:
    return service.bootstrap("busybox").id


def _nothing_kept(service: ImageService) -> None:
    assert service.list_images() == []
    assert service.store.digests() == []
    partials = list(service.store.ingest.glob("*.partial")) if service.store.ingest.exists() else []
    assert partials == []


def _sha(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def _tar(entries: list[tuple[str, bytes | None]], *, links: dict[str, str] | None = None) -> bytes:
    """A tar of (name, data) files (None: a directory) and name -> target symlinks."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for name, data in entries:
            info = tarfile.TarInfo(name)
            info.mtime = 0
            if data is None:
                info.type, info.mode = tarfile.DIRTYPE, 0o755
                tar.addfile(info)
            else:
                info.size, info.mode = len(data), 0o644
                tar.addfile(info, io.BytesIO(data))
        for name, target in (links or {}).items():
            info = tarfile.TarInfo(name)
            info.type, info.linkname = tarfile.SYMTYPE, target
            tar.addfile(info)
    return buf.getvalue()


def _config(diff_ids: list[str]) -> bytes:
    platform = host_platform()
    return json.dumps(
        {
            "architecture": platform.architecture,
            "os": "linux",
            "config": {"Cmd": ["sh"]},
            "rootfs": {"type": "layers", "diff_ids": diff_ids},
        }
    ).encode()


# ------------------------------------------------------------ round trips


def test_save_rmi_load_gives_the_same_image(
    service: ImageService, busybox: str, tmp_path: Path
) -> None:
    manifest = service.resolve("busybox").manifest_digest
    archive = tmp_path / "busybox.tar"
    service.save(["busybox"], archive)
    with tarfile.open(archive) as tar:
        names = set(tar.getnames())
        docker_manifest = json.load(tar.extractfile("manifest.json"))  # type: ignore[arg-type]
    assert {"manifest.json", "repositories", "oci-layout", "index.json"} <= names
    assert docker_manifest[0]["RepoTags"] == ["busybox:latest"]

    events = service.remove("busybox")
    assert {"Deleted": busybox} in events
    assert service.store.digests() == [] and service.layer_store.chain_ids() == []

    loaded = service.load(archive)
    assert [(image.id, [t.familiar() for t in tags]) for image, tags in loaded] == [
        (busybox, ["busybox:latest"])
    ]
    image = service.resolve("busybox")
    assert image.manifest_digest == manifest  # the archive's OCI manifest was reused
    (diff,) = service.layer_dirs("busybox")
    assert (diff / "bin" / "busybox").is_file()


def test_oci_tar_round_trip_and_untagged_save(
    service: ImageService, busybox: str, tmp_path: Path
) -> None:
    service.save([busybox[7:19]], tmp_path / "oci.tar", "oci")
    with tarfile.open(tmp_path / "oci.tar") as tar:
        assert "manifest.json" not in tar.getnames()
        index = json.load(tar.extractfile("index.json"))  # type: ignore[arg-type]
    assert "annotations" not in index["manifests"][0]  # saved by ID: no name
    service.remove("busybox")
    ((image, tags),) = service.load(tmp_path / "oci.tar")
    assert image.id == busybox and tags == []


def test_a_bare_repository_name_saves_all_its_tags(
    service: ImageService, busybox: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SOURCE_DATE_EPOCH", "86400")
    older = service.bootstrap("busybox", tag="busybox:older").id
    service.tag("busybox", "busybox:alias")
    service.save(["busybox"], tmp_path / "all.tar")
    with tarfile.open(tmp_path / "all.tar") as tar:
        entries = json.load(tar.extractfile("manifest.json"))  # type: ignore[arg-type]
    by_config = {e["Config"].rpartition("/")[2]: sorted(e["RepoTags"]) for e in entries}
    assert by_config == {
        busybox[7:]: ["busybox:alias", "busybox:latest"],
        older[7:]: ["busybox:older"],
    }
    service.prune(all=True)
    loaded = service.load(tmp_path / "all.tar")
    assert {image.id[7:]: sorted(t.familiar() for t in tags) for image, tags in loaded} == by_config


@needs_skopeo
def test_skopeo_reads_what_hull_saves(service: ImageService, busybox: str, tmp_path: Path) -> None:
    manifest = service.resolve("busybox").manifest_digest
    service.save(["busybox"], tmp_path / "layout", "oci-dir")
    out = subprocess.run(
        ["skopeo", "inspect", f"oci:{tmp_path / 'layout'}"], capture_output=True, text=True
    )
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout)["Digest"] == manifest

    service.save(["busybox"], tmp_path / "docker.tar")
    out = subprocess.run(
        ["skopeo", "inspect", "--config", f"docker-archive:{tmp_path / 'docker.tar'}"],
        capture_output=True,
        text=True,
    )
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout)["config"]["Cmd"] == ["sh"]


@needs_skopeo
def test_hull_loads_what_skopeo_writes(service: ImageService, busybox: str, tmp_path: Path) -> None:
    layout = tmp_path / "layout"
    service.save(["busybox"], layout, "oci-dir")
    service.remove("busybox")
    for dest in (
        f"docker-archive:{tmp_path / 'sk-docker.tar'}:skopeo/bb:docker",
        f"oci-archive:{tmp_path / 'sk-oci.tar'}:skopeo/bb:oci",
    ):
        subprocess.run(["skopeo", "copy", "-q", f"oci:{layout}", dest], check=True)

    # skopeo's docker-archive has uncompressed layers and symlinked legacy layer dirs.
    ((image, tags),) = service.load(tmp_path / "sk-docker.tar")
    assert image.id == busybox and [t.familiar() for t in tags] == ["skopeo/bb:docker"]
    assert {layer.media_type for layer in image.layers} == {
        "application/vnd.oci.image.layer.v1.tar"
    }
    ((image, tags),) = service.load(tmp_path / "sk-oci.tar")
    assert image.id == busybox and [t.familiar() for t in tags] == ["skopeo/bb:oci"]
    assert service.resolve("skopeo/bb:docker").id == service.resolve("skopeo/bb:oci").id
    (diff,) = service.layer_dirs("skopeo/bb:oci")
    assert (diff / "bin" / "busybox").is_file()


# ------------------------------------------------------------ whiteouts


def test_a_whiteout_in_a_later_layer_hides_the_file(service: ImageService, tmp_path: Path) -> None:
    lower = _tar([("etc", None), ("etc/keep", b"keep\n"), ("etc/gone", b"gone\n")])
    upper = _tar([("etc", None), ("etc/.wh.gone", b""), ("etc/new", b"new\n")])
    upper_gz = gzip.compress(upper, mtime=0)
    config = _config([_sha(lower), _sha(upper)])
    archive = tmp_path / "two-layers.tar"
    archive.write_bytes(
        _tar(
            [
                (
                    "manifest.json",
                    json.dumps(
                        [
                            {
                                "Config": "config.json",
                                "RepoTags": ["whiteout/test:1"],
                                "Layers": ["l1/layer.tar", "l2/layer.tar.gz"],
                            }
                        ]
                    ).encode(),
                ),  # fmt: skip
                ("config.json", config),
                ("l1", None),
                ("l1/layer.tar", lower),
                ("l2", None),
                ("l2/layer.tar.gz", upper_gz),
            ]
        )
    )
    ((image, _),) = service.load(archive)
    assert image.id == _sha(config)
    assert [layer.digest for layer in image.layers] == [_sha(lower), _sha(upper_gz)]
    assert image.diff_ids == [_sha(lower), _sha(upper)]

    bottom, top = service.layer_dirs("whiteout/test:1")
    assert (bottom / "etc" / "gone").read_text() == "gone\n"
    mark = os.lstat(top / "etc" / "gone")
    assert stat.S_ISCHR(mark.st_mode) and mark.st_rdev == 0

    from hull.image.snapshots import mount_overlay, unmount

    view = tmp_path / "view"
    view.mkdir()
    mount_overlay([bottom, top], None, None, view, readonly=True)
    try:
        assert sorted(p.name for p in (view / "etc").iterdir()) == ["keep", "new"]
        assert (view / "etc" / "keep").read_text() == "keep\n"
    finally:
        unmount(view)


def test_a_layer_that_does_not_match_its_diff_id_is_refused(
    service: ImageService, tmp_path: Path
) -> None:
    layer = _tar([("f", b"x")])
    config = _config(["sha256:" + "0" * 64])
    archive = tmp_path / "bad.tar"
    archive.write_bytes(
        _tar(
            [
                ("manifest.json", json.dumps([{"Config": "c.json", "Layers": ["l.tar"]}]).encode()),
                ("c.json", config),
                ("l.tar", layer),
            ]
        )
    )
    with pytest.raises(ArchiveError, match="uncompressed digest"):
        service.load(archive)
    _nothing_kept(service)


# ------------------------------------------------------------ hostile archives


def test_a_manifest_pointing_outside_is_refused(service: ImageService, tmp_path: Path) -> None:
    archive = tmp_path / "evil.tar"
    manifest = [{"Config": "../../etc/passwd", "RepoTags": ["evil:1"], "Layers": []}]
    archive.write_bytes(_tar([("manifest.json", json.dumps(manifest).encode())]))
    with pytest.raises(ArchiveError, match="climbs out"):
        service.load(archive)
    _nothing_kept(service)


@pytest.mark.parametrize(
    ("entries", "links", "message"),
    [
        ([("/abs/manifest.json", b"[]")], None, "unsafe path"),
        ([("../manifest.json", b"[]")], None, "climbs out"),
        ([], {"manifest.json": "/etc/passwd"}, "absolute"),
        ([("x", None)], {"x/manifest.json": "../../etc/passwd"}, "outside the archive"),
    ],
)
def test_hostile_tar_members_are_refused(
    service: ImageService,
    tmp_path: Path,
    entries: list[tuple[str, bytes | None]],
    links: dict[str, str] | None,
    message: str,
) -> None:
    archive = tmp_path / "evil.tar"
    archive.write_bytes(_tar(entries, links=links))
    with pytest.raises(ArchiveError, match=message):
        service.load(archive)
    _nothing_kept(service)


def _oci_layout(root: Path, blobs: dict[str, bytes], manifest_digest: str, size: int) -> None:
    (root / "blobs" / "sha256").mkdir(parents=True)
    for digest, data in blobs.items():
        (root / "blobs" / "sha256" / digest[7:]).write_bytes(data)
    (root / "oci-layout").write_text('{"imageLayoutVersion": "1.0.0"}')
    index = {
        "schemaVersion": 2,
        "manifests": [
            {
                "mediaType": "application/vnd.oci.image.manifest.v1+json",
                "digest": manifest_digest,
                "size": size,
                "annotations": {"org.opencontainers.image.ref.name": "docker.io/x/y:1"},
            }
        ],
    }
    (root / "index.json").write_text(json.dumps(index))


def _image_blobs(layer: bytes, layer_digest: str) -> tuple[dict[str, bytes], str, int]:
    config = _config([_sha(layer)])
    manifest = json.dumps(
        {
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "config": {
                "mediaType": "application/vnd.oci.image.config.v1+json",
                "digest": _sha(config),
                "size": len(config),
            },
            "layers": [
                {
                    "mediaType": "application/vnd.oci.image.layer.v1.tar",
                    "digest": layer_digest,
                    "size": len(layer),
                }
            ],
        }
    ).encode()
    return {_sha(config): config, _sha(manifest): manifest}, _sha(manifest), len(manifest)


def test_an_oci_layout_dir_loads_with_its_name(service: ImageService, tmp_path: Path) -> None:
    layer = _tar([("hello", b"world\n")])
    blobs, digest, size = _image_blobs(layer, _sha(layer))
    _oci_layout(tmp_path / "ok", {**blobs, _sha(layer): layer}, digest, size)
    ((image, tags),) = service.load(tmp_path / "ok")
    assert [t.familiar() for t in tags] == ["x/y:1"] and image.manifest_digest == digest
    (diff,) = service.layer_dirs("x/y:1")
    assert (diff / "hello").read_text() == "world\n"


def test_a_blob_that_does_not_match_its_digest_is_refused(
    service: ImageService, tmp_path: Path
) -> None:
    layer = _tar([("hello", b"world\n")])
    tampered = _tar([("hello", b"WORLD\n")])
    blobs, digest, size = _image_blobs(layer, _sha(layer))
    _oci_layout(tmp_path / "bad", {**blobs, _sha(layer): tampered}, digest, size)
    with pytest.raises(ArchiveError, match="does not match its digest"):
        service.load(tmp_path / "bad")
    _nothing_kept(service)  # the manifest and config copied before the layer are gone too


def test_a_symlinked_blob_dir_is_refused(service: ImageService, tmp_path: Path) -> None:
    layer = _tar([("hello", b"world\n")])
    blobs, digest, size = _image_blobs(layer, _sha(layer))
    elsewhere = tmp_path / "elsewhere"
    _oci_layout(elsewhere, {**blobs, _sha(layer): layer}, digest, size)
    layout = tmp_path / "evil"
    layout.mkdir()
    shutil.copy(elsewhere / "index.json", layout / "index.json")
    shutil.copy(elsewhere / "oci-layout", layout / "oci-layout")
    (layout / "blobs").symlink_to(elsewhere / "blobs")
    with pytest.raises(ArchiveError, match="symlink"):
        service.load(layout)
    _nothing_kept(service)


def test_loading_something_that_is_not_an_archive(service: ImageService, tmp_path: Path) -> None:
    with pytest.raises(NotFoundError):
        service.load(tmp_path / "missing.tar")
    (tmp_path / "junk.tar").write_bytes(b"not a tar at all" * 100)
    with pytest.raises(HullError):
        service.load(tmp_path / "junk.tar")
    (tmp_path / "empty.tar").write_bytes(_tar([("README", b"hi")]))
    with pytest.raises(ArchiveError, match="neither a docker-archive"):
        service.load(tmp_path / "empty.tar")
    _nothing_kept(service)


def test_rmi_of_an_unknown_name(service: ImageService, busybox: str) -> None:
    with pytest.raises(NotFoundError, match="no such image: nope"):
        service.remove("nope")
    assert service.resolve("busybox").id == busybox
