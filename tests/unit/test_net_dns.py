"""The embedded DNS responder's packet handling (no sockets but a fake upstream)."""

from __future__ import annotations

import socket
import struct

from hull.net import dns


def query(name: str, qtype: int = dns.TYPE_A, ident: int = 0x1234) -> bytes:
    header = struct.pack("!HHHHHH", ident, 0x0100, 1, 0, 0, 0)
    qname = b"".join(bytes([len(p)]) + p.encode() for p in name.split(".")) + b"\0"
    return header + qname + struct.pack("!HH", qtype, dns.CLASS_IN)


def test_parse_question() -> None:
    q = dns.parse_question(query("Web.Example"))
    assert q is not None
    assert (q.ident, q.name, q.qtype, q.qclass) == (0x1234, "web.example", dns.TYPE_A, 1)
    assert dns.parse_question(b"short") is None
    assert dns.parse_question(query("x")[:-3]) is None


def test_known_names_are_answered() -> None:
    lookup = {"web": "10.89.0.5"}.get
    reply = dns.handle(query("web"), lookup, [])
    assert reply is not None
    ident, flags, qd, an = struct.unpack("!HHHH", reply[:8])
    assert (ident, qd, an) == (0x1234, 1, 1)
    assert flags & 0x8000 and flags & 0x0400 and not flags & 0x000F  # response, AA, NOERROR
    assert socket.inet_ntoa(reply[-4:]) == "10.89.0.5"


def test_known_names_have_no_ipv6_records() -> None:
    reply = dns.handle(query("web", qtype=28), {"web": "10.89.0.5"}.get, [])
    assert reply is not None
    assert struct.unpack("!H", reply[6:8])[0] == 0


def test_unknown_names_are_forwarded() -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as upstream:
        upstream.bind(("127.0.0.1", 0))
        upstream.settimeout(5)
        sent = query("example.org")
        import threading

        def fake() -> None:
            packet, client = upstream.recvfrom(512)
            upstream.sendto(b"forwarded:" + packet, client)

        thread = threading.Thread(target=fake)
        thread.start()
        reply = dns.handle(sent, {}.get, [upstream.getsockname()])
        thread.join()
    assert reply == b"forwarded:" + sent


def test_host_resolvers(tmp_path) -> None:
    conf = tmp_path / "resolv.conf"
    conf.write_text("search x\nnameserver 192.0.2.53\nnameserver ::1\nnameserver 127.0.0.53\n")
    assert dns.host_resolvers(str(conf)) == ["192.0.2.53", "127.0.0.53"]
