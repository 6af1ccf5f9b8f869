"""An OCI distribution-spec client: manifests, blobs, uploads, tags, over httpx.

`RegistryClient` holds what is shared across registries (HTTP connections, TLS
settings, tokens, mirrors); `Repository` is one repository on one endpoint and
speaks the distribution API (distribution-spec spec.md):

    GET/HEAD /v2/<name>/manifests/<ref>       Accept: OCI + Docker schema2 + lists
    GET      /v2/<name>/blobs/<digest>        Range: bytes=<offset>- to resume
    POST     /v2/<name>/blobs/uploads/        (?mount=<digest>&from=<repo>)
    PATCH    <Location>                       one chunk; the newest Location wins
    PUT      <Location>?digest=<digest>       closes the upload
    PUT      /v2/<name>/manifests/<ref>
    GET      /v2/<name>/tags/list

Every request carries credentials from the Authenticator and is retried once after a
401 challenge. Transport failures become "cannot reach registry HOST: ...".
"""

from __future__ import annotations

import ssl
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import httpx

from hull.errors import ConfigError
from hull.image.registry.auth import Authenticator, CredentialLookup, repository_scope
from hull.image.registry.credentials import config_path, load_credentials
from hull.image.registry.errors import (
    RegistryContentError,
    RegistryError,
    RegistryNotFoundError,
    RegistryUnreachableError,
    error_from_response,
    unreachable,
)
from hull.image.registry.mirrors import (
    Endpoint,
    endpoints_for,
    load_mirrors,
    make_endpoint,
    mirrors_from_env,
    normalize_mirrors,
)
from hull.image.store import ContentStore
from hull.oci.digest import DigestVerifier, parse_digest, sha256_digest
from hull.oci.image import ACCEPTED_MANIFEST_TYPES, Descriptor
from hull.oci.reference import Reference

MAX_MANIFEST_SIZE = 4 * 1024 * 1024  # what distribution itself accepts
DEFAULT_CHUNK_SIZE = 8 * 1024 * 1024  # bytes per upload PATCH
DOWNLOAD_CHUNK = 256 * 1024
USER_AGENT = "hull/0.1"
REGISTRIES_FILE = "registries.json"  # {"mirrors": {"docker.io": ["127.0.0.1:5000"]}}

ProgressCallback = Callable[[int], None]  # called with the bytes done so far


class BlobTee(Protocol):
    """Wants a blob's bytes as they download, e.g. to unpack a layer on the fly."""

    @property
    def fed(self) -> int:
        """How many bytes of the blob, from byte 0, it has been given."""
        ...

    def feed(self, data: bytes) -> None:
        """The next bytes of the blob; raising means it gives up (the download goes on)."""
        ...


class _Tee:
    """Feeds a BlobTee, catching it up from the partial file after a resume, and
    dropping it for good the first time it fails."""

    def __init__(self, tee: BlobTee, partial: Path) -> None:
        self.tee: BlobTee | None = tee
        self.partial = partial

    def catch_up(self, offset: int) -> None:
        """Give the tee what the partial holds beyond what it has seen, up to offset."""
        tee = self.tee
        if tee is None or tee.fed == offset:
            return
        if tee.fed > offset:  # the store restarted the partial: the tee cannot rewind
            self.tee = None
            return
        try:
            with open(self.partial, "rb") as f:
                f.seek(tee.fed)
                while tee.fed < offset:
                    data = f.read(min(DOWNLOAD_CHUNK, offset - tee.fed))
                    if not data:
                        raise EOFError(f"{self.partial} is shorter than {offset} bytes")
                    tee.feed(data)
        except Exception:
            self.tee = None

    def feed(self, data: bytes) -> None:
        if self.tee is not None:
            try:
                self.tee.feed(data)
            except Exception:
                self.tee = None


@dataclass(frozen=True)
class FetchedManifest:
    """A manifest or index as the registry sent it, with its verified digest."""

    raw: bytes
    media_type: str | None
    digest: str


