"""Image verbs: pull, push, images, inspect, tag, rmi, prune, load, save, login, logout,
history, bootstrap. Thin: parse flags, call ImageService, print what Docker prints."""

from __future__ import annotations

import argparse
import contextlib
import getpass
import shutil
import sys
import tempfile
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from hull.cli import output
from hull.errors import ConfigError, HullError, NotFoundError

if TYPE_CHECKING:
    from hull.engine.images import ImageRecord, ImageService


@contextlib.contextmanager
def _service(args: argparse.Namespace) -> Iterator[ImageService]:
    from hull.engine.images import ImageService

    with ImageService(args.paths) as service:
        yield service


def _err(message: str) -> None:
    sys.stderr.write(f"hull: {message}\n")


# ----------------------------------------------------------------- pull / push


def _tls_flag(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--tls-verify",
        type=_boolean,
        default=True,
        metavar="BOOL",
        help="verify the registry's TLS certificate (default true; --tls-verify=false for "
        "self-signed registries)",
    )


def _boolean(text: str) -> bool:
    if text.lower() in ("true", "1", "yes"):
        return True
    if text.lower() in ("false", "0", "no"):
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, got {text!r}")


def pull_args(p: argparse.ArgumentParser) -> None:
    _tls_flag(p)
    p.add_argument("--platform", help="pull for this platform (os/arch[/variant])")
    p.add_argument("-q", "--quiet", action="store_true", help="print only the image name")
    p.add_argument("name", metavar="NAME[:TAG|@DIGEST]")


def pull(args: argparse.Namespace) -> int:
    from hull.oci.image import parse_platform
    from hull.oci.reference import parse_reference

    ref = parse_reference(args.name)
    if (
        not args.quiet
        and parse_reference(args.name, default_tag=False).tag is None
        and not ref.digest
    ):
        print(f"Using default tag: {ref.tag}")
    platform = parse_platform(args.platform) if args.platform else None
    with _service(args) as service:
        try:
            before: str | None = service.resolve(str(ref)).id
        except NotFoundError:
            before = None
        image = service.pull(
            args.name,
            platform=platform,
            progress=None if args.quiet else "auto",
            tls_verify=args.tls_verify,
        )
    if not args.quiet:
        print(f"Digest: {image.index_digest or image.manifest_digest}")
        if before == image.id:
            print(f"Status: Image is up to date for {ref.familiar()}")
        else:
            print(f"Status: Downloaded newer image for {ref.familiar()}")
    print(str(ref))
    return 0


def push_args(p: argparse.ArgumentParser) -> None:
    _tls_flag(p)
    p.add_argument("-q", "--quiet", action="store_true", help="suppress progress output")
    p.add_argument("name", metavar="NAME[:TAG]")


def push(args: argparse.Namespace) -> int:
    with _service(args) as service:
        digest = service.push(
            args.name, progress=None if args.quiet else "auto", tls_verify=args.tls_verify
        )
    print(f"{args.name}: digest: {digest}")
    return 0


# ----------------------------------------------------------------------- images


def images_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("-a", "--all", action="store_true", help="show all images")
    p.add_argument("-q", "--quiet", action="store_true", help="only show image IDs")
    p.add_argument("--digests", action="store_true", help="show digests")
    p.add_argument("--no-trunc", action="store_true", help="don't truncate output")
    p.add_argument("--format", help="table (default), json, or a Go-style template")
    p.add_argument("repository", nargs="?", metavar="REPOSITORY[:TAG]")


def image_rows(
    images: list[ImageRecord], no_trunc: bool = False, now: float | None = None
) -> list[dict[str, Any]]:
    """One row per tag (or one `<none>` row), with Docker's `--format json` fields."""
    rows: list[dict[str, Any]] = []
    for image in images:
        created = output.parse_timestamp(image.created) or 0.0
        digest = image.digests[0].digest if image.digests else None
        base = {
            "Containers": "N/A",
            "CreatedAt": datetime.fromtimestamp(created, UTC).strftime(
                "%Y-%m-%d %H:%M:%S +0000 UTC"
            ),
            "CreatedSince": output.since(created, now),
            "Digest": digest or "<none>",
            "ID": image.id if no_trunc else image.short_id,
            "SharedSize": "N/A",
            "Size": output.human_size(image.size),
            "UniqueSize": "N/A",
            "VirtualSize": output.human_size(image.size),
        }
        names = [(r.familiar_name(), r.tag or "<none>", r.name) for r in image.tags]
        if not names and image.digests:
            names = [(image.digests[0].familiar_name(), "<none>", image.digests[0].name)]
        for repo, tag, full in names or [("<none>", "<none>", "")]:
            rows.append({**base, "Repository": repo, "Tag": tag, "_full": full})
    return rows


def _matches(row: dict[str, Any], wanted: str) -> bool:
    repo, _, tag = wanted.rpartition(":") if ":" in wanted.rpartition("/")[2] else (wanted, "", "")
    if repo not in (row["Repository"], row["_full"]):
        return False
    return not tag or tag == row["Tag"]


