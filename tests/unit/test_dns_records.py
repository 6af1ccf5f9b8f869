"""The embedded DNS server's records and answers: who sees which names, what is
forwarded where (no sockets but the server's unix control socket in a temp dir)."""

from __future__ import annotations

import socket
import struct

from hull.net import dns, dnsd

NET_A, NET_B = "a" * 64, "b" * 64
WEB, DB, OTHER = "1" * 64, "2" * 64, "3" * 64

RECORDS = dns.render_records(
    [(NET_A, "10.89.0.1", False), (NET_B, "10.89.1.1", True)],
    [
        (NET_A, WEB, "10.89.0.2", ["web", "Cache.", "111111111111"]),
        (NET_A, DB, "10.89.0.3", ["db"]),
        (NET_B, DB, "10.89.1.3", ["db", "store"]),
        (NET_B, OTHER, "10.89.1.4", ["other"]),
    ],
    {DB: ["192.0.2.53"], WEB: []},
)


def query(name: str, qtype: int = dns.TYPE_A) -> bytes:
    header = struct.pack("!HHHHHH", 0x4242, 0x0100, 1, 0, 0, 0)
    return header + dns.encode_name(name) + struct.pack("!HH", qtype, dns.CLASS_IN)


def answers(reply: bytes) -> tuple[int, int]:
    """(rcode, answer count)"""
    return reply[3] & 0x0F, struct.unpack("!H", reply[6:8])[0]


def test_records_round_trip() -> None:
    records = dns.parse_records(RECORDS)
    assert records.listen == ["10.89.0.1", "10.89.1.1"]
    assert records.internal == {NET_B}
    assert records.names[NET_A] == {"web": "10.89.0.2", "cache": "10.89.0.2",
                                    "111111111111": "10.89.0.2", "db": "10.89.0.3"}  # fmt: skip
    assert records.servers == {DB: ["192.0.2.53"]}  # no line for an empty list
    assert records.reverse[NET_B]["10.89.1.3"] == "db"


def test_a_container_sees_the_names_of_all_its_networks_and_only_those() -> None:
    records = dns.parse_records(RECORDS)
    networks, container = records.scope("10.89.0.1", "10.89.0.3")
    assert (networks, container) == ([NET_A, NET_B], DB)
    assert records.address(networks, "other") == "10.89.1.4"
    networks, container = records.scope("10.89.0.1", "10.89.0.2")
    assert container == WEB and records.address(networks, "other") is None
    networks, container = records.scope("10.89.1.1", "10.89.1.4")
    assert records.address(networks, "web") is None
    assert records.address(networks, "db") == "10.89.1.3"  # its own network's address
    # The host (or any address the records do not know) sees the asked network only.
    assert records.scope("10.89.0.1", "10.89.0.1") == ([NET_A], None)
    assert records.scope("192.0.2.1", "10.89.0.2") == ([], None)


def test_local_replies() -> None:
    records = dns.parse_records(RECORDS)
    nets = [NET_A]

    def local(name: str, qtype: int = dns.TYPE_A) -> bytes | None:
        packet = query(name, qtype)
        question = dns.parse_question(packet)
        assert question is not None
        return dns.local_reply(
            packet,
            question,
            lambda n: records.address(nets, n),
            lambda ip: records.name_of(nets, ip),
        )

    reply = local("CACHE")
    assert reply is not None and answers(reply) == (0, 1)
    assert socket.inet_ntoa(reply[-4:]) == "10.89.0.2"
    reply = local("web", dns.TYPE_AAAA)
    assert reply is not None and answers(reply) == (0, 0)  # known name, no IPv6 address
    reply = local("2.0.89.10.in-addr.arpa", dns.TYPE_PTR)
    assert reply is not None and answers(reply) == (0, 1)
    assert reply.endswith(dns.encode_name("web"))
    assert local("9.0.89.10.in-addr.arpa", dns.TYPE_PTR) is None  # not ours: forwarded
    assert local("example.org") is None


def test_reverse_address() -> None:
    assert dns.reverse_address("5.0.89.10.in-addr.arpa") == "10.89.0.5"
    assert dns.reverse_address("5.0.89.in-addr.arpa") is None
    assert dns.reverse_address("300.0.89.10.in-addr.arpa") is None
    assert dns.reverse_address("example.org") is None


def test_servfail_keeps_the_question() -> None:
    packet = query("x.example")
    question = dns.parse_question(packet)
    assert question is not None
    reply = dns.servfail(packet, question)
    assert answers(reply) == (dns.RCODE_SERVFAIL, 0)
    assert reply[12:] == packet[12:] and reply[:2] == packet[:2]


def test_server_decides_local_forward_or_fail(tmp_path) -> None:
    resolv = tmp_path / "resolv.conf"
    resolv.write_text("nameserver 127.0.0.53\nnameserver 10.89.0.1\n")
    (tmp_path / dnsd.RECORDS).write_text(RECORDS)
    server = dnsd.Server(str(tmp_path), str(resolv), port=0)
    try:
        server.records = dns.parse_records(RECORDS)  # as load() would, without binding
        server.sockets = {"10.89.0.1": (socket.socket(), socket.socket())}
        now, upstreams, question = server.decide(query("web"), "10.89.0.1", "10.89.0.3")
        assert now is not None and socket.inet_ntoa(now[-4:]) == "10.89.0.2"
        # db's own --dns server, not the host's.
        now, upstreams, question = server.decide(query("example.org"), "10.89.0.1", "10.89.0.3")
        assert now is None and upstreams == [("192.0.2.53", 53)] and question is not None
        # web: the host's resolvers, loopback included, never the server itself.
        now, upstreams, _ = server.decide(query("example.org"), "10.89.0.1", "10.89.0.2")
        assert now is None and upstreams == [("127.0.0.53", 53)]
        # other is on an --internal network only: no way out.
        now, upstreams, _ = server.decide(query("example.org"), "10.89.1.1", "10.89.1.4")
        assert now is not None and answers(now)[0] == dns.RCODE_SERVFAIL and upstreams == []
        assert server.decide(b"junk", "10.89.0.1", "10.89.0.2") == (None, [], None)
        assert server.decide(query("web"), "10.99.0.1", "10.99.0.2") == (None, [], None)
    finally:
        for pair in server.sockets.values():
            for sock in pair:
                sock.close()
        server.sockets = {}
        server.close()
    assert not (tmp_path / dnsd.CONTROL).exists()


def test_host_resolvers_keep_loopback_and_skip_ipv6(tmp_path) -> None:
    conf = tmp_path / "resolv.conf"
    conf.write_text("search x\nnameserver 127.0.0.53\nnameserver fd00::1\nnameserver 192.0.2.1\n")
    assert dns.host_resolvers(str(conf)) == ["127.0.0.53", "192.0.2.1"]
    assert dns.host_resolvers(str(tmp_path / "missing")) == []