class RegistryClient:
    """Shared state for talking to registries: connections, TLS, tokens, mirrors."""

    def __init__(
        self,
        *,
        mirrors: Mapping[str, str | Sequence[str]] | None = None,
        insecure_registries: Iterable[str] = (),
        tls_verify: bool = True,
        ca_bundle: str | Path | None = None,
        credentials: CredentialLookup | None = None,
        transport: httpx.BaseTransport | None = None,
        event_hooks: Mapping[str, list[Callable[..., Any]]] | None = None,
        timeout: float = 30.0,
        chunk_size: int = DEFAULT_CHUNK_SIZE,
        retries: int = 2,
        retry_delay: float = 0.5,
    ) -> None:
        self.mirrors = normalize_mirrors(mirrors or {})
        self.insecure_registries = list(insecure_registries)
        self.chunk_size = chunk_size
        self.retries = retries
        self.retry_delay = retry_delay
        verify: ssl.SSLContext | bool = tls_verify
        if tls_verify and ca_bundle is not None:
            try:
                verify = ssl.create_default_context(cafile=str(ca_bundle))
            except (OSError, ssl.SSLError) as exc:
                raise ConfigError(f"cannot load CA bundle {ca_bundle}: {exc}") from exc
        common: dict[str, Any] = {
            "timeout": httpx.Timeout(timeout, connect=min(timeout, 10.0)),
            "headers": {"User-Agent": USER_AGENT},
            "event_hooks": dict(event_hooks or {}),
        }
        if transport is not None:
            common["transport"] = transport
        self.http = httpx.Client(verify=verify, **common)
        self._insecure_http: httpx.Client | None = None
        self._common = common
        self._schemes: dict[str, str] = {}
        self._lock = threading.Lock()
        self.auth = Authenticator(self.http, credentials or load_credentials)

    @classmethod
    def from_environment(cls, **options: Any) -> RegistryClient:
        """A client whose mirrors also come from $HULL_REGISTRY_MIRRORS and registries.json.

        Order of preference: mirrors passed here, then the environment's, then those in
        registries.json beside config.json ($HULL_CONFIG or ~/.config/hull).
        """
        mirrors = normalize_mirrors(options.pop("mirrors", None) or {})
        for source in (mirrors_from_env(), load_mirrors(config_path().parent / REGISTRIES_FILE)):
            for registry, items in source.items():
                mirrors.setdefault(registry, []).extend(items)
        return cls(mirrors=mirrors, **options)

    # ----------------------------------------------------------- endpoints

    def endpoints(self, reference: Reference) -> list[Repository]:
        """Where `reference` may be fetched from: its mirrors first, then its registry."""
        return [
            Repository(self, endpoint, reference.path)
            for endpoint in endpoints_for(reference.domain, self.mirrors, self.insecure_registries)
        ]

    def repository(self, reference: Reference) -> Repository:
        """The repository on the reference's own registry (pushes never go to mirrors)."""
        return Repository(
            self, make_endpoint(reference.domain, self.insecure_registries), reference.path
        )

    def login(self, registry: str) -> None:
        """Check the stored credentials for `registry`; raise RegistryAuthError if refused."""
        endpoint = make_endpoint(registry, self.insecure_registries)
        url = f"{self.base_url(endpoint)}/v2/"
        response = self.send(endpoint, "GET", url, scopes=[], action="logging in")
        if response.status_code != 200:
            raise error_from_response(response, endpoint.host, "logging in")

    # ----------------------------------------------------------- transport

    def base_url(self, endpoint: Endpoint) -> str:
        """`scheme://host`; for insecure registries, the scheme that answered first."""
        if not endpoint.insecure or endpoint.scheme == "http":
            return endpoint.base_url
        with self._lock:
            scheme = self._schemes.get(endpoint.host)
        if scheme is None:
            scheme = "https"
            try:
                self._http_for(endpoint).get(f"https://{endpoint.api_host}/v2/")
            except httpx.TransportError:
                scheme = "http"  # Docker's insecure-registries fallback
            with self._lock:
                self._schemes[endpoint.host] = scheme
        return f"{scheme}://{endpoint.api_host}"

    def _http_for(self, endpoint: Endpoint) -> httpx.Client:
        if not endpoint.insecure:
            return self.http
        with self._lock:
            if self._insecure_http is None:
                self._insecure_http = httpx.Client(verify=False, **self._common)
            return self._insecure_http

    def send(
        self,
        endpoint: Endpoint,
        method: str,
        url: str | httpx.URL,
        *,
        scopes: Sequence[str],
        action: str,
        headers: Mapping[str, str] | None = None,
        content: bytes | None = None,
        params: Mapping[str, str] | None = None,
        stream: bool = False,
        follow_redirects: bool = False,
    ) -> httpx.Response:
        """Send one request with credentials, re-authenticating once after a 401.

        The caller owns the returned response (close it when streaming).
        """
        http = self._http_for(endpoint)
        sent = self.auth.header_for(endpoint.host, scopes)
        for attempt in range(2):
            request_headers = dict(headers or {})
            if sent:
                request_headers["Authorization"] = sent
            request = http.build_request(
                method, url, headers=request_headers, content=content, params=params
            )
            try:
                response = http.send(request, stream=stream, follow_redirects=follow_redirects)
            except httpx.TransportError as exc:
                raise unreachable(endpoint.host, exc, action) from exc
            if response.status_code != 401:
                return response
            if attempt == 1:
                self.auth.check_rejected(endpoint.host, sent)
                return response
            try:
                response.read()
            except httpx.TransportError as exc:
                raise unreachable(endpoint.host, exc) from exc
            finally:
                response.close()
            retry_with = self.auth.respond(endpoint.host, response, scopes, sent)
            if retry_with == sent and sent is not None:
                return response
            sent = retry_with
        raise AssertionError("unreachable")  # pragma: no cover

    def close(self) -> None:
        self.http.close()
        if self._insecure_http is not None:
            self._insecure_http.close()

    def __enter__(self) -> RegistryClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class Repository:
    """One repository on one registry endpoint: the distribution API calls."""

    def __init__(self, client: RegistryClient, endpoint: Endpoint, path: str) -> None:
        self.client = client
        self.endpoint = endpoint
        self.path = path

    @property
    def host(self) -> str:
        return self.endpoint.host

    def __repr__(self) -> str:
        return f"Repository({self.endpoint.host}/{self.path})"

    def _url(self, tail: str) -> str:
        return f"{self.client.base_url(self.endpoint)}/v2/{self.path}/{tail}"

    def _pull_scopes(self) -> list[str]:
        return [repository_scope(self.path, ["pull"])]

    def _push_scopes(self) -> list[str]:
        return [repository_scope(self.path, ["pull", "push"])]

    def _fail(self, response: httpx.Response, action: str) -> RegistryError:
        try:
            response.read()
        except httpx.TransportError:
            pass
        response.close()
        return error_from_response(response, self.host, f"{action} ({self.path})")

    # ----------------------------------------------------------- manifests

    def get_manifest(self, reference: str) -> FetchedManifest:
        """Fetch a manifest or index by tag or digest, checking its size and digest."""
        action = f"fetching manifest {reference}"
        response = self.client.send(
            self.endpoint,
            "GET",
            self._url(f"manifests/{reference}"),
            scopes=self._pull_scopes(),
            action=action,
            headers={"Accept": ", ".join(ACCEPTED_MANIFEST_TYPES)},
            stream=True,
        )
        try:
            if response.status_code != 200:
                raise self._fail(response, action)
            raw = _read_limited(response, MAX_MANIFEST_SIZE, f"manifest {reference}", self.host)
        except httpx.TransportError as exc:
            raise unreachable(self.host, exc) from exc
        finally:
            response.close()
        digest = _check_manifest_digest(raw, reference, response, self.host)
        media_type = response.headers.get("content-type")
        return FetchedManifest(
            raw, media_type.split(";")[0].strip() if media_type else None, digest
        )

    def head_manifest(self, reference: str) -> Descriptor | None:
        """The descriptor of a manifest, or None if the registry does not have it."""
        action = f"checking manifest {reference}"
        response = self.client.send(
            self.endpoint,
            "HEAD",
            self._url(f"manifests/{reference}"),
            scopes=self._pull_scopes(),
            action=action,
            headers={"Accept": ", ".join(ACCEPTED_MANIFEST_TYPES)},
        )
        if response.status_code == 404:
            return None
        if response.status_code != 200:
            raise self._fail(response, action)
        digest = response.headers.get("docker-content-digest")
        if not digest and _is_digest(reference):
            digest = reference
        if not digest:  # a registry that does not say: fetch and hash it
            fetched = self.get_manifest(reference)
            return Descriptor(fetched.media_type or "", fetched.digest, len(fetched.raw))
        return Descriptor(
            response.headers.get("content-type", "").split(";")[0].strip(),
            digest,
            int(response.headers.get("content-length", "0")),
        )

    def put_manifest(self, reference: str, raw: bytes, media_type: str) -> str:
        """Upload a manifest or index under a tag or its digest; return its digest."""
        if len(raw) > MAX_MANIFEST_SIZE:
            raise RegistryContentError(
                f"manifest is {len(raw)} bytes; registries accept at most {MAX_MANIFEST_SIZE}"
            )
        action = f"pushing manifest {reference}"
        response = self.client.send(
            self.endpoint,
            "PUT",
            self._url(f"manifests/{reference}"),
            scopes=self._push_scopes(),
            action=action,
            headers={"Content-Type": media_type},
            content=raw,
        )
        if response.status_code not in (200, 201):
            raise self._fail(response, action)
        digest = sha256_digest(raw)
        returned = response.headers.get("docker-content-digest")
        if returned and returned.startswith("sha256:") and returned != digest:
            raise RegistryContentError(
                f"registry {self.host} stored manifest {reference} as {returned}, "
                f"but it hashes to {digest}"
            )
        return digest

    def list_tags(self) -> list[str]:
        """All tags of the repository, following `Link: <...>; rel="next"` pages."""
        tags: list[str] = []
        url: str | httpx.URL = self._url("tags/list")
        action = "listing tags"
        for _ in range(1000):  # a bound, in case a registry links in a circle
            response = self.client.send(
                self.endpoint, "GET", url, scopes=self._pull_scopes(), action=action
            )
            if response.status_code != 200:
                raise self._fail(response, action)
            body = response.json()
            tags.extend(body.get("tags") or [])
            next_link = response.links.get("next", {}).get("url")
            if not next_link:
                break
            url = response.url.join(next_link)
        return tags

    # ----------------------------------------------------------- blobs

    def blob_exists(self, digest: str, for_push: bool = False) -> bool:
        """Whether the repository has the blob (`for_push`: reuse the push token)."""
        action = f"checking blob {digest}"
        response = self.client.send(
            self.endpoint,
            "HEAD",
            self._url(f"blobs/{digest}"),
            scopes=self._push_scopes() if for_push else self._pull_scopes(),
            action=action,
            follow_redirects=True,
        )
        if response.status_code == 200:
            return True
        if response.status_code == 404:
            return False
        raise self._fail(response, action)

    def fetch_blob(
        self,
        store: ContentStore,
        digest: str,
        size: int | None,
        progress: ProgressCallback | None = None,
        tee: BlobTee | None = None,
    ) -> str:
        """Stream a blob into the store, resuming a partial with Range; verify and commit.

        A dropped connection is retried (from where it stopped) `client.retries` times;
        after that the partial stays in the store and the next pull resumes it.

        `tee` also gets every byte of the blob, in order from byte 0 (what a resumed
        partial already holds first, read back from the store), before the blob is
        committed. If it raises, it is dropped and the download goes on without it.
        """
        if store.has(digest):
            return digest
        sink = _Tee(tee, store.partial_path(digest)) if tee is not None else None
        for attempt in range(self.client.retries + 1):
            try:
                return self._fetch_blob_once(store, digest, size, progress, sink)
            except RegistryUnreachableError:
                if attempt == self.client.retries:
                    raise
                time.sleep(self.client.retry_delay * (attempt + 1))
        raise AssertionError("unreachable")  # pragma: no cover

    def _fetch_blob_once(
        self,
        store: ContentStore,
        digest: str,
        size: int | None,
        progress: ProgressCallback | None,
        tee: _Tee | None = None,
    ) -> str:
        with store.writer(digest, size) as writer:
            offset = writer.offset
            if tee is not None:
                tee.catch_up(offset)
            if progress and offset:
                progress(offset)
            if size is not None and offset == size:
                return writer.commit()  # an earlier attempt got every byte
            action = f"fetching blob {digest}"
            headers = {"Range": f"bytes={offset}-"} if offset else {}
            response = self.client.send(
                self.endpoint,
                "GET",
                self._url(f"blobs/{digest}"),
                scopes=self._pull_scopes(),
                action=action,
                headers=headers,
                stream=True,
                follow_redirects=True,
            )
            try:
                skip = self._bytes_to_skip(response, offset, action)
                for chunk in response.iter_bytes(DOWNLOAD_CHUNK):
                    if skip:
                        dropped = min(skip, len(chunk))
                        chunk, skip = chunk[dropped:], skip - dropped
                        if not chunk:
                            continue
                    writer.write(chunk)
                    if tee is not None:
                        tee.feed(chunk)
                    if progress:
                        progress(writer.offset)
            except httpx.TransportError as exc:
                raise RegistryUnreachableError(
                    f"cannot reach registry {self.host}: lost the connection while "
                    f"downloading {digest} at byte {writer.offset}: {exc or type(exc).__name__}"
                ) from exc
            finally:
                response.close()
            return writer.commit()

    def _bytes_to_skip(self, response: httpx.Response, offset: int, action: str) -> int:
        """How much of the body we already have: 0 for a 206 from `offset`, else `offset`."""
        if response.status_code == 206:
            start = _content_range_start(response.headers.get("content-range", ""))
            if start != offset:
                response.close()
                raise RegistryContentError(
                    f"registry {self.host}: asked for bytes from {offset} of a blob but got a "
                    f"range starting at {start}"
                )
            return 0
        if response.status_code == 200:
            return offset  # the registry ignored Range: drop what we already have
        raise self._fail(response, action)

    def push_blob(
        self,
        store: ContentStore,
        digest: str,
        size: int,
        mount_from: str | None = None,
        progress: ProgressCallback | None = None,
    ) -> str:
        """Make the blob exist in this repository; return "exists", "mounted" or "pushed"."""
        if self.blob_exists(digest, for_push=True):
            return "exists"
        scopes = self._push_scopes()
        params: dict[str, str] = {}
        if mount_from and mount_from != self.path:
            scopes = [*scopes, repository_scope(mount_from, ["pull"])]
            params = {"mount": digest, "from": mount_from}
        action = f"starting the upload of {digest}"
        response = self.client.send(
            self.endpoint,
            "POST",
            self._url("blobs/uploads/"),
            scopes=scopes,
            action=action,
            params=params or None,
            content=b"",
        )
        if response.status_code == 201 and params:
            return "mounted"
        if response.status_code != 202:
            raise self._fail(response, action)
        location = _location(response, self.host)
        self._upload(store, digest, size, location, progress)
        return "pushed"

    def _upload(
        self,
        store: ContentStore,
        digest: str,
        size: int,
        location: httpx.URL,
        progress: ProgressCallback | None,
    ) -> None:
        """PATCH the blob chunk by chunk, then PUT ?digest=; resume after a dropped link.

        The registry may ignore Content-Range, so offsets are ours to track; each
        answer's Location (maybe relative) is the one to use next.
        """
        scopes = self._push_scopes()
        offset = 0
        with store.path(digest).open("rb") as blob:
            for attempt in range(self.client.retries + 1):
                try:
                    while offset < size:
                        blob.seek(offset)
                        chunk = blob.read(min(self.client.chunk_size, size - offset))
                        if not chunk:
                            raise RegistryContentError(
                                f"blob {digest} in the store is shorter than {size} bytes"
                            )
                        action = f"uploading {digest}"
                        response = self.client.send(
                            self.endpoint,
                            "PATCH",
                            location,
                            scopes=scopes,
                            action=action,
                            headers={
                                "Content-Type": "application/octet-stream",
                                "Content-Range": f"{offset}-{offset + len(chunk) - 1}",
                            },
                            content=chunk,
                        )
                        if response.status_code != 202:
                            raise self._fail(response, action)
                        location = _location(response, self.host)
                        offset += len(chunk)
                        if progress:
                            progress(offset)
                    action = f"finishing the upload of {digest}"
                    final = location.copy_merge_params({"digest": digest})
                    response = self.client.send(
                        self.endpoint, "PUT", final, scopes=scopes, action=action, content=b""
                    )
                    if response.status_code not in (201, 204):
                        raise self._fail(response, action)
                    return
                except RegistryUnreachableError:
                    if attempt == self.client.retries:
                        raise
                    time.sleep(self.client.retry_delay * (attempt + 1))
                    offset, location = self._upload_status(location)

    def _upload_status(self, location: httpx.URL) -> tuple[int, httpx.URL]:
        """Ask where an interrupted upload stands: `Range: 0-<last byte>` of a 204."""
        action = "checking an interrupted upload"
        response = self.client.send(
            self.endpoint, "GET", location, scopes=self._push_scopes(), action=action
        )
        if response.status_code not in (200, 204):
            raise self._fail(response, action)
        end = response.headers.get("range", "0--1").removeprefix("bytes=").split("-", 1)[1]
        try:
            offset = int(end) + 1 if end != "-1" else 0
        except ValueError as exc:
            raise RegistryContentError(
                f"registry {self.host} sent an unreadable upload Range {end!r}"
            ) from exc
        new_location = _location(response, self.host) if "location" in response.headers else None
        return offset, new_location or location


