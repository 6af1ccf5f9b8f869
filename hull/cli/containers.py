"""Container verbs: run, create, start, stop, restart, kill, rm, ps, logs, wait,
inspect, pause, unpause, container prune/cleanup. Thin: flags -> ContainerService."""

from __future__ import annotations

import os
import sys
import time

from hull.errors import ConfigError, HullError, NotFoundError

TYPE_CHECKING = False
if TYPE_CHECKING:
    import argparse
    from typing import Any

    from hull.engine.containers import ContainerRecord, ContainerService


def _output():
    from hull.cli import output

    return output


def _service(args: argparse.Namespace, sweep: bool = True) -> ContainerService:
    from hull.engine.containers import ContainerService

    service = ContainerService(args.paths)
    if sweep:
        service.reconcile()
    return service


def _each(args: argparse.Namespace, refs: list[str], action) -> int:
    """Docker's multi-container verbs: report each failure, exit 1 if any failed."""
    failed = False
    with _service(args) as service:
        for ref in refs:
            try:
                print(action(service, ref))
            except HullError as err:
                sys.stderr.write(f"hull: {err.message}\n")
                failed = True
    return 1 if failed else 0


# ------------------------------------------------------------------ run / create


def run_args(p: argparse.ArgumentParser) -> None:
    from hull.cli.run_flags import add_run_flags

    add_run_flags(p)


def create_args(p: argparse.ArgumentParser) -> None:
    run_args(p)


def run_quick_parse(argv: list[str]) -> argparse.Namespace | None:
    """`hull run`'s flags without argparse (None: let argparse parse)."""
    from hull.cli.run_flags import quick_parse

    return quick_parse(argv)  # type: ignore[return-value]


create_quick_parse = run_quick_parse


def create(args: argparse.Namespace) -> int:
    from hull.cli.run_flags import run_config_from_args

    config = run_config_from_args(args)
    with _service(args) as service:
        record = service.create(config)
    print(record.id)
    return 0


def run(args: argparse.Namespace) -> int:
    worker = _early_stage1(args)
    try:
        return _run(args, worker)
    finally:
        if worker is not None:
            worker.discard()  # unused (an error, another path): it exits; a no-op once taken


def _early_stage1(args: argparse.Namespace):
    """A foreground `run --rm` without a tty runs the runtime in this process
    (run_foreground): fork the container's stage 1 now, before the engine's own
    imports, state and mounts, so that it loads the runtime meanwhile instead of
    after them (hull.runtime.prefork). Every other run goes through a shim."""
    if not args.rm or args.detach or args.tty or args.isolation != "container":
        return None
    from hull.runtime.linux.seccomp_cache import CACHE_DIR_NAME
    from hull.runtime.prefork import AHEAD_DEFAULT, CLONE_NEWNET, prefork, stdin_from_devnull

    if not args.interactive:
        stdin_from_devnull()  # what run_foreground does, done before the fork

    # The engine's default profile, most likely: the worker loads libseccomp
    # meanwhile, unless compiled filters are cached already (the usual case).
    cached = os.path.isdir(os.path.join(args.paths.runtime_state, CACHE_DIR_NAME))
    # A network namespace of its own only with --network none: a bridge network's
    # is made by the engine and joined by path, host's and container:X are not new.
    ahead = AHEAD_DEFAULT if args.network == "none" else AHEAD_DEFAULT & ~CLONE_NEWNET
    try:
        return prefork(seccomp=not cached, ahead=ahead)
    except OSError:
        return None  # only an optimization: the runtime forks stage 1 itself


def _run(args: argparse.Namespace, stage1_worker=None) -> int:
    from hull.cli.run_flags import run_config_from_args

    config = run_config_from_args(args)
    # Not closed: the process exits next, and closing the last connection
    # checkpoints the WAL with an fsync (1-30 ms of every `hull run`); the next
    # writer's autocheckpoint folds it in instead.
    service = _service(args)
    record = service.create(config)
    if config.isolation == "vm" and not config.detach:
        from hull.gc_pause import resume

        resume()  # a VM's start is no race, and its run may be long
        if config.mounts or config.tty or config.interactive:  # the supervised VM's
            return _run_attached(service, record, config)
        return service.run_vm(record.id)
    if config.detach:
        try:
            service.start(record.id)
        except HullError:
            if config.rm:
                service.remove(record.id, force=True, volumes=True)
            raise
        print(record.id)
        return 0
    if config.rm and not config.tty:
        # Nothing outlives a foreground --rm run: no shim, the runtime in-process.
        return service.run_foreground(
            record.id, interactive=config.interactive, stage1_worker=stage1_worker
        )
    return _run_attached(service, record, config)


