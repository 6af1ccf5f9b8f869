"""Links: bridges, veth pairs, microVMs' taps and addresses, on the host and inside a netns.

Two netlink clients. What a container's start and stop do (veth, address, route, link
lookups and deletes, the host's MTU) goes through hull.net.rtnl: standard library only,
microseconds a call. pyroute2 (110-130 ms to import) is imported only inside the
functions that run off that path: creating a bridge, reading the host's routes and
addresses for a new network's subnet, listing a bridge's ports for the sweep.

Every function is idempotent where the engine may retry it (ensure_*, delete_*), so
the sweep after a crash and a second `hull` process racing this one stay harmless.
"""

from __future__ import annotations

import errno
import ipaddress
import os
import threading

from hull.errors import KernelError
from hull.net import rtnl
from hull.records import dataclass

TYPE_CHECKING = False
if TYPE_CHECKING:
    from pyroute2 import IPRoute
    from pyroute2.netlink.exceptions import NetlinkError

DEFAULT_MTU = 1500
# linux/if_tun.h
TUN_DEVICE = "/dev/net/tun"
TUNSETIFF = 0x400454CA
TUNSETPERSIST = 0x400454CB
IFF_TAP = 0x0002
IFF_NO_PI = 0x1000
_retiring: dict[str, threading.Thread] = {}  # taps being deleted in the background


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
    mtu: int  # the link's (LOCAL_MTU): traffic that stays on this host
    route_mtu: int | None = None  # the default route's: the host's own MTU, for egress


def _kernel_error(what: str, err: NetlinkError) -> KernelError:
    return KernelError(f"{what}: {os.strerror(err.code) if err.code else err}")


def _index(ipr: IPRoute, ifname: str) -> int | None:
    found = ipr.link_lookup(ifname=ifname)
    return int(found[0]) if found else None


def host_mtu() -> int:
    """The MTU of the interface that holds the host's default route (else 1500)."""
    with rtnl.Rtnl() as nl:
        oif = nl.default_route_oif()
        mtu = nl.link_mtu(oif) if oif else None
    return mtu or DEFAULT_MTU


def host_networks() -> list[ipaddress.IPv4Network]:
    """The IPv4 destinations the host already routes, and its own addresses' subnets,
    so a new network's subnet can avoid them (the default route excluded)."""
    from pyroute2 import IPRoute

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
    with rtnl.Rtnl() as nl:
        return nl.link_index(ifname) is not None


def ensure_bridge(name: str, gateway: str, prefixlen: int, mtu: int) -> None:
    """The bridge, up, with the gateway address; creating it only if it is missing.
    (pyroute2: this runs when a network is created, or after a reboot took its bridge.)"""
    from pyroute2 import IPRoute
    from pyroute2.netlink.exceptions import NetlinkError

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
    """Delete a link (a veth takes its peer with it); a missing one is fine.

    Synchronous, and slow for a veth (the kernel waits for RCU grace periods: 20-40 ms):
    a container that is going away with its namespace uses retire_link instead."""
    with rtnl.Rtnl() as nl:
        nl.delete_link(ifname)


def retire_link(ifname: str) -> None:
    """Take a container's host end of a veth down (its bridge port stops forwarding and
    forgets its MAC addresses at once), for a container whose network namespace is
    about to be dropped: the kernel then deletes the pair with the namespace, in the
    background, instead of making the caller wait for delete_link. (A namespace still
    held by another process, e.g. a --network container: peer, keeps the retired pair
    until that process ends; the network sweep deletes ports no endpoint row knows.)
    A missing link is fine."""
    with rtnl.Rtnl() as nl:
        try:
            nl.set_link(ifname, up=False)
        except rtnl.NetlinkError as e:
            if e.errno not in (errno.ENODEV, errno.ENOENT):
                raise


def bridge_ports(bridge: str) -> list[str]:
    """Names of the links enslaved to a bridge (empty when the bridge is missing)."""
    from pyroute2 import IPRoute

    with IPRoute() as ipr:
        index = _index(ipr, bridge)
        if index is None:
            return []
        return [str(link.get_attr("IFLA_IFNAME")) for link in ipr.get_links(master=index)]


