"""`hull` with networks, end to end: user networks, names, published ports, isolation,
`hull network` verbs, and nothing left behind.

Each test runs its own Hull root with its own nft table, default bridge name and
subnets (HULL_NFT_TABLE, HULL_BRIDGE, HULL_BRIDGE_SUBNET), creates networks on random
/24s of 10.213.0.0/16, and removes all of it. Traffic goes only to 127.0.0.1 and to
addresses inside the test's own networks.
"""

from __future__ import annotations

import json
import os
import random
import secrets
import socket
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from hull.engine.db import Database
from hull.net import links, nft
from tests.integration.engine_helpers import Hull, overlay_mounts_under, shim_pids

CONNECT_TRIES = "50"  # client retries (0.1 s apart) while a server container starts


def _tag() -> str:
    return secrets.token_hex(3)


@dataclass
class NetHull:
    """The CLI plus the names this test made, for the clean-up checks."""

    hull: Hull
    table: str
    default_bridge: str
    networks: list[str] = field(default_factory=list)

    def __call__(self, *args: str, **kw):
        return self.hull(*args, **kw)

    def ok(self, *args: str, **kw) -> str:
        return self.hull.ok(*args, **kw)

    def network(self, *extra: str) -> str:
        """A user network on a free random /24 of 10.213.0.0/16; its name."""
        name = f"tnet{_tag()}"
        for _ in range(50):
            subnet = f"10.213.{random.randrange(256)}.0/24"
            result = self.hull("network", "create", "--subnet", subnet, *extra, name)
            if result.returncode == 0:
                self.networks.append(name)
                return name
            assert "overlaps" in result.stderr, result.stderr
        raise AssertionError("no free test subnet")

    def inspect(self, ref: str) -> dict:
        return json.loads(self.ok("inspect", ref))[0]

    def network_inspect(self, ref: str) -> dict:
        return json.loads(self.ok("network", "inspect", ref))[0]

    def bridges(self) -> list[str]:
        return [
            self.network_inspect(n)["Options"]["com.docker.network.bridge.name"]
            for n in self.ok("network", "ls", "-q", "--no-trunc").split()
        ]


def net_rows(hull: Hull) -> dict[str, int]:
    db = Database(hull.paths.db)
    try:
        return {
            table: db.execute(f"SELECT count(*) FROM {table}").fetchone()[0]
            for table in ("net_endpoints", "net_leases", "net_ports")
        }
    finally:
        db.close()


def port_elements(table: str) -> list[str]:
    """The elements of the DNAT maps (ports_any, ports_ip) in the test's nft table."""
    found: list[str] = []
    current = None
    for line in nft.list_table(table).splitlines():
        text = line.strip()
        if text.startswith("map "):
            current = text.split()[1]
        elif text == "}":
            current = None
        elif current in ("ports_any", "ports_ip") and text.startswith("elements"):
            found.append(text)
    return found


def assert_no_network_state(h: NetHull, bridges: list[str]) -> None:
    assert net_rows(h.hull) == {"net_endpoints": 0, "net_leases": 0, "net_ports": 0}
    for bridge in bridges:
        # rm takes a veth down and drops its namespace; the kernel deletes the pair
        # with the namespace, in the background (tens of ms)
        deadline = time.monotonic() + 10
        while links.bridge_ports(bridge) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert links.bridge_ports(bridge) == [], bridge
    assert port_elements(h.table) == []
    netns = Path(h.hull.paths.runroot) / "netns"
    assert not netns.exists() or list(netns.iterdir()) == []


