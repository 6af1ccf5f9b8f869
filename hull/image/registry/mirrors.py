"""Where to send requests for a registry: its API host, scheme, and mirrors to try first.

A mirror map (`{"docker.io": ["127.0.0.1:5000"]}`) makes `busybox` resolve to a local
mirror before Docker Hub; it comes from the client's caller, a registries.json file
(`{"mirrors": {...}}`), or $HULL_REGISTRY_MIRRORS (`docker.io=127.0.0.1:5000,...`).
Loopback registries speak plain HTTP (as Docker allows by default); everything else
HTTPS, unless listed as insecure, in which case plain HTTP is the fallback.
"""

from __future__ import annotations

import ipaddress
import json
import os
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from hull.errors import ConfigError
from hull.image.registry.credentials import normalize_registry

MIRRORS_ENV = "HULL_REGISTRY_MIRRORS"
DOCKER_HUB_API_HOST = "registry-1.docker.io"

Mirrors = dict[str, list[str]]


@dataclass(frozen=True)
class Endpoint:
    """One registry to talk to: `host` as people name it, `api_host` as HTTP reaches it."""

    host: str
    api_host: str
    scheme: str  # "https" or "http"
    insecure: bool = False  # skip TLS verification, fall back to plain HTTP
    mirror_of: str | None = None

    @property
    def base_url(self) -> str:
        return f"{self.scheme}://{self.api_host}"


def hostname(host: str) -> str:
    """`127.0.0.1:5000` -> `127.0.0.1`; `[::1]:5000` -> `::1`."""
    if host.startswith("["):
        return host[1 : host.index("]")]
    return host.rsplit(":", 1)[0] if host.count(":") == 1 else host


def is_loopback(host: str) -> bool:
    name = hostname(host)
    if name == "localhost" or name.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False


def make_endpoint(
    address: str, insecure: Iterable[str] = (), mirror_of: str | None = None
) -> Endpoint:
    """An Endpoint for `docker.io`, `host:port`, or `http://host:port` (scheme forced)."""
    scheme: str | None = None
    match = re.match(r"(https?)://", address)
    if match:
        scheme = match.group(1)
        address = address[match.end() :]
    host = normalize_registry(address)
    if not host:
        raise ConfigError(f"invalid registry address {address!r}")
    api_host = DOCKER_HUB_API_HOST if host == "docker.io" else host
    is_insecure = host in {normalize_registry(h) for h in insecure}
    if scheme is None:
        scheme = "http" if is_loopback(host) else "https"
    return Endpoint(host, api_host, scheme, is_insecure, mirror_of)


def parse_mirrors(text: str) -> Mirrors:
    """`docker.io=127.0.0.1:5000, quay.io=mirror:5000` -> {"docker.io": ["127.0.0.1:5000"], ...}.

    Entries are separated by commas, semicolons or whitespace; a registry named twice
    gets several mirrors, tried in order.
    """
    mirrors: Mirrors = {}
    for entry in re.split(r"[,;\s]+", text.strip()):
        if not entry:
            continue
        registry, sep, mirror = entry.partition("=")
        if not sep or not registry or not mirror:
            raise ConfigError(
                f"invalid registry mirror {entry!r} in ${MIRRORS_ENV}: "
                "expected REGISTRY=MIRROR, e.g. docker.io=127.0.0.1:5000"
            )
        mirrors.setdefault(normalize_registry(registry), []).append(mirror)
    return mirrors


def load_mirrors(path: Path) -> Mirrors:
    """Read a registries.json: `{"mirrors": {"docker.io": ["127.0.0.1:5000"]}}`."""
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as exc:
        raise ConfigError(f"cannot read registry mirrors from {path}: {exc}") from exc
    table = data.get("mirrors", data) if isinstance(data, dict) else None
    if not isinstance(table, dict):
        raise ConfigError(f'{path}: expected {{"mirrors": {{REGISTRY: [MIRROR, ...]}}}}')
    return normalize_mirrors(table)


def normalize_mirrors(table: Mapping[str, str | Sequence[str]]) -> Mirrors:
    mirrors: Mirrors = {}
    for registry, value in table.items():
        items = [value] if isinstance(value, str) else list(value)
        if not all(isinstance(item, str) and item for item in items):
            raise ConfigError(f"mirrors of {registry!r} must be registry addresses")
        mirrors.setdefault(normalize_registry(registry), []).extend(items)
    return mirrors


def mirrors_from_env(environ: Mapping[str, str] | None = None) -> Mirrors:
    value = (environ if environ is not None else os.environ).get(MIRRORS_ENV, "")
    return parse_mirrors(value) if value.strip() else {}


def endpoints_for(
    registry: str, mirrors: Mapping[str, Sequence[str]], insecure: Iterable[str] = ()
) -> list[Endpoint]:
    """The endpoints to try for `registry`, mirrors first, the registry itself last."""
    insecure = list(insecure)
    host = normalize_registry(registry)
    chain = [make_endpoint(m, insecure, mirror_of=host) for m in mirrors.get(host, ())]
    chain.append(make_endpoint(host, insecure))
    return chain
