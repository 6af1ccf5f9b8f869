"""The flags of `hull run` and `hull create` (Docker's), and their RunConfig.

add_run_flags declares them on a verb's parser; run_config_from_args turns the
parsed namespace into a checked RunConfig. argparse only at import time: `hull
run` is timed, and the engine's parsers load when the flags are read.
"""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from hull.engine.runconfig import RunConfig


def add_run_flags(parser: argparse.ArgumentParser) -> None:
    """Register Docker's run/create flags, then IMAGE and COMMAND...

    -h is --hostname, as in Docker; help stays on --help.
    """
    add = _options_group(parser).add_argument
    add("-d", "--detach", action="store_true", help="run in the background, print the ID")
    add("-i", "--interactive", action="store_true", help="keep STDIN open")
    add("-t", "--tty", action="store_true", help="allocate a pseudo-TTY")
    add("--rm", action="store_true", help="remove the container when it exits")
    add("--name", help="assign a name to the container")
    add("-e", "--env", action="append", default=[], metavar="KEY[=VALUE]", help="set a variable")
    add("--env-file", action="append", default=[], metavar="FILE", help="read variables from FILE")
    add("-w", "--workdir", help="working directory inside the container")
    add("-u", "--user", help="user name or UID, and optionally group: name|uid[:group|gid]")
    add("--entrypoint", help="override the image's ENTRYPOINT ('' clears it)")
    add("-v", "--volume", action="append", default=[], help="bind or volume mount")
    add("--mount", action="append", default=[], help="mount: type=bind|volume|tmpfs,...")
    add("--tmpfs", action="append", default=[], metavar="PATH[:OPTS]", help="mount a tmpfs")
    add("-h", "--hostname", help="container host name")
    add("-m", "--memory", help="memory limit (e.g. 512m)")
    add("--memory-swap", help="memory plus swap limit; -1 for unlimited swap")
    add("--cpus", help="number of CPUs (e.g. 1.5)")
    add("-c", "--cpu-shares", help="CPU shares (relative weight)")
    add("--cpuset-cpus", help="CPUs to run on (0-3, 0,1)")
    add("--pids-limit", help="process limit (-1 for unlimited)")
    add("--ulimit", action="append", default=[], metavar="NAME=SOFT[:HARD]", help="ulimit")
    add("--cap-add", action="append", default=[], metavar="CAP", help="add a capability")
    add("--cap-drop", action="append", default=[], metavar="CAP", help="drop a capability")
    add("--privileged", action="store_true", help="give extended privileges to the container")
    add("--read-only", action="store_true", help="mount the root filesystem read-only")
    add("--security-opt", action="append", default=[], help="seccomp=..., no-new-privileges")
    add("--init", action="store_true", help="run an init process as PID 1")
    add("--restart", default="no", help="no, always, unless-stopped, on-failure[:N]")
    add("-l", "--label", action="append", default=[], metavar="KEY[=VALUE]", help="set a label")
    add("--stop-signal", help="signal that stops the container (default SIGTERM)")
    add("--stop-timeout", help="seconds to wait before killing the container")
    add("--isolation", choices=("container", "vm"), default="container", help="isolation")
    add(
        "--network",
        "--net",
        dest="network",
        default=None,
        help="none, host, bridge, a network's name, or container:ID",
    )
    add("--network-alias", "--net-alias", action="append", default=[], metavar="ALIAS")
    add("--ip", help="IPv4 address on a user network (e.g. 10.89.0.10)")
    add("-p", "--publish", action="append", default=[], metavar="[IP:][HOST:]PORT[/PROTO]")
    add("-P", "--publish-all", action="store_true", help="publish the image's exposed ports")
    add("--dns", action="append", default=[], metavar="IP", help="a DNS server to use")
    add("--add-host", action="append", default=[], metavar="HOST:IP", help="an /etc/hosts entry")
    add("--platform", help="platform of the image to use (os/arch[/variant])")
    add("--pull", choices=("missing", "always", "never"), default="missing", help="pull policy")
    add("--log-opt", action="append", default=[], metavar="KEY=VALUE", help="log option")
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
        network=ns.network if ns.network is not None else rc.DEFAULT_NETWORK,
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
