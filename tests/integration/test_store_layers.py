"""Content store, layer unpacking and overlay snapshots on the real kernel (root)."""

from __future__ import annotations

import io
import os
import stat
import tarfile
from pathlib import Path

import pytest

from hull.errors import NotFoundError, StateError
from hull.image.layers import OPAQUE_XATTR, LayerStore, unpack_layer
from hull.image.snapshots import diff_dir, mount_overlay, tar_layer_from_upper, unmount
from hull.image.store import ContentError, ContentStore
from hull.oci import image
from hull.oci.image import Descriptor, chain_ids
from tests.fixtures import tarballs as tb

# ------------------------------------------------------------- content store


def test_write_bytes_verifies_and_is_idempotent(tmp_path: Path) -> None:
    store = ContentStore(tmp_path)
    digest = store.write_bytes(b"hello")
    assert digest == tb.sha256(b"hello")
    assert store.has(digest)
    assert store.path(digest) == tmp_path / "blobs" / "sha256" / digest.split(":")[1]
    assert store.read_bytes(digest) == b"hello"
    assert store.write_bytes(b"hello", digest) == digest
    assert store.digests() == [digest]
    with pytest.raises(ContentError, match="digest mismatch"):
        store.write_bytes(b"other", tb.sha256(b"not other"))
    assert store.digests() == [digest]
    assert os.listdir(tmp_path / "ingest") == []
    store.delete(digest)
    store.delete(digest)
    assert not store.has(digest)
    with pytest.raises(NotFoundError):
        store.path(digest)


def test_writer_resumes_a_partial(tmp_path: Path) -> None:
    store = ContentStore(tmp_path)
    data = os.urandom(300_000)
    digest, half = tb.sha256(data), len(data) // 2
    with pytest.raises(RuntimeError), store.writer(digest, len(data)) as writer:
        assert writer.offset == 0
        writer.write(data[:half])
        raise RuntimeError("connection dropped")
    assert not store.has(digest)
    partial = tmp_path / "ingest" / (digest.split(":")[1] + ".partial")
    assert partial.stat().st_size == half
    store.sweep()  # a resumable partial survives start-up cleanup
    assert partial.exists()

    with store.writer(digest, len(data)) as writer:
        assert writer.offset == half
        writer.write(data[half:])
        assert writer.commit() == digest
    assert store.read_bytes(digest) == data
    assert not partial.exists()


def test_writer_without_commit_never_becomes_a_blob(tmp_path: Path) -> None:
    store = ContentStore(tmp_path)
    data = b"complete bytes"
    digest = tb.sha256(data)
    with store.writer(digest, len(data)) as writer:
        writer.write(data)
    assert not store.has(digest)
    assert store.digests() == []


def test_writer_refuses_oversize_and_bad_digest(tmp_path: Path) -> None:
    store = ContentStore(tmp_path)
    data = b"0123456789"
    digest = tb.sha256(data)
    with store.writer(digest, len(data)) as writer, pytest.raises(ContentError, match="larger"):
        writer.write(data + b"!")

    wrong = b"abcdefghij"
    with store.writer(digest, len(data)) as writer:
        writer.write(wrong)
        with pytest.raises(ContentError, match=f"digest mismatch for {digest}: got sha256:"):
            writer.commit()
    assert not store.has(digest)
    assert not store.partial_path(digest).exists()


def test_second_writer_of_same_digest_is_refused(tmp_path: Path) -> None:
    store = ContentStore(tmp_path)
    digest = tb.sha256(b"x")
    with store.writer(digest, 1), pytest.raises(StateError, match="already being written"):
        store.writer(digest, 1)


def test_sweep_removes_scratch_but_keeps_partials(tmp_path: Path) -> None:
    store = ContentStore(tmp_path)
    done = store.write_bytes(b"done")
    ingest = tmp_path / "ingest"
    (ingest / "tmp-abandoned").write_bytes(b"junk")
    (ingest / (done.split(":")[1] + ".partial")).write_bytes(b"do")  # blob already complete
    resumable = ingest / (tb.sha256(b"later").split(":")[1] + ".partial")
    resumable.write_bytes(b"la")
    (tmp_path / "blobs" / "sha256" / "not-a-digest").write_bytes(b"junk")
    store.sweep()
    assert sorted(os.listdir(ingest)) == [resumable.name]
    assert os.listdir(tmp_path / "blobs" / "sha256") == [done.split(":")[1]]


# ------------------------------------------------------------------ unpack


def write_blob(tmp_path: Path, data: bytes, name: str = "blob") -> Path:
    path = tmp_path / name
    path.write_bytes(data)
    return path


