"""`list`: every container under --root, as a table or JSON."""

from __future__ import annotations

from hull.runtime.cli import Flags

USAGE = "[--format table|json] [--quiet]"
FLAGS: Flags = {
    "--format": ("format", True, False),
    "-f": ("format", True, False),
    "--quiet": ("quiet", False, False),
    "-q": ("quiet", False, False),
    "--help": ("help", False, False),
}


def main(ctx, verb: str, opts: dict, args: list[str]) -> int:
    from hull.runtime import fastjson

    store = ctx.store()
    states = []
    for cid in store.ids():
        try:
            states.append(store.load(cid).oci_state())
        except Exception:  # noqa: BLE001 - a half-deleted entry must not hide the others
            continue
    if opts.get("quiet"):
        for s in states:
            print(s["id"])
    elif opts.get("format") == "json":
        print(fastjson.dumps(states))
    else:
        rows = [("ID", "PID", "STATUS", "BUNDLE", "CREATED", "OWNER")]
        rows += [
            (s["id"], str(s["pid"]), s["status"], s["bundle"], s["created"], "root") for s in states
        ]
        widths = [max(len(r[i]) for r in rows) for i in range(6)]
        for r in rows:
            print("   ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip())
    return 0
