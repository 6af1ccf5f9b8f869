"""Integration fixtures: real registries (docker-registry) on loopback.

Each fixture starts its own registry process with its own storage and port, so tests
run in parallel and leave nothing behind; teardown stops the process.
"""

from __future__ import annotations

import secrets
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.integration.registry_server import (
    RegistryServer,
    TokenServer,
    htpasswd_auth_yaml,
    make_tls_certificate,
    registry_available,
    write_htpasswd,
)


def _require_registry() -> None:
    if not registry_available():
        pytest.skip("docker-registry is not installed (apt-get install docker-registry)")


@dataclass
class AuthRegistry:
    """A registry that wants credentials, with the users it knows."""

    server: RegistryServer
    users: dict[str, str]
    tokens: TokenServer | None = None


@pytest.fixture
def registry(tmp_path: Path) -> Iterator[RegistryServer]:
    """A registry without authentication."""
    _require_registry()
    server = RegistryServer(tmp_path / "registry").start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def basic_registry(tmp_path: Path) -> Iterator[AuthRegistry]:
    """A registry with htpasswd (bcrypt) basic auth and one user."""
    _require_registry()
    users = {"alice": "pw-" + secrets.token_hex(8)}
    workdir = tmp_path / "basic-registry"
    workdir.mkdir()
    htpasswd = write_htpasswd(workdir / "htpasswd", users)
    server = RegistryServer(workdir, auth_yaml=htpasswd_auth_yaml(htpasswd)).start()
    try:
        yield AuthRegistry(server, users)
    finally:
        server.stop()


@pytest.fixture
def token_registry(tmp_path: Path) -> Iterator[AuthRegistry]:
    """A registry with Docker token auth, backed by a token server of the tests' own."""
    _require_registry()
    users = {"bob": "pw-" + secrets.token_hex(8)}
    workdir = tmp_path / "token-registry"
    workdir.mkdir()
    tokens = TokenServer(workdir, users).start()
    try:
        server = RegistryServer(workdir, auth_yaml=tokens.auth_yaml()).start()
        try:
            yield AuthRegistry(server, users, tokens)
        finally:
            server.stop()
    finally:
        tokens.stop()


@pytest.fixture
def tls_registry(tmp_path: Path) -> Iterator[RegistryServer]:
    """A registry serving HTTPS with a self-signed certificate (server.tls[0] is the CA)."""
    _require_registry()
    workdir = tmp_path / "tls-registry"
    workdir.mkdir()
    server = RegistryServer(workdir, tls=make_tls_certificate(workdir)).start()
    try:
        yield server
    finally:
        server.stop()
