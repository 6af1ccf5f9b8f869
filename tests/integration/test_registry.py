"""The registry client against a real registry (Debian's docker-registry 2.8.2)."""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import tarfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from hull.errors import NotFoundError
from hull.image.registry import (
    Credentials,
    RegistryAuthError,
    RegistryClient,
    RegistryUnreachableError,
    pull,
    push,
    store_credentials,
)
from hull.image.registry.client import Repository
from hull.image.registry.mirrors import make_endpoint
from hull.image.registry.progress import PlainProgress
from hull.image.store import ContentStore
from hull.oci.digest import sha256_digest
from hull.oci.image import (
    OCI_CONFIG,
    OCI_INDEX,
    OCI_LAYER_GZIP,
    OCI_LAYER_TAR,
    OCI_MANIFEST,
    Index,
    parse_manifest,
)
from tests.integration.conftest import AuthRegistry
from tests.integration.registry_server import RegistryServer, free_port

# ------------------------------------------------------------------ test images


@dataclass
class BuiltImage:
    manifest_digest: str
    config_digest: str
    layer_digests: list[str]

    @property
    def blobs(self) -> list[str]:
        return [self.config_digest, *self.layer_digests]


def make_layer(files: dict[str, bytes], compress: bool = True) -> tuple[bytes, str]:
    """A layer blob (tar, gzip'd unless told) and its diff_id."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            info.mode = 0o644
            tar.addfile(info, io.BytesIO(data))
    raw = buf.getvalue()
    return (gzip.compress(raw, mtime=0) if compress else raw), sha256_digest(raw)


def store_image(
    store: ContentStore, layers: list[tuple[bytes, str, str]], arch: str = "amd64"
) -> BuiltImage:
    """Write layers (blob, diff_id, media type), a config and a manifest into the store."""
    layer_descs = []
    for blob, _, media_type in layers:
        digest = store.write_bytes(blob)
        layer_descs.append({"mediaType": media_type, "digest": digest, "size": len(blob)})
    config = json.dumps(
        {
            "architecture": arch,
            "os": "linux",
            "config": {"Cmd": ["/bin/sh"]},
            "rootfs": {"type": "layers", "diff_ids": [diff_id for _, diff_id, _ in layers]},
        }
    ).encode()
    config_digest = store.write_bytes(config)
    manifest = json.dumps(
        {
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "config": {"mediaType": OCI_CONFIG, "digest": config_digest, "size": len(config)},
            "layers": layer_descs,
        }
    ).encode()
    return BuiltImage(
        store.write_bytes(manifest), config_digest, [d["digest"] for d in layer_descs]
    )


def small_image(store: ContentStore, tag: str = "one", arch: str = "amd64") -> BuiltImage:
    first, first_id = make_layer({"etc/hello": f"hello {tag} {arch}\n".encode()})
    second, second_id = make_layer({"bin/tool": os.urandom(4096)})
    return store_image(
        store,
        [(first, first_id, OCI_LAYER_GZIP), (second, second_id, OCI_LAYER_GZIP)],
        arch,
    )


@dataclass
class Exchange:
    method: str
    url: httpx.URL
    range: str | None
    status: int


class Recorder:
    """An httpx event hook that records every request the client made."""

    def __init__(self) -> None:
        self.exchanges: list[Exchange] = []

    def hooks(self) -> dict[str, list[Any]]:
        return {"response": [self._record]}

    def _record(self, response: httpx.Response) -> None:
        request = response.request
        self.exchanges.append(
            Exchange(
                request.method, request.url, request.headers.get("range"), response.status_code
            )
        )

    def count(self, method: str) -> int:
        return sum(1 for e in self.exchanges if e.method == method)


def new_store(tmp_path: Path, name: str) -> ContentStore:
    return ContentStore(tmp_path / name)


# ------------------------------------------------------------------ tests


def test_push_then_pull_round_trip(registry: RegistryServer, tmp_path: Path) -> None:
    source = new_store(tmp_path, "source")
    image = small_image(source)
    ref = f"{registry.host}/hull-test/roundtrip:v1"
    with RegistryClient() as client:
        pushed = push(ref, source, image.manifest_digest, progress=None, client=client)
        assert pushed.digest == image.manifest_digest

        target = new_store(tmp_path, "target")
        lines = io.StringIO()
        result = pull(ref, target, progress=PlainProgress(lines), client=client)

        assert result.manifest_digest == image.manifest_digest
        assert result.config_digest == image.config_digest
        assert result.index_digest is None
        assert result.registry == registry.host
        assert [layer.digest for layer in result.manifest.layers] == image.layer_digests
        for digest in [image.manifest_digest, *image.blobs]:
            assert target.read_bytes(digest) == source.read_bytes(digest)
        assert f"{image.layer_digests[0][7:19]}: Pull complete" in lines.getvalue()

        again = io.StringIO()
        pull(ref, target, progress=PlainProgress(again), client=client)
        assert f"{image.layer_digests[1][7:19]}: Already exists" in again.getvalue()

        repo = client.repository(result.reference)
        assert repo.list_tags() == ["v1"]


def test_pull_by_digest_and_unknown_digest(registry: RegistryServer, tmp_path: Path) -> None:
    source = new_store(tmp_path, "source")
    image = small_image(source)
    with RegistryClient() as client:
        push(f"{registry.host}/hull-test/bydigest:v1", source, image.manifest_digest,
             progress=None, client=client)  # fmt: skip
        target = new_store(tmp_path, "target")
        result = pull(
            f"{registry.host}/hull-test/bydigest@{image.manifest_digest}",
            target,
            progress=None,
            client=client,
        )
        assert result.manifest_digest == image.manifest_digest
        assert target.has(image.layer_digests[1])

        missing = "sha256:" + "0" * 64
        with pytest.raises(NotFoundError, match="manifest unknown"):
            pull(f"{registry.host}/hull-test/bydigest@{missing}", target, progress=None,
                 client=client)  # fmt: skip
        with pytest.raises(NotFoundError):
            pull(f"{registry.host}/hull-test/nosuchrepo:v1", target, progress=None, client=client)


def test_pull_index_selects_platform(registry: RegistryServer, tmp_path: Path) -> None:
    source = new_store(tmp_path, "source")
    amd64 = small_image(source, arch="amd64")
    arm64 = small_image(source, arch="arm64")
    index = json.dumps(
        {
            "schemaVersion": 2,
            "mediaType": OCI_INDEX,
            "manifests": [
                {
                    "mediaType": OCI_MANIFEST,
                    "digest": image.manifest_digest,
                    "size": source.size(image.manifest_digest),
                    "platform": {"os": "linux", "architecture": arch},
                }
                for image, arch in ((arm64, "arm64"), (amd64, "amd64"))
            ],
        }
    ).encode()
    index_digest = source.write_bytes(index)
    ref = f"{registry.host}/hull-test/multi:v1"
    with RegistryClient() as client:
        pushed = push(ref, source, index_digest, progress=None, client=client)
        assert pushed.digest == index_digest

        target = new_store(tmp_path, "target")
        result = pull(ref, target, platform="linux/amd64", progress=None, client=client)
        assert result.index_digest == index_digest
        assert result.manifest_digest == amd64.manifest_digest
        assert isinstance(parse_manifest(target.read_bytes(index_digest), None), Index)
        assert all(target.has(d) for d in amd64.blobs)
        assert not any(target.has(d) for d in arm64.blobs)

        other = pull(ref, new_store(tmp_path, "arm"), platform="linux/arm64", progress=None,
                     client=client)  # fmt: skip
        assert other.manifest_digest == arm64.manifest_digest


def test_basic_auth_good_and_bad_credentials(
    basic_registry: AuthRegistry, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    host = basic_registry.server.host
    ((user, password),) = basic_registry.users.items()
    source = new_store(tmp_path, "source")
    image = small_image(source)
    ref = f"{host}/hull-test/basic:v1"

    good = {host: Credentials(user, password)}
    with RegistryClient(credentials=good.get) as client:
        push(ref, source, image.manifest_digest, progress=None, client=client)
        result = pull(ref, new_store(tmp_path, "target"), progress=None, client=client)
        assert result.manifest_digest == image.manifest_digest

    bad = {host: Credentials(user, "wrong")}
    with RegistryClient(credentials=bad.get) as client:
        with pytest.raises(RegistryAuthError, match="rejected the credentials of user 'alice'"):
            pull(ref, new_store(tmp_path, "bad"), progress=None, client=client)

    with RegistryClient(credentials=lambda host: None) as client:
        with pytest.raises(RegistryAuthError, match=f"run `hull login {host}`"):
            pull(ref, new_store(tmp_path, "anon"), progress=None, client=client)

    # `hull login` stores credentials in config.json; the default client reads them there.
    monkeypatch.setenv("HULL_CONFIG", str(tmp_path / "hull-config"))
    store_credentials(host, user, "wrong")
    with RegistryClient() as client, pytest.raises(RegistryAuthError):
        client.login(host)
    store_credentials(host, user, password)
    with RegistryClient() as client:
        client.login(host)
        pulled = pull(ref, new_store(tmp_path, "stored"), progress=None, client=client)
        assert pulled.manifest_digest == image.manifest_digest


def test_token_auth_round_trip_and_mount(token_registry: AuthRegistry, tmp_path: Path) -> None:
    host = token_registry.server.host
    tokens = token_registry.tokens
    assert tokens is not None
    ((user, password),) = token_registry.users.items()
    source = new_store(tmp_path, "source")
    image = small_image(source)
    creds = {host: Credentials(user, password)}

    recorder = Recorder()
    with RegistryClient(credentials=creds.get, event_hooks=recorder.hooks()) as client:
        push(f"{host}/team/app:v1", source, image.manifest_digest, progress=None, client=client)
        assert any("repository:team/app:pull,push" in r.scopes for r in tokens.requests)

        result = pull(f"{host}/team/app:v1", new_store(tmp_path, "t"), progress=None,
                      client=client)  # fmt: skip
        assert result.manifest_digest == image.manifest_digest

        # The token is cached per scope: the pull asked the token server at most once more.
        pull_tokens = [r for r in tokens.requests if r.scopes == ["repository:team/app:pull"]]
        assert len(pull_tokens) == 1

        recorder.exchanges.clear()
        push(f"{host}/team/copy:v1", source, image.manifest_digest, progress=None,
             client=client, mount_from="team/app")  # fmt: skip
        mounts = [e for e in recorder.exchanges if e.method == "POST" and "mount" in str(e.url)]
        assert mounts and all(e.status == 201 for e in mounts)
        assert recorder.count("PATCH") == 0
        assert any("repository:team/app:pull" in r.scopes for r in tokens.requests)

    # `hull login` against a token registry: the token server checks the password.
    with RegistryClient(credentials=creds.get) as client:
        client.login(host)
    with RegistryClient(credentials={host: Credentials(user, "bad")}.get) as client:
        with pytest.raises(RegistryAuthError, match="token server refused"):
            client.login(host)


def test_token_auth_refuses_bad_password_and_anonymous(
    token_registry: AuthRegistry, tmp_path: Path
) -> None:
    host = token_registry.server.host
    ((user, _),) = token_registry.users.items()
    store = new_store(tmp_path, "s")
    bad = {host: Credentials(user, "nope")}
    with RegistryClient(credentials=bad.get) as client:
        with pytest.raises(RegistryAuthError, match="token server refused user 'bob'"):
            pull(f"{host}/team/app:v1", store, progress=None, client=client)
    with RegistryClient(credentials=lambda h: None) as client:
        with pytest.raises(RegistryAuthError, match="unauthorized"):
            pull(f"{host}/team/app:v1", store, progress=None, client=client)


def test_cross_repository_mount_skips_upload(registry: RegistryServer, tmp_path: Path) -> None:
    source = new_store(tmp_path, "source")
    image = small_image(source)
    recorder = Recorder()
    with RegistryClient(event_hooks=recorder.hooks()) as client:
        push(f"{registry.host}/a/base:v1", source, image.manifest_digest, progress=None,
             client=client)  # fmt: skip
        assert recorder.count("PATCH") == len(image.blobs)

        recorder.exchanges.clear()
        lines = io.StringIO()
        push(f"{registry.host}/b/derived:v1", source, image.manifest_digest,
             progress=PlainProgress(lines), client=client, mount_from="a/base")  # fmt: skip
        mounts = [e for e in recorder.exchanges if e.method == "POST"]
        assert len(mounts) == len(image.blobs)
        assert {e.status for e in mounts} <= {201, 202}
        mounted = [e for e in mounts if e.status == 201]
        # Every 201 saved an upload; a 202 (mount refused) fell back to one.
        assert recorder.count("PATCH") == len(mounts) - len(mounted)
        assert mounted, "the registry mounted nothing"
        assert "Mounted from a/base" in lines.getvalue()

        result = pull(f"{registry.host}/b/derived:v1", new_store(tmp_path, "t"), progress=None,
                      client=client)  # fmt: skip
        assert result.manifest_digest == image.manifest_digest


class _HookedWriter:
    """Wraps a BlobWriter and calls `trigger` once `after` bytes went through it."""

    def __init__(self, inner: Any, after: int, trigger: Any) -> None:
        self.inner = inner
        self.after = after
        self.trigger = trigger

    @property
    def offset(self) -> int:
        return int(self.inner.offset)

    def write(self, chunk: bytes) -> None:
        self.inner.write(chunk)
        if self.trigger is not None and self.inner.offset >= self.after:
            trigger, self.trigger = self.trigger, None
            trigger()

    def commit(self) -> str:
        return str(self.inner.commit())

    def __enter__(self) -> _HookedWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.inner.__exit__(*exc)


class KillingStore(ContentStore):
    """A content store that runs `trigger` after `after` bytes of blob `target`."""

    def __init__(self, root: Path, target: str, after: int, trigger: Any) -> None:
        super().__init__(root)
        self.target, self.after, self.trigger = target, after, trigger

    def writer(self, expected_digest: str, expected_size: int | None = None) -> Any:
        inner = super().writer(expected_digest, expected_size)
        if expected_digest != self.target:
            return inner
        return _HookedWriter(inner, self.after, self.trigger)


def test_interrupted_blob_resumes_with_range(registry: RegistryServer, tmp_path: Path) -> None:
    source = new_store(tmp_path, "source")
    big, big_id = make_layer({"data/random.bin": os.urandom(20 * 1024 * 1024)}, compress=False)
    image = store_image(source, [(big, big_id, OCI_LAYER_TAR)])
    ref = f"{registry.host}/hull-test/big:v1"
    with RegistryClient() as client:
        push(ref, source, image.manifest_digest, progress=None, client=client)

    layer = image.layer_digests[0]
    root = tmp_path / "target"
    killing = KillingStore(root, layer, after=2 * 1024 * 1024, trigger=registry.kill)
    with RegistryClient(retries=0) as client, pytest.raises(RegistryUnreachableError) as failed:
        pull(ref, killing, progress=None, client=client)
    assert f"cannot reach registry {registry.host}" in str(failed.value)
    partial = killing.partial_path(layer)
    kept = partial.stat().st_size
    assert 0 < kept < len(big)
    assert not killing.has(layer)

    registry.restart()  # same port, same storage
    recorder = Recorder()
    target = ContentStore(root)
    with RegistryClient(event_hooks=recorder.hooks()) as client:
        result = pull(ref, target, progress=None, client=client)
    assert result.manifest_digest == image.manifest_digest
    blob_gets = [e for e in recorder.exchanges if e.method == "GET" and layer in str(e.url)]
    assert [(e.range, e.status) for e in blob_gets] == [(f"bytes={kept}-", 206)]
    data = target.path(layer).read_bytes()
    assert "sha256:" + hashlib.sha256(data).hexdigest() == layer
    assert not partial.exists()


def test_mirror_serves_docker_hub_names(
    registry: RegistryServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    source = new_store(tmp_path, "source")
    image = small_image(source)
    with RegistryClient() as client:
        push(f"{registry.host}/library/mirrored:v1", source, image.manifest_digest,
             progress=None, client=client)  # fmt: skip

    recorder = Recorder()
    mirrors = {"docker.io": [registry.host]}
    with RegistryClient(mirrors=mirrors, event_hooks=recorder.hooks()) as client:
        result = pull("docker.io/library/mirrored:v1", new_store(tmp_path, "a"), progress=None,
                      client=client)  # fmt: skip
    assert result.registry == registry.host
    assert result.manifest_digest == image.manifest_digest
    assert str(result.reference) == "docker.io/library/mirrored:v1"
    assert {e.url.host for e in recorder.exchanges} == {"127.0.0.1"}

    monkeypatch.setenv("HULL_REGISTRY_MIRRORS", f"docker.io={registry.host}")
    with RegistryClient.from_environment() as client:
        again = pull("mirrored:v1", new_store(tmp_path, "b"), progress=None, client=client)
    assert again.manifest_digest == image.manifest_digest


def test_unreachable_registry_has_a_clear_message(tmp_path: Path) -> None:
    host = f"127.0.0.1:{free_port()}"
    with RegistryClient(retries=0) as client, pytest.raises(RegistryUnreachableError) as failed:
        pull(f"{host}/nothing/here:v1", new_store(tmp_path, "s"), progress=None, client=client)
    assert str(failed.value).startswith(f"cannot reach registry {host}: ")


def test_tls_registry_with_ca_bundle_or_without_verification(
    tls_registry: RegistryServer, tmp_path: Path
) -> None:
    source = new_store(tmp_path, "source")
    image = small_image(source)
    ca_bundle = tls_registry.tls[0] if tls_registry.tls else None
    endpoint = make_endpoint(f"https://{tls_registry.host}")  # loopback speaks HTTP unless told
    with RegistryClient(ca_bundle=ca_bundle) as client:
        repo = Repository(client, endpoint, "library/secure")
        for digest in image.blobs:
            assert repo.push_blob(source, digest, source.size(digest)) == "pushed"
        repo.put_manifest("v1", source.read_bytes(image.manifest_digest), OCI_MANIFEST)

    mirrors = {"docker.io": [f"https://{tls_registry.host}"]}
    with RegistryClient(mirrors=mirrors, ca_bundle=ca_bundle) as client:
        result = pull("secure:v1", new_store(tmp_path, "a"), progress=None, client=client)
    assert result.manifest_digest == image.manifest_digest
    assert result.registry == tls_registry.host

    with RegistryClient(retries=0) as client, pytest.raises(RegistryUnreachableError) as failed:
        Repository(client, endpoint, "library/secure").get_manifest("v1")
    assert "CERTIFICATE_VERIFY_FAILED" in str(failed.value)
    with RegistryClient(tls_verify=False) as client:
        fetched = Repository(client, endpoint, "library/secure").get_manifest("v1")
    assert fetched.digest == image.manifest_digest