def images(args: argparse.Namespace) -> int:
    with _service(args) as service:
        records = service.list_images(all=args.all)
    rows = image_rows(records, no_trunc=args.no_trunc)
    if args.repository:
        rows = [r for r in rows if _matches(r, args.repository)]
    if args.quiet:
        seen: list[str] = []
        for row in rows:
            if row["ID"] not in seen:
                seen.append(row["ID"])
                print(row["ID"])
        return 0
    for row in rows:
        row.pop("_full")
    headers = ["REPOSITORY", "TAG", "IMAGE ID", "CREATED", "SIZE"]
    columns = ["Repository", "Tag", "ID", "CreatedSince", "Size"]
    if args.digests:
        headers.insert(2, "DIGEST")
        columns.insert(2, "Digest")
    output.print_formatted(args.format, rows, headers, columns)
    return 0


# ---------------------------------------------------------------------- inspect


def image_inspect_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("-f", "--format", help="format the output with a Go-style template")
    p.add_argument("names", nargs="+", metavar="IMAGE")


def image_inspect(args: argparse.Namespace) -> int:
    docs: list[dict[str, Any]] = []
    missing: list[str] = []
    with _service(args) as service:
        for name in args.names:
            try:
                docs.append(service.inspect(name))
            except NotFoundError:
                missing.append(name)
    if args.format:
        for doc in docs:
            print(output.render_template(args.format, doc))
    else:
        output.print_json(docs)
    for name in missing:
        _err(f"no such image: {name}")
    return 1 if missing else 0


def inspect_args(p: argparse.ArgumentParser) -> None:
    image_inspect_args(p)
    p.add_argument("--type", choices=["image"], help="only this kind of object")


def inspect(args: argparse.Namespace) -> int:
    """`hull inspect`: images for now; containers, networks and volumes join later."""
    return image_inspect(args)


# ----------------------------------------------------------------------- tag/rmi


def tag_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("source", metavar="SOURCE_IMAGE[:TAG]")
    p.add_argument("target", metavar="TARGET_IMAGE[:TAG]")


def tag(args: argparse.Namespace) -> int:
    with _service(args) as service:
        service.tag(args.source, args.target)
    return 0


def rmi_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("-f", "--force", action="store_true", help="force removal of the image")
    p.add_argument("--no-prune", action="store_true", help="accepted for Docker compatibility")
    p.add_argument("names", nargs="+", metavar="IMAGE")


def rmi(args: argparse.Namespace) -> int:
    failed = False
    with _service(args) as service:
        for name in args.names:
            try:
                events = service.remove(name, force=args.force)
            except HullError as e:
                _err(e.message)
                failed = True
                continue
            for event in events:
                for kind, value in event.items():
                    print(f"{kind}: {value}")
    return 1 if failed else 0


def image_prune_args(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "-a", "--all", action="store_true", help="remove all unused images, not just dangling ones"
    )
    p.add_argument("-f", "--force", action="store_true", help="do not prompt for confirmation")


def image_prune(args: argparse.Namespace) -> int:
    if not args.force:
        what = (
            "all images without at least one container associated to them"
            if args.all
            else "all dangling images"
        )
        sys.stdout.write(
            f"WARNING! This will remove {what}.\nAre you sure you want to continue? [y/N] "
        )
        sys.stdout.flush()
        if sys.stdin.readline().strip().lower() not in ("y", "yes"):
            return 0
    with _service(args) as service:
        report = service.prune(all=args.all)
    events = report["ImagesDeleted"] or []
    if events:
        print("Deleted Images:")
        for event in events:
            for kind, value in event.items():
                print(f"{kind.lower()}: {value}")
        print()
    print(f"Total reclaimed space: {output.human_size(report['SpaceReclaimed'])}")
    return 0


# -------------------------------------------------------------------- load/save


def load_args(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "-i", "--input", help="read from a tar archive or OCI layout directory, not stdin"
    )
    p.add_argument("-q", "--quiet", action="store_true", help="suppress the load output")
    p.add_argument("--platform", help="the platform to load from a multi-platform archive")


def load(args: argparse.Namespace) -> int:
    from hull.oci.image import parse_platform

    platform = parse_platform(args.platform) if args.platform else None
    with _service(args) as service, _input_path(args.input, Path(service.paths.root)) as path:
        loaded = service.load(path, platform=platform)
    if not args.quiet:
        for image, tags in loaded:
            for ref in tags:
                print(f"Loaded image: {ref.familiar()}")
            if not tags:
                print(f"Loaded image ID: {image.id}")
    return 0


@contextlib.contextmanager
def _input_path(given: str | None, root: Path) -> Iterator[Path]:
    """The -i path, or stdin copied to a scratch file (tar reading needs to seek)."""
    if given:
        yield Path(given)
        return
    if sys.stdin.isatty():
        raise ConfigError(
            "requested load from stdin, but stdin is empty or a terminal; use -i FILE"
        )
    scratch = root / "tmp"
    scratch.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile(dir=scratch, prefix="load-", suffix=".tar") as tmp:
        shutil.copyfileobj(sys.stdin.buffer, tmp, 1 << 20)
        tmp.flush()
        yield Path(tmp.name)


