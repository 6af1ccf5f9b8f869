"""Image reference parsing and normalisation, checked against Docker's behaviour."""

from __future__ import annotations

import pytest

from hull.errors import ConfigError
from hull.oci.reference import Reference, parse_reference

DIGEST = "sha256:" + "ab" * 32

VALID = [
    # text, domain, path, tag, digest, str(), familiar()
    ("busybox", "docker.io", "library/busybox", "latest", None,
     "docker.io/library/busybox:latest", "busybox:latest"),
    ("library/busybox:1.36", "docker.io", "library/busybox", "1.36", None,
     "docker.io/library/busybox:1.36", "busybox:1.36"),
    ("docker.io/busybox", "docker.io", "library/busybox", "latest", None,
     "docker.io/library/busybox:latest", "busybox:latest"),
    ("index.docker.io/library/alpine:3", "docker.io", "library/alpine", "3", None,
     "docker.io/library/alpine:3", "alpine:3"),
    ("foo/bar", "docker.io", "foo/bar", "latest", None,
     "docker.io/foo/bar:latest", "foo/bar:latest"),
    ("library/a/b", "docker.io", "library/a/b", "latest", None,
     "docker.io/library/a/b:latest", "library/a/b:latest"),
    ("localhost/foo", "localhost", "foo", "latest", None,
     "localhost/foo:latest", "localhost/foo:latest"),
    ("localhost:5000/foo/bar:tag", "localhost:5000", "foo/bar", "tag", None,
     "localhost:5000/foo/bar:tag", "localhost:5000/foo/bar:tag"),
    (f"127.0.0.1:5000/x@{DIGEST}", "127.0.0.1:5000", "x", None, DIGEST,
     f"127.0.0.1:5000/x@{DIGEST}", f"127.0.0.1:5000/x@{DIGEST}"),
    (f"name:tag@{DIGEST}", "docker.io", "library/name", "tag", DIGEST,
     f"docker.io/library/name:tag@{DIGEST}", f"name:tag@{DIGEST}"),
    ("[::1]:5000/img:v1", "[::1]:5000", "img", "v1", None,
     "[::1]:5000/img:v1", "[::1]:5000/img:v1"),
    ("Example.COM/foo", "Example.COM", "foo", "latest", None,
     "Example.COM/foo:latest", "Example.COM/foo:latest"),
    ("reg.example.com/a/b_c__d-e.f---g:V1.0-rc_1", "reg.example.com", "a/b_c__d-e.f---g",
     "V1.0-rc_1", None, "reg.example.com/a/b_c__d-e.f---g:V1.0-rc_1",
     "reg.example.com/a/b_c__d-e.f---g:V1.0-rc_1"),
    ("localhost:5000", "docker.io", "library/localhost", "5000", None,
     "docker.io/library/localhost:5000", "localhost:5000"),
]  # fmt: skip


@pytest.mark.parametrize(("text", "domain", "path", "tag", "digest", "full", "familiar"), VALID)
def test_valid_references(
    text: str,
    domain: str,
    path: str,
    tag: str | None,
    digest: str | None,
    full: str,
    familiar: str,
) -> None:
    ref = parse_reference(text)
    assert (ref.domain, ref.path, ref.tag, ref.digest) == (domain, path, tag, digest)
    assert str(ref) == full
    assert ref.familiar() == familiar
    assert parse_reference(str(ref)) == ref  # the full form parses back to itself


INVALID = [
    ("", "empty"),
    ("Busybox", "must be lowercase"),
    ("foo/Bar", "must be lowercase"),
    ("busybox:", "invalid tag"),
    ("busybox:-tag", "invalid tag"),
    ("busybox:" + "t" * 129, "invalid tag"),
    ("busybox@sha256:abc", "invalid digest"),
    ("busybox@sha256:" + "A" * 64, "lowercase hex"),
    ("busybox@sha256:" + "a" * 63 + "g", "invalid digest"),
    ("busybox@md5:" + "a" * 32, "unsupported digest algorithm"),
    ("busybox@sha256:" + "a" * 63, "64 lowercase hex"),
    ("foo//bar", "empty path component"),
    ("foo/bar/", "empty path component"),
    ("-foo", "invalid repository name component"),
    ("foo_-bar", "invalid repository name component"),
    ("foo.", "invalid repository name component"),
    (":tag", "empty"),
    ("@" + DIGEST, "empty"),
    ("localhost:abc/foo", "invalid registry"),
    ("-bad-.com/foo", "invalid registry"),
    ("foo bar", "whitespace"),
    (" busybox", "whitespace"),
    ("a/" + "b" * 260, "longer than 255"),
]


@pytest.mark.parametrize(("text", "why"), INVALID)
def test_invalid_references(text: str, why: str) -> None:
    with pytest.raises(ConfigError, match="invalid reference format") as failed:
        parse_reference(text)
    assert why in failed.value.message


def test_reference_helpers() -> None:
    ref = parse_reference("busybox", default_tag=False)
    assert ref.tag is None and ref.reference == "latest"
    assert ref.familiar_name() == "busybox"
    pinned = parse_reference(f"busybox:1@{DIGEST}")
    assert pinned.reference == DIGEST  # a digest wins over the tag when pulling
    assert pinned.name == "docker.io/library/busybox"
    assert pinned.with_tag("2") == Reference("docker.io", "library/busybox", "2", None)
    assert pinned.with_digest(DIGEST).tag is None
    with pytest.raises(ConfigError):
        pinned.with_tag("bad tag")


def _accepts(check, text: str) -> bool:
    try:
        check(text)
    except ConfigError:
        return False
    return True


@pytest.mark.parametrize(
    "text", ["busybox", "a", "x9", "0", "latest", "v1", "Abc", "a.b", "a-b", "_x", "a b", "é", ""]
)
def test_the_plain_shortcut_agrees_with_the_patterns(text: str) -> None:
    """_plain skips the regex for a run of [a-z0-9]; the checks still accept exactly
    what the patterns accept."""
    import re

    from hull.oci import reference as ref

    if ref._plain(text):
        assert re.match(ref._PATH_COMPONENT, text) and re.match(ref._TAG, text)
    assert _accepts(ref._check_tag, text) == bool(re.match(ref._TAG, text))
    component_ok = text == text.lower() and bool(re.match(ref._PATH_COMPONENT, text))
    assert _accepts(lambda t: ref._check_path(t, t), text) == component_ok
