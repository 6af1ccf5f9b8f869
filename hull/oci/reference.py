"""Image references (`busybox`, `localhost:5000/foo/bar:tag`, `name@sha256:...`).

Parsed and normalised the way Docker does it, so `hull pull busybox` and
`docker pull busybox` mean the same image: a bare name lives on docker.io, a
single-component docker.io name is under `library/`, and with neither tag nor
digest the tag is `latest`. The grammar is the distribution project's
(github.com/distribution/reference), checked piece by piece so an error can say
which piece is wrong.
"""

from __future__ import annotations

from hull.errors import ConfigError
from hull.records import dataclass

DEFAULT_DOMAIN = "docker.io"
LEGACY_DEFAULT_DOMAIN = "index.docker.io"
OFFICIAL_REPO_PREFIX = "library/"
DEFAULT_TAG = "latest"
NAME_TOTAL_LENGTH_MAX = 255

_ALPHA_NUMERIC = r"[a-z0-9]+"
_SEPARATOR = r"(?:[._]|__|[-]+)"
_PATH_COMPONENT = rf"{_ALPHA_NUMERIC}(?:{_SEPARATOR}{_ALPHA_NUMERIC})*\Z"
_DOMAIN_COMPONENT = r"(?:[a-zA-Z0-9]|[a-zA-Z0-9][a-zA-Z0-9-]*[a-zA-Z0-9])"
_DOMAIN_NAME = rf"{_DOMAIN_COMPONENT}(?:\.{_DOMAIN_COMPONENT})*"
_IPV6 = r"\[(?:[a-fA-F0-9:]+)\]"
_DOMAIN = rf"(?:{_DOMAIN_NAME}|{_IPV6})(?::[0-9]+)?\Z"
_TAG = r"[\w][\w.-]{0,127}\Z"
_DIGEST = r"[A-Za-z][A-Za-z0-9]*(?:[-_+.][A-Za-z][A-Za-z0-9]*)*:[0-9a-fA-F]{32,}\Z"
_DIGEST_HEX_LENGTH = {"sha256": 64, "sha512": 128}


def _match(pattern: str, text: str) -> bool:
    import re  # not at the top: `hull run busybox` needs no pattern (_plain), and re costs ~3 ms

    return re.match(pattern, text) is not None


def _plain(text: str) -> bool:
    """A non-empty run of [a-z0-9]: a valid path component and tag (both patterns
    accept one), by far the common case, checked without a regex."""
    return text.isascii() and text.isalnum() and text == text.lower()


@dataclass(frozen=True)
class Reference:
    """A normalised image reference: registry domain, repository path, tag and/or digest."""

    domain: str
    path: str
    tag: str | None = None
    digest: str | None = None

    @property
    def name(self) -> str:
        """The fully qualified repository name, e.g. `docker.io/library/busybox`."""
        return f"{self.domain}/{self.path}"

    @property
    def reference(self) -> str:
        """What to ask the registry for: the digest if pinned, else the tag."""
        return self.digest or self.tag or DEFAULT_TAG

    def familiar_name(self) -> str:
        """The short name people type: `busybox`, `foo/bar`, `localhost:5000/x`."""
        if self.domain != DEFAULT_DOMAIN:
            return self.name
        short = self.path.removeprefix(OFFICIAL_REPO_PREFIX)
        return short if "/" not in short else self.path

    def familiar(self) -> str:
        """The short form with tag and digest, as `docker images` shows it."""
        return self.familiar_name() + self._suffix()

    def with_tag(self, tag: str) -> Reference:
        _check_tag(tag)
        return Reference(self.domain, self.path, tag, None)

    def with_digest(self, digest: str) -> Reference:
        _check_digest(digest)
        return Reference(self.domain, self.path, None, digest)

    def _suffix(self) -> str:
        suffix = f":{self.tag}" if self.tag else ""
        return suffix + (f"@{self.digest}" if self.digest else "")

    def __str__(self) -> str:
        return self.name + self._suffix()


