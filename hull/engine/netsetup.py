"""One container's network, driven through hull.net: set up at start, torn down at exit.

At start (before the shim spawns), a container on a bridge (the default "bridge" or a
user network) gets a network namespace bound at <runroot>/netns/<id>, a veth into each
of its networks, its published ports, and /etc/hosts and /etc/resolv.conf that match.
Every step is undone when a later one fails. teardown() is the reverse; it is
idempotent, and free (no netlink, no pyroute2 import) for a container that holds
nothing, so `--network none` and `host` pay nothing for networking.

Names on a user network resolve through the embedded DNS server (hull.net.dns_control:
one process per Hull root on the gateways; a container's resolv.conf names its gateway)
and through /etc/hosts: a container's file lists every other container on its user
networks, and is rewritten in place (same inode, so the bind mount inside a running
container sees it) whenever one joins or leaves. The entries stay as a fallback for a
gateway where the server cannot bind port 53, and cost no query.

Reads for inspect and `hull port` are plain SQL on hull.net's tables: importing
hull.net.networks pulls in pyroute2, which costs ~100 ms.
"""

from __future__ import annotations

import fcntl
import os
import sys
from os.path import join

from hull.engine.runconfig import RunConfig, uses_network
from hull.errors import ConfigError, HullError, StateError
from hull.files import read_text, write_text
from hull.paths import HullPaths
from hull.records import dataclass
from hull.runtime import fastjson

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Iterable
    from typing import Any

    from hull.engine.containers import ContainerService
    from hull.engine.db import Database
    from hull.net.networks import NetworkService
    from hull.net.ports import PortSpec

# Overrides for tests and for running beside another Hull: nft table, default bridge.
ENV_TABLE = "HULL_NFT_TABLE"
ENV_BRIDGE = "HULL_BRIDGE"
ENV_BRIDGE_SUBNET = "HULL_BRIDGE_SUBNET"
# Docker's fallback when the host has no nameserver a container can reach.
FALLBACK_NAMESERVERS = ("8.8.8.8", "8.8.4.4")
HOSTS_HEADER = (
    "127.0.0.1\tlocalhost\n"
    "::1\tlocalhost ip6-localhost ip6-loopback\n"
    "fe00::0\tip6-localnet\n"
    "ff00::0\tip6-mcastprefix\n"
    "ff02::1\tip6-allnodes\n"
    "ff02::2\tip6-allrouters\n"
)


def netns_dir(paths: HullPaths) -> str:
    return join(paths.runroot, "netns")


def netns_path(paths: HullPaths, container_id: str) -> str:
    return join(netns_dir(paths), container_id)


def network_service(paths: HullPaths, db: Database) -> NetworkService:
    """The NetworkService of this Hull root (pyroute2 is imported here, not before)."""
    from hull.net import nft
    from hull.net.networks import DEFAULT_BRIDGE, NetworkService

    return NetworkService(
        paths,
        db,
        table=os.environ.get(ENV_TABLE) or nft.DEFAULT_TABLE,
        default_bridge=os.environ.get(ENV_BRIDGE) or DEFAULT_BRIDGE,
        default_subnet=os.environ.get(ENV_BRIDGE_SUBNET) or None,
    )


# ------------------------------------------------------------------ reads (SQL only)


@dataclass(frozen=True)
class EndpointRow:
    network: str
    network_id: str
    ip: str
    mac: str
    gateway: str
    prefixlen: int
    host_ifname: str
    aliases: tuple[str, ...]


def endpoints(db: Database, container_id: str) -> list[EndpointRow]:
    """The container's endpoints, first network (eth0) first."""
    rows = db.execute(
        "SELECT e.ip, e.mac, e.host_ifname, e.aliases, e.ifname, n.name, n.id AS nid,"
        " n.gateway, n.subnet FROM net_endpoints e JOIN net_networks n ON n.id = e.network_id"
        " WHERE e.container_id = ? ORDER BY length(e.ifname), e.ifname",
        (container_id,),
    ).fetchall()
    return [
        EndpointRow(
            r["name"],
            r["nid"],
            r["ip"],
            r["mac"],
            r["gateway"],
            int(r["subnet"].rpartition("/")[2]),
            r["host_ifname"],
            tuple(fastjson.loads(r["aliases"])),
        )
        for r in rows
    ]


