"""Pull an image from a registry into the content store.

Resolve the reference (mirrors first), fetch the manifest or index, pick the
platform's manifest from an index, then download the config and the layers, three
at a time, each verified against its digest and size. Blobs go into the store
before the manifests that name them, so a manifest in the store always has its
blobs. An interrupted blob stays a partial in the store and the next pull resumes
it with an HTTP Range request.
"""

from __future__ import annotations

import threading
from concurrent.futures import FIRST_EXCEPTION, ThreadPoolExecutor, wait
from dataclasses import dataclass

from hull.errors import ConfigError, HullError
from hull.image.registry.client import FetchedManifest, RegistryClient, Repository
from hull.image.registry.errors import RegistryError
from hull.image.registry.progress import AUTO, Progress, ProgressOption, make_progress, short_digest
from hull.image.store import ContentStore
from hull.oci.image import (
    Descriptor,
    Index,
    Manifest,
    Platform,
    host_platform,
    parse_manifest,
    parse_platform,
    select_manifest,
)
from hull.oci.reference import Reference, parse_reference

MAX_PARALLEL_DOWNLOADS = 3


@dataclass(frozen=True)
class PullResult:
    """What a pull stored: the platform's manifest, its config, and the index if any."""

    reference: Reference
    manifest_digest: str
    manifest: Manifest
    config_digest: str
    index_digest: str | None
    registry: str  # the host it came from: a mirror or the reference's registry


class _Cancelled(Exception):
    """Another download failed; stop this one (its partial stays for a later pull)."""


def pull(
    reference: str | Reference,
    store: ContentStore,
    platform: str | Platform | None = None,
    progress: ProgressOption = AUTO,
    client: RegistryClient | None = None,
) -> PullResult:
    """Pull `reference` for `platform` (default: this host's) into `store`."""
    ref = parse_reference(reference) if isinstance(reference, str) else reference
    wanted = parse_platform(platform) if isinstance(platform, str) else platform
    own_client = client is None
    registry_client = client or RegistryClient.from_environment()
    sink = make_progress(progress)
    try:
        repo, top = _resolve(registry_client, ref)
        parsed = parse_manifest(top.raw, top.media_type)
        index_raw: FetchedManifest | None = None
        if isinstance(parsed, Index):
            index_raw = top
            chosen = select_manifest(parsed, wanted or host_platform())
            fetched = repo.get_manifest(chosen.digest)
            child = parse_manifest(fetched.raw, fetched.media_type or chosen.media_type)
            if isinstance(child, Index):
                raise ConfigError(
                    f"{ref}: the index entry for {chosen.digest} is itself an index; "
                    "nested indexes are not supported"
                )
            manifest, manifest_raw = child, fetched
        else:
            manifest, manifest_raw = parsed, top
        _download_blobs(repo, store, [manifest.config, *manifest.layers], sink)
        store.write_bytes(manifest_raw.raw, manifest_raw.digest)
        if index_raw is not None:
            store.write_bytes(index_raw.raw, index_raw.digest)
        return PullResult(
            reference=ref,
            manifest_digest=manifest_raw.digest,
            manifest=manifest,
            config_digest=manifest.config.digest,
            index_digest=index_raw.digest if index_raw else None,
            registry=repo.host,
        )
    finally:
        sink.close()
        if own_client:
            registry_client.close()


def _resolve(client: RegistryClient, ref: Reference) -> tuple[Repository, FetchedManifest]:
    """Fetch the top manifest from the first endpoint that has it: mirrors, then origin.

    A mirror that is down, lacks the image, refuses us or sends bad content is
    skipped, as Docker does; the registry itself has the last word, and its error
    is the one raised.
    """
    candidates = client.endpoints(ref)
    for repo in candidates[:-1]:
        try:
            return repo, repo.get_manifest(ref.reference)
        except RegistryError:
            continue
    origin = candidates[-1]
    return origin, origin.get_manifest(ref.reference)


def _download_blobs(
    repo: Repository, store: ContentStore, blobs: list[Descriptor], sink: Progress
) -> None:
    """Fetch each distinct blob not yet in the store, up to three at once."""
    unique: dict[str, Descriptor] = {}
    for desc in blobs:
        unique.setdefault(desc.digest, desc)
    cancel = threading.Event()
    todo: list[Descriptor] = []
    for desc in unique.values():
        if store.has(desc.digest):
            sink.finish(short_digest(desc.digest), "Already exists")
        else:
            sink.start(short_digest(desc.digest), "Pulling fs layer", desc.size)
            todo.append(desc)
    if not todo:
        return
    with ThreadPoolExecutor(MAX_PARALLEL_DOWNLOADS, thread_name_prefix="hull-pull") as pool:
        futures = [pool.submit(_download_one, repo, store, desc, sink, cancel) for desc in todo]
        done, _ = wait(futures, return_when=FIRST_EXCEPTION)
        failed = [f for f in done if f.exception() is not None]
        if failed:
            cancel.set()
            for future in futures:
                future.cancel()
            wait(futures)
            errors = [f.exception() for f in futures if not f.cancelled() and f.exception()]
            real = [e for e in errors if not isinstance(e, _Cancelled)]
            first = real[0] if real else errors[0]
            assert first is not None
            raise first


def _download_one(
    repo: Repository,
    store: ContentStore,
    desc: Descriptor,
    sink: Progress,
    cancel: threading.Event,
) -> None:
    key = short_digest(desc.digest)

    def report(done: int) -> None:
        if cancel.is_set():
            raise _Cancelled(desc.digest)
        sink.update(key, done)

    sink.start(key, "Downloading", desc.size)
    try:
        repo.fetch_blob(store, desc.digest, desc.size, report)
    except HullError:
        sink.finish(key, "Download failed")
        raise
    sink.finish(key, "Pull complete")
