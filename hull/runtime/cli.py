"""`hull-runtime`: runc's command line over Hull's OCI runtime.

Argument parsing is a small table-driven parser rather than argparse:
argparse (with the `re` and `gettext` it pulls in) costs more than the whole
rest of `hull-runtime run`'s Python start-up. Each verb lives in its own module
under hull.runtime.commands and is imported only when it runs.
"""

from __future__ import annotations

import sys

from hull.errors import ConfigError, HullError
from hull.runtime import posixos as os

VERSION = "0.1.0"
SPEC_VERSION = "1.1.0"

# flag -> (dest, takes a value, repeatable)
Flags = dict[str, tuple[str, bool, bool]]

GLOBAL_FLAGS: Flags = {
    "--root": ("root", True, False),
    "--log": ("log", True, False),
    "--log-format": ("log_format", True, False),
    "--debug": ("debug", False, False),
    "--systemd-cgroup": ("systemd_cgroup", False, False),
    "--cgroup-manager": ("cgroup_manager", True, False),
    "--rootless": ("rootless", True, False),
    "--criu": ("criu", True, False),
    "--version": ("version", False, False),
    "-v": ("version", False, False),
    "--help": ("help", False, False),
    "-h": ("help", False, False),
}

VERBS = {
    "create": "create",
    "start": "start",
    "run": "run",
    "state": "state",
    "kill": "kill",
    "delete": "delete",
    "exec": "exec",
    "list": "list",
    "ps": "ps",
    "pause": "pause",
    "resume": "pause",
    "update": "update",
    "spec": "spec",
    "features": "features",
}
# Verbs that start a container (prefork.PREFORK_VERBS): their stage 1 is forked
# before anything else is imported, so it loads ctypes and the init modules
# while we read the config. The launcher forks it; main() does when it did not.
PREFORK_VERBS = ("create", "run")

USAGE = """usage: hull-runtime [global options] COMMAND [options] [args]

A runc-compatible OCI runtime (runtime-spec {spec}).

Commands:
  create    create a container from a bundle      start     start a created container
  run       create and start a container          state     print a container's state JSON
  kill      send a signal to a container          delete    delete a container
  exec      run a new process in a container      list      list containers
  ps        processes of a container              pause     freeze a container
  resume    thaw a container                      update    change resource limits
  spec      write a default config.json           features  print the features JSON

Global options:
  --root DIR  state directory (default /run/hull-runtime)   --log FILE   --log-format text|json
  --debug     --systemd-cgroup   --cgroup-manager cgroupfs|systemd   --version
"""


class Context:
    """Global options shared by every verb."""

    def __init__(self, opts: dict, stage1_worker=None) -> None:
        from hull.runtime.state import DEFAULT_ROOT

        self.root: str = opts.get("root") or DEFAULT_ROOT
        # prefork.Stage1Worker for create/run (see PREFORK_VERBS); they hand it to create().
        self.stage1_worker = stage1_worker
        self.log_path: str | None = opts.get("log")
        self.log_format: str = opts.get("log_format") or "text"
        self.debug: bool = bool(opts.get("debug"))
        if self.log_format not in ("text", "json"):
            raise ConfigError(f"--log-format must be text or json, not {self.log_format!r}")
        manager = opts.get("cgroup_manager")
        if manager not in (None, "cgroupfs", "systemd"):
            raise ConfigError(f"--cgroup-manager must be cgroupfs or systemd, not {manager!r}")

    def store(self):
        from hull.runtime.state import StateStore

        return StateStore(self.root)

    def log(self, level: str, message: str) -> None:
        """Append to --log in runc's text or JSON form (for containerd and podman)."""
        if not self.log_path:
            return
        import time

        now = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        if self.log_format == "json":
            from hull.runtime import fastjson

            line = fastjson.dumps({"level": level, "msg": message, "time": now})
        else:
            line = f'time="{now}" level={level} msg="{message}"'
        try:
            fd = os.open(
                self.log_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o600
            )
            os.write(fd, (line + "\n").encode())
            os.close(fd)
        except OSError:
            pass


def parse_flags(argv: list[str], flags: Flags, stop_after: int = 0):
    """GNU-style flags: --name value, --name=value, -x value, bool flags; `--` ends them.

    stop_after=N: once N positionals are seen the rest is taken verbatim (the
    command of `exec ID CMD -x`).
    """
    opts: dict = {}
    args: list[str] = []
    i = 0
    while i < len(argv):
        arg = argv[i]
        if arg == "--":
            args.extend(argv[i + 1 :])
            break
        if arg.startswith("-") and arg != "-":
            name, eq, value = arg.partition("=")
            if name not in flags:
                raise ConfigError(f"unknown flag {name}")
            dest, takes_value, multi = flags[name]
            if takes_value:
                if not eq:
                    i += 1
                    if i >= len(argv):
                        raise ConfigError(f"flag {name} needs a value")
                    value = argv[i]
                if multi:
                    opts.setdefault(dest, []).append(value)
                else:
                    opts[dest] = value
            else:
                opts[dest] = value.lower() not in ("false", "0") if eq else True
        else:
            args.append(arg)
            if stop_after and len(args) >= stop_after:
                args.extend(argv[i + 1 :])
                break
        i += 1
    return opts, args


def main(argv: list[str] | None = None, stage1_worker=None) -> int:
    """stage1_worker: the prefork.Stage1Worker the launcher forked (from_argv)
    for this argv; main discards it whatever happens, unless create() took it."""
    argv = sys.argv[1:] if argv is None else argv
    ctx = None
    worker = stage1_worker
    try:
        gopts, rest = parse_flags(argv, GLOBAL_FLAGS, stop_after=1)
        if gopts.get("version"):
            print(f"hull-runtime version {VERSION}\nspec: {SPEC_VERSION}")
            return 0
        if gopts.get("help") or not rest:
            print(USAGE.format(spec=SPEC_VERSION), end="")
            return 0 if gopts.get("help") else 2
        verb, verb_args = rest[0], rest[1:]
        if worker is None and verb in PREFORK_VERBS and not {"--help", "-h"} & set(verb_args):
            from hull.runtime.prefork import prefork

            worker = prefork()
        ctx = Context(gopts, worker)
        module_name = VERBS.get(verb)
        if module_name is None:
            raise ConfigError(f"unknown command {verb!r} (see hull-runtime --help)")
        name = f"hull.runtime.commands.{module_name}"
        __import__(name)
        module = sys.modules[name]
        opts, args = parse_flags(verb_args, module.FLAGS, getattr(module, "STOP_AFTER", 0))
        if opts.get("help"):
            print(f"usage: hull-runtime {verb} {module.USAGE}")
            return 0
        return int(module.main(ctx, verb, opts, args) or 0)
    except HullError as err:
        return _fail(ctx, err.message)
    except OSError as err:
        return _fail(ctx, f"{err.strerror or err}" + (f": {err.filename}" if err.filename else ""))
    except KeyboardInterrupt:
        return 130
    finally:
        if worker is not None:
            worker.discard()  # a no-op once create() took it


def _fail(ctx: Context | None, message: str) -> int:
    sys.stderr.write(f"hull-runtime: {message}\n")
    if ctx is not None:
        ctx.log("error", message)
    return 1


def require_id(args: list[str], verb: str) -> str:
    if not args:
        raise ConfigError(f"{verb} needs a container id")
    return args[0]


if __name__ == "__main__":
    sys.exit(main())