def add_veth(spec: VethSpec) -> None:
    """The pair in one request: the host end on the bridge and up, the inner end created
    directly in the netns with its MAC and MTU; then, through a socket opened in the
    netns, lo and the inner end up, its address and (first network) default route.

    A host end of the same name (this container's previous run, whose namespace the
    kernel is still reclaiming) is deleted first."""
    try:
        fd = os.open(spec.netns_path, os.O_RDONLY | os.O_CLOEXEC)
    except OSError as e:
        raise KernelError(
            f"cannot open network namespace {spec.netns_path}: {e.strerror}"
        ) from None
    try:
        with rtnl.Rtnl() as nl:
            bridge = nl.link_index(spec.bridge)
            if bridge is None:
                raise KernelError(f"bridge {spec.bridge} does not exist")
            request = rtnl.VethRequest(
                name=spec.host_ifname,
                peer=spec.ifname,
                peer_netns_fd=fd,
                mtu=spec.mtu,
                master=bridge,
                up=True,
                peer_mac=spec.mac,
            )
            try:
                nl.add_veth(request)
            except rtnl.NetlinkError as e:
                if e.errno != errno.EEXIST:
                    raise
                nl.delete_link(spec.host_ifname)
                nl.add_veth(request)
    finally:
        os.close(fd)
    try:
        with rtnl.in_netns(spec.netns_path) as inside:
            _configure_inside(inside, spec)
    except BaseException:
        delete_link(spec.host_ifname)
        raise


def add_tap(name: str, bridge: str, mtu: int) -> None:
    """A persistent tap device on the bridge, up: a microVM's end of its network (QEMU
    opens it by name; the guest configures its own address). Persistent, so that it
    outlives no one by accident: it is deleted like a veth's host end (delete_link),
    by rm or by the sweep, whatever happened to QEMU. A leftover tap of the same name
    (a crashed start) is taken over. The tap is made with the TUNSETIFF ioctl:
    rtnetlink cannot create tun devices."""
    import fcntl
    import struct

    pending = _retiring.pop(name, None)
    if pending is not None:  # this container's previous tap, still being deleted
        pending.join()
    try:
        fd = os.open(TUN_DEVICE, os.O_RDWR | os.O_CLOEXEC)
    except OSError as e:
        raise KernelError(f"cannot open {TUN_DEVICE} for a microVM's tap: {e.strerror}") from None
    try:
        request = struct.pack("16sH22x", name.encode(), IFF_TAP | IFF_NO_PI)  # struct ifreq
        try:
            fcntl.ioctl(fd, TUNSETIFF, request)
        except OSError as e:
            if e.errno != errno.EBUSY:  # EBUSY: a QEMU of a crashed start still holds it
                raise
            delete_link(name)
            fcntl.ioctl(fd, TUNSETIFF, request)
        fcntl.ioctl(fd, TUNSETPERSIST, 1)
    except OSError as e:
        raise KernelError(f"cannot create tap {name}: {e.strerror}") from None
    finally:
        os.close(fd)
    try:
        with rtnl.Rtnl() as nl:
            index = nl.link_index(bridge)
            if index is None:
                raise KernelError(f"bridge {bridge} does not exist")
            nl.set_link(name, mtu=mtu, master=index, up=True)
    except BaseException:
        delete_link(name)
        raise


def retire_tap(name: str) -> None:
    """Take a microVM's tap down now (its bridge port stops forwarding at once) and
    delete it in a background thread: deleting a tun device waits for RCU (15-25 ms),
    which then overlaps the rest of rm. The thread is not a daemon, so a `hull`
    process exits only once the tap is gone; if it is killed first, the network sweep
    deletes the tap (a bridge port no endpoint row knows). A missing tap is fine."""
    with rtnl.Rtnl() as nl:
        try:
            nl.set_link(name, up=False)
        except rtnl.NetlinkError as e:
            if e.errno in (errno.ENODEV, errno.ENOENT):
                return
            raise
    thread = threading.Thread(target=_delete_quietly, args=(name,), name=f"delete {name}")
    _retiring[name] = thread
    thread.start()


def _delete_quietly(name: str) -> None:
    try:
        delete_link(name)
    except KernelError:
        pass  # down already; the sweep deletes what no endpoint row knows
    finally:
        if _retiring.get(name) is threading.current_thread():
            del _retiring[name]


def _configure_inside(nl: rtnl.Rtnl, spec: VethSpec) -> None:
    nl.set_link("lo", up=True)
    index = nl.link_index(spec.ifname)
    if index is None:
        raise KernelError(f"{spec.ifname} did not arrive in {spec.netns_path}")
    nl.add_address(index, spec.address, spec.prefixlen)
    nl.set_link(spec.ifname, up=True)
    if spec.gateway:
        nl.add_default_route(spec.gateway, index, spec.route_mtu)


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
