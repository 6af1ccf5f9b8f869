"""Capabilities, seccomp, rlimits and no_new_privs on the real kernel (root).

Each check runs in a forked child, which changes only itself and then exits,
so the test process keeps its privileges and limits.
"""

from __future__ import annotations

import ctypes
import errno
import json
import os
import resource
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from hull.errors import KernelError
from hull.oci.default_seccomp import DEFAULT_SECCOMP, DOCKER_DEFAULT_CAPS, default_seccomp
from hull.runtime.linux import capabilities, rlimits, seccomp, syscalls

pytestmark = pytest.mark.root

NOBODY = 65534


def run_in_child(fn: Callable[[], Any]) -> Any:
    """Run fn in a forked child; return its JSON-able result or re-raise its error text."""
    read_fd, write_fd = os.pipe()
    pid = os.fork()
    if pid == 0:  # child: never return into pytest
        try:
            os.close(read_fd)
            try:
                result = {"ok": fn()}
            except BaseException as e:
                result = {"error": f"{type(e).__name__}: {e}"}
            os.write(write_fd, json.dumps(result).encode())
        finally:
            os._exit(0)
    os.close(write_fd)
    with os.fdopen(read_fd, "rb") as reader:
        data = reader.read()
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0, f"child died: status {status}"
    result = json.loads(data)
    if "error" in result:
        raise AssertionError(f"child failed: {result['error']}")
    return result["ok"]


def run_and_exec(prepare: Callable[[], None], argv: list[str]) -> str:
    """Fork, run prepare(), then exec argv with stdout into a pipe; return its output."""
    read_fd, write_fd = os.pipe()
    pid = os.fork()
    if pid == 0:
        try:
            os.close(read_fd)
            os.dup2(write_fd, 1)
            prepare()
            os.execv(argv[0], argv)
        except BaseException as e:
            os.write(write_fd, f"PREPARE FAILED: {type(e).__name__}: {e}".encode())
        finally:
            os._exit(127)
    os.close(write_fd)
    with os.fdopen(read_fd, "rb") as reader:
        output = reader.read().decode()
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0, output
    return output


def cap_lines(status_text: str) -> dict[str, int]:
    """CapInh/CapPrm/CapEff/CapBnd/CapAmb of a /proc/<pid>/status text, as ints."""
    return {
        key: int(value, 16)
        for key, _, value in (line.partition(":\t") for line in status_text.splitlines())
        if key.startswith("Cap")
    }


def own_caps() -> dict[str, int]:
    return cap_lines(Path("/proc/self/status").read_text())


DEFAULT_MASK = capabilities.parse(DOCKER_DEFAULT_CAPS)
DOCKER_CAPS = {
    "bounding": list(DOCKER_DEFAULT_CAPS),
    "effective": list(DOCKER_DEFAULT_CAPS),
    "permitted": list(DOCKER_DEFAULT_CAPS),
    "inheritable": [],
}


# --- capabilities ------------------------------------------------------------------


def test_docker_default_caps_are_exactly_what_the_kernel_reports() -> None:
    def child() -> dict[str, int]:
        capabilities.drop_bounding(DOCKER_CAPS)
        capabilities.apply(DOCKER_CAPS)
        return own_caps()

    caps = run_in_child(child)
    assert caps == {
        "CapInh": 0,
        "CapPrm": DEFAULT_MASK,
        "CapEff": DEFAULT_MASK,
        "CapBnd": DEFAULT_MASK,
        "CapAmb": 0,
    }
    assert capabilities.names(caps["CapBnd"]) == sorted(
        DOCKER_DEFAULT_CAPS, key=capabilities.CAPS.__getitem__
    )


def test_empty_capabilities_drop_everything() -> None:
    def child() -> dict[str, int]:
        capabilities.drop_bounding({})
        capabilities.apply({})
        return own_caps()

    caps = run_in_child(child)
    assert caps == {"CapInh": 0, "CapPrm": 0, "CapEff": 0, "CapBnd": 0, "CapAmb": 0}


def test_ambient_caps_survive_uid_switch_and_exec() -> None:
    wanted = {
        **DOCKER_CAPS,
        "inheritable": ["CAP_NET_BIND_SERVICE", "CAP_KILL"],
        "ambient": ["CAP_NET_BIND_SERVICE"],
    }
    seen_before_exec: dict[str, int] = {}

    def prepare() -> None:
        capabilities.drop_bounding(wanted)
        syscalls.prctl(syscalls.PR_SET_KEEPCAPS, 1)
        os.setgroups([])
        os.setresgid(NOBODY, NOBODY, NOBODY)
        os.setresuid(NOBODY, NOBODY, NOBODY)
        capabilities.apply(wanted)
        seen_before_exec.update(own_caps())
        if seen_before_exec["CapAmb"] != 1 << capabilities.CAPS["CAP_NET_BIND_SERVICE"]:
            raise RuntimeError(f"ambient not raised: {seen_before_exec}")

    caps = cap_lines(run_and_exec(prepare, ["/bin/cat", "/proc/self/status"]))
    bind = 1 << capabilities.CAPS["CAP_NET_BIND_SERVICE"]
    kill = 1 << capabilities.CAPS["CAP_KILL"]
    # After exec as non-root, only ambient caps stay in permitted and effective.
    assert caps == {
        "CapInh": bind | kill,
        "CapPrm": bind,
        "CapEff": bind,
        "CapBnd": DEFAULT_MASK,
        "CapAmb": bind,
    }


