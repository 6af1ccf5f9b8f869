"""hull.net on the real kernel: netns, bridges, veths, NAT, isolation, published ports.

Each test has its own state database, nft table, bridge names, /24 subnets and network
namespaces, and removes all of them. Traffic stays on loopback and inside namespaces the
tests create; the "outside world" for egress is one more namespace behind a veth.
"""

from __future__ import annotations

import ipaddress
import os
import random
import secrets
import socket
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from pyroute2 import IPRoute

from hull.engine.db import Database
from hull.errors import HullError, StateError
from hull.net import links, nft
from hull.net.netns import create_netns, delete_netns, netns_exists, run_in_netns
from hull.net.networks import Network, NetworkService
from hull.net.ports import PortSpec
from hull.paths import HullPaths

TIMEOUT = 5.0
BLOCKED_TIMEOUT = 1.0


def _tag() -> str:
    return secrets.token_hex(3)


@dataclass
class NetEnv:
    """A NetworkService of the test's own, plus what the test made beside it."""

    service: NetworkService
    tmp: Path
    netns: list[str] = field(default_factory=list)
    host_links: list[str] = field(default_factory=list)

    def network(self, internal: bool = False) -> Network:
        """A network on a random free /24 of 10.213.0.0/16 (parallel tests pick others)."""
        for _ in range(50):
            subnet = f"10.213.{random.randrange(256)}.0/24"
            try:
                return self.service.create(
                    f"net{_tag()}", subnet, internal=internal, bridge=f"hulltest{_tag()}"
                )
            except StateError as e:
                if "overlaps" not in str(e):
                    raise
        raise AssertionError("no free test subnet")

    def ns(self) -> str:
        path = str(self.tmp / "netns" / f"c{_tag()}")
        create_netns(path)
        self.netns.append(path)
        return path


@pytest.fixture
def env(tmp_path: Path) -> Iterator[NetEnv]:
    paths = HullPaths(tmp_path / "lib", tmp_path / "run")
    db = Database(paths.db)
    table = f"hulltest{_tag()}"
    service = NetworkService(paths, db, table=table, default_bridge=f"hulltest{_tag()}")
    environment = NetEnv(service, tmp_path)
    try:
        yield environment
    finally:
        for network in service.list():
            for (cid,) in db.execute(
                "SELECT container_id FROM net_endpoints WHERE network_id = ?", (network.id,)
            ).fetchall():
                service.disconnect_all(cid)
            service.remove(network.id)
        for name in environment.host_links:
            links.delete_link(name)
        for path in environment.netns:
            delete_netns(path)
        nft.delete_table(table)
        db.close()


def _cid() -> str:
    return secrets.token_hex(32)


def serve_in(netns: str, ip: str, port: int = 7000) -> tuple[socket.socket, threading.Thread]:
    """A TCP server inside netns that answers each client with b"hello from " + its peer."""
    server = run_in_netns(netns, lambda: socket.create_server((ip, port)))
    server.settimeout(TIMEOUT)

    def loop() -> None:
        while True:
            try:
                conn, peer = server.accept()
            except OSError:
                return
            with conn:
                conn.sendall(f"hello from {peer[0]}".encode())

    thread = threading.Thread(target=loop, daemon=True)
    thread.start()
    return server, thread


def ask(ip: str, port: int, netns: str | None = None, timeout: float = TIMEOUT) -> str:
    """Connect (from inside netns, or from the host) and return what the server says."""

    def make() -> socket.socket:
        return socket.socket(socket.AF_INET, socket.SOCK_STREAM)

    client = run_in_netns(netns, make) if netns else make()
    with client:
        client.settimeout(timeout)
        client.connect((ip, port))
        return client.recv(100).decode()


def blocked(ip: str, port: int, netns: str) -> bool:
    try:
        ask(ip, port, netns, timeout=BLOCKED_TIMEOUT)
    except OSError:
        return True
    return False


