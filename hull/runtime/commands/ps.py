"""`ps ID [--format json] [-- PS_ARGS]`: processes in the container's cgroup."""

from __future__ import annotations

import subprocess

from hull.runtime.cli import Flags, require_id

USAGE = "ID [--format table|json] [ps options]"
STOP_AFTER = 1
FLAGS: Flags = {
    "--format": ("format", True, False),
    "-f": ("format", True, False),
    "--help": ("help", False, False),
}


def main(ctx, verb: str, opts: dict, args: list[str]) -> int:
    from hull.runtime import fastjson
    from hull.runtime.container import _cgroup

    state = ctx.store().load(require_id(args, verb))
    pids = sorted(_cgroup(state).pids())
    if opts.get("format") == "json":
        print(fastjson.dumps(pids))
        return 0
    ps_args = args[1:] or ["-ef"]
    out = subprocess.run(["ps", *ps_args], capture_output=True, text=True, check=True).stdout
    lines = out.splitlines()
    header = lines[0].split()
    pid_col = header.index("PID")
    print(lines[0])
    for line in lines[1:]:
        fields = line.split()
        if len(fields) > pid_col and fields[pid_col].isdigit() and int(fields[pid_col]) in pids:
            print(line)
    return 0
