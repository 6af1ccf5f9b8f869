"""Container verbs beyond the lifecycle: stats, top, cp, port, rename, update, attach,
diff, commit. Thin: flags -> hull.engine.operations."""

from __future__ import annotations

import argparse
import sys
import time
from typing import TYPE_CHECKING

from hull.cli import output
from hull.errors import ConfigError, HullError

if TYPE_CHECKING:
    from hull.engine.containers import ContainerService


def _service(args: argparse.Namespace, sweep: bool = True) -> ContainerService:
    from hull.engine.containers import ContainerService

    service = ContainerService(args.paths)
    if sweep:
        service.reconcile()
    return service


def _bool_flag(text: str) -> bool:
    """Docker's `--flag=false` form for flags that default to true."""
    value = text.strip().lower()
    if value in ("1", "t", "true", "yes"):
        return True
    if value in ("0", "f", "false", "no"):
        return False
    raise argparse.ArgumentTypeError(f"invalid boolean value {text!r}")


# ------------------------------------------------------------------ stats

STATS_HEADERS = [
    "CONTAINER ID",
    "NAME",
    "CPU %",
    "MEM USAGE / LIMIT",
    "MEM %",
    "NET I/O",
    "BLOCK I/O",
    "PIDS",
]
STATS_COLUMNS = ["ID", "Name", "CPUPerc", "MemUsage", "MemPerc", "NetIO", "BlockIO", "PIDs"]
STATS_SAMPLE_GAP = 0.5  # seconds between the two readings of --no-stream
STATS_INTERVAL = 1.0


def stats_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("-a", "--all", action="store_true", help="show all containers (default running)")
    p.add_argument("--no-stream", action="store_true", help="print one reading and exit")
    p.add_argument("--no-trunc", action="store_true", help="do not truncate output")
    p.add_argument("--format", help="table, json or a Go template")
    p.add_argument("containers", nargs="*", metavar="CONTAINER")


def stats(args: argparse.Namespace) -> int:
    from hull.engine.operations import host_memory, sample_stats, stats_row

    memory = host_memory()
    with _service(args) as service:

        def records() -> list:
            if args.containers:
                return [service.get(ref) for ref in args.containers]
            return service.list_containers(all=args.all)

        previous = {r.id: sample_stats(service, r) for r in records()}
        time.sleep(STATS_SAMPLE_GAP)
        clear = not args.no_stream and sys.stdout.isatty()
        try:
            while True:
                current = {r.id: sample_stats(service, r) for r in records()}
                rows = [
                    stats_row(previous.get(cid), sample, memory) for cid, sample in current.items()
                ]
                if args.no_trunc:
                    for row, cid in zip(rows, current, strict=True):
                        row["ID"] = cid
                if clear:
                    sys.stdout.write("\033[2J\033[H")
                output.print_formatted(args.format, rows, STATS_HEADERS, STATS_COLUMNS)
                sys.stdout.flush()
                if args.no_stream:
                    return 0
                previous = current
                time.sleep(STATS_INTERVAL)
        except KeyboardInterrupt:
            return 0


# ------------------------------------------------------------------ top


def top_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("container")
    p.add_argument("ps_args", nargs=argparse.REMAINDER, metavar="[ps OPTIONS]")


def top(args: argparse.Namespace) -> int:
    from hull.engine import operations

    with _service(args) as service:
        titles, rows = operations.top(service, args.container, list(args.ps_args))
    output.print_table(titles, rows)
    return 0


# ------------------------------------------------------------------ cp


def cp_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("-a", "--archive", action="store_true", help="keep uid/gid from the source")
    p.add_argument("-L", "--follow-link", action="store_true", help="follow a symlink in SRC")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress output")
    p.add_argument("source", metavar="SRC_PATH|-")
    p.add_argument("destination", metavar="DEST_PATH|-")


def cp(args: argparse.Namespace) -> int:
    """`hull cp CONTAINER:SRC DEST` and `hull cp SRC CONTAINER:DEST`; '-' is a tar stream."""
    from hull.engine import operations

    src = operations.parse_cp_arg(args.source) if args.source != "-" else None
    dst = operations.parse_cp_arg(args.destination) if args.destination != "-" else None
    from_ctr = src is not None and src.container is not None
    to_ctr = dst is not None and dst.container is not None
    if from_ctr and to_ctr:
        raise ConfigError("copying between containers is not supported")
    if not from_ctr and not to_ctr:
        raise ConfigError("must specify at least one container source (CONTAINER:PATH)")
    with _service(args) as service:
        if from_ctr:
            assert src is not None and src.container is not None
            target = sys.stdout.buffer if dst is None else dst.path
            copied = operations.copy_from_container(
                service, src.container, src.path, target, args.follow_link, args.archive
            )
            where = dst.path if dst is not None else None
        else:
            assert dst is not None and dst.container is not None
            source = sys.stdin.buffer if src is None else src.path
            copied = operations.copy_to_container(
                service, dst.container, source, dst.path, args.follow_link, args.archive
            )
            where = args.destination if src is not None else None
    if where is not None and not args.quiet:
        sys.stderr.write(f"Successfully copied {output.human_size(copied)} to {where}\n")
    return 0


# ------------------------------------------------------------------ port


def port_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("container")
    p.add_argument("private_port", nargs="?", metavar="PRIVATE_PORT[/PROTO]")


