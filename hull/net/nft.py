"""nftables: NAT, isolation and published ports in a table of Hull's own (`ip hull`).

Nothing here touches another table, so the host's rules (iptables-nft included) stay as
they are. The rules are static; what changes per network and per port are elements of
sets and maps, so every change is one atomic `nft -f -` batch and needs no rule handles:

    forward      iifname vmap @from_bridge, oifname vmap @to_bridge  (a chain per network:
                 same bridge accepted, other Hull bridges dropped, --internal: no egress,
                 inbound only for replies and published ports)
    prerouting   fib daddr type local -> ports (DNAT through @ports_ip, then @ports_any)
    output       the same, so 127.0.0.1:PORT works from the host (with route_localnet)
    postrouting  masquerade egress of @nat_subnets, hairpin, and 127.0.0.0/8 -> bridges

Removal is written as "add, then delete" inside one batch, which succeeds whether or not
the element or chain was there: the sweep after a crash can run it blindly.
"""

from __future__ import annotations

import re

from hull.errors import ConfigError, KernelError
from hull.records import dataclass

DEFAULT_TABLE = "hull"
NFT = "nft"
_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9_-]{0,14}$")


def check_name(name: str, what: str) -> str:
    """Bridge and table names end up in nft source: allow only plain identifiers."""
    if not _NAME.match(name):
        raise ConfigError(
            f"invalid {what} {name!r}: 1-15 letters, digits, '_' or '-', starting with a letter"
        )
    return name


@dataclass(frozen=True)
class NetRules:
    """What the firewall needs to know of one network."""

    bridge: str
    subnet: str
    internal: bool


@dataclass(frozen=True)
class PortRule:
    """One DNAT: host_ip:host_port/proto -> container_ip:container_port."""

    proto: str
    host_ip: str
    host_port: int
    container_ip: str
    container_port: int

    def element(self) -> tuple[str, str]:
        """(map name, element) for this port's DNAT map."""
        target = f"{self.container_ip} . {self.container_port}"
        if self.host_ip == "0.0.0.0":
            return "ports_any", f"{self.proto} . {self.host_port} : {target}"
        return "ports_ip", f"{self.host_ip} . {self.proto} . {self.host_port} : {target}"


def declarations(t: str) -> list[str]:
    """The table, sets and maps (no-ops when present): removal batches start with these so
    they also work on a table that is gone (after a reboot, or `nft flush ruleset`)."""
    return [
        f"add table {t}",
        f"add set {t} bridges {{ type ifname; }}",
        f"add set {t} nat_subnets {{ type ipv4_addr; flags interval; }}",
        f"add set {t} all_subnets {{ type ipv4_addr; flags interval; }}",
        f"add map {t} from_bridge {{ type ifname : verdict; }}",
        f"add map {t} to_bridge {{ type ifname : verdict; }}",
        f"add map {t} ports_any {{ type inet_proto . inet_service : ipv4_addr . inet_service; }}",
        f"add map {t} ports_ip "
        "{ type ipv4_addr . inet_proto . inet_service : ipv4_addr . inet_service; }",
    ]


def base_batch(table: str = DEFAULT_TABLE) -> list[str]:
    """The table, its sets and maps, and its static rules; idempotent and atomic."""
    t = f"ip {check_name(table, 'nft table')}"
    lines = declarations(t) + [
        f"add chain {t} forward {{ type filter hook forward priority filter; policy accept; }}",
        f"add chain {t} prerouting {{ type nat hook prerouting priority dstnat; policy accept; }}",
        f"add chain {t} output {{ type nat hook output priority -100; policy accept; }}",
        f"add chain {t} postrouting "
        "{ type nat hook postrouting priority srcnat; policy accept; }",
        f"add chain {t} ports",
    ]
    for chain in ("forward", "prerouting", "output", "postrouting", "ports"):
        lines.append(f"flush chain {t} {chain}")
    lines += [
        # Hull's links run at a jumbo MTU (hull.net.networks.LOCAL_MTU): a routed TCP
        # connection gets the MSS of its outgoing route (the NIC's), as Docker's users
        # add by hand; other protocols use path MTU discovery.
        f"add rule {t} forward tcp flags syn tcp option maxseg size set rt mtu",
        f"add rule {t} forward iifname vmap @from_bridge",
        f"add rule {t} forward oifname vmap @to_bridge",
        f"add rule {t} prerouting fib daddr type local jump ports",
        f"add rule {t} output fib daddr type local jump ports",
        f"add rule {t} ports dnat ip to ip daddr . meta l4proto . th dport map @ports_ip",
        f"add rule {t} ports dnat ip to meta l4proto . th dport map @ports_any",
        # 127.0.0.1:PORT from the host: the container must answer the host, not itself.
        f"add rule {t} postrouting ip saddr 127.0.0.0/8 oifname @bridges masquerade",
        # Hairpin: a container reaching a published port of its own network.
        f"add rule {t} postrouting ct status dnat oifname @bridges ip saddr @all_subnets "
        "masquerade",
        f"add rule {t} postrouting oifname != @bridges ip saddr @nat_subnets masquerade",
    ]
    return lines