def test_ambient_cap_outside_inheritable_is_a_kernel_error() -> None:
    def child() -> str:
        try:
            capabilities.apply({**DOCKER_CAPS, "ambient": ["CAP_KILL"]})
        except KernelError as e:
            return e.message
        return "no error"

    assert "cannot raise ambient capability CAP_KILL" in run_in_child(child)


def test_effective_beyond_permitted_is_a_kernel_error() -> None:
    def child() -> str:
        try:
            capabilities.apply({"effective": ["CAP_KILL"], "permitted": []})
        except KernelError as e:
            return e.message
        return "no error"

    assert run_in_child(child).startswith("cannot set capabilities")


# --- seccomp -----------------------------------------------------------------------


def test_errno_rule_blocks_only_its_syscall(tmp_path: Path) -> None:
    spec = {
        "defaultAction": "SCMP_ACT_ALLOW",
        "syscalls": [{"names": ["mkdir", "mkdirat"], "action": "SCMP_ACT_ERRNO", "errnoRet": 38}],
    }

    def child() -> dict[str, Any]:
        seccomp.load(spec)
        try:
            os.mkdir(tmp_path / "blocked")
            mkdir_errno = 0
        except OSError as e:
            mkdir_errno = e.errno or 0
        (tmp_path / "file").write_text("still works")
        return {"mkdir": mkdir_errno, "listing": sorted(os.listdir(tmp_path))}

    result = run_in_child(child)
    assert result == {"mkdir": errno.ENOSYS, "listing": ["file"]}
    os.mkdir(tmp_path / "parent-unaffected")


def test_args_rule_matches_only_that_value() -> None:
    query = 0xFFFFFFFF  # personality(0xffffffff) only reads the current persona
    spec = {
        "defaultAction": "SCMP_ACT_ALLOW",
        "syscalls": [
            {
                "names": ["personality"],
                "action": "SCMP_ACT_ERRNO",
                "errnoRet": errno.EACCES,
                "args": [{"index": 0, "value": query, "op": "SCMP_CMP_EQ"}],
            }
        ],
    }

    def child() -> list[int]:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.personality.argtypes = [ctypes.c_ulong]
        before = libc.personality(query)
        seccomp.load(spec)
        ctypes.set_errno(0)
        blocked = libc.personality(query)
        blocked_errno = ctypes.get_errno()
        allowed = libc.personality(before)  # same persona: a no-op that returns it
        return [before, blocked, blocked_errno, allowed]

    before, blocked, blocked_errno, allowed = run_in_child(child)
    assert (blocked, blocked_errno) == (-1, errno.EACCES)
    assert allowed == before


def test_errno_default_with_allow_list_still_exits() -> None:
    spec = {
        "defaultAction": "SCMP_ACT_ERRNO",
        "syscalls": [
            {
                "names": [
                    "write",
                    "exit",
                    "exit_group",
                    "rt_sigreturn",
                    "rt_sigprocmask",
                    "brk",
                    "mmap",
                    "munmap",
                    "futex",
                ],
                "action": "SCMP_ACT_ALLOW",
            }
        ],
    }
    read_fd, write_fd = os.pipe()
    pid = os.fork()
    if pid == 0:
        try:
            os.close(read_fd)
            seccomp.load(spec)
            try:
                os.uname()
                os.write(write_fd, b"uname allowed?!")
            except OSError as e:
                os.write(write_fd, f"uname errno {e.errno}".encode())
        finally:
            os._exit(7)
    os.close(write_fd)
    with os.fdopen(read_fd, "rb") as reader:
        output = reader.read().decode()
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 7
    assert output == f"uname errno {errno.EPERM}"


def _try(call: Callable[[], Any]) -> int:
    try:
        call()
    except OSError as e:
        return e.errno or -1
    return 0


# Numbers for syscalls the syscalls module does not wrap (clone3 is 435 everywhere).
_RAW_NUMBERS = {"x86_64": {"kexec_load": 246}, "aarch64": {"kexec_load": 104}}


