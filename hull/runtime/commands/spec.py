"""`spec [--bundle B]`: write a default config.json, as `runc spec` does."""

from __future__ import annotations

import os

from hull.errors import StateError
from hull.runtime.cli import Flags

USAGE = "[--bundle DIR]"
FLAGS: Flags = {
    "--bundle": ("bundle", True, False),
    "-b": ("bundle", True, False),
    "--rootless": ("rootless", False, False),
    "--help": ("help", False, False),
}


def main(ctx, verb: str, opts: dict, args: list[str]) -> int:
    from hull.oci.runtime_spec import default_spec
    from hull.runtime import fastjson

    path = os.path.join(opts.get("bundle") or ".", "config.json")
    if os.path.exists(path):
        raise StateError(f"{path} already exists; remove it first")
    with open(path, "w") as f:
        f.write(fastjson.pretty(default_spec()) + "\n")
    return 0
