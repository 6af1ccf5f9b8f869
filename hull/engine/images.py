"""Images as the engine sees them: pull, tag, resolve, inspect, remove, load, save.

Blobs live in the content store and unpacked layers in the layer store; which
images exist, and under which names, lives in SQLite. An image is recorded only
after its blobs are committed and its layers unpacked, in one transaction, so a
crash leaves either the old state or the new one. Blob and layer garbage
collection runs under an exclusive lock that writers hold shared, so it never
deletes what a concurrent pull, load or bootstrap is about to record.
"""

from __future__ import annotations

import os
import time
from os.path import join

from hull.engine.db import Database
from hull.errors import ConfigError, NotFoundError, StateError
from hull.flocks import FileLock
from hull.oci.image import Descriptor, Manifest, chain_ids, parse_config, parse_manifest
from hull.oci.reference import DEFAULT_TAG, Reference, parse_reference
from hull.paths import HullPaths
from hull.records import dataclass, field
from hull.runtime import fastjson

TYPE_CHECKING = False
if TYPE_CHECKING:
    from pathlib import Path
    from typing import Any

    from hull.image.layers import LayerStore
    from hull.image.store import ContentStore
    from hull.oci.image import Platform

_HEX_PREFIX = r"[0-9a-f]{1,64}"  # compiled on first use
_DIGEST_ALGO = "sha256:"

# --------------------------------------------------------------------- records


