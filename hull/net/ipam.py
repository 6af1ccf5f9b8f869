"""IPAM: which address of a network's subnet each container holds.

The choice is pure (lowest free host address, never the network, broadcast or gateway
address); the leases are rows in net_leases, taken inside a BEGIN IMMEDIATE transaction
so two `hull` processes never hand out the same address. A lease lives until release()
(on disconnect or rm) or until sweep() finds its container gone.
"""

from __future__ import annotations

import ipaddress
import time
from collections.abc import Collection, Iterable

from hull.errors import ConfigError, HullError
from hull.net.store import StateDB
from hull.records import dataclass


@dataclass(frozen=True)
class Pool:
    """The addresses a network hands out."""

    network_id: str
    subnet: ipaddress.IPv4Network
    gateway: ipaddress.IPv4Address

    @classmethod
    def of(cls, network_id: str, subnet: str, gateway: str) -> Pool:
        return cls(network_id, ipaddress.IPv4Network(subnet), ipaddress.IPv4Address(gateway))

    def reserved(self) -> set[ipaddress.IPv4Address]:
        return {self.subnet.network_address, self.subnet.broadcast_address, self.gateway}


def check_requested(pool: Pool, ip: str, used: Collection[str]) -> str:
    """Validate an --ip request against the subnet and the addresses in use."""
    try:
        address = ipaddress.IPv4Address(ip)
    except ValueError:
        raise ConfigError(f"invalid IPv4 address {ip!r}") from None
    if address not in pool.subnet:
        raise ConfigError(f"address {ip} is not in the network's subnet {pool.subnet}")
    if address in pool.reserved():
        raise ConfigError(
            f"address {ip} is reserved in {pool.subnet} (network, gateway or broadcast)"
        )
    if str(address) in used:
        raise HullError(f"address {ip} is already in use on this network")
    return str(address)


def first_free(pool: Pool, used: Collection[str]) -> str:
    """The lowest host address that is neither reserved nor leased."""
    taken = {int(ipaddress.IPv4Address(u)) for u in used}
    taken |= {int(r) for r in pool.reserved()}
    first = int(pool.subnet.network_address) + 1
    last = int(pool.subnet.broadcast_address) - 1
    for candidate in range(first, last + 1):
        if candidate not in taken:
            return str(ipaddress.IPv4Address(candidate))
    raise HullError(f"no free address left in {pool.subnet}")


def allocate(db: StateDB, pool: Pool, container_id: str, requested_ip: str | None = None) -> str:
    """The container's address on this network: its existing lease, else a new one."""
    with db.transaction() as conn:
        row = conn.execute(
            "SELECT ip FROM net_leases WHERE network_id = ? AND container_id = ?",
            (pool.network_id, container_id),
        ).fetchone()
        if row is not None:
            if requested_ip is not None and row["ip"] != requested_ip:
                raise HullError(
                    f"container {container_id[:12]} already holds {row['ip']} on this network"
                )
            return str(row["ip"])
        used = {
            r["ip"]
            for r in conn.execute(
                "SELECT ip FROM net_leases WHERE network_id = ?", (pool.network_id,)
            )
        }
        if requested_ip is not None:
            ip = check_requested(pool, requested_ip, used)
        else:
            ip = first_free(pool, used)
        conn.execute(
            "INSERT INTO net_leases (network_id, ip, container_id, created) VALUES (?, ?, ?, ?)",
            (pool.network_id, ip, container_id, time.time()),
        )
        return ip


def release(db: StateDB, network_id: str, container_id: str) -> None:
    """Free the container's address on this network; releasing twice is fine."""
    with db.transaction() as conn:
        conn.execute(
            "DELETE FROM net_leases WHERE network_id = ? AND container_id = ?",
            (network_id, container_id),
        )


def leases(db: StateDB, network_id: str | None = None) -> list[tuple[str, str, str]]:
    """(network_id, ip, container_id) of every lease, or of one network's."""
    if network_id is None:
        rows: Iterable = db.execute("SELECT network_id, ip, container_id FROM net_leases")
    else:
        rows = db.execute(
            "SELECT network_id, ip, container_id FROM net_leases WHERE network_id = ?",
            (network_id,),
        )
    return [(r["network_id"], r["ip"], r["container_id"]) for r in rows]


def sweep(db: StateDB, live_container_ids: Collection[str]) -> list[tuple[str, str, str]]:
    """Release the leases of containers that no longer exist; returns what was freed."""
    live = set(live_container_ids)
    with db.transaction() as conn:
        stale = [
            (r["network_id"], r["ip"], r["container_id"])
            for r in conn.execute("SELECT network_id, ip, container_id FROM net_leases")
            if r["container_id"] not in live
        ]
        for network_id, _, container_id in stale:
            conn.execute(
                "DELETE FROM net_leases WHERE network_id = ? AND container_id = ?",
                (network_id, container_id),
            )
    return stale
