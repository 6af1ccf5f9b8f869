"""`docker save` archives and OCI image layouts, in and out.

Loading reads the archive in place (a tar is never extracted to disk) and
copies each blob into the content store only after checking its digest, so an
archive cannot write outside the store nor smuggle in content that does not
match its name. Archives are hostile until proven otherwise: member names that
are absolute or climb with `..`, links that leave the archive, device nodes, and
structure files reached through a symlinked directory are refused with nothing
kept.

Saving writes Docker 25's docker-archive (manifest.json and repositories for
old loaders, plus oci-layout/index.json/blobs for new ones) or a plain OCI
layout, as a tar or a directory. Tars are deterministic: sorted, uid/gid 0,
mtime 0.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import posixpath
import shutil
import stat
import tarfile
import tempfile
import zlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, BinaryIO, Protocol

from hull.errors import ConfigError, HullError, NotFoundError
from hull.oci.digest import DigestVerifier, parse_digest, sha256_digest
from hull.oci.image import (
    INDEX_TYPES,
    MANIFEST_TYPES,
    OCI_CONFIG,
    OCI_INDEX,
    OCI_LAYER_GZIP,
    OCI_LAYER_TAR,
    OCI_LAYER_ZSTD,
    OCI_MANIFEST,
    Descriptor,
    Index,
    Manifest,
    Platform,
    host_platform,
    parse_config,
    parse_manifest,
    select_manifest,
)
from hull.oci.reference import Reference, parse_reference

_CHUNK = 1 << 20
_JSON_LIMIT = 64 << 20  # manifests, configs, index.json: far below this in practice
_MAX_LINK_HOPS = 16
ANNOTATION_REF_NAME = "org.opencontainers.image.ref.name"
ANNOTATION_IMAGE_NAME = "io.containerd.image.name"
OCI_LAYOUT = json.dumps({"imageLayoutVersion": "1.0.0"}).encode()

SAVE_FORMATS = ("docker", "docker-archive", "oci", "oci-archive", "oci-dir")


class ArchiveError(ConfigError):
    """An archive is malformed, corrupt or hostile."""


# ------------------------------------------------------------------ results


@dataclass
class LoadedImage:
    manifest_digest: str
    manifest: Manifest
    tags: list[Reference] = field(default_factory=list)


@dataclass
class LoadResult:
    images: list[LoadedImage]
    new_blobs: list[str]  # added to the store by this load (to undo on a later failure)


@dataclass
class SaveItem:
    manifest_digest: str
    manifest_media_type: str
    config_digest: str
    layers: list[Descriptor]
    diff_ids: list[str]
    tags: list[Reference]


# ------------------------------------------------------------------ sources


class Source(Protocol):
    """Read-only access to an archive's files by their archive-relative name."""

    description: str

    def exists(self, name: str) -> bool: ...

    def open(self, name: str) -> contextlib.AbstractContextManager[IO[bytes]]: ...


def _clean_name(name: str, where: str) -> str:
    """Normalise an archive-relative name, refusing absolute paths and `..`."""
    if name.startswith("/") or "\\" in name or "\0" in name:
        raise ArchiveError(f"refusing {where}: unsafe path {name!r}")
    parts = [p for p in name.split("/") if p not in ("", ".")]
    if any(p == ".." for p in parts):
        raise ArchiveError(f"refusing {where}: path {name!r} climbs out of the archive")
    return "/".join(parts)


