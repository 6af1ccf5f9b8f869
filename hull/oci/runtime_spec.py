"""OCI runtime-spec v1.1 config.json: validation, the default spec, features.

Pure logic (no syscalls), so it is unit-tested without root. Validation runs
before anything is created, so a bad config leaves nothing behind.
"""

from __future__ import annotations

from hull.errors import ConfigError

TYPE_CHECKING = False
if TYPE_CHECKING:  # typing costs milliseconds on hull-runtime's start path
    from typing import Any

OCI_VERSION = "1.1.0"

NAMESPACE_TYPES = ("pid", "network", "mount", "ipc", "uts", "user", "cgroup", "time")
# namespace type -> name of its file under /proc/PID/ns
NS_PROC_NAMES = {
    "pid": "pid",
    "network": "net",
    "mount": "mnt",
    "ipc": "ipc",
    "uts": "uts",
    "user": "user",
    "cgroup": "cgroup",
    "time": "time",
}

HOOK_KINDS = (
    "prestart",
    "createRuntime",
    "createContainer",
    "startContainer",
    "poststart",
    "poststop",
)

MOUNT_OPTIONS = (
    "async",
    "atime",
    "bind",
    "defaults",
    "dev",
    "diratime",
    "dirsync",
    "exec",
    "iversion",
    "lazytime",
    "loud",
    "mand",
    "noatime",
    "nodev",
    "nodiratime",
    "noexec",
    "noiversion",
    "nolazytime",
    "nomand",
    "norelatime",
    "nostrictatime",
    "nosuid",
    "nosymfollow",
    "private",
    "ratime",
    "rbind",
    "rdev",
    "rdiratime",
    "relatime",
    "remount",
    "rexec",
    "rnoatime",
    "rnodev",
    "rnodiratime",
    "rnoexec",
    "rnorelatime",
    "rnostrictatime",
    "rnosuid",
    "rnosymfollow",
    "ro",
    "rprivate",
    "rrelatime",
    "rro",
    "rrw",
    "rshared",
    "rslave",
    "rstrictatime",
    "rsuid",
    "rsymfollow",
    "runbindable",
    "rw",
    "shared",
    "silent",
    "slave",
    "strictatime",
    "suid",
    "symfollow",
    "sync",
    "tmpcopyup",
    "unbindable",
)

DEFAULT_MASKED_PATHS = [
    "/proc/acpi",
    "/proc/asound",
    "/proc/kcore",
    "/proc/keys",
    "/proc/latency_stats",
    "/proc/timer_list",
    "/proc/timer_stats",
    "/proc/sched_debug",
    "/sys/firmware",
    "/sys/devices/virtual/powercap",
    "/proc/scsi",
]
DEFAULT_READONLY_PATHS = [
    "/proc/bus",
    "/proc/fs",
    "/proc/irq",
    "/proc/sys",
    "/proc/sysrq-trigger",
]

# Namespaced sysctls and the namespace each one needs (as runc validates them).
_IPC_SYSCTLS = {
    "kernel.msgmax",
    "kernel.msgmnb",
    "kernel.msgmni",
    "kernel.sem",
    "kernel.shmall",
    "kernel.shmmax",
    "kernel.shmmni",
    "kernel.shm_rmid_forced",
}


def _fail(msg: str) -> None:
    raise ConfigError(f"invalid config.json: {msg}")


def _expect(obj: Any, kind: type | tuple[type, ...], where: str) -> Any:
    if not isinstance(obj, kind) or (kind is int and isinstance(obj, bool)):
        names = kind.__name__ if isinstance(kind, type) else "/".join(k.__name__ for k in kind)
        _fail(f"{where} must be {names}, got {type(obj).__name__}")
    return obj


def namespaces_of(config: dict) -> dict[str, str | None]:
    """type -> path (None for a new namespace)."""
    linux = config.get("linux") or {}
    return {ns["type"]: ns.get("path") or None for ns in linux.get("namespaces") or []}


