"""Docker's default seccomp profile, as an OCI `linux.seccomp` object.

Translated from moby/moby profiles/seccomp/default.json so that containers get
the same syscall surface under Hull as under Docker. Some rules depend on the
container's capabilities (CAP_SYS_ADMIN lets mount/unshare/setns through,
CAP_SYS_PTRACE lets ptrace...) or on the CPU architecture; `default_seccomp`
resolves those the way moby's setupSeccomp does. Pure data and logic, no I/O.
"""

from __future__ import annotations

import marshal
import os

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Iterable
    from typing import Any

# Docker's default capability set (moby oci/caps/defaults.go), in the OCI form.
DOCKER_DEFAULT_CAPS: tuple[str, ...] = (
    "CAP_CHOWN",
    "CAP_DAC_OVERRIDE",
    "CAP_FSETID",
    "CAP_FOWNER",
    "CAP_MKNOD",
    "CAP_NET_RAW",
    "CAP_SETGID",
    "CAP_SETUID",
    "CAP_SETFCAP",
    "CAP_SETPCAP",
    "CAP_NET_BIND_SERVICE",
    "CAP_SYS_CHROOT",
    "CAP_KILL",
    "CAP_AUDIT_WRITE",
)

# Native architecture -> the seccomp architectures a filter must cover (moby's archMap).
_ARCH_MAP: dict[str, tuple[str, ...]] = {
    "SCMP_ARCH_X86_64": ("SCMP_ARCH_X86_64", "SCMP_ARCH_X86", "SCMP_ARCH_X32"),
    "SCMP_ARCH_AARCH64": ("SCMP_ARCH_AARCH64", "SCMP_ARCH_ARM"),
    "SCMP_ARCH_MIPS64": ("SCMP_ARCH_MIPS64", "SCMP_ARCH_MIPS", "SCMP_ARCH_MIPS64N32"),
    "SCMP_ARCH_MIPS64N32": ("SCMP_ARCH_MIPS64N32", "SCMP_ARCH_MIPS", "SCMP_ARCH_MIPS64"),
    "SCMP_ARCH_MIPSEL64": ("SCMP_ARCH_MIPSEL64", "SCMP_ARCH_MIPSEL", "SCMP_ARCH_MIPSEL64N32"),
    "SCMP_ARCH_MIPSEL64N32": (
        "SCMP_ARCH_MIPSEL64N32",
        "SCMP_ARCH_MIPSEL",
        "SCMP_ARCH_MIPSEL64",
    ),
    "SCMP_ARCH_S390X": ("SCMP_ARCH_S390X", "SCMP_ARCH_S390"),
    "SCMP_ARCH_RISCV64": ("SCMP_ARCH_RISCV64",),
}

# platform.machine() -> the architecture names the profile's "arches" conditions use
# (moby's goToNative), and that name -> the native seccomp architecture.
_MACHINE_TO_NATIVE = {
    "x86_64": "amd64",
    "amd64": "amd64",
    "aarch64": "arm64",
    "arm64": "arm64",
    "i386": "x86",
    "i686": "x86",
    "armv7l": "arm",
    "armv6l": "arm",
    "ppc64le": "ppc64le",
    "s390x": "s390x",
    "riscv64": "riscv64",
}
_NATIVE_TO_SECCOMP = {
    "amd64": "SCMP_ARCH_X86_64",
    "arm64": "SCMP_ARCH_AARCH64",
    "x86": "SCMP_ARCH_X86",
    "arm": "SCMP_ARCH_ARM",
    "ppc64le": "SCMP_ARCH_PPC64LE",
    "s390x": "SCMP_ARCH_S390X",
    "riscv64": "SCMP_ARCH_RISCV64",
}

