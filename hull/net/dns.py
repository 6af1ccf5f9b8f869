"""Embedded DNS, the pure part: DNS packets, the records file, the host's resolvers.

The server (hull/net/dnsd.py) is a long-lived process started with `python -IS`, so
this module imports only what an interpreter loads anyway (socket, struct, os): no
dataclasses, typing or re, which would cost the resident process megabytes.

The engine describes every user network that has containers in a small text file
(render_records); the server re-reads it when told to (parse_records):

    net <network-id> <gateway> internal|external
    ep <network-id> <container-id> <ip> <name> [<name>...]
    dns <container-id> <server> [<server>...]          (--dns: that container's upstreams)

A query is answered from the networks of the container that asked (found by its source
address on the network whose gateway it asked), as Docker's resolver does: a container
on two networks resolves the names of both; one on another network resolves none.
A and PTR queries for known names are answered, other types for known names get an
empty NOERROR (no IPv6 records), everything else is forwarded.
"""

from __future__ import annotations

import socket
import struct

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable, Iterable, Sequence

TYPE_A = 1
TYPE_PTR = 12
TYPE_AAAA = 28
CLASS_IN = 1
RCODE_SERVFAIL = 2
TTL = 0  # containers come and go: never let a stale address be cached
FORWARD_TIMEOUT = 2.0
MAX_MESSAGE = 65535


class Question:
    """The first question of a query (name lower case, no trailing dot)."""

    __slots__ = ("ident", "flags", "name", "qtype", "qclass", "end")

    def __init__(self, ident: int, flags: int, name: str, qtype: int, qclass: int, end: int):
        self.ident = ident
        self.flags = flags
        self.name = name
        self.qtype = qtype
        self.qclass = qclass
        self.end = end  # offset just past the question


def parse_question(packet: bytes) -> Question | None:
    """The first question of a query, or None when the packet is not one we can read."""
    if len(packet) < 12:
        return None
    ident, flags, qdcount = struct.unpack("!HHH", packet[:6])
    if flags & 0x8000 or qdcount < 1:
        return None  # a response, or no question
    labels = []
    offset = 12
    while True:
        if offset >= len(packet):
            return None
        length = packet[offset]
        offset += 1
        if length == 0:
            break
        if length & 0xC0 or offset + length > len(packet):
            return None  # compression in a question: not from a sane client
        labels.append(packet[offset : offset + length].decode("ascii", "replace"))
        offset += length
    if offset + 4 > len(packet):
        return None
    qtype, qclass = struct.unpack("!HH", packet[offset : offset + 4])
    return Question(ident, flags, ".".join(labels).lower(), qtype, qclass, offset + 4)


def encode_name(name: str) -> bytes:
    """A domain name in DNS wire format."""
    out = b""
    for label in name.rstrip(".").split("."):
        if label:
            out += bytes([len(label)]) + label.encode("ascii", "replace")[:63]
    return out + b"\0"


def reply(
    packet: bytes, question: Question, records: Sequence[tuple[int, bytes]] = (), rcode: int = 0
) -> bytes:
    """A response to question, authoritative, with records as (type, rdata) answers for
    the question's own name."""
    flags = 0x8000 | 0x0400 | (question.flags & 0x0100) | 0x0080 | rcode  # QR AA RD RA
    header = struct.pack("!HHHHHH", question.ident, flags, 1, len(records), 0, 0)
    body = packet[12 : question.end]
    for rtype, rdata in records:
        body += struct.pack("!HHHIH", 0xC00C, rtype, CLASS_IN, TTL, len(rdata)) + rdata
    return header + body


def answer(packet: bytes, question: Question, address: str | None) -> bytes:
    """A response to question: one A record when address is given, else none (NOERROR)."""
    return reply(packet, question, [(TYPE_A, socket.inet_aton(address))] if address else [])


def servfail(packet: bytes, question: Question) -> bytes:
    return reply(packet, question, rcode=RCODE_SERVFAIL)


def reverse_address(name: str) -> str | None:
    """10.89.0.5 for 5.0.89.10.in-addr.arpa, else None."""
    if not name.endswith(".in-addr.arpa"):
        return None
    parts = name[: -len(".in-addr.arpa")].split(".")
    if len(parts) != 4 or not all(p.isdigit() and int(p) < 256 for p in parts):
        return None
    return ".".join(reversed(parts))


# ------------------------------------------------------------------ records


class Records:
    """Names per network, and which networks each container is on."""

    def __init__(self) -> None:
        self.gateways: dict[str, str] = {}  # gateway -> network id
        self.internal: set[str] = set()  # network ids without egress
        self.names: dict[str, dict[str, str]] = {}  # network id -> name -> ip
        self.reverse: dict[str, dict[str, str]] = {}  # network id -> ip -> first name
        self.owner: dict[tuple[str, str], str] = {}  # (network id, ip) -> container id
        self.networks_of: dict[str, list[str]] = {}  # container id -> network ids
        self.servers: dict[str, list[str]] = {}  # container id -> its --dns servers

    @property
    def listen(self) -> list[str]:
        return sorted(self.gateways)

    def scope(self, gateway: str, client_ip: str) -> tuple[list[str], str | None]:
        """The networks whose names the client sees, and the client's container id: all
        networks of its container, the one asked first; just that one for a stranger
        (the host itself, say)."""
        network = self.gateways.get(gateway)
        if network is None:
            return [], None
        container = self.owner.get((network, client_ip))
        if container is None:
            return [network], None
        others = [n for n in self.networks_of.get(container, []) if n != network]
        return [network, *others], container

    def address(self, networks: Iterable[str], name: str) -> str | None:
        for network in networks:
            ip = self.names.get(network, {}).get(name)
            if ip is not None:
                return ip
        return None

    def name_of(self, networks: Iterable[str], ip: str) -> str | None:
        for network in networks:
            name = self.reverse.get(network, {}).get(ip)
            if name is not None:
                return name
        return None