def validate(config: Any) -> dict:
    """Check config.json against the spec's MUSTs; raise ConfigError naming the field."""
    _expect(config, dict, "config")
    version = config.get("ociVersion")
    if not isinstance(version, str) or not version.startswith("1."):
        _fail(f"ociVersion {version!r} is not a supported 1.x version")
    root = config.get("root")
    _expect(root, dict, "root")
    _expect(root.get("path"), str, "root.path")
    _validate_process(config.get("process"), required=True)
    for i, mount in enumerate(config.get("mounts") or []):
        _validate_mount(mount, f"mounts[{i}]")
    hooks = config.get("hooks") or {}
    _expect(hooks, dict, "hooks")
    for kind, entries in hooks.items():
        if kind not in HOOK_KINDS:
            _fail(f"unknown hook kind {kind!r}")
        for j, hook in enumerate(_expect(entries, list, f"hooks.{kind}")):
            _expect(hook, dict, f"hooks.{kind}[{j}]")
            path = _expect(hook.get("path"), str, f"hooks.{kind}[{j}].path")
            if not path.startswith("/"):
                _fail(f"hooks.{kind}[{j}].path must be absolute")
            timeout = hook.get("timeout")
            if timeout is not None and (_expect(timeout, int, "hook timeout") <= 0):
                _fail(f"hooks.{kind}[{j}].timeout must be positive")
    linux = config.get("linux")
    if linux is not None:
        _validate_linux(_expect(linux, dict, "linux"), config)
    hostname = config.get("hostname")
    if hostname:
        _expect(hostname, str, "hostname")
        if "uts" not in namespaces_of(config):
            _fail("hostname is set but the config has no uts namespace")
    return config


def _validate_process(process: Any, required: bool) -> None:
    if process is None:
        if required:
            _fail("process is required")
        return
    _expect(process, dict, "process")
    args = process.get("args")
    if not args or not isinstance(args, list) or not all(isinstance(a, str) for a in args):
        _fail("process.args must be a non-empty list of strings")
    cwd = process.get("cwd", "/")
    if not isinstance(cwd, str) or not cwd.startswith("/"):
        _fail("process.cwd must be an absolute path")
    for env in process.get("env") or []:
        if not isinstance(env, str) or "=" not in env:
            _fail(f"process.env entry {env!r} is not KEY=VALUE")
    user = process.get("user") or {}
    _expect(user, dict, "process.user")
    for key in ("uid", "gid"):
        if key in user and (_expect(user[key], int, f"process.user.{key}") < 0):
            _fail(f"process.user.{key} must not be negative")
    for gid in user.get("additionalGids") or []:
        _expect(gid, int, "process.user.additionalGids[]")
    caps = process.get("capabilities") or {}
    _expect(caps, dict, "process.capabilities")
    for kind, names in caps.items():
        if kind not in ("bounding", "effective", "inheritable", "permitted", "ambient"):
            _fail(f"unknown capability set {kind!r}")
        for name in _expect(names, list, f"process.capabilities.{kind}"):
            if not isinstance(name, str) or not name.startswith("CAP_"):
                _fail(f"capability {name!r} in {kind} is not a CAP_* name")
    from hull.runtime.linux.rlimits import RLIMITS  # the kernel's numbering lives there

    seen: set[str] = set()
    for rl in process.get("rlimits") or []:
        _expect(rl, dict, "process.rlimits[]")
        kind = rl.get("type")
        if kind not in RLIMITS:
            _fail(f"unknown rlimit type {kind!r}")
        if kind in seen:
            _fail(f"rlimit {kind} is given twice")
        seen.add(kind)
        soft, hard = rl.get("soft"), rl.get("hard")
        _expect(soft, int, f"{kind}.soft")
        _expect(hard, int, f"{kind}.hard")
        if soft > hard:
            _fail(f"rlimit {kind}: soft {soft} is above hard {hard}")
    oom = process.get("oomScoreAdj")
    if oom is not None and not -1000 <= _expect(oom, int, "process.oomScoreAdj") <= 1000:
        _fail("process.oomScoreAdj must be between -1000 and 1000")
    if process.get("terminal") and process.get("consoleSize"):
        _expect(process["consoleSize"], dict, "process.consoleSize")


def _validate_mount(mount: Any, where: str) -> None:
    _expect(mount, dict, where)
    dest = _expect(mount.get("destination"), str, f"{where}.destination")
    if not dest.startswith("/"):
        _fail(f"{where}.destination {dest!r} must be absolute")
    for opt in mount.get("options") or []:
        _expect(opt, str, f"{where}.options[]")


