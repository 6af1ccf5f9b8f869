"""`hull`: Docker's verbs over the engine.

Verbs are a table of name -> "module:function" strings, so a command imports
only its own module when it runs (`hull run` must not pay for `hull images`).
A verb's module provides:

    def NAME(args: argparse.Namespace) -> int | None      # runs the verb
    def NAME_args(parser: argparse.ArgumentParser) -> None   # optional: its flags
    def NAME_quick_parse(argv: list[str]) -> Namespace | None  # optional: no argparse

and finds `args.paths` (HullPaths from --root/--runroot or HULL_ROOT/HULL_RUNROOT)
and `args.debug` set. Groups (`hull image ls`) are tables of the same kind; a
new verb is one line in VERBS or GROUPS. Errors become `hull: <message>` on
stderr and the error's exit code (125 unless it says otherwise); Ctrl-C is 130.
"""

from __future__ import annotations

import os
import sys

from hull.errors import HullError

TYPE_CHECKING = False
if TYPE_CHECKING:
    import argparse
    from collections.abc import Sequence
    from typing import NoReturn


class Verb:
    """A command: its "package.module:function" and one line of help.

    Plain classes, not dataclasses, here and below: `hull run` imports this module
    first, and dataclasses/argparse/typing cost ~20 ms of a ~40 ms budget.
    """

    __slots__ = ("target", "help")

    def __init__(self, target: str, help: str) -> None:
        self.target = target
        self.help = help

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Verb) and (self.target, self.help) == (other.target, other.help)

    def __hash__(self) -> int:
        return hash((self.target, self.help))


class Group:
    """A management command (`hull image ...`): its help and its verbs."""

    __slots__ = ("help", "verbs")

    def __init__(self, help: str, verbs: dict[str, Verb] | None = None) -> None:
        self.help = help
        self.verbs = verbs or {}


_IMAGES = "hull.cli.images"
_CONTAINERS = "hull.cli.containers"
_VOLUMES = "hull.cli.volumes"
_EXTRA = "hull.cli.container_extra"
_SYSTEM = "hull.cli.system"
_NETWORK = "hull.cli.network"

VERBS: dict[str, Verb] = {
    "pull": Verb(f"{_IMAGES}:pull", "Download an image from a registry"),
    "push": Verb(f"{_IMAGES}:push", "Upload an image to a registry"),
    "images": Verb(f"{_IMAGES}:images", "List images"),
    "inspect": Verb(f"{_CONTAINERS}:inspect", "Show low-level information on objects"),
    "tag": Verb(f"{_IMAGES}:tag", "Create a tag TARGET_IMAGE that refers to SOURCE_IMAGE"),
    "rmi": Verb(f"{_IMAGES}:rmi", "Remove one or more images"),
    "load": Verb(f"{_IMAGES}:load", "Load images from a tar archive or OCI layout"),
    "save": Verb(f"{_IMAGES}:save", "Save images to a tar archive or OCI layout"),
    "history": Verb(f"{_IMAGES}:history", "Show the history of an image"),
    "login": Verb(f"{_IMAGES}:login", "Log in to a registry"),
    "run": Verb(f"{_CONTAINERS}:run", "Create and run a new container from an image"),
    "create": Verb(f"{_CONTAINERS}:create", "Create a new container"),
    "start": Verb(f"{_CONTAINERS}:start", "Start one or more stopped containers"),
    "stop": Verb(f"{_CONTAINERS}:stop", "Stop one or more running containers"),
    "restart": Verb(f"{_CONTAINERS}:restart", "Restart one or more containers"),
    "kill": Verb(f"{_CONTAINERS}:kill", "Kill one or more running containers"),
    "rm": Verb(f"{_CONTAINERS}:rm", "Remove one or more containers"),
    "ps": Verb(f"{_CONTAINERS}:ps", "List containers"),
    "logs": Verb(f"{_CONTAINERS}:logs", "Fetch the logs of a container"),
    "wait": Verb(f"{_CONTAINERS}:wait", "Block until containers stop, print exit codes"),
    "exec": Verb("hull.cli.execute:execute", "Execute a command in a running container"),
    "pause": Verb(f"{_CONTAINERS}:pause", "Pause all processes within containers"),
    "unpause": Verb(f"{_CONTAINERS}:unpause", "Unpause all processes within containers"),
    "logout": Verb(f"{_IMAGES}:logout", "Log out from a registry"),
    "stats": Verb(f"{_EXTRA}:stats", "Display a live stream of container resource usage"),
    "top": Verb(f"{_EXTRA}:top", "Display the running processes of a container"),
    "cp": Verb(f"{_EXTRA}:cp", "Copy files between a container and the local filesystem"),
    "port": Verb(f"{_EXTRA}:port", "List port mappings of a container"),
    "rename": Verb(f"{_EXTRA}:rename", "Rename a container"),
    "update": Verb(f"{_EXTRA}:update", "Update the resource limits of containers"),
    "attach": Verb(f"{_EXTRA}:attach", "Attach to a running container's output and input"),
    "diff": Verb(f"{_EXTRA}:diff", "Inspect changes to files in a container's filesystem"),
    "commit": Verb(f"{_EXTRA}:commit", "Create a new image from a container's changes"),
    "info": Verb(f"{_SYSTEM}:info", "Display system-wide information"),
    "version": Verb(f"{_SYSTEM}:version", "Show the Hull version information"),
}

