"""Digests, manifests, indexes, platforms, configs and chain IDs (pure logic)."""

from __future__ import annotations

import hashlib
import json

import pytest

from hull.errors import ConfigError, NotFoundError
from hull.oci import image
from hull.oci.digest import DigestVerifier, is_digest, parse_digest, sha256_digest
from hull.oci.image import (
    Descriptor,
    Index,
    Manifest,
    Platform,
    chain_ids,
    parse_config,
    parse_manifest,
    parse_platform,
    select_manifest,
)

D1 = "sha256:" + "a" * 64
D2 = "sha256:" + "b" * 64
D3 = "sha256:" + "c" * 64


def dumps(doc: object) -> bytes:
    return json.dumps(doc).encode()


def oci_manifest(**overrides: object) -> dict:
    doc = {
        "schemaVersion": 2,
        "mediaType": image.OCI_MANIFEST,
        "config": {"mediaType": image.OCI_CONFIG, "digest": D1, "size": 100},
        "layers": [
            {"mediaType": image.OCI_LAYER_GZIP, "digest": D2, "size": 2000},
            {"mediaType": image.OCI_LAYER_ZSTD, "digest": D3, "size": 3000},
        ],
        "annotations": {"org.opencontainers.image.title": "t"},
    }
    doc.update(overrides)
    return doc


def index_doc(platforms: list[dict], media_type: str = image.OCI_INDEX) -> dict:
    return {
        "schemaVersion": 2,
        "mediaType": media_type,
        "manifests": [
            {
                "mediaType": image.OCI_MANIFEST,
                "digest": "sha256:" + f"{i:x}" * 64,
                "size": 500 + i,
                "platform": p,
            }
            for i, p in enumerate(platforms)
        ],
    }


# ------------------------------------------------------------------ digests


def test_sha256_digest_matches_hashlib() -> None:
    assert sha256_digest(b"hello") == "sha256:" + hashlib.sha256(b"hello").hexdigest()


def test_parse_digest_accepts_sha256_and_sha512() -> None:
    assert parse_digest(D1) == ("sha256", "a" * 64)
    assert parse_digest("sha512:" + "0" * 128) == ("sha512", "0" * 128)


@pytest.mark.parametrize(
    "bad",
    [
        "",
        "a" * 64,
        "md5:" + "a" * 32,
        "sha256:" + "a" * 63,
        "sha256:" + "A" * 64,
        "sha256:" + "g" * 64,
        "sha256:../../etc/passwd",
        "sha512:" + "a" * 64,
    ],
)
def test_parse_digest_rejects_malformed(bad: str) -> None:
    with pytest.raises(ConfigError):
        parse_digest(bad)
    assert not is_digest(bad)


def test_digest_verifier_streams() -> None:
    v = DigestVerifier()
    v.update(b"hel")
    v.update(b"lo")
    assert v.digest() == sha256_digest(b"hello")
    assert v.size == 5
    assert DigestVerifier.for_digest("sha512:" + "0" * 128).digest().startswith("sha512:")


# ---------------------------------------------------------------- manifests


def test_parse_oci_manifest() -> None:
    raw = dumps(oci_manifest())
    m = parse_manifest(raw, image.OCI_MANIFEST)
    assert isinstance(m, Manifest)
    assert m.media_type == image.OCI_MANIFEST
    assert m.config == Descriptor(image.OCI_CONFIG, D1, 100)
    assert [layer.digest for layer in m.layers] == [D2, D3]
    assert m.layers[1].media_type == image.OCI_LAYER_ZSTD
    assert m.annotations == {"org.opencontainers.image.title": "t"}
    assert m.raw == raw
    assert m.digest == sha256_digest(raw)


def test_parse_docker_manifest_with_content_type_parameters() -> None:
    doc = oci_manifest(mediaType=image.DOCKER_MANIFEST_V2)
    doc["config"]["mediaType"] = image.DOCKER_CONFIG
    doc["layers"][0]["mediaType"] = image.DOCKER_LAYER_GZIP
    m = parse_manifest(dumps(doc), image.DOCKER_MANIFEST_V2 + "; charset=utf-8")
    assert isinstance(m, Manifest)
    assert m.media_type == image.DOCKER_MANIFEST_V2
    assert m.config.media_type == image.DOCKER_CONFIG


def test_media_type_guessed_from_fields_when_absent() -> None:
    doc = oci_manifest()
    del doc["mediaType"]
    assert isinstance(parse_manifest(dumps(doc), None), Manifest)
    idx = index_doc([{"os": "linux", "architecture": "amd64"}])
    del idx["mediaType"]
    assert isinstance(parse_manifest(dumps(idx), "application/json"), Index)


def test_parse_index_and_docker_manifest_list() -> None:
    plats = [
        {"os": "linux", "architecture": "amd64"},
        {"os": "linux", "architecture": "arm64", "variant": "v8"},
    ]
    for media_type in (image.OCI_INDEX, image.DOCKER_MANIFEST_LIST):
        idx = parse_manifest(dumps(index_doc(plats, media_type)), None)
        assert isinstance(idx, Index)
        assert idx.media_type == media_type
        assert [str(d.platform) for d in idx.manifests] == ["linux/amd64", "linux/arm64/v8"]


