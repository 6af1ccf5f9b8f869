"""IPAM: the address choice (pure) and the leases in the state database."""

from __future__ import annotations

import ipaddress
from pathlib import Path

import pytest

from hull.engine.db import Database
from hull.errors import ConfigError, HullError
from hull.net import ipam
from hull.net.networks import mac_for, pick_subnet

NET_ID = "n" * 64


def _db(tmp_path: Path) -> Database:
    db = Database(tmp_path / "hull.db")
    db.execute(
        "INSERT INTO net_networks (id, name, bridge, subnet, gateway, created)"
        " VALUES (?, 'test', 'hulltest0', '10.213.7.0/29', '10.213.7.1', 0)",
        (NET_ID,),
    )
    return db


def _pool() -> ipam.Pool:
    return ipam.Pool.of(NET_ID, "10.213.7.0/29", "10.213.7.1")


def test_first_free_skips_network_gateway_and_used() -> None:
    pool = _pool()
    assert ipam.first_free(pool, []) == "10.213.7.2"
    assert ipam.first_free(pool, ["10.213.7.2", "10.213.7.4"]) == "10.213.7.3"


def test_first_free_with_a_gateway_in_the_middle() -> None:
    pool = ipam.Pool.of(NET_ID, "10.213.7.0/29", "10.213.7.3")
    assert ipam.first_free(pool, ["10.213.7.1", "10.213.7.2"]) == "10.213.7.4"


def test_a_full_pool_says_so() -> None:
    pool = _pool()
    used = [f"10.213.7.{n}" for n in range(2, 7)]
    with pytest.raises(HullError, match="no free address"):
        ipam.first_free(pool, used)


@pytest.mark.parametrize(
    ("ip", "error", "match"),
    [
        ("10.213.8.2", ConfigError, "not in the network's subnet"),
        ("10.213.7.0", ConfigError, "reserved"),
        ("10.213.7.1", ConfigError, "reserved"),
        ("10.213.7.7", ConfigError, "reserved"),
        ("nonsense", ConfigError, "invalid IPv4"),
        ("10.213.7.5", HullError, "already in use"),
    ],
)
def test_requested_addresses_are_checked(ip: str, error: type, match: str) -> None:
    with pytest.raises(error, match=match):
        ipam.check_requested(_pool(), ip, {"10.213.7.5"})


def test_leases_are_unique_stable_and_released(tmp_path: Path) -> None:
    with _db(tmp_path) as db:
        pool = _pool()
        a = ipam.allocate(db, pool, "a" * 64)
        b = ipam.allocate(db, pool, "b" * 64)
        assert (a, b) == ("10.213.7.2", "10.213.7.3")
        assert ipam.allocate(db, pool, "a" * 64) == a  # the same container keeps its lease
        ipam.release(db, NET_ID, "a" * 64)
        ipam.release(db, NET_ID, "a" * 64)  # twice is fine
        assert ipam.allocate(db, pool, "c" * 64) == a  # freed, so handed out again
        assert sorted(ip for _, ip, _ in ipam.leases(db, NET_ID)) == [a, b]


def test_a_requested_address_cannot_be_taken_twice(tmp_path: Path) -> None:
    with _db(tmp_path) as db:
        pool = _pool()
        assert ipam.allocate(db, pool, "a" * 64, "10.213.7.6") == "10.213.7.6"
        with pytest.raises(HullError, match="already in use"):
            ipam.allocate(db, pool, "b" * 64, "10.213.7.6")
        assert ipam.allocate(db, pool, "b" * 64) == "10.213.7.2"


def test_leases_survive_reopening_the_database(tmp_path: Path) -> None:
    with _db(tmp_path) as db:
        ipam.allocate(db, _pool(), "a" * 64)
    with Database(tmp_path / "hull.db") as db:
        assert ipam.allocate(db, _pool(), "b" * 64) == "10.213.7.3"


def test_sweep_releases_only_dead_containers(tmp_path: Path) -> None:
    with _db(tmp_path) as db:
        pool = _pool()
        for cid in ("a", "b", "c"):
            ipam.allocate(db, pool, cid * 64)
        freed = ipam.sweep(db, {"b" * 64})
        assert sorted(cid[0] for _, _, cid in freed) == ["a", "c"]
        assert [cid for _, _, cid in ipam.leases(db)] == ["b" * 64]


def test_leases_go_with_their_network(tmp_path: Path) -> None:
    with _db(tmp_path) as db:
        ipam.allocate(db, _pool(), "a" * 64)
        db.execute("DELETE FROM net_networks WHERE id = ?", (NET_ID,))
        assert ipam.leases(db) == []


def test_pick_subnet_avoids_the_hosts_routes() -> None:
    taken = [ipaddress.IPv4Network("10.88.0.0/16"), ipaddress.IPv4Network("172.18.5.0/24")]
    candidates = map(ipaddress.IPv4Network, ["10.88.0.0/16", "172.18.0.0/16", "172.19.0.0/16"])
    assert str(pick_subnet(candidates, taken)) == "172.19.0.0/16"
    with pytest.raises(HullError, match="no free private subnet"):
        pick_subnet([ipaddress.IPv4Network("10.88.1.0/24")], taken)


def test_mac_follows_the_address() -> None:
    assert mac_for("10.88.0.2") == "02:42:0a:58:00:02"