def parse_reference(text: str, *, default_tag: bool = True) -> Reference:
    """Parse and normalise `text`; raise ConfigError naming what is wrong.

    With `default_tag` (the default) a reference without tag or digest gets `latest`.
    """
    if not text:
        raise ConfigError("invalid reference format: the image name is empty")
    if text != text.strip() or any(c.isspace() for c in text):
        raise ConfigError(f"invalid reference format {text!r}: whitespace is not allowed")

    remainder, digest = text, None
    if "@" in remainder:
        remainder, digest = remainder.split("@", 1)
        _check_digest(digest, text)

    name, tag = remainder, None
    last_slash = remainder.rfind("/")
    colon = remainder.rfind(":")
    if colon > last_slash:  # a colon after the last slash separates the tag, not a port
        name, tag = remainder[:colon], remainder[colon + 1 :]
        _check_tag(tag, text)

    domain, path = _split_domain(name, text)
    if len(f"{domain}/{path}") > NAME_TOTAL_LENGTH_MAX:
        raise ConfigError(
            f"invalid reference format {text!r}: repository name is longer than "
            f"{NAME_TOTAL_LENGTH_MAX} characters"
        )
    if tag is None and digest is None and default_tag:
        tag = DEFAULT_TAG
    return Reference(domain, path, tag, digest)


def _split_domain(name: str, text: str) -> tuple[str, str]:
    """Docker's rule: the first component is a registry only if it looks like a host."""
    if not name:
        raise ConfigError(f"invalid reference format {text!r}: the repository name is empty")
    first, sep, rest = name.partition("/")
    looks_like_host = bool(sep) and (
        "." in first or ":" in first or first == "localhost" or first.lower() != first
    )
    if looks_like_host:
        domain, path = first, rest
        if not _match(_DOMAIN, domain):
            raise ConfigError(f"invalid reference format {text!r}: invalid registry {domain!r}")
    else:
        domain, path = DEFAULT_DOMAIN, name
    if domain == LEGACY_DEFAULT_DOMAIN:
        domain = DEFAULT_DOMAIN
    if domain == DEFAULT_DOMAIN and "/" not in path:
        path = OFFICIAL_REPO_PREFIX + path
    _check_path(path, text)
    return domain, path


def _check_path(path: str, text: str) -> None:
    if path.lower() != path:
        raise ConfigError(f"invalid reference format {text!r}: repository name must be lowercase")
    for component in path.split("/"):
        if not component:
            raise ConfigError(
                f"invalid reference format {text!r}: empty path component in {path!r}"
            )
        if not _plain(component) and not _match(_PATH_COMPONENT, component):
            raise ConfigError(
                f"invalid reference format {text!r}: invalid repository name component "
                f"{component!r} (use lowercase letters, digits and single . _ __ or - "
                "separators between them)"
            )


def _check_tag(tag: str, text: str | None = None) -> None:
    if not (_plain(tag) and len(tag) <= 128) and not _match(_TAG, tag):
        raise ConfigError(
            f"invalid reference format {text or tag!r}: invalid tag {tag!r} (up to 128 "
            "letters, digits, _ . -; not starting with . or -)"
        )


def _check_digest(digest: str, text: str | None = None) -> None:
    where = f"invalid reference format {text or digest!r}"
    if not _match(_DIGEST, digest):
        raise ConfigError(f"{where}: invalid digest {digest!r} (expected algorithm:hex)")
    algorithm, hex_part = digest.split(":", 1)
    expected = _DIGEST_HEX_LENGTH.get(algorithm)
    if expected is None:
        raise ConfigError(f"{where}: unsupported digest algorithm {algorithm!r}")
    if len(hex_part) != expected or hex_part.lower() != hex_part:
        raise ConfigError(
            f"{where}: a {algorithm} digest needs {expected} lowercase hex characters"
        )