@pytest.mark.parametrize(
    ("raw", "match"),
    [
        (b"{not json", "malformed JSON"),
        (b"[1, 2]", "expected a JSON object"),
        (dumps(oci_manifest(config=None)), "config"),
        (dumps({k: v for k, v in oci_manifest().items() if k != "config"}), "config"),
        (dumps(oci_manifest(layers="nope")), "layers"),
        (dumps(oci_manifest(schemaVersion=3)), "schemaVersion"),
        (dumps(oci_manifest(schemaVersion="2")), "schemaVersion"),
        (
            dumps(oci_manifest(config={"mediaType": image.OCI_CONFIG, "digest": "sha256:xx"})),
            "invalid digest",
        ),
        (
            dumps(oci_manifest(config={"mediaType": image.OCI_CONFIG, "digest": D1, "size": -1})),
            "size",
        ),
        (
            dumps(oci_manifest(config={"mediaType": image.OCI_CONFIG, "digest": D1, "size": True})),
            "size",
        ),
        (dumps(oci_manifest(layers=[{"digest": D2, "size": 1}])), "mediaType"),
        (dumps(oci_manifest(annotations={"a": 1})), "annotations"),
        (dumps(oci_manifest(mediaType="application/vnd.example+json")), "unsupported media"),
    ],
)
def test_malformed_manifests_are_config_errors(raw: bytes, match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        parse_manifest(raw, None)


def test_bad_digest_error_names_the_field() -> None:
    doc = oci_manifest()
    doc["layers"][1]["digest"] = "sha256:1234"
    with pytest.raises(ConfigError, match=r"manifest\.layers\[1\]"):
        parse_manifest(dumps(doc), None)


def test_schema1_rejected_by_content_type_and_by_body() -> None:
    schema1 = dumps({"schemaVersion": 1, "name": "x", "tag": "y", "fsLayers": []})
    with pytest.raises(ConfigError, match="schema1"):
        parse_manifest(schema1, None)
    with pytest.raises(ConfigError, match="schema1"):
        parse_manifest(schema1, image.DOCKER_MANIFEST_V1_SIGNED)


def test_body_media_type_must_agree_with_content_type() -> None:
    with pytest.raises(ConfigError, match="does not match"):
        parse_manifest(dumps(oci_manifest()), image.OCI_INDEX)


def test_descriptor_round_trip() -> None:
    data = {
        "mediaType": image.OCI_MANIFEST,
        "digest": D1,
        "size": 7,
        "annotations": {"k": "v"},
        "platform": {"os": "linux", "architecture": "arm", "variant": "v7"},
        "urls": ["https://example.invalid/blob"],
    }
    desc = Descriptor.from_dict(data)
    assert desc.platform == Platform("linux", "arm", "v7")
    assert desc.to_dict() == data


# ---------------------------------------------------------------- platforms


def test_parse_platform_forms() -> None:
    assert parse_platform("linux/amd64") == Platform("linux", "amd64")
    assert parse_platform("linux/arm64/v8") == Platform("linux", "arm64", "v8")
    assert parse_platform("linux/x86_64") == Platform("linux", "amd64")
    assert parse_platform("linux/aarch64") == Platform("linux", "arm64")
    assert parse_platform("arm64") == Platform("linux", "arm64")
    assert parse_platform("linux/arm/7") == Platform("linux", "arm", "v7")
    assert str(parse_platform("linux/arm/v6")) == "linux/arm/v6"
    for bad in ("", "linux/", "a/b/c/d", "//"):
        with pytest.raises(ConfigError):
            parse_platform(bad)


def test_host_platform_is_linux() -> None:
    host = image.host_platform()
    assert host.os == "linux"
    assert host.architecture in ("amd64", "arm64", "arm", "386", "riscv64", "ppc64le", "s390x")


def _index(platforms: list[dict]) -> Index:
    parsed = parse_manifest(dumps(index_doc(platforms)), None)
    assert isinstance(parsed, Index)
    return parsed


MULTI = [
    {"os": "linux", "architecture": "arm", "variant": "v6"},
    {"os": "linux", "architecture": "arm", "variant": "v7"},
    {"os": "linux", "architecture": "arm64", "variant": "v8"},
    {"os": "linux", "architecture": "amd64"},
    {"os": "unknown", "architecture": "unknown"},
    {"os": "windows", "architecture": "amd64"},
]


@pytest.mark.parametrize(
    ("wanted", "expected_index"),
    [
        ("linux/amd64", 3),
        ("linux/arm64", 2),  # an arm64 host matches the index's arm64/v8
        ("linux/arm64/v8", 2),
        ("linux/arm/v7", 1),
        ("linux/arm", 1),  # plain arm means v7
        ("linux/arm/v6", 0),
        ("linux/arm/v8", 1),  # a v8 CPU runs v7 (best compatible) before v6
        ("linux/amd64/v3", 3),  # v3 falls back to the v1 baseline
        ("windows/amd64", 5),
    ],
)
def test_select_manifest(wanted: str, expected_index: int) -> None:
    idx = _index(MULTI)
    assert select_manifest(idx, parse_platform(wanted)) is idx.manifests[expected_index]


def test_select_prefers_exact_variant_over_fallback() -> None:
    idx = _index(
        [
            {"os": "linux", "architecture": "amd64"},
            {"os": "linux", "architecture": "amd64", "variant": "v3"},
        ]
    )
    assert select_manifest(idx, parse_platform("linux/amd64/v3")) is idx.manifests[1]
    assert select_manifest(idx, parse_platform("linux/amd64")) is idx.manifests[0]


def test_select_arm64_falls_back_to_32bit_arm() -> None:
    idx = _index([{"os": "linux", "architecture": "arm", "variant": "v7"}])
    assert select_manifest(idx, parse_platform("linux/arm64")) is idx.manifests[0]


def test_select_manifest_not_found_lists_platforms() -> None:
    idx = _index(MULTI)
    with pytest.raises(NotFoundError) as info:
        select_manifest(idx, parse_platform("linux/s390x"))
    message = info.value.message
    assert "linux/s390x" in message
    assert "linux/amd64" in message and "linux/arm/v7" in message
    assert "unknown" not in message
    # arm/v6 cannot run arm/v7 images
    only_v7 = _index([{"os": "linux", "architecture": "arm", "variant": "v7"}])
    with pytest.raises(NotFoundError):
        select_manifest(only_v7, parse_platform("linux/arm/v6"))


# ------------------------------------------------------------------ configs


def config_doc(**overrides: object) -> dict:
    doc = {
        "created": "2024-01-02T03:04:05Z",
        "architecture": "amd64",
        "os": "linux",
        "config": {
            "Env": ["PATH=/usr/bin:/bin"],
            "Cmd": ["sh"],
            "Entrypoint": None,
            "WorkingDir": "/srv",
            "User": "1000:1000",
            "ExposedPorts": {"80/tcp": {}},
            "Volumes": {"/data": {}},
            "Labels": {"a": "b"},
            "StopSignal": "SIGTERM",
        },
        "rootfs": {"type": "layers", "diff_ids": [D1, D2]},
        "history": [{"created_by": "ADD rootfs /"}, {"empty_layer": True}],
    }
    doc.update(overrides)
    return doc


def test_parse_config() -> None:
    raw = dumps(config_doc())
    cfg = parse_config(raw)
    assert cfg.raw == raw
    assert (cfg.os, cfg.architecture) == ("linux", "amd64")
    assert cfg.config["Cmd"] == ["sh"]
    assert cfg.config["WorkingDir"] == "/srv"
    assert cfg.config["ExposedPorts"] == {"80/tcp": {}}
    assert cfg.rootfs_diff_ids == [D1, D2]
    assert cfg.history[1] == {"empty_layer": True}
    assert cfg.created == "2024-01-02T03:04:05Z"
    assert cfg.digest == sha256_digest(raw)


def test_parse_config_without_run_config() -> None:
    cfg = parse_config(dumps(config_doc(config=None, history=None)))
    assert cfg.config == {}
    assert cfg.history == []


@pytest.mark.parametrize(
    ("overrides", "match"),
    [
        ({"os": None}, "'os'"),
        ({"architecture": 5}, "architecture"),
        ({"rootfs": None}, "rootfs"),
        ({"rootfs": {"type": "squash", "diff_ids": []}}, "rootfs.type"),
        ({"rootfs": {"type": "layers", "diff_ids": ["nope"]}}, r"diff_ids\[0\]"),
        ({"config": {"Cmd": "sh -c true"}}, "Cmd"),
        ({"config": {"Env": [1]}}, "Env"),
        ({"config": {"Labels": {"a": 1}}}, "Labels"),
        ({"config": {"WorkingDir": ["/"]}}, "WorkingDir"),
    ],
)
def test_parse_config_rejects(overrides: dict, match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        parse_config(dumps(config_doc(**overrides)))


def test_parse_config_malformed_json() -> None:
    with pytest.raises(ConfigError, match="malformed JSON"):
        parse_config(b"{")


# ---------------------------------------------------------------- chain IDs


def test_chain_ids_known_vector() -> None:
    diff_ids = [sha256_digest(b"layer0"), sha256_digest(b"layer1"), sha256_digest(b"layer2")]
    c0 = diff_ids[0]
    c1 = "sha256:" + hashlib.sha256(f"{c0} {diff_ids[1]}".encode()).hexdigest()
    c2 = "sha256:" + hashlib.sha256(f"{c1} {diff_ids[2]}".encode()).hexdigest()
    assert chain_ids(diff_ids) == [c0, c1, c2]
    assert chain_ids([]) == []
    with pytest.raises(ConfigError):
        chain_ids(["sha256:bad"])