@pytest.fixture
def net(hull_paths, monkeypatch: pytest.MonkeyPatch) -> Iterator[NetHull]:
    table = f"hulltest{_tag()}"
    bridge = f"hulltb{_tag()}"
    monkeypatch.setenv("HULL_NFT_TABLE", table)
    monkeypatch.setenv("HULL_BRIDGE", bridge)
    monkeypatch.setenv("HULL_BRIDGE_SUBNET", f"10.213.{random.randrange(256)}.0/24")
    h = Hull(hull_paths)
    h.ok("image", "bootstrap", "busybox")
    env = NetHull(h, table, bridge)
    try:
        yield env
    finally:
        ids = h("ps", "-aq", "--no-trunc").stdout.split()
        if ids:
            h("rm", "-f", *ids)
        bridges = env.bridges()
        try:
            assert_no_network_state(env, bridges)
        finally:
            for name in h("network", "ls", "-q", "--no-trunc").stdout.split():
                h("network", "rm", name)
            for bridge in bridges:
                links.delete_link(bridge)
            nft.delete_table(table)
            leftover = shim_pids(hull_paths.runroot)
            for pid in leftover:
                try:
                    os.kill(pid, 9)
                except ProcessLookupError:
                    pass
        assert overlay_mounts_under(hull_paths.root) == []
        assert leftover == []
        assert not links.link_exists(bridge)


def retry_client(command: str) -> str:
    """A shell loop that retries command until it succeeds (the server may be starting)."""
    return f"for i in $(seq {CONNECT_TRIES}); do {command} && exit 0; sleep 0.1; done; exit 1"


