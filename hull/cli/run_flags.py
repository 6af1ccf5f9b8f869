"""The flags of `hull run` and `hull create` (Docker's), and their RunConfig.

add_run_flags declares them on a verb's parser; run_config_from_args turns the
parsed namespace into a checked RunConfig. argparse only at import time: `hull
run` is timed, and the engine's parsers load when the flags are read.
"""

from __future__ import annotations

TYPE_CHECKING = False
if TYPE_CHECKING:
    import argparse
    from types import SimpleNamespace

    from hull.engine.runconfig import RunConfig

# Docker's run/create flags: (names, kind, dest, help, extra argparse keywords).
# kind: "bool" (store_true), "value" (one value), "append" (repeatable).
# One table feeds both argparse (help, errors) and quick_parse (`hull run`'s path).
FLAGS: list[tuple[tuple[str, ...], str, str, str, dict]] = [
    (("-d", "--detach"), "bool", "detach", "run in the background, print the ID", {}),
    (("-i", "--interactive"), "bool", "interactive", "keep STDIN open", {}),
    (("-t", "--tty"), "bool", "tty", "allocate a pseudo-TTY", {}),
    (("--rm",), "bool", "rm", "remove the container when it exits", {}),
    (("--name",), "value", "name", "assign a name to the container", {}),
    (("-e", "--env"), "append", "env", "set a variable", {"metavar": "KEY[=VALUE]"}),
    (("--env-file",), "append", "env_file", "read variables from FILE", {"metavar": "FILE"}),
    (("-w", "--workdir"), "value", "workdir", "working directory inside the container", {}),
    (("-u", "--user"), "value", "user", "name|uid[:group|gid]", {}),
    (("--entrypoint",), "value", "entrypoint", "override ENTRYPOINT ('' clears it)", {}),
    (("-v", "--volume"), "append", "volume", "bind or volume mount", {}),
    (("--mount",), "append", "mount", "mount: type=bind|volume|tmpfs,...", {}),
    (("--tmpfs",), "append", "tmpfs", "mount a tmpfs", {"metavar": "PATH[:OPTS]"}),
    (("-h", "--hostname"), "value", "hostname", "container host name", {}),
    (("-m", "--memory"), "value", "memory", "memory limit (e.g. 512m)", {}),
    (("--memory-swap",), "value", "memory_swap", "memory plus swap; -1 for unlimited", {}),
    (("--cpus",), "value", "cpus", "number of CPUs (e.g. 1.5)", {}),
    (("-c", "--cpu-shares"), "value", "cpu_shares", "CPU shares (relative weight)", {}),
    (("--cpuset-cpus",), "value", "cpuset_cpus", "CPUs to run on (0-3, 0,1)", {}),
    (("--pids-limit",), "value", "pids_limit", "process limit (-1 for unlimited)", {}),
    (("--ulimit",), "append", "ulimit", "ulimit", {"metavar": "NAME=SOFT[:HARD]"}),
    (("--cap-add",), "append", "cap_add", "add a capability", {"metavar": "CAP"}),
    (("--cap-drop",), "append", "cap_drop", "drop a capability", {"metavar": "CAP"}),
    (("--privileged",), "bool", "privileged", "give extended privileges", {}),
    (("--read-only",), "bool", "read_only", "mount the root filesystem read-only", {}),
    (("--security-opt",), "append", "security_opt", "seccomp=..., no-new-privileges", {}),
    (("--init",), "bool", "init", "run an init process as PID 1", {}),
    (
        ("--restart",),
        "value",
        "restart",
        "no, always, unless-stopped, on-failure[:N]",
        {"default": "no"},
    ),  # fmt: skip
    (("-l", "--label"), "append", "label", "set a label", {"metavar": "KEY[=VALUE]"}),
    (("--stop-signal",), "value", "stop_signal", "signal that stops the container", {}),
    (("--stop-timeout",), "value", "stop_timeout", "seconds before killing on stop", {}),
    (
        ("--isolation",),
        "value",
        "isolation",
        "isolation",
        {"choices": ("container", "vm"), "default": "container"},
    ),  # fmt: skip
    (
        ("--network", "--net"),
        "value",
        "network",
        "none, host, bridge, a network's name, or container:ID",
        {},
    ),  # fmt: skip
    (
        ("--network-alias", "--net-alias"),
        "append",
        "network_alias",
        "a name on the network",
        {"metavar": "ALIAS"},
    ),  # fmt: skip
    (("--ip",), "value", "ip", "IPv4 address on a user network (e.g. 10.89.0.10)", {}),
    (
        ("-p", "--publish"),
        "append",
        "publish",
        "publish a port",
        {"metavar": "[IP:][HOST:]PORT[/PROTO]"},
    ),  # fmt: skip
    (("-P", "--publish-all"), "bool", "publish_all", "publish the image's exposed ports", {}),
    (("--dns",), "append", "dns", "a DNS server to use", {"metavar": "IP"}),
    (("--add-host",), "append", "add_host", "an /etc/hosts entry", {"metavar": "HOST:IP"}),
    (("--platform",), "value", "platform", "platform of the image (os/arch[/variant])", {}),
    (
        ("--pull",),
        "value",
        "pull",
        "pull policy",
        {"choices": ("missing", "always", "never"), "default": "missing"},
    ),  # fmt: skip
    (("--log-opt",), "append", "log_opt", "log option", {"metavar": "KEY=VALUE"}),
]