def holds_network_state(db: Database, paths: HullPaths, container_id: str) -> bool:
    """Whether teardown() has anything to do for this container."""
    return _holds_rows(db, container_id) or os.path.lexists(netns_path(paths, container_id))


def _holds_rows(db: Database, container_id: str) -> bool:
    row = db.execute(
        "SELECT 1 FROM net_endpoints WHERE container_id = ?1 UNION ALL"
        " SELECT 1 FROM net_ports WHERE container_id = ?1 UNION ALL"
        " SELECT 1 FROM net_leases WHERE container_id = ?1 LIMIT 1",
        (container_id,),
    ).fetchone()
    return row is not None


def ids_with_network_state(db: Database, paths: HullPaths) -> set[str]:
    ids = {
        r[0]
        for r in db.execute(
            "SELECT container_id FROM net_endpoints UNION SELECT container_id FROM net_ports"
            " UNION SELECT container_id FROM net_leases"
        ).fetchall()
    }
    try:
        ids.update(name for name in os.listdir(netns_dir(paths)) if len(name) == 64)
    except OSError:
        pass
    return ids


def published_ports(db: Database, container_id: str) -> list[tuple[str, str]]:
    """("80/tcp", "0.0.0.0:8080") for each published port, Docker's `port` order."""
    rows = db.execute(
        "SELECT proto, host_ip, host_port, container_port FROM net_ports"
        " WHERE container_id = ? ORDER BY container_port, proto, host_ip",
        (container_id,),
    ).fetchall()
    return [
        (f"{r['container_port']}/{r['proto']}", f"{r['host_ip']}:{r['host_port']}") for r in rows
    ]


def ports_summary(db: Database, container_id: str) -> str:
    """The PORTS column of `docker ps`: 0.0.0.0:8080->80/tcp, ..."""
    return ", ".join(f"{binding}->{key}" for key, binding in published_ports(db, container_id))


def network_settings(
    db: Database, paths: HullPaths, container_id: str, run: RunConfig
) -> dict[str, Any]:
    """NetworkSettings of `docker inspect`: the top-level address fields are the
    default bridge's (as in Docker), Networks has every network the container is on."""
    eps = endpoints(db, container_id)
    ports: dict[str, list[dict[str, str]] | None] = {}
    for key, binding in published_ports(db, container_id):
        host_ip, _, host_port = binding.rpartition(":")
        ports.setdefault(key, [])
        ports[key].append({"HostIp": host_ip, "HostPort": host_port})  # type: ignore[union-attr]
    networks: dict[str, Any] = {}
    configured = [run.network] if uses_network(run) else []
    configured += [str(extra["network"]) for extra in run.extra_networks]
    by_name = {ep.network: ep for ep in eps}
    for name in dict.fromkeys([*configured, *by_name]):
        ep = by_name.get(name)
        networks[name] = {
            "IPAMConfig": {"IPv4Address": run.ip} if run.ip and name == run.network else None,
            "Links": None,
            "Aliases": list(ep.aliases) if ep else None,
            "NetworkID": ep.network_id if ep else "",
            "EndpointID": ep.host_ifname if ep else "",
            "Gateway": ep.gateway if ep else "",
            "IPAddress": ep.ip if ep else "",
            "IPPrefixLen": ep.prefixlen if ep else 0,
            "IPv6Gateway": "",
            "GlobalIPv6Address": "",
            "GlobalIPv6PrefixLen": 0,
            "MacAddress": ep.mac if ep else "",
        }
    bridge = by_name.get("bridge")
    sandbox = netns_path(paths, container_id)
    return {
        "Bridge": "",
        "SandboxID": container_id if eps else "",
        "SandboxKey": str(sandbox) if os.path.lexists(sandbox) else "",
        "Ports": ports,
        "Gateway": bridge.gateway if bridge else "",
        "IPAddress": bridge.ip if bridge else "",
        "IPPrefixLen": bridge.prefixlen if bridge else 0,
        "MacAddress": bridge.mac if bridge else "",
        "GlobalIPv6Address": "",
        "GlobalIPv6PrefixLen": 0,
        "IPv6Gateway": "",
        "Networks": networks,
    }


# ------------------------------------------------------------------ /etc files


def read_host_resolv_conf() -> str:
    try:
        return read_text("/etc/resolv.conf")
    except OSError:
        return ""


