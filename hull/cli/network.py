"""Network verbs: create, ls, inspect, rm, connect, disconnect, prune (Docker's output).

Thin: flags -> hull.net.networks.NetworkService (networks) and hull.engine.netsetup
(containers joining and leaving them).
"""

from __future__ import annotations

import argparse
import sys
from typing import TYPE_CHECKING, Any

from hull.cli import output
from hull.errors import ConfigError, HullError

if TYPE_CHECKING:
    from hull.engine.containers import ContainerService
    from hull.net.networks import Network, NetworkService

LS_HEADERS = ["NETWORK ID", "NAME", "DRIVER", "SCOPE"]
LS_COLUMNS = ["ID", "Name", "Driver", "Scope"]


def _containers(args: argparse.Namespace, sweep: bool = False) -> ContainerService:
    from hull.engine.containers import ContainerService

    service = ContainerService(args.paths)
    if sweep:  # endpoints of containers that died would block rm and prune
        service.reconcile()
    return service


def _networks(containers: ContainerService) -> NetworkService:
    from hull.engine.netsetup import network_service

    return network_service(containers.paths, containers.db)


# ------------------------------------------------------------------ create


def create_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("-d", "--driver", default="bridge", help="only bridge")
    p.add_argument("--subnet", help="IPv4 subnet in CIDR form (default: a free /24)")
    p.add_argument("--gateway", help="IPv4 gateway of the subnet (default: its first address)")
    p.add_argument("--internal", action="store_true", help="no traffic beyond the network")
    p.add_argument("--label", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument(
        "-o",
        "--opt",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="com.docker.network.bridge.name=NAME picks the bridge device",
    )
    p.add_argument("name", metavar="NETWORK")


def create(args: argparse.Namespace) -> int:
    if args.driver != "bridge":
        raise ConfigError(f"network driver {args.driver!r} is not supported (only bridge)")
    if args.gateway and not args.subnet:
        raise ConfigError("--gateway needs --subnet")
    from hull.engine.runconfig import parse_key_values

    labels = parse_key_values(args.label, "label")
    options = parse_key_values(args.opt, "driver option")
    bridge = options.pop("com.docker.network.bridge.name", None)
    if options:
        raise ConfigError(f"unsupported network option: {', '.join(sorted(options))}")
    with _containers(args) as containers:
        network = _networks(containers).create(
            args.name,
            subnet=args.subnet,
            gateway=args.gateway,
            internal=args.internal,
            bridge=bridge,
            labels=labels,
        )
    print(network.id)
    return 0


# ------------------------------------------------------------------ ls


def ls_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("-q", "--quiet", action="store_true", help="only display network IDs")
    p.add_argument("--no-trunc", action="store_true", help="do not truncate the output")
    p.add_argument("--format", help="table, json or a Go template")
    p.add_argument(
        "-f", "--filter", action="append", default=[], help="name=, id=, driver=, label="
    )


def ls_row(network: Network, no_trunc: bool = False) -> dict[str, str]:
    return {
        "ID": network.id if no_trunc else network.id[:12],
        "Name": network.name,
        "Driver": "bridge",
        "Scope": "local",
        "Internal": str(network.internal).lower(),
        "Labels": ",".join(f"{k}={v}" for k, v in network.labels.items()),
    }


def matches(network: Network, filters: list[str]) -> bool:
    """Docker's filters: one key with several values matches any of them; all keys match."""
    wanted: dict[str, list[str]] = {}
    for item in filters:
        key, sep, value = item.partition("=")
        if not sep or key not in ("name", "id", "driver", "label"):
            raise ConfigError(f"invalid filter {item!r}: use name=, id=, driver= or label=")
        wanted.setdefault(key, []).append(value)
    checks = {
        "name": lambda v: v in network.name,
        "id": lambda v: network.id.startswith(v),
        "driver": lambda v: v == "bridge",
        "label": lambda v: _label_matches(network.labels, v),
    }
    return all(any(checks[key](v) for v in values) for key, values in wanted.items())


def _label_matches(labels: dict[str, str], want: str) -> bool:
    key, sep, value = want.partition("=")
    return key in labels and (not sep or labels[key] == value)


def ls(args: argparse.Namespace) -> int:
    with _containers(args) as containers:
        networks = [n for n in _networks(containers).list() if matches(n, args.filter)]
    networks.sort(key=lambda n: n.name)
    if args.quiet:
        for network in networks:
            print(network.id if args.no_trunc else network.id[:12])
        return 0
    rows = [ls_row(n, args.no_trunc) for n in networks]
    output.print_formatted(args.format, rows, LS_HEADERS, LS_COLUMNS)
    return 0


# ------------------------------------------------------------------ inspect


def inspect_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("-f", "--format", help="a Go template")
    p.add_argument("networks", nargs="+", metavar="NETWORK")


def inspect(args: argparse.Namespace) -> int:
    docs: list[dict[str, Any]] = []
    failed = False
    with _containers(args) as containers:
        service = _networks(containers)
        for ref in args.networks:
            try:
                doc = service.inspect(ref)
            except HullError as err:
                sys.stderr.write(f"hull: {err.message}\n")
                failed = True
                continue
            for cid, entry in doc["Containers"].items():
                entry.setdefault("Name", _container_name(containers, cid))
            docs.append(doc)
    if args.format:
        for doc in docs:
            print(output.render_template(args.format, doc))
    else:
        output.print_json(docs)
    return 1 if failed else 0


def _container_name(containers: ContainerService, cid: str) -> str:
    row = containers.db.execute("SELECT name FROM containers WHERE id = ?", (cid,)).fetchone()
    return str(row["name"]) if row else ""


# ------------------------------------------------------------------ rm, prune


def rm_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("-f", "--force", action="store_true", help="no error if it does not exist")
    p.add_argument("networks", nargs="+", metavar="NETWORK")


def rm(args: argparse.Namespace) -> int:
    from hull.errors import NotFoundError

    failed = False
    with _containers(args, sweep=True) as containers:
        service = _networks(containers)
        for ref in args.networks:
            try:
                service.remove(ref)
                print(ref)
            except NotFoundError as err:
                if not args.force:
                    sys.stderr.write(f"hull: {err.message}\n")
                    failed = True
            except HullError as err:
                sys.stderr.write(f"hull: {err.message}\n")
                failed = True
    return 1 if failed else 0


def prune_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("-f", "--force", action="store_true", help="do not prompt (never prompts)")


def prune(args: argparse.Namespace) -> int:
    with _containers(args, sweep=True) as containers:
        removed = _networks(containers).prune()
    if removed:
        print("Deleted Networks:")
        for name in removed:
            print(name)
    return 0


# ------------------------------------------------------------------ connect, disconnect


def connect_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--alias", action="append", default=[], help="a name on this network")
    p.add_argument("--ip", help="IPv4 address on this network")
    p.add_argument("network", metavar="NETWORK")
    p.add_argument("container", metavar="CONTAINER")


def connect(args: argparse.Namespace) -> int:
    from hull.engine.netsetup import connect_container

    with _containers(args, sweep=True) as containers:
        connect_container(containers, args.container, args.network, args.alias, args.ip)
    return 0


def disconnect_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("-f", "--force", action="store_true", help="accepted for compatibility")
    p.add_argument("network", metavar="NETWORK")
    p.add_argument("container", metavar="CONTAINER")


def disconnect(args: argparse.Namespace) -> int:
    from hull.engine.netsetup import disconnect_container

    with _containers(args, sweep=True) as containers:
        disconnect_container(containers, args.network, args.container)
    return 0
