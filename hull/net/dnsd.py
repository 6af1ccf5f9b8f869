"""The embedded DNS server of one Hull root, as a process of its own (like aardvark-dns).

    python -IS hull/net/dnsd.py STATE_DIR RESOLV_CONF [PORT]

Hull is daemonless, so nothing else would answer a container's queries between two
`hull` commands. This process listens on port 53 (UDP and TCP) of the gateway address of
every user network that has containers, answers their names from STATE_DIR/records
(written by hull.net.dns_control), and forwards other names to the host's resolvers
(RESOLV_CONF, re-read when it changes) or to a container's --dns servers.

The engine talks to it through STATE_DIR/control, a unix seqpacket socket:
"reload" (re-read records, bind and unbind gateways), "ping" and "stop"; a refused
connection means the server is dead. Started by the engine, it binds everything, then
forks: the parent prints "ok PID" and any warnings and exits, so the engine knows the
server answers before its container starts, and no zombie is left with the engine.

It stays small: stdlib modules only, a selector loop in one thread, and a short-lived
thread only for a forwarded query (a slow upstream never holds up local names). It
exits by itself when STATE_DIR/control is gone (its Hull root was removed).
"""

from __future__ import annotations

import os
import selectors
import signal
import socket
import sys
import threading

if __name__ == "__main__":  # under -I the repository is not on sys.path
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))

from hull.net import dns  # noqa: E402

CONTROL = "control"
RECORDS = "records"
PIDFILE = "pid"
COMM = "hull-dns"
IP_FREEBIND = getattr(socket, "IP_FREEBIND", 15)
MAX_FORWARDS = 64  # queries waiting on upstreams at once; more are dropped (client retries)
TCP_IDLE = 10.0
IDLE_CHECK = 30.0