def _raw_syscall(name: str, *args: int) -> Callable[[], None]:
    number = 435 if name == "clone3" else _RAW_NUMBERS[os.uname().machine][name]

    def call() -> None:
        libc = ctypes.CDLL(None, use_errno=True)
        if libc.syscall(number, *[ctypes.c_long(a) for a in args]) < 0:
            raise OSError(ctypes.get_errno(), name)

    return call


def test_default_profile_blocks_admin_syscalls_even_for_root(tmp_path: Path) -> None:
    def child() -> dict[str, int]:
        # The process still has CAP_SYS_ADMIN: any EPERM below is seccomp's doing.
        seccomp.load(DEFAULT_SECCOMP)
        pid = os.fork()  # clone without namespace flags stays allowed
        if pid == 0:
            os._exit(0)
        _, status = os.waitpid(pid, 0)
        return {
            "unshare": _try(lambda: syscalls.unshare(syscalls.CLONE_NEWNS)),
            # Arguments the kernel would refuse anyway (ENODEV, EINVAL), so a filter
            # that let them through could not change the host.
            "mount": _try(lambda: syscalls.mount("none", str(tmp_path), "hull-no-such-fs")),
            "kexec_load": _try(_raw_syscall("kexec_load", 0, 0, 0, 0x7EAD0000)),
            "clone3": _try(_raw_syscall("clone3", 0, 0)),
            "fork": os.waitstatus_to_exitcode(status),
            "no_new_privs": syscalls.prctl(syscalls.PR_GET_NO_NEW_PRIVS),
        }

    assert run_in_child(child) == {
        "unshare": errno.EPERM,
        "mount": errno.EPERM,
        "kexec_load": errno.EPERM,
        "clone3": errno.ENOSYS,
        "fork": 0,
        # libseccomp must not set no_new_privs behind process.noNewPrivileges' back.
        "no_new_privs": 0,
    }
    assert not os.path.ismount(tmp_path)


def test_default_profile_with_sys_admin_allows_unshare() -> None:
    profile = default_seccomp([*DOCKER_DEFAULT_CAPS, "CAP_SYS_ADMIN"])

    def child() -> int:
        seccomp.load(profile)
        return _try(lambda: syscalls.unshare(syscalls.CLONE_NEWUTS))

    assert run_in_child(child) == 0


def test_filter_loads_after_dropping_caps_only_with_no_new_privs() -> None:
    def child() -> dict[str, Any]:
        capabilities.drop_bounding(DOCKER_CAPS)
        capabilities.apply(DOCKER_CAPS)  # CAP_SYS_ADMIN is gone now
        outcome: dict[str, Any] = {"early": seccomp.needs_early_load(no_new_privs=False)}
        try:
            seccomp.load(DEFAULT_SECCOMP)
            outcome["without_nnp"] = "loaded"
        except KernelError as e:
            outcome["without_nnp"] = e.message
        syscalls.prctl(syscalls.PR_SET_NO_NEW_PRIVS, 1)
        outcome["nnp"] = syscalls.prctl(syscalls.PR_GET_NO_NEW_PRIVS)
        seccomp.load(DEFAULT_SECCOMP)
        outcome["with_nnp"] = "loaded"
        outcome["unshare"] = _try(lambda: syscalls.unshare(syscalls.CLONE_NEWNS))
        return outcome

    outcome = run_in_child(child)
    assert outcome["early"] is True
    assert outcome["without_nnp"].startswith("cannot load seccomp filter")
    assert outcome["nnp"] == 1
    assert outcome["with_nnp"] == "loaded"
    assert outcome["unshare"] == errno.EPERM


def test_no_new_privs_is_off_by_default_and_sticks_once_set() -> None:
    def child() -> list[int]:
        before = syscalls.prctl(syscalls.PR_GET_NO_NEW_PRIVS)
        syscalls.prctl(syscalls.PR_SET_NO_NEW_PRIVS, 1)
        return [before, syscalls.prctl(syscalls.PR_GET_NO_NEW_PRIVS)]

    assert run_in_child(child) == [0, 1]
    assert syscalls.prctl(syscalls.PR_GET_NO_NEW_PRIVS) == 0


def test_seccomp_survives_exec_into_another_program() -> None:
    spec = {
        "defaultAction": "SCMP_ACT_ALLOW",
        "syscalls": [{"names": ["uname"], "action": "SCMP_ACT_ERRNO", "errnoRet": 38}],
    }
    code = "import os\ntry:\n    os.uname()\n    print('allowed')\nexcept OSError as e:\n"
    code += "    print(e.errno)"
    output = run_and_exec(lambda: seccomp.load(spec), [sys.executable, "-c", code])
    assert output.strip() == str(errno.ENOSYS)


# --- rlimits -----------------------------------------------------------------------


