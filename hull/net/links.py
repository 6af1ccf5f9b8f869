"""Netlink (pyroute2): bridges, veth pairs and addresses, on the host and inside a netns.

Every function is idempotent where the engine may retry it (ensure_*, delete_*), so
the sweep after a crash and a second `hull` process racing this one stay harmless.
"""

from __future__ import annotations

import errno
import ipaddress
import os
from dataclasses import dataclass

from pyroute2 import IPRoute
from pyroute2.netlink.exceptions import NetlinkError

from hull.errors import KernelError
from hull.net.netns import run_in_netns

DEFAULT_MTU = 1500


@dataclass(frozen=True)
class VethSpec:
    """One end of a container's veth pair on the host, the other inside its netns."""

    host_ifname: str
    bridge: str
    netns_path: str
    ifname: str  # inside: eth0, eth1...
    mac: str
    address: str  # 10.88.0.2
    prefixlen: int
    gateway: str | None  # the default route, for the container's first network only
    mtu: int


def _kernel_error(what: str, err: NetlinkError) -> KernelError:
    return KernelError(f"{what}: {os.strerror(err.code) if err.code else err}")


def _index(ipr: IPRoute, ifname: str) -> int | None:
    found = ipr.link_lookup(ifname=ifname)
    return int(found[0]) if found else None


def host_mtu() -> int:
    """The MTU of the interface that holds the host's default route (else 1500)."""
    with IPRoute() as ipr:
        for route in ipr.get_default_routes(family=2):
            oif = route.get_attr("RTA_OIF")
            if oif:
                links = ipr.link("get", index=oif)
                if links:
                    return int(links[0].get_attr("IFLA_MTU") or DEFAULT_MTU)
    return DEFAULT_MTU


def host_networks() -> list[ipaddress.IPv4Network]:
    """The IPv4 destinations the host already routes, and its own addresses' subnets,
    so a new network's subnet can avoid them (the default route excluded)."""
    found: list[ipaddress.IPv4Network] = []
    with IPRoute() as ipr:
        for route in ipr.get_routes(family=2, table=254):
            prefixlen = int(route["dst_len"])
            dst = route.get_attr("RTA_DST")
            if dst and prefixlen > 0:
                found.append(ipaddress.IPv4Network(f"{dst}/{prefixlen}", strict=False))
        for addr in ipr.get_addr(family=2):
            local = addr.get_attr("IFA_ADDRESS")
            if local:
                found.append(ipaddress.IPv4Network(f"{local}/{addr['prefixlen']}", strict=False))
    return found


def link_exists(ifname: str) -> bool:
    with IPRoute() as ipr:
        return _index(ipr, ifname) is not None


def ensure_bridge(name: str, gateway: str, prefixlen: int, mtu: int) -> None:
    """The bridge, up, with the gateway address; creating it only if it is missing."""
    try:
        with IPRoute() as ipr:
            index = _index(ipr, name)
            if index is None:
                try:
                    ipr.link("add", ifname=name, kind="bridge", mtu=mtu)
                except NetlinkError as e:
                    if e.code != errno.EEXIST:  # another hull process was faster
                        raise
                index = _index(ipr, name)
                if index is None:
                    raise KernelError(f"bridge {name} vanished while it was being set up")
            present = {
                (a.get_attr("IFA_ADDRESS"), a["prefixlen"]) for a in ipr.get_addr(index=index)
            }
            if (gateway, prefixlen) not in present:
                try:
                    ipr.addr("add", index=index, address=gateway, prefixlen=prefixlen)
                except NetlinkError as e:
                    if e.code != errno.EEXIST:
                        raise
            ipr.link("set", index=index, state="up")
    except NetlinkError as e:
        raise _kernel_error(f"cannot set up bridge {name}", e) from None
    # 127.0.0.1:PORT from the host is DNATed out of this bridge: allow loopback sources.
    write_sysctl(f"net/ipv4/conf/{name}/route_localnet", "1")


def delete_link(ifname: str) -> None:
    """Delete a link (a veth takes its peer with it); a missing one is fine."""
    try:
        with IPRoute() as ipr:
            index = _index(ipr, ifname)
            if index is not None:
                ipr.link("del", index=index)
    except NetlinkError as e:
        if e.code not in (errno.ENODEV, errno.ENOENT):
            raise _kernel_error(f"cannot delete {ifname}", e) from None


def bridge_ports(bridge: str) -> list[str]:
    """Names of the links enslaved to a bridge (empty when the bridge is missing)."""
    with IPRoute() as ipr:
        index = _index(ipr, bridge)
        if index is None:
            return []
        return [str(link.get_attr("IFLA_IFNAME")) for link in ipr.get_links(master=index)]


def add_veth(spec: VethSpec) -> None:
    """Create the pair with its inner end directly in the netns, attach the outer end to
    the bridge, then address the inner end and bring everything up."""
    try:
        fd = os.open(spec.netns_path, os.O_RDONLY | os.O_CLOEXEC)
    except OSError as e:
        raise KernelError(
            f"cannot open network namespace {spec.netns_path}: {e.strerror}"
        ) from None
    try:
        with IPRoute() as ipr:
            bridge = _index(ipr, spec.bridge)
            if bridge is None:
                raise KernelError(f"bridge {spec.bridge} does not exist")
            ipr.link(
                "add",
                ifname=spec.host_ifname,
                kind="veth",
                mtu=spec.mtu,
                peer={"ifname": spec.ifname, "net_ns_fd": fd, "mtu": spec.mtu},
            )
            host = _index(ipr, spec.host_ifname)
            ipr.link("set", index=host, master=bridge, state="up")
    except NetlinkError as e:
        raise _kernel_error(f"cannot create veth {spec.host_ifname}", e) from None
    finally:
        os.close(fd)
    run_in_netns(spec.netns_path, lambda: _configure_inside(spec))


def _configure_inside(spec: VethSpec) -> None:
    try:
        with IPRoute() as ipr:
            lo = _index(ipr, "lo")
            if lo is not None:
                ipr.link("set", index=lo, state="up")
            index = _index(ipr, spec.ifname)
            if index is None:
                raise KernelError(f"{spec.ifname} did not arrive in {spec.netns_path}")
            ipr.link("set", index=index, address=spec.mac)
            ipr.addr("add", index=index, address=spec.address, prefixlen=spec.prefixlen)
            ipr.link("set", index=index, state="up")
            if spec.gateway:
                ipr.route("add", dst="0.0.0.0/0", gateway=spec.gateway, oif=index)
    except NetlinkError as e:
        raise _kernel_error(f"cannot configure {spec.ifname} in {spec.netns_path}", e) from None


def write_sysctl(key: str, value: str) -> None:
    """Write /proc/sys/<key> (host namespace) unless it already holds value."""
    path = f"/proc/sys/{key}"
    try:
        with open(path) as f:
            if f.read().strip() == value:
                return
        with open(path, "w") as f:
            f.write(value)
    except OSError as e:
        raise KernelError(f"cannot set {key.replace('/', '.')}={value}: {e.strerror}") from None
