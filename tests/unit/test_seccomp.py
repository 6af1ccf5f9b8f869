"""Seccomp profile validation and compilation with libseccomp (nothing is loaded)."""

from __future__ import annotations

import copy
from typing import Any

import pytest

from hull.errors import ConfigError
from hull.oci.default_seccomp import DEFAULT_SECCOMP, DOCKER_DEFAULT_CAPS, default_seccomp
from hull.runtime.linux import seccomp


def _bpf(spec: dict[str, Any]) -> bytes:
    with seccomp.compile(spec) as flt:
        return flt.export_bpf()


def _unconditionally_allowed(profile: dict[str, Any]) -> set[str]:
    return {
        name
        for rule in profile["syscalls"]
        if rule["action"] == "SCMP_ACT_ALLOW" and not rule.get("args")
        for name in rule["names"]
    }


def _all_named(profile: dict[str, Any]) -> set[str]:
    return {name for rule in profile["syscalls"] for name in rule["names"]}


MKDIR_ENOSYS = {
    "defaultAction": "SCMP_ACT_ALLOW",
    "architectures": ["SCMP_ARCH_X86_64", "SCMP_ARCH_AARCH64"],
    "syscalls": [{"names": ["mkdir", "mkdirat"], "action": "SCMP_ACT_ERRNO", "errnoRet": 38}],
}


def test_simple_profile_compiles_to_bpf() -> None:
    program = _bpf(MKDIR_ENOSYS)
    assert program and len(program) % 8 == 0  # struct sock_filter is 8 bytes


def test_rules_make_the_program_longer() -> None:
    empty = {"defaultAction": "SCMP_ACT_ALLOW"}
    assert len(_bpf(MKDIR_ENOSYS)) > len(_bpf(empty))


def test_rule_with_the_default_action_is_dropped() -> None:
    redundant = {
        "defaultAction": "SCMP_ACT_ALLOW",
        "syscalls": [{"names": ["read"], "action": "SCMP_ACT_ALLOW"}],
    }
    assert _bpf(redundant) == _bpf({"defaultAction": "SCMP_ACT_ALLOW"})


def test_unknown_syscall_names_are_skipped() -> None:
    spec = {
        "defaultAction": "SCMP_ACT_ALLOW",
        "syscalls": [{"names": ["no_such_syscall_hull"], "action": "SCMP_ACT_KILL"}],
    }
    assert _bpf(spec) == _bpf({"defaultAction": "SCMP_ACT_ALLOW"})


@pytest.mark.parametrize(
    "action",
    [
        "SCMP_ACT_KILL",
        "SCMP_ACT_KILL_PROCESS",
        "SCMP_ACT_KILL_THREAD",
        "SCMP_ACT_TRAP",
        "SCMP_ACT_ERRNO",
        "SCMP_ACT_TRACE",
        "SCMP_ACT_LOG",
    ],
)
def test_every_supported_action_compiles(action: str) -> None:
    spec = {"defaultAction": "SCMP_ACT_ALLOW", "syscalls": [{"names": ["acct"], "action": action}]}
    assert _bpf(spec)


def test_args_conditions_and_all_operators_compile() -> None:
    rules = [
        {
            "names": ["personality"],
            "action": "SCMP_ACT_ERRNO",
            "args": [{"index": 0, "value": 5, "valueTwo": 7, "op": op}],
        }
        for op in seccomp.OPERATORS
    ]
    # Two conditions on one argument: split into two rules, like runc.
    rules.append(
        {
            "names": ["socket"],
            "action": "SCMP_ACT_ERRNO",
            "args": [
                {"index": 0, "value": 1, "op": "SCMP_CMP_EQ"},
                {"index": 0, "value": 2, "op": "SCMP_CMP_EQ"},
            ],
        }
    )
    assert _bpf({"defaultAction": "SCMP_ACT_ALLOW", "syscalls": rules})


