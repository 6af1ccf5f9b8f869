"""RunConfig + image config -> the OCI config.json a container starts from.

Docker's defaults throughout (moby oci/defaults.go, daemon/oci_linux.go,
container/container.go): the same process args, environment, user, capabilities,
seccomp profile, mounts, masked paths and cgroup resources `docker run` would give.
Reads a few things (the image's /etc/passwd, host devices for --privileged, the
current rlimits, a seccomp profile file) but changes nothing on the host except
creating a missing `-v /host/dir` source, which Docker does at start too.
"""

from __future__ import annotations

import os
import posixpath
import stat

from hull.engine.runconfig import (
    MountSpec,
    RunConfig,
    parse_security_opts,
    parse_signal,
    validate_run_config,
)
from hull.engine.userdb import resolve_user
from hull.errors import ConfigError
from hull.oci.runtime_spec import DEFAULT_MASKED_PATHS, DEFAULT_READONLY_PATHS, OCI_VERSION

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable
    from typing import Any

    StrPath = str | os.PathLike[str]

DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
# Where --init's binary appears in the container. Docker uses /sbin/docker-init; a
# file on the /dev tmpfs leaves the image's filesystem untouched and works with
# --read-only.
INIT_PATH = "/dev/init"
# Static builds only: the binary runs inside images that may have no libc at all.
INIT_CANDIDATES = (
    "/usr/bin/catatonit",
    "/usr/libexec/podman/catatonit",
    "/usr/bin/tini-static",
    "/usr/bin/docker-init",
)
SHM_SIZE = 64 * 1024 * 1024
CPU_PERIOD = 100_000
RLIM_INFINITY = 2**64 - 1
STOP_SIGNAL_ANNOTATION = "org.hull.stop-signal"
IMAGE_ANNOTATION = "org.hull.image"
ETC_FILES = ("hostname", "hosts", "resolv.conf")  # written by the engine into container_dir
# runc's HostDevices skips these directories and files under /dev.
_SKIP_DEV_DIRS = ("pts", "shm", "fd", "mqueue", ".lxc", ".lxd-mounts", ".udev")
_SKIP_DEV_FILES = ("console", "ptmx")


def cgroup_parent() -> str:
    """The cgroup every container goes under: hull, or $HULL_CGROUP_PARENT (tests)."""
    import os

    parent = os.environ.get("HULL_CGROUP_PARENT", "hull").strip("/")
    return parent or "hull"