def _network_chains(t: str, net: NetRules) -> tuple[str, str]:
    return f"from-{net.bridge}", f"to-{net.bridge}"


def add_network_batch(net: NetRules, table: str = DEFAULT_TABLE) -> list[str]:
    """The per-network chains and elements; idempotent (chains are flushed and refilled)."""
    t = f"ip {check_name(table, 'nft table')}"
    bridge = check_name(net.bridge, "bridge name")
    out_chain, in_chain = _network_chains(t, net)
    lines = [
        f"add chain {t} {out_chain}",
        f"flush chain {t} {out_chain}",
        f'add rule {t} {out_chain} oifname "{bridge}" accept',
        f"add rule {t} {out_chain} oifname @bridges drop",
        f"add rule {t} {out_chain} {'drop' if net.internal else 'accept'}",
        f"add chain {t} {in_chain}",
        f"flush chain {t} {in_chain}",
        f"add rule {t} {in_chain} ct state established,related accept",
    ]
    if not net.internal:
        lines.append(f"add rule {t} {in_chain} ct status dnat accept")
    lines += [
        f"add rule {t} {in_chain} drop",
        f'add element {t} bridges {{ "{bridge}" }}',
        f"add element {t} all_subnets {{ {net.subnet} }}",
        f'add element {t} from_bridge {{ "{bridge}" : jump {out_chain} }}',
        f'add element {t} to_bridge {{ "{bridge}" : jump {in_chain} }}',
    ]
    if not net.internal:
        lines.append(f"add element {t} nat_subnets {{ {net.subnet} }}")
    return lines


def remove_network_batch(net: NetRules, table: str = DEFAULT_TABLE) -> list[str]:
    """Undo add_network_batch, whether or not it (or part of it) was applied."""
    t = f"ip {check_name(table, 'nft table')}"
    bridge = check_name(net.bridge, "bridge name")
    out_chain, in_chain = _network_chains(t, net)
    lines = [*declarations(t), f"add chain {t} {out_chain}", f"add chain {t} {in_chain}"]
    for name, key, value in (
        ("from_bridge", f'"{bridge}"', f" : jump {out_chain}"),
        ("to_bridge", f'"{bridge}"', f" : jump {in_chain}"),
        ("bridges", f'"{bridge}"', ""),
        ("all_subnets", net.subnet, ""),
        ("nat_subnets", net.subnet, ""),
    ):
        lines.append(f"add element {t} {name} {{ {key}{value} }}")
        lines.append(f"delete element {t} {name} {{ {key} }}")
    for chain in (out_chain, in_chain):
        lines += [f"flush chain {t} {chain}", f"delete chain {t} {chain}"]
    return lines


def add_port_batch(ports: list[PortRule], table: str = DEFAULT_TABLE) -> list[str]:
    t = f"ip {check_name(table, 'nft table')}"
    return [
        f"add element {t} {name} {{ {element} }}" for name, element in map(PortRule.element, ports)
    ]


def remove_port_batch(ports: list[PortRule], table: str = DEFAULT_TABLE) -> list[str]:
    t = f"ip {check_name(table, 'nft table')}"
    lines = declarations(t)
    for name, element in map(PortRule.element, ports):
        lines.append(f"add element {t} {name} {{ {element} }}")
        lines.append(f"delete element {t} {name} {{ {element.split(' : ')[0]} }}")
    return lines


def apply(lines: list[str]) -> None:
    """Run one batch through `nft -f -`: all of it takes effect, or none of it."""
    if not lines:
        return
    import subprocess  # here: `hull run` without -p never runs nft

    script = "\n".join(lines) + "\n"
    try:
        done = subprocess.run(
            [NFT, "-f", "-"], input=script, capture_output=True, text=True, check=False
        )
    except FileNotFoundError:
        raise KernelError("nft is not installed (Debian: apt-get install nftables)") from None
    if done.returncode != 0:
        raise KernelError(f"nftables refused Hull's rules: {done.stderr.strip()}")


def delete_table(table: str = DEFAULT_TABLE) -> None:
    """Remove Hull's whole table (tests, `hull system reset`); a missing one is fine."""
    t = f"ip {check_name(table, 'nft table')}"
    apply([f"add table {t}", f"delete table {t}"])


def list_table(table: str = DEFAULT_TABLE) -> str:
    """The table as nft prints it, or "" when it does not exist (diagnostics, tests)."""
    import subprocess

    done = subprocess.run(
        [NFT, "list", "table", "ip", check_name(table, "nft table")],
        capture_output=True,
        text=True,
        check=False,
    )
    return done.stdout if done.returncode == 0 else ""