GROUPS: dict[str, Group] = {
    "image": Group(
        "Manage images",
        {
            "ls": Verb(f"{_IMAGES}:images", "List images"),
            "list": Verb(f"{_IMAGES}:images", "List images"),
            "pull": VERBS["pull"],
            "push": VERBS["push"],
            "inspect": Verb(f"{_IMAGES}:image_inspect", "Display detailed information on images"),
            "tag": VERBS["tag"],
            "rm": Verb(f"{_IMAGES}:rmi", "Remove one or more images"),
            "prune": Verb(f"{_IMAGES}:image_prune", "Remove unused images"),
            "load": VERBS["load"],
            "save": VERBS["save"],
            "history": VERBS["history"],
            "bootstrap": Verb(
                f"{_IMAGES}:image_bootstrap", "Build a base image locally (busybox, debian:SUITE)"
            ),
        },
    ),
    "container": Group(
        "Manage containers",
        {
            "run": Verb(f"{_CONTAINERS}:run", "Create and run a new container"),
            "create": Verb(f"{_CONTAINERS}:create", "Create a new container"),
            "start": Verb(f"{_CONTAINERS}:start", "Start containers"),
            "stop": Verb(f"{_CONTAINERS}:stop", "Stop containers"),
            "restart": Verb(f"{_CONTAINERS}:restart", "Restart containers"),
            "kill": Verb(f"{_CONTAINERS}:kill", "Kill containers"),
            "rm": Verb(f"{_CONTAINERS}:rm", "Remove containers"),
            "ls": Verb(f"{_CONTAINERS}:ps", "List containers"),
            "list": Verb(f"{_CONTAINERS}:ps", "List containers"),
            "ps": Verb(f"{_CONTAINERS}:ps", "List containers"),
            "logs": Verb(f"{_CONTAINERS}:logs", "Fetch the logs of a container"),
            "wait": Verb(f"{_CONTAINERS}:wait", "Wait for containers to stop"),
            "inspect": Verb(f"{_CONTAINERS}:container_inspect", "Inspect containers"),
            "exec": Verb("hull.cli.execute:execute", "Execute a command in a container"),
            "pause": Verb(f"{_CONTAINERS}:pause", "Pause containers"),
            "unpause": Verb(f"{_CONTAINERS}:unpause", "Unpause containers"),
            "prune": Verb(f"{_CONTAINERS}:prune", "Remove all stopped containers"),
            "cleanup": Verb(
                f"{_CONTAINERS}:cleanup", "(internal) record a container's exit; run by its shim"
            ),
            "stats": Verb(f"{_EXTRA}:stats", "Display container resource usage"),
            "top": Verb(f"{_EXTRA}:top", "Display the running processes of a container"),
            "cp": Verb(f"{_EXTRA}:cp", "Copy files between a container and the host"),
            "port": Verb(f"{_EXTRA}:port", "List port mappings of a container"),
            "rename": Verb(f"{_EXTRA}:rename", "Rename a container"),
            "update": Verb(f"{_EXTRA}:update", "Update the resource limits of containers"),
            "attach": Verb(f"{_EXTRA}:attach", "Attach to a running container"),
            "diff": Verb(f"{_EXTRA}:diff", "Inspect changes to a container's filesystem"),
            "commit": Verb(f"{_EXTRA}:commit", "Create a new image from a container's changes"),
        },
    ),
    "volume": Group(
        "Manage volumes",
        {
            "create": Verb(f"{_VOLUMES}:create", "Create a volume"),
            "ls": Verb(f"{_VOLUMES}:ls", "List volumes"),
            "list": Verb(f"{_VOLUMES}:ls", "List volumes"),
            "inspect": Verb(f"{_VOLUMES}:inspect", "Display detailed information on volumes"),
            "rm": Verb(f"{_VOLUMES}:rm", "Remove one or more volumes"),
            "prune": Verb(f"{_VOLUMES}:prune", "Remove unused volumes"),
        },
    ),
    "network": Group(
        "Manage networks",
        {
            "create": Verb(f"{_NETWORK}:create", "Create a network"),
            "ls": Verb(f"{_NETWORK}:ls", "List networks"),
            "list": Verb(f"{_NETWORK}:ls", "List networks"),
            "inspect": Verb(f"{_NETWORK}:inspect", "Display detailed information on networks"),
            "rm": Verb(f"{_NETWORK}:rm", "Remove one or more networks"),
            "remove": Verb(f"{_NETWORK}:rm", "Remove one or more networks"),
            "connect": Verb(f"{_NETWORK}:connect", "Connect a container to a network"),
            "disconnect": Verb(f"{_NETWORK}:disconnect", "Disconnect a container from a network"),
            "prune": Verb(f"{_NETWORK}:prune", "Remove all unused networks"),
        },
    ),
    "system": Group(
        "Manage Hull",
        {
            "df": Verb(f"{_SYSTEM}:system_df", "Show Hull disk usage"),
            "prune": Verb(f"{_SYSTEM}:system_prune", "Remove unused data"),
            "info": Verb(f"{_SYSTEM}:info", "Display system-wide information"),
        },
    ),
    "vm": Group(
        "Manage microVM assets",
        {
            "kernel": Verb("hull.cli.vm:kernel", "Build or list guest kernels (build, ls, rm)"),
            "pool": Verb("hull.cli.vm:pool", "Show or size the pool of idle microVMs"),
        },
    ),
}