class Server:
    def __init__(self, state_dir: str, resolv_conf: str, port: int = 53) -> None:
        self.state_dir = state_dir
        self.resolv_conf = resolv_conf
        self.port = port
        self.records = dns.Records()
        self.sockets: dict[str, tuple[socket.socket, socket.socket]] = {}  # gateway -> udp, tcp
        self.selector = selectors.DefaultSelector()
        self.forwards = threading.BoundedSemaphore(MAX_FORWARDS)
        self.running = True
        self._host_key: tuple[int, int, int] | None = None
        self._host_servers: list[str] = []
        path = os.path.join(state_dir, CONTROL)
        try:
            os.unlink(path)  # a dead server's (the engine checked before starting us)
        except FileNotFoundError:
            pass
        self.control = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        self.control.bind(path)
        self.control.listen(8)
        self.control_inode = os.stat(path).st_ino
        self.selector.register(self.control, selectors.EVENT_READ, self._on_control)

    # ------------------------------------------------------------------ records, sockets

    def load(self) -> list[str]:
        """Re-read the records; bind new gateways, close gone ones. Warnings for binds
        that failed."""
        try:
            with open(os.path.join(self.state_dir, RECORDS)) as f:
                records = dns.parse_records(f.read())
        except OSError:
            records = dns.Records()
        self.records = records
        warnings = []
        for gateway in [g for g in self.sockets if g not in records.gateways]:
            for sock in self.sockets.pop(gateway):
                self.selector.unregister(sock)
                sock.close()
        for gateway in records.listen:
            if gateway not in self.sockets:
                try:
                    self._bind(gateway)
                except OSError as e:
                    warnings.append(f"cannot serve DNS on {gateway}:{self.port}: {e.strerror}")
        return warnings

    def _bind(self, gateway: str) -> None:
        udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        tcp = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        try:
            # Our earlier self's connections in TIME_WAIT must not block a restart (UDP
            # gets no SO_REUSEADDR: two servers must never share a gateway).
            tcp.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            for sock in (udp, tcp):
                # The bridge may lack its address for a moment (re-created after a reboot).
                sock.setsockopt(socket.IPPROTO_IP, IP_FREEBIND, 1)
                sock.bind((gateway, self.port))
            tcp.listen(32)
        except OSError:
            udp.close()
            tcp.close()
            raise
        self.sockets[gateway] = (udp, tcp)
        self.selector.register(udp, selectors.EVENT_READ, lambda s: self._on_udp(s, gateway))
        self.selector.register(tcp, selectors.EVENT_READ, lambda s: self._on_accept(s, gateway))

    def upstreams(self, container: str | None) -> list[tuple[str, int]]:
        """The container's --dns servers, else the host's; never ourselves."""
        servers = self.records.servers.get(container or "") or self._host_resolvers()
        return [(host, 53) for host in servers if host not in self.sockets]

    def _host_resolvers(self) -> list[str]:
        try:
            st = os.stat(self.resolv_conf)
            key = (st.st_ino, st.st_mtime_ns, st.st_size)
        except OSError:
            key = (0, 0, 0)
        if key != self._host_key:
            self._host_key = key
            self._host_servers = dns.host_resolvers(self.resolv_conf)
        return self._host_servers

    # ------------------------------------------------------------------ queries

    def decide(
        self, packet: bytes, gateway: str, client_ip: str
    ) -> tuple[bytes | None, list[tuple[str, int]], dns.Question | None]:
        """(reply now, upstreams to forward to, the question): a local answer, a
        SERVFAIL when there is no way out, else the upstreams; (None, [], None) drops."""
        question = dns.parse_question(packet)
        if question is None:
            return None, [], None
        records = self.records
        networks, container = records.scope(gateway, client_ip)
        if not networks:
            return None, [], None
        local = dns.local_reply(
            packet,
            question,
            lambda name: records.address(networks, name),
            lambda ip: records.name_of(networks, ip),
        )
        if local is not None:
            return local, [], question
        upstreams = (
            [] if all(n in records.internal for n in networks) else self.upstreams(container)
        )
        if not upstreams:  # --internal networks have no way out, nor a host without resolvers
            return dns.servfail(packet, question), [], question
        return None, upstreams, question

    def _on_udp(self, sock: socket.socket, gateway: str) -> None:
        try:
            packet, client = sock.recvfrom(dns.MAX_MESSAGE)
        except OSError:
            return
        now, upstreams, question = self.decide(packet, gateway, client[0])
        if now is not None:
            _send_to(sock, now, client)
        elif question is not None and self.forwards.acquire(blocking=False):
            threading.Thread(
                target=self._forward_udp, args=(sock, packet, question, upstreams, client),
                daemon=True,
            ).start()  # fmt: skip

    def _forward_udp(
        self,
        sock: socket.socket,
        packet: bytes,
        question: dns.Question,
        upstreams: list[tuple[str, int]],
        client: tuple[str, int],
    ) -> None:
        try:
            _send_to(sock, dns.forward(packet, upstreams) or dns.servfail(packet, question), client)
        finally:
            self.forwards.release()

    def _on_accept(self, listener: socket.socket, gateway: str) -> None:
        try:
            conn, client = listener.accept()
        except OSError:
            return
        if not self.forwards.acquire(blocking=False):
            conn.close()
            return
        threading.Thread(
            target=self._serve_tcp, args=(conn, gateway, client[0]), daemon=True
        ).start()

    def _serve_tcp(self, conn: socket.socket, gateway: str, client_ip: str) -> None:
        """Length-prefixed queries on one connection until the client closes it."""
        try:
            conn.settimeout(TCP_IDLE)
            while packet := dns.read_tcp_message(conn):
                now, upstreams, question = self.decide(packet, gateway, client_ip)
                if question is None:
                    break
                if now is None:
                    now = dns.forward_tcp(packet, upstreams) or dns.servfail(packet, question)
                conn.sendall(len(now).to_bytes(2, "big") + now)
        except OSError:
            pass
        finally:
            conn.close()
            self.forwards.release()

    # ------------------------------------------------------------------ control

    def _on_control(self, listener: socket.socket) -> None:
        try:
            conn, _ = listener.accept()
        except OSError:
            return
        with conn:
            try:
                conn.settimeout(2.0)
                command = conn.recv(64).decode("ascii", "replace").strip()
                lines = [f"ok {os.getpid()}"]
                if command == "reload":
                    lines += self.load()
                    self.running = bool(self.records.gateways)
                elif command == "stop":
                    self.running = False
                conn.send("\n".join(lines).encode())
            except OSError:
                pass

    def orphaned(self) -> bool:
        """Whether our control socket is gone or another's (the Hull root was removed)."""
        try:
            return os.stat(os.path.join(self.state_dir, CONTROL)).st_ino != self.control_inode
        except OSError:
            return True

    def serve(self) -> None:
        while self.running:
            events = self.selector.select(IDLE_CHECK)
            for key, _ in events:
                key.data(key.fileobj)
            if not events and self.orphaned():
                return

    def close(self) -> None:
        """Close every socket; remove the control socket and pid file if still ours."""
        mine = not self.orphaned()
        for udp, tcp in self.sockets.values():
            udp.close()
            tcp.close()
        self.control.close()
        if mine:
            for name in (CONTROL, PIDFILE):
                try:
                    os.unlink(os.path.join(self.state_dir, name))
                except OSError:
                    pass


def _send_to(sock: socket.socket, data: bytes, client: tuple[str, int]) -> None:
    try:
        sock.sendto(data, client)
    except OSError:
        pass  # the client is gone, or the gateway was unbound meanwhile


def _stop(signum: int, frame: object) -> None:
    raise SystemExit(0)


def _write_pidfile(state_dir: str, pid: int) -> None:
    tmp = os.path.join(state_dir, PIDFILE + ".tmp")
    with open(tmp, "w") as f:
        f.write(f"{pid}\n")
    os.rename(tmp, os.path.join(state_dir, PIDFILE))


def main(argv: list[str]) -> int:
    if len(argv) not in (3, 4):
        print("usage: dnsd.py STATE_DIR RESOLV_CONF [PORT]", file=sys.stderr)
        return 2
    state_dir, resolv_conf = argv[1], argv[2]
    server = Server(state_dir, resolv_conf, int(argv[3]) if len(argv) == 4 else 53)
    warnings = server.load()
    if not server.records.gateways:
        server.close()
        print("no user network to serve", file=sys.stderr)
        return 1
    pid = os.fork()
    if pid:  # ready: every socket is bound; tell the engine and leave
        _write_pidfile(state_dir, pid)
        sys.stdout.write("\n".join([f"ok {pid}", *warnings]) + "\n")
        sys.stdout.flush()
        os._exit(0)
    os.setsid()
    os.chdir("/")
    null = os.open(os.devnull, os.O_RDWR)
    for fd in (0, 1, 2):
        os.dup2(null, fd)
    os.close(null)
    try:
        with open("/proc/self/comm", "w") as f:
            f.write(COMM)
    except OSError:
        pass
    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, _stop)
    try:
        server.serve()
    finally:
        server.close()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
