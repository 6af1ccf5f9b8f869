"""`state ID`: the runtime spec's state JSON."""

from __future__ import annotations

from hull.runtime.cli import Flags, require_id

USAGE = "ID"
FLAGS: Flags = {"--help": ("help", False, False)}


def main(ctx, verb: str, opts: dict, args: list[str]) -> int:
    from hull.runtime import fastjson

    state = ctx.store().load(require_id(args, verb))
    print(fastjson.pretty(state.oci_state()))
    return 0
