"""`run ID --bundle B`: create and start; in the foreground, return the exit code."""

from __future__ import annotations

from hull.runtime import posixos as os
from hull.runtime.cli import Flags, require_id
from hull.runtime.commands.create import FLAGS as CREATE_FLAGS

USAGE = "ID [--bundle DIR] [--detach] [--pid-file F] [--console-socket S] [--no-pivot] [--keep]"
FLAGS: Flags = {
    **CREATE_FLAGS,
    "--detach": ("detach", False, False),
    "-d": ("detach", False, False),
    "--keep": ("keep", False, False),
}


def main(ctx, verb: str, opts: dict, args: list[str]) -> int:
    from hull.runtime.container import run

    return run(
        ctx.store(),
        require_id(args, verb),
        opts.get("bundle") or os.getcwd(),
        detach=bool(opts.get("detach")),
        pid_file=opts.get("pid_file"),
        console_socket=opts.get("console_socket"),
        no_pivot=bool(opts.get("no_pivot")),
        preserve_fds=int(opts.get("preserve_fds") or 0),
        keep=bool(opts.get("keep")),
        stage1_worker=ctx.stage1_worker,
    )
