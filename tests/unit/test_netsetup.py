"""hull.engine.netsetup without root: /etc files, -P, and the SQL reads of hull.net's tables."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from hull.engine import netsetup
from hull.engine.db import Database
from hull.engine.runconfig import RunConfig
from hull.errors import ConfigError, StateError
from hull.net.ports import PortSpec
from hull.paths import HullPaths

HOST_RESOLV = "# from the host\nsearch example.org\nnameserver 127.0.0.53\nnameserver 10.0.0.2\n"


def test_resolv_conf_drops_loopback_servers_in_a_namespace_of_its_own() -> None:
    text = netsetup.resolv_conf(HOST_RESOLV, [], own_namespace=True)
    assert "nameserver 10.0.0.2" in text and "127.0.0.53" not in text
    assert "search example.org" in text


def test_resolv_conf_falls_back_to_public_servers() -> None:
    text = netsetup.resolv_conf("nameserver 127.0.0.53\n", [], own_namespace=True)
    assert text.split("\n")[:2] == ["nameserver 8.8.8.8", "nameserver 8.8.4.4"]


def test_resolv_conf_dns_flag_replaces_servers() -> None:
    text = netsetup.resolv_conf(HOST_RESOLV, ["1.1.1.1"], own_namespace=True)
    assert [line for line in text.splitlines() if line.startswith("nameserver")] == [
        "nameserver 1.1.1.1"
    ]
    host = netsetup.resolv_conf(HOST_RESOLV, [], own_namespace=False)
    assert "nameserver 127.0.0.53" in host


def _endpoint(ip: str = "10.89.0.2", gateway: str = "10.89.0.1") -> netsetup.EndpointRow:
    return netsetup.EndpointRow("web", "n" * 64, ip, "02:42:00:00:00:02", gateway, 24, "veth0", ())


def test_hosts_text_lists_self_extra_hosts_and_peers_once() -> None:
    text = netsetup.hosts_text(
        "abc",
        ["db:10.0.0.5", "gw:host-gateway"],
        [_endpoint()],
        [("10.89.0.3", ["srv", "srvid"]), ("10.89.0.3", ["srv", "other"])],
    )
    lines = text.splitlines()
    assert lines[0] == "127.0.0.1\tlocalhost"
    assert "10.0.0.5\tdb" in lines and "10.89.0.1\tgw" in lines
    assert "10.89.0.2\tabc" in lines
    assert "10.89.0.3\tsrv srvid" in lines and "10.89.0.3\tother" in lines


def test_hosts_text_without_network() -> None:
    lines = netsetup.hosts_text("abc", ["gw:host-gateway"], [], []).splitlines()
    assert "127.0.1.1\tabc" in lines and not any("gw" in line for line in lines)
    host = netsetup.hosts_text("node", ["gw:host-gateway"], [], [], host_network=True)
    assert "127.0.0.1\tgw" in host.splitlines() and "127.0.1.1" not in host


def test_write_in_place_keeps_the_inode(tmp_path: Path) -> None:
    path = tmp_path / "hosts"
    path.write_text("a much longer first version\n")
    inode = path.stat().st_ino
    netsetup.write_in_place(path, "short\n")
    assert path.read_text() == "short\n" and path.stat().st_ino == inode


def test_exposed_ports_skip_what_p_already_publishes() -> None:
    image = {"ExposedPorts": {"80/tcp": {}, "53/udp": {}, "8080": {}, "bad/sctp": {}}}
    specs = netsetup.exposed_port_specs(image, [PortSpec(80, "tcp", "0.0.0.0", 8000)])
    assert specs == [PortSpec(53, "udp"), PortSpec(8080, "tcp")]
    assert netsetup.exposed_port_specs({}, []) == []


@pytest.fixture
def db(tmp_path: Path):
    database = Database(tmp_path / "hull.db")
    yield database
    database.close()


def _add_endpoint(db: Database, cid: str, net: str, ip: str, aliases: list[str]) -> None:
    if not db.execute("SELECT 1 FROM net_networks WHERE id = ?", (net * 64,)).fetchone():
        db.execute(
            "INSERT INTO net_networks (id, name, bridge, subnet, gateway, created)"
            " VALUES (?, ?, ?, '10.89.0.0/24', '10.89.0.1', 0)",
            (net * 64, "bridge" if net == "b" else f"net{net}", f"br{net}"),
        )
    db.execute(
        "INSERT INTO net_endpoints (container_id, network_id, host_ifname, ifname, mac, ip,"
        " aliases, netns_path, created) VALUES (?, ?, ?, 'eth0', 'm', ?, ?, '/x', 0)",
        (cid, net * 64, f"veth{cid[:4]}{net}", ip, json.dumps(aliases)),
    )


def test_sql_reads_of_endpoints_ports_and_peers(db: Database, tmp_path: Path) -> None:
    paths = HullPaths(tmp_path / "lib", tmp_path / "run")
    me, peer, other = "a" * 64, "c" * 64, "d" * 64
    assert not netsetup.holds_network_state(db, paths, me)
    _add_endpoint(db, me, "u", "10.89.0.2", ["me"])
    _add_endpoint(db, peer, "u", "10.89.0.3", ["peer"])
    _add_endpoint(db, other, "b", "10.89.0.4", ["stranger"])  # default bridge: no names
    db.execute("INSERT INTO net_ports VALUES ('tcp', '0.0.0.0', 8080, ?, '10.89.0.2', 80)", (me,))
    assert netsetup.holds_network_state(db, paths, me)
    assert netsetup.published_ports(db, me) == [("80/tcp", "0.0.0.0:8080")]
    assert netsetup.ports_summary(db, me) == "0.0.0.0:8080->80/tcp"
    assert netsetup.user_network_peers(db, me) == [("10.89.0.3", ["peer"])]
    assert netsetup.user_network_peers(db, other) == []
    assert netsetup.ids_with_network_state(db, paths) == {me, peer, other}
    settings = netsetup.network_settings(db, paths, me, RunConfig("busybox", network="netu"))
    assert settings["Ports"] == {"80/tcp": [{"HostIp": "0.0.0.0", "HostPort": "8080"}]}
    assert settings["Networks"]["netu"]["IPAddress"] == "10.89.0.2"
    assert settings["IPAddress"] == ""  # Docker fills it for the default bridge only
    bridge = netsetup.network_settings(db, paths, other, RunConfig("busybox", network="bridge"))
    assert bridge["IPAddress"] == "10.89.0.4" and bridge["Gateway"] == "10.89.0.1"


def test_connect_requests_docker_refuses() -> None:
    with pytest.raises(ConfigError):
        netsetup.check_connect_request(RunConfig("b", network="host"), "web")
    with pytest.raises(ConfigError):
        netsetup.check_connect_request(RunConfig("b", network="none"), "web")
    with pytest.raises(ConfigError):
        netsetup.check_connect_request(RunConfig("b", network="bridge"), "host")
    with pytest.raises(StateError):
        netsetup.check_connect_request(RunConfig("b", network="web"), "web")
    netsetup.check_connect_request(RunConfig("b", network="bridge"), "web")