def save_args(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "-o", "--output", help="write to this file (or directory for oci-dir), not stdout"
    )
    p.add_argument(
        "--format",
        default="docker",
        choices=["docker", "docker-archive", "oci", "oci-archive", "oci-dir"],
        help="docker (default: docker-archive plus OCI index), oci (a tar, or into an existing "
        "dir), oci-dir",
    )
    p.add_argument("names", nargs="+", metavar="IMAGE")


def save(args: argparse.Namespace) -> int:
    if not args.output and sys.stdout.isatty():
        raise ConfigError("cowardly refusing to save to a terminal: use -o or redirect stdout")
    with _service(args) as service:
        if args.output:
            service.save(args.names, Path(args.output), args.format)
        else:
            sys.stdout.flush()
            service.save(args.names, None, args.format, stream=sys.stdout.buffer)
            sys.stdout.buffer.flush()
    return 0


# ---------------------------------------------------------------------- history


def history_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("-H", "--human", action=argparse.BooleanOptionalAction, default=True)
    p.add_argument("--no-trunc", action="store_true", help="don't truncate output")
    p.add_argument("-q", "--quiet", action="store_true", help="only show image IDs")
    p.add_argument("--format", help="table (default), json, or a Go-style template")
    p.add_argument("name", metavar="IMAGE")


def _ellipsis(text: str, width: int) -> str:
    return text if len(text) <= width else text[: width - 1] + "…"


def history(args: argparse.Namespace) -> int:
    with _service(args) as service:
        entries = service.history(args.name)
    now = time.time()
    rows = []
    for e in entries:
        image_id = e["Id"]
        if image_id != "<missing>" and not args.no_trunc:
            image_id = image_id.removeprefix("sha256:")[:12]
        created_by = " ".join(e["CreatedBy"].split()) if not args.no_trunc else e["CreatedBy"]
        rows.append(
            {
                "ID": image_id,
                "CreatedSince": output.since(e["Created"], now)
                if args.human
                else str(e["Created"]),
                "CreatedBy": created_by if args.no_trunc else _ellipsis(created_by, 45),
                "Size": output.human_size(e["Size"]) if args.human else str(e["Size"]),
                "Comment": e["Comment"],
            }
        )
    if args.quiet:
        for row in rows:
            print(row["ID"])
        return 0
    output.print_formatted(
        args.format,
        rows,
        ["IMAGE", "CREATED", "CREATED BY", "SIZE", "COMMENT"],
        ["ID", "CreatedSince", "CreatedBy", "Size", "Comment"],
    )
    return 0


# ---------------------------------------------------------------- login/logout


def login_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("-u", "--username", help="username")
    p.add_argument("-p", "--password", help="password (prefer --password-stdin)")
    p.add_argument("--password-stdin", action="store_true", help="take the password from stdin")
    _tls_flag(p)
    p.add_argument("server", nargs="?", default="docker.io", metavar="SERVER")


def login(args: argparse.Namespace) -> int:
    from hull.image.registry import (
        RegistryClient,
        erase_credentials,
        load_credentials,
        store_credentials,
    )

    if args.password and args.password_stdin:
        raise ConfigError("--password and --password-stdin are mutually exclusive")
    password = args.password
    if args.password_stdin:
        if not args.username:
            raise ConfigError("must provide --username with --password-stdin")
        password = sys.stdin.readline().rstrip("\r\n")
    elif args.password:
        _err("WARNING! Using --password via the CLI is insecure. Use --password-stdin.")
    username = args.username
    if not username:
        username = input("Username: ").strip()
    if not password:
        password = getpass.getpass("Password: ")
    if not username or not password:
        raise ConfigError("username and password are both required")
    previous = load_credentials(args.server)
    store_credentials(args.server, username, password)
    try:
        with RegistryClient.from_environment(tls_verify=args.tls_verify) as client:
            client.login(args.server)
    except BaseException:
        if previous is not None:
            store_credentials(args.server, previous.username, previous.password)
        else:
            erase_credentials(args.server)
        raise
    print("Login Succeeded")
    return 0


def logout_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("server", nargs="?", default="docker.io", metavar="SERVER")


def logout(args: argparse.Namespace) -> int:
    from hull.image.registry import erase_credentials

    if erase_credentials(args.server):
        print(f"Removing login credentials for {args.server}")
    else:
        print(f"Not logged in to {args.server}")
    return 0


# -------------------------------------------------------------------- bootstrap


def image_bootstrap_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("kind", metavar="busybox|debian:SUITE")
    p.add_argument(
        "-t", "--tag", help="tag the image with this name (default busybox:latest or debian:SUITE)"
    )
    p.add_argument("-q", "--quiet", action="store_true", help="print only the image ID")


def image_bootstrap(args: argparse.Namespace) -> int:
    with _service(args) as service:
        image = service.bootstrap(args.kind, args.tag)
    if args.quiet:
        print(image.id)
    else:
        names = ", ".join(ref.familiar() for ref in image.tags) or "<none>"
        print(f"Bootstrapped {names} ({output.human_size(image.size)})")
        print(image.id)
    return 0