def _validate_linux(linux: dict, config: dict) -> None:
    seen: set[str] = set()
    for i, ns in enumerate(linux.get("namespaces") or []):
        _expect(ns, dict, f"linux.namespaces[{i}]")
        kind = ns.get("type")
        if kind not in NAMESPACE_TYPES:
            _fail(f"unknown namespace type {kind!r}")
        if kind in seen:
            _fail(f"namespace {kind} is listed twice")
        seen.add(kind)
        if ns.get("path") is not None:
            path = _expect(ns["path"], str, f"linux.namespaces[{i}].path")
            if not path.startswith("/"):
                _fail(f"namespace path {path!r} must be absolute")
    for key in ("uidMappings", "gidMappings"):
        maps = linux.get(key) or []
        if maps and "user" not in seen:
            _fail(f"linux.{key} needs a user namespace")
        for m in _expect(maps, list, f"linux.{key}"):
            _expect(m, dict, f"linux.{key}[]")
            for field in ("containerID", "hostID", "size"):
                _expect(m.get(field), int, f"linux.{key}[].{field}")
    new_user = "user" in seen and namespaces_of(config).get("user") is None
    if new_user and (not linux.get("uidMappings") or not linux.get("gidMappings")):
        _fail("a new user namespace needs linux.uidMappings and linux.gidMappings")
    if "time" in seen and linux.get("timeOffsets"):
        _expect(linux["timeOffsets"], dict, "linux.timeOffsets")
    for key in ("maskedPaths", "readonlyPaths"):
        for path in _expect(linux.get(key) or [], list, f"linux.{key}"):
            if not isinstance(path, str) or not path.startswith("/"):
                _fail(f"linux.{key} entry {path!r} must be an absolute path")
    for i, dev in enumerate(linux.get("devices") or []):
        _expect(dev, dict, f"linux.devices[{i}]")
        path = _expect(dev.get("path"), str, f"linux.devices[{i}].path")
        if not path.startswith("/dev/"):
            _fail(f"linux.devices[{i}].path {path!r} must be under /dev")
        if dev.get("type") not in ("c", "b", "u", "p"):
            _fail(f"linux.devices[{i}].type {dev.get('type')!r} must be c, b, u or p")
        if dev.get("type") != "p":
            _expect(dev.get("major"), int, f"linux.devices[{i}].major")
            _expect(dev.get("minor"), int, f"linux.devices[{i}].minor")
    for key, value in (linux.get("sysctl") or {}).items():
        _expect(value, str, f"linux.sysctl[{key}]")
        _check_sysctl(key, seen, config)
    prop = linux.get("rootfsPropagation")
    if prop is not None and prop not in (
        "shared",
        "slave",
        "private",
        "unbindable",
        "rshared",
        "rslave",
        "rprivate",
        "runbindable",
    ):
        _fail(f"linux.rootfsPropagation {prop!r} is not a propagation mode")
    resources = linux.get("resources")
    if resources is not None:
        _expect(resources, dict, "linux.resources")
    if linux.get("seccomp") is not None:
        _expect(linux["seccomp"], dict, "linux.seccomp")


def _check_sysctl(key: str, namespaces: set[str], config: dict) -> None:
    new_ns = {k for k, path in namespaces_of(config).items() if path is None}
    if key in _IPC_SYSCTLS or key.startswith("fs.mqueue."):
        if "ipc" not in new_ns:
            _fail(f"sysctl {key} needs a new ipc namespace")
    elif key.startswith("net."):
        if "network" not in namespaces:
            _fail(f"sysctl {key} needs a network namespace")
    elif key in ("kernel.hostname", "kernel.domainname"):
        if "uts" not in new_ns:
            _fail(f"sysctl {key} needs a new uts namespace")
    else:
        _fail(f"sysctl {key} is not namespaced and cannot be set in a container")


def validate_process(process: Any) -> dict:
    """Validate a process.json given to `exec --process`."""
    _validate_process(process, required=True)
    return process