def outside_world(env: NetEnv) -> tuple[str, str]:
    """A namespace behind a veth from the host, routing everything back through it.

    Returns (its netns path, its address); the host end holds the /30's first address.
    """
    path = env.ns()
    for _ in range(50):
        base = f"10.214.{random.randrange(256)}.{4 * random.randrange(64)}"
        prefix = base.rsplit(".", 1)[0]
        last = int(base.rsplit(".", 1)[1])
        host_ip, outside_ip = f"{prefix}.{last + 1}", f"{prefix}.{last + 2}"
        if not any(n.overlaps(ipaddress.ip_network(f"{base}/30")) for n in links.host_networks()):
            break
    host_end = f"hulltout{_tag()}"
    fd = os.open(path, os.O_RDONLY)
    try:
        with IPRoute() as ipr:
            ipr.link("add", ifname=host_end, kind="veth", peer={"ifname": "eth0", "net_ns_fd": fd})
            env.host_links.append(host_end)
            index = ipr.link_lookup(ifname=host_end)[0]
            ipr.addr("add", index=index, address=host_ip, prefixlen=30)
            ipr.link("set", index=index, state="up")
    finally:
        os.close(fd)

    def inside() -> None:
        with IPRoute() as ipr:
            index = ipr.link_lookup(ifname="eth0")[0]
            ipr.addr("add", index=index, address=outside_ip, prefixlen=30)
            ipr.link("set", index=index, state="up")
            # A way back to every container subnet: only the firewall stops traffic, and
            # the source address the outside sees tells whether NAT happened.
            ipr.route("add", dst="0.0.0.0/0", gateway=host_ip)

    run_in_netns(path, inside)
    return path, outside_ip


# ---------------------------------------------------------------------------- tests


def test_netns_create_and_delete(tmp_path: Path) -> None:
    path = str(tmp_path / "netns" / "x")
    create_netns(path)
    try:
        assert netns_exists(path)
        inner = run_in_netns(path, lambda: os.readlink("/proc/thread-self/ns/net"))
        assert inner != os.readlink("/proc/self/ns/net")
        with pytest.raises(HullError, match="already exists"):
            create_netns(path)
    finally:
        delete_netns(path)
    assert not os.path.exists(path)
    delete_netns(path)  # idempotent


def test_two_containers_on_one_network_talk(env: NetEnv) -> None:
    net = env.network()
    a, b = env.ns(), env.ns()
    ea = env.service.connect(_cid(), a, net.name, aliases=["web"])
    eb = env.service.connect(_cid(), b, net.name)
    assert (ea.ifname, ea.gateway, ea.prefixlen) == ("eth0", net.gateway, 24)
    assert ea.ip != eb.ip
    server, _ = serve_in(a, ea.ip)
    with server:
        assert ask(ea.ip, 7000, netns=b) == f"hello from {eb.ip}"
    assert "web" in dict(env.service.hosts(net.name))[ea.ip]
    inspect = env.service.inspect(net.name)
    assert {c["IPv4Address"] for c in inspect["Containers"].values()} == {
        f"{ea.ip}/24",
        f"{eb.ip}/24",
    }


def test_egress_is_masqueraded_to_an_outside_namespace(env: NetEnv) -> None:
    net = env.network()
    outside, outside_ip = outside_world(env)
    container = env.ns()
    endpoint = env.service.connect(_cid(), container, net.name)
    server, _ = serve_in(outside, outside_ip, 7100)
    with server:
        answer = ask(outside_ip, 7100, netns=container)
    # The outside sees the host's address (NAT), not the container's.
    assert answer.startswith("hello from 10.214.")
    assert endpoint.ip not in answer


def test_internal_network_has_no_egress(env: NetEnv) -> None:
    net = env.network(internal=True)
    outside, outside_ip = outside_world(env)
    a, b = env.ns(), env.ns()
    ea = env.service.connect(_cid(), a, net.name)
    env.service.connect(_cid(), b, net.name)
    server, _ = serve_in(outside, outside_ip, 7200)
    inner, _ = serve_in(a, ea.ip, 7201)
    with server, inner:
        assert blocked(outside_ip, 7200, b)
        assert ask(ea.ip, 7201, netns=b).startswith("hello")  # inside the network: fine


def test_different_networks_cannot_reach_each_other(env: NetEnv) -> None:
    one, two = env.network(), env.network()
    a, b = env.ns(), env.ns()
    ea = env.service.connect(_cid(), a, one.name)
    env.service.connect(_cid(), b, two.name)
    server, _ = serve_in(a, ea.ip, 7300)
    with server:
        assert blocked(ea.ip, 7300, b)


def test_published_port_answers_on_localhost(env: NetEnv) -> None:
    net = env.network()
    container = env.ns()
    cid = _cid()
    endpoint = env.service.connect(cid, container, net.name)
    [published] = env.service.publish(cid, endpoint.ip, [PortSpec(8080)])
    assert published.host_port > 0
    assert env.service.ports(cid) == [published]
    server, _ = serve_in(container, endpoint.ip, 8080)
    with server:
        assert ask("127.0.0.1", published.host_port).startswith("hello from")
        # Also at another address of the host: the network's own gateway.
        assert ask(net.gateway, published.host_port).startswith("hello from")
        env.service.unpublish(cid)
        with pytest.raises(OSError):
            ask("127.0.0.1", published.host_port, timeout=BLOCKED_TIMEOUT)