class UsageError(HullError):
    """Bad flags or an unknown command (Docker exits 125 for these too)."""


def __getattr__(name: str) -> object:
    """ArgumentParser is made on first use: argparse is imported only when needed."""
    if name == "ArgumentParser":
        return _argument_parser_class()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


_PARSER_CLASS: type | None = None


def _argument_parser_class() -> type[argparse.ArgumentParser]:
    """argparse's parser, raising UsageError instead of exiting with 2."""
    global _PARSER_CLASS
    if _PARSER_CLASS is None:
        import argparse

        class ArgumentParser(argparse.ArgumentParser):
            def error(self, message: str) -> NoReturn:
                raise UsageError(f"{message}\nSee '{self.prog} --help'.")

        _PARSER_CLASS = ArgumentParser
    return _PARSER_CLASS


def _top_parser() -> argparse.ArgumentParser:
    import argparse

    parser = _argument_parser_class()(
        prog="hull",
        description="A container and microVM engine with Docker's verbs.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=_commands_help(),
        add_help=True,
    )
    parser.add_argument(
        "--root", help="persistent state directory (default $HULL_ROOT or /var/lib/hull)"
    )
    parser.add_argument(
        "--runroot", help="volatile state directory (default $HULL_RUNROOT or /run/hull)"
    )
    parser.add_argument("-D", "--debug", action="store_true", help="show tracebacks for errors")
    parser.add_argument("-v", "--version", action="store_true", help="print the version and exit")
    parser.add_argument("command", nargs="?", help=argparse.SUPPRESS)
    parser.add_argument("args", nargs=argparse.REMAINDER, help=argparse.SUPPRESS)
    return parser


def _listing(entries: dict[str, str]) -> str:
    width = max((len(name) for name in entries), default=0)
    return "\n".join(f"  {name.ljust(width)}  {help}" for name, help in entries.items())


def _commands_help() -> str:
    groups = {name: g.help for name, g in GROUPS.items()}
    verbs = {name: v.help for name, v in VERBS.items()}
    return (
        f"Management commands:\n{_listing(groups)}\n\nCommands:\n{_listing(verbs)}\n\n"
        "Run 'hull COMMAND --help' for more information on a command."
    )


def _group_help(name: str, group: Group) -> str:
    body = _listing({verb: v.help for verb, v in group.verbs.items()}) or "  (no commands yet)"
    return f"Usage:  hull {name} COMMAND\n\n{group.help}\n\nCommands:\n{body}\n"


class Invocation:
    """Which verb to run, its program name for messages, and its own arguments."""

    __slots__ = ("prog", "verb", "argv")

    def __init__(self, prog: str, verb: Verb, argv: list[str]) -> None:
        self.prog = prog
        self.verb = verb
        self.argv = argv


def find_verb(command: str, rest: Sequence[str]) -> Invocation | str:
    """The verb `command rest...` names, or a help text to print for a bare group."""
    group = GROUPS.get(command)
    if group is not None:
        if not rest or rest[0] in ("-h", "--help", "help"):
            return _group_help(command, group)
        sub = rest[0]
        verb = group.verbs.get(sub)
        if verb is None:
            raise UsageError(
                f"unknown command \"hull {command} {sub}\"\nSee 'hull {command} --help'."
            )
        return Invocation(f"hull {command} {sub}", verb, list(rest[1:]))
    verb = VERBS.get(command)
    if verb is None:
        raise UsageError(f'unknown command "{command}" for "hull"\nSee \'hull --help\'.')
    return Invocation(f"hull {command}", verb, list(rest))


