"""`delete ID [--force]`: remove a stopped (or, forced, any) container."""

from __future__ import annotations

from hull.runtime.cli import Flags, require_id

USAGE = "ID [--force]"
FLAGS: Flags = {
    "--force": ("force", False, False),
    "-f": ("force", False, False),
    "--help": ("help", False, False),
}


def main(ctx, verb: str, opts: dict, args: list[str]) -> int:
    from hull.runtime.container import delete

    delete(ctx.store(), require_id(args, verb), bool(opts.get("force")))
    return 0
