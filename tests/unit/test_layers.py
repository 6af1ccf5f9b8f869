"""Layer-name checks and decompression (no root needed)."""

from __future__ import annotations

from pathlib import Path

import pytest

from hull.errors import ConfigError, StateError
from hull.image.layers import clean_entry_name, open_uncompressed, unpack_layer
from hull.image.store import ContentError
from hull.oci import image
from tests.fixtures import tarballs as tb


@pytest.mark.parametrize(
    ("name", "clean"),
    [
        ("a/b", "a/b"),
        ("./a/b/", "a/b"),
        ("./", ""),
        (".", ""),
        ("a//b/./c", "a/b/c"),
        ("..foo/bar..", "..foo/bar.."),
    ],
)
def test_clean_entry_name(name: str, clean: str) -> None:
    assert clean_entry_name(name) == clean


@pytest.mark.parametrize("name", ["../x", "/etc/passwd", "a/../../x", "a/..", "..", "a/b\x00c"])
def test_clean_entry_name_refuses_escapes(name: str) -> None:
    with pytest.raises(ContentError, match="refusing tar entry"):
        clean_entry_name(name)


@pytest.mark.parametrize("compress", [lambda d: d, tb.gzip_bytes, tb.zstd_bytes])
def test_open_uncompressed_detects_compression(tmp_path: Path, compress) -> None:
    raw = tb.build_tar([tb.file("hello", b"world")])
    blob = tmp_path / "blob"
    blob.write_bytes(compress(raw))
    with open_uncompressed(blob) as stream:
        assert stream.read() == raw


def test_corrupt_zstd_is_a_content_error(tmp_path: Path) -> None:
    blob = tmp_path / "blob"
    blob.write_bytes(tb.zstd_bytes(b"x" * 10000)[:-8])
    with pytest.raises(ContentError, match="zstd"), open_uncompressed(blob) as stream:
        stream.read()


def test_unknown_media_type_refused(tmp_path: Path) -> None:
    blob = tmp_path / "blob"
    blob.write_bytes(tb.build_tar([]))
    with pytest.raises(ConfigError, match="media type"):
        unpack_layer(blob, "application/x-unknown", tmp_path / "dest", None)
    assert not (tmp_path / "dest").exists()


def test_existing_dest_is_never_touched(tmp_path: Path) -> None:
    blob = tmp_path / "blob"
    blob.write_bytes(tb.build_tar([tb.file("../escape")]))
    dest = tmp_path / "dest"
    dest.mkdir()
    (dest / "keep").write_text("mine")
    with pytest.raises(StateError, match="already exists"):
        unpack_layer(blob, image.OCI_LAYER_TAR, dest, None)
    assert (dest / "keep").read_text() == "mine"


def test_escaping_name_refused_and_dest_removed(tmp_path: Path) -> None:
    blob = tmp_path / "blob"
    blob.write_bytes(tb.build_tar([tb.file("../escape", b"pwned")]))
    with pytest.raises(ContentError, match="'../escape'"):
        unpack_layer(blob, image.OCI_LAYER_TAR, tmp_path / "dest", None)
    assert not (tmp_path / "dest").exists()
    assert not (tmp_path / "escape").exists()


def test_truncated_gzip_is_a_content_error(tmp_path: Path) -> None:
    blob = tmp_path / "blob"
    blob.write_bytes(tb.gzip_bytes(tb.build_tar([tb.file("f", b"x" * 5000)]))[:-20])
    with pytest.raises(ContentError):
        unpack_layer(blob, image.OCI_LAYER_GZIP, tmp_path / "dest", None)
    assert not (tmp_path / "dest").exists()