def resolv_conf(host_text: str, dns: list[str], own_namespace: bool) -> str:
    """Docker's rules: the host's file; --dns replaces its nameservers; in a namespace of
    its own a container cannot reach the host's loopback resolvers, so those go, and
    Google's public ones stand in when none is left."""
    lines = host_text.splitlines()
    kept: list[str] = []
    servers: list[str] = []
    for line in lines:
        parts = line.split()
        if parts[:1] == ["nameserver"] and len(parts) >= 2:
            servers.append(parts[1])
        else:
            kept.append(line)
    if dns:
        servers = list(dns)
    elif own_namespace:
        servers = [s for s in servers if not _is_loopback(s)] or list(FALLBACK_NAMESERVERS)
    body = [line for line in kept if line.strip()]
    body += [f"nameserver {s}" for s in servers]
    return "\n".join(body) + "\n" if body else ""


def _is_loopback(address: str) -> bool:
    import ipaddress

    try:
        return ipaddress.ip_address(address.split("%")[0]).is_loopback
    except ValueError:
        return False


def extra_host_lines(add_hosts: Iterable[str], gateway: str | None) -> list[str]:
    """--add-host entries; host-gateway is the container's gateway (the host's bridge
    address), or skipped when the container has none."""
    lines = []
    for entry in add_hosts:
        name, _, address = entry.partition(":")
        if address == "host-gateway":
            if gateway is None:
                continue
            address = gateway
        lines.append(f"{address}\t{name}")
    return lines


def hosts_text(
    hostname: str,
    add_hosts: Iterable[str],
    own: list[EndpointRow],
    peers: list[tuple[str, list[str]]],
    host_network: bool = False,
) -> str:
    """The container's /etc/hosts: localhost, --add-host, its own address under its
    host name, and the containers it shares a user network with (name resolution)."""
    gateway = own[0].gateway if own else ("127.0.0.1" if host_network else None)
    lines = [HOSTS_HEADER.rstrip("\n")]
    lines += extra_host_lines(add_hosts, gateway)
    if own:
        lines.append(f"{own[0].ip}\t{hostname}")
    elif not host_network:
        lines.append(f"127.0.1.1\t{hostname}")
    seen = {hostname}
    for ip, names in peers:
        fresh = [n for n in names if n not in seen]
        if fresh:
            seen.update(fresh)
            lines.append(f"{ip}\t{' '.join(fresh)}")
    return "\n".join(lines) + "\n"


def write_in_place(path: str, text: str) -> None:
    """Rewrite a file keeping its inode, so a running container's bind mount sees the
    new text; flock keeps two writers from interleaving."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        data = text.encode()
        os.ftruncate(fd, 0)
        os.pwrite(fd, data, 0)
    finally:
        os.close(fd)


def user_network_peers(db: Database, container_id: str) -> list[tuple[str, list[str]]]:
    """(ip, names) of the other containers on the container's user networks."""
    rows = db.execute(
        "SELECT p.ip, p.aliases FROM net_endpoints mine"
        " JOIN net_networks n ON n.id = mine.network_id"
        " JOIN net_endpoints p ON p.network_id = mine.network_id"
        " WHERE mine.container_id = ? AND p.container_id != mine.container_id"
        " AND n.name != 'bridge' ORDER BY n.name, p.ip",
        (container_id,),
    ).fetchall()
    return [(r["ip"], list(fastjson.loads(r["aliases"]))) for r in rows]


def container_hosts_text(db: Database, container_id: str, run: RunConfig, hostname: str) -> str:
    return hosts_text(
        hostname,
        run.add_hosts,
        endpoints(db, container_id),
        user_network_peers(db, container_id),
        host_network=run.network == "host",
    )


def refresh_peer_hosts(
    db: Database, paths: HullPaths, container_id: str, network_ids: Iterable[str]
) -> None:
    """Rewrite /etc/hosts of every other container on these networks (one joined or
    left). Best effort: a file that cannot be written only loses a name."""
    ids = list(network_ids)
    if not ids:
        return
    marks = ",".join("?" * len(ids))
    rows = db.execute(
        "SELECT DISTINCT e.container_id, c.run_config, c.id FROM net_endpoints e"
        f" JOIN containers c ON c.id = e.container_id WHERE e.network_id IN ({marks})"
        " AND e.container_id != ?",
        (*ids, container_id),
    ).fetchall()
    for row in rows:
        try:
            run = RunConfig.from_dict(fastjson.loads(row["run_config"]))
            path = join(paths.containers, row["id"], "hosts")
            if not os.path.exists(path):
                continue
            hostname = read_text(join(paths.containers, row["id"], "hostname")).strip()
            write_in_place(path, container_hosts_text(db, row["id"], run, hostname))
        except (OSError, ValueError, HullError):
            continue