def default_spec() -> dict[str, Any]:
    """The config.json `hull-runtime spec` writes: runc's default, busybox-ready."""
    caps = ["CAP_AUDIT_WRITE", "CAP_KILL", "CAP_NET_BIND_SERVICE"]
    return {
        "ociVersion": OCI_VERSION,
        "process": {
            "terminal": True,
            "user": {"uid": 0, "gid": 0},
            "args": ["sh"],
            "env": [
                "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
                "TERM=xterm",
            ],
            "cwd": "/",
            "capabilities": {k: list(caps) for k in ("bounding", "effective", "permitted")},
            "rlimits": [{"type": "RLIMIT_NOFILE", "hard": 1024, "soft": 1024}],
            "noNewPrivileges": True,
        },
        "root": {"path": "rootfs", "readonly": True},
        "hostname": "hull",
        "mounts": [
            {"destination": "/proc", "type": "proc", "source": "proc"},
            {
                "destination": "/dev",
                "type": "tmpfs",
                "source": "tmpfs",
                "options": ["nosuid", "strictatime", "mode=755", "size=65536k"],
            },
            {
                "destination": "/dev/pts",
                "type": "devpts",
                "source": "devpts",
                "options": [
                    "nosuid",
                    "noexec",
                    "newinstance",
                    "ptmxmode=0666",
                    "mode=0620",
                    "gid=5",
                ],
            },
            {
                "destination": "/dev/shm",
                "type": "tmpfs",
                "source": "shm",
                "options": ["nosuid", "noexec", "nodev", "mode=1777", "size=65536k"],
            },
            {
                "destination": "/dev/mqueue",
                "type": "mqueue",
                "source": "mqueue",
                "options": ["nosuid", "noexec", "nodev"],
            },
            {
                "destination": "/sys",
                "type": "sysfs",
                "source": "sysfs",
                "options": ["nosuid", "noexec", "nodev", "ro"],
            },
            {
                "destination": "/sys/fs/cgroup",
                "type": "cgroup",
                "source": "cgroup",
                "options": ["nosuid", "noexec", "nodev", "relatime", "ro"],
            },
        ],
        "linux": {
            "resources": {"devices": [{"allow": False, "access": "rwm"}]},
            "namespaces": [
                {"type": t} for t in ("pid", "network", "ipc", "uts", "mount", "cgroup")
            ],
            "maskedPaths": list(DEFAULT_MASKED_PATHS),
            "readonlyPaths": list(DEFAULT_READONLY_PATHS),
        },
    }


def features() -> dict[str, Any]:
    """What `hull-runtime features` reports (runtime-spec features.md)."""
    from hull.runtime.linux.capabilities import CAPS

    return {
        "ociVersionMin": "1.0.0",
        "ociVersionMax": OCI_VERSION,
        "hooks": list(HOOK_KINDS),
        "mountOptions": list(MOUNT_OPTIONS),
        "linux": {
            "namespaces": list(NAMESPACE_TYPES),
            "capabilities": sorted(CAPS, key=CAPS.__getitem__),
            "cgroup": {"v1": True, "v2": True, "systemd": False, "systemdUser": False},
            "seccomp": {
                "enabled": True,
                "actions": [
                    "SCMP_ACT_ALLOW",
                    "SCMP_ACT_ERRNO",
                    "SCMP_ACT_KILL",
                    "SCMP_ACT_KILL_PROCESS",
                    "SCMP_ACT_KILL_THREAD",
                    "SCMP_ACT_LOG",
                    "SCMP_ACT_TRAP",
                    "SCMP_ACT_TRACE",
                ],
                "operators": [
                    "SCMP_CMP_EQ",
                    "SCMP_CMP_GE",
                    "SCMP_CMP_GT",
                    "SCMP_CMP_LE",
                    "SCMP_CMP_LT",
                    "SCMP_CMP_MASKED_EQ",
                    "SCMP_CMP_NE",
                ],
                "archs": [
                    "SCMP_ARCH_X86_64",
                    "SCMP_ARCH_X86",
                    "SCMP_ARCH_X32",
                    "SCMP_ARCH_AARCH64",
                ],
            },
            "apparmor": {"enabled": False},
            "selinux": {"enabled": False},
        },
        "annotations": {"org.opencontainers.runc.checkpoint.enabled": "false"},
    }


def effective_resources(config: dict) -> dict | None:
    """linux.resources plus an allow rule for each of linux.devices (as runc adds them).

    The default /dev nodes' rules are the cgroup driver's to add (it knows v1 from v2).
    """
    linux = config.get("linux") or {}
    resources = linux.get("resources")
    if resources is None:
        return None
    devices = resources.get("devices")
    if devices is None:
        return resources
    extra = []
    for dev in linux.get("devices") or []:
        if dev.get("type") in ("c", "b"):
            extra.append(
                {
                    "allow": True,
                    "type": dev["type"],
                    "major": dev["major"],
                    "minor": dev["minor"],
                    "access": "rwm",
                }
            )
    return {**resources, "devices": list(devices) + extra}