def build_spec(
    run: RunConfig,
    image_config: dict[str, Any],
    container_id: str,
    container_dir: StrPath,
    rootfs: StrPath,
    volume_source: Callable[[MountSpec], str] | None = None,
    init_binary: str | None = None,
    warnings: list[str] | None = None,
    netns_path: str | None = None,
    hostname: str | None = None,
) -> dict[str, Any]:
    """The config.json for one start of the container.

    image_config is the image's "config" object (Env, Cmd, Entrypoint, User,
    WorkingDir, StopSignal...). volume_source maps a volume MountSpec to its host
    directory. Warnings (an rlimit clamped...) go to the `warnings` list when one
    is given, else to logging. netns_path is the network namespace to join (the
    container's own, set up by the engine on a bridge, or another container's);
    None makes a new, empty one (--network none). hostname overrides the run's
    (--network container:ID takes the other container's name).
    """
    validate_run_config(run)
    notes: list[str] = []
    security = parse_security_opts(run.security_opt)
    args = process_args(run, image_config)
    hostname = hostname or container_hostname(run, container_id)
    user = resolve_user(rootfs, run.user or image_config.get("User"))  # -u "": the image's
    env = merge_env(image_config.get("Env") or [], run.env, hostname, run.tty)
    if not any(e.startswith("HOME=") for e in env):
        env.append(f"HOME={user.home}")
    caps = effective_caps(run)
    if run.init:
        args = [INIT_PATH, "--", *args]
    process: dict[str, Any] = {
        "terminal": run.tty,
        "user": {"uid": user.uid, "gid": user.gid},
        "args": args,
        "env": env,
        "cwd": working_dir(run, image_config),
        "capabilities": {
            "bounding": list(caps),
            "effective": list(caps),
            "permitted": list(caps),
            "inheritable": [],
            "ambient": [],
        },
        "noNewPrivileges": security.no_new_privileges,
    }
    if user.additional_gids:
        process["user"]["additionalGids"] = list(user.additional_gids)
    rlimits = container_rlimits(run, notes)
    if rlimits:
        process["rlimits"] = rlimits
    mounts, create_dirs = container_mounts(run, container_dir, volume_source)
    if run.init:
        mounts.append(
            {
                "destination": INIT_PATH,
                "type": "bind",
                "source": init_binary or find_init_binary(),
                "options": ["bind", "ro"],
            }
        )
    linux: dict[str, Any] = {
        "namespaces": container_namespaces(run, netns_path),
        "cgroupsPath": f"/{cgroup_parent()}/{container_id}",
        "resources": container_resources(run),
        "maskedPaths": [] if run.privileged else list(DEFAULT_MASKED_PATHS),
        "readonlyPaths": [] if run.privileged else list(DEFAULT_READONLY_PATHS),
    }
    if run.privileged:
        linux["devices"] = host_devices()
    if run.network != "host":
        # Docker (20.10+) in a network namespace of the container's own: any user
        # may bind low ports and use ICMP sockets; the namespace makes both harmless.
        linux["sysctl"] = {
            "net.ipv4.ip_unprivileged_port_start": "0",
            "net.ipv4.ping_group_range": "0 2147483647",
        }
    profile = seccomp_for(run, security.seccomp, caps)
    if profile is not None:
        linux["seccomp"] = profile
    spec: dict[str, Any] = {
        "ociVersion": OCI_VERSION,
        "process": process,
        "root": {"path": os.fspath(rootfs), "readonly": run.read_only},
        "hostname": hostname,
        "mounts": mounts,
        "linux": linux,
        "annotations": {
            IMAGE_ANNOTATION: run.image,
            STOP_SIGNAL_ANNOTATION: stop_signal(run, image_config),
        },
    }
    for path in create_dirs:  # last: nothing above can fail after a host dir was made
        try:
            os.makedirs(path, mode=0o755, exist_ok=True)
        except OSError as e:
            raise ConfigError(f"cannot create bind mount source {path}: {e.strerror}") from None
    for note in notes:
        _warn(note, warnings)
    return spec


def _warn(message: str, sink: list[str] | None) -> None:
    """To the caller's list when it keeps one (the CLI shows them), else to logging."""
    if sink is not None:
        sink.append(message)
        return
    import logging  # only on this rare path: it costs milliseconds to import

    logging.getLogger(__name__).warning("%s", message)


# ---------------------------------------------------------------- process


def process_args(run: RunConfig, image_config: dict[str, Any]) -> list[str]:
    """Docker's rules: Entrypoint + Cmd; a run command replaces Cmd; --entrypoint
    replaces Entrypoint and drops the image's Cmd."""
    if run.entrypoint is None:
        entrypoint = list(image_config.get("Entrypoint") or [])
        command = list(run.command or image_config.get("Cmd") or [])
    else:
        entrypoint = list(run.entrypoint)
        command = list(run.command or [])
    args = entrypoint + command
    if not args:
        raise ConfigError("no command specified")
    return args


def container_hostname(run: RunConfig, container_id: str) -> str:
    if run.hostname:
        return run.hostname
    if run.network == "host":
        return os.uname().nodename  # Docker: a host-network container keeps the host's name
    return container_id[:12]


def merge_env(image_env: list[str], run_env: list[str], hostname: str, tty: bool) -> list[str]:
    """PATH, HOSTNAME, TERM (with a tty), then the image's env, then the run's; a later
    KEY replaces an earlier one in place, and a bare KEY removes it (Docker's
    ReplaceOrAppendEnvValues)."""
    env: dict[str, str | None] = {"PATH": DEFAULT_PATH, "HOSTNAME": hostname}
    if tty:
        env["TERM"] = "xterm"
    for entry in (*image_env, *run_env):
        key, sep, value = entry.partition("=")
        if not key:
            continue
        env[key] = value if sep else None
    return [f"{k}={v}" for k, v in env.items() if v is not None]


