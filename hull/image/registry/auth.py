"""Registry authentication: WWW-Authenticate challenges, bearer tokens, basic auth.

A registry says how to authenticate in its 401 answer. With `Bearer realm=...,
service=..., scope=...` we fetch a token from the realm (sending basic credentials
when we have some, anonymously otherwise) and cache it per registry and scope, so a
pull asks the token server once, not once per layer. With `Basic` we send the
stored username and password. After the first challenge the scheme of a registry is
remembered and later requests carry credentials up front, saving a round trip.
See Docker's token authentication spec (distribution/docs/spec/auth/token.md).
"""

from __future__ import annotations

import base64
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field

import httpx

from hull.image.registry.credentials import Credentials
from hull.image.registry.errors import RegistryAuthError, RegistryError, unreachable

CredentialLookup = Callable[[str], "Credentials | None"]

DEFAULT_TOKEN_LIFETIME = 60  # seconds, per the token spec when expires_in is absent
TOKEN_EXPIRY_MARGIN = 5  # refresh a little before the token server says we must


@dataclass(frozen=True)
class Challenge:
    """One challenge of a WWW-Authenticate header: scheme (lower case) and parameters."""

    scheme: str
    params: dict[str, str] = field(default_factory=dict)

    @property
    def realm(self) -> str | None:
        return self.params.get("realm")

    @property
    def service(self) -> str | None:
        return self.params.get("service")

    @property
    def scopes(self) -> list[str]:
        return self.params.get("scope", "").split()


def parse_www_authenticate(header: str) -> list[Challenge]:
    """Parse `Bearer realm="...",service="...",scope="..."` (and Basic, several at once).

    RFC 7235 syntax: a scheme token, then comma-separated `key=value` pairs whose
    values may be quoted strings with backslash escapes; a token not followed by `=`
    starts the next challenge.
    """
    challenges: list[Challenge] = []
    pos, length = 0, len(header)

    def skip(chars: str) -> None:
        nonlocal pos
        while pos < length and header[pos] in chars:
            pos += 1

    def token() -> str:
        nonlocal pos
        start = pos
        while pos < length and header[pos] not in ' \t,="':
            pos += 1
        return header[start:pos]

    def value() -> str:
        nonlocal pos
        if pos < length and header[pos] == '"':
            pos += 1
            out = []
            while pos < length and header[pos] != '"':
                if header[pos] == "\\" and pos + 1 < length:
                    pos += 1
                out.append(header[pos])
                pos += 1
            pos += 1  # closing quote
            return "".join(out)
        return token()

    while True:
        skip(" \t,")
        if pos >= length:
            break
        scheme = token()
        if not scheme:  # stray character; skip it rather than loop forever
            pos += 1
            continue
        params: dict[str, str] = {}
        while True:
            skip(" \t,")
            start = pos
            key = token()
            skip(" \t")
            if not key or pos >= length or header[pos] != "=":
                pos = start  # a new challenge (or the end)
                break
            pos += 1
            skip(" \t")
            params[key.lower()] = value()
        challenges.append(Challenge(scheme.lower(), params))
    return challenges


def repository_scope(path: str, actions: Sequence[str]) -> str:
    """`repository:library/busybox:pull,push`, the scope a token must grant."""
    return f"repository:{path}:{','.join(actions)}"


def basic_header(credentials: Credentials) -> str:
    raw = f"{credentials.username}:{credentials.password}".encode()
    return "Basic " + base64.b64encode(raw).decode("ascii")