def add_run_flags(parser: argparse.ArgumentParser) -> None:
    """Register Docker's run/create flags, then IMAGE and COMMAND...

    -h is --hostname, as in Docker; help stays on --help.
    """
    import argparse

    add = _options_group(parser).add_argument
    for names, kind, dest, help, extra in FLAGS:
        if kind == "bool":
            add(*names, dest=dest, action="store_true", help=help)
        elif kind == "append":
            add(*names, dest=dest, action="append", default=[], help=help, **extra)
        else:
            add(*names, dest=dest, help=help, **extra)
    parser.add_argument("image", metavar="IMAGE")
    parser.add_argument(
        "command", nargs=argparse.REMAINDER, metavar="COMMAND", help="command and its arguments"
    )


def _options_group(parser: argparse.ArgumentParser) -> argparse._ArgumentGroup:
    """A group whose options may take over -h: made under the 'resolve' conflict
    handler, so adding -h/--hostname takes -h off --help (which keeps its long form)."""
    saved = parser.conflict_handler
    parser.conflict_handler = "resolve"
    try:
        return parser.add_argument_group("container options")
    finally:
        parser.conflict_handler = saved


_BY_NAME: dict[str, tuple[str, str, dict]] = {
    name: (kind, dest, extra) for names, kind, dest, _, extra in FLAGS for name in names
}


def quick_parse(argv: list[str]) -> SimpleNamespace | None:
    """Docker's flags, IMAGE, COMMAND... without argparse (~10 ms less on `hull run`).

    None whenever argparse should speak instead: --help, an unknown or
    abbreviated flag, a missing value, a bad choice, a value that looks like a
    flag. Options stop at IMAGE, as Docker's do.
    """
    from types import SimpleNamespace

    values: dict[str, object] = {}
    for _, kind, dest, _, extra in FLAGS:
        default: object = [] if kind == "append" else (False if kind == "bool" else None)
        values[dest] = extra.get("default", default)
    i = 0
    while i < len(argv):
        token = argv[i]
        if token == "--":
            i += 1
            break
        if not token.startswith("-") or token == "-":
            break
        i += 1
        if token.startswith("--"):
            name, eq, value = token.partition("=")
            found = _BY_NAME.get(name)
            if found is None:
                return None
            kind, dest, extra = found
            if kind == "bool":
                if eq:
                    return None
                values[dest] = True
                continue
            if not eq:
                if i >= len(argv):
                    return None
                value = argv[i]
                i += 1
        else:  # a cluster of short flags: -it, -dp 80, -e=K=V, -eK=V
            j = 1
            while j < len(token):
                found = _BY_NAME.get("-" + token[j])
                if found is None:
                    return None
                kind, dest, extra = found
                j += 1
                if kind == "bool":
                    values[dest] = True
                    continue
                break
            else:
                continue
            value = token[j:]
            if value.startswith("="):
                value = value[1:]
            elif not value:
                if i >= len(argv):
                    return None
                value = argv[i]
                i += 1
        if value.startswith("-") and value != "-" and not value[1:2].isdigit():
            return None  # argparse would take it for a flag: let it say so
        choices = extra.get("choices")
        if choices and value not in choices:
            return None
        if kind == "append":
            values[dest].append(value)  # type: ignore[attr-defined]
        else:
            values[dest] = value
    if i >= len(argv):
        return None  # no IMAGE: argparse's usage error
    values["image"] = argv[i]
    command = list(argv[i + 1 :])
    if command[:1] == ["--"]:
        del command[0]  # as argparse's REMAINDER does
    values["command"] = command
    return SimpleNamespace(**values)


