"""Capability names and masks: pure logic, no root needed."""

from __future__ import annotations

import logging

import pytest

from hull.errors import ConfigError
from hull.runtime.linux import capabilities


def test_caps_table_matches_the_kernel_numbering() -> None:
    assert capabilities.CAPS["CAP_CHOWN"] == 0
    assert capabilities.CAPS["CAP_SYS_ADMIN"] == 21
    assert capabilities.CAPS["CAP_SETFCAP"] == 31
    assert capabilities.CAPS["CAP_CHECKPOINT_RESTORE"] == 40
    assert sorted(capabilities.CAPS.values()) == list(range(41))


def test_parse_and_names_round_trip() -> None:
    wanted = ["CAP_CHOWN", "CAP_KILL", "CAP_NET_RAW", "CAP_SYSLOG", "CAP_BPF"]
    mask = capabilities.parse(wanted)
    assert mask == (1 << 0) | (1 << 5) | (1 << 13) | (1 << 34) | (1 << 39)
    assert capabilities.names(mask) == wanted


def test_parse_empty_and_duplicates() -> None:
    assert capabilities.parse([]) == 0
    assert capabilities.parse(["CAP_KILL", "CAP_KILL"]) == 1 << 5


def test_unknown_capability_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="unknown capability 'CAP_FOO'"):
        capabilities.parse(["CAP_CHOWN", "CAP_FOO"])


def test_lowercase_or_unprefixed_names_are_rejected() -> None:
    with pytest.raises(ConfigError):
        capabilities.parse(["chown"])


def test_caps_the_kernel_lacks_are_skipped_with_a_warning(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(capabilities, "last_cap", lambda: 37)
    with caplog.at_level(logging.WARNING, logger=capabilities.__name__):
        mask = capabilities.parse(["CAP_CHOWN", "CAP_BPF", "CAP_AUDIT_READ"])
    assert mask == (1 << 0) | (1 << 37)
    assert "CAP_BPF" in caplog.text


def test_docker_default_set() -> None:
    assert len(capabilities.DOCKER_DEFAULT) == 14
    assert "CAP_SYS_ADMIN" not in capabilities.DOCKER_DEFAULT
    assert {"CAP_CHOWN", "CAP_NET_BIND_SERVICE", "CAP_AUDIT_WRITE"} <= set(
        capabilities.DOCKER_DEFAULT
    )
    assert bin(capabilities.parse(capabilities.DOCKER_DEFAULT)).count("1") == 14


def test_names_ignores_bits_beyond_known_caps() -> None:
    assert capabilities.names(1 << 63 | 1 << 21) == ["CAP_SYS_ADMIN"]


def test_validate_rejects_unknown_names_and_bad_shapes() -> None:
    capabilities.validate({"bounding": ["CAP_KILL"], "ambient": None})
    capabilities.validate(None)
    with pytest.raises(ConfigError, match="process.capabilities.permitted"):
        capabilities.validate({"permitted": ["CAP_NOPE"]})
    with pytest.raises(ConfigError, match="must be a list"):
        capabilities.validate({"effective": "CAP_KILL"})