# ------------------------------------------------------------------ embedded DNS


def dns_containers(db: Database) -> dict[str, tuple[str, list[str]]]:
    """Name and --dns of each container with an endpoint: its name answers reverse
    lookups, and the DNS server forwards its queries to its --dns servers instead of
    the host's resolvers (Docker's rule on user networks)."""
    rows = db.execute(
        "SELECT c.id, c.name, json_extract(c.run_config, '$.dns') AS dns FROM containers c"
        " WHERE c.id IN (SELECT container_id FROM net_endpoints)"
    ).fetchall()
    return {r["id"]: (r["name"], fastjson.loads(r["dns"] or "[]")) for r in rows}


def sync_dns(paths: HullPaths, db: Database, warnings: list[str]) -> bool:
    """Bring the embedded DNS server in line with the endpoints (start, reload or stop
    it); False, with a warning, when it cannot serve: names still resolve through
    /etc/hosts, which is why those entries stay."""
    from hull.net import dns_control

    try:
        warnings += dns_control.sync(paths, db, dns_containers(db))
    except (HullError, OSError) as err:
        message = err.message if isinstance(err, HullError) else str(err)
        warnings.append(f"embedded DNS unavailable, names resolve through /etc/hosts: {message}")
        return False
    return True


def start_dns(
    paths: HullPaths, db: Database, container_id: str, run: RunConfig, warnings: list[str]
) -> str | None:
    """The nameserver of a container on a user network (its gateway), once the DNS
    server knows the container; None on the default bridge only (no SQL, no server)."""
    if run.network == "bridge" and not run.extra_networks:
        return None
    from hull.net import dns_control

    gateway = dns_control.nameserver_for(db, container_id)
    if gateway is None or not sync_dns(paths, db, warnings):
        return None
    return gateway


def check_dns(paths: HullPaths, db: Database) -> None:
    """Start-up sweep: respawn a dead DNS server, stop one nobody needs. One SQL query
    and a stat when no user network has containers."""
    busy = db.execute(
        "SELECT 1 FROM net_endpoints e JOIN net_networks n ON n.id = e.network_id"
        " WHERE n.name != 'bridge' LIMIT 1"
    ).fetchone()
    if busy is None and not os.path.lexists(join(paths.runroot, "dns", "control")):
        return
    from hull.net import dns_control

    for warning in dns_control.check(paths, db, dns_containers(db)):
        print(f"hull: warning: {warning}", file=sys.stderr)


# ------------------------------------------------------------------ start


@dataclass(frozen=True)
class NetworkPlan:
    """What build_spec needs from the network set-up."""

    netns: str | None = None  # the namespace to join; None: a new, empty one
    hostname: str | None = None  # --network container:ID takes the other's name


def joined_netns(paths: HullPaths, target_id: str, target_pid: int) -> str:
    """The namespace of another (running) container: its bound one, else its process's."""
    own = netns_path(paths, target_id)
    from hull.net.netns import netns_exists

    if netns_exists(own):
        return own
    return f"/proc/{target_pid}/ns/net"


def exposed_port_specs(image_config: dict[str, Any], taken: list[PortSpec]) -> list[PortSpec]:
    """-P: each ExposedPorts key ("80/tcp") not published by -p, on a free host port."""
    from hull.net.ports import PortSpec

    covered = {(p.container_port, p.proto) for p in taken}
    specs = []
    for key in sorted((image_config.get("ExposedPorts") or {}).keys()):
        number, _, proto = str(key).partition("/")
        proto = (proto or "tcp").lower()
        if not number.isdigit() or proto not in ("tcp", "udp"):
            continue
        if (int(number), proto) not in covered:
            specs.append(PortSpec(int(number), proto))
    return specs