def http_get(port: int, timeout: float = 10.0, host: str = "127.0.0.1") -> str:
    """GET / from host:port, retrying while the container's server starts."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            with socket.create_connection((host, port), timeout=2) as conn:
                conn.sendall(b"GET / HTTP/1.0\r\n\r\n")
                data = b""
                while chunk := conn.recv(4096):
                    data += chunk
            if data:
                return data.decode(errors="replace")
        except OSError:
            pass
        if time.monotonic() > deadline:
            raise AssertionError(f"nothing answered on 127.0.0.1:{port}")
        time.sleep(0.1)


HTTPD = "mkdir -p /www && echo hello-from-hull > /www/index.html && exec httpd -f -p 80 -h /www"


def test_two_containers_on_a_user_network_talk_by_name(net: NetHull) -> None:
    network = net.network()
    server = f"srv{_tag()}"
    net.ok("run", "-d", "--name", server, "--network", network, "busybox", "nc", "-l", "-p", "7000")
    client = net(
        "run", "--rm", "--network", network, "busybox",
        "sh", "-c", retry_client(f"echo hi | nc {server} 7000"),
    )  # fmt: skip
    assert client.returncode == 0, client.stderr
    assert net.ok("wait", server).strip() == "0"
    assert net.ok("logs", server) == "hi\n"
    doc = net.inspect(server)
    assert doc["HostConfig"]["NetworkMode"] == network
    assert doc["NetworkSettings"]["Networks"][network]["IPAddress"] == ""  # exited: no address


def test_names_resolve_both_ways_and_aliases_work(net: NetHull) -> None:
    network = net.network()
    first = f"one{_tag()}"
    net.ok("run", "-d", "--name", first, "--network", network, "busybox", "sleep", "60")
    second = f"two{_tag()}"
    net.ok(
        "run", "-d", "--name", second, "--network", network, "--network-alias", "db",
        "busybox", "sleep", "60",
    )  # fmt: skip
    # The earlier container's /etc/hosts learnt the later one's names in place.
    hosts = net.ok("exec", first, "cat", "/etc/hosts")
    two_ip = net.inspect(second)["NetworkSettings"]["Networks"][network]["IPAddress"]
    entry = next(line.split() for line in hosts.splitlines() if line.startswith(two_ip + "\t"))
    assert second in entry and "db" in entry
    assert net.ok("exec", first, "ping", "-c", "1", "-W", "2", "db").count("1 packets received")
    net.ok("rm", "-f", second)
    assert second not in net.ok("exec", first, "cat", "/etc/hosts")


def test_published_port_answers_on_loopback(net: NetHull) -> None:
    network = net.network()
    name = f"web{_tag()}"
    net.ok("run", "-d", "--name", name, "--network", network, "-p", "80", "busybox",
           "sh", "-c", HTTPD)  # fmt: skip
    lines = net.ok("port", name).splitlines()
    assert len(lines) == 1 and lines[0].startswith("80/tcp -> 0.0.0.0:")
    port = int(lines[0].rpartition(":")[2])
    assert net.ok("port", name, "80/tcp").strip() == f"0.0.0.0:{port}"
    missing = net("port", name, "81")
    assert missing.returncode == 1 and "no public port '81/tcp'" in missing.stderr
    assert "hello-from-hull" in http_get(port)
    assert len(port_elements(net.table)) == 1
    settings = net.inspect(name)["NetworkSettings"]
    assert settings["Ports"] == {"80/tcp": [{"HostIp": "0.0.0.0", "HostPort": str(port)}]}


def test_published_port_answers_at_the_hosts_own_address(net: NetHull) -> None:
    """Not only loopback: an address of the host's own. A dummy link of this test's own
    carries it (an empty bridge; TEST-NET-1, /32): nothing leaves the host, no real NIC
    is touched."""
    from pyroute2 import IPRoute

    dummy, address = f"hdum{_tag()}", f"192.0.2.{random.randrange(2, 250)}"
    with IPRoute() as ipr:
        ipr.link("add", ifname=dummy, kind="bridge")  # no dummy module on every kernel
        index = ipr.link_lookup(ifname=dummy)[0]
        ipr.addr("add", index=index, address=address, prefixlen=32)
        ipr.link("set", index=index, state="up")
    try:
        name = f"web{_tag()}"
        net.ok("run", "-d", "--name", name, "--network", net.network(), "-p", "80",
               "busybox", "sh", "-c", HTTPD)  # fmt: skip
        port = int(net.ok("port", name, "80/tcp").strip().rpartition(":")[2])
        assert "hello-from-hull" in http_get(port, host=address)
        assert "hello-from-hull" in http_get(port)
    finally:
        links.delete_link(dummy)


def test_taken_host_port_fails_clearly_and_leaves_nothing(net: NetHull) -> None:
    network = net.network()
    bridge = net.network_inspect(network)["Options"]["com.docker.network.bridge.name"]
    with socket.create_server(("127.0.0.1", 0)) as holder:
        port = holder.getsockname()[1]
        result = net(
            "run", "--rm", "--network", network, "-p", f"127.0.0.1:{port}:80", "busybox", "true"
        )  # fmt: skip
    assert result.returncode == 125
    assert f"127.0.0.1:{port}/tcp" in result.stderr and "already in use" in result.stderr
    assert net.ok("ps", "-aq") == ""
    assert_no_network_state(net, [bridge])


def test_containers_on_different_networks_cannot_reach_each_other(net: NetHull) -> None:
    front, back = net.network(), net.network()
    server = f"srv{_tag()}"
    net.ok(
        "run", "-d", "--name", server, "--network", front, "busybox",
        "sh", "-c", "while true; do echo pong | nc -l -p 7000; done",
    )  # fmt: skip
    ip = net.inspect(server)["NetworkSettings"]["Networks"][front]["IPAddress"]
    ask = f"nc -w 2 {ip} 7000 </dev/null | grep -q pong"
    same = net("run", "--rm", "--network", front, "busybox", "sh", "-c", retry_client(ask))
    assert same.returncode == 0, same.stderr  # the server answers its own network
    other = net("run", "--rm", "--network", back, "busybox",
                "sh", "-c", f"nc -w 2 {ip} 7000 </dev/null")  # fmt: skip
    assert other.returncode != 0 and "pong" not in other.stdout


def test_run_rm_cycles_with_ports_leave_nothing(net: NetHull) -> None:
    network = net.network()
    bridge = net.network_inspect(network)["Options"]["com.docker.network.bridge.name"]
    for _ in range(100):
        net.ok("run", "--rm", "--network", network, "-p", "80", "-p", "53/udp", "busybox", "true")
    assert net.ok("ps", "-aq") == ""
    assert_no_network_state(net, [bridge])


def test_default_bridge_gives_an_address_and_a_route(net: NetHull) -> None:
    out = net.ok("run", "--rm", "--network", "bridge", "--add-host", "gw:host-gateway",
                 "--dns", "10.213.0.53", "busybox",
                 "sh", "-c", "ip route; cat /etc/hosts /etc/resolv.conf")  # fmt: skip
    gateway = net.network_inspect("bridge")["IPAM"]["Config"][0]["Gateway"]
    assert f"default via {gateway} dev eth0" in out
    assert f"{gateway}\tgw" in out and "nameserver 10.213.0.53" in out
    assert net.network_inspect("bridge")["Options"]["com.docker.network.bridge.name"] == (
        net.default_bridge
    )


def test_network_verbs_and_connect_disconnect(net: NetHull) -> None:
    front = net.network("--label", "tier=front")
    back = net.network()
    listing = net.ok("network", "ls").splitlines()
    assert listing[0].split() == ["NETWORK", "ID", "NAME", "DRIVER", "SCOPE"]
    assert any(line.split()[1:] == [front, "bridge", "local"] for line in listing[1:])
    assert net.ok("network", "ls", "-q", "-f", f"name={front}").split() == [
        net.network_inspect(front)["Id"][:12]
    ]
    assert net.ok("network", "ls", "--format", "{{.Name}}", "-f", "label=tier=front") == (
        front + "\n"
    )
    dup = net("network", "create", front)
    assert dup.returncode == 125 and "already exists" in dup.stderr
    name = f"box{_tag()}"
    cid = net.ok("run", "-d", "--name", name, "--network", front, "busybox", "sleep", "60").strip()
    net.ok("network", "connect", "--alias", "cache", back, name)
    assert "eth1" in net.ok("exec", name, "ip", "-o", "addr")
    networks = net.inspect(name)["NetworkSettings"]["Networks"]
    assert set(networks) == {front, back} and "cache" in networks[back]["Aliases"]
    assert net.network_inspect(back)["Containers"][cid]["Name"] == name
    busy = net("network", "rm", back)
    assert busy.returncode == 1 and "active endpoints" in busy.stderr
    net.ok("network", "disconnect", back, name)
    assert "eth1" not in net.ok("exec", name, "ip", "-o", "addr")
    assert net.network_inspect(back)["Containers"] == {}
    net.ok("rm", "-f", name)
    pruned = net.ok("network", "prune", "-f").splitlines()
    assert pruned[0] == "Deleted Networks:" and set(pruned[1:]) == {front, back}
    assert net.ok("network", "ls", "-q") == ""
    missing = net("network", "inspect", front)
    assert missing.returncode == 1 and "not found" in missing.stderr


def test_container_network_mode_shares_the_namespace(net: NetHull) -> None:
    network = net.network()
    server = f"srv{_tag()}"
    net.ok("run", "-d", "--name", server, "--network", network, "busybox", "sleep", "60")
    ip = net.inspect(server)["NetworkSettings"]["Networks"][network]["IPAddress"]
    out = net.ok("run", "--rm", "--network", f"container:{server}", "busybox", "ip", "-o", "addr")
    assert f"inet {ip}/" in out


def test_sweep_undoes_a_start_killed_half_way(net: NetHull) -> None:
    """A `hull` killed after connecting a container but before starting it: the next
    hull command (its reconcile) finds the state of a container nobody is starting."""
    from hull.engine import netsetup
    from hull.engine.containers import ContainerService

    network = net.network()
    bridge = net.network_inspect(network)["Options"]["com.docker.network.bridge.name"]
    cid = net.ok("create", "--network", network, "-p", "80", "busybox", "true").strip()
    with ContainerService(net.hull.paths) as service:
        record = service.get(cid)
        netsetup.setup(
            service.paths, service.db, cid, record.name, record.run, {},
            service.layout(record).dir, [],
        )  # fmt: skip
    assert net_rows(net.hull)["net_ports"] == 1 and links.bridge_ports(bridge) != []
    assert len(port_elements(net.table)) == 1
    net.ok("ps")
    assert_no_network_state(net, [bridge])
    assert net.ok("ps", "-aq", "--no-trunc").strip() == cid  # the container itself stays
