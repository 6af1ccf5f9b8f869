"""Content digests as the OCI image-spec writes them ("sha256:<hex>").

Pure: no I/O. Every digest that comes from outside (a manifest, a config, a
CLI argument) goes through parse_digest before it names a file, so a digest
can never smuggle a path separator or `..` into the content store.
"""

from __future__ import annotations

from hull.errors import ConfigError

# Hex lengths of the algorithms the image-spec registers (descriptor.md).
HEX_LENGTHS = {"sha256": 64, "sha512": 128}
_HEX_CHARS = frozenset("0123456789abcdef")


def sha256_digest(data: bytes) -> str:
    """The digest of data as "sha256:<hex>".

    Small inputs (configs, manifests, chain IDs) hash with the built-in _sha256:
    hashlib loads OpenSSL, ~3 ms of `hull run`. Streams use hashlib (faster per byte).
    """
    try:
        from _sha256 import sha256
    except ImportError:  # an interpreter built without it
        from hashlib import sha256
    return "sha256:" + sha256(data).hexdigest()


def parse_digest(d: str) -> tuple[str, str]:
    """Split "alg:hex" into (alg, hex), refusing unknown algorithms and bad hex."""
    if not isinstance(d, str) or ":" not in d:
        raise ConfigError(f"invalid digest {d!r}: expected ALGORITHM:HEX, e.g. sha256:<64 hex>")
    algorithm, _, encoded = d.partition(":")
    if algorithm not in HEX_LENGTHS:
        supported = ", ".join(sorted(HEX_LENGTHS))
        raise ConfigError(
            f"invalid digest {d!r}: unsupported algorithm {algorithm!r} (use {supported})"
        )
    want = HEX_LENGTHS[algorithm]
    if len(encoded) != want or not _HEX_CHARS.issuperset(encoded):
        raise ConfigError(
            f"invalid digest {d!r}: {algorithm} needs {want} lowercase hex characters"
        )
    return algorithm, encoded


def is_digest(d: str) -> bool:
    """True if d parses as a digest (for callers that branch rather than fail)."""
    try:
        parse_digest(d)
    except ConfigError:
        return False
    return True


class DigestVerifier:
    """Hash a stream incrementally; digest() gives "alg:hex" of what went through."""

    def __init__(self, algorithm: str = "sha256") -> None:
        if algorithm not in HEX_LENGTHS:
            raise ConfigError(f"unsupported digest algorithm {algorithm!r}")
        import hashlib

        self.algorithm = algorithm
        self._hash = hashlib.new(algorithm)
        self.size = 0

    @classmethod
    def for_digest(cls, expected: str) -> DigestVerifier:
        """A verifier using the algorithm the expected digest names."""
        return cls(parse_digest(expected)[0])

    def update(self, data: bytes) -> None:
        self._hash.update(data)
        self.size += len(data)

    def digest(self) -> str:
        return f"{self.algorithm}:{self._hash.hexdigest()}"

    def verified(self, expected: str) -> bool:
        return self.digest() == expected