def _run_attached(service: ContainerService, record: ContainerRecord, config) -> int:
    """Foreground run: attach before start, stream, forward signals, return the exit code."""
    from hull.engine.shim import attach
    from hull.gc_pause import resume

    resume()  # the attached stream may last: collect as usual

    holder: dict[str, Any] = {}

    def before_start(rec: ContainerRecord, shim_dir: object) -> None:
        holder["client"] = attach(str(shim_dir), stdin=config.interactive, tty=config.tty)

    # With --rm in the foreground this process removes the container itself.
    service._foreground_rm = config.rm
    try:
        service.start(record.id, before_start=before_start)
    except HullError:
        if config.rm:
            service.remove(record.id, force=True, volumes=True)
        raise
    client = holder["client"]
    forward_signals(service, record.id, config.tty)
    pump(client, interactive=config.interactive, tty=config.tty)
    return service.wait(record.id)


def forward_signals(service: ContainerService, cid: str, tty: bool) -> None:
    """--sig-proxy: signals to `hull run`/`attach` go to the container (SIGINT only
    without a tty, where it is a keystroke for the container instead)."""
    import signal

    def forward(signum: int, _frame: object) -> None:
        try:
            service.kill(cid, signum)
        except HullError:
            pass

    for signum in (signal.SIGTERM, signal.SIGHUP, signal.SIGQUIT, signal.SIGUSR1, signal.SIGUSR2):
        signal.signal(signum, forward)
    if not tty:
        signal.signal(signal.SIGINT, forward)


def pump(client, interactive: bool, tty: bool) -> None:
    """Copy the shim's frames to our stdout/stderr and our stdin to it, until EOF."""
    from contextlib import nullcontext

    from hull.engine.relay import raw_terminal, relay

    stdin_fd = sys.stdin.fileno() if interactive else -1
    terminal = tty and stdin_fd >= 0 and os.isatty(stdin_fd)
    out = {1: sys.stdout.buffer, 2: sys.stderr.buffer}

    def write(frame: tuple[int, bytes]) -> None:
        stream, payload = frame
        target = out.get(stream, out[1])
        target.write(payload)
        target.flush()

    with raw_terminal(client, stdin_fd, send_size_now=True) if terminal else nullcontext():
        try:
            relay(client, stdin_fd, write)
        finally:
            client.close()


# ------------------------------------------------------------------ lifecycle


def start_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("-a", "--attach", action="store_true", help="attach stdout/stderr")
    p.add_argument("-i", "--interactive", action="store_true", help="attach stdin")
    p.add_argument("containers", nargs="+", metavar="CONTAINER")


def start(args: argparse.Namespace) -> int:
    if args.attach and len(args.containers) == 1:
        with _service(args) as service:
            record = service.get(args.containers[0])
            from hull.engine.shim import attach

            holder: dict[str, Any] = {}

            def before_start(rec: object, shim_dir: object) -> None:
                holder["client"] = attach(str(shim_dir), stdin=args.interactive, tty=record.run.tty)

            service.start(record.id, before_start=before_start)
            pump(holder["client"], interactive=args.interactive, tty=record.run.tty)
            return service.wait(record.id)
    return _each(args, args.containers, lambda s, ref: (s.start(ref), ref)[1])


def stop_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("-t", "--time", "--timeout", type=int, dest="time", default=None)
    p.add_argument("containers", nargs="+", metavar="CONTAINER")


def stop(args: argparse.Namespace) -> int:
    return _each(args, args.containers, lambda s, ref: (s.stop(ref, args.time), ref)[1])


def restart_args(p: argparse.ArgumentParser) -> None:
    stop_args(p)


def restart(args: argparse.Namespace) -> int:
    def action(service: ContainerService, ref: str) -> str:
        service.stop(ref, args.time)
        service.start(ref)
        return ref

    return _each(args, args.containers, action)


def kill_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("-s", "--signal", default="KILL")
    p.add_argument("containers", nargs="+", metavar="CONTAINER")


def kill(args: argparse.Namespace) -> int:
    from hull.runtime.commands.kill import parse_signal

    signum = parse_signal(args.signal)
    return _each(args, args.containers, lambda s, ref: (s.kill(ref, signum), ref)[1])