def render_records(
    networks: Iterable[tuple[str, str, bool]],
    endpoints: Iterable[tuple[str, str, str, Sequence[str]]],
    servers: dict[str, list[str]] | None = None,
) -> str:
    """The records file: networks as (id, gateway, internal), endpoints as (network id,
    container id, ip, names), servers as container id -> --dns servers."""
    lines = [
        f"net {nid} {gw} {'internal' if internal else 'external'}" for nid, gw, internal in networks
    ]
    for nid, cid, ip, names in endpoints:
        clean = [n.lower().rstrip(".") for n in names if n and not any(c.isspace() for c in n)]
        lines.append(" ".join(["ep", nid, cid, ip, *clean]))
    for cid, addresses in sorted((servers or {}).items()):
        if addresses:
            lines.append(" ".join(["dns", cid, *addresses]))
    return "".join(line + "\n" for line in lines)


def parse_records(text: str) -> Records:
    """The inverse of render_records; lines it does not know are skipped."""
    records = Records()
    for line in text.splitlines():
        parts = line.split()
        if len(parts) == 4 and parts[0] == "net":
            records.gateways[parts[2]] = parts[1]
            if parts[3] == "internal":
                records.internal.add(parts[1])
            records.names.setdefault(parts[1], {})
            records.reverse.setdefault(parts[1], {})
        elif len(parts) >= 4 and parts[0] == "ep":
            nid, cid, ip, names = parts[1], parts[2], parts[3], parts[4:]
            table = records.names.setdefault(nid, {})
            for name in names:
                table.setdefault(name, ip)
            if names:
                records.reverse.setdefault(nid, {}).setdefault(ip, names[0])
            records.owner[(nid, ip)] = cid
            records.networks_of.setdefault(cid, []).append(nid)
        elif len(parts) >= 3 and parts[0] == "dns":
            records.servers[parts[1]] = parts[2:]
    return records


# ------------------------------------------------------------------ upstreams


def host_resolvers(resolv_conf: str = "/etc/resolv.conf") -> list[str]:
    """The host's IPv4 nameservers, for forwarding. Loopback ones (127.0.0.53 of
    systemd-resolved, a local dnsmasq) stay: the server lives in the host's network
    namespace, so it reaches them, as Docker's resolver does since 26.0."""
    servers = []
    try:
        with open(resolv_conf) as f:
            for line in f:
                parts = line.split()
                if len(parts) >= 2 and parts[0] == "nameserver" and ":" not in parts[1]:
                    servers.append(parts[1])
    except OSError:
        pass
    return servers


def forward(packet: bytes, upstreams: Sequence[tuple[str, int]]) -> bytes | None:
    """Ask each upstream in turn over UDP; the first answer wins."""
    for upstream in upstreams:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
            sock.settimeout(FORWARD_TIMEOUT)
            try:
                sock.connect(upstream)  # only the upstream's own replies get through
                sock.send(packet)
                return sock.recv(MAX_MESSAGE)
            except OSError:
                continue
    return None


def forward_tcp(packet: bytes, upstreams: Sequence[tuple[str, int]]) -> bytes | None:
    """Ask each upstream in turn over TCP (for clients that asked over TCP)."""
    for upstream in upstreams:
        try:
            with socket.create_connection(upstream, timeout=FORWARD_TIMEOUT) as sock:
                sock.sendall(struct.pack("!H", len(packet)) + packet)
                got = read_tcp_message(sock)
        except OSError:
            continue
        if got is not None and got[:2] == packet[:2]:
            return got
    return None


def read_tcp_message(sock: socket.socket) -> bytes | None:
    """One length-prefixed DNS message from a stream, None at its end."""
    head = _read_exactly(sock, 2)
    if head is None:
        return None
    return _read_exactly(sock, struct.unpack("!H", head)[0])


def _read_exactly(sock: socket.socket, size: int) -> bytes | None:
    data = b""
    while len(data) < size:
        chunk = sock.recv(size - len(data))
        if not chunk:
            return None
        data += chunk
    return data


# ------------------------------------------------------------------ answering


def local_reply(
    packet: bytes,
    question: Question,
    address: Callable[[str], str | None],
    name_of: Callable[[str], str | None] = lambda ip: None,
) -> bytes | None:
    """The answer from the networks' own names, or None: not ours, forward it."""
    if question.qclass != CLASS_IN:
        return None
    ip = reverse_address(question.name) if question.qtype == TYPE_PTR else None
    if ip is not None:
        name = name_of(ip)
        return None if name is None else reply(packet, question, [(TYPE_PTR, encode_name(name))])
    found = address(question.name)
    if found is None:
        return None
    return answer(packet, question, found if question.qtype == TYPE_A else None)


def handle(
    packet: bytes, lookup: Callable[[str], str | None], upstreams: Sequence[tuple[str, int]]
) -> bytes | None:
    """The reply to one query (None: stay silent, the client retries or gives up)."""
    question = parse_question(packet)
    if question is None:
        return None
    local = local_reply(packet, question, lookup)
    if local is not None:
        return local
    return forward(packet, upstreams) or servfail(packet, question)
