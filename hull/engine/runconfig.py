"""RunConfig: everything `hull run/create` asks for, and the parsers for its flags.

The values follow Docker's semantics (docker run reference, the CLI's opts/ and
moby's runconfig/), so a command line that works with Docker means the same
here. RunConfig is stored in SQLite as JSON (to_dict/from_dict) and turned into
an OCI config.json at each start by hull.engine.spec. Import-light on purpose:
`hull run` is timed, and this module is on its path.
"""

from __future__ import annotations

import os
import posixpath

from hull.errors import ConfigError
from hull.records import dataclass, field

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

MOUNT_TYPES = ("bind", "volume", "tmpfs")
RESTART_POLICIES = ("no", "on-failure", "always", "unless-stopped")
PULL_POLICIES = ("missing", "always", "never")
ISOLATIONS = ("container", "vm")
# --ulimit names (go-units ulimit.go) -> OCI rlimit types
ULIMIT_NAMES = (
    "core",
    "cpu",
    "data",
    "fsize",
    "locks",
    "memlock",
    "msgqueue",
    "nice",
    "nofile",
    "nproc",
    "rss",
    "rtprio",
    "rttime",
    "sigpending",
    "stack",
    "as",
)
# json-file log driver options (moby daemon/logger/jsonfilelog)
LOG_OPTS = ("max-size", "max-file", "compress", "labels", "labels-regex", "env", "env-regex", "tag")
BIND_PROPAGATIONS = ("private", "rprivate", "shared", "rshared", "slave", "rslave")
# A RunConfig's network when it names none (and a stored one from before networking):
# no network. `hull run` and `create` without --network get default_network() instead.
DEFAULT_NETWORK = "none"
# Docker's default for run/create: the default bridge (hull0). A microVM joins a network
# only when asked (--network bridge|NAME): its tap, lease and the guest's eth0 cost a
# TCG run about 40 ms (0.29 -> 0.33 s for `run --rm --isolation=vm busybox true`).
CLI_DEFAULT_NETWORK = "bridge"
# Modes that are not the name of a network: no namespace of their own to connect.
SPECIAL_NETWORKS = ("none", "host")
MIN_MEMORY = 6 * 1024 * 1024  # moby's linuxMinMemory: below this the container cannot start