def working_dir(run: RunConfig, image_config: dict[str, Any]) -> str:
    path = run.workdir or image_config.get("WorkingDir") or "/"
    return posixpath.normpath("/" + path.lstrip("/"))


def stop_signal(run: RunConfig, image_config: dict[str, Any]) -> str:
    """--stop-signal, else the image's StopSignal, else SIGTERM (canonical names)."""
    image_signal = image_config.get("StopSignal")
    if run.stop_signal:
        return run.stop_signal
    if image_signal:
        try:
            return parse_signal(str(image_signal))
        except ConfigError:
            pass  # a bad image default should not stop the container from starting
    return "SIGTERM"


# ---------------------------------------------------------------- capabilities, seccomp


def effective_caps(run: RunConfig) -> list[str]:
    """moby's TweakCapabilities: privileged gets all; add ALL is all minus the drops;
    drop ALL keeps only the adds; else the default set minus drops plus adds.

    "All" means all this kernel knows that we hold ourselves (our bounding set), as
    podman does: a capability we lack could not be granted anyway.
    """
    every = all_caps()
    if run.privileged:
        return every
    adds, drops = list(run.cap_add), list(run.cap_drop)  # checked by validate_run_config
    if "ALL" in adds:
        return [c for c in every if c not in drops]
    if "ALL" in drops:
        return _unique(c for c in adds)
    from hull.oci.default_seccomp import DOCKER_DEFAULT_CAPS

    return _unique([*(c for c in DOCKER_DEFAULT_CAPS if c not in drops), *adds])


def all_caps() -> list[str]:
    """Every capability the kernel knows and our bounding set holds, lowest first."""
    from hull.runtime.linux.capabilities import CAPS, last_cap

    held = _bounding_mask()
    return [
        name
        for name, number in sorted(CAPS.items(), key=lambda kv: kv[1])
        if number <= last_cap() and held >> number & 1
    ]


def _bounding_mask() -> int:
    try:
        with open("/proc/self/status", encoding="utf-8") as f:  # ascii: one codec more to load
            for line in f:
                if line.startswith("CapBnd:"):
                    return int(line.split()[1], 16)
    except (OSError, ValueError):
        pass
    return -1  # no /proc: assume we hold everything


def _unique(items: Any) -> list[str]:
    return list(dict.fromkeys(items))


def seccomp_for(run: RunConfig, choice: str | None, caps: list[str]) -> dict[str, Any] | None:
    """None for --privileged and seccomp=unconfined, else the default profile for
    these capabilities or the profile the user gave."""
    if run.privileged or choice == "unconfined":
        return None
    if choice is None:
        from hull.oci.default_seccomp import default_seccomp

        return default_seccomp(caps)
    return docker_profile_to_oci(_load_profile(choice), caps)


def _load_profile(choice: str) -> dict[str, Any]:
    import json

    text = choice
    if not choice.lstrip().startswith("{"):
        try:
            with open(choice, encoding="utf-8") as f:
                text = f.read()
        except OSError as e:
            raise ConfigError(f"opening seccomp profile ({choice}) failed: {e.strerror}") from None
    try:
        profile = json.loads(text)
    except ValueError as e:
        raise ConfigError(f"decoding seccomp profile failed: {e}") from None
    if not isinstance(profile, dict):
        raise ConfigError("decoding seccomp profile failed: not a JSON object")
    return profile


