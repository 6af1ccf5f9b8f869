"""The registry client's checks and protocol edges, against httpx's MockTransport."""

from __future__ import annotations

import io
import json
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest

from hull.errors import NotFoundError
from hull.image.registry.client import MAX_MANIFEST_SIZE, RegistryClient, Repository
from hull.image.registry.errors import (
    RegistryContentError,
    RegistryDeniedError,
    RegistryError,
    RegistryNotFoundError,
)
from hull.image.registry.mirrors import (
    endpoints_for,
    is_loopback,
    make_endpoint,
    mirrors_from_env,
    parse_mirrors,
)
from hull.image.registry.progress import (
    PlainProgress,
    RichProgress,
    SilentProgress,
    make_progress,
)
from hull.image.store import ContentStore
from hull.oci.digest import sha256_digest
from hull.oci.image import OCI_MANIFEST
from hull.oci.reference import parse_reference

MANIFEST = json.dumps(
    {
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": {"mediaType": "x", "digest": "sha256:" + "1" * 64, "size": 1},
        "layers": [],
    }
).encode()


def repo_with(handler: Callable[[httpx.Request], httpx.Response], **options: Any) -> Repository:
    """A Repository for 127.0.0.1:5000/team/app whose HTTP goes to `handler`."""
    client = RegistryClient(
        transport=httpx.MockTransport(handler), credentials=lambda host: None, **options
    )
    return client.repository(parse_reference("127.0.0.1:5000/team/app:v1"))


def test_manifest_accept_header_and_digest() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        assert request.url == "http://127.0.0.1:5000/v2/team/app/manifests/v1"
        assert OCI_MANIFEST in request.headers["accept"]
        assert (
            "application/vnd.docker.distribution.manifest.list.v2+json" in request.headers["accept"]
        )
        return httpx.Response(
            200, content=MANIFEST, headers={"Content-Type": OCI_MANIFEST + "; charset=utf-8"}
        )

    fetched = repo_with(handler).get_manifest("v1")
    assert fetched.digest == sha256_digest(MANIFEST)
    assert fetched.media_type == OCI_MANIFEST


def test_manifest_with_wrong_digest_is_refused() -> None:
    wanted = "sha256:" + "2" * 64
    repo = repo_with(lambda request: httpx.Response(200, content=MANIFEST))
    with pytest.raises(RegistryContentError, match="refusing"):
        repo.get_manifest(wanted)

    lying = "sha256:" + "3" * 64
    repo = repo_with(
        lambda request: httpx.Response(
            200, content=MANIFEST, headers={"Docker-Content-Digest": lying}
        )
    )
    with pytest.raises(RegistryContentError, match=f"announced manifest v1 as {lying}"):
        repo.get_manifest("v1")


def test_manifest_size_limit() -> None:
    big = b" " * (MAX_MANIFEST_SIZE + 1)
    repo = repo_with(lambda request: httpx.Response(200, content=big))
    with pytest.raises(RegistryContentError, match="allowed"):
        repo.get_manifest("v1")

    def chunked(request: httpx.Request) -> httpx.Response:  # no Content-Length to trust
        return httpx.Response(200, content=iter([b" " * MAX_MANIFEST_SIZE, b"  "]))

    with pytest.raises(RegistryContentError, match="larger than"):
        repo_with(chunked).get_manifest("v1")


@pytest.mark.parametrize(
    ("status", "code", "error", "text"),
    [
        (404, "MANIFEST_UNKNOWN", RegistryNotFoundError, "manifest_unknown: manifest unknown"),
        (404, "NAME_UNKNOWN", RegistryNotFoundError, "name_unknown"),
        (403, "DENIED", RegistryDeniedError, "denied"),
        (500, "UNKNOWN", RegistryError, "unknown"),
    ],
)
def test_registry_error_bodies(status: int, code: str, error: type, text: str) -> None:
    body = {"errors": [{"code": code, "message": code.lower().replace("_", " ")}]}
    repo = repo_with(lambda request: httpx.Response(status, json=body))
    with pytest.raises(error) as failed:
        repo.get_manifest("v1")
    assert text in str(failed.value)
    assert "registry 127.0.0.1:5000" in str(failed.value)
    if error is RegistryNotFoundError:
        assert isinstance(failed.value, NotFoundError)