def setup(
    paths: HullPaths,
    db: Database,
    container_id: str,
    name: str,
    run: RunConfig,
    image_config: dict[str, Any],
    container_dir: str,
    warnings: list[str],
) -> NetworkPlan:
    """Everything the container's network needs before it starts; undone on failure."""
    if not uses_network(run):
        if (run.ports or run.publish_all) and not run.network.startswith("container:"):
            warnings.append(f"published ports are discarded in network mode {run.network!r}")
        return NetworkPlan()
    from hull.net.netns import create_netns
    from hull.net.ports import check_no_overlap, parse_port_specs

    if holds_network_state(db, paths, container_id):  # a crash mid-setup: start clean
        teardown(paths, db, container_id)
    service = network_service(paths, db)
    # A microVM has no namespace here: its endpoint is a tap (hull.engine.vmbackend).
    path = None if run.isolation == "vm" else netns_path(paths, container_id)
    if path is not None:
        create_netns(path)
    try:
        primary = _connect_all(service, container_id, name, run, path)
        specs = parse_port_specs(run.ports)
        if run.publish_all:
            specs += exposed_port_specs(image_config, specs)
        check_no_overlap(specs)
        if specs:
            service.publish(container_id, primary, specs)
        hostname = run.hostname or container_id[:12]
        write_in_place(
            join(container_dir, "hosts"), container_hosts_text(db, container_id, run, hostname)
        )
        nameserver = start_dns(paths, db, container_id, run, warnings)
        write_text(
            join(container_dir, "resolv.conf"),
            resolv_conf(
                read_host_resolv_conf(), [nameserver] if nameserver else run.dns, own_namespace=True
            ),
        )
        refresh_peer_hosts(
            db, paths, container_id, [ep.network_id for ep in endpoints(db, container_id)]
        )
    except BaseException:
        teardown(paths, db, container_id, service)
        raise
    return NetworkPlan(netns=path)


def _connect_all(
    service: NetworkService, container_id: str, name: str, run: RunConfig, path: str | None
) -> str:
    """Connect to the run's network, then the extra ones; the first address."""
    from hull.errors import NotFoundError

    wanted = [(run.network, list(run.network_aliases), run.ip)]
    wanted += [
        (str(x["network"]), list(x.get("aliases") or []), x.get("ip")) for x in run.extra_networks
    ]
    primary = ""
    for network, aliases, ip in wanted:
        if network == "bridge":
            service.ensure_default()
        else:
            try:
                service.get(network)
            except NotFoundError:
                raise NotFoundError(f"network {network} not found") from None
        endpoint = service.connect(
            container_id, path, network, [name, container_id[:12], *aliases], ip
        )
        primary = primary or endpoint.ip
    return primary


def teardown(
    paths: HullPaths, db: Database, container_id: str, service: NetworkService | None = None
) -> None:
    """Unpublish, disconnect everything, drop the namespace; idempotent and cheap when
    the container holds nothing."""
    if not holds_network_state(db, paths, container_id):
        return
    held = endpoints(db, container_id)
    network_ids = [ep.network_id for ep in held]
    path = netns_path(paths, container_id)
    if _holds_rows(db, container_id):
        # With the namespace gone the kernel deletes the veths itself, in the background
        # (deleting them here costs 20-40 ms each); they are only taken down meanwhile.
        from hull.net.netns import netns_exists

        netns_goes = netns_exists(path)
        (service or network_service(paths, db)).disconnect_all(container_id, netns_goes)
    from hull.net.netns import delete_netns

    delete_netns(path)
    refresh_peer_hosts(db, paths, container_id, network_ids)
    if any(ep.network != "bridge" for ep in held):
        sync_dns(paths, db, [])  # its names go; the server goes with the last container


# ------------------------------------------------------------------ connect, disconnect


def connect_container(
    service: ContainerService,
    container_ref: str,
    network_ref: str,
    aliases: list[str],
    ip: str | None,
) -> None:
    """`network connect`: a running container gets the veth now; every container keeps
    the network in its run config, so its next start connects it again."""
    from hull.engine.containers import PAUSED, RUNNING, ContainerLock
    from hull.engine.runconfig import parse_ip

    record = service.get(container_ref)
    net = network_service(service.paths, service.db).get(network_ref)
    if net.name == "bridge" and (aliases or ip):
        raise ConfigError("aliases and --ip are supported only on user defined networks")
    ip = parse_ip(ip) if ip else None
    with ContainerLock(service.layout(record)):
        record = service.get(record.id)
        run = record.run
        check_connect_request(run, net.name)
        if record.state in (RUNNING, PAUSED):
            connect_running(
                service.paths, service.db, record.id, record.name, run, net.name, aliases, ip
            )
        run.extra_networks.append({"network": net.name, "aliases": list(aliases), "ip": ip})
        _save_run(service, record.id, run)


