"""Push an image from the content store to a registry.

Blobs first (layers and config, three at a time), then the manifest that names
them, then the index if the pushed digest is one: a registry refuses a manifest
whose blobs it lacks. A blob the repository already has is skipped; one that
another repository of the same registry has is mounted (`mount_from`) instead of
uploaded, when the registry agrees (201), else uploaded as usual (202).
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from hull.errors import ConfigError, HullError, NotFoundError
from hull.image.registry.client import RegistryClient, Repository
from hull.image.registry.progress import AUTO, Progress, ProgressOption, make_progress, short_digest
from hull.image.store import ContentStore
from hull.oci.image import Descriptor, Index, Manifest, parse_manifest
from hull.oci.reference import Reference, parse_reference

MAX_PARALLEL_UPLOADS = 3

_STATUS = {"exists": "Layer already exists", "pushed": "Pushed"}


@dataclass(frozen=True)
class PushResult:
    reference: Reference
    digest: str  # of the manifest or index pushed under the reference
    size: int


def push(
    reference: str | Reference,
    store: ContentStore,
    manifest_digest: str,
    progress: ProgressOption = AUTO,
    client: RegistryClient | None = None,
    mount_from: str | None = None,
) -> PushResult:
    """Push the manifest (or index) `manifest_digest` and all it names to `reference`.

    `mount_from` names another repository of the same registry that may already hold
    the blobs (`other/repo` or `host/other/repo`); it is a hint, never required.
    """
    ref = parse_reference(reference) if isinstance(reference, str) else reference
    if ref.digest and ref.digest != manifest_digest:
        raise ConfigError(f"cannot push {manifest_digest} as {ref}: the digests differ")
    own_client = client is None
    registry_client = client or RegistryClient.from_environment()
    sink = make_progress(progress)
    try:
        repo = registry_client.repository(ref)
        mount = _mount_source(ref, mount_from)
        raw = store.read_bytes(manifest_digest)
        top = parse_manifest(raw, None)
        if isinstance(top, Index):
            for child in top.manifests:
                _push_child(repo, store, child, mount, sink)
        else:
            _push_blobs(repo, store, [top.config, *top.layers], mount, sink)
        target = ref.tag or manifest_digest
        digest = repo.put_manifest(target, raw, top.media_type)
        return PushResult(ref, digest, len(raw))
    finally:
        sink.close()
        if own_client:
            registry_client.close()


def _mount_source(ref: Reference, mount_from: str | None) -> str | None:
    """The repository path to mount from, if the hint names one on ref's registry.

    `other/repo` means that path on ref's own registry; `host:5000/other/repo` counts
    only if the host is ref's (mounting works within one registry).
    """
    if not mount_from:
        return None
    hint = parse_reference(mount_from, default_tag=False)
    first, slash, _ = mount_from.partition("/")
    names_registry = bool(slash) and ("." in first or ":" in first or first == "localhost")
    if hint.domain == ref.domain:
        path: str | None = hint.path
    elif names_registry:
        path = None  # another registry: nothing to mount from
    else:  # a bare path, meant on ref's registry: keep it as written, minus tag/digest
        path = mount_from.split("@", 1)[0]
        if hint.tag:
            path = path[: -len(hint.tag) - 1]
    return path if path != ref.path else None


def _push_child(
    repo: Repository, store: ContentStore, child: Descriptor, mount: str | None, sink: Progress
) -> None:
    """Push one manifest of an index (by digest), or check the registry has it already."""
    if not store.has(child.digest):
        if repo.head_manifest(child.digest) is None:
            raise NotFoundError(
                f"the index names manifest {child.digest}, which is neither in the local "
                f"store nor on registry {repo.host}"
            )
        return
    raw = store.read_bytes(child.digest)
    manifest = parse_manifest(raw, child.media_type)
    if not isinstance(manifest, Manifest):
        raise ConfigError(f"manifest {child.digest} is an index inside an index: not supported")
    _push_blobs(repo, store, [manifest.config, *manifest.layers], mount, sink)
    repo.put_manifest(child.digest, raw, manifest.media_type)


def _push_blobs(
    repo: Repository,
    store: ContentStore,
    blobs: list[Descriptor],
    mount: str | None,
    sink: Progress,
) -> None:
    unique: dict[str, Descriptor] = {}
    for desc in blobs:
        unique.setdefault(desc.digest, desc)
    for desc in unique.values():
        if not store.has(desc.digest):
            raise NotFoundError(f"blob {desc.digest} is not in the local content store")
        actual = store.size(desc.digest)
        if actual != desc.size:
            raise ConfigError(
                f"blob {desc.digest} is {actual} bytes in the store, but the manifest says "
                f"{desc.size}"
            )
        sink.start(short_digest(desc.digest), "Preparing", desc.size)
    with ThreadPoolExecutor(MAX_PARALLEL_UPLOADS, thread_name_prefix="hull-push") as pool:
        futures = [
            pool.submit(_push_one, repo, store, desc, mount, sink) for desc in unique.values()
        ]
        for future in futures:
            future.result()  # re-raises the first failure once all have ended


def _push_one(
    repo: Repository, store: ContentStore, desc: Descriptor, mount: str | None, sink: Progress
) -> None:
    key = short_digest(desc.digest)
    sink.start(key, "Pushing", desc.size)
    try:
        outcome = repo.push_blob(
            store, desc.digest, desc.size, mount, lambda done: sink.update(key, done)
        )
    except HullError:
        sink.finish(key, "Push failed")
        raise
    sink.finish(key, f"Mounted from {mount}" if outcome == "mounted" else _STATUS[outcome])