def test_blob_resume_when_registry_ignores_range(tmp_path: Path) -> None:
    blob = bytes(range(256)) * 1000
    digest = sha256_digest(blob)
    store = ContentStore(tmp_path / "store")
    with store.writer(digest, len(blob)) as writer:
        writer.write(blob[:1000])  # an earlier, interrupted download
    ranges: list[str | None] = []

    def handler(request: httpx.Request) -> httpx.Response:
        ranges.append(request.headers.get("range"))
        return httpx.Response(200, content=blob)  # Range ignored: the whole blob again

    done: list[int] = []
    repo_with(handler).fetch_blob(store, digest, len(blob), done.append)
    assert ranges == ["bytes=1000-"]
    assert store.read_bytes(digest) == blob
    assert done[0] == 1000 and done[-1] == len(blob)


def test_blob_fetch_refuses_wrong_content(tmp_path: Path) -> None:
    blob = b"the real blob"
    store = ContentStore(tmp_path / "store")
    repo = repo_with(lambda request: httpx.Response(200, content=b"something else!"))
    with pytest.raises(Exception, match="mismatch|larger"):
        repo.fetch_blob(store, sha256_digest(blob), len(blob))
    assert not store.has(sha256_digest(blob))


def test_chunked_upload_follows_relative_locations_and_resumes(tmp_path: Path) -> None:
    blob = bytes(range(256)) * 40  # 10240 bytes: three chunks of 4096
    store = ContentStore(tmp_path / "store")
    digest = store.write_bytes(blob)
    received = bytearray()
    log: list[str] = []
    drop_once = {"done": False}

    def handler(request: httpx.Request) -> httpx.Response:
        path, query = request.url.path, request.url.params
        log.append(f"{request.method} {path} {query.get('_state', '')}")
        if request.method == "HEAD":
            return httpx.Response(404)
        if request.method == "POST":
            return httpx.Response(
                202, headers={"Location": "/v2/team/app/blobs/uploads/u1?_state=0"}
            )
        if request.method == "PATCH":
            assert query["_state"] == str(len(received)), "must use the newest Location"
            received.extend(request.content)
            if len(received) == 8192 and not drop_once["done"]:
                drop_once["done"] = True  # the data arrived, the answer is lost
                raise httpx.ReadError("connection reset", request=request)
            location = f"/v2/team/app/blobs/uploads/u1?_state={len(received)}"
            return httpx.Response(202, headers={"Location": location})
        if request.method == "GET":  # upload status after the failure
            location = f"/v2/team/app/blobs/uploads/u1?_state={len(received)}"
            return httpx.Response(
                204, headers={"Range": f"0-{len(received) - 1}", "Location": location}
            )
        if request.method == "PUT":
            assert query["digest"] == digest and query["_state"] == str(len(received))
            return httpx.Response(201)
        raise AssertionError(request)

    repo = repo_with(handler, chunk_size=4096, retry_delay=0)
    assert repo.push_blob(store, digest, len(blob)) == "pushed"
    assert bytes(received) == blob
    assert [line.split()[0] for line in log].count("GET") == 1


def test_mount_fallback_to_upload_on_202(tmp_path: Path) -> None:
    store = ContentStore(tmp_path / "store")
    digest = store.write_bytes(b"layer")
    seen: list[str] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(f"{request.method} {request.url.query.decode()}")
        if request.method == "HEAD":
            return httpx.Response(404)
        if request.method == "POST":
            assert request.url.params["mount"] == digest
            assert request.url.params["from"] == "other/base"
            return httpx.Response(202, headers={"Location": "/v2/team/app/blobs/uploads/u2"})
        if request.method == "PATCH":
            return httpx.Response(202, headers={"Location": "/v2/team/app/blobs/uploads/u2"})
        return httpx.Response(201)

    assert repo_with(handler).push_blob(store, digest, 5, mount_from="other/base") == "pushed"
    assert [s.split()[0] for s in seen] == ["HEAD", "POST", "PATCH", "PUT"]