def disconnect_container(service: ContainerService, network_ref: str, container_ref: str) -> None:
    """`network disconnect`: the veth goes now, the network leaves the run config (its
    first network's place is taken by the next one, else the container has none)."""
    from hull.engine.containers import PAUSED, RUNNING, ContainerLock
    from hull.errors import NotFoundError

    record = service.get(container_ref)
    net = network_service(service.paths, service.db).get(network_ref)
    with ContainerLock(service.layout(record)):
        record = service.get(record.id)
        run = record.run
        connected = any(ep.network_id == net.id for ep in endpoints(service.db, record.id))
        configured = [run.network if uses_network(run) else ""]
        configured += [str(x["network"]) for x in run.extra_networks]
        if not connected and net.name not in configured:
            raise NotFoundError(f"container {record.name} is not connected to network {net.name}")
        if connected and record.state in (RUNNING, PAUSED):
            disconnect_running(service.paths, service.db, record.id, record.name, run, net.name)
        if net.name == run.network:
            if run.extra_networks:
                first = run.extra_networks.pop(0)
                run.network = str(first["network"])
                run.network_aliases = list(first.get("aliases") or [])
                run.ip = first.get("ip")
            else:
                run.network, run.network_aliases, run.ip = "none", [], None
        else:
            run.extra_networks = [x for x in run.extra_networks if x["network"] != net.name]
        _save_run(service, record.id, run)


def _save_run(service: ContainerService, container_id: str, run: RunConfig) -> None:
    service.db.execute(
        "UPDATE containers SET run_config = ? WHERE id = ?",
        (fastjson.dumps(run.to_dict()), container_id),
    )


def connect_running(
    paths: HullPaths,
    db: Database,
    container_id: str,
    name: str,
    run: RunConfig,
    network: str,
    aliases: list[str],
    ip: str | None,
) -> None:
    """A new veth into a running container's namespace, and the hosts files updated."""
    from hull.net.netns import netns_exists

    path = netns_path(paths, container_id)
    if not uses_network(run) or not netns_exists(path):
        raise StateError(
            f"container {name} is in network mode {run.network!r}: only containers on a "
            "bridge network can be connected to another one"
        )
    service = network_service(paths, db)
    endpoint = service.connect(container_id, path, network, [name, container_id[:12], *aliases], ip)
    _rewrite_own_hosts(paths, db, container_id, run)
    refresh_peer_hosts(db, paths, container_id, [service.get(endpoint.network).id])
    warnings: list[str] = []
    sync_dns(paths, db, warnings)
    for warning in warnings:
        print(f"hull: warning: {warning}", file=sys.stderr)


def disconnect_running(
    paths: HullPaths, db: Database, container_id: str, name: str, run: RunConfig, network: str
) -> None:
    service = network_service(paths, db)
    net = service.get(network)
    service.disconnect(container_id, net.id)
    _rewrite_own_hosts(paths, db, container_id, run)
    refresh_peer_hosts(db, paths, container_id, [net.id])
    sync_dns(paths, db, [])


def _rewrite_own_hosts(paths: HullPaths, db: Database, container_id: str, run: RunConfig) -> None:
    directory = join(paths.containers, container_id)
    try:
        hostname = read_text(join(directory, "hostname")).strip()
        write_in_place(
            join(directory, "hosts"), container_hosts_text(db, container_id, run, hostname)
        )
    except OSError as e:
        raise HullError(f"cannot update /etc/hosts of container {container_id[:12]}: {e}") from None


def check_connect_request(run: RunConfig, network: str) -> None:
    """Docker's refusals for `network connect`, before anything changes."""
    if run.network.startswith("container:") or run.network == "host":
        raise ConfigError(
            f"container sharing the network namespace of {run.network!r} cannot be "
            "connected to another network"
        )
    if run.network == "none":
        raise ConfigError("a container in network mode 'none' cannot be connected to a network")
    if network in ("host", "none"):
        raise ConfigError(f"container cannot be connected to the {network} network")
    if run.isolation == "vm":
        raise ConfigError(
            "a microVM container has one network card and no hot-plug: it stays on the "
            "network it was created on"
        )
    if network in (run.network, *(str(x["network"]) for x in run.extra_networks)):
        raise StateError(f"endpoint already exists in network {network}")
