"""`kill ID [SIGNAL] [--all]`: signal the container's init, or every process."""

from __future__ import annotations

from hull.errors import ConfigError
from hull.runtime.cli import Flags, require_id

USAGE = "ID [SIGNAL] [--all]"
FLAGS: Flags = {
    "--all": ("all", False, False),
    "-a": ("all", False, False),
    "--help": ("help", False, False),
}

# Linux signal numbers (x86_64 and arm64 agree on these); no `signal` import.
SIGNALS = {
    "HUP": 1, "INT": 2, "QUIT": 3, "ILL": 4, "TRAP": 5, "ABRT": 6, "IOT": 6, "BUS": 7,
    "FPE": 8, "KILL": 9, "USR1": 10, "SEGV": 11, "USR2": 12, "PIPE": 13, "ALRM": 14,
    "TERM": 15, "STKFLT": 16, "CHLD": 17, "CONT": 18, "STOP": 19, "TSTP": 20, "TTIN": 21,
    "TTOU": 22, "URG": 23, "XCPU": 24, "XFSZ": 25, "VTALRM": 26, "PROF": 27, "WINCH": 28,
    "IO": 29, "POLL": 29, "PWR": 30, "SYS": 31,
}  # fmt: skip


def parse_signal(text: str) -> int:
    if text.isdigit():
        num = int(text)
    else:
        name = text.upper().removeprefix("SIG")
        if name.startswith("RTMIN") or name.startswith("RTMAX"):
            base, _, off = name.partition("+") if "+" in name else name.partition("-")
            num = (34 if base == "RTMIN" else 64) + (int(off) if off else 0) * (
                1 if "+" in name or base == "RTMIN" else -1
            )
        elif name in SIGNALS:
            num = SIGNALS[name]
        else:
            raise ConfigError(f"unknown signal {text!r}")
    if not 1 <= num <= 64:
        raise ConfigError(f"signal {text!r} is out of range")
    return num


def main(ctx, verb: str, opts: dict, args: list[str]) -> int:
    from hull.runtime.container import kill

    signum = parse_signal(args[1]) if len(args) > 1 else 15
    kill(ctx.store(), require_id(args, verb), signum, bool(opts.get("all")))
    return 0