class TarSource:
    """An archive tar (optionally gzip/bzip2/xz compressed), read member by member."""

    def __init__(self, path: Path) -> None:
        self.description = f"archive {path}"
        try:
            self.tar = tarfile.open(path, "r:*")  # noqa: SIM115 (closed by close())
            members = self.tar.getmembers()
        except (tarfile.TarError, EOFError, zlib.error) as e:
            raise ArchiveError(f"{self.description} is not a readable tar: {e}") from None
        self.members: dict[str, tarfile.TarInfo] = {}
        for member in members:
            name = _clean_name(member.name, self.description)
            if member.ischr() or member.isblk() or member.isfifo():
                raise ArchiveError(f"refusing {self.description}: device or fifo {member.name!r}")
            if member.issym() or member.islnk():
                self._check_link(name, member)
            if name:
                self.members[name] = member

    def _check_link(self, name: str, member: tarfile.TarInfo) -> None:
        target = member.linkname
        if target.startswith("/"):
            raise ArchiveError(
                f"refusing {self.description}: link {member.name!r} points at absolute "
                f"path {target!r}"
            )
        joined = posixpath.join(posixpath.dirname(name), target) if member.issym() else target
        normal = posixpath.normpath(joined)
        if normal == ".." or normal.startswith("../"):
            raise ArchiveError(
                f"refusing {self.description}: link {member.name!r} points outside the "
                f"archive ({target!r})"
            )

    def close(self) -> None:
        self.tar.close()

    def _resolve(self, name: str) -> tarfile.TarInfo:
        """The regular member `name` names, following links that stay inside the archive."""
        current = _clean_name(name, self.description)
        for _ in range(_MAX_LINK_HOPS):
            member = self.members.get(current)
            if member is None:
                raise ArchiveError(f"{self.description} has no file {name!r}")
            if member.isfile():
                return member
            if member.issym():
                current = _clean_name(
                    posixpath.normpath(posixpath.join(posixpath.dirname(current), member.linkname)),
                    self.description,
                )
            elif member.islnk():
                current = _clean_name(member.linkname, self.description)
            else:
                raise ArchiveError(f"{self.description}: {name!r} is not a regular file")
        raise ArchiveError(f"{self.description}: too many links resolving {name!r}")

    def exists(self, name: str) -> bool:
        return _clean_name(name, self.description) in self.members

    @contextlib.contextmanager
    def open(self, name: str) -> Iterator[IO[bytes]]:
        member = self._resolve(name)
        f = self.tar.extractfile(member)
        if f is None:
            raise ArchiveError(f"{self.description}: cannot read {name!r}")
        with f:
            yield f