@dataclass
class LayerRecord:
    """One layer as recorded: its blob, its uncompressed digest and unpacked size."""

    digest: str
    media_type: str
    size: int
    diff_id: str
    unpacked_size: int

    def to_dict(self) -> dict[str, Any]:
        return {
            "digest": self.digest,
            "mediaType": self.media_type,
            "size": self.size,
            "diffId": self.diff_id,
            "unpackedSize": self.unpacked_size,
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> LayerRecord:
        return cls(d["digest"], d["mediaType"], d["size"], d["diffId"], d["unpackedSize"])

    def descriptor(self) -> Descriptor:
        return Descriptor(self.media_type, self.digest, self.size)


@dataclass
class ImageRecord:
    """A row of the images table plus the names that point at it."""

    id: str
    manifest_digest: str
    manifest_media_type: str
    index_digest: str | None
    size: int
    created: str | None
    platform: str
    config: dict[str, Any]
    layers: list[LayerRecord]
    added: float
    tags: list[Reference] = field(default_factory=list)
    digests: list[Reference] = field(default_factory=list)

    @property
    def short_id(self) -> str:
        return short_id(self.id)

    @property
    def diff_ids(self) -> list[str]:
        return [layer.diff_id for layer in self.layers]

    def blob_digests(self) -> set[str]:
        """Every blob this image needs kept in the content store."""
        out = {self.id, self.manifest_digest}
        if self.index_digest:
            out.add(self.index_digest)
        out.update(layer.digest for layer in self.layers)
        return out


def short_id(image_id: str) -> str:
    """The 12-hex form `docker images` shows."""
    return image_id.removeprefix(_DIGEST_ALGO)[:12]


@dataclass
class Resolved:
    """An image found by name or ID, and the name it was found by (None for an ID)."""

    image: ImageRecord
    tag: Reference | None = None
    digest: Reference | None = None


# --------------------------------------------------------------------- catalog


class ImageCatalog:
    """SQL for images, tags and repo digests; no blobs, no layers, no locking."""

    def __init__(self, db: Database) -> None:
        self.db = db

    def get(self, image_id: str) -> ImageRecord | None:
        row = self.db.execute("SELECT * FROM images WHERE id = ?", (image_id,)).fetchone()
        return self._record(row) if row else None

    def all(self) -> list[ImageRecord]:
        rows = self.db.execute("SELECT * FROM images ORDER BY added DESC, id").fetchall()
        return [self._record(row) for row in rows]

    def ids_with_prefix(self, hex_prefix: str) -> list[str]:
        rows = self.db.execute(
            "SELECT id FROM images WHERE substr(id, 1, ?) = ? ORDER BY id",
            (len(_DIGEST_ALGO) + len(hex_prefix), _DIGEST_ALGO + hex_prefix),
        ).fetchall()
        return [row["id"] for row in rows]

    def by_tag(self, ref: Reference) -> str | None:
        row = self.db.execute(
            "SELECT image_id FROM tags WHERE repository = ? AND tag = ?", (ref.name, ref.tag)
        ).fetchone()
        return row["image_id"] if row else None

    def by_digest(self, ref: Reference) -> str | None:
        row = self.db.execute(
            "SELECT image_id FROM image_digests WHERE repository = ? AND digest = ?",
            (ref.name, ref.digest),
        ).fetchone()
        if row:
            return str(row["image_id"])
        # name@digest of a manifest we hold under that repository by tag only.
        row = self.db.execute(
            "SELECT i.id FROM images i JOIN tags t ON t.image_id = i.id "
            "WHERE t.repository = ? AND (i.manifest_digest = ? OR i.index_digest = ?) LIMIT 1",
            (ref.name, ref.digest, ref.digest),
        ).fetchone()
        return str(row["id"]) if row else None

    def tags_in_repository(self, repository: str) -> list[Reference]:
        rows = self.db.execute(
            "SELECT repository, tag FROM tags WHERE repository = ? ORDER BY tag", (repository,)
        ).fetchall()
        return [_tag_ref(row["repository"], row["tag"]) for row in rows]

    # Writes: callers wrap these in db.transaction().

    def put(self, record: ImageRecord) -> None:
        """Insert or refresh an image; its tags (which point at the ID) are untouched."""
        import json  # sort_keys: fastjson (the run path's codec) has no such option

        self.db.execute(
            "INSERT INTO images (id, manifest_digest, manifest_media_type, index_digest, size,"
            " created, platform, config, layers, added) VALUES (?,?,?,?,?,?,?,?,?,?)"
            " ON CONFLICT(id) DO UPDATE SET manifest_digest = excluded.manifest_digest,"
            " manifest_media_type = excluded.manifest_media_type,"
            " index_digest = excluded.index_digest, size = excluded.size,"
            " layers = excluded.layers",
            (
                record.id,
                record.manifest_digest,
                record.manifest_media_type,
                record.index_digest,
                record.size,
                record.created,
                record.platform,
                json.dumps(record.config, sort_keys=True),
                json.dumps([layer.to_dict() for layer in record.layers]),
                record.added,
            ),
        )

    def set_tag(self, ref: Reference, image_id: str) -> None:
        self.db.execute(
            "INSERT INTO tags (repository, tag, image_id) VALUES (?, ?, ?)"
            " ON CONFLICT(repository, tag) DO UPDATE SET image_id = excluded.image_id",
            (ref.name, ref.tag, image_id),
        )

    def add_digest(self, ref: Reference, image_id: str) -> None:
        self.db.execute(
            "INSERT INTO image_digests (repository, digest, image_id) VALUES (?, ?, ?)"
            " ON CONFLICT(repository, digest) DO UPDATE SET image_id = excluded.image_id",
            (ref.name, ref.digest, image_id),
        )

    def untag(self, ref: Reference) -> None:
        self.db.execute("DELETE FROM tags WHERE repository = ? AND tag = ?", (ref.name, ref.tag))

    def remove_digest(self, ref: Reference) -> None:
        self.db.execute(
            "DELETE FROM image_digests WHERE repository = ? AND digest = ?", (ref.name, ref.digest)
        )

    def delete(self, image_id: str) -> None:
        self.db.execute("DELETE FROM images WHERE id = ?", (image_id,))

    # ------------------------------------------------------------------ rows

    def _record(self, row: Any) -> ImageRecord:
        image_id = row["id"]
        tags = [
            _tag_ref(r["repository"], r["tag"])
            for r in self.db.execute(
                "SELECT repository, tag FROM tags WHERE image_id = ? ORDER BY repository, tag",
                (image_id,),
            )
        ]
        digests = [
            _digest_ref(r["repository"], r["digest"])
            for r in self.db.execute(
                "SELECT repository, digest FROM image_digests WHERE image_id = ?"
                " ORDER BY repository, digest",
                (image_id,),
            )
        ]
        return ImageRecord(
            id=image_id,
            manifest_digest=row["manifest_digest"],
            manifest_media_type=row["manifest_media_type"],
            index_digest=row["index_digest"],
            size=row["size"],
            created=row["created"],
            platform=row["platform"],
            config=fastjson.loads(row["config"]),
            layers=[LayerRecord.from_dict(d) for d in fastjson.loads(row["layers"])],
            added=row["added"],
            tags=tags,
            digests=digests,
        )


def _tag_ref(repository: str, tag: str) -> Reference:
    domain, _, path = repository.partition("/")
    return Reference(domain, path, tag, None)


def _digest_ref(repository: str, digest: str) -> Reference:
    domain, _, path = repository.partition("/")
    return Reference(domain, path, None, digest)


# ------------------------------------------------------------------ resolution


def resolve(catalog: ImageCatalog, name: str) -> Resolved:
    """Find an image by reference (`busybox`, `x/y:tag`, `x@sha256:..`), ID or ID prefix.

    Like Docker: a name is tried as a reference first, then as an ID prefix, so
    a tag that happens to look like hex still wins.
    """
    text = name.strip()
    if text.startswith(_DIGEST_ALGO):
        return Resolved(_by_id_prefix(catalog, text[len(_DIGEST_ALGO) :], name))
    try:
        ref = parse_reference(text)
    except ConfigError:
        ref = None
    if ref is not None:
        if ref.digest:
            image_id = catalog.by_digest(ref)
            if image_id and (image := catalog.get(image_id)):
                return Resolved(image, digest=Reference(ref.domain, ref.path, None, ref.digest))
        else:
            image_id = catalog.by_tag(ref)
            if image_id and (image := catalog.get(image_id)):
                return Resolved(image, tag=ref)
    import re  # not before: `hull run IMAGE` finds its image by tag, without re (~3 ms)

    if re.fullmatch(_HEX_PREFIX, text):
        return Resolved(_by_id_prefix(catalog, text, name))
    raise NotFoundError(f"no such image: {name}")


def _by_id_prefix(catalog: ImageCatalog, hex_prefix: str, name: str) -> ImageRecord:
    import re

    if not re.fullmatch(_HEX_PREFIX, hex_prefix):
        raise NotFoundError(f"no such image: {name}")
    ids = catalog.ids_with_prefix(hex_prefix)
    if len(ids) > 1:
        raise ConfigError(
            f"image ID prefix {name!r} is ambiguous: it matches {len(ids)} images; "
            "give more characters"
        )
    image = catalog.get(ids[0]) if ids else None
    if image is None:
        raise NotFoundError(f"no such image: {name}")
    return image


def parse_tag(text: str) -> Reference:
    """A name to tag with: `busybox` means docker.io/library/busybox:latest; no digests."""
    ref = parse_reference(text)
    if ref.digest:
        raise ConfigError(f"invalid tag {text!r}: a tag cannot contain a digest")
    return ref


# ---------------------------------------------------------------------- service

if TYPE_CHECKING:
    # A hull.image.registry.progress.Progress, "auto" (bars on a tty) or None (silent).
    ProgressOption = Any


class ImageService:
    """The engine's image verbs over the content store, layer store and catalog."""

    def __init__(self, paths: HullPaths, db: Database | None = None) -> None:
        self.paths = paths
        os.makedirs(paths.root, exist_ok=True)
        self.db = db if db is not None else Database(paths.db)
        self.catalog = ImageCatalog(self.db)
        self._store: ContentStore | None = None
        self._layers: LayerStore | None = None

    def close(self) -> None:
        self.db.close()

    def __enter__(self) -> ImageService:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def store(self) -> ContentStore:
        if self._store is None:
            from hull.image.store import ContentStore

            self._store = ContentStore(self.paths.root)
        return self._store

    @property
    def layer_store(self) -> LayerStore:
        if self._layers is None:
            from hull.image.layers import LayerStore

            self._layers = LayerStore(self.paths.root, self.store)
        return self._layers

    # ---------------------------------------------------------------- lookups

    def resolve(self, name: str) -> ImageRecord:
        return resolve(self.catalog, name).image

    def list_images(self, all: bool = False) -> list[ImageRecord]:
        """Every image, newest first (`all` is accepted for Docker's -a: no intermediates)."""
        return self.catalog.all()

    def inspect(self, name: str) -> dict[str, Any]:
        return inspect_document(self.resolve(name))

    def history(self, name: str) -> list[dict[str, Any]]:
        return history_document(self.resolve(name))

    def layer_dirs(self, name: str) -> list[Path]:
        """The unpacked layer directories of an image, bottom to top (overlay lowerdirs)."""
        image = self.resolve(name)
        return [self.layer_store.path(c) for c in chain_ids(image.diff_ids)]

    # ---------------------------------------------------------------- writes

    def pull(
        self,
        ref: str,
        platform: Platform | None = None,
        progress: ProgressOption | None = None,
        tls_verify: bool = True,
    ) -> ImageRecord:
        from hull.image.registry import RegistryClient
        from hull.image.registry import pull as registry_pull

        reference = parse_reference(ref)
        with self._writer_lock(), RegistryClient.from_environment(tls_verify=tls_verify) as client:
            result = registry_pull(
                reference, self.store, platform=platform, progress=progress, client=client
            )
            manifest = result.manifest
            if not isinstance(manifest, Manifest):
                manifest = self._read_manifest(result.manifest_digest)
            tags = [reference] if reference.tag and not reference.digest else []
            repo_digest = Reference(
                reference.domain,
                reference.path,
                None,
                result.index_digest or result.manifest_digest,
            )
            return self._record(
                result.manifest_digest, manifest, result.index_digest, tags, [repo_digest]
            )

    def push(
        self, ref: str, progress: ProgressOption | None = None, tls_verify: bool = True
    ) -> str:
        """Push the image `ref` names to its registry; return the manifest digest."""
        from hull.image.registry import RegistryClient
        from hull.image.registry import push as registry_push

        reference = parse_reference(ref)
        image = self.resolve(ref)
        with RegistryClient.from_environment(tls_verify=tls_verify) as client:
            registry_push(
                reference, self.store, image.manifest_digest, progress=progress, client=client
            )
        if reference.tag:
            with self.db.transaction():
                self.catalog.add_digest(
                    Reference(reference.domain, reference.path, None, image.manifest_digest),
                    image.id,
                )
        return image.manifest_digest

    def tag(self, source: str, target: str) -> ImageRecord:
        image = self.resolve(source)
        ref = parse_tag(target)
        with self.db.transaction():
            self.catalog.set_tag(ref, image.id)
        return image

    def load(
        self, path: Path, platform: Platform | None = None
    ) -> list[tuple[ImageRecord, list[Reference]]]:
        """Load a docker-archive or OCI layout (dir or tar); return each image and its tags."""
        from hull.image import archive

        loaded_out: list[tuple[ImageRecord, list[Reference]]] = []
        with self._writer_lock():
            result = archive.load(self.store, path, platform=platform)
            try:
                for item in result.images:
                    record = self._record(item.manifest_digest, item.manifest, None, item.tags, [])
                    loaded_out.append((record, item.tags))
            except BaseException:
                self._discard_blobs(result.new_blobs, keep={i.id for i, _ in loaded_out})
                raise
        return loaded_out

    def save(
        self, names: list[str], dest: Path | None, fmt: str = "docker", stream: Any = None
    ) -> None:
        """Write images (and the tags named) as a docker-archive or OCI layout."""
        from hull.image import archive

        items: list[archive.SaveItem] = []
        by_id: dict[str, archive.SaveItem] = {}
        for name in names:
            for image, refs in self._save_selection(name):
                item = by_id.get(image.id)
                if item is None:
                    item = archive.SaveItem(
                        manifest_digest=image.manifest_digest,
                        manifest_media_type=image.manifest_media_type,
                        config_digest=image.id,
                        layers=[layer.descriptor() for layer in image.layers],
                        diff_ids=image.diff_ids,
                        tags=[],
                    )
                    by_id[image.id] = item
                    items.append(item)
                item.tags.extend(ref for ref in refs if ref not in item.tags)
        if not items:
            raise ConfigError("nothing to save: name at least one image")
        archive.save(self.store, items, dest, fmt, stream=stream)

    def _save_selection(self, name: str) -> list[tuple[ImageRecord, list[Reference]]]:
        """Docker's rule: a bare repository name saves all its tags; an ID saves no tag."""
        import contextlib

        with contextlib.suppress(ConfigError):
            bare = parse_reference(name, default_tag=False)
            if bare.tag is None and bare.digest is None:
                by_image: dict[str, list[Reference]] = {}
                for ref in self.catalog.tags_in_repository(bare.name):
                    image_id = self.catalog.by_tag(ref)
                    if image_id:
                        by_image.setdefault(image_id, []).append(ref)
                selected = [(self.catalog.get(i), refs) for i, refs in by_image.items()]
                if selected:
                    return [(image, refs) for image, refs in selected if image is not None]
        found = resolve(self.catalog, name)
        return [(found.image, [found.tag] if found.tag else [])]

    def bootstrap(self, kind: str, tag: str | None = None) -> ImageRecord:
        """Build a base image locally (busybox from the host, Debian with mmdebstrap)."""
        from hull.image import bootstrap

        spec = bootstrap.parse_kind(kind)
        ref = parse_tag(tag or spec.default_tag)
        scratch_parent = join(self.paths.root, "tmp")
        os.makedirs(scratch_parent, exist_ok=True)
        with self._writer_lock():
            import tempfile

            with tempfile.TemporaryDirectory(dir=scratch_parent, prefix="bootstrap-") as scratch:
                from pathlib import Path

                built = bootstrap.build(spec, self.store, Path(scratch))
            try:
                return self._record(built.manifest_digest, built.manifest, None, [ref], [])
            except BaseException:
                self._discard_blobs(built.new_blobs, keep=set())
                raise

    def commit(
        self,
        base_image_id: str,
        layer_blob: Path,
        diff_id: str,
        config: dict[str, Any],
        ref: str | None = None,
    ) -> ImageRecord:
        """Record an image made of the base's layers plus one more (`docker commit`).

        layer_blob is a gzipped layer tar whose uncompressed digest is diff_id; config
        is the new image config, whose rootfs this fills in. Blobs are written under
        the writer lock and the image recorded in one transaction, as pull and load do.
        """
        import json

        from hull.oci.digest import DigestVerifier, sha256_digest
        from hull.oci.image import OCI_CONFIG, OCI_LAYER_GZIP, OCI_MANIFEST

        base = self.catalog.get(base_image_id)
        if base is None:
            raise NotFoundError(f"no such image: {base_image_id}")
        tags = [parse_tag(ref)] if ref else []
        verifier = DigestVerifier()
        with open(layer_blob, "rb") as f:
            while chunk := f.read(1 << 20):
                verifier.update(chunk)
        layer = Descriptor(OCI_LAYER_GZIP, verifier.digest(), verifier.size)
        full_config = {
            **config,
            "rootfs": {"type": "layers", "diff_ids": [*base.diff_ids, diff_id]},
        }
        config_raw = json.dumps(full_config, sort_keys=True, separators=(",", ":")).encode()
        new_blobs: list[str] = []
        with self._writer_lock():
            try:
                if not self.store.has(layer.digest):
                    with (
                        self.store.writer(layer.digest, layer.size) as w,
                        open(layer_blob, "rb") as f,
                    ):
                        while chunk := f.read(1 << 20):
                            w.write(chunk)
                        w.commit()
                    new_blobs.append(layer.digest)
                config_digest = sha256_digest(config_raw)
                if not self.store.has(config_digest):
                    self.store.write_bytes(config_raw, config_digest)
                    new_blobs.append(config_digest)
                manifest_doc = {
                    "schemaVersion": 2,
                    "mediaType": OCI_MANIFEST,
                    "config": Descriptor(OCI_CONFIG, config_digest, len(config_raw)).to_dict(),
                    "layers": [
                        *(old.descriptor().to_dict() for old in base.layers),
                        layer.to_dict(),
                    ],
                }
                manifest_raw = json.dumps(
                    manifest_doc, sort_keys=True, separators=(",", ":")
                ).encode()
                manifest_digest = sha256_digest(manifest_raw)
                if not self.store.has(manifest_digest):
                    self.store.write_bytes(manifest_raw, manifest_digest)
                    new_blobs.append(manifest_digest)
                manifest = parse_manifest(manifest_raw, OCI_MANIFEST)
                if not isinstance(manifest, Manifest):
                    raise ConfigError("a committed manifest parsed as an index")
                return self._record(manifest_digest, manifest, None, tags, [])
            except BaseException:
                self._discard_blobs(new_blobs, keep=set())
                raise

    # ---------------------------------------------------------------- removal

    def remove(self, name: str, force: bool = False) -> list[dict[str, str]]:
        """`docker rmi`: untag; delete the image once nothing names it and nothing uses it.

        Returns Docker's events: [{"Untagged": "busybox:latest"}, {"Deleted": "sha256:.."}].
        """
        found = resolve(self.catalog, name)
        image = found.image
        in_use = self.db.image_in_use(image.id)
        refs: list[Reference] = image.tags + image.digests
        events: list[dict[str, str]] = []
        with self.db.transaction():
            named = found.tag or found.digest
            if named is not None:
                if len(refs) == 1 and in_use and not force:
                    raise StateError(
                        f"unable to remove repository reference {name!r} (must force): "
                        f"a container is using its image {image.short_id}"
                    )
                self._drop_ref(named, events)
                remaining = [r for r in refs if r != named]
                if found.tag and not any(r.tag and r.name == named.name for r in remaining):
                    # The repository's last tag went: its digests go too, as in Docker.
                    for ref in [r for r in remaining if r.digest and r.name == named.name]:
                        self._drop_ref(ref, events)
                        remaining.remove(ref)
                if remaining:
                    return events
            else:
                repositories = {r.name for r in refs}
                if len(repositories) > 1 and not force:
                    raise StateError(
                        f"unable to delete {image.short_id} (must be forced): the image is "
                        f"referenced in {len(repositories)} repositories"
                    )
                if in_use and not force:
                    raise StateError(
                        f"unable to delete {image.short_id} (must be forced): the image is "
                        "being used by a container"
                    )
                for ref in refs:
                    self._drop_ref(ref, events)
            if not in_use:
                # A forced removal of an image in use leaves it dangling: its
                # layers are some container's lowerdirs.
                self.catalog.delete(image.id)
                events.append({"Deleted": image.id})
        self.collect_garbage()
        return events

    def _drop_ref(self, ref: Reference, events: list[dict[str, str]]) -> None:
        if ref.digest:
            self.catalog.remove_digest(ref)
        else:
            self.catalog.untag(ref)
        events.append({"Untagged": ref.familiar()})

    def prune(self, all: bool = False) -> dict[str, Any]:
        """Remove dangling images (no tags), or with `all` every image no container uses."""
        deleted: list[dict[str, str]] = []
        reclaimed = 0
        for image in self.catalog.all():
            if self.db.image_in_use(image.id) or (image.tags and not all):
                continue
            with self.db.transaction():
                for ref in image.tags + image.digests:
                    self._drop_ref(ref, deleted)
                self.catalog.delete(image.id)
            deleted.append({"Deleted": image.id})
            reclaimed += image.size
        self.collect_garbage()
        return {"ImagesDeleted": deleted or None, "SpaceReclaimed": reclaimed}

    def collect_garbage(self) -> None:
        """Delete blobs and layer dirs no recorded image refers to."""
        with self._lock(exclusive=True):
            images = self.catalog.all()
            keep_blobs: set[str] = set()
            keep_chains: set[str] = set()
            for image in images:
                keep_blobs |= image.blob_digests()
                keep_chains.update(chain_ids(image.diff_ids))
            for digest in self.store.digests():
                if digest not in keep_blobs:
                    self.store.delete(digest)
            for chain in self.layer_store.chain_ids():
                if chain not in keep_chains:
                    self.layer_store.remove(chain)
            self.store.sweep()
            self.layer_store.sweep()
            _sweep_scratch(join(self.paths.root, "tmp"))

    # -------------------------------------------------------------- internals

    def _read_manifest(self, digest: str) -> Manifest:
        parsed = parse_manifest(self.store.read_bytes(digest), None)
        if not isinstance(parsed, Manifest):
            raise ConfigError(f"{digest} is an image index, not an image manifest")
        return parsed

    def _record(
        self,
        manifest_digest: str,
        manifest: Manifest,
        index_digest: str | None,
        tags: list[Reference],
        repo_digests: list[Reference],
    ) -> ImageRecord:
        """Unpack the layers, then record the image and its names in one transaction."""
        import json

        config_raw = self.store.read_bytes(manifest.config.digest)
        config = parse_config(config_raw)
        if len(config.rootfs_diff_ids) != len(manifest.layers):
            raise ConfigError(
                f"image {manifest.config.digest}: the manifest has {len(manifest.layers)} layers "
                f"but the config lists {len(config.rootfs_diff_ids)} diff_ids"
            )
        dirs = self.layer_store.ensure(manifest.layers, config.rootfs_diff_ids)
        layers = [
            LayerRecord(desc.digest, desc.media_type, desc.size, diff_id, tree_size(path))
            for desc, diff_id, path in zip(
                manifest.layers, config.rootfs_diff_ids, dirs, strict=True
            )
        ]
        record = ImageRecord(
            id=manifest.config.digest,
            manifest_digest=manifest_digest,
            manifest_media_type=manifest.media_type,
            index_digest=index_digest,
            size=sum(layer.unpacked_size for layer in layers),
            created=config.created,
            platform=str(config.platform),
            config=json.loads(config_raw),
            layers=layers,
            added=time.time(),
        )
        with self.db.transaction():
            self.catalog.put(record)
            for ref in tags:
                self.catalog.set_tag(ref, record.id)
            for ref in repo_digests:
                self.catalog.add_digest(ref, record.id)
        stored = self.catalog.get(record.id)
        assert stored is not None
        return stored

    def _discard_blobs(self, digests: list[str], keep: set[str]) -> None:
        """Undo the blobs an aborted load or bootstrap added, unless an image uses them."""
        referenced: set[str] = set()
        for image in self.catalog.all():
            referenced |= image.blob_digests()
        for digest in digests:
            if digest not in referenced and digest not in keep:
                self.store.delete(digest)

    def _writer_lock(self) -> FileLock:
        return self._lock(exclusive=False)

    def _lock(self, exclusive: bool) -> FileLock:
        """Writers share the image lock; garbage collection takes it alone."""
        return FileLock(join(self.paths.root, "images.lock"), exclusive)

    list = list_images  # the engine's verb, as the API names it


SCRATCH_MAX_AGE = 24 * 3600


def _sweep_scratch(scratch: str) -> None:
    """Remove what a crashed bootstrap or load left in root/tmp (old entries only:
    a `hull load` from stdin spools there before it takes the image lock)."""
    if not os.path.isdir(scratch):
        return
    cutoff = time.time() - SCRATCH_MAX_AGE
    for entry in os.scandir(scratch):
        try:
            if entry.stat(follow_symlinks=False).st_mtime < cutoff:
                if entry.is_dir(follow_symlinks=False):
                    import shutil

                    shutil.rmtree(entry.path, ignore_errors=True)
                else:
                    os.unlink(entry.path)
        except FileNotFoundError:
            pass


def tree_size(path: str | os.PathLike[str]) -> int:
    """Bytes of files and symlinks under path (the figure `docker images` shows)."""
    total = 0
    for dirpath, _dirnames, filenames in os.walk(path):
        for name in filenames:
            try:
                total += os.lstat(os.path.join(dirpath, name)).st_size
            except FileNotFoundError:
                pass
    return total


# ---------------------------------------------------------------- documents

_DOCKER_CONFIG_DEFAULTS: dict[str, Any] = {
    "Hostname": "",
    "Domainname": "",
    "User": "",
    "AttachStdin": False,
    "AttachStdout": False,
    "AttachStderr": False,
    "Tty": False,
    "OpenStdin": False,
    "StdinOnce": False,
    "Env": None,
    "Cmd": None,
    "Image": "",
    "Volumes": None,
    "WorkingDir": "",
    "Entrypoint": None,
    "OnBuild": None,
    "Labels": None,
}


def inspect_document(image: ImageRecord) -> dict[str, Any]:
    """`docker image inspect` for one image."""
    config = image.config
    os_name, _, arch_variant = image.platform.partition("/")
    arch, _, variant = arch_variant.partition("/")
    doc: dict[str, Any] = {
        "Id": image.id,
        "RepoTags": [ref.familiar() for ref in image.tags],
        "RepoDigests": [ref.familiar() for ref in image.digests],
        "Parent": "",
        "Comment": _comment(config),
        "Created": image.created or "",
        "DockerVersion": config.get("docker_version", ""),
        "Author": config.get("author", ""),
        "Config": {**_DOCKER_CONFIG_DEFAULTS, **(config.get("config") or {})},
        "Architecture": arch,
        "Os": os_name,
        "Size": image.size,
        "GraphDriver": {"Name": "overlay", "Data": None},
        "RootFS": {"Type": "layers", "Layers": image.diff_ids},
        "History": config.get("history") or [],
        "Metadata": {"LastTagTime": _iso(image.added)},
        "Descriptor": {
            "mediaType": image.manifest_media_type,
            "digest": image.manifest_digest,
        },
    }
    if variant:
        doc["Variant"] = variant
    return doc


def _comment(config: dict[str, Any]) -> str:
    history = config.get("history") or []
    return str(history[-1].get("comment", "")) if history else ""


def _iso(ts: float) -> str:
    from datetime import UTC, datetime

    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def history_document(image: ImageRecord) -> list[dict[str, Any]]:
    """`docker history`: newest first; entries with a layer carry its unpacked size."""
    history = list(image.config.get("history") or [])
    if not history:
        history = [{"created": image.created or ""} for _ in image.layers]
    sizes = iter(layer.unpacked_size for layer in image.layers)
    rows: list[dict[str, Any]] = []
    for entry in history:
        size = 0 if entry.get("empty_layer") else next(sizes, 0)
        rows.append(
            {
                "Id": "<missing>",
                "Created": _epoch(entry.get("created")),
                "CreatedBy": entry.get("created_by", ""),
                "Tags": None,
                "Size": size,
                "Comment": entry.get("comment", ""),
            }
        )
    rows.reverse()
    if rows:
        rows[0]["Id"] = image.id
        rows[0]["Tags"] = [ref.familiar() for ref in image.tags] or None
    return rows


def _epoch(created: Any) -> int:
    """Seconds since the epoch of an RFC 3339 timestamp; 0 when absent or unreadable."""
    if not isinstance(created, str) or not created:
        return 0
    import re
    from datetime import datetime

    text = created.strip().replace("Z", "+00:00")
    # Python before 3.11's full ISO support chokes on nanoseconds: trim to micro.
    text = re.sub(r"(\.\d{6})\d+", r"\1", text)
    try:
        return int(datetime.fromisoformat(text).timestamp())
    except ValueError:
        return 0


__all__ = [
    "DEFAULT_TAG",
    "ImageCatalog",
    "ImageRecord",
    "ImageService",
    "LayerRecord",
    "Resolved",
    "inspect_document",
    "parse_tag",
    "resolve",
    "short_id",
]