# Allowed for every container, whatever its capabilities or architecture.
_ALWAYS_ALLOWED: tuple[str, ...] = (
    "accept", "accept4", "access", "adjtimex", "alarm", "bind", "brk", "capget", "capset",
    "chdir", "chmod", "chown", "chown32", "clock_adjtime", "clock_adjtime64",
    "clock_getres", "clock_getres_time64", "clock_gettime", "clock_gettime64",
    "clock_nanosleep", "clock_nanosleep_time64", "close", "close_range", "connect",
    "copy_file_range", "creat", "dup", "dup2", "dup3", "epoll_create", "epoll_create1",
    "epoll_ctl", "epoll_ctl_old", "epoll_pwait", "epoll_pwait2", "epoll_wait",
    "epoll_wait_old", "eventfd", "eventfd2", "execve", "execveat", "exit", "exit_group",
    "faccessat", "faccessat2", "fadvise64", "fadvise64_64", "fallocate", "fanotify_mark",
    "fchdir", "fchmod", "fchmodat", "fchown", "fchown32", "fchownat", "fcntl", "fcntl64",
    "fdatasync", "fgetxattr", "flistxattr", "flock", "fork", "fremovexattr", "fsetxattr",
    "fstat", "fstat64", "fstatat64", "fstatfs", "fstatfs64", "fsync", "ftruncate",
    "ftruncate64", "futex", "futex_time64", "futex_waitv", "futimesat", "getcpu", "getcwd",
    "getdents", "getdents64", "getegid", "getegid32", "geteuid", "geteuid32", "getgid",
    "getgid32", "getgroups", "getgroups32", "getitimer", "getpeername", "getpgid",
    "getpgrp", "getpid", "getppid", "getpriority", "getrandom", "getresgid", "getresgid32",
    "getresuid", "getresuid32", "getrlimit", "get_robust_list", "getrusage", "getsid",
    "getsockname", "getsockopt", "get_thread_area", "gettid", "gettimeofday", "getuid",
    "getuid32", "getxattr", "inotify_add_watch", "inotify_init", "inotify_init1",
    "inotify_rm_watch", "io_cancel", "ioctl", "io_destroy", "io_getevents",
    "io_pgetevents", "io_pgetevents_time64", "ioprio_get", "ioprio_set", "io_setup",
    "io_submit", "io_uring_enter", "io_uring_register", "io_uring_setup", "ipc", "kill",
    "landlock_add_rule", "landlock_create_ruleset", "landlock_restrict_self", "lchown",
    "lchown32", "lgetxattr", "link", "linkat", "listen", "listxattr", "llistxattr",
    "_llseek", "lremovexattr", "lseek", "lsetxattr", "lstat", "lstat64", "madvise",
    "membarrier", "memfd_create", "memfd_secret", "mincore", "mkdir", "mkdirat", "mknod",
    "mknodat", "mlock", "mlock2", "mlockall", "mmap", "mmap2", "mprotect", "mq_getsetattr",
    "mq_notify", "mq_open", "mq_timedreceive", "mq_timedreceive_time64", "mq_timedsend",
    "mq_timedsend_time64", "mq_unlink", "mremap", "msgctl", "msgget", "msgrcv", "msgsnd",
    "msync", "munlock", "munlockall", "munmap", "name_to_handle_at", "nanosleep",
    "newfstatat", "_newselect", "open", "openat", "openat2", "pause", "pidfd_open",
    "pidfd_send_signal", "pipe", "pipe2", "pkey_alloc", "pkey_free", "pkey_mprotect",
    "poll", "ppoll", "ppoll_time64", "prctl", "pread64", "preadv", "preadv2", "prlimit64",
    "process_mrelease", "pselect6", "pselect6_time64", "pwrite64", "pwritev", "pwritev2",
    "read", "readahead", "readlink", "readlinkat", "readv", "recv", "recvfrom", "recvmmsg",
    "recvmmsg_time64", "recvmsg", "remap_file_pages", "removexattr", "rename", "renameat",
    "renameat2", "restart_syscall", "rmdir", "rseq", "rt_sigaction", "rt_sigpending",
    "rt_sigprocmask", "rt_sigqueueinfo", "rt_sigreturn", "rt_sigsuspend",
    "rt_sigtimedwait", "rt_sigtimedwait_time64", "rt_tgsigqueueinfo", "sched_getaffinity",
    "sched_getattr", "sched_getparam", "sched_get_priority_max", "sched_get_priority_min",
    "sched_getscheduler", "sched_rr_get_interval", "sched_rr_get_interval_time64",
    "sched_setaffinity", "sched_setattr", "sched_setparam", "sched_setscheduler",
    "sched_yield", "seccomp", "select", "semctl", "semget", "semop", "semtimedop",
    "semtimedop_time64", "send", "sendfile", "sendfile64", "sendmmsg", "sendmsg", "sendto",
    "setfsgid", "setfsgid32", "setfsuid", "setfsuid32", "setgid", "setgid32", "setgroups",
    "setgroups32", "setitimer", "setpgid", "setpriority", "setregid", "setregid32",
    "setresgid", "setresgid32", "setresuid", "setresuid32", "setreuid", "setreuid32",
    "setrlimit", "set_robust_list", "setsid", "setsockopt", "set_thread_area",
    "set_tid_address", "setuid", "setuid32", "setxattr", "shmat", "shmctl", "shmdt",
    "shmget", "shutdown", "sigaltstack", "signalfd", "signalfd4", "sigprocmask",
    "sigreturn", "socketcall", "socketpair", "splice", "stat", "stat64", "statfs",
    "statfs64", "statx", "symlink", "symlinkat", "sync", "sync_file_range", "syncfs",
    "sysinfo", "tee", "tgkill", "time", "timer_create", "timer_delete", "timer_getoverrun",
    "timer_gettime", "timer_gettime64", "timer_settime", "timer_settime64",
    "timerfd_create", "timerfd_gettime", "timerfd_gettime64", "timerfd_settime",
    "timerfd_settime64", "times", "tkill", "truncate", "truncate64", "ugetrlimit", "umask",
    "uname", "unlink", "unlinkat", "utime", "utimensat", "utimensat_time64", "utimes",
    "vfork", "vmsplice", "wait4", "waitid", "waitpid", "write", "writev",
)  # fmt: skip

