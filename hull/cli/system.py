"""System verbs: `system df`, `system prune`, `info` (`system info`), `version`."""

from __future__ import annotations

import argparse
import json
import sys
from typing import TYPE_CHECKING, Any

from hull.cli import output

if TYPE_CHECKING:
    from hull.engine.containers import ContainerService
    from hull.engine.operations import PruneReport, UsageRow


def _service(args: argparse.Namespace) -> ContainerService:
    from hull.engine.containers import ContainerService

    service = ContainerService(args.paths)
    service.reconcile()
    return service


def _print_doc(fmt: str | None, doc: dict[str, Any], text: str) -> None:
    """--format json (the whole document), a Go template, or the text form."""
    if fmt == "json":
        print(json.dumps(doc))
    elif fmt:
        print(output.render_template(fmt, doc))
    else:
        sys.stdout.write(text)


# ------------------------------------------------------------------ df

DF_HEADERS = ["TYPE", "TOTAL", "ACTIVE", "SIZE", "RECLAIMABLE"]
DF_COLUMNS = ["Type", "TotalCount", "Active", "Size", "Reclaimable"]


def df_row(row: UsageRow) -> dict[str, str]:
    """One `docker system df` row as Docker prints it: reclaimable with its share."""
    reclaimable = output.human_size(row.reclaimable)
    if row.size > 0:
        reclaimable += f" ({row.reclaimable * 100 // row.size}%)"
    return {
        "Type": row.type,
        "TotalCount": str(row.total),
        "Active": str(row.active),
        "Size": output.human_size(row.size),
        "Reclaimable": reclaimable,
    }


def system_df_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--format", help="table, json or a Go template")
    p.add_argument("-v", "--verbose", action="store_true", help="accepted; same as the summary")


def system_df(args: argparse.Namespace) -> int:
    from hull.engine.operations import disk_usage

    with _service(args) as service:
        rows = [df_row(r) for r in disk_usage(service)]
    output.print_formatted(args.format, rows, DF_HEADERS, DF_COLUMNS)
    return 0


# ------------------------------------------------------------------ prune


def prune_warning(all_images: bool, volumes: bool) -> str:
    items = ["all stopped containers"]
    if volumes:
        items.append("all anonymous volumes not used by at least one container")
    items.append(
        "all images without at least one container associated to them"
        if all_images
        else "all dangling images"
    )
    items.append("unused build cache")
    body = "".join(f"  - {item}\n" for item in items)
    return f"WARNING! This will remove:\n{body}\nAre you sure you want to continue? [y/N] "


def prune_text(report: PruneReport) -> str:
    lines: list[str] = []
    if report.containers:
        lines += ["Deleted Containers:", *report.containers, ""]
    if report.volumes:
        lines += ["Deleted Volumes:", *report.volumes, ""]
    if report.images:
        lines.append("Deleted Images:")
        for event in report.images:
            for key, value in event.items():
                lines.append(f"{key.lower()}: {value}")
        lines.append("")
    lines.append(f"Total reclaimed space: {output.human_size(report.reclaimed)}")
    return "\n".join(lines) + "\n"


def system_prune_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("-a", "--all", action="store_true", help="remove all unused images")
    p.add_argument("-f", "--force", action="store_true", help="do not prompt for confirmation")
    p.add_argument("--volumes", action="store_true", help="prune anonymous volumes")


def system_prune(args: argparse.Namespace) -> int:
    from hull.engine.operations import system_prune as prune

    if not args.force:
        sys.stderr.write(prune_warning(args.all, args.volumes))
        sys.stderr.flush()
        answer = sys.stdin.readline().strip().lower()
        if answer not in ("y", "yes"):
            return 0
    with _service(args) as service:
        report = prune(service, all_images=args.all, volumes=args.volumes)
    sys.stdout.write(prune_text(report))
    return 0


# ------------------------------------------------------------------ info


def info_text(info: dict[str, Any]) -> str:
    """`docker info`'s Server section, Hull's fields in Docker's layout."""
    runtimes = " ".join(info.get("Runtimes") or {})
    layout = info.get("CgroupLayout")
    cgroup_version = str(info.get("CgroupVersion"))
    if layout == "hybrid":
        cgroup_version += " (hybrid)"
    lines = [
        "Server:",
        f" Containers: {info['Containers']}",
        f"  Running: {info['ContainersRunning']}",
        f"  Paused: {info['ContainersPaused']}",
        f"  Stopped: {info['ContainersStopped']}",
        f" Images: {info['Images']}",
        f" Server Version: {info['ServerVersion']}",
        f" Storage Driver: {info['Driver']}",
    ]
    lines += [f"  {key}: {value}" for key, value in info.get("DriverStatus") or []]
    lines += [
        f" Logging Driver: {info['LoggingDriver']}",
        f" Cgroup Driver: {info['CgroupDriver']}",
        f" Cgroup Version: {cgroup_version}",
        f" Runtimes: {runtimes}",
        f" Default Runtime: {info['DefaultRuntime']}",
        " Security Options:",
        "  seccomp",
        "   Profile: builtin",
        f" Kernel Version: {info['KernelVersion']}",
        f" Operating System: {info['OperatingSystem']}",
        f" OSType: {info['OSType']}",
        f" Architecture: {info['Architecture']}",
        f" CPUs: {info['NCPU']}",
        f" Total Memory: {_bytes_size(info['MemTotal'])}",
        f" Name: {info['Name']}",
        f" Hull Root Dir: {info['DockerRootDir']}",
    ]
    return "\n".join(lines) + "\n"


def _bytes_size(size: int) -> str:
    from hull.engine.operations import bytes_size

    return bytes_size(size)


def info_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("-f", "--format", help="json or a Go template")


def info(args: argparse.Namespace) -> int:
    from hull.engine.operations import system_info

    with _service(args) as service:
        doc = system_info(service)
    _print_doc(args.format, doc, info_text(doc))
    return 0


# ------------------------------------------------------------------ version


def version_text(doc: dict[str, Any]) -> str:
    client, server = doc["Client"], doc["Server"]

    def row(indent: str, key: str, value: object) -> str:
        return f"{indent}{key + ':':<18}{value}"

    lines = [
        "Client:",
        row(" ", "Version", client["Version"]),
        row(" ", "API version", client["ApiVersion"]),
        row(" ", "Python version", client["PythonVersion"]),
        row(" ", "OS/Arch", f"{client['Os']}/{client['Arch']}"),
        row(" ", "Context", client["Context"]),
        "",
        "Server:",
        " Engine:",
        row("  ", "Version", server["Version"]),
        row(
            "  ",
            "API version",
            f"{server['ApiVersion']} (minimum version {server['MinAPIVersion']})",
        ),
        row("  ", "Python version", server["PythonVersion"]),
        row("  ", "OS/Arch", f"{server['Os']}/{server['Arch']}"),
        row("  ", "Kernel Version", server["KernelVersion"]),
    ]
    for component in server.get("Components") or []:
        if component["Name"] == "Engine":
            continue
        lines += [f" {component['Name']}:", row("  ", "Version", component["Version"])]
    return "\n".join(lines) + "\n"


def version_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("-f", "--format", help="json or a Go template")


def version(args: argparse.Namespace) -> int:
    from hull.engine.operations import version_info

    doc = version_info()
    _print_doc(args.format, doc, version_text(doc))
    return 0
