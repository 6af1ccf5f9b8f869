"""`features`: what this runtime implements (runtime-spec features.md)."""

from __future__ import annotations

from hull.runtime.cli import Flags

USAGE = ""
FLAGS: Flags = {"--help": ("help", False, False)}


def main(ctx, verb: str, opts: dict, args: list[str]) -> int:
    from hull.oci.runtime_spec import features
    from hull.runtime import fastjson

    print(fastjson.pretty(features()))
    return 0