def rm_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("-f", "--force", action="store_true", help="kill a running container first")
    p.add_argument("-v", "--volumes", action="store_true", help="remove anonymous volumes")
    p.add_argument("containers", nargs="+", metavar="CONTAINER")


def rm(args: argparse.Namespace) -> int:
    return _each(
        args,
        args.containers,
        lambda s, ref: (s.remove(ref, force=args.force, volumes=args.volumes), ref)[1],
    )


def pause_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("containers", nargs="+", metavar="CONTAINER")


def pause(args: argparse.Namespace) -> int:
    return _each(args, args.containers, lambda s, ref: (s.pause(ref), ref)[1])


def unpause_args(p: argparse.ArgumentParser) -> None:
    pause_args(p)


def unpause(args: argparse.Namespace) -> int:
    return _each(args, args.containers, lambda s, ref: (s.unpause(ref), ref)[1])


def wait_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("containers", nargs="+", metavar="CONTAINER")


def wait(args: argparse.Namespace) -> int:
    return _each(args, args.containers, lambda s, ref: s.wait(ref))


def cleanup_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("container")


def cleanup(args: argparse.Namespace) -> int:
    """The shim's exit command: record the exit, unmount, --rm, restart policy."""
    from hull.engine.containers import ContainerService

    with ContainerService(args.paths) as service:
        service.cleanup(args.container)
    return 0


def prune_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("-f", "--force", action="store_true", help="do not prompt")


def prune(args: argparse.Namespace) -> int:
    removed = []
    with _service(args) as service:
        for record in service.list_containers(all=True):
            if record.state in ("exited", "created", "dead"):
                service.remove(record.id, volumes=True)
                removed.append(record.id)
    print("Deleted Containers:")
    for cid in removed:
        print(cid)
    print(f"\nTotal reclaimed space: {len(removed)} container(s)")
    return 0


# ------------------------------------------------------------------ ps / inspect / logs


def ps_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("-a", "--all", action="store_true", help="show all containers")
    p.add_argument("-q", "--quiet", action="store_true", help="only IDs")
    p.add_argument("-f", "--filter", action="append", default=[], help="key=value")
    p.add_argument("--format", help="table, json or a Go template")
    p.add_argument("--no-trunc", action="store_true")
    p.add_argument("-n", "--last", type=int, default=-1)
    p.add_argument("-l", "--latest", action="store_true")


def ps(args: argparse.Namespace) -> int:
    filters = _parse_filters(args.filter)
    with _service(args) as service:
        show_all = args.all or "status" in filters or args.latest or args.last > 0
        records = [r for r in service.list_containers(all=show_all) if _matches(r, filters)]
    if args.latest:
        records = records[:1]
    elif args.last > 0:
        records = records[: args.last]
    if args.quiet:
        for r in records:
            print(r.id if args.no_trunc else r.short_id)
        return 0
    rows = [ps_row(r, args.no_trunc) for r in records]
    if args.format == "json":
        import json

        for row in rows:
            print(json.dumps(row))
        return 0
    if args.format and args.format != "table":
        for row in rows:
            print(_output().render_template(args.format, row))
        return 0
    columns = ["ID", "Image", "Command", "CreatedAt", "Status", "Ports", "Names"]
    headers = ["CONTAINER ID", "IMAGE", "COMMAND", "CREATED", "STATUS", "PORTS", "NAMES"]
    table = [[row[c] if c != "CreatedAt" else row["RunningFor"] for c in columns] for row in rows]
    _output().print_table(headers, table)
    return 0


def _parse_filters(items: list[str]) -> dict[str, list[str]]:
    filters: dict[str, list[str]] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or key not in ("status", "name", "id", "label", "ancestor", "exited"):
            raise ConfigError(f"invalid filter {item!r}")
        filters.setdefault(key, []).append(value)
    return filters


def _matches(record: ContainerRecord, filters: dict[str, list[str]]) -> bool:
    checks = {
        "status": lambda v: record.state == v,
        "name": lambda v: v in record.name,
        "id": lambda v: record.id.startswith(v),
        "ancestor": lambda v: v in (record.image_name, record.image_id),
        "exited": lambda v: record.exit_code is not None and str(record.exit_code) == v,
        "label": lambda v: _label_matches(record.run.labels, v),
    }
    return all(any(checks[k](v) for v in values) for k, values in filters.items())


def _label_matches(labels: dict[str, str], want: str) -> bool:
    key, sep, value = want.partition("=")
    return key in labels and (not sep or labels[key] == value)