# ------------------------------------------------------------ mirrors and endpoints


def test_mirror_parsing_and_endpoints() -> None:
    mirrors = parse_mirrors("docker.io=127.0.0.1:5000, index.docker.io=http://m.example:80;q.io=m2")
    assert mirrors == {"docker.io": ["127.0.0.1:5000", "http://m.example:80"], "q.io": ["m2"]}
    chain = endpoints_for("docker.io", mirrors)
    assert [e.base_url for e in chain] == [
        "http://127.0.0.1:5000",
        "http://m.example:80",
        "https://registry-1.docker.io",
    ]
    assert chain[0].mirror_of == "docker.io" and chain[-1].mirror_of is None
    assert mirrors_from_env({"HULL_REGISTRY_MIRRORS": "docker.io=[::1]:5000"}) == {
        "docker.io": ["[::1]:5000"]
    }
    with pytest.raises(Exception, match="REGISTRY=MIRROR"):
        parse_mirrors("docker.io")


def test_client_mirrors_from_arguments_env_and_registries_json(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HULL_CONFIG", str(tmp_path))
    monkeypatch.setenv("HULL_REGISTRY_MIRRORS", "docker.io=127.0.0.1:6000")
    (tmp_path / "registries.json").write_text(
        json.dumps({"mirrors": {"docker.io": "127.0.0.1:7000", "quay.io": ["127.0.0.1:8000"]}})
    )
    with RegistryClient.from_environment(mirrors={"docker.io": ["127.0.0.1:5000"]}) as client:
        assert client.mirrors == {
            "docker.io": ["127.0.0.1:5000", "127.0.0.1:6000", "127.0.0.1:7000"],
            "quay.io": ["127.0.0.1:8000"],
        }
        chain = client.endpoints(parse_reference("busybox"))
        assert [r.host for r in chain][-1] == "docker.io"
        assert all(r.path == "library/busybox" for r in chain)


def test_loopback_is_plain_http_others_https() -> None:
    assert is_loopback("localhost:5000") and is_loopback("127.3.4.5") and is_loopback("[::1]:80")
    assert not is_loopback("10.0.0.1:5000") and not is_loopback("example.com")
    assert make_endpoint("localhost:5000").base_url == "http://localhost:5000"
    assert make_endpoint("reg.example.com").base_url == "https://reg.example.com"
    assert make_endpoint("reg.example.com", insecure=["reg.example.com"]).insecure


# ------------------------------------------------------------ progress


def test_progress_modes() -> None:
    assert isinstance(make_progress(None), SilentProgress)
    plain = make_progress("auto", io.StringIO())  # not a tty
    assert isinstance(plain, PlainProgress)
    out = io.StringIO()
    lines = PlainProgress(out)
    lines.start("0123456789ab", "Downloading", 10)
    lines.update("0123456789ab", 5)
    lines.finish("0123456789ab", "Pull complete")
    assert out.getvalue() == "0123456789ab: Pull complete\n"

    bars_out = io.StringIO()
    bars = RichProgress(bars_out)
    bars.start("0123456789ab", "Downloading", 10)
    bars.update("0123456789ab", 5)
    bars.finish("0123456789ab", "Pull complete")
    bars.close()
    assert "0123456789ab: Pull complete" in bars_out.getvalue()


def test_rich_is_imported_lazily() -> None:
    code = (
        "import sys, hull.image.registry as r, hull.image.registry.progress as p;"
        "p.make_progress('auto');"
        "assert 'rich' not in sys.modules, sorted(m for m in sys.modules if 'rich' in m)"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