class DirSource:
    """An OCI layout or unpacked docker-archive directory; no symlinks anywhere on a path."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.description = f"image layout {root}"

    def _path(self, name: str) -> Path:
        clean = _clean_name(name, self.description)
        path = self.root
        for part in clean.split("/"):
            path = path / part
            try:
                st = path.lstat()
            except FileNotFoundError:
                raise ArchiveError(f"{self.description} has no file {name!r}") from None
            if stat.S_ISLNK(st.st_mode):
                raise ArchiveError(f"refusing {self.description}: {clean!r} goes through a symlink")
        return path

    def exists(self, name: str) -> bool:
        try:
            self._path(name)
        except ArchiveError:
            return False
        return True

    @contextlib.contextmanager
    def open(self, name: str) -> Iterator[IO[bytes]]:
        path = self._path(name)
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            os.close(fd)
            raise ArchiveError(f"{self.description}: {name!r} is not a regular file")
        with os.fdopen(fd, "rb") as f:
            yield f


def _read_json(source: Source, name: str) -> Any:
    with source.open(name) as f:
        raw = f.read(_JSON_LIMIT + 1)
    if len(raw) > _JSON_LIMIT:
        raise ArchiveError(f"{source.description}: {name} is implausibly large")
    try:
        return json.loads(raw)
    except (ValueError, UnicodeDecodeError) as e:
        raise ArchiveError(f"{source.description}: {name} is not valid JSON: {e}") from None


def _read_bytes(source: Source, name: str) -> bytes:
    with source.open(name) as f:
        raw = f.read(_JSON_LIMIT + 1)
    if len(raw) > _JSON_LIMIT:
        raise ArchiveError(f"{source.description}: {name} is implausibly large")
    return raw


def _blob_name(digest: str) -> str:
    algorithm, encoded = parse_digest(digest)
    return f"blobs/{algorithm}/{encoded}"


# ------------------------------------------------------------------ loading


class _Loader:
    """Copies verified blobs into the store and remembers which ones are new."""

    def __init__(self, store: Any, source: Source, platform: Platform | None) -> None:
        self.store = store
        self.source = source
        self.platform = platform or host_platform()
        self.new_blobs: list[str] = []

    # ---------------------------------------------------------------- blobs

    def copy_blob(self, name: str, digest: str, size: int | None) -> None:
        """Stream an archive file into the store as `digest`; refuse it if it hashes otherwise."""
        if self.store.has(digest):
            return
        from hull.image.store import ContentError

        writer = self.store.writer(digest, size)
        try:
            with self.source.open(name) as f:
                _skip(f, writer.offset)
                while chunk := f.read(_CHUNK):
                    writer.write(chunk)
            writer.commit()
        except ContentError as e:
            raise ArchiveError(
                f"{self.source.description}: {name} does not match its digest ({e.message})"
            ) from None
        finally:
            writer.abort(keep_partial=False)
        self.new_blobs.append(digest)

    def put_bytes(self, data: bytes, expected: str | None = None) -> str:
        from hull.image.store import ContentError

        existed = self.store.has(expected or sha256_digest(data))
        try:
            digest: str = self.store.write_bytes(data, expected)
        except ContentError as e:
            raise ArchiveError(f"{self.source.description}: {e.message}") from None
        if not existed and digest not in self.new_blobs:
            self.new_blobs.append(digest)
        return digest

    def undo(self) -> None:
        for digest in self.new_blobs:
            self.store.delete(digest)
        self.new_blobs.clear()

    # ------------------------------------------------------------ OCI layout

    def oci_manifests(self) -> list[tuple[Descriptor, list[Reference]]]:
        """index.json's image manifests (one per platform chosen), with their names."""
        raw = _read_bytes(self.source, "index.json")
        index = parse_manifest(raw, OCI_INDEX)
        if not isinstance(index, Index):
            raise ArchiveError(f"{self.source.description}: index.json is not an image index")
        found: dict[str, tuple[Descriptor, list[Reference]]] = {}
        for desc in index.manifests:
            names = _names_from_annotations(desc.annotations or {})
            chosen = self._choose_manifest(desc)
            entry = found.setdefault(chosen.digest, (chosen, []))
            entry[1].extend(n for n in names if n not in entry[1])
        return list(found.values())

    def _choose_manifest(self, desc: Descriptor, depth: int = 0) -> Descriptor:
        if desc.media_type in MANIFEST_TYPES:
            return desc
        if desc.media_type not in INDEX_TYPES or depth > 4:
            raise ArchiveError(
                f"{self.source.description}: unsupported manifest type {desc.media_type}"
            )
        self.copy_blob(_blob_name(desc.digest), desc.digest, desc.size)
        nested = parse_manifest(self.store.read_bytes(desc.digest), desc.media_type)
        if not isinstance(nested, Index):
            raise ArchiveError(f"{self.source.description}: {desc.digest} is not an index")
        return self._choose_manifest(select_manifest(nested, self.platform), depth + 1)

    def load_oci_image(self, desc: Descriptor) -> Manifest:
        """Copy one image's manifest, config and layers, each checked against its digest."""
        self.copy_blob(_blob_name(desc.digest), desc.digest, desc.size)
        manifest = parse_manifest(self.store.read_bytes(desc.digest), desc.media_type)
        if not isinstance(manifest, Manifest):
            raise ArchiveError(f"{self.source.description}: {desc.digest} is not a manifest")
        config = manifest.config
        self.copy_blob(_blob_name(config.digest), config.digest, config.size)
        parse_config(self.store.read_bytes(config.digest))
        for layer in manifest.layers:
            self.copy_blob(_blob_name(layer.digest), layer.digest, layer.size)
        return manifest

    # -------------------------------------------------------- docker-archive

    def docker_images(self) -> list[LoadedImage]:
        entries = _read_json(self.source, "manifest.json")
        if not isinstance(entries, list) or not all(isinstance(e, dict) for e in entries):
            raise ArchiveError(
                f"{self.source.description}: manifest.json must be a list of objects"
            )
        oci_by_config = self._oci_manifests_by_config()
        images: list[LoadedImage] = []
        for i, entry in enumerate(entries):
            where = f"{self.source.description}: manifest.json[{i}]"
            config_name = entry.get("Config")
            layer_names = entry.get("Layers")
            if not isinstance(config_name, str) or not isinstance(layer_names, list):
                raise ArchiveError(f"{where} needs Config (a path) and Layers (a list of paths)")
            if not all(isinstance(n, str) for n in layer_names):
                raise ArchiveError(f"{where}: Layers must be paths")
            config_raw = _read_bytes(self.source, _clean_name(config_name, where))
            config = parse_config(config_raw)
            if len(config.rootfs_diff_ids) != len(layer_names):
                raise ArchiveError(
                    f"{where}: {len(layer_names)} layers but the config lists "
                    f"{len(config.rootfs_diff_ids)} diff_ids"
                )
            tags = [_parse_tag(t, where) for t in entry.get("RepoTags") or []]
            config_digest = self.put_bytes(config_raw)
            oci_desc = oci_by_config.get(config_digest)
            if oci_desc is not None:
                manifest = self.load_oci_image(oci_desc)
                images.append(LoadedImage(oci_desc.digest, manifest, tags))
                continue
            layers = [
                self._docker_layer(_clean_name(name, where), diff_id, where)
                for name, diff_id in zip(layer_names, config.rootfs_diff_ids, strict=True)
            ]
            manifest_doc = {
                "schemaVersion": 2,
                "mediaType": OCI_MANIFEST,
                "config": {
                    "mediaType": OCI_CONFIG,
                    "digest": config_digest,
                    "size": len(config_raw),
                },
                "layers": [layer.to_dict() for layer in layers],
            }
            raw = json.dumps(manifest_doc, indent=2).encode()
            manifest_digest = self.put_bytes(raw)
            parsed = parse_manifest(raw, OCI_MANIFEST)
            assert isinstance(parsed, Manifest)
            images.append(LoadedImage(manifest_digest, parsed, tags))
        return images

    def _oci_manifests_by_config(self) -> dict[str, Descriptor]:
        """Docker 25 archives carry OCI manifests too: reuse them so digests survive."""
        if not (self.source.exists("index.json") and self.source.exists("oci-layout")):
            return {}
        out: dict[str, Descriptor] = {}
        try:
            for desc, _names in self.oci_manifests():
                raw = _read_bytes(self.source, _blob_name(desc.digest))
                manifest = parse_manifest(raw, desc.media_type)
                if isinstance(manifest, Manifest):
                    out[manifest.config.digest] = desc
        except NotFoundError:
            return out  # an index without our platform: fall back to manifest.json
        return out

    def _docker_layer(self, name: str, diff_id: str, where: str) -> Descriptor:
        """Hash a layer file, check its uncompressed digest, then store it as a blob."""
        compressed = DigestVerifier()
        uncompressed = DigestVerifier.for_digest(diff_id)
        with self.source.open(name) as f:
            head = f.read(4)
            media_type = _layer_media_type(head)
            inflater = zlib.decompressobj(wbits=31) if media_type == OCI_LAYER_GZIP else None
            chunk = head
            while chunk:
                compressed.update(chunk)
                if media_type == OCI_LAYER_TAR:
                    uncompressed.update(chunk)
                elif inflater is not None:
                    uncompressed.update(inflater.decompress(chunk))
                chunk = f.read(_CHUNK)
            if inflater is not None:
                uncompressed.update(inflater.flush())
        if media_type != OCI_LAYER_ZSTD and uncompressed.digest() != diff_id:
            raise ArchiveError(
                f"{where}: layer {name} has uncompressed digest {uncompressed.digest()}, "
                f"but the config says {diff_id}"
            )
        digest = compressed.digest()
        self.copy_blob(name, digest, compressed.size)
        return Descriptor(media_type, digest, compressed.size)