def test_unpack_keeps_metadata(tmp_path: Path) -> None:
    raw = tb.build_tar(
        [
            tb.directory("./", mode=0o755),
            tb.directory("home", mode=0o750, uid=1000, gid=1000, mtime=1_600_000_000),
            tb.file(
                "home/tool",
                b"#!/bin/sh\n",
                mode=0o4755,
                uid=1000,
                gid=1000,
                mtime=1_500_000_000,
                xattrs={"user.comment": b"hello", "trusted.hull": b"\x00\xff"},
            ),
            tb.symlink("home/passwd", "/etc/passwd", uid=1000, gid=1000),
            tb.hardlink("home/tool-link", "home/tool"),
            tb.fifo("home/pipe", mode=0o620, uid=1000, gid=1000),
            tb.chardev("dev/null", 1, 3),
            tb.file("implicit/parents/file", b"x"),
            tb.file("home/.wh..wh..opq"),
            tb.file("a-file", b"old"),
            tb.file("a-file", b"new"),  # later entries win, as in tar
            tb.file("home/stale.wh.not-a-whiteout", b"kept"),
        ]
    )
    dest = tmp_path / "dest"
    assert unpack_layer(write_blob(tmp_path, raw), image.OCI_LAYER_TAR, dest, None) == tb.sha256(
        raw
    )

    home = os.lstat(dest / "home")
    assert (home.st_uid, home.st_gid, stat.S_IMODE(home.st_mode)) == (1000, 1000, 0o750)
    assert home.st_mtime == 1_600_000_000
    assert os.getxattr(dest / "home", OPAQUE_XATTR) == b"y"

    tool = os.lstat(dest / "home/tool")
    assert (tool.st_uid, tool.st_gid) == (1000, 1000)
    assert stat.S_IMODE(tool.st_mode) == 0o4755
    assert tool.st_mtime == 1_500_000_000
    assert (dest / "home/tool").read_bytes() == b"#!/bin/sh\n"
    assert os.getxattr(dest / "home/tool", "user.comment") == b"hello"
    assert os.getxattr(dest / "home/tool", "trusted.hull") == b"\x00\xff"
    assert tool.st_nlink == 2
    assert os.lstat(dest / "home/tool-link").st_ino == tool.st_ino

    link = os.lstat(dest / "home/passwd")
    assert stat.S_ISLNK(link.st_mode)
    assert os.readlink(dest / "home/passwd") == "/etc/passwd"
    assert (link.st_uid, link.st_gid) == (1000, 1000)

    pipe = os.lstat(dest / "home/pipe")
    assert stat.S_ISFIFO(pipe.st_mode) and stat.S_IMODE(pipe.st_mode) == 0o620
    null = os.lstat(dest / "dev/null")
    assert stat.S_ISCHR(null.st_mode) and null.st_rdev == os.makedev(1, 3)
    assert stat.S_IMODE(os.lstat(dest / "implicit/parents").st_mode) == 0o755
    assert (dest / "a-file").read_bytes() == b"new"
    assert (dest / "home/stale.wh.not-a-whiteout").read_bytes() == b"kept"


@pytest.mark.parametrize("compression", ["gzip", "zstd"])
def test_compressed_layers(tmp_path: Path, compression: str) -> None:
    raw = tb.build_tar([tb.directory("etc"), tb.file("etc/hostname", b"box\n")])
    if compression == "gzip":
        blob, media_type = tb.gzip_bytes(raw), image.OCI_LAYER_GZIP
    else:
        blob, media_type = tb.zstd_bytes(raw), image.OCI_LAYER_ZSTD
    dest = tmp_path / "dest"
    diff_id = unpack_layer(write_blob(tmp_path, blob), media_type, dest, tb.sha256(raw))
    assert diff_id == tb.sha256(raw)
    assert (dest / "etc/hostname").read_text() == "box\n"


def test_diff_id_mismatch_refused(tmp_path: Path) -> None:
    raw = tb.build_tar([tb.file("f", b"x")])
    dest = tmp_path / "dest"
    with pytest.raises(ContentError, match="diff ID mismatch"):
        unpack_layer(write_blob(tmp_path, raw), image.OCI_LAYER_TAR, dest, tb.sha256(b"other"))
    assert not dest.exists()


def snapshot(root: Path, skip: Path) -> dict[str, tuple[int, int, int]]:
    """Every path under root (but not under skip) with its inode, mode and size."""
    out = {}
    for folder, dirs, files in os.walk(root):
        if Path(folder) == skip or skip in Path(folder).parents:
            continue
        for name in dirs + files:
            path = Path(folder) / name
            if path == skip:
                continue
            st = os.lstat(path)
            out[str(path)] = (st.st_ino, st.st_mode, st.st_size)
    return out


