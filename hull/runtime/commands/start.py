"""`start ID`: run the user process of a created container."""

from __future__ import annotations

from hull.runtime.cli import Flags, require_id

USAGE = "ID"
FLAGS: Flags = {"--help": ("help", False, False)}


def main(ctx, verb: str, opts: dict, args: list[str]) -> int:
    from hull.runtime.container import start

    start(ctx.store(), require_id(args, verb))
    return 0
