"""Networks as the engine sees them: create/list/inspect/remove/prune, connect a
container's netns, publish its ports, and sweep what a crash left.

Order keeps a crash recoverable: a row (network, endpoint, port) is written before the
kernel state it describes and deleted after that state is gone, so the rows are always
a superset of what exists, and sweep() can undo the rest blindly.
"""

from __future__ import annotations

import builtins
import ipaddress
import json
import os
import sqlite3
import time
from collections.abc import Collection, Iterable

from hull.errors import ConfigError, HullError, NotFoundError, StateError
from hull.net import ipam, links, nft
from hull.net.ports import (
    ANY_IP,
    PortSpec,
    bindings_overlap,
    check_host_port_free,
    check_no_overlap,
    free_host_port,
)
from hull.net.store import StateDB
from hull.paths import HullPaths
from hull.records import dataclass, field, replace

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

DEFAULT_NETWORK = "bridge"  # Docker's name for the default network
DEFAULT_BRIDGE = "hull0"
# The default network's subnet: the first of these that the host does not route yet.
# Not 10.88.0.0/16: that is podman's default, and podman does not check host routes.
DEFAULT_SUBNETS = ["10.87.0.0/16", *(f"172.{n}.0.0/16" for n in range(18, 32))]
# The MTU of Hull's own links (see NetworkService.link_mtu): jumbo frames, as on
# loopback-like local paths; Docker's and podman's bridges use 1500 whatever the NIC.
LOCAL_MTU = 9000
# User networks without --subnet: the first free /24 of these.
USER_SUBNET_POOLS = ["10.89.0.0/16", "10.90.0.0/16", "10.91.0.0/16"]


@dataclass(frozen=True)
class Network:
    id: str
    name: str
    bridge: str
    subnet: str
    gateway: str
    internal: bool
    labels: dict[str, str] = field(default_factory=dict)
    created: float = 0.0

    @classmethod
    def from_row(cls, row: sqlite3.Row) -> Network:
        return cls(
            id=row["id"],
            name=row["name"],
            bridge=row["bridge"],
            subnet=row["subnet"],
            gateway=row["gateway"],
            internal=bool(row["internal"]),
            labels=json.loads(row["labels"]),
            created=row["created"],
        )

    @property
    def prefixlen(self) -> int:
        return ipaddress.IPv4Network(self.subnet).prefixlen

    def pool(self) -> ipam.Pool:
        return ipam.Pool.of(self.id, self.subnet, self.gateway)

    def rules(self) -> nft.NetRules:
        return nft.NetRules(self.bridge, self.subnet, self.internal)


@dataclass(frozen=True)
class Endpoint:
    """A container's interface on one network."""

    network: str
    ip: str
    mac: str
    gateway: str
    ifname: str
    prefixlen: int
    host_ifname: str
    aliases: tuple[str, ...] = ()


def mac_for(ip: str) -> str:
    """Docker's scheme: 02:42 and the four bytes of the IPv4 address (stable, local)."""
    raw = ipaddress.IPv4Address(ip).packed
    return "02:42:" + ":".join(f"{b:02x}" for b in raw)


def host_ifname_for(container_id: str, network_id: str, kind: str = "veth") -> str:
    """veth (or tap, a microVM's) + 10 hex: stable per (container, network), within
    IFNAMSIZ."""
    try:
        # Both ids are random hex (os.urandom): the XOR of their first 40 bits is as
        # unique as a hash of them, without hashlib (OpenSSL: ~3 ms on `hull run`).
        return f"{kind}{int(container_id[:10], 16) ^ int(network_id[:10], 16):010x}"
    except ValueError:
        import hashlib

        digest = hashlib.sha256(f"{container_id}/{network_id}".encode()).hexdigest()
        return kind + digest[:10]


def pick_subnet(
    candidates: Iterable[ipaddress.IPv4Network], taken: Collection[ipaddress.IPv4Network]
) -> ipaddress.IPv4Network:
    """The first candidate that overlaps nothing taken."""
    for candidate in candidates:
        if not any(candidate.overlaps(t) for t in taken):
            return candidate
    raise HullError("no free private subnet left for a new network: pass --subnet")