def run_config_from_args(ns: argparse.Namespace) -> RunConfig:
    """The RunConfig the flags ask for; ConfigError (exit 125) on a bad value."""
    from hull.engine import runconfig as rc

    env: list[str] = []
    for path in ns.env_file:
        env.extend(rc.parse_env_file(path))
    env.extend(rc.parse_env(e) for e in ns.env)
    mounts = [rc.parse_volume(v) for v in ns.volume]
    mounts += [rc.parse_mount(m) for m in ns.mount]
    mounts += [rc.parse_tmpfs(t) for t in ns.tmpfs]
    entrypoint = None if ns.entrypoint is None else ([ns.entrypoint] if ns.entrypoint else [])
    run = rc.RunConfig(
        image=ns.image,
        command=list(ns.command) or None,
        entrypoint=entrypoint,
        name=ns.name,
        env=env,
        workdir=ns.workdir,
        user=ns.user,
        hostname=ns.hostname,
        tty=ns.tty,
        interactive=ns.interactive,
        detach=ns.detach,
        rm=ns.rm,
        mounts=mounts,
        memory=rc.parse_memory(ns.memory) if ns.memory else None,
        memory_swap=rc.parse_memory_swap(ns.memory_swap) if ns.memory_swap else None,
        cpus=rc.parse_cpus(ns.cpus) if ns.cpus else None,
        cpu_shares=rc.parse_int(ns.cpu_shares, "--cpu-shares") if ns.cpu_shares else None,
        cpuset_cpus=rc.parse_cpuset(ns.cpuset_cpus) if ns.cpuset_cpus else None,
        pids_limit=rc.parse_int(ns.pids_limit, "--pids-limit") if ns.pids_limit else None,
        ulimits=_unique_ulimits([rc.parse_ulimit(u) for u in ns.ulimit]),
        cap_add=[rc.normalize_cap(c) for c in ns.cap_add],
        cap_drop=[rc.normalize_cap(c) for c in ns.cap_drop],
        privileged=ns.privileged,
        read_only=ns.read_only,
        security_opt=[_inline_seccomp(opt) for opt in ns.security_opt],
        init=ns.init,
        restart=rc.parse_restart(ns.restart),
        labels=rc.parse_key_values(ns.label, "label"),
        stop_signal=ns.stop_signal,
        stop_timeout=rc.parse_int(ns.stop_timeout, "--stop-timeout")
        if ns.stop_timeout is not None
        else None,
        isolation=ns.isolation,
        network=ns.network if ns.network is not None else rc.default_network(ns.isolation),
        ports=list(ns.publish),
        publish_all=ns.publish_all,
        network_aliases=list(ns.network_alias),
        ip=ns.ip,
        dns=list(ns.dns),
        add_hosts=list(ns.add_host),
        platform=ns.platform,
        pull=ns.pull,
        log_opts=rc.parse_log_opts(ns.log_opt),
    )
    if run.pids_limit is not None and run.pids_limit <= 0:
        run.pids_limit = None  # Docker: 0 and -1 mean no limit
    return rc.validate_run_config(run)


def _unique_ulimits(ulimits: list[dict]) -> list[dict]:
    """A later --ulimit of the same name wins, as in Docker."""
    by_type = {u["type"]: u for u in ulimits}
    return list(by_type.values())


def _inline_seccomp(option: str) -> str:
    """seccomp=PATH -> seccomp=<the profile's JSON>, read now as the Docker CLI does,
    so the container keeps the profile it was created with."""
    from hull.engine.runconfig import ConfigError

    key, sep, value = option.partition("=")
    if key != "seccomp" or not sep or value == "unconfined" or value.lstrip().startswith("{"):
        return option
    import json

    try:
        with open(value, encoding="utf-8") as f:
            profile = json.load(f)
    except OSError as e:
        raise ConfigError(f"opening seccomp profile ({value}) failed: {e.strerror}") from None
    except ValueError as e:
        raise ConfigError(f"decoding seccomp profile ({value}) failed: {e}") from None
    return "seccomp=" + json.dumps(profile, separators=(",", ":"))
