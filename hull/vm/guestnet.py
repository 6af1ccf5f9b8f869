"""A microVM's network as the guest agent applies it: eth0 on a host tap, and /etc files.

The engine connects a VM container to its network as it does a container (hull.net:
a leased address, an endpoint row, published ports through nft DNAT), except that
the endpoint is a tap on the network's bridge instead of a veth into a namespace.
The guest then configures its own side. This module turns what the engine decided
into what QEMU and the agent take (pure: no I/O but reading the /etc files):

- Nic: the tap behind the VM's virtio-net card, and the MAC it starts with;
- "eth0 MAC ADDR/PREFIX GATEWAY|- MTU": the agent sets the MAC (a card restored from
  a template keeps the template's MAC otherwise: every VM would share one), the MTU,
  the address, brings eth0 and lo up and adds the default route;
- "PATH\\nCONTENT": /etc/hosts, /etc/resolv.conf and /etc/hostname as the engine
  wrote them for a container (a container gets them bind-mounted; a VM on a network
  gets a copy written into its root before the main process starts; with --network
  none the image's own stay: writing them costs a TCG guest about 10 ms).
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass
from pathlib import Path

from hull.errors import ConfigError
from hull.vm.qemu import Nic

GUEST_IFNAME = "eth0"
ETC_FILES = ("hostname", "hosts", "resolv.conf")  # as hull.engine.spec.ETC_FILES
_MAC = re.compile(r"^[0-9a-f]{2}(:[0-9a-f]{2}){5}$")
_TAP = re.compile(r"^[A-Za-z0-9_.-]{1,15}$")


@dataclass(frozen=True)
class GuestInterface:
    """The VM's one network interface: its host tap and the guest's address."""

    tap: str
    mac: str
    address: str
    prefixlen: int
    gateway: str | None
    mtu: int

    def __post_init__(self) -> None:
        if not _TAP.match(self.tap):
            raise ConfigError(f"invalid tap name {self.tap!r}")
        if not _MAC.match(self.mac) or int(self.mac[:2], 16) & 1:
            raise ConfigError(f"invalid unicast MAC address {self.mac!r}")
        try:
            ipaddress.IPv4Interface(f"{self.address}/{self.prefixlen}")
            if self.gateway is not None:
                ipaddress.IPv4Address(self.gateway)
        except ValueError as exc:
            raise ConfigError(f"invalid guest address: {exc}") from None
        if not 68 <= self.mtu <= 65535:
            raise ConfigError(f"invalid MTU {self.mtu}")

    def nic(self) -> Nic:
        return Nic(mac=self.mac, tap=self.tap)

    def agent_spec(self) -> str:
        """The agent's "IFNAME MAC ADDR/PREFIX GATEWAY|- MTU"."""
        gateway = self.gateway or "-"
        return f"{GUEST_IFNAME} {self.mac} {self.address}/{self.prefixlen} {gateway} {self.mtu}"


def file_specs(files: dict[str, str]) -> list[str]:
    """The agent's "PATH\\nCONTENT" for each guest path (absolute, one line)."""
    specs = []
    for path, text in files.items():
        if not path.startswith("/") or "\n" in path or "\0" in path:
            raise ConfigError(f"invalid guest file path {path!r}")
        specs.append(f"{path}\n{text}")
    return specs


def etc_files(container_dir: Path) -> dict[str, str]:
    """/etc/hostname, hosts and resolv.conf as the engine wrote them in container_dir
    (those that exist)."""
    files = {}
    for name in ETC_FILES:
        try:
            files[f"/etc/{name}"] = (container_dir / name).read_text()
        except OSError:
            continue
    return files
