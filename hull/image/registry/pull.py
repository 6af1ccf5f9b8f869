"""Pull an image from a registry into the content store.

Resolve the reference (mirrors first), fetch the manifest or index, pick the
platform's manifest from an index, then download the config and then the layers,
three at a time, each verified against its digest and size. Blobs go into the
store before the manifests that name them, so a manifest in the store always has
its blobs. An interrupted blob stays a partial in the store and the next pull
resumes it with an HTTP Range request.

Layers are unpacked while they download (unless unpack=False): each layer's bytes
also go to a StreamedLayer of the layer store beside the content store, which
publishes the unpacked layer only once its blob digest, size and diff ID (from the
config, fetched first) all verify. That unpack is an optimisation only: if it
cannot be done or fails, the download goes on and LayerStore.ensure() unpacks the
stored blob later, reporting any error then.
"""

from __future__ import annotations

import threading
from concurrent.futures import FIRST_EXCEPTION, ThreadPoolExecutor, wait
from dataclasses import dataclass
from typing import TYPE_CHECKING

from hull.errors import ConfigError, HullError
from hull.image.registry.client import FetchedManifest, RegistryClient, Repository
from hull.image.registry.errors import RegistryError
from hull.image.registry.progress import AUTO, Progress, ProgressOption, make_progress, short_digest
from hull.image.store import ContentStore
from hull.oci.image import (
    LAYER_TYPES,
    Descriptor,
    Index,
    Manifest,
    Platform,
    chain_ids,
    host_platform,
    parse_config,
    parse_manifest,
    parse_platform,
    select_manifest,
)
from hull.oci.reference import Reference, parse_reference

if TYPE_CHECKING:
    from hull.image.layers import LayerStore, StreamedLayer

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
    unpack: bool | LayerStore = True,
) -> PullResult:
    """Pull `reference` for `platform` (default: this host's) into `store`.

    `unpack`: the layer store to unpack layers into while they download; True (the
    default) means the one beside the content store (<store.root>/layers, as the
    engine lays them out), False downloads blobs only.
    """
    ref = parse_reference(reference) if isinstance(reference, str) else reference
    layer_store = _layer_store(store, unpack)
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
        _download_blobs(repo, store, [manifest.config], sink)
        streams = _stream_plan(store, manifest, layer_store)
        _download_blobs(repo, store, manifest.layers, sink, streams)
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


def _layer_store(store: ContentStore, unpack: bool | LayerStore) -> LayerStore | None:
    if unpack is False:
        return None
    if unpack is True:
        from hull.image.layers import LayerStore  # tarfile and friends only when unpacking

        return LayerStore(store.root, store)
    return unpack


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


@dataclass(frozen=True)
class _StreamTarget:
    """Where a layer blob unpacks while it downloads."""

    layers: LayerStore
    diff_id: str
    chain_id: str


def _stream_plan(
    store: ContentStore, manifest: Manifest, layers: LayerStore | None
) -> dict[str, _StreamTarget]:
    """Layer blobs to unpack on the fly, by digest: those not unpacked yet.

    Needs the config (for the diff IDs); when it is unreadable or disagrees with the
    manifest there is no plan, and the checks after the pull say what is wrong.
    """
    if layers is None:
        return {}
    try:
        diff_ids = parse_config(store.read_bytes(manifest.config.digest)).rootfs_diff_ids
        if len(diff_ids) != len(manifest.layers):
            return {}
        chains = chain_ids(diff_ids)
    except HullError:
        return {}
    plan: dict[str, _StreamTarget] = {}
    for desc, diff_id, chain_id in zip(manifest.layers, diff_ids, chains, strict=True):
        if desc.media_type in LAYER_TYPES and desc.digest not in plan and not layers.has(chain_id):
            plan[desc.digest] = _StreamTarget(layers, diff_id, chain_id)
    return plan


def _download_blobs(
    repo: Repository,
    store: ContentStore,
    blobs: list[Descriptor],
    sink: Progress,
    streams: dict[str, _StreamTarget] | None = None,
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
    plan = streams or {}
    with ThreadPoolExecutor(MAX_PARALLEL_DOWNLOADS, thread_name_prefix="hull-pull") as pool:
        futures = [
            pool.submit(_download_one, repo, store, desc, sink, cancel, plan.get(desc.digest))
            for desc in todo
        ]
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
    target: _StreamTarget | None = None,
) -> None:
    key = short_digest(desc.digest)

    def report(done: int) -> None:
        if cancel.is_set():
            raise _Cancelled(desc.digest)
        sink.update(key, done)

    streamed = _start_stream(desc, target)
    sink.start(key, "Downloading", desc.size)
    downloaded = False
    try:
        repo.fetch_blob(store, desc.digest, desc.size, report, tee=streamed)
        downloaded = True
    except HullError:
        sink.finish(key, "Download failed")
        raise
    finally:
        if streamed is not None and not downloaded:
            streamed.abort()
    if streamed is not None:
        try:
            streamed.commit()
        except (HullError, OSError):
            pass  # LayerStore.ensure() unpacks the stored blob again and says why it fails
    sink.finish(key, "Pull complete")


def _start_stream(desc: Descriptor, target: _StreamTarget | None) -> StreamedLayer | None:
    if target is None:
        return None
    try:
        return target.layers.stream(desc, target.diff_id, target.chain_id)
    except (HullError, OSError):
        return None  # e.g. a layers dir we cannot write: unpack after the download