@pytest.mark.parametrize("case", sorted(tb.hostile_layers()))
def test_hostile_layers_refused(tmp_path: Path, case: str) -> None:
    sandbox = tmp_path / "a" / "b"
    sentinel = sandbox / "sentinel"
    sentinel.mkdir(parents=True)
    (sentinel / "keep").write_text("untouched")
    (tmp_path / "a" / "x").write_text("a file a naive hard link would reach")
    blob = write_blob(tmp_path, tb.build_tar(tb.hostile_layers()[case]))
    dest = sandbox / "dest"
    before = snapshot(tmp_path, dest)

    with pytest.raises(ContentError, match="refusing"):
        unpack_layer(blob, image.OCI_LAYER_TAR, dest, None)

    assert not dest.exists()
    assert snapshot(tmp_path, dest) == before
    assert (sentinel / "keep").read_text() == "untouched"
    assert not Path(f"/etc/{tb.EVIL_ETC_NAME}").exists()
    assert not Path("/abs/path").exists()


def test_device_node_is_contained(tmp_path: Path) -> None:
    sandbox = tmp_path / "sandbox"
    sandbox.mkdir()
    dest = sandbox / "dest"
    blob = write_blob(tmp_path, tb.build_tar(tb.HOSTILE_DEVICE))
    before = snapshot(tmp_path, dest)
    unpack_layer(blob, image.OCI_LAYER_TAR, dest, None)
    dev = os.lstat(dest / "dev/mem-like")
    assert stat.S_ISCHR(dev.st_mode) and dev.st_rdev == os.makedev(1, 1)
    assert snapshot(tmp_path, dest) == before


# ----------------------------------------------------- whiteouts in overlay


def test_whiteouts_hide_lower_content_in_a_real_overlay(tmp_path: Path) -> None:
    lower = tb.build_tar(
        [
            tb.directory("a"),
            tb.file("a/keep", b"k"),
            tb.file("a/gone", b"g"),
            tb.directory("d"),
            tb.file("d/old", b"o"),
            tb.directory("d/sub"),
            tb.file("d/sub/deep", b"x"),
        ]
    )
    upper_layer = tb.build_tar([tb.whiteout("a/gone"), tb.opaque("d"), tb.file("d/new", b"n")])
    l1, l2 = tmp_path / "l1", tmp_path / "l2"
    unpack_layer(write_blob(tmp_path, lower, "b1"), image.OCI_LAYER_TAR, l1, None)
    unpack_layer(write_blob(tmp_path, upper_layer, "b2"), image.OCI_LAYER_TAR, l2, None)
    gone = os.lstat(l2 / "a/gone")
    assert stat.S_ISCHR(gone.st_mode) and gone.st_rdev == 0
    assert os.getxattr(l2 / "d", OPAQUE_XATTR) == b"y"

    upper, work, merged = tmp_path / "upper", tmp_path / "work", tmp_path / "merged"
    for p in (upper, work, merged):
        p.mkdir()
    mount_overlay([l1, l2], upper, work, merged)
    try:
        assert sorted(os.listdir(merged / "a")) == ["keep"]
        assert sorted(os.listdir(merged / "d")) == ["new"]
        (merged / "a/keep").unlink()
        (merged / "added").write_text("hi")
    finally:
        unmount(merged)
    assert os.listdir(merged) == []
    changes = {str(c) for c in diff_dir(upper, [l1, l2])}
    assert {"D /a/keep", "A /added", "C /a"} <= changes

    ro = tmp_path / "ro"
    ro.mkdir()
    mount_overlay([l1, l2], None, None, ro, readonly=True)
    try:
        assert sorted(os.listdir(ro / "d")) == ["new"]
        with pytest.raises(OSError):
            (ro / "nope").write_text("x")
    finally:
        unmount(ro)
    mount_overlay([l1], None, None, ro, readonly=True)
    try:
        assert sorted(os.listdir(ro / "a")) == ["gone", "keep"]
        with pytest.raises(OSError):
            (ro / "nope").write_text("x")
    finally:
        unmount(ro)
    unmount(ro)  # not mounted: a no-op


def test_many_layers_exceed_page_size(tmp_path: Path) -> None:
    deep = tmp_path / ("long-directory-name-" * 10)
    layers = []
    for i in range(30):
        layer = deep / f"layer-{i:03d}"
        layer.mkdir(parents=True)
        (layer / f"file{i}").write_text(str(i))
        layers.append(layer)
    assert sum(len(str(p)) for p in layers) > os.sysconf("SC_PAGE_SIZE")
    upper, work, merged = tmp_path / "u", tmp_path / "w", tmp_path / "m"
    for p in (upper, work, merged):
        p.mkdir()
    mount_overlay(layers, upper, work, merged)
    try:
        assert len(os.listdir(merged)) == 30
    finally:
        unmount(merged)