def test_rlimits_are_applied() -> None:
    def child() -> list[list[int]]:
        rlimits.apply(
            [
                {"type": "RLIMIT_NOFILE", "soft": 1024, "hard": 2048},
                {"type": "RLIMIT_CORE", "soft": 0, "hard": 4096},
            ]
        )
        return [
            list(resource.getrlimit(resource.RLIMIT_NOFILE)),
            list(resource.getrlimit(resource.RLIMIT_CORE)),
        ]

    assert run_in_child(child) == [[1024, 2048], [0, 4096]]


def test_hard_limit_above_the_current_one_is_clamped() -> None:
    _, current_hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if current_hard == resource.RLIM_INFINITY:
        pytest.skip("RLIMIT_NOFILE hard limit is unlimited here")
    asked = max(current_hard + 10000, 1 << 21)  # above nr_open too: never allowed

    def child() -> list[int]:
        rlimits.apply([{"type": "RLIMIT_NOFILE", "soft": asked, "hard": asked}])
        return list(resource.getrlimit(resource.RLIMIT_NOFILE))

    assert run_in_child(child) == [current_hard, current_hard]

    def child_soft_below() -> list[int]:
        rlimits.apply([{"type": "RLIMIT_NOFILE", "soft": 512, "hard": asked}])
        return list(resource.getrlimit(resource.RLIMIT_NOFILE))

    assert run_in_child(child_soft_below) == [512, current_hard]


# --- the compiled-filter cache -------------------------------------------------------

UNAME_ENOSYS = {
    "defaultAction": "SCMP_ACT_ALLOW",
    "flags": ["SECCOMP_FILTER_FLAG_LOG"],
    "syscalls": [{"names": ["uname"], "action": "SCMP_ACT_ERRNO", "errnoRet": 38}],
}
UNAME_PROBE = "import os\ntry:\n    os.uname()\n    print('allowed')\nexcept OSError as e:\n"
UNAME_PROBE += "    print(e.errno)"


def test_a_cached_filter_acts_as_the_compiled_one(tmp_path: Path, monkeypatch) -> None:
    from hull.runtime.linux import seccomp_cache

    cache = str(tmp_path / "cache")
    first = seccomp_cache.compile_cached(UNAME_ENOSYS, cache)  # compiled, then saved
    saved = list((tmp_path / "cache").iterdir())
    assert len(saved) == 1 and saved[0].suffix == ".bpf"

    def no_libseccomp(spec: object) -> None:
        raise AssertionError("a cached profile was compiled again")

    monkeypatch.setattr(seccomp, "compile", no_libseccomp)
    second = seccomp_cache.compile_cached(UNAME_ENOSYS, cache)
    assert isinstance(second, seccomp_cache.CachedFilter)
    assert second.program == saved[0].read_bytes()
    for flt in (first, second):
        output = run_and_exec(flt.load, [sys.executable, "-c", UNAME_PROBE])
        assert output.strip() == str(errno.ENOSYS)


def test_a_damaged_cache_entry_is_compiled_again(tmp_path: Path) -> None:
    from hull.runtime.linux import seccomp_cache

    cache = str(tmp_path / "cache")
    seccomp_cache.compile_cached(UNAME_ENOSYS, cache)
    (entry,) = (tmp_path / "cache").iterdir()
    entry.write_bytes(b"\x00" * 5)  # not whole BPF instructions
    flt = seccomp_cache.compile_cached(UNAME_ENOSYS, cache)
    assert len(entry.read_bytes()) % 8 == 0 and len(entry.read_bytes()) > 8
    output = run_and_exec(flt.load, [sys.executable, "-c", UNAME_PROBE])
    assert output.strip() == str(errno.ENOSYS)


def test_a_cached_default_profile_needs_no_new_privs_once_caps_are_dropped(
    tmp_path: Path,
) -> None:
    from hull.runtime.linux import seccomp_cache

    cache = str(tmp_path / "cache")
    seccomp_cache.compile_cached(DEFAULT_SECCOMP, cache)  # warm the cache

    def child() -> dict[str, Any]:
        flt = seccomp_cache.compile_cached(DEFAULT_SECCOMP, cache)
        outcome: dict[str, Any] = {"cached": isinstance(flt, seccomp_cache.CachedFilter)}
        capabilities.drop_bounding(DOCKER_CAPS)
        capabilities.apply(DOCKER_CAPS)
        try:
            flt.load()
            outcome["without_nnp"] = "loaded"
        except KernelError as e:
            outcome["without_nnp"] = e.message
        syscalls.prctl(syscalls.PR_SET_NO_NEW_PRIVS, 1)
        flt.load()
        outcome["unshare"] = _try(lambda: syscalls.unshare(syscalls.CLONE_NEWNS))
        return outcome

    outcome = run_in_child(child)
    assert outcome["cached"] is True
    assert outcome["without_nnp"].startswith("cannot load seccomp filter")
    assert outcome["unshare"] == errno.EPERM