def test_flags_are_accepted() -> None:
    spec = {
        "defaultAction": "SCMP_ACT_ALLOW",
        "flags": ["SECCOMP_FILTER_FLAG_LOG", "SECCOMP_FILTER_FLAG_TSYNC"],
    }
    assert _bpf(spec)


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ({"defaultAction": "SCMP_ACT_MAYBE"}, "unknown seccomp action 'SCMP_ACT_MAYBE'"),
        ({}, "unknown seccomp action None"),
        (
            {"defaultAction": "SCMP_ACT_ALLOW", "architectures": ["SCMP_ARCH_VAX"]},
            "unknown or unsupported architecture 'SCMP_ARCH_VAX'",
        ),
        (
            {"defaultAction": "SCMP_ACT_ALLOW", "flags": ["SECCOMP_FILTER_FLAG_BOGUS"]},
            "unsupported flag",
        ),
        (
            {
                "defaultAction": "SCMP_ACT_ALLOW",
                "syscalls": [{"names": ["read"], "action": "SCMP_ACT_DENY"}],
            },
            r"syscalls\[0\]: unknown seccomp action 'SCMP_ACT_DENY'",
        ),
        (
            {
                "defaultAction": "SCMP_ACT_ALLOW",
                "syscalls": [
                    {
                        "names": ["read"],
                        "action": "SCMP_ACT_ERRNO",
                        "args": [{"index": 0, "value": 1, "op": "SCMP_CMP_ABOUT"}],
                    }
                ],
            },
            "unknown seccomp operator 'SCMP_CMP_ABOUT'",
        ),
        (
            {
                "defaultAction": "SCMP_ACT_ALLOW",
                "syscalls": [
                    {
                        "names": ["read"],
                        "action": "SCMP_ACT_ERRNO",
                        "args": [{"index": 6, "value": 1, "op": "SCMP_CMP_EQ"}],
                    }
                ],
            },
            "argument index must be 0..5",
        ),
        (
            {
                "defaultAction": "SCMP_ACT_ALLOW",
                "syscalls": [{"names": ["read"], "action": "SCMP_ACT_ERRNO", "errnoRet": -1}],
            },
            "errnoRet",
        ),
        (
            {"defaultAction": "SCMP_ACT_ALLOW", "syscalls": [{"names": [], "action": "x"}]},
            "non-empty list",
        ),
        (
            {
                "defaultAction": "SCMP_ACT_ALLOW",
                "syscalls": [{"names": ["read"], "action": "SCMP_ACT_NOTIFY"}],
            },
            "not supported",
        ),
        (
            {"defaultAction": "SCMP_ACT_ALLOW", "listenerPath": "/run/agent.sock"},
            "not supported",
        ),
    ],
)
def test_bad_profiles_are_config_errors(spec: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        seccomp.compile(spec)


def test_validate_compiles_without_loading() -> None:
    seccomp.validate(DEFAULT_SECCOMP)
    seccomp.validate(None)
    with pytest.raises(ConfigError):
        seccomp.validate({"defaultAction": "nope"})


def test_needs_early_load_only_without_no_new_privs() -> None:
    assert seccomp.needs_early_load(False) is True
    assert seccomp.needs_early_load(True) is False


def test_default_profile_compiles_with_libseccomp() -> None:
    assert len(_bpf(DEFAULT_SECCOMP)) > 8 * 100


def test_default_profile_shape() -> None:
    assert DEFAULT_SECCOMP["defaultAction"] == "SCMP_ACT_ERRNO"
    assert DEFAULT_SECCOMP["defaultErrnoRet"] == 1
    allowed = _unconditionally_allowed(DEFAULT_SECCOMP)
    assert {"read", "write", "execve", "exit_group", "openat", "ptrace"} <= allowed
    named = _all_named(DEFAULT_SECCOMP)
    for forbidden in ("kexec_load", "open_by_handle_at", "mount", "unshare", "setns", "reboot"):
        assert forbidden not in named
    # chroot comes with CAP_SYS_CHROOT, which Docker grants by default.
    assert "chroot" in allowed


def test_default_profile_without_sys_admin_restricts_clone() -> None:
    rules = DEFAULT_SECCOMP["syscalls"]
    clone = [r for r in rules if r["names"] == ["clone"]]
    assert clone == [
        {
            "names": ["clone"],
            "action": "SCMP_ACT_ALLOW",
            "args": [{"index": 0, "value": 2114060288, "op": "SCMP_CMP_MASKED_EQ"}],
        }
    ]
    clone3 = [r for r in rules if r["names"] == ["clone3"]]
    assert clone3 == [{"names": ["clone3"], "action": "SCMP_ACT_ERRNO", "errnoRet": 38}]


def test_cap_gated_rules_follow_the_capabilities() -> None:
    with_admin = default_seccomp([*DOCKER_DEFAULT_CAPS, "CAP_SYS_ADMIN", "CAP_DAC_READ_SEARCH"])
    allowed = _unconditionally_allowed(with_admin)
    assert {"mount", "umount2", "unshare", "setns", "clone", "clone3"} <= allowed
    assert "open_by_handle_at" in allowed
    assert not [r for r in with_admin["syscalls"] if r["action"] == "SCMP_ACT_ERRNO"]
    assert "kexec_load" not in _all_named(with_admin)

    no_caps = _unconditionally_allowed(default_seccomp([]))
    assert "chroot" not in no_caps and "read" in no_caps
    assert {"kcmp", "pidfd_getfd"} <= _unconditionally_allowed(default_seccomp(["CAP_SYS_PTRACE"]))
    assert "reboot" in _unconditionally_allowed(default_seccomp(["CAP_SYS_BOOT"]))


def test_arch_specific_rules() -> None:
    amd64 = default_seccomp(DOCKER_DEFAULT_CAPS, machine="x86_64")
    assert amd64["architectures"] == ["SCMP_ARCH_X86_64", "SCMP_ARCH_X86", "SCMP_ARCH_X32"]
    assert {"arch_prctl", "modify_ldt"} <= _unconditionally_allowed(amd64)
    assert "set_tls" not in _all_named(amd64)

    arm64 = default_seccomp(DOCKER_DEFAULT_CAPS, machine="aarch64")
    assert arm64["architectures"] == ["SCMP_ARCH_AARCH64", "SCMP_ARCH_ARM"]
    assert "set_tls" in _unconditionally_allowed(arm64)
    assert "arch_prctl" not in _all_named(arm64)
    assert _bpf(arm64)  # compiles on this host too (extra arches are added)


def test_default_seccomp_returns_fresh_copies() -> None:
    before = copy.deepcopy(DEFAULT_SECCOMP)
    profile = default_seccomp(DOCKER_DEFAULT_CAPS)
    assert profile == DEFAULT_SECCOMP
    socket_rule = next(r for r in profile["syscalls"] if r["names"] == ["socket"])
    socket_rule["args"][0]["value"] = 0
    profile["syscalls"][0]["names"].append("kexec_load")
    assert default_seccomp(DOCKER_DEFAULT_CAPS) == before == DEFAULT_SECCOMP


def test_the_cache_key_does_not_depend_on_how_the_profile_shares_objects():
    """Equal profiles, one reusing a string object and one not, share a cache file:
    marshal's newer formats mark shared objects, which would split the key."""
    from hull.runtime.linux.seccomp_cache import _key

    def action() -> str:
        return "".join(["SCMP_ACT_", "ALLOW"])  # a fresh object each call

    shared = action()
    one = {"defaultAction": shared, "syscalls": [{"names": ["read"], "action": shared}]}
    two = {"defaultAction": action(), "syscalls": [{"names": ["read"], "action": action()}]}
    assert one == two
    assert _key(one) == _key(two)
    assert _key(one) != _key({**one, "defaultAction": "SCMP_ACT_ERRNO"})