def test_tar_layer_from_upper_round_trips_whiteouts(tmp_path: Path) -> None:
    upper = tmp_path / "upper"
    (upper / "etc").mkdir(parents=True)
    (upper / "etc/conf").write_text("c")
    os.link(upper / "etc/conf", upper / "etc/conf2")
    os.mknod(upper / "etc/removed", stat.S_IFCHR, os.makedev(0, 0))
    (upper / "opaque").mkdir()
    os.setxattr(upper / "opaque", OPAQUE_XATTR, b"y")
    buf = io.BytesIO()
    diff_id = tar_layer_from_upper(upper, buf)
    assert diff_id == tb.sha256(buf.getvalue())
    with tarfile.open(fileobj=io.BytesIO(buf.getvalue())) as tar:
        members = {m.name: m for m in tar.getmembers()}
    assert "etc/.wh.removed" in members and members["etc/.wh.removed"].isreg()
    assert "opaque/.wh..wh..opq" in members
    assert members["etc/conf2"].islnk() and members["etc/conf2"].linkname == "etc/conf"
    again = tmp_path / "again"
    unpack_layer(write_blob(tmp_path, buf.getvalue()), image.OCI_LAYER_TAR, again, diff_id)
    assert os.lstat(again / "etc/removed").st_rdev == 0
    assert os.getxattr(again / "opaque", OPAQUE_XATTR) == b"y"


# -------------------------------------------------------------- layer store


def put_layer(store: ContentStore, entries: list[tb.Entry]) -> tuple[Descriptor, str]:
    raw = tb.build_tar(entries)
    blob = tb.gzip_bytes(raw)
    digest = store.write_bytes(blob)
    return Descriptor(image.OCI_LAYER_GZIP, digest, len(blob)), tb.sha256(raw)


def test_layer_store_shares_chains_between_images(tmp_path: Path) -> None:
    store = ContentStore(tmp_path)
    layers = LayerStore(tmp_path, store)
    base = put_layer(store, [tb.file("base", b"b")])
    app1 = put_layer(store, [tb.file("app", b"1")])
    app2 = put_layer(store, [tb.file("app", b"2")])

    dirs1 = layers.ensure([base[0], app1[0]], [base[1], app1[1]])
    base_inode = os.stat(dirs1[0]).st_ino
    dirs2 = layers.ensure([base[0], app2[0]], [base[1], app2[1]])
    assert dirs1[0] == dirs2[0] and os.stat(dirs2[0]).st_ino == base_inode
    assert (dirs1[1] / "app").read_text() == "1" and (dirs2[1] / "app").read_text() == "2"
    expected = set(chain_ids([base[1], app1[1]]) + chain_ids([base[1], app2[1]]))
    assert set(layers.chain_ids()) == expected and len(expected) == 3
    assert layers.path(base[1]) == dirs1[0] == tmp_path / "layers" / base[1].split(":")[1] / "diff"

    top1 = chain_ids([base[1], app1[1]])[1]
    layers.remove(top1)
    assert not layers.has(top1) and layers.has(base[1])
    with pytest.raises(NotFoundError):
        layers.path(top1)
    assert [p.name for p in (tmp_path / "layers").iterdir() if p.name.startswith(".tmp")] == []


def test_layer_store_checks_descriptor_size_and_diff_id(tmp_path: Path) -> None:
    store = ContentStore(tmp_path)
    layers = LayerStore(tmp_path, store)
    desc, diff_id = put_layer(store, [tb.file("f", b"x")])
    wrong_size = Descriptor(desc.media_type, desc.digest, desc.size + 1)
    with pytest.raises(ContentError, match="descriptor says"):
        layers.ensure([wrong_size], [diff_id])
    with pytest.raises(ContentError, match="diff ID mismatch"):
        layers.ensure([desc], [tb.sha256(b"other")])
    assert layers.chain_ids() == []
    leftovers = [p.name for p in (tmp_path / "layers").iterdir() if p.name != ".lock"]
    assert leftovers == []


def test_layer_store_sweep_removes_incomplete(tmp_path: Path) -> None:
    store = ContentStore(tmp_path)
    layers = LayerStore(tmp_path, store)
    desc, diff_id = put_layer(store, [tb.file("f", b"x")])
    layers.ensure([desc], [diff_id])
    half = tmp_path / "layers" / ("e" * 64)
    (half / "diff" / "partly").mkdir(parents=True)
    crashed_tmp = tmp_path / "layers" / ".tmp-crashed"
    (crashed_tmp / "diff").mkdir(parents=True)
    assert not layers.has("sha256:" + "e" * 64)
    layers.sweep()
    assert not half.exists() and not crashed_tmp.exists()
    assert layers.has(diff_id)
    assert layers.chain_ids() == [diff_id]
