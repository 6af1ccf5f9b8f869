"""process.rlimits validation: pure checks, nothing applied."""

from __future__ import annotations

import resource

import pytest

from hull.errors import ConfigError
from hull.runtime.linux import rlimits


def test_valid_limits_pass() -> None:
    rlimits.validate(
        [
            {"type": "RLIMIT_NOFILE", "soft": 1024, "hard": 2048},
            {"type": "RLIMIT_CORE", "soft": 0, "hard": 0},
            {"type": "RLIMIT_STACK", "soft": 8 << 20, "hard": 2**64 - 1},
            {"type": "RLIMIT_LOCKS", "soft": 2**64 - 1, "hard": 2**64 - 1},
        ]
    )
    rlimits.validate([])
    rlimits.validate(None)


def test_unknown_type_is_rejected() -> None:
    with pytest.raises(ConfigError, match="unknown rlimit type 'RLIMIT_FOO'"):
        rlimits.validate([{"type": "RLIMIT_FOO", "soft": 1, "hard": 1}])


def test_soft_above_hard_is_rejected() -> None:
    with pytest.raises(ConfigError, match="soft limit 4096 is above its hard limit 1024"):
        rlimits.validate([{"type": "RLIMIT_NOFILE", "soft": 4096, "hard": 1024}])


def test_unlimited_soft_with_finite_hard_is_rejected() -> None:
    with pytest.raises(ConfigError, match="above its hard limit"):
        rlimits.validate([{"type": "RLIMIT_NPROC", "soft": 2**64 - 1, "hard": 100}])


@pytest.mark.parametrize("bad", [-1, 2**64, "1024", None, True, 1.5])
def test_values_must_be_uint64(bad: object) -> None:
    with pytest.raises(ConfigError, match="unsigned 64-bit"):
        rlimits.validate([{"type": "RLIMIT_NOFILE", "soft": bad, "hard": 2048}])


def test_duplicate_types_are_rejected() -> None:
    with pytest.raises(ConfigError, match="more than once"):
        rlimits.validate(
            [
                {"type": "RLIMIT_NOFILE", "soft": 1, "hard": 2},
                {"type": "RLIMIT_NOFILE", "soft": 1, "hard": 2},
            ]
        )


def test_apply_validates_before_touching_anything() -> None:
    # The first entry is valid, but nothing may be set when a later one is bad.
    before = resource.getrlimit(resource.RLIMIT_CORE)
    with pytest.raises(ConfigError):
        rlimits.apply(
            [
                {"type": "RLIMIT_CORE", "soft": 0, "hard": 0},
                {"type": "RLIMIT_BOGUS", "soft": 0, "hard": 0},
            ]
        )
    assert resource.getrlimit(resource.RLIMIT_CORE) == before
