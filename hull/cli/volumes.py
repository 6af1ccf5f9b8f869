"""Volume verbs: create, ls, inspect, rm, prune."""

from __future__ import annotations

import argparse
import json
import sys

from hull.cli import output
from hull.errors import HullError


def _service(args: argparse.Namespace):
    from hull.engine.volumes import VolumeService

    return VolumeService(args.paths)


def create_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("-l", "--label", action="append", default=[], help="key=value")
    p.add_argument("-d", "--driver", default="local")
    p.add_argument("name", nargs="?")


def create(args: argparse.Namespace) -> int:
    if args.driver != "local":
        raise HullError(f"volume driver {args.driver!r} is not supported (only local)")
    labels = dict(item.partition("=")[::2] for item in args.label)
    doc = _service(args).create(args.name, labels=labels)
    print(doc["Name"])
    return 0


def ls_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("-q", "--quiet", action="store_true")
    p.add_argument("--format")


def ls(args: argparse.Namespace) -> int:
    docs = _service(args).list_volumes()
    if args.quiet:
        for doc in docs:
            print(doc["Name"])
    elif args.format == "json":
        for doc in docs:
            print(json.dumps(doc))
    else:
        output.print_table(["DRIVER", "VOLUME NAME"], [[d["Driver"], d["Name"]] for d in docs])
    return 0


def inspect_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("-f", "--format")
    p.add_argument("names", nargs="+")


def inspect(args: argparse.Namespace) -> int:
    service = _service(args)
    docs = []
    failed = False
    for name in args.names:
        try:
            docs.append(service.inspect(name))
        except HullError as err:
            sys.stderr.write(f"hull: {err.message}\n")
            failed = True
    if args.format:
        for doc in docs:
            print(output.render_template(args.format, doc))
    else:
        print(json.dumps(docs, indent=4))
    return 1 if failed else 0


def rm_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("-f", "--force", action="store_true")
    p.add_argument("names", nargs="+")


def rm(args: argparse.Namespace) -> int:
    service = _service(args)
    failed = False
    for name in args.names:
        try:
            service.remove(name, force=args.force)
            print(name)
        except HullError as err:
            sys.stderr.write(f"hull: {err.message}\n")
            failed = True
    return 1 if failed else 0


def prune_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("-f", "--force", action="store_true")
    p.add_argument(
        "-a", "--all", action="store_true", help="all unused volumes, not only anonymous"
    )


def prune(args: argparse.Namespace) -> int:
    removed = _service(args).prune(all=args.all)
    print("Deleted Volumes:")
    for name in removed:
        print(name)
    return 0
