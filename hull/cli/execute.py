"""`hull exec`: run a command in a running container (joins its namespaces).

The exec'd process is this process's child (hull-runtime's tenant path runs
in-process), so its stdio is ours; with -t a pty comes back over a socketpair
and is proxied like `docker exec -it`.
"""

from __future__ import annotations

import argparse
import os

from hull.errors import ConfigError, StateError


def execute_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("-d", "--detach", action="store_true")
    p.add_argument("-i", "--interactive", action="store_true")
    p.add_argument("-t", "--tty", action="store_true")
    p.add_argument("-e", "--env", action="append", default=[])
    p.add_argument("-w", "--workdir")
    p.add_argument("-u", "--user")
    p.add_argument("--privileged", action="store_true")
    p.add_argument("container")
    p.add_argument("command", nargs=argparse.REMAINDER)


def execute(args: argparse.Namespace) -> int:
    from hull.engine.containers import ContainerService
    from hull.runtime.container import load_config
    from hull.runtime.state import StateStore
    from hull.runtime.tenant import build_process, exec_process

    if not args.command:
        raise ConfigError("exec needs a command: hull exec CONTAINER COMMAND [ARG...]")
    with ContainerService(args.paths) as service:
        service.reconcile()
        record = service.get(args.container)
        if record.state == "paused":
            raise StateError(f"container {record.name} is paused, unpause it first")
        if record.state != "running":
            raise StateError(f"container {record.name} is not running")
        layout = service.layout(record)
    if record.run.isolation == "vm":
        from hull.engine.vmbackend import exec_in_vm

        return exec_in_vm(service, record, args.command, args.env, args.workdir, args.user,
                          args.tty, args.interactive, args.detach)  # fmt: skip
    store = StateStore(str(layout.runtime_root))
    config = load_config(str(layout.bundle))
    env = []
    for item in args.env:
        if "=" not in item:
            if item in os.environ:
                env.append(f"{item}={os.environ[item]}")
            continue
        env.append(item)
    user = None
    if args.user:
        from hull.engine.userdb import resolve_user

        resolved = resolve_user(layout.rootfs, args.user)
        user = f"{resolved.uid}:{resolved.gid}"
    process = build_process(
        config,
        args=args.command,
        tty=args.tty,
        cwd=args.workdir,
        env=env,
        user=user,
        caps=["CAP_" + c for c in _all_caps()] if args.privileged else None,
    )
    if not args.tty:
        return exec_process(store, record.id, process, detach=args.detach)
    import socket

    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    master_holder: list[int] = []

    def proxy(_pid: int) -> None:
        from hull.runtime.tty import proxy as tty_proxy
        from hull.runtime.tty import receive_master

        master_holder.append(receive_master(ours.detach()))
        tty_proxy(master_holder[0])

    try:
        return exec_process(
            store,
            record.id,
            process,
            detach=args.detach,
            console_fd=theirs.detach(),
            on_started=proxy,
        )
    finally:
        ours.close()


def _all_caps() -> list[str]:
    from hull.runtime.linux.capabilities import CAPS

    return [name.removeprefix("CAP_") for name in CAPS]