def _skip(f: IO[bytes], count: int) -> None:
    while count > 0:
        chunk = f.read(min(_CHUNK, count))
        if not chunk:
            return
        count -= len(chunk)


def _layer_media_type(head: bytes) -> str:
    if head[:2] == b"\x1f\x8b":
        return OCI_LAYER_GZIP
    if head[:4] == b"\x28\xb5\x2f\xfd":
        return OCI_LAYER_ZSTD
    return OCI_LAYER_TAR


def _parse_tag(text: Any, where: str) -> Reference:
    if not isinstance(text, str):
        raise ArchiveError(f"{where}: RepoTags must be strings")
    ref = parse_reference(text)
    if ref.digest:
        raise ArchiveError(f"{where}: RepoTags entry {text!r} carries a digest")
    return ref


def _names_from_annotations(annotations: dict[str, str]) -> list[Reference]:
    """containerd's full image name, else a ref.name that is a full reference (not a bare tag)."""
    for key in (ANNOTATION_IMAGE_NAME, ANNOTATION_REF_NAME):
        value = annotations.get(key)
        if value and ("/" in value or ":" in value):
            with contextlib.suppress(ConfigError):
                ref = parse_reference(value)
                if not ref.digest:
                    return [ref]
    return []


def open_source(path: Path) -> Source:
    try:
        st = path.stat()
    except FileNotFoundError:
        raise NotFoundError(f"no such archive: {path}") from None
    if stat.S_ISDIR(st.st_mode):
        return DirSource(path)
    return TarSource(path)


