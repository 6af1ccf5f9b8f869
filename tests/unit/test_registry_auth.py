"""WWW-Authenticate parsing, token handling, and the credentials file."""

from __future__ import annotations

import base64
import json
import stat
from pathlib import Path

import httpx
import pytest

from hull.errors import ConfigError
from hull.image.registry.auth import (
    Authenticator,
    Challenge,
    parse_www_authenticate,
    repository_scope,
)
from hull.image.registry.credentials import (
    Credentials,
    config_path,
    erase_credentials,
    load_credentials,
    normalize_registry,
    store_credentials,
)
from hull.image.registry.errors import RegistryAuthError

# ------------------------------------------------------------ WWW-Authenticate

CHALLENGES = [
    (
        'Bearer realm="https://auth.docker.io/token",service="registry.docker.io",'
        'scope="repository:library/busybox:pull"',
        [
            Challenge(
                "bearer",
                {
                    "realm": "https://auth.docker.io/token",
                    "service": "registry.docker.io",
                    "scope": "repository:library/busybox:pull",
                },
            )
        ],
    ),
    ('Basic realm="Registry Realm"', [Challenge("basic", {"realm": "Registry Realm"})]),
    (
        'Basic realm="a, b", Bearer realm="http://t/token" , service=svc',
        [
            Challenge("basic", {"realm": "a, b"}),
            Challenge("bearer", {"realm": "http://t/token", "service": "svc"}),
        ],
    ),
    (
        'BEARER Realm="x\\"y",error="insufficient_scope"',
        [Challenge("bearer", {"realm": 'x"y', "error": "insufficient_scope"})],
    ),
    ("Bearer", [Challenge("bearer", {})]),
    ("", []),
]


@pytest.mark.parametrize(("header", "expected"), CHALLENGES)
def test_parse_www_authenticate(header: str, expected: list[Challenge]) -> None:
    assert parse_www_authenticate(header) == expected


def test_challenge_scopes() -> None:
    (challenge,) = parse_www_authenticate(
        'Bearer realm="r",scope="repository:a:pull repository:b:pull,push"'
    )
    assert challenge.scopes == ["repository:a:pull", "repository:b:pull,push"]
    assert repository_scope("a/b", ["pull", "push"]) == "repository:a/b:pull,push"


# ------------------------------------------------------------ Authenticator


def _challenge_response(header: str) -> httpx.Response:
    request = httpx.Request("GET", "http://reg.test/v2/x/manifests/latest")
    return httpx.Response(401, headers={"WWW-Authenticate": header}, request=request)