class NetworkService:
    """Networks, endpoints and published ports of one Hull root.

    bridge, table and default_subnet exist so tests run beside a real Hull (and each
    other) with bridges, nft tables and subnets of their own.
    """

    def __init__(
        self,
        paths: HullPaths,
        db: StateDB,
        *,
        table: str = nft.DEFAULT_TABLE,
        default_bridge: str = DEFAULT_BRIDGE,
        default_subnet: str | None = None,
    ) -> None:
        self.paths = paths
        self.db = db
        self.table = nft.check_name(table, "nft table")
        self.default_bridge = default_bridge
        self.default_subnet = default_subnet
        self._mtu: int | None = None

    # ------------------------------------------------------------------ networks

    @property
    def mtu(self) -> int:
        """The host's MTU (its default route's link): what leaves the host."""
        if self._mtu is None:
            self._mtu = links.host_mtu()
        return self._mtu

    @property
    def link_mtu(self) -> int:
        """Bridges, veths and taps run at LOCAL_MTU (or the host's, if larger): traffic
        that stays on the host (published ports, to the host's own addresses, container
        to container) need not be cut to the NIC's MTU. What leaves the host is sized
        for its link by MSS clamping in Hull's forward chain (hull.net.nft) and path
        MTU discovery (the host answers "fragmentation needed" when it forwards)."""
        return max(self.mtu, LOCAL_MTU)

    def ensure_default(self) -> Network:
        """The default network ("bridge" on hull0), created on first use."""
        row = self.db.execute(
            "SELECT * FROM net_networks WHERE name = ?", (DEFAULT_NETWORK,)
        ).fetchone()
        if row is not None:
            network = Network.from_row(row)
            self._ensure_kernel(network)
            return network
        return self.create(
            DEFAULT_NETWORK, subnet=self.default_subnet, bridge=self.default_bridge, default=True
        )

    def create(
        self,
        name: str,
        subnet: str | None = None,
        gateway: str | None = None,
        internal: bool = False,
        *,
        bridge: str | None = None,
        labels: dict[str, str] | None = None,
        default: bool = False,
    ) -> Network:
        """A new bridge network: a row, then its bridge and firewall rules."""
        if not name or "/" in name or name in ("none", "host") or name.startswith("container:"):
            raise ConfigError(f"invalid network name {name!r}")
        if name == DEFAULT_NETWORK and not default:
            raise ConfigError(f"{DEFAULT_NETWORK!r} is the default network's name")
        network_id = os.urandom(32).hex()  # not `secrets`: ~4 ms on `hull run`'s path
        bridge = nft.check_name(bridge or f"hull-{network_id[:10]}", "bridge name")
        with self.db.transaction() as conn:
            if conn.execute("SELECT 1 FROM net_networks WHERE name = ?", (name,)).fetchone():
                raise StateError(f"network with name {name} already exists")
            if conn.execute("SELECT 1 FROM net_networks WHERE bridge = ?", (bridge,)).fetchone():
                raise StateError(f"bridge {bridge} already belongs to a network")
            taken = [
                ipaddress.IPv4Network(r["subnet"])
                for r in conn.execute("SELECT subnet FROM net_networks")
            ]
            taken += links.host_networks()
            net = self._choose_subnet(subnet, taken, default)
            gw = self._choose_gateway(net, gateway)
            network = Network(
                network_id, name, bridge, str(net), gw, internal, dict(labels or {}), time.time()
            )
            conn.execute(
                "INSERT INTO net_networks (id, name, bridge, subnet, gateway, internal, labels,"
                " created) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    network.id,
                    network.name,
                    network.bridge,
                    network.subnet,
                    network.gateway,
                    int(network.internal),
                    json.dumps(network.labels),
                    network.created,
                ),
            )
        try:
            self._ensure_kernel(network, force=True)
        except BaseException:
            self._teardown_network(network)
            with self.db.transaction() as conn:
                conn.execute("DELETE FROM net_networks WHERE id = ?", (network.id,))
            raise
        return network

    def _choose_subnet(
        self, subnet: str | None, taken: builtins.list[ipaddress.IPv4Network], default: bool
    ) -> ipaddress.IPv4Network:
        if subnet is None:
            if default:
                candidates: Iterable[ipaddress.IPv4Network] = map(
                    ipaddress.IPv4Network, DEFAULT_SUBNETS
                )
            else:
                candidates = (
                    sub
                    for pool in USER_SUBNET_POOLS
                    for sub in ipaddress.IPv4Network(pool).subnets(new_prefix=24)
                )
            return pick_subnet(candidates, taken)
        try:
            net = ipaddress.IPv4Network(subnet)
        except ValueError as e:
            raise ConfigError(f"invalid subnet {subnet!r}: {e}") from None
        if net.prefixlen > 30:
            raise ConfigError(f"subnet {subnet} is too small: at most /30")
        clash = next((t for t in taken if net.overlaps(t)), None)
        if clash is not None:
            raise StateError(f"subnet {net} overlaps {clash}, already in use on this host")
        return net

    @staticmethod
    def _choose_gateway(net: ipaddress.IPv4Network, gateway: str | None) -> str:
        if gateway is None:
            return str(net.network_address + 1)
        try:
            gw = ipaddress.IPv4Address(gateway)
        except ValueError:
            raise ConfigError(f"invalid gateway {gateway!r}") from None
        if gw not in net or gw in (net.network_address, net.broadcast_address):
            raise ConfigError(f"gateway {gateway} is not a host address of {net}")
        return str(gw)

    def _ensure_kernel(self, network: Network, force: bool = False) -> None:
        """Firewall first, bridge last: an existing bridge means the rest is in place
        (both vanish together at reboot), which keeps connect() cheap."""
        if not force and links.link_exists(network.bridge):
            return
        nft.apply(nft.base_batch(self.table) + nft.add_network_batch(network.rules(), self.table))
        if not network.internal:
            links.write_sysctl("net/ipv4/ip_forward", "1")
        links.ensure_bridge(network.bridge, network.gateway, network.prefixlen, self.link_mtu)

    def _teardown_network(self, network: Network) -> None:
        links.delete_link(network.bridge)
        nft.apply(nft.remove_network_batch(network.rules(), self.table))

    def list(self) -> builtins.list[Network]:
        rows = self.db.execute("SELECT * FROM net_networks ORDER BY created")
        return [Network.from_row(r) for r in rows]

    def get(self, ref: str) -> Network:
        """By name, full id or unique id prefix."""
        row = self.db.execute(
            "SELECT * FROM net_networks WHERE name = ? OR id = ?", (ref, ref)
        ).fetchone()
        if row is None and len(ref) >= 3 and all(c in "0123456789abcdef" for c in ref):
            rows = self.db.execute(
                "SELECT * FROM net_networks WHERE id LIKE ?", (ref + "%",)
            ).fetchall()
            if len(rows) > 1:
                raise NotFoundError(f"network id prefix {ref} is ambiguous")
            row = rows[0] if rows else None
        if row is None:
            raise NotFoundError(f"network {ref} not found")
        return Network.from_row(row)

    def inspect(self, ref: str) -> dict[str, Any]:
        """Docker's `network inspect` document."""
        network = self.get(ref)
        containers = {
            r["container_id"]: {
                "EndpointID": r["host_ifname"],
                "MacAddress": r["mac"],
                "IPv4Address": f"{r['ip']}/{network.prefixlen}",
                "IPv6Address": "",
                "Aliases": json.loads(r["aliases"]),
            }
            for r in self.db.execute(
                "SELECT * FROM net_endpoints WHERE network_id = ?", (network.id,)
            )
        }
        return {
            "Name": network.name,
            "Id": network.id,
            "Created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(network.created)),
            "Scope": "local",
            "Driver": "bridge",
            "EnableIPv6": False,
            "IPAM": {
                "Driver": "default",
                "Config": [{"Subnet": network.subnet, "Gateway": network.gateway}],
            },
            "Internal": network.internal,
            "Containers": containers,
            "Options": {"com.docker.network.bridge.name": network.bridge},
            "Labels": network.labels,
        }

    def remove(self, ref: str) -> Network:
        network = self.get(ref)
        row = self.db.execute(
            "SELECT container_id FROM net_endpoints WHERE network_id = ? LIMIT 1", (network.id,)
        ).fetchone()
        if row is not None:
            raise StateError(
                f"network {network.name} has active endpoints (container "
                f"{row['container_id'][:12]}): disconnect or remove them first"
            )
        self._teardown_network(network)
        with self.db.transaction() as conn:
            conn.execute("DELETE FROM net_networks WHERE id = ?", (network.id,))
        return network

    def prune(self) -> builtins.list[str]:
        """Remove user networks without endpoints; returns their names."""
        removed = []
        for network in self.list():
            if network.name == DEFAULT_NETWORK:
                continue
            try:
                self.remove(network.id)
            except StateError:
                continue
            removed.append(network.name)
        return removed

    # ------------------------------------------------------------------ endpoints

    def connect(
        self,
        container_id: str,
        netns_path: str | None,
        network: str,
        aliases: Iterable[str] = (),
        ip: str | None = None,
    ) -> Endpoint:
        """A veth from the network's bridge into the netns, with a leased address; the
        container's first network also gets the default route.

        netns_path None: a microVM's endpoint, which has no namespace on the host. It
        gets a tap on the bridge instead of a veth (QEMU opens it; the guest agent
        sets the address, MAC and route the endpoint says); lease, row, ports and
        teardown are a container's."""
        net = self.get(network)
        self._ensure_kernel(net)
        host_ifname = host_ifname_for(container_id, net.id, "veth" if netns_path else "tap")
        alias_list = sorted(set(aliases))
        with self.db.transaction() as conn:
            if conn.execute(
                "SELECT 1 FROM net_endpoints WHERE container_id = ? AND network_id = ?",
                (container_id, net.id),
            ).fetchone():
                raise StateError(
                    f"container {container_id[:12]} is already connected to network {net.name}"
                )
            used = {
                r["ifname"]
                for r in conn.execute(
                    "SELECT ifname FROM net_endpoints WHERE container_id = ?", (container_id,)
                )
            }
        index = 0
        while f"eth{index}" in used:
            index += 1
        ifname = f"eth{index}"
        address = ipam.allocate(self.db, net.pool(), container_id, ip)
        endpoint = Endpoint(
            net.name,
            address,
            mac_for(address),
            net.gateway,
            ifname,
            net.prefixlen,
            host_ifname,
            tuple(alias_list),
        )
        try:
            with self.db.transaction() as conn:
                conn.execute(
                    "INSERT INTO net_endpoints (container_id, network_id, host_ifname, ifname,"
                    " mac, ip, aliases, netns_path, created) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    (
                        container_id,
                        net.id,
                        host_ifname,
                        ifname,
                        endpoint.mac,
                        address,
                        json.dumps(alias_list),
                        netns_path or "",
                        time.time(),
                    ),
                )
        except BaseException:
            ipam.release(self.db, net.id, container_id)
            raise
        try:
            if netns_path is None:
                links.add_tap(host_ifname, net.bridge, self.link_mtu)
            else:
                links.add_veth(
                    links.VethSpec(
                        host_ifname=host_ifname,
                        bridge=net.bridge,
                        netns_path=netns_path,
                        ifname=ifname,
                        mac=endpoint.mac,
                        address=address,
                        prefixlen=net.prefixlen,
                        gateway=net.gateway if index == 0 else None,
                        mtu=self.link_mtu,
                    )
                )
        except BaseException:
            self._drop_endpoint(container_id, net.id, host_ifname)
            raise
        return endpoint

    def disconnect(self, container_id: str, network: str) -> None:
        """Undo connect(): the container's ports on that address, the veth, the lease."""
        net = self.get(network)
        row = self.db.execute(
            "SELECT * FROM net_endpoints WHERE container_id = ? AND network_id = ?",
            (container_id, net.id),
        ).fetchone()
        if row is None:
            raise NotFoundError(
                f"container {container_id[:12]} is not connected to network {net.name}"
            )
        self._unpublish(container_id, container_ip=row["ip"])
        self._drop_endpoint(container_id, net.id, row["host_ifname"])

    def disconnect_all(self, container_id: str, netns_goes: bool = False) -> None:
        """Everything a container holds (for rm and for a failed start). netns_goes: the
        caller drops the container's network namespace next, and the kernel deletes its
        veths with it, in the background: they are only taken down here (links.py)."""
        self._unpublish(container_id)
        for row in self.db.execute(
            "SELECT network_id, host_ifname FROM net_endpoints WHERE container_id = ?",
            (container_id,),
        ).fetchall():
            self._drop_endpoint(container_id, row["network_id"], row["host_ifname"], netns_goes)
        with self.db.transaction() as conn:  # a lease whose endpoint row never made it
            conn.execute("DELETE FROM net_leases WHERE container_id = ?", (container_id,))

    def _drop_endpoint(
        self, container_id: str, network_id: str, host_ifname: str, netns_goes: bool = False
    ) -> None:
        if netns_goes:
            links.retire_link(host_ifname)
        elif host_ifname.startswith("tap"):  # a microVM's: down now, deleted meanwhile
            links.retire_tap(host_ifname)
        else:
            links.delete_link(host_ifname)
        with self.db.transaction() as conn:
            conn.execute(
                "DELETE FROM net_endpoints WHERE container_id = ? AND network_id = ?",
                (container_id, network_id),
            )
        ipam.release(self.db, network_id, container_id)

    def endpoints(self, container_id: str) -> builtins.list[Endpoint]:
        rows = self.db.execute(
            "SELECT e.*, n.name, n.gateway, n.subnet FROM net_endpoints e"
            " JOIN net_networks n ON n.id = e.network_id WHERE e.container_id = ?"
            " ORDER BY e.ifname",
            (container_id,),
        )
        return [
            Endpoint(
                r["name"],
                r["ip"],
                r["mac"],
                r["gateway"],
                r["ifname"],
                ipaddress.IPv4Network(r["subnet"]).prefixlen,
                r["host_ifname"],
                tuple(json.loads(r["aliases"])),
            )
            for r in rows
        ]

    def hosts(self, network: str) -> builtins.list[tuple[str, builtins.list[str]]]:
        """(ip, names) of every endpoint on a network, for /etc/hosts entries."""
        net = self.get(network)
        rows = self.db.execute(
            "SELECT ip, aliases FROM net_endpoints WHERE network_id = ? ORDER BY ip",
            (net.id,),
        )
        return [(r["ip"], json.loads(r["aliases"])) for r in rows]

    def resolve(self, network: str, name: str) -> str | None:
        """The address of the endpoint on network called name (an alias; the engine
        passes the container name, --network-alias values and the short id), for DNS."""
        wanted = name.lower().rstrip(".")
        rows = self.db.execute(
            "SELECT e.ip, e.aliases FROM net_endpoints e JOIN net_networks n"
            " ON n.id = e.network_id WHERE n.name = ? OR n.id = ?",
            (network, network),
        )
        for row in rows:
            if wanted in (a.lower() for a in json.loads(row["aliases"])):
                return str(row["ip"])
        return None

    # ------------------------------------------------------------------ ports

    def publish(
        self, container_id: str, ip: str, ports: builtins.list[PortSpec]
    ) -> builtins.list[PortSpec]:
        """DNAT host ports to ip:containerPort; returns the specs with host ports chosen."""
        check_no_overlap(ports)
        chosen: builtins.list[PortSpec] = []
        with self.db.transaction() as conn:
            existing = [
                PortSpec(r["container_port"], r["proto"], r["host_ip"], r["host_port"])
                for r in conn.execute("SELECT * FROM net_ports")
            ]
            for spec in ports:
                if spec.host_port == 0:
                    avoid = {p.host_port for p in existing + chosen if p.proto == spec.proto}
                    spec = replace(spec, host_port=free_host_port(spec.host_ip, spec.proto, avoid))
                clash = next((p for p in existing if bindings_overlap(p, spec)), None)
                if clash is not None:
                    raise HullError(
                        f"cannot publish {spec.host_ip}:{spec.host_port}/{spec.proto}: the host "
                        "port is already published by another container"
                    )
                check_host_port_free(spec.host_ip, spec.host_port, spec.proto)
                chosen.append(spec)
            for spec in chosen:
                conn.execute(
                    "INSERT INTO net_ports (proto, host_ip, host_port, container_id,"
                    " container_ip, container_port) VALUES (?, ?, ?, ?, ?, ?)",
                    (
                        spec.proto,
                        spec.host_ip,
                        spec.host_port,
                        container_id,
                        ip,
                        spec.container_port,
                    ),
                )
        rules = [_rule(spec, ip) for spec in chosen]
        try:
            nft.apply(nft.add_port_batch(rules, self.table))
        except BaseException:
            self._unpublish(container_id, container_ip=ip)
            raise
        return chosen

    def unpublish(self, container_id: str) -> None:
        self._unpublish(container_id)

    def _unpublish(self, container_id: str, container_ip: str | None = None) -> None:
        query = "SELECT * FROM net_ports WHERE container_id = ?"
        params: tuple[object, ...] = (container_id,)
        if container_ip is not None:
            query += " AND container_ip = ?"
            params += (container_ip,)
        rows = self.db.execute(query, params).fetchall()
        if not rows:
            return
        rules = [
            nft.PortRule(
                r["proto"], r["host_ip"], r["host_port"], r["container_ip"], r["container_port"]
            )
            for r in rows
        ]
        nft.apply(nft.remove_port_batch(rules, self.table))
        with self.db.transaction() as conn:
            for r in rows:
                conn.execute(
                    "DELETE FROM net_ports WHERE proto = ? AND host_ip = ? AND host_port = ?",
                    (r["proto"], r["host_ip"], r["host_port"]),
                )

    def ports(self, container_id: str) -> builtins.list[PortSpec]:
        """`hull port`: the container's published ports."""
        rows = self.db.execute(
            "SELECT * FROM net_ports WHERE container_id = ? ORDER BY container_port, proto",
            (container_id,),
        )
        return [
            PortSpec(r["container_port"], r["proto"], r["host_ip"], r["host_port"]) for r in rows
        ]

    # ------------------------------------------------------------------ crash recovery

    def sweep(self, live_container_ids: Collection[str]) -> builtins.list[str]:
        """Undo what containers that no longer exist left: ports, veths, leases, and
        veths on Hull's bridges that no endpoint row knows. Returns the swept ids."""
        live = set(live_container_ids)
        dead: set[str] = set()
        for (cid,) in self.db.execute(
            "SELECT container_id FROM net_endpoints UNION SELECT container_id FROM net_ports"
            " UNION SELECT container_id FROM net_leases"
        ).fetchall():
            if cid not in live:
                dead.add(cid)
        for cid in sorted(dead):
            self.disconnect_all(cid)
        known = {r["host_ifname"] for r in self.db.execute("SELECT host_ifname FROM net_endpoints")}
        for network in self.list():
            if links.link_exists(network.bridge):  # rules lost while the bridge lived on
                self._ensure_kernel(network, force=True)
            for port in links.bridge_ports(network.bridge):
                if port not in known:
                    links.delete_link(port)
        return sorted(dead)


def _rule(spec: PortSpec, container_ip: str) -> nft.PortRule:
    return nft.PortRule(spec.proto, spec.host_ip, spec.host_port, container_ip, spec.container_port)


__all__ = ["ANY_IP", "DEFAULT_NETWORK", "Endpoint", "Network", "NetworkService", "PortSpec"]