# clone(2) flags that create namespaces (CLONE_NEWNS|NEWCGROUP|NEWUTS|NEWIPC|NEWUSER|
# NEWPID|NEWNET): without CAP_SYS_ADMIN, clone is allowed only when none is set.
_CLONE_NS_FLAGS = 2114060288


def _allow(*names: str, **conditions: Any) -> dict[str, Any]:
    return {"names": list(names), "action": "SCMP_ACT_ALLOW", **conditions}


def _arg(index: int, value: int, op: str) -> dict[str, Any]:
    return {"index": index, "value": value, "op": op}


# The rest of the profile, in moby's order. "includes"/"excludes" hold the conditions
# moby evaluates: {"caps": [...]} against the bounding set, {"arches": [...]} against
# the native architecture. ptrace's "minKernel 4.8" always holds on kernels Hull
# supports (openat2 needs 5.6), so it is dropped.
_CONDITIONAL_RULES: tuple[dict[str, Any], ...] = (
    _allow("process_vm_readv", "process_vm_writev", "ptrace"),
    _allow("socket", args=[_arg(0, 40, "SCMP_CMP_NE")]),  # anything but AF_VSOCK
    *(
        _allow("personality", args=[_arg(0, persona, "SCMP_CMP_EQ")])
        for persona in (0, 8, 131072, 131080, 4294967295)
    ),
    _allow("sync_file_range2", "swapcontext", includes={"arches": ["ppc64le"]}),
    _allow(
        "arm_fadvise64_64",
        "arm_sync_file_range",
        "sync_file_range2",
        "breakpoint",
        "cacheflush",
        "set_tls",
        includes={"arches": ["arm", "arm64"]},
    ),
    _allow("arch_prctl", includes={"arches": ["amd64", "x32"]}),
    _allow("modify_ldt", includes={"arches": ["amd64", "x32", "x86"]}),
    _allow(
        "s390_pci_mmio_read",
        "s390_pci_mmio_write",
        "s390_runtime_instr",
        includes={"arches": ["s390", "s390x"]},
    ),
    _allow("riscv_flush_icache", includes={"arches": ["riscv64"]}),
    _allow("open_by_handle_at", includes={"caps": ["CAP_DAC_READ_SEARCH"]}),
    _allow(
        "bpf",
        "clone",
        "clone3",
        "fanotify_init",
        "fsconfig",
        "fsmount",
        "fsopen",
        "fspick",
        "lookup_dcookie",
        "mount",
        "mount_setattr",
        "move_mount",
        "open_tree",
        "perf_event_open",
        "quotactl",
        "quotactl_fd",
        "setdomainname",
        "sethostname",
        "setns",
        "syslog",
        "umount",
        "umount2",
        "unshare",
        includes={"caps": ["CAP_SYS_ADMIN"]},
    ),
    _allow(
        "clone",
        args=[_arg(0, _CLONE_NS_FLAGS, "SCMP_CMP_MASKED_EQ")],
        excludes={"caps": ["CAP_SYS_ADMIN"], "arches": ["s390", "s390x"]},
    ),
    _allow(
        "clone",
        args=[_arg(1, _CLONE_NS_FLAGS, "SCMP_CMP_MASKED_EQ")],
        includes={"arches": ["s390", "s390x"]},
        excludes={"caps": ["CAP_SYS_ADMIN"]},
    ),
    # clone3 hides its flags in a struct seccomp cannot read: ENOSYS makes libc fall
    # back to clone, whose flags the rule above checks.
    {
        "names": ["clone3"],
        "action": "SCMP_ACT_ERRNO",
        "errnoRet": 38,
        "excludes": {"caps": ["CAP_SYS_ADMIN"]},
    },
    _allow("reboot", includes={"caps": ["CAP_SYS_BOOT"]}),
    _allow("chroot", includes={"caps": ["CAP_SYS_CHROOT"]}),
    _allow("delete_module", "init_module", "finit_module", includes={"caps": ["CAP_SYS_MODULE"]}),
    _allow("acct", includes={"caps": ["CAP_SYS_PACCT"]}),
    _allow(
        "kcmp",
        "pidfd_getfd",
        "process_madvise",
        "process_vm_readv",
        "process_vm_writev",
        "ptrace",
        includes={"caps": ["CAP_SYS_PTRACE"]},
    ),
    _allow("iopl", "ioperm", includes={"caps": ["CAP_SYS_RAWIO"]}),
    _allow(
        "settimeofday",
        "stime",
        "clock_settime",
        "clock_settime64",
        includes={"caps": ["CAP_SYS_TIME"]},
    ),
    _allow("vhangup", includes={"caps": ["CAP_SYS_TTY_CONFIG"]}),
    _allow(
        "get_mempolicy",
        "mbind",
        "set_mempolicy",
        "set_mempolicy_home_node",
        includes={"caps": ["CAP_SYS_NICE"]},
    ),
    _allow("syslog", includes={"caps": ["CAP_SYSLOG"]}),
    _allow("bpf", includes={"caps": ["CAP_BPF"]}),
    _allow("perf_event_open", includes={"caps": ["CAP_PERFMON"]}),
)