def test_published_port_on_a_specific_host_address(env: NetEnv) -> None:
    net = env.network()
    container = env.ns()
    cid = _cid()
    endpoint = env.service.connect(cid, container, net.name)
    [published] = env.service.publish(cid, endpoint.ip, [PortSpec(9000, host_ip="127.0.0.1")])
    server, _ = serve_in(container, endpoint.ip, 9000)
    with server:
        assert ask("127.0.0.1", published.host_port).startswith("hello from")


def test_a_taken_host_port_fails_clearly(env: NetEnv) -> None:
    net = env.network()
    container = env.ns()
    cid = _cid()
    endpoint = env.service.connect(cid, container, net.name)
    with socket.create_server(("127.0.0.1", 0)) as holder:
        port = holder.getsockname()[1]
        with pytest.raises(HullError, match="already in use"):
            env.service.publish(cid, endpoint.ip, [PortSpec(80, host_port=port)])
    assert env.service.ports(cid) == []
    [first] = env.service.publish(cid, endpoint.ip, [PortSpec(80)])
    other = _cid()
    other_ep = env.service.connect(other, env.ns(), net.name)
    with pytest.raises(HullError, match="already published"):
        env.service.publish(other, other_ep.ip, [PortSpec(80, host_port=first.host_port)])


def test_connect_disconnect_cycles_leave_nothing(env: NetEnv) -> None:
    net = env.network()
    for _ in range(50):
        path = env.ns()
        cid = _cid()
        endpoint = env.service.connect(cid, path, net.name, aliases=["c"])
        env.service.publish(cid, endpoint.ip, [PortSpec(80)])
        env.service.disconnect_all(cid)
        delete_netns(path)
        env.netns.remove(path)
    assert links.bridge_ports(net.bridge) == []
    with IPRoute() as ipr:
        assert not [
            x
            for x in ipr.get_links()
            if x.get_attr("IFLA_IFNAME").startswith("veth")
            and x.get_attr("IFLA_MASTER") == ipr.link_lookup(ifname=net.bridge)[0]
        ]
    for table in ("net_leases", "net_endpoints", "net_ports"):
        assert env.service.db.execute(f"SELECT COUNT(*) FROM {table}").fetchone()[0] == 0
    listing = nft.list_table(env.service.table)
    assert "elements" not in listing.split("chain forward")[0].split("map ports_any")[1]


def test_sweep_undoes_what_a_crash_left(env: NetEnv) -> None:
    net = env.network()
    container = env.ns()
    dead, alive = _cid(), _cid()
    endpoint = env.service.connect(dead, container, net.name)
    env.service.publish(dead, endpoint.ip, [PortSpec(80)])
    keeper = env.service.connect(alive, env.ns(), net.name)
    # A veth a crash left on the bridge with no row at all.
    stray = f"vethstray{_tag()}"[:15]
    with IPRoute() as ipr:
        ipr.link("add", ifname=stray, kind="veth", peer=stray[:-1] + "p")
        ipr.link(
            "set",
            index=ipr.link_lookup(ifname=stray)[0],
            master=ipr.link_lookup(ifname=net.bridge)[0],
        )
    env.host_links.append(stray)
    nft.delete_table(env.service.table)  # the rules went too (say, `nft flush ruleset`)
    assert env.service.sweep({alive}) == [dead]
    assert f"from-{net.bridge}" in nft.list_table(env.service.table)
    assert links.bridge_ports(net.bridge) == [keeper.host_ifname]
    assert env.service.ports(dead) == []
    assert "tcp . " not in nft.list_table(env.service.table)
    assert [e.ip for e in env.service.endpoints(alive)] == [keeper.ip]


def test_remove_refuses_a_network_in_use_and_prune_skips_it(env: NetEnv) -> None:
    used, unused = env.network(), env.network()
    cid = _cid()
    env.service.connect(cid, env.ns(), used.name)
    with pytest.raises(StateError, match="active endpoints"):
        env.service.remove(used.name)
    assert env.service.prune() == [unused.name]
    assert not links.link_exists(unused.bridge)
    assert f"from-{unused.bridge}" not in nft.list_table(env.service.table)
    env.service.disconnect(cid, used.name)
    env.service.remove(used.name)
    assert not links.link_exists(used.bridge)


def test_default_network_is_created_once(env: NetEnv) -> None:
    for _ in range(50):
        env.service.default_subnet = f"10.213.{random.randrange(256)}.0/24"
        try:
            first = env.service.ensure_default()
            break
        except StateError:
            continue
    assert env.service.ensure_default() == first
    assert first.name == "bridge" and links.link_exists(first.bridge)