def port(args: argparse.Namespace) -> int:
    """Docker's lines: `80/tcp -> 0.0.0.0:8080`, or the addresses of one private port."""
    from hull.engine import operations

    with _service(args, sweep=False) as service:
        record = service.get(args.container)
        published = operations.port_mappings(service, record.id)
    if args.private_port:
        key = operations.normalize_port_key(args.private_port)
        if key not in published:
            sys.stderr.write(f"hull: no public port '{key}' published for {record.name}\n")
            return 1  # Docker's exit code for this one, not the engine's 125
        for address in published[key]:
            print(address)
        return 0
    for key, addresses in published.items():
        for address in addresses:
            print(f"{key} -> {address}")
    return 0


# ------------------------------------------------------------------ rename, update


def rename_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("container")
    p.add_argument("new_name", metavar="NEW_NAME")


def rename(args: argparse.Namespace) -> int:
    from hull.engine import operations

    with _service(args, sweep=False) as service:
        operations.rename(service, args.container, args.new_name)
    return 0


def update_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("-m", "--memory", help="memory limit (e.g. 64m)")
    p.add_argument("--memory-swap", help="memory plus swap limit; -1 for unlimited swap")
    p.add_argument("--cpus", help="number of CPUs (e.g. 1.5)")
    p.add_argument("-c", "--cpu-shares", help="CPU shares (relative weight)")
    p.add_argument("--cpuset-cpus", help="CPUs to run on (0-3, 0,1)")
    p.add_argument("--pids-limit", help="process limit (-1 for unlimited)")
    p.add_argument("--restart", help="restart policy")
    p.add_argument("containers", nargs="+", metavar="CONTAINER")


def update(args: argparse.Namespace) -> int:
    from hull.engine import operations
    from hull.engine.runconfig import (
        parse_cpus,
        parse_cpuset,
        parse_int,
        parse_memory,
        parse_memory_swap,
        parse_restart,
    )

    change = operations.ResourceUpdate(
        memory=parse_memory(args.memory) if args.memory else None,
        memory_swap=parse_memory_swap(args.memory_swap) if args.memory_swap else None,
        cpus=parse_cpus(args.cpus) if args.cpus else None,
        cpu_shares=parse_int(args.cpu_shares, "--cpu-shares") if args.cpu_shares else None,
        cpuset_cpus=parse_cpuset(args.cpuset_cpus) if args.cpuset_cpus else None,
        pids_limit=parse_int(args.pids_limit, "--pids-limit") if args.pids_limit else None,
        restart=parse_restart(args.restart) if args.restart else None,
    )
    if change.is_empty():
        raise ConfigError("you must provide one or more flags when using this command")
    failed = False
    with _service(args) as service:
        for ref in args.containers:
            try:
                operations.update(service, ref, change)
                print(ref)
            except HullError as err:
                sys.stderr.write(f"hull: {err.message}\n")
                failed = True
    return 1 if failed else 0


# ------------------------------------------------------------------ attach


def attach_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--no-stdin", action="store_true", help="do not attach stdin")
    p.add_argument(
        "--sig-proxy",
        type=_bool_flag,
        nargs="?",
        const=True,
        default=True,
        help="forward signals to the container (default true)",
    )
    p.add_argument("--detach-keys", help="accepted for compatibility; not supported yet")
    p.add_argument("container")


def attach(args: argparse.Namespace) -> int:
    """Stream a running container's output (and our stdin) until it exits; its exit code."""
    from hull.cli.containers import forward_signals, pump
    from hull.engine.shim import attach as shim_attach

    with _service(args) as service:
        record = service.get(args.container)
        if record.state == "paused":
            raise HullError("you cannot attach to a paused container, unpause it first")
        if record.state != "running":
            raise HullError("you cannot attach to a stopped container, start it first")
        interactive = record.run.interactive and not args.no_stdin
        client = shim_attach(
            str(service.layout(record).shim_dir), stdin=interactive, tty=record.run.tty
        )
        if args.sig_proxy:
            forward_signals(service, record.id, record.run.tty)
        pump(client, interactive=interactive, tty=record.run.tty)
        return service.wait(record.id)


# ------------------------------------------------------------------ diff, commit


def diff_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("container")


def diff(args: argparse.Namespace) -> int:
    from hull.engine import operations

    with _service(args, sweep=False) as service:
        for change in operations.diff(service, args.container):
            print(change)
    return 0


def commit_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("-a", "--author", default="", help='author (e.g. "Jane <jane@example.com>")')
    p.add_argument("-m", "--message", default="", help="commit message")
    p.add_argument("-c", "--change", action="append", default=[], help="a Dockerfile instruction")
    p.add_argument(
        "-p",
        "--pause",
        type=_bool_flag,
        nargs="?",
        const=True,
        default=True,
        help="pause the container during the commit (default true)",
    )
    p.add_argument("container")
    p.add_argument("repository", nargs="?", metavar="REPOSITORY[:TAG]")


def commit(args: argparse.Namespace) -> int:
    from hull.engine import operations

    options = operations.CommitOptions(
        repository=args.repository,
        message=args.message,
        author=args.author,
        changes=list(args.change),
        pause=args.pause,
    )
    with _service(args) as service:
        image = operations.commit(service, args.container, options)
    print(image.id)
    return 0
