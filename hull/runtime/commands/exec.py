"""`exec ID (--process FILE | ARGS...)`: run another process in the container."""

from __future__ import annotations

from hull.errors import ConfigError
from hull.runtime.cli import Flags, require_id

USAGE = (
    "ID [--process F | ARGS...] [--tty] [--detach] [--pid-file F] [--cwd D] [--env K=V]"
    " [--user U[:G]]"
)
FLAGS: Flags = {
    "--process": ("process", True, False),
    "-p": ("process", True, False),
    "--tty": ("tty", False, False),
    "-t": ("tty", False, False),
    "--detach": ("detach", False, False),
    "-d": ("detach", False, False),
    "--pid-file": ("pid_file", True, False),
    "--console-socket": ("console_socket", True, False),
    "--cwd": ("cwd", True, False),
    "--env": ("env", True, True),
    "-e": ("env", True, True),
    "--user": ("user", True, False),
    "-u": ("user", True, False),
    "--cap": ("cap", True, True),
    "-c": ("cap", True, True),
    "--no-new-privs": ("no_new_privs", False, False),
    "--preserve-fds": ("preserve_fds", True, False),
    "--additional-gids": ("additional_gids", True, True),
    "-g": ("additional_gids", True, True),
    "--help": ("help", False, False),
}
STOP_AFTER = 2


def main(ctx, verb: str, opts: dict, args: list[str]) -> int:
    from hull.runtime.container import load_config
    from hull.runtime.tenant import build_process, exec_process

    container_id = require_id(args, verb)
    command = args[1:]
    if not opts.get("process") and not command:
        raise ConfigError("exec needs --process FILE or a command")
    store = ctx.store()
    config = load_config(store.load(container_id).data["bundle"])
    process = build_process(
        config,
        args=command,
        process_file=opts.get("process"),
        tty=bool(opts.get("tty")),
        cwd=opts.get("cwd"),
        env=opts.get("env"),
        user=opts.get("user"),
        caps=opts.get("cap"),
        no_new_privs=True if opts.get("no_new_privs") else None,
    )
    if opts.get("additional_gids"):
        process.setdefault("user", {})["additionalGids"] = [int(g) for g in opts["additional_gids"]]
    return exec_process(
        store,
        container_id,
        process,
        detach=bool(opts.get("detach")),
        pid_file=opts.get("pid_file"),
        console_socket=opts.get("console_socket"),
        preserve_fds=int(opts.get("preserve_fds") or 0),
    )