def docker_profile_to_oci(
    profile: dict[str, Any], caps: list[str], machine: str | None = None
) -> dict[str, Any]:
    """A Docker seccomp profile (archMap, includes/excludes) -> OCI linux.seccomp for
    this machine and these capabilities, as moby's setupSeccomp does."""
    from hull.oci.default_seccomp import _NATIVE_TO_SECCOMP, _applies, _native_arch

    if not isinstance(profile.get("defaultAction"), str):
        raise ConfigError("seccomp profile: defaultAction is required")
    if profile.get("architectures") and profile.get("archMap"):
        raise ConfigError(
            "both 'architectures' and 'archMap' are specified in the seccomp profile, "
            "use either 'architectures' or 'archMap'"
        )
    arch = _native_arch(machine)
    out: dict[str, Any] = {"defaultAction": profile["defaultAction"]}
    for key in ("defaultErrnoRet", "listenerPath", "listenerMetadata", "flags"):
        if profile.get(key) is not None:
            out[key] = profile[key]
    if profile.get("archMap"):
        native = _NATIVE_TO_SECCOMP.get(arch)
        for entry in profile["archMap"]:
            if isinstance(entry, dict) and entry.get("architecture") == native:
                out["architectures"] = [native, *(entry.get("subArchitectures") or [])]
    elif profile.get("architectures"):
        out["architectures"] = list(profile["architectures"])
    rules: list[dict[str, Any]] = []
    cap_set = frozenset(caps)
    for i, rule in enumerate(profile.get("syscalls") or []):
        if not isinstance(rule, dict):
            raise ConfigError(f"seccomp profile: syscalls[{i}] is not an object")
        if rule.get("name") and rule.get("names"):
            raise ConfigError("use either 'name' or 'names' in a seccomp profile syscall rule")
        names = rule.get("names") or ([rule["name"]] if rule.get("name") else [])
        if not names or not isinstance(rule.get("action"), str):
            raise ConfigError(f"seccomp profile: syscalls[{i}] needs names and an action")
        if not _applies(rule, cap_set, arch) or not _kernel_allows(rule):
            continue
        oci: dict[str, Any] = {"names": list(names), "action": rule["action"]}
        for key in ("errnoRet", "args"):
            if rule.get(key) is not None:
                oci[key] = rule[key]
        rules.append(oci)
    if rules:
        out["syscalls"] = rules
    return out


def _kernel_allows(rule: dict[str, Any]) -> bool:
    """includes.minKernel / excludes.minKernel against the running kernel."""
    running = _version(os.uname().release)
    wanted = (rule.get("includes") or {}).get("minKernel")
    if wanted and running < _version(wanted):
        return False
    unwanted = (rule.get("excludes") or {}).get("minKernel")
    return not (unwanted and running >= _version(unwanted))


def _version(text: str) -> tuple[int, ...]:
    numbers: list[int] = []
    for part in text.split("-", 1)[0].split(".")[:3]:
        digits = "".join(ch for ch in part if ch.isdigit())
        numbers.append(int(digits or 0))
    return tuple(numbers)


# ---------------------------------------------------------------- rlimits


def container_rlimits(run: RunConfig, notes: list[str]) -> list[dict[str, Any]]:
    """--ulimit values, never above the hard limit we hold (raising it needs
    CAP_SYS_RESOURCE): such a request is clamped, with a note."""
    import resource

    result: list[dict[str, Any]] = []
    for ul in run.ulimits:
        kind = str(ul["type"])
        soft, hard = _rlim(int(ul["soft"])), _rlim(int(ul["hard"]))
        number = getattr(resource, kind, None)
        if number is None:
            raise ConfigError(f"invalid ulimit type: {kind.removeprefix('RLIMIT_').lower()}")
        current_hard = _rlim(resource.getrlimit(number)[1])
        if hard > current_hard:
            new_soft = min(soft, current_hard)
            notes.append(
                f"ulimit {kind.removeprefix('RLIMIT_').lower()}={_show(soft)}:{_show(hard)} "
                f"is above the hard limit {_show(current_hard)}; using "
                f"{_show(new_soft)}:{_show(current_hard)}"
            )
            soft, hard = new_soft, current_hard
        result.append({"type": kind, "soft": soft, "hard": hard})
    return result


def _rlim(value: int) -> int:
    return RLIM_INFINITY if value < 0 else value


def _show(value: int) -> str:
    return "unlimited" if value == RLIM_INFINITY else str(value)


# ---------------------------------------------------------------- mounts