def load(store: Any, path: Path, platform: Platform | None = None) -> LoadResult:
    """Load every image of a docker-archive or OCI layout (dir or tar) into the store.

    On any error the blobs this call added are deleted again and the error says why.
    """
    source = open_source(path)
    loader = _Loader(store, source, platform)
    try:
        if source.exists("manifest.json"):
            images = loader.docker_images()
        elif source.exists("index.json"):
            _check_layout(source)
            images = [
                LoadedImage(desc.digest, loader.load_oci_image(desc), names)
                for desc, names in loader.oci_manifests()
            ]
        else:
            raise ArchiveError(
                f"{source.description} is neither a docker-archive (manifest.json) nor an "
                "OCI image layout (oci-layout, index.json)"
            )
        if not images:
            raise ArchiveError(f"{source.description} holds no images")
    except BaseException:
        loader.undo()
        raise
    finally:
        if isinstance(source, TarSource):
            source.close()
    return LoadResult(images, loader.new_blobs)


def _check_layout(source: Source) -> None:
    if not source.exists("oci-layout"):
        raise ArchiveError(f"{source.description}: index.json without an oci-layout file")
    layout = _read_json(source, "oci-layout")
    version = layout.get("imageLayoutVersion") if isinstance(layout, dict) else None
    if not isinstance(version, str) or not version.startswith("1."):
        raise ArchiveError(f"{source.description}: unsupported imageLayoutVersion {version!r}")


# ------------------------------------------------------------------ saving


def save(
    store: Any, items: list[SaveItem], dest: Path | None, fmt: str, stream: BinaryIO | None = None
) -> None:
    """Write items as `fmt` to dest (a file or directory), or as a tar to `stream`."""
    if fmt not in SAVE_FORMATS:
        raise ConfigError(f"unknown save format {fmt!r}: use one of {', '.join(SAVE_FORMATS)}")
    docker = fmt in ("docker", "docker-archive")
    as_dir = fmt == "oci-dir" or (fmt == "oci" and dest is not None and dest.is_dir())
    files = _layout_files(store, items, docker)
    if dest is None:
        if stream is None or as_dir:
            raise ConfigError("save needs an output path (-o) for this format")
        _write_tar(files, stream)
        return
    if as_dir:
        _write_dir(files, dest)
        return
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{dest.name}.", dir=dest.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            _write_tar(files, f)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp_name, 0o644)
        os.replace(tmp_name, dest)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp_name)
        raise


@dataclass
class _File:
    """One file of the layout: bytes in memory, or a blob streamed from the store."""

    name: str
    data: bytes | None = None
    blob: Path | None = None