def status_text(record: ContainerRecord, now: float | None = None) -> str:
    now = now or time.time()
    if record.state == "running":
        return f"Up {_output().human_duration(now - (record.started_at or now))}"
    if record.state == "paused":
        return f"Up {_output().human_duration(now - (record.started_at or now))} (Paused)"
    if record.state == "exited":
        ago = _output().human_duration(now - (record.finished_at or now))
        return f"Exited ({record.exit_code}) {ago} ago"
    return record.state.capitalize()


def _command_text(record: ContainerRecord) -> str:
    from hull.engine.containers import command_of

    return " ".join(command_of(record))


def ps_row(record: ContainerRecord, no_trunc: bool = False) -> dict[str, str]:
    command = _command_text(record)
    if not no_trunc and len(command) > 20:
        command = command[:19] + "…"
    return {
        "ID": record.id if no_trunc else record.short_id,
        "Image": record.image_name,
        "Command": f'"{command}"',
        "CreatedAt": time.strftime("%Y-%m-%d %H:%M:%S %z", time.localtime(record.created)),
        "RunningFor": f"{_output().human_duration(time.time() - record.created)} ago",
        "Status": status_text(record),
        "State": record.state,
        "Ports": "",
        "Names": record.name,
        "Labels": ",".join(f"{k}={v}" for k, v in record.run.labels.items()),
    }


def inspect_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("-f", "--format", help="a Go template")
    p.add_argument("--type", choices=("container", "image"), help="only this kind")
    p.add_argument("names", nargs="+", metavar="NAME|ID")


def inspect(args: argparse.Namespace) -> int:
    """Docker's inspect: containers first, then images."""
    docs: list[dict[str, Any]] = []
    failed = False
    with _service(args, sweep=False) as service:
        for name in args.names:
            doc = None
            if args.type in (None, "container"):
                try:
                    doc = service.inspect(name)
                except NotFoundError:
                    doc = None
            if doc is None and args.type in (None, "image"):
                try:
                    doc = service.images.inspect(name)
                except NotFoundError:
                    doc = None
            if doc is None:
                sys.stderr.write(f"hull: no such object: {name}\n")
                failed = True
                continue
            docs.append(doc)
    if args.format:
        for doc in docs:
            print(_output().render_template(args.format, doc))
    else:
        import json

        print(json.dumps(docs, indent=4))
    return 1 if failed else 0


def container_inspect(args: argparse.Namespace) -> int:
    args.type = "container"
    return inspect(args)


def container_inspect_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("-f", "--format", help="a Go template")
    p.add_argument("names", nargs="+", metavar="CONTAINER")


def logs_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("-f", "--follow", action="store_true")
    p.add_argument("-t", "--timestamps", action="store_true")
    p.add_argument("-n", "--tail", default="all")
    p.add_argument("--since")
    p.add_argument("--until")
    p.add_argument("container")


def logs(args: argparse.Namespace) -> int:
    from hull.engine.shim import read_log

    with _service(args) as service:
        record = service.get(args.container)
        layout = service.layout(record)
    tail = None if args.tail in ("all", "-1") else int(args.tail)
    since = _time_arg(args.since)
    until = _time_arg(args.until)
    out = {"stdout": sys.stdout.buffer, "stderr": sys.stderr.buffer}
    try:
        for entry in read_log(
            str(layout.log),
            since=since,
            until=until,
            tail=tail,
            follow=args.follow,
            timestamps=args.timestamps,
            socket_dir=str(layout.shim_dir),
        ):
            stream, line, stamp = entry
            target = out.get(stream, out["stdout"])
            if args.timestamps:
                target.write(f"{stamp} ".encode())
            target.write(line if isinstance(line, bytes) else line.encode())
            target.flush()
    except KeyboardInterrupt:
        return 0
    return 0


def _time_arg(text: str | None) -> float | None:
    """--since/--until: a timestamp, a Unix time, or a duration ago (10m, 1h30m)."""
    if not text:
        return None
    parsed = _output().parse_timestamp(text)
    if parsed is not None:
        return parsed
    try:
        return float(text)
    except ValueError:
        pass
    total, number = 0.0, ""
    units = {"s": 1, "m": 60, "h": 3600}
    for ch in text:
        if ch.isdigit() or ch == ".":
            number += ch
        elif ch in units and number:
            total += float(number) * units[ch]
            number = ""
        else:
            raise ConfigError(f"invalid time {text!r}")
    if number:
        raise ConfigError(f"invalid time {text!r}: add a unit (s, m, h)")
    return time.time() - total