def default_mounts(privileged: bool) -> list[dict[str, Any]]:
    """moby's DefaultLinuxSpec mounts, /dev/shm as a 64m tmpfs of the container's own."""
    return [
        {
            "destination": "/proc",
            "type": "proc",
            "source": "proc",
            "options": ["nosuid", "noexec", "nodev"],
        },
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
            "options": ["nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620", "gid=5"],
        },
        {
            "destination": "/sys",
            "type": "sysfs",
            "source": "sysfs",
            "options": ["nosuid", "noexec", "nodev", "rw" if privileged else "ro"],
        },
        {
            "destination": "/sys/fs/cgroup",
            "type": "cgroup",
            "source": "cgroup",
            "options": ["nosuid", "noexec", "nodev", "relatime", "rw" if privileged else "ro"],
        },
        {
            "destination": "/dev/mqueue",
            "type": "mqueue",
            "source": "mqueue",
            "options": ["nosuid", "noexec", "nodev"],
        },
        {
            "destination": "/dev/shm",
            "type": "tmpfs",
            "source": "shm",
            "options": ["nosuid", "noexec", "nodev", "mode=1777", f"size={SHM_SIZE // 1024}k"],
        },
    ]


def container_mounts(
    run: RunConfig,
    container_dir: StrPath,
    volume_source: Callable[[MountSpec], str] | None,
) -> tuple[list[dict[str, Any]], list[str]]:
    """Default mounts, then /etc/hostname, hosts, resolv.conf and the user's mounts,
    parents before children (Docker sorts by depth; the sort keeps the given order
    otherwise). A user mount replaces a default one on the same path, and one on
    /dev replaces the defaults under it. Also returns -v sources to create."""
    targets = {m.target for m in run.mounts}
    mounts = [
        m
        for m in default_mounts(run.privileged)
        if m["destination"] not in targets
        and not (m["destination"].startswith("/dev/") and "/dev" in targets)
    ]
    extra: list[dict[str, Any]] = []
    propagation_ro = ["rbind", "rprivate"] + (["ro"] if run.read_only else [])
    for name in ETC_FILES:
        dest = f"/etc/{name}"
        if dest not in targets:
            extra.append(
                {
                    "destination": dest,
                    "type": "bind",
                    "source": os.path.join(container_dir, name),
                    "options": list(propagation_ro),
                }
            )
    create: list[str] = []
    for spec in run.mounts:
        extra.append(_user_mount(spec, volume_source, create))
    extra.sort(key=lambda m: m["destination"].rstrip("/").count("/"))
    return mounts + extra, create


def _user_mount(
    spec: MountSpec, volume_source: Callable[[MountSpec], str] | None, create: list[str]
) -> dict[str, Any]:
    ro_rw = "ro" if spec.readonly else "rw"
    if spec.type == "tmpfs":
        return {
            "destination": spec.target,
            "type": "tmpfs",
            "source": "tmpfs",
            "options": _tmpfs_options(spec),
        }
    if spec.type == "bind":
        source = spec.source or ""
        if not os.path.exists(source):
            if spec.options.get("create_host_path") != "true":
                raise ConfigError(
                    f'invalid mount config for type "bind": bind source path does not exist: '
                    f"{source}"
                )
            create.append(source)
    elif spec.type == "volume":
        if volume_source is None:
            raise ConfigError(f"cannot mount a volume on {spec.target}: no volume store given")
        source = volume_source(spec)
    else:
        raise ConfigError(f'invalid mount config for type "{spec.type}": mount type unknown')
    recursive = "bind" if spec.options.get("nonrecursive") == "true" else "rbind"
    propagation = spec.options.get("propagation", "rprivate")
    return {
        "destination": spec.target,
        "type": "bind",
        "source": source,
        "options": [recursive, propagation, ro_rw],
    }