def _native_arch(machine: str | None) -> str:
    machine = machine or os.uname().machine  # what platform.machine() reads
    return _MACHINE_TO_NATIVE.get(machine, machine)


def _applies(rule: dict[str, Any], caps: frozenset[str], arch: str) -> bool:
    """moby's rule filter: excludes win first, then every include must hold."""
    excludes = rule.get("excludes", {})
    includes = rule.get("includes", {})
    if arch in excludes.get("arches", ()):
        return False
    if any(cap in caps for cap in excludes.get("caps", ())):
        return False
    if includes.get("arches") and arch not in includes["arches"]:
        return False
    return all(cap in caps for cap in includes.get("caps", ()))


def default_seccomp(caps: Iterable[str], *, machine: str | None = None) -> dict[str, Any]:
    """Docker's default profile for a container whose bounding set is `caps`.

    `machine` is a platform.machine() value (default: this host's); it picks the
    architectures the filter covers and the arch-specific rules. Returns a fresh
    dict the caller may change.
    """
    cap_set = frozenset(caps)
    arch = _native_arch(machine)
    profile: dict[str, Any] = {
        "defaultAction": "SCMP_ACT_ERRNO",
        "defaultErrnoRet": 1,
    }
    architectures = _ARCH_MAP.get(_NATIVE_TO_SECCOMP.get(arch, ""))
    if architectures:
        profile["architectures"] = list(architectures)
    syscalls: list[dict[str, Any]] = [_allow(*_ALWAYS_ALLOWED)]
    for rule in _CONDITIONAL_RULES:
        if _applies(rule, cap_set, arch):
            kept = {k: v for k, v in rule.items() if k not in ("includes", "excludes")}
            # A deep copy of plain data; marshal is builtin (`copy` costs ~0.5 ms here).
            syscalls.append(marshal.loads(marshal.dumps(kept)))
    profile["syscalls"] = syscalls
    return profile


# The profile for Docker's default capabilities on this host; copy before changing it.
DEFAULT_SECCOMP: dict[str, Any] = default_seccomp(DOCKER_DEFAULT_CAPS)
