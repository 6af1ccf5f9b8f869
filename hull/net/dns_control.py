"""The engine's side of the embedded DNS server: keep one server per Hull root running
while a user network has containers, fed with their names; stop it when none has.

sync() is the single way in, idempotent: render the records from the state database,
write them (atomically) where the server reads them, then reload the server, start it
when it is not running, or stop it when there is nothing to serve. It runs under a lock
file, so two `hull` processes never start two servers. check() is the start-up sweep's
variant: SQL and a stat when there is nothing to do, a ping when the server should run.

The server listens on the gateways, in the host's network namespace, rather than on
127.0.0.11 inside each container's namespace as Docker does: one process serves every
container (no per-container thread or socket), and it reaches the host's loopback
resolvers without any NAT. A container's resolv.conf names its first user network's
gateway.
"""

from __future__ import annotations

import fcntl
import os
import socket
import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path

from hull.files import replace_text
from hull.net import dns
from hull.net.store import StateDB
from hull.paths import HullPaths

# The resolv.conf whose nameservers receive forwarded queries (tests: a fake upstream).
ENV_RESOLV_CONF = "HULL_DNS_RESOLV_CONF"
SERVER = Path(__file__).with_name("dnsd.py")
CONTROL, RECORDS, PIDFILE, LOCK = "control", "records", "pid", "lock"
SPAWN_TIMEOUT = 10.0
ASK_TIMEOUT = 5.0
STOP_TIMEOUT = 2.0
DEFAULT_NETWORK = "bridge"  # Docker's default network has no embedded DNS
# What the engine knows of a container beyond hull.net's tables: id -> (name, --dns).
Containers = Mapping[str, tuple[str, list[str]]]

_USER_ENDPOINTS = (
    "SELECT n.id, n.gateway, n.internal, e.container_id, e.ip, e.aliases"
    " FROM net_networks n JOIN net_endpoints e ON e.network_id = n.id"
    f" WHERE n.name != '{DEFAULT_NETWORK}' ORDER BY n.created, n.id, e.ip"
)


def state_dir(paths: HullPaths) -> Path:
    return Path(paths.runroot) / "dns"


def records_text(db: StateDB, containers: Containers) -> str:
    """The records file for the current state: user networks that have containers."""
    import json

    rows = db.execute(_USER_ENDPOINTS).fetchall()
    networks = {r["id"]: (r["id"], r["gateway"], bool(r["internal"])) for r in rows}
    endpoints = []
    for r in rows:
        names = json.loads(r["aliases"])
        own = containers.get(r["container_id"], ("", []))[0]
        if own in names:  # the container's name first: it answers reverse lookups
            names = [own, *(n for n in names if n != own)]
        endpoints.append((r["id"], r["container_id"], r["ip"], names))
    servers = {
        cid: containers[cid][1] for cid in {r["container_id"] for r in rows} if cid in containers
    }
    return dns.render_records(networks.values(), endpoints, servers)


def has_user_endpoints(db: StateDB) -> bool:
    return (
        db.execute(
            "SELECT 1 FROM net_endpoints e JOIN net_networks n ON n.id = e.network_id"
            f" WHERE n.name != '{DEFAULT_NETWORK}' LIMIT 1"
        ).fetchone()
        is not None
    )


def nameserver_for(db: StateDB, container_id: str) -> str | None:
    """The address a container asks for names: its first user network's gateway, or
    None when it is on none (the default bridge uses the host's resolvers)."""
    row = db.execute(
        "SELECT n.gateway FROM net_endpoints e JOIN net_networks n ON n.id = e.network_id"
        f" WHERE e.container_id = ? AND n.name != '{DEFAULT_NETWORK}'"
        " ORDER BY length(e.ifname), e.ifname LIMIT 1",
        (container_id,),
    ).fetchone()
    return None if row is None else str(row["gateway"])


def sync(paths: HullPaths, db: StateDB, containers: Containers) -> list[str]:
    """Make the server match the state; warnings for gateways it could not serve."""
    directory = state_dir(paths)
    directory.mkdir(parents=True, exist_ok=True)
    with _Lock(directory / LOCK):
        text = records_text(db, containers)
        if not text.strip():
            stop(paths)
            _remove(directory / RECORDS)
            return []
        _write_atomic(directory / RECORDS, text)
        reply = ask(directory, "reload")
        if reply is None:
            reply = _spawn(directory)
        return reply[1:]