def _tmpfs_options(spec: MountSpec) -> list[str]:
    """Docker's tmpfs defaults (noexec, nosuid, nodev, rprivate) merged with the
    user's options: a later exec/suid/dev cancels its default."""
    options = ["noexec", "nosuid", "nodev", "rprivate"]
    opposite = {"exec": "noexec", "suid": "nosuid", "dev": "nodev"}
    for key, value in spec.options.items():
        if key in opposite:
            options.remove(opposite[key])
            continue
        if key in ("noexec", "nosuid", "nodev") and not value:
            continue
        if key in ("size", "mode") or value:
            options.append(f"{key}={value}")
        else:
            options.append(key)
    options.append("ro" if spec.readonly else "rw")
    return options


def find_init_binary() -> str:
    for path in INIT_CANDIDATES:
        if os.access(path, os.X_OK):
            return path
    raise ConfigError(
        "--init needs a static init binary: install catatonit or tini "
        f"(looked for {', '.join(INIT_CANDIDATES)})"
    )


def host_devices(root: str = "/dev") -> list[dict[str, Any]]:
    """Every char and block device under root, as linux.devices entries at the same
    path in the container (runc's HostDevices, minus pts, ptmx and console)."""
    devices: list[dict[str, Any]] = []

    def walk(directory: str, rel: str) -> None:
        try:
            entries = sorted(os.scandir(directory), key=lambda e: e.name)
        except OSError:
            return
        for entry in entries:
            try:
                if entry.is_dir(follow_symlinks=False):
                    if entry.name not in _SKIP_DEV_DIRS:
                        walk(entry.path, f"{rel}/{entry.name}")
                    continue
                if entry.name in _SKIP_DEV_FILES:
                    continue
                st = entry.stat(follow_symlinks=False)
            except OSError:
                continue  # vanished while we looked
            if stat.S_ISCHR(st.st_mode):
                kind = "c"
            elif stat.S_ISBLK(st.st_mode):
                kind = "b"
            else:
                continue
            devices.append(
                {
                    "path": f"/dev{rel}/{entry.name}",
                    "type": kind,
                    "major": os.major(st.st_rdev),
                    "minor": os.minor(st.st_rdev),
                    "fileMode": stat.S_IMODE(st.st_mode),
                    "uid": st.st_uid,
                    "gid": st.st_gid,
                }
            )

    walk(root, "")
    return devices


# ---------------------------------------------------------------- namespaces, cgroups


def namespace_types(run: RunConfig) -> list[str]:
    """A new pid, ipc, uts, mount and cgroup namespace; a network one unless --network host."""
    kinds = ["pid", "ipc", "uts", "mount"]
    if run.network != "host":
        kinds.append("network")
    kinds.append("cgroup")
    return kinds


def container_namespaces(run: RunConfig, netns_path: str | None) -> list[dict[str, str]]:
    """linux.namespaces: the network one joins netns_path when the engine made one."""
    namespaces = []
    for kind in namespace_types(run):
        entry = {"type": kind}
        if kind == "network" and netns_path:
            entry["path"] = netns_path
        namespaces.append(entry)
    return namespaces


def container_resources(run: RunConfig) -> dict[str, Any]:
    """linux.resources: memory (swap as memory+swap, default twice the memory), CFS
    quota from --cpus, shares, cpuset, pids, and the device rules."""
    resources: dict[str, Any] = {
        "devices": [{"allow": True, "access": "rwm"}]
        if run.privileged
        else [{"allow": False, "access": "rwm"}]
    }
    memory: dict[str, Any] = {}
    if run.memory:
        memory["limit"] = run.memory
        swap = run.memory_swap if run.memory_swap else 2 * run.memory
        memory["swap"] = swap
    elif run.memory_swap == -1:
        memory["swap"] = -1
    if memory:
        resources["memory"] = memory
    cpu: dict[str, Any] = {}
    if run.cpus:
        cpu["quota"] = int(round(run.cpus * CPU_PERIOD))
        cpu["period"] = CPU_PERIOD
    if run.cpu_shares:
        cpu["shares"] = run.cpu_shares
    if run.cpuset_cpus:
        cpu["cpus"] = run.cpuset_cpus
    if cpu:
        resources["cpu"] = cpu
    if run.pids_limit is not None and run.pids_limit > 0:
        resources["pids"] = {"limit": run.pids_limit}
    return resources
