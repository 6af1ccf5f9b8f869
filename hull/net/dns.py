"""Embedded DNS for user networks: container names and aliases -> addresses.

One small UDP responder per network, bound to the network's gateway address on the host
(like podman's aardvark-dns), so it can forward every other name to the host's own
resolvers, loopback ones included. Names come from a callable, so the responder always
answers from the engine's current endpoints. A queries for known names get an answer;
AAAA and other types for known names get an empty NOERROR; the rest is forwarded.
"""

from __future__ import annotations

import socket
import struct
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass

TYPE_A = 1
CLASS_IN = 1
TTL = 0  # containers come and go: never let a stale address be cached
FORWARD_TIMEOUT = 2.0


@dataclass(frozen=True)
class Question:
    ident: int
    flags: int
    name: str  # lower case, no trailing dot
    qtype: int
    qclass: int
    end: int  # offset just past the question


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


def answer(packet: bytes, question: Question, address: str | None) -> bytes:
    """A response to question: one A record when address is given, else none (NOERROR)."""
    flags = 0x8000 | 0x0400 | (question.flags & 0x0100) | 0x0080  # QR AA RD(copied) RA
    count = 1 if address else 0
    header = struct.pack("!HHHHHH", question.ident, flags, 1, count, 0, 0)
    body = packet[12 : question.end]
    if address:
        body += struct.pack("!HHHIH", 0xC00C, TYPE_A, CLASS_IN, TTL, 4)
        body += socket.inet_aton(address)
    return header + body


def host_resolvers(resolv_conf: str = "/etc/resolv.conf") -> list[str]:
    """The host's IPv4 nameservers, for forwarding."""
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


Lookup = Callable[[str], str | None]


def forward(packet: bytes, upstreams: Sequence[tuple[str, int]]) -> bytes | None:
    """Ask each upstream in turn; the first answer wins."""
    for upstream in upstreams:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
            sock.settimeout(FORWARD_TIMEOUT)
            try:
                sock.sendto(packet, upstream)
                reply, _ = sock.recvfrom(4096)
                return reply
            except OSError:
                continue
    return None


def handle(packet: bytes, lookup: Lookup, upstreams: Sequence[tuple[str, int]]) -> bytes | None:
    """The reply to one query (None: stay silent, the client retries or gives up)."""
    question = parse_question(packet)
    if question is None:
        return None
    if question.qclass == CLASS_IN:
        address = lookup(question.name)
        if address is not None:
            return answer(packet, question, address if question.qtype == TYPE_A else None)
    return forward(packet, upstreams)


class DNSServer:
    """A UDP responder on (ip, port); each query is answered in its own thread so a slow
    upstream never holds up names the network knows itself."""

    def __init__(
        self,
        ip: str,
        lookup: Lookup,
        upstreams: Sequence[tuple[str, int]] | None = None,
        port: int = 53,
    ) -> None:
        self.lookup = lookup
        self.upstreams = list(
            upstreams if upstreams is not None else [(s, 53) for s in host_resolvers()]
        )
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind((ip, port))
        self.address = self.sock.getsockname()
        self._thread: threading.Thread | None = None

    def serve_forever(self) -> None:
        while True:
            try:
                packet, client = self.sock.recvfrom(4096)
            except OSError:
                return  # closed
            threading.Thread(target=self._reply, args=(packet, client), daemon=True).start()

    def _reply(self, packet: bytes, client: tuple[str, int]) -> None:
        reply = handle(packet, self.lookup, self.upstreams)
        if reply is not None:
            try:
                self.sock.sendto(reply, client)
            except OSError:
                pass

    def start(self) -> DNSServer:
        self._thread = threading.Thread(target=self.serve_forever, name="hull-dns", daemon=True)
        self._thread.start()
        return self

    def close(self) -> None:
        try:
            self.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self.sock.close()
        if self._thread is not None:
            self._thread.join(timeout=5)