def _verb_module(invocation: Invocation) -> tuple[object, str]:
    module_name, _, function_name = invocation.verb.target.partition(":")
    __import__(module_name)
    return sys.modules[module_name], function_name


def build_parser(invocation: Invocation) -> tuple[argparse.ArgumentParser, object]:
    """Import the verb's module (only now) and let it declare its flags."""
    module, function_name = _verb_module(invocation)
    function = getattr(module, function_name)
    parser = _argument_parser_class()(prog=invocation.prog, description=invocation.verb.help)
    configure = getattr(module, f"{function_name}_args", None)
    if configure is not None:
        configure(parser)
    return parser, function


class _Fallback(Exception):
    """The quick parser cannot decide: argparse parses (and explains errors, help)."""


def _quick_top(argv: Sequence[str]) -> tuple[dict[str, object], list[str]]:
    """Global flags before the command, without argparse; _Fallback on anything odd."""
    opts: dict[str, object] = {"root": None, "runroot": None, "debug": False}
    rest = list(argv)
    while rest and rest[0].startswith("-"):
        token = rest.pop(0)
        name, eq, value = token.partition("=")
        if name in ("--root", "--runroot"):
            if not eq:
                if not rest:
                    raise _Fallback
                value = rest.pop(0)
            opts[name[2:]] = value
        elif token in ("-D", "--debug"):
            opts["debug"] = True
        else:
            raise _Fallback  # --help, --version, a typo: argparse's words
    if not rest:
        raise _Fallback
    return opts, rest


def parse(argv: Sequence[str]) -> tuple[argparse.Namespace, object] | str:
    """Parse a full command line; a string result is text to print (help, version).

    The common case goes without argparse: global flags by hand, then the verb's
    own quick parser (NAME_quick_parse) when it has one; argparse takes over for
    help, errors and every other verb.
    """
    try:
        opts, rest = _quick_top(argv)
        command, args_rest = rest[0], rest[1:]
    except _Fallback:
        top = _top_parser()
        ns = top.parse_args(list(argv))
        if ns.version:
            from hull import __version__

            return f"hull version {__version__}"
        if not ns.command:
            return top.format_help()
        opts = {"root": ns.root, "runroot": ns.runroot, "debug": ns.debug}
        command, args_rest = ns.command, ns.args
    found = find_verb(command, args_rest)
    if isinstance(found, str):
        return found
    module, function_name = _verb_module(found)
    quick = getattr(module, f"{function_name}_quick_parse", None)
    args = quick(found.argv) if quick is not None else None
    if args is None:
        parser, _ = build_parser(found)
        args = parser.parse_args(found.argv)
    from hull.paths import HullPaths

    args.paths = HullPaths.from_env(opts["root"], opts["runroot"])  # type: ignore[arg-type]
    args.debug = opts["debug"]
    return args, getattr(module, function_name)


# Verbs that keep garbage collection paused through their start (the launcher
# paused it: hull/gc_pause.py); each resumes it itself before it waits.
GC_PAUSED_VERBS = ("hull.cli.containers:run",)


def main(argv: Sequence[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    debug = _wants_debug(argv)
    try:
        parsed = parse(argv)
        if isinstance(parsed, str):
            sys.stdout.write(parsed.rstrip("\n") + "\n")
            return 0
        args, function = parsed
        target = f"{function.__module__}:{function.__name__}"  # type: ignore[attr-defined]
        if target not in GC_PAUSED_VERBS:
            from hull.gc_pause import resume

            resume()
        result = function(args)  # type: ignore[operator]
        sys.stdout.flush()
        return int(result or 0)
    except HullError as e:
        if debug:
            import traceback

            traceback.print_exc()
        sys.stderr.write(f"hull: {e.message}\n")
        return e.exit_code
    except KeyboardInterrupt:
        sys.stderr.write("\n")
        return 130
    except BrokenPipeError:
        # `hull images | head`: the reader left; say nothing more.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 141
    except SystemExit as e:  # argparse --help inside a verb
        return int(e.code or 0) if not isinstance(e.code, str) else 1
    except Exception:
        # A bug, not a user error: show where, keep Docker's engine-failure code.
        import traceback

        traceback.print_exc()
        return 125


def _wants_debug(argv: Sequence[str]) -> bool:
    """--debug among the global flags (before the command), decided before parsing can fail."""
    takes_value = {"--root", "--runroot"}
    skip = False
    for token in argv:
        if skip:
            skip = False
            continue
        if token in ("-D", "--debug"):
            return True
        if token in takes_value:
            skip = True
        elif not token.startswith("-"):
            return False
    return False


if __name__ == "__main__":
    sys.exit(main())