def test_bearer_token_fetch_and_cache() -> None:
    seen: list[httpx.Request] = []

    def token_server(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(200, json={"access_token": f"tok{len(seen)}", "expires_in": 300})

    http = httpx.Client(transport=httpx.MockTransport(token_server))
    auth = Authenticator(http, {"reg.test": Credentials("bob", "pw")}.get)
    scopes = [repository_scope("x", ["pull"])]
    header = auth.respond(
        "reg.test",
        _challenge_response('Bearer realm="http://auth.test/token",service="svc"'),
        scopes,
        None,
    )
    assert header == "Bearer tok1"
    (request,) = seen
    assert request.url.params.get_list("scope") == ["repository:x:pull"]
    assert request.url.params["service"] == "svc"
    assert request.url.params["account"] == "bob"
    user_pass = base64.b64decode(request.headers["Authorization"].split()[1]).decode()
    assert user_pass == "bob:pw"
    # Cached for the same scopes; a new scope fetches up front, before any 401.
    assert auth.header_for("reg.test", scopes) == "Bearer tok1"
    assert auth.header_for("reg.test", [repository_scope("y", ["pull"])]) == "Bearer tok2"
    assert len(seen) == 2
    assert auth.header_for("other.test", scopes) is None


def test_token_server_refusal_is_an_auth_error() -> None:
    http = httpx.Client(transport=httpx.MockTransport(lambda r: httpx.Response(401)))
    auth = Authenticator(http, {"reg.test": Credentials("bob", "bad")}.get)
    with pytest.raises(RegistryAuthError, match="token server refused user 'bob'"):
        auth.respond("reg.test", _challenge_response('Bearer realm="http://a/t"'), [], None)


def test_basic_challenge_uses_stored_credentials() -> None:
    http = httpx.Client(transport=httpx.MockTransport(lambda r: httpx.Response(500)))
    auth = Authenticator(http, {"reg.test": Credentials("alice", "pw")}.get)
    header = auth.respond("reg.test", _challenge_response('Basic realm="r"'), [], None)
    assert header == "Basic " + base64.b64encode(b"alice:pw").decode()
    assert auth.header_for("reg.test", ["anything"]) == header  # sent up front from now on
    with pytest.raises(RegistryAuthError, match="rejected the credentials of user 'alice'"):
        auth.respond("reg.test", _challenge_response('Basic realm="r"'), [], header)

    anonymous = Authenticator(http, lambda host: None)
    with pytest.raises(RegistryAuthError, match="run `hull login reg.test`"):
        anonymous.respond("reg.test", _challenge_response('Basic realm="r"'), [], None)


# ------------------------------------------------------------ credentials file


def test_credentials_round_trip(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HULL_CONFIG", str(tmp_path / "cfg"))
    path = config_path()
    assert path == tmp_path / "cfg" / "config.json"
    assert load_credentials("127.0.0.1:5000") is None

    written = store_credentials("127.0.0.1:5000", "alice", "s3:cret")
    assert written == path
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert load_credentials("http://127.0.0.1:5000/") == Credentials("alice", "s3:cret")
    entry = json.loads(path.read_text())["auths"]["127.0.0.1:5000"]
    assert base64.b64decode(entry["auth"]).decode() == "alice:s3:cret"

    store_credentials("https://index.docker.io/v1/", "bob", "pw")
    store_credentials("127.0.0.1:5000", "alice", "new")  # replaces, keeps the others
    assert load_credentials("docker.io") == Credentials("bob", "pw")
    assert load_credentials("127.0.0.1:5000") == Credentials("alice", "new")
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert list(path.parent.iterdir()) == [path]  # no temp files left behind

    assert erase_credentials("127.0.0.1:5000") is True
    assert erase_credentials("127.0.0.1:5000") is False
    assert load_credentials("127.0.0.1:5000") is None
    assert load_credentials("index.docker.io") == Credentials("bob", "pw")
    assert "pw" not in repr(load_credentials("docker.io"))


def test_credentials_docker_formats_and_errors(tmp_path: Path) -> None:
    path = tmp_path / "config.json"
    path.write_text(
        json.dumps(
            {
                "auths": {
                    "https://index.docker.io/v1/": {"auth": base64.b64encode(b"u:p").decode()},
                    "reg.test": {"username": "plain", "password": "pw"},
                    "broken.test": {"auth": "***"},
                },
                "credsStore": "desktop",
            }
        )
    )
    assert load_credentials("docker.io", path) == Credentials("u", "p")
    assert load_credentials("reg.test", path) == Credentials("plain", "pw")
    with pytest.raises(ConfigError, match="not base64"):
        load_credentials("broken.test", path)
    store_credentials("new.test", "n", "p", path)
    assert json.loads(path.read_text())["credsStore"] == "desktop"  # other keys kept
    with pytest.raises(ConfigError, match="must not contain ':'"):
        store_credentials("new.test", "a:b", "p", path)
    path.write_text("[1, 2]")
    with pytest.raises(ConfigError, match="JSON object"):
        load_credentials("reg.test", path)


def test_normalize_registry() -> None:
    assert normalize_registry("https://index.docker.io/v1/") == "docker.io"
    assert normalize_registry("registry-1.docker.io") == "docker.io"
    assert normalize_registry("http://127.0.0.1:5000/v2/") == "127.0.0.1:5000"