def _layout_files(store: Any, items: list[SaveItem], docker: bool) -> list[_File]:
    blobs: dict[str, Path] = {}
    index_entries: list[dict[str, Any]] = []
    docker_entries: list[dict[str, Any]] = []
    repositories: dict[str, dict[str, str]] = {}
    for item in items:
        for digest in [item.manifest_digest, item.config_digest, *(d.digest for d in item.layers)]:
            try:
                blobs[digest] = store.path(digest)
            except NotFoundError:
                raise HullError(
                    f"image {item.config_digest} is missing blob {digest} from the content "
                    "store; pull or load it again"
                ) from None
        desc = Descriptor(
            item.manifest_media_type,
            item.manifest_digest,
            blobs[item.manifest_digest].stat().st_size,
        ).to_dict()
        if item.tags:
            for ref in item.tags:
                index_entries.append(
                    {
                        **desc,
                        "annotations": {
                            ANNOTATION_IMAGE_NAME: str(ref),
                            ANNOTATION_REF_NAME: ref.tag or "",
                        },
                    }
                )
        else:
            index_entries.append(desc)
        docker_entries.append(
            {
                "Config": _blob_name(item.config_digest),
                "RepoTags": [ref.familiar() for ref in item.tags] or None,
                "Layers": [_blob_name(d.digest) for d in item.layers],
            }
        )
        top = parse_digest(item.layers[-1].digest)[1] if item.layers else ""
        for ref in item.tags:
            repositories.setdefault(ref.familiar_name(), {})[ref.tag or "latest"] = top
    index = {"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": index_entries}
    files = [
        _File("oci-layout", OCI_LAYOUT),
        _File("index.json", json.dumps(index).encode()),
    ]
    if docker:
        files.append(_File("manifest.json", json.dumps(docker_entries).encode()))
        if repositories:
            files.append(_File("repositories", json.dumps(repositories).encode()))
    files += [_File(_blob_name(d), blob=p) for d, p in sorted(blobs.items())]
    return files


def _tar_info(name: str, size: int, mode: int, kind: bytes = tarfile.REGTYPE) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.size = size
    info.mode = mode
    info.type = kind
    info.mtime = 0
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    return info


def _write_tar(files: list[_File], out: BinaryIO) -> None:
    dirs = sorted({posixpath.dirname(f.name) for f in files} - {""})
    all_dirs = sorted(
        {"/".join(d.split("/")[: i + 1]) for d in dirs for i in range(d.count("/") + 1)}
    )
    with tarfile.open(fileobj=out, mode="w|", format=tarfile.PAX_FORMAT) as tar:
        for d in all_dirs:
            tar.addfile(_tar_info(d + "/", 0, 0o755, tarfile.DIRTYPE))
        for f in sorted(files, key=lambda f: f.name):
            if f.data is not None:
                tar.addfile(_tar_info(f.name, len(f.data), 0o644), io.BytesIO(f.data))
            else:
                assert f.blob is not None
                with open(f.blob, "rb") as blob:
                    size = os.fstat(blob.fileno()).st_size
                    tar.addfile(_tar_info(f.name, size, 0o644), blob)


def _write_dir(files: list[_File], dest: Path) -> None:
    """Build the layout beside dest and rename it into place (dest must be absent or empty)."""
    if dest.exists() and (not dest.is_dir() or any(dest.iterdir())):
        raise ConfigError(f"{dest} exists and is not an empty directory")
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}.", dir=dest.parent))
    try:
        for f in files:
            target = tmp / f.name
            target.parent.mkdir(parents=True, exist_ok=True)
            if f.data is not None:
                target.write_bytes(f.data)
            else:
                assert f.blob is not None
                shutil.copyfile(f.blob, target)
        os.chmod(tmp, 0o755)
        if dest.exists():
            dest.rmdir()
        os.rename(tmp, dest)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


__all__ = [
    "SAVE_FORMATS",
    "ArchiveError",
    "LoadResult",
    "LoadedImage",
    "SaveItem",
    "load",
    "save",
]
