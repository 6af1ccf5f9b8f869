"""`create ID --bundle B`: set up a container, its process waiting for start."""

from __future__ import annotations

from hull.runtime import posixos as os
from hull.runtime.cli import Flags, require_id

USAGE = "ID [--bundle DIR] [--pid-file F] [--console-socket S] [--no-pivot] [--preserve-fds N]"
FLAGS: Flags = {
    "--bundle": ("bundle", True, False),
    "-b": ("bundle", True, False),
    "--pid-file": ("pid_file", True, False),
    "--console-socket": ("console_socket", True, False),
    "--no-pivot": ("no_pivot", False, False),
    "--no-new-keyring": ("no_new_keyring", False, False),
    "--preserve-fds": ("preserve_fds", True, False),
    "--help": ("help", False, False),
}


def main(ctx, verb: str, opts: dict, args: list[str]) -> int:
    from hull.runtime.container import create

    _, chan = create(
        ctx.store(),
        require_id(args, verb),
        opts.get("bundle") or os.getcwd(),
        pid_file=opts.get("pid_file"),
        console_socket=opts.get("console_socket"),
        no_pivot=bool(opts.get("no_pivot")),
        preserve_fds=int(opts.get("preserve_fds") or 0),
        stage1_worker=ctx.stage1_worker,
    )
    chan.close()
    return 0