@dataclass
class MountSpec:
    """One -v/--mount/--tmpfs request.

    options by type (all values strings):
      bind:   propagation, create_host_path ("true" for -v, which creates a missing source)
      volume: nocopy, driver, label.<K>, opt.<K>   (source None = anonymous volume)
      tmpfs:  size (bytes or N%), mode (octal), and other tmpfs/mount options as given
    """

    type: str
    source: str | None
    target: str
    readonly: bool = False
    options: dict[str, str] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {
            "type": self.type,
            "source": self.source,
            "target": self.target,
            "readonly": self.readonly,
            "options": dict(self.options),
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> MountSpec:
        return cls(
            type=str(data["type"]),
            source=data.get("source"),
            target=str(data["target"]),
            readonly=bool(data.get("readonly", False)),
            options={str(k): str(v) for k, v in (data.get("options") or {}).items()},
        )


@dataclass
class RestartPolicy:
    name: str = "no"
    max_retries: int = 0

    def __str__(self) -> str:
        if self.name == "on-failure" and self.max_retries:
            return f"on-failure:{self.max_retries}"
        return self.name


@dataclass
class RunConfig:
    """What a container was asked to be; see /work/notes/engine.md for each field."""

    image: str
    command: list[str] | None = None  # None: the image's Cmd
    entrypoint: list[str] | None = None  # None: the image's; []: cleared
    name: str | None = None
    env: list[str] = field(default_factory=list)  # "K=V"; a bare "K" unsets K
    workdir: str | None = None
    user: str | None = None
    hostname: str | None = None
    tty: bool = False
    interactive: bool = False
    detach: bool = False
    rm: bool = False
    mounts: list[MountSpec] = field(default_factory=list)
    memory: int | None = None
    memory_swap: int | None = None  # memory+swap; -1 unlimited; None: 2x memory
    cpus: float | None = None
    cpu_shares: int | None = None
    cpuset_cpus: str | None = None
    pids_limit: int | None = None
    ulimits: list[dict[str, Any]] = field(default_factory=list)
    cap_add: list[str] = field(default_factory=list)
    cap_drop: list[str] = field(default_factory=list)
    privileged: bool = False
    read_only: bool = False
    security_opt: list[str] = field(default_factory=list)
    init: bool = False
    restart: RestartPolicy = field(default_factory=RestartPolicy)
    labels: dict[str, str] = field(default_factory=dict)
    stop_signal: str | None = None
    stop_timeout: int | None = None
    isolation: str = "container"
    network: str = DEFAULT_NETWORK  # none | host | bridge | NAME | container:ID
    ports: list[str] = field(default_factory=list)  # -p specs as given, checked at parse
    publish_all: bool = False  # -P: the image's ExposedPorts on free host ports
    network_aliases: list[str] = field(default_factory=list)
    ip: str | None = None  # --ip on a user network
    dns: list[str] = field(default_factory=list)
    add_hosts: list[str] = field(default_factory=list)  # "name:ip" (ip may be host-gateway)
    # Networks joined with `hull network connect` beyond the first; restored at start.
    # Each: {"network": NAME, "aliases": [...], "ip": str | None}.
    extra_networks: list[dict[str, Any]] = field(default_factory=list)
    platform: str | None = None
    pull: str = "missing"
    log_opts: dict[str, str] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-ready data (lists and dicts copied, never shared)."""
        data: dict[str, Any] = {}
        for name in _FIELDS:
            value = getattr(self, name)
            if name == "mounts":
                value = [m.to_dict() for m in value]
            elif name == "restart":
                value = {"name": value.name, "max_retries": value.max_retries}
            elif isinstance(value, list):
                value = [_copy_item(v) for v in value]
            elif isinstance(value, dict):
                value = dict(value)
            data[name] = value
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> RunConfig:
        """Inverse of to_dict; missing keys take their defaults, unknown keys are ignored
        (a row written by a newer Hull still loads)."""
        if not isinstance(data, dict) or not isinstance(data.get("image"), str):
            raise ConfigError("stored run config is not an object with an image")
        kwargs: dict[str, Any] = {k: v for k, v in data.items() if k in _FIELDS}
        kwargs["mounts"] = [MountSpec.from_dict(m) for m in data.get("mounts") or []]
        restart = data.get("restart") or {}
        kwargs["restart"] = RestartPolicy(
            str(restart.get("name", "no")), int(restart.get("max_retries", 0))
        )
        return cls(**kwargs)


_FIELDS = tuple(RunConfig.__dataclass_fields__)


def _copy_item(value: Any) -> Any:
    """A list item of to_dict(): dicts (ulimits, extra networks) and their lists copied."""
    if isinstance(value, dict):
        return {k: list(v) if isinstance(v, list) else v for k, v in value.items()}
    return value


# ---------------------------------------------------------------- sizes, numbers

# Patterns are compiled on first use (re caches them), and `re` is imported there:
# `hull run` usually needs none, and importing re costs it ~3 ms.
_SIZE_RE = r"^(\d+(?:\.\d+)?) ?([kmgtp])?i?b?$"
_UNITS = {"": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40, "p": 1 << 50}


def parse_memory(value: str, what: str = "memory") -> int:
    """'512m' -> bytes, Docker's RAMInBytes: binary units b k m g t p, optional 'b'/'ib'."""
    import re  # not at the top: most runs parse no size, and re costs `hull run` ~3 ms

    match = re.match(_SIZE_RE, value.strip(), re.IGNORECASE)
    if not match:
        raise ConfigError(f"invalid {what} size: '{value}'")
    number, unit = match.groups()
    return int(float(number) * _UNITS[(unit or "").lower()])


def parse_memory_swap(value: str) -> int:
    """--memory-swap: a size, or -1 for unlimited swap."""
    if value.strip() == "-1":
        return -1
    return parse_memory(value, "memory-swap")


def parse_cpus(value: str) -> float:
    """--cpus '1.5' -> 1.5; at most nanosecond precision, as Docker's NanoCPUs."""
    import re

    text = value.strip()
    if not re.match(r"^(\d+(\.\d*)?|\.\d+)$", text):
        raise ConfigError(f"invalid argument {value!r} for --cpus: not a decimal number")
    if "." in text and len(text.split(".", 1)[1]) > 9:
        raise ConfigError(f"invalid argument {value!r} for --cpus: value is too precise")
    cpus = float(text)
    if cpus <= 0:
        raise ConfigError(f"invalid argument {value!r} for --cpus: must be above 0")
    return cpus


def parse_int(value: str, what: str) -> int:
    try:
        return int(value.strip())
    except ValueError:
        raise ConfigError(f"invalid argument {value!r} for {what}: not an integer") from None


def parse_cpuset(value: str) -> str:
    """--cpuset-cpus '0-2,4': checked like moby's ParseUintList, returned unchanged."""
    text = value.strip()
    for part in text.split(","):
        low, sep, high = part.partition("-")
        if not low.isdigit() or (sep and not high.isdigit()) or (sep and int(high) < int(low)):
            raise ConfigError(f"invalid value {value!r} for cpuset cpus")
    return text


def parse_octal_mode(value: str, what: str) -> str:
    try:
        mode = int(value, 8)
    except ValueError:
        raise ConfigError(f"invalid {what} mode {value!r}: not an octal number") from None
    if not 0 <= mode <= 0o7777:
        raise ConfigError(f"invalid {what} mode {value!r}: out of range")
    return f"{mode:o}"


# ---------------------------------------------------------------- restart, ulimit, env


def parse_restart(value: str) -> RestartPolicy:
    """'no', 'always', 'unless-stopped', 'on-failure[:N]' (Docker's ParseRestartPolicy)."""
    name, sep, count = value.strip().partition(":")
    if name not in RESTART_POLICIES:
        raise ConfigError(
            f"invalid restart policy: unknown policy '{name}'; "
            "use one of 'no', 'always', 'on-failure', or 'unless-stopped'"
        )
    if not sep:
        return RestartPolicy(name, 0)
    if name != "on-failure":
        raise ConfigError(
            f"invalid restart policy: maximum retry count cannot be used with "
            f"restart policy '{name}'"
        )
    try:
        retries = int(count)
    except ValueError:
        raise ConfigError(
            f"invalid restart policy format: maximum retry count {count!r} must be an integer"
        ) from None
    if retries < 0:
        raise ConfigError("invalid restart policy: maximum retry count cannot be negative")
    return RestartPolicy(name, retries)


def parse_ulimit(value: str) -> dict[str, Any]:
    """'nofile=1024[:2048]' -> {"type": "RLIMIT_NOFILE", "soft": 1024, "hard": 2048}.

    -1 means unlimited; a missing hard limit equals the soft one."""
    name, sep, limits = value.partition("=")
    if not sep:
        raise ConfigError(f"invalid ulimit argument: {value}")
    if name not in ULIMIT_NAMES:
        raise ConfigError(f"invalid ulimit type: {name}")
    soft_text, _, hard_text = limits.partition(":")
    try:
        soft = int(soft_text)
        hard = int(hard_text) if hard_text else soft
    except ValueError:
        raise ConfigError(f"invalid ulimit argument: {value}") from None
    if soft < -1 or hard < -1:
        raise ConfigError(f"invalid ulimit argument: {value}: limits are -1 (unlimited) or more")
    if (hard != -1 and soft > hard) or (soft == -1 and hard != -1):
        raise ConfigError(f"ulimit soft limit must be less than or equal to hard limit: {value}")
    return {"type": f"RLIMIT_{name.upper()}", "soft": soft, "hard": hard}


def parse_env(value: str, environ: dict[str, str] | None = None) -> str:
    """-e K=V as is; -e K takes K from the host if set there, else stays a bare K (an unset)."""
    key, sep, _ = value.partition("=")
    if not key:
        raise ConfigError(f"invalid environment variable: {value}")
    if sep:
        return value
    host = os.environ if environ is None else environ
    return f"{key}={host[key]}" if key in host else key


def parse_env_file(path: str, environ: dict[str, str] | None = None) -> list[str]:
    """Docker's --env-file rules: '#' comments and blank lines skipped, K=V kept verbatim
    (no quote handling), a bare K taken from the host env if set there, else dropped."""
    host = os.environ if environ is None else environ
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except FileNotFoundError:
        raise ConfigError(f"open {path}: no such file or directory") from None
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(f"cannot read env file {path}: {e}") from None
    result: list[str] = []
    for number, raw in enumerate(text.removeprefix("\ufeff").splitlines(), 1):
        line = raw.lstrip()
        if not line or line.startswith("#"):
            continue
        key, sep, val = line.partition("=")
        if not key:
            raise ConfigError(f"invalid env file ({path}) line {number}: no variable name")
        if any(c.isspace() for c in key):
            raise ConfigError(
                f"invalid env file ({path}) line {number}: variable '{key}' contains whitespaces"
            )
        if sep:
            result.append(f"{key}={val}")
        elif key in host:
            result.append(f"{key}={host[key]}")
    return result


def parse_key_values(values: list[str], what: str) -> dict[str, str]:
    """['a=1', 'b'] -> {'a': '1', 'b': ''} (labels, log options)."""
    result: dict[str, str] = {}
    for item in values:
        key, _, val = item.partition("=")
        if not key:
            raise ConfigError(f"invalid {what} {item!r}: expected KEY=VALUE")
        result[key] = val
    return result


def parse_log_opts(values: list[str]) -> dict[str, str]:
    """--log-opt for the json-file driver: max-size (a size), max-file (>= 1), ..."""
    opts = parse_key_values(values, "log option")
    for key in opts:
        if key not in LOG_OPTS:
            raise ConfigError(f"unknown log opt '{key}' for json-file log driver")
    if "max-size" in opts and opts["max-size"] != "-1":
        parse_memory(opts["max-size"], "max-size")
    if "max-file" in opts and parse_int(opts["max-file"], "max-file") < 1:
        raise ConfigError("max-file cannot be less than 1")
    return opts


def normalize_cap(name: str) -> str:
    """'net_admin' / 'CAP_NET_ADMIN' -> 'CAP_NET_ADMIN'; 'all' -> 'ALL'."""
    upper = name.strip().upper()
    if upper == "ALL":
        return "ALL"
    return upper if upper.startswith("CAP_") else f"CAP_{upper}"


# ---------------------------------------------------------------- mounts

_VOLUME_NAME_RE = r"^[a-zA-Z0-9][a-zA-Z0-9_.-]+$"


def _clean_target(target: str, kind: str) -> str:
    if not target:
        raise ConfigError(f'invalid mount config for type "{kind}": field Target must not be empty')
    if not target.startswith("/"):
        raise ConfigError(
            f"invalid mount config for type \"{kind}\": invalid mount path: '{target}' "
            "mount path must be absolute"
        )
    clean = posixpath.normpath(target)
    if clean.startswith("//"):
        clean = "/" + clean.lstrip("/")
    if clean == "/":
        raise ConfigError("invalid specification: destination can't be '/'")
    return clean


def _host_path(source: str) -> str:
    """A bind source: absolute as given, relative ones ('.', './x') made absolute."""
    return posixpath.normpath(source if source.startswith("/") else os.path.abspath(source))


def _check_volume_name(name: str) -> None:
    import re

    if not re.match(_VOLUME_NAME_RE, name):
        raise ConfigError(
            f'"{name}" includes invalid characters for a local volume name, only '
            '"[a-zA-Z0-9][a-zA-Z0-9_.-]" are allowed. If you intended to pass a host '
            "directory, use absolute path"
        )


def parse_volume(value: str) -> MountSpec:
    """-v: '/host:/ctr[:opts]' (bind), 'name:/ctr[:opts]' (volume), '/ctr' (anonymous).

    opts is a comma list of ro|rw, a bind propagation, nocopy (volumes), z|Z (ignored:
    no SELinux here).
    """
    parts = value.split(":")
    if not value or len(parts) > 3 or any(not p for p in parts):
        raise ConfigError(f"invalid volume specification: '{value}'")
    if len(parts) == 1:
        return MountSpec("volume", None, _clean_target(parts[0], "volume"))
    if len(parts) == 2 and not parts[1].startswith("/"):
        raise ConfigError(f"invalid volume specification: '{value}'")
    source, target = parts[0], parts[1]
    is_bind = source.startswith((".", "/"))
    kind = "bind" if is_bind else "volume"
    spec = MountSpec(kind, None, _clean_target(target, kind))
    if is_bind:
        spec.source = _host_path(source)
        spec.options["create_host_path"] = "true"
    else:
        _check_volume_name(source)
        spec.source = source
    seen_rw = False
    for mode in parts[2].split(",") if len(parts) == 3 else []:
        if mode in ("ro", "rw"):
            if seen_rw:
                raise ConfigError(f"invalid mode: {parts[2]}")
            seen_rw = True
            spec.readonly = mode == "ro"
        elif mode in ("z", "Z"):
            continue
        elif mode in BIND_PROPAGATIONS and is_bind:
            spec.options["propagation"] = mode
        elif mode == "nocopy" and not is_bind:
            spec.options["nocopy"] = "true"
        else:
            raise ConfigError(f"invalid mode: {parts[2]}")
    return spec


def _parse_bool(key: str, value: str) -> bool:
    low = value.lower()
    if low in ("1", "true", "t", "yes"):
        return True
    if low in ("0", "false", "f", "no"):
        return False
    raise ConfigError(f"invalid value for {key}: {value}")


def parse_mount(value: str) -> MountSpec:
    """--mount 'type=bind,source=/a,target=/b,readonly' (Docker's opts/mount.go keys)."""
    kind = "volume"
    source: str | None = None
    target = ""
    readonly = False
    options: dict[str, str] = {}
    prefixed: set[str] = set()  # bind / volume / tmpfs: which kind of option was used
    for raw in _csv_fields(value):
        key, sep, val = raw.partition("=")
        key = key.strip().lower()
        if not sep:
            if key in ("readonly", "ro"):
                readonly = True
            elif key == "volume-nocopy":
                options["nocopy"] = "true"
                prefixed.add("volume")
            else:
                raise ConfigError(f"invalid field '{raw}' must be a key=value pair")
            continue
        if key == "type":
            kind = val
        elif key in ("source", "src"):
            source = val
        elif key in ("target", "dst", "destination"):
            target = val
        elif key in ("readonly", "ro"):
            readonly = _parse_bool(key, val)
        elif key == "consistency":
            continue  # macOS-only in Docker; meaningless here
        elif key == "bind-propagation":
            if val not in BIND_PROPAGATIONS:
                raise ConfigError(f"invalid value for bind-propagation: {val}")
            options["propagation"] = val
            prefixed.add("bind")
        elif key in ("bind-nonrecursive", "bind-recursive", "bind-create-src"):
            if key == "bind-create-src" and _parse_bool(key, val):
                options["create_host_path"] = "true"
            elif key == "bind-nonrecursive" and _parse_bool(key, val):
                options["nonrecursive"] = "true"
            prefixed.add("bind")
        elif key == "volume-nocopy":
            if _parse_bool(key, val):
                options["nocopy"] = "true"
            prefixed.add("volume")
        elif key == "volume-driver":
            options["driver"] = val
            prefixed.add("volume")
        elif key in ("volume-label", "volume-opt"):
            sub_key, sub_sep, sub_val = val.partition("=")
            if not sub_key or (key == "volume-opt" and not sub_sep):
                raise ConfigError(f"invalid value for {key}: {val}")
            options[f"{key[7:]}.{sub_key}"] = sub_val
            prefixed.add("volume")
        elif key == "tmpfs-size":
            options["size"] = str(parse_memory(val, "tmpfs-size"))
            prefixed.add("tmpfs")
        elif key == "tmpfs-mode":
            options["mode"] = parse_octal_mode(val, "tmpfs")
            prefixed.add("tmpfs")
        else:
            raise ConfigError(f"unexpected key '{key}' in '{value}'")
    if kind not in MOUNT_TYPES:
        raise ConfigError(f'invalid mount config for type "{kind}": mount type unknown')
    for other in prefixed - {kind}:
        raise ConfigError(f"cannot mix '{other}-*' options with mount type '{kind}'")
    target = _clean_target(target, kind)
    if kind == "bind":
        if not source:
            raise ConfigError(
                'invalid mount config for type "bind": field Source must not be empty'
            )
        source = _host_path(source)
    elif kind == "tmpfs":
        if source:
            raise ConfigError(
                'invalid mount config for type "tmpfs": field Source must not be specified'
            )
        source = None
    elif source:
        _check_volume_name(source)
    else:
        source = None
    return MountSpec(kind, source, target, readonly, options)


def _csv_fields(value: str) -> list[str]:
    """Split a --mount value as Go's csv reader does: commas, with "quoted" fields."""
    fields: list[str] = []
    current: list[str] = []
    quoted = False
    for ch in value:
        if ch == '"':
            quoted = not quoted
        elif ch == "," and not quoted:
            fields.append("".join(current))
            current = []
        else:
            current.append(ch)
    if quoted:
        raise ConfigError(f"invalid --mount value {value!r}: unterminated quote")
    fields.append("".join(current))
    return [f for f in fields if f.strip()]


def parse_tmpfs(value: str) -> MountSpec:
    """--tmpfs '/run[:size=64m,mode=1777,...]': other options are kept for the mount."""
    target, _, opts = value.partition(":")
    spec = MountSpec("tmpfs", None, _clean_target(target, "tmpfs"))
    for opt in opts.split(",") if opts else []:
        key, sep, val = opt.strip().partition("=")
        if not key:
            continue
        if key in ("ro", "rw") and not sep:
            spec.readonly = key == "ro"
        elif key == "size":
            if not (val.endswith("%") and val[:-1].isdigit()):
                val = str(parse_memory(val, "tmpfs size"))
            spec.options["size"] = val
        elif key == "mode":
            spec.options["mode"] = parse_octal_mode(val, "tmpfs")
        else:
            spec.options[key] = val if sep else ""
    return spec


def check_mount_targets(mounts: list[MountSpec]) -> None:
    """Docker refuses two mounts on one target."""
    seen: set[str] = set()
    for m in mounts:
        if m.target in seen:
            raise ConfigError(f"Duplicate mount point: {m.target}")
        seen.add(m.target)


def image_volume_mounts(run: RunConfig, image_config: dict[str, Any]) -> list[MountSpec]:
    """Anonymous volumes for the image's VOLUMEs the run does not mount over (Docker
    makes these at create; the engine adds them to RunConfig.mounts once)."""
    taken = {m.target for m in run.mounts}
    extra: list[MountSpec] = []
    for target in sorted((image_config.get("Volumes") or {}).keys()):
        clean = posixpath.normpath("/" + target.lstrip("/"))
        if clean != "/" and clean not in taken:
            taken.add(clean)
            extra.append(MountSpec("volume", None, clean))
    return extra


# ---------------------------------------------------------------- names, signals

_NAME_RE = r"^/?[a-zA-Z0-9][a-zA-Z0-9_.-]+$"


def check_container_name(name: str) -> str:
    import re

    if not re.match(_NAME_RE, name):
        raise ConfigError(
            f"Invalid container name ({name}), only [a-zA-Z0-9][a-zA-Z0-9_.-] are allowed"
        )
    return name.lstrip("/")


def parse_signal(value: str) -> str:
    """'TERM', 'sigterm', '15', 'SIGRTMIN+3' -> the canonical name ('SIGTERM'); Docker's
    ParseSignal accepts the same spellings."""
    import signal

    text = value.strip().upper()
    if text.isdigit():
        number = int(text)
        if number == 0 or number > signal.SIGRTMAX:
            raise ConfigError(f"Invalid signal: {value}")
        if signal.SIGRTMIN < number < signal.SIGRTMAX:
            return f"SIGRTMIN+{number - signal.SIGRTMIN}"
        try:
            return signal.Signals(number).name
        except ValueError:
            raise ConfigError(f"Invalid signal: {value}") from None
    name = text if text.startswith("SIG") else f"SIG{text}"
    if name.startswith(("SIGRTMIN+", "SIGRTMAX-")) and name[9:].isdigit():
        offset = int(name[9:])
        number = signal.SIGRTMIN + offset if name[8] == "+" else signal.SIGRTMAX - offset
        if signal.SIGRTMIN <= number <= signal.SIGRTMAX:
            return name
    elif name in signal.Signals.__members__:
        return name
    raise ConfigError(f"Invalid signal: {value}")


def signal_number(name: str) -> int:
    """A canonical name from parse_signal -> its number."""
    import signal

    if name.startswith("SIGRTMIN+"):
        return signal.SIGRTMIN + int(name[9:])
    if name.startswith("SIGRTMAX-"):
        return signal.SIGRTMAX - int(name[9:])
    return int(signal.Signals[name])


# ---------------------------------------------------------------- networking

_NETWORK_NAME_RE = r"^[a-zA-Z0-9][a-zA-Z0-9_.-]*$"


def default_network(isolation: str) -> str:
    """--network when the flag is missing: Docker's "bridge", "none" for a microVM."""
    return "none" if isolation == "vm" else CLI_DEFAULT_NETWORK


def uses_network(run: RunConfig) -> bool:
    """Whether the container gets a namespace of its own on a bridge (default or user)."""
    return run.network not in SPECIAL_NETWORKS and not run.network.startswith("container:")


def is_user_network(run: RunConfig) -> bool:
    return uses_network(run) and run.network != "bridge"


def check_network_mode(value: str) -> str:
    """--network: none | host | bridge | NAME | container:ID (Docker's NetworkMode)."""
    if value in ("default", ""):
        return "bridge"
    if value in ("none", "host", "bridge"):
        return value
    if value.startswith("container:"):
        if not value[len("container:") :]:
            raise ConfigError("--network container: needs a container name or id")
        return value
    import re

    if not re.match(_NETWORK_NAME_RE, value):
        raise ConfigError(f"invalid network name {value!r}")
    return value


def parse_ip(value: str, what: str = "IP address") -> str:
    """An IPv4 or IPv6 address, in its canonical spelling."""
    import ipaddress

    try:
        return str(ipaddress.ip_address(value.strip()))
    except ValueError:
        raise ConfigError(f"invalid {what}: {value!r}") from None


def parse_add_host(value: str) -> str:
    """--add-host 'name:ip' (or Docker 25's 'name=ip'); ip may be 'host-gateway'.

    The host name cannot hold ':' so the first one separates it from an IPv6 address."""
    sep = "=" if "=" in value else ":"
    name, found, address = value.partition(sep)
    if not found or not name or not address:
        raise ConfigError(f"invalid argument {value!r} for --add-host: use name:ip")
    if _bad_hostname(name):
        raise ConfigError(f"invalid host name {name!r} for --add-host")
    if address != "host-gateway":
        address = parse_ip(address.strip("[]"), "IP address in --add-host")
    return f"{name}:{address}"


def _check_networking(run: RunConfig) -> None:
    """Docker's conflicts between --network and the other network flags."""
    run.network = check_network_mode(run.network)
    run.dns = [parse_ip(d, "DNS server address") for d in run.dns]
    run.add_hosts = [parse_add_host(h) for h in run.add_hosts]
    if run.ports:
        from hull.net.ports import parse_port_specs

        parse_port_specs(run.ports)
    container_mode = run.network.startswith("container:")
    if container_mode:
        if run.ports or run.publish_all:
            raise ConfigError(
                "conflicting options: port publishing and the container type network mode"
            )
        if run.hostname is not None:
            raise ConfigError("conflicting options: hostname and the network mode")
        if run.dns:
            raise ConfigError("conflicting options: dns and the network mode")
        if run.add_hosts:
            raise ConfigError("conflicting options: custom host-to-IP mapping and the network mode")
    if run.ip is not None:
        run.ip = parse_ip(run.ip)
        if ":" in run.ip:
            raise ConfigError(f"--ip {run.ip}: only IPv4 addresses are supported")
        if not is_user_network(run):
            raise ConfigError(
                "user specified IP address is supported on user defined networks only"
            )
    if run.network_aliases and not is_user_network(run):
        raise ConfigError(
            "network-scoped aliases are supported only for containers in user defined networks"
        )


# ---------------------------------------------------------------- security options


@dataclass
class SecurityOptions:
    """--security-opt, digested: seccomp is None (default profile), "unconfined",
    or a profile (inline JSON, starting with '{', or a file path)."""

    no_new_privileges: bool = False
    seccomp: str | None = None


def parse_security_opts(values: list[str]) -> SecurityOptions:
    """seccomp=unconfined|PATH|JSON, no-new-privileges[:true|false], apparmor=unconfined,
    label=disable (Hull has neither AppArmor nor SELinux, so only "off" is accepted)."""
    result = SecurityOptions()
    for item in values:
        if item == "no-new-privileges":
            result.no_new_privileges = True
            continue
        key, sep, val = item.partition("=")
        if not sep:
            key, sep, val = item.partition(":")  # Docker's older key:value spelling
        if not sep or not val:
            raise ConfigError(f"invalid --security-opt: {item!r}")
        if key == "no-new-privileges":
            result.no_new_privileges = _parse_bool("no-new-privileges", val)
        elif key == "seccomp":
            result.seccomp = val
        elif (key, val) in (("apparmor", "unconfined"), ("label", "disable")):
            continue
        elif key in ("apparmor", "label", "systempaths", "mask", "unmask"):
            raise ConfigError(f"--security-opt {item!r} is not supported by Hull")
        else:
            raise ConfigError(f"invalid --security-opt: {item!r}")
    return result


# ---------------------------------------------------------------- whole-config checks


def _bad_hostname(name: str) -> bool:
    """Whitespace, '/' or NUL: what Docker refuses in a host name."""
    return any(c.isspace() or c in "/\x00" for c in name)


def validate_run_config(run: RunConfig) -> RunConfig:
    """Checks across fields, as moby's verifyContainerSettings does at create.

    Both the CLI (run_config_from_args) and hull.engine.spec call this, so a
    RunConfig from the API gets the same answers.
    """
    if run.name is not None:
        run.name = check_container_name(run.name)
    if run.rm and run.restart.name != "no":
        raise ConfigError("Conflicting options: --restart and --rm")
    if run.restart.name not in RESTART_POLICIES:
        raise ConfigError(f"invalid restart policy: unknown policy '{run.restart.name}'")
    if run.isolation not in ISOLATIONS:
        raise ConfigError(f"invalid isolation {run.isolation!r}: use container or vm")
    if run.pull not in PULL_POLICIES:
        raise ConfigError(f"invalid pull policy {run.pull!r}: use missing, always or never")
    if run.workdir is not None and not run.workdir.startswith("/"):
        raise ConfigError(
            f"the working directory '{run.workdir}' is invalid, it needs to be an absolute path"
        )
    if run.hostname is not None and (
        not run.hostname or len(run.hostname.encode()) > 64 or _bad_hostname(run.hostname)
    ):
        raise ConfigError(f"invalid hostname {run.hostname!r}")
    _check_resources(run)
    _check_networking(run)
    check_mount_targets(run.mounts)
    for m in run.mounts:
        if m.type not in MOUNT_TYPES:
            raise ConfigError(f'invalid mount config for type "{m.type}": mount type unknown')
    from hull.runtime.linux.capabilities import CAPS

    for cap in (*run.cap_add, *run.cap_drop):
        if cap != "ALL" and cap not in CAPS:
            raise ConfigError(f'unknown capability: "{cap}"')
    parse_security_opts(run.security_opt)
    if run.stop_signal is not None:
        run.stop_signal = parse_signal(run.stop_signal)
    if run.stop_timeout is not None and run.stop_timeout < -1:
        raise ConfigError("stop timeout must be -1 (wait forever) or more")
    return run


def _check_resources(run: RunConfig) -> None:
    if run.memory is not None:
        if run.memory < 0:
            raise ConfigError("invalid memory limit: must not be negative")
        if 0 < run.memory < MIN_MEMORY:
            raise ConfigError("Minimum memory limit allowed is 6MB")
    memory = run.memory or 0
    swap = run.memory_swap or 0
    if swap < -1:
        raise ConfigError("invalid memory-swap limit: use a size or -1 for unlimited")
    if memory > 0 and swap > 0 and swap < memory:
        raise ConfigError("Minimum memoryswap limit should be larger than memory limit, see usage")
    if memory == 0 and swap > 0:
        raise ConfigError(
            "You should always set the Memory limit when using Memoryswap limit, see usage"
        )
    ncpu = os.cpu_count() or 1
    if run.cpus is not None and not 0.01 <= run.cpus <= ncpu:
        raise ConfigError(
            f"Range of CPUs is from 0.01 to {ncpu}.00, as there are only {ncpu} CPUs available"
        )
    if run.cpu_shares is not None and run.cpu_shares < 0:
        raise ConfigError("invalid cpu-shares: must not be negative")
    if run.cpuset_cpus is not None:
        parse_cpuset(run.cpuset_cpus)
        wanted = _cpu_list(run.cpuset_cpus)
        if wanted and max(wanted) >= ncpu:
            raise ConfigError(
                f"Requested CPUs are not available - requested {run.cpuset_cpus}, "
                f"available: {'0' if ncpu == 1 else f'0-{ncpu - 1}'}"
            )
    for ul in run.ulimits:
        if not isinstance(ul, dict) or not str(ul.get("type", "")).startswith("RLIMIT_"):
            raise ConfigError(f"invalid ulimit {ul!r}")


def _cpu_list(text: str) -> list[int]:
    cpus: list[int] = []
    for part in text.split(","):
        low, _, high = part.partition("-")
        cpus.extend(range(int(low), int(high or low) + 1))
    return cpus