def _location(response: httpx.Response, host: str) -> httpx.URL:
    """The absolute URL of a response's Location (registries may send a relative one)."""
    value = response.headers.get("location")
    if not value:
        raise RegistryError(f"registry {host} answered {response.status_code} without a Location")
    return response.url.join(value)


def _content_range_start(value: str) -> int | None:
    """`bytes 100-199/200` -> 100."""
    try:
        return int(value.split()[-1].split("-")[0]) if value else None
    except (ValueError, IndexError):
        return None


def _read_limited(response: httpx.Response, limit: int, what: str, host: str) -> bytes:
    declared = response.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > limit:
        raise RegistryContentError(
            f"registry {host}: {what} is {declared} bytes, more than the {limit} allowed"
        )
    parts: list[bytes] = []
    total = 0
    for chunk in response.iter_bytes():
        total += len(chunk)
        if total > limit:
            raise RegistryContentError(
                f"registry {host}: {what} is larger than the {limit} bytes allowed"
            )
        parts.append(chunk)
    return b"".join(parts)


def _is_digest(reference: str) -> bool:
    return ":" in reference


def _check_manifest_digest(raw: bytes, reference: str, response: httpx.Response, host: str) -> str:
    """The manifest's sha256 digest; refuse it if it is not what was asked or announced."""
    digest = sha256_digest(raw)
    if _is_digest(reference):
        algorithm, _ = parse_digest(reference)
        verifier = DigestVerifier(algorithm)
        verifier.update(raw)
        if verifier.digest() != reference:
            raise RegistryContentError(
                f"registry {host} sent a manifest for {reference} whose digest is "
                f"{verifier.digest()}; refusing it"
            )
        return digest
    announced = response.headers.get("docker-content-digest")
    if announced and announced.startswith("sha256:") and announced != digest:
        raise RegistryContentError(
            f"registry {host} announced manifest {reference} as {announced}, "
            f"but it hashes to {digest}; refusing it"
        )
    return digest


__all__ = [
    "MAX_MANIFEST_SIZE",
    "BlobTee",
    "FetchedManifest",
    "RegistryClient",
    "RegistryNotFoundError",
    "Repository",
]