def check(paths: HullPaths, db: StateDB, containers: Containers) -> list[str]:
    """The start-up sweep: restart a dead server, stop one with nothing to serve, and
    bring stale records up to date; cheap when all is well."""
    directory = state_dir(paths)
    if not has_user_endpoints(db):
        if not os.path.lexists(directory / CONTROL):
            return []
        return sync(paths, db, containers)
    try:
        current = (directory / RECORDS).read_text()
    except OSError:
        current = None
    if current == records_text(db, containers) and ask(directory, "ping") is not None:
        return []
    return sync(paths, db, containers)


def ask(directory: Path, command: str) -> list[str] | None:
    """The server's reply lines, or None when no server listens."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET) as sock:
        sock.settimeout(ASK_TIMEOUT)
        try:
            sock.connect(str(directory / CONTROL))
            sock.send(command.encode())
            data = sock.recv(4096)
        except OSError:
            return None
    lines = data.decode(errors="replace").splitlines()
    return lines if lines and lines[0].startswith("ok ") else None


def server_pid(paths: HullPaths) -> int | None:
    """The running server's pid (tests, diagnostics), None when none answers."""
    reply = ask(state_dir(paths), "ping")
    return int(reply[0].split()[1]) if reply else None


def stop(paths: HullPaths) -> None:
    """Stop the server, if one runs; a hung one is killed (its pid file says which)."""
    directory = state_dir(paths)
    reply = ask(directory, "stop")
    pid = int(reply[0].split()[1]) if reply else _pid_of_hung_server(directory)
    if pid is not None and not (reply and _wait_exit(pid, STOP_TIMEOUT)):
        try:
            os.kill(pid, 9)
        except ProcessLookupError:
            pass
        _wait_exit(pid, STOP_TIMEOUT)
    _remove(directory / CONTROL)
    _remove(directory / PIDFILE)


def _wait_exit(pid: int, timeout: float) -> bool:
    """Whether pid exited within timeout (its sockets are closed then)."""
    import select

    try:
        fd = os.pidfd_open(pid)
    except ProcessLookupError:
        return True
    try:
        return bool(select.select([fd], [], [], timeout)[0])
    finally:
        os.close(fd)


def _pid_of_hung_server(directory: Path) -> int | None:
    """The pid file's process if it is our server for this directory (pids get reused)."""
    try:
        pid = int((directory / PIDFILE).read_text())
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except (OSError, ValueError):
        return None
    return pid if str(SERVER).encode() in cmdline and str(directory).encode() in cmdline else None


def _spawn(directory: Path) -> list[str]:
    """Start the server and wait until it serves (it forks once every socket is bound)."""
    from hull.errors import HullError

    hung = _pid_of_hung_server(directory)  # alive but not answering: replace it
    if hung is not None:
        try:
            os.kill(hung, 9)
        except ProcessLookupError:
            pass
        _wait_exit(hung, STOP_TIMEOUT)
    resolv_conf = os.environ.get(ENV_RESOLV_CONF) or "/etc/resolv.conf"
    try:
        done = subprocess.run(
            [sys.executable, "-IS", str(SERVER), str(directory), resolv_conf],
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=SPAWN_TIMEOUT,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired) as e:
        raise HullError(f"cannot start the embedded DNS server: {e}") from None
    lines = done.stdout.splitlines()
    if done.returncode != 0 or not lines or not lines[0].startswith("ok "):
        detail = done.stderr.strip().splitlines()[-1:] or [f"exit status {done.returncode}"]
        raise HullError(f"cannot start the embedded DNS server: {detail[0]}")
    return lines


def _write_atomic(path: Path, text: str) -> None:
    try:
        if path.read_text() == text:
            return
    except OSError:
        pass
    replace_text(path, text)


def _remove(path: Path) -> None:
    try:
        path.unlink()
    except FileNotFoundError:
        pass


class _Lock:
    """An exclusive flock on a file of the state directory."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.fd = -1

    def __enter__(self) -> _Lock:
        self.fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        fcntl.flock(self.fd, fcntl.LOCK_EX)
        return self

    def __exit__(self, *exc: object) -> None:
        os.close(self.fd)
