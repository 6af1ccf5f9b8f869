"""`pause ID` / `resume ID`: freeze and thaw the container's cgroup."""

from __future__ import annotations

from hull.errors import StateError
from hull.runtime.cli import Flags, require_id

USAGE = "ID"
FLAGS: Flags = {"--help": ("help", False, False)}


def main(ctx, verb: str, opts: dict, args: list[str]) -> int:
    from hull.runtime.container import _cgroup
    from hull.runtime.state import PAUSED, RUNNING

    state = ctx.store().load(require_id(args, verb))
    status = state.status()
    cg = _cgroup(state)
    if verb == "pause":
        if status != RUNNING:
            raise StateError(f"cannot pause a container that is {status}")
        cg.freeze()
    else:
        if status != PAUSED:
            raise StateError(f"cannot resume a container that is {status}")
        cg.thaw()
    return 0