class Authenticator:
    """Turns challenges into Authorization headers; thread-safe, shared by a client."""

    def __init__(self, http: httpx.Client, credentials: CredentialLookup) -> None:
        self._http = http
        self._credentials = credentials
        self._lock = threading.Lock()
        self._challenges: dict[str, Challenge] = {}
        self._tokens: dict[tuple[str, tuple[str, ...]], tuple[str, float]] = {}
        # One lock per (host, scopes): parallel layer downloads share one token fetch.
        self._fetching: dict[tuple[str, tuple[str, ...]], threading.Lock] = {}

    def header_for(self, host: str, scopes: Sequence[str]) -> str | None:
        """The Authorization header to send up front, if this registry challenged before."""
        key = (host, tuple(scopes))
        with self._lock:
            challenge = self._challenges.get(host)
            if challenge is None:
                return None
            if challenge.scheme == "basic":
                creds = self._credentials(host)
                return basic_header(creds) if creds else None
            fetch_lock = self._fetching.setdefault(key, threading.Lock())
        with fetch_lock:
            with self._lock:
                cached = self._tokens.get(key)
            if cached and cached[1] > time.monotonic():
                return "Bearer " + cached[0]
            # A bearer registry we know: fetch the token now rather than after a 401.
            return self._fetch_bearer(host, challenge, scopes)

    def respond(
        self, host: str, response: httpx.Response, scopes: Sequence[str], sent: str | None
    ) -> str:
        """The header to retry with after `response` (a 401); raise if retrying is futile.

        `sent` is the Authorization header the refused request carried, if any.
        """
        challenges = parse_www_authenticate(
            ", ".join(response.headers.get_list("www-authenticate"))
        )
        by_scheme = {c.scheme: c for c in challenges}
        challenge = by_scheme.get("bearer") or by_scheme.get("basic")
        if challenge is None:
            raise RegistryAuthError(
                f"registry {host} refused the request (401) without a challenge we support"
                f" (got {response.headers.get('www-authenticate')!r})"
            )
        with self._lock:
            self._challenges[host] = challenge
            self._tokens.pop((host, tuple(scopes)), None)
        if challenge.scheme == "basic":
            creds = self._credentials(host)
            if creds is None:
                raise RegistryAuthError(
                    f"registry {host} requires authentication: run `hull login {host}`"
                )
            header = basic_header(creds)
            if sent == header:
                self.check_rejected(host, sent)
            return header
        return self._fetch_bearer(host, challenge, scopes, extra=challenge.scopes)

    def check_rejected(self, host: str, sent: str | None) -> None:
        """After a retry still got 401: say so plainly if it was our basic credentials."""
        creds = self._credentials(host)
        if sent and sent.startswith("Basic ") and creds is not None:
            raise RegistryAuthError(
                f"registry {host} rejected the credentials of user {creds.username!r}"
                f" (check them with `hull login {host}`)"
            )

    def _fetch_bearer(
        self, host: str, challenge: Challenge, scopes: Sequence[str], extra: Sequence[str] = ()
    ) -> str:
        """Fetch a token for `scopes` (plus what the challenge asks); cache it under `scopes`."""
        if not challenge.realm:
            raise RegistryAuthError(f"registry {host} sent a Bearer challenge without a realm")
        wanted = unique([*scopes, *extra])
        params: dict[str, str | list[str]] = {}
        if challenge.service:
            params["service"] = challenge.service
        if wanted:
            params["scope"] = wanted
        creds = self._credentials(host)
        headers = {}
        if creds is not None:
            params["account"] = creds.username
            headers["Authorization"] = basic_header(creds)
        try:
            answer = self._http.get(challenge.realm, params=params, headers=headers)
        except httpx.TransportError as exc:
            raise unreachable(f"{host} (token server {challenge.realm})", exc) from exc
        if answer.status_code in (401, 403):
            who = f"user {creds.username!r}" if creds else "anonymous access"
            raise RegistryAuthError(
                f"registry {host}: the token server refused {who} "
                f"(HTTP {answer.status_code}); check the credentials with `hull login {host}`"
            )
        if answer.status_code != 200:
            raise RegistryError(
                f"registry {host}: token server {challenge.realm} answered HTTP "
                f"{answer.status_code}"
            )
        token, lifetime = _read_token(host, answer)
        expires = time.monotonic() + max(lifetime - TOKEN_EXPIRY_MARGIN, 1)
        with self._lock:
            self._tokens[(host, tuple(scopes))] = (token, expires)
        return "Bearer " + token


def _read_token(host: str, answer: httpx.Response) -> tuple[str, int]:
    try:
        body = answer.json()
    except ValueError as exc:
        raise RegistryError(f"registry {host}: the token server did not answer JSON") from exc
    if not isinstance(body, dict):
        raise RegistryError(f"registry {host}: the token server's answer is not a JSON object")
    token = body.get("token") or body.get("access_token")
    if not isinstance(token, str) or not token:
        raise RegistryError(f"registry {host}: the token server's answer holds no token")
    lifetime = body.get("expires_in")
    if not isinstance(lifetime, int) or lifetime <= 0:
        lifetime = DEFAULT_TOKEN_LIFETIME
    return token, lifetime


def unique(items: Iterable[str]) -> list[str]:
    """Items without repeats, in their first order."""
    return list(dict.fromkeys(items))
