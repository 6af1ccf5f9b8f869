"""rtnetlink in the standard library: the few link, address and route calls a
container's start and stop make, on a plain NETLINK_ROUTE socket.

Why this exists beside pyroute2: `import pyroute2` costs 110-130 ms (its package pulls
in asyncio, ndb, ipdb, conntrack...; even pyroute2.netlink.nlsocket costs ~95 ms), which
is more than the whole budget of `hull run --rm IMAGE true`. This module imports
_socket, struct and os only (not `socket`, whose enum classes cost ~1.5 ms, nor
ipaddress), and each call is one or two system calls. pyroute2 stays for everything
off that path: creating bridges, reading the host's routes and addresses, listing a
bridge's ports for the sweep.

Teardown deletes no veth here on a container's way out: the engine takes the host end
down and drops the namespace, and the kernel deletes the pair with it in the background
(a synchronous veth delete waits for RCU grace periods: 20-40 ms). See links.py.

A netlink socket works on the network namespace it was opened in, whichever thread
uses it later: `in_netns(path)` opens one from a short-lived thread that joined the
namespace (hull.net.netns.run_in_netns), and the caller then uses it from its own
thread, which never leaves the host's namespace.

Message layout (linux/netlink.h, linux/rtnetlink.h): nlmsghdr, then a fixed family
header (ifinfomsg, ifaddrmsg or rtmsg), then rtattrs, each padded to 4 bytes.
"""

from __future__ import annotations

import _socket
import errno
import os
import struct
from collections.abc import Iterator

from hull.errors import KernelError
from hull.records import dataclass

# linux/netlink.h
NETLINK_ROUTE = 0
SOL_NETLINK = 270
NETLINK_CAP_ACK = 10
NETLINK_EXT_ACK = 11
NLMSG_ERROR = 2
NLMSG_DONE = 3
NLM_F_REQUEST = 0x1
NLM_F_MULTI = 0x2
NLM_F_ACK = 0x4
NLM_F_DUMP = 0x300
NLM_F_EXCL = 0x200
NLM_F_CREATE = 0x400
NLM_F_CAPPED = 0x100  # on an NLMSG_ERROR: the request echoed is its header only
NLM_F_ACK_TLVS = 0x200  # on an NLMSG_ERROR: extended-ack attributes follow
NLMSGERR_ATTR_MSG = 1
# linux/rtnetlink.h
RTM_NEWLINK = 16
RTM_DELLINK = 17
RTM_GETLINK = 18
RTM_NEWADDR = 20
RTM_NEWROUTE = 24
RTM_GETROUTE = 26
RT_TABLE_MAIN = 254
RTPROT_BOOT = 3
RT_SCOPE_UNIVERSE = 0
RTN_UNICAST = 1
RTA_DST = 1
RTA_OIF = 4
RTA_GATEWAY = 5
RTA_TABLE = 15
RTA_METRICS = 8
RTAX_MTU = 2
# linux/if_link.h, linux/veth.h, linux/if_addr.h
IFLA_ADDRESS = 1
IFLA_IFNAME = 3
IFLA_MTU = 4
IFLA_MASTER = 10
IFLA_LINKINFO = 18
IFLA_NET_NS_FD = 28
IFLA_EXT_MASK = 29
IFLA_INFO_KIND = 1
IFLA_INFO_DATA = 2
VETH_INFO_PEER = 1
IFA_ADDRESS = 1
IFA_LOCAL = 2
IFA_BROADCAST = 4
RTEXT_FILTER_SKIP_STATS = 1 << 3
IFF_UP = 0x1

NLMSGHDR = struct.Struct("=IHHII")  # len, type, flags, seq, pid
IFINFOMSG = struct.Struct("=BxHiII")  # family, pad, type, index, flags, change
IFADDRMSG = struct.Struct("=BBBBI")  # family, prefixlen, flags, scope, index
RTMSG = struct.Struct(
    "=BBBBBBBBI"
)  # family, dst_len, src_len, tos, table, proto, scope, type, flags
RTATTR = struct.Struct("=HH")  # len, type
RECV_SIZE = 65536
IFNAMSIZ = 16


class NetlinkError(KernelError):
    """The kernel refused a request; errno says why (EEXIST, ENODEV...)."""

    def __init__(self, what: str, code: int, detail: str = "") -> None:
        reason = os.strerror(code) + (f" ({detail})" if detail else "")
        super().__init__(f"{what}: {reason}")
        self.errno = code


# ------------------------------------------------------------------ encoding (pure)


def align(length: int) -> int:
    return (length + 3) & ~3


def rtattr(kind: int, payload: bytes) -> bytes:
    """One attribute: header, payload, zero padding to 4 bytes."""
    length = RTATTR.size + len(payload)
    return RTATTR.pack(length, kind) + payload + b"\0" * (align(length) - length)


def attr_u32(kind: int, value: int) -> bytes:
    return rtattr(kind, struct.pack("=I", value))


def attr_str(kind: int, value: str) -> bytes:
    return rtattr(kind, value.encode() + b"\0")


def attr_ipv4(kind: int, address: str) -> bytes:
    try:
        return rtattr(kind, _socket.inet_pton(_socket.AF_INET, address))
    except OSError:
        raise ValueError(f"invalid IPv4 address {address!r}") from None


def attr_mac(kind: int, mac: str) -> bytes:
    raw = bytes.fromhex(mac.replace(":", ""))
    if len(raw) != 6:
        raise ValueError(f"invalid MAC address {mac!r}")
    return rtattr(kind, raw)


def ifname_attr(name: str) -> bytes:
    if not name or len(name.encode()) >= IFNAMSIZ or "/" in name or name.strip() != name:
        raise ValueError(f"invalid interface name {name!r}")
    return attr_str(IFLA_IFNAME, name)


def ifinfomsg(index: int = 0, flags: int = 0, change: int = 0) -> bytes:
    return IFINFOMSG.pack(_socket.AF_UNSPEC, 0, index, flags, change)


def nlmsg(msg_type: int, flags: int, seq: int, payload: bytes) -> bytes:
    return NLMSGHDR.pack(NLMSGHDR.size + len(payload), msg_type, flags, seq, 0) + payload


def up_flags(up: bool | None) -> tuple[int, int]:
    """(ifi_flags, ifi_change) that set IFF_UP, clear it, or leave it (None)."""
    if up is None:
        return 0, 0
    return (IFF_UP if up else 0), IFF_UP


def link_attrs(mtu: int | None = None, mac: str | None = None, master: int | None = None) -> bytes:
    out = b""
    if mtu is not None:
        out += attr_u32(IFLA_MTU, mtu)
    if mac is not None:
        out += attr_mac(IFLA_ADDRESS, mac)
    if master is not None:
        out += attr_u32(IFLA_MASTER, master)
    return out


@dataclass(frozen=True)
class VethRequest:
    """A veth pair whose peer is created directly in another namespace, configured in
    the same message: both names and MTUs, the peer's MAC, the host end's master and
    state."""

    name: str
    peer: str
    peer_netns_fd: int
    mtu: int
    master: int | None = None
    up: bool = False
    peer_mac: str | None = None  # the peer stays down: the kernel refuses (ENOTCONN)
    # to open a veth end before its pair is complete, so it comes up afterwards

    def payload(self) -> bytes:
        peer = ifinfomsg() + ifname_attr(self.peer) + link_attrs(self.mtu, self.peer_mac)
        peer += attr_u32(IFLA_NET_NS_FD, self.peer_netns_fd)
        linkinfo = rtattr(IFLA_INFO_KIND, b"veth")
        linkinfo += rtattr(IFLA_INFO_DATA, rtattr(VETH_INFO_PEER, peer))
        flags, change = up_flags(self.up)
        return (
            ifinfomsg(0, flags, change)
            + ifname_attr(self.name)
            + link_attrs(self.mtu, None, self.master)
            + rtattr(IFLA_LINKINFO, linkinfo)
        )


def address_payload(index: int, address: str, prefixlen: int) -> bytes:
    """RTM_NEWADDR of an IPv4 address with its subnet's broadcast (as `ip addr add
    ... brd +` and Docker do)."""
    if not 0 <= prefixlen <= 32:
        raise ValueError(f"invalid IPv4 prefix length {prefixlen}")
    body = IFADDRMSG.pack(_socket.AF_INET, prefixlen, 0, RT_SCOPE_UNIVERSE, index)
    body += attr_ipv4(IFA_LOCAL, address) + attr_ipv4(IFA_ADDRESS, address)
    if prefixlen < 31:
        (raw,) = struct.unpack("!I", _socket.inet_pton(_socket.AF_INET, address))
        broadcast = struct.pack("!I", raw | ((1 << (32 - prefixlen)) - 1))
        body += rtattr(IFA_BROADCAST, broadcast)
    return body


def default_route_payload(gateway: str, index: int, mtu: int | None = None) -> bytes:
    """RTM_NEWROUTE: 0.0.0.0/0 via gateway dev index, in the main table; with mtu, the
    route's own MTU metric (`ip route add default via GW mtu N`)."""
    body = RTMSG.pack(
        _socket.AF_INET, 0, 0, 0, RT_TABLE_MAIN, RTPROT_BOOT, RT_SCOPE_UNIVERSE, RTN_UNICAST, 0
    )
    payload = body + attr_ipv4(RTA_GATEWAY, gateway) + attr_u32(RTA_OIF, index)
    if mtu:
        payload += rtattr(RTA_METRICS, attr_u32(RTAX_MTU, mtu))
    return payload


# ------------------------------------------------------------------ decoding (pure)


@dataclass(frozen=True)
class Message:
    type: int
    flags: int
    seq: int
    payload: bytes


def parse_messages(data: bytes) -> Iterator[Message]:
    """The nlmsghdr-framed messages of one datagram."""
    offset = 0
    while offset + NLMSGHDR.size <= len(data):
        length, kind, flags, seq, _ = NLMSGHDR.unpack_from(data, offset)
        if length < NLMSGHDR.size or offset + length > len(data):
            raise KernelError(f"malformed netlink message (length {length})")
        yield Message(kind, flags, seq, data[offset + NLMSGHDR.size : offset + length])
        offset += align(length)


def parse_attrs(data: bytes, offset: int = 0) -> dict[int, bytes]:
    """rtattr type -> payload from offset on (the last one wins on repeats)."""
    attrs: dict[int, bytes] = {}
    while offset + RTATTR.size <= len(data):
        length, kind = RTATTR.unpack_from(data, offset)
        if length < RTATTR.size:
            break
        attrs[kind & 0x3FFF] = data[offset + RTATTR.size : offset + length]  # no NLA_F_* bits
        offset += align(length)
    return attrs


def parse_error(message: Message) -> tuple[int, str]:
    """(errno, the kernel's extended-ack text) of an NLMSG_ERROR; errno 0 is an ACK."""
    (code,) = struct.unpack_from("=i", message.payload)
    detail = ""
    if message.flags & NLM_F_ACK_TLVS:
        # The echoed request: its header only when NETLINK_CAP_ACK is on (we set it).
        (echoed,) = struct.unpack_from("=I", message.payload, 4)
        skip = 4 + (NLMSGHDR.size if message.flags & NLM_F_CAPPED else align(echoed))
        raw = parse_attrs(message.payload, skip).get(NLMSGERR_ATTR_MSG, b"")
        detail = raw.rstrip(b"\0").decode(errors="replace")
    return -code, detail


def u32(raw: bytes) -> int:
    return int(struct.unpack_from("=I", raw)[0])


# ------------------------------------------------------------------ the socket


class Rtnl:
    """One NETLINK_ROUTE socket, in the namespace of the thread that opened it."""

    def __init__(self) -> None:
        self._sock = _socket.socket(
            _socket.AF_NETLINK, _socket.SOCK_RAW | _socket.SOCK_CLOEXEC, NETLINK_ROUTE
        )
        try:
            self._sock.setsockopt(SOL_NETLINK, NETLINK_CAP_ACK, 1)
            self._sock.setsockopt(SOL_NETLINK, NETLINK_EXT_ACK, 1)
        except OSError:  # older kernels: plain errors, still correct
            pass
        self._sock.bind((0, 0))
        self._seq = 0

    def close(self) -> None:
        self._sock.close()

    def __enter__(self) -> Rtnl:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def request(self, what: str, msg_type: int, flags: int, payload: bytes) -> list[Message]:
        """Send one request and wait for its ACK (or the end of a dump); the replies
        that came before it. Raises NetlinkError with what for context."""
        self._seq += 1
        seq = self._seq
        self._sock.send(nlmsg(msg_type, flags | NLM_F_REQUEST | NLM_F_ACK, seq, payload))
        replies: list[Message] = []
        while True:
            data = self._sock.recv(RECV_SIZE)
            for message in parse_messages(data):
                if message.seq != seq:
                    continue  # a late answer to an earlier request
                if message.type == NLMSG_ERROR:
                    code, detail = parse_error(message)
                    if code:
                        raise NetlinkError(what, code, detail)
                    return replies
                if message.type == NLMSG_DONE:
                    code, detail = parse_error(message) if message.payload else (0, "")
                    if code:
                        raise NetlinkError(what, code, detail)
                    return replies
                replies.append(message)

    # -------------------------------------------------------------- links

    def link_index(self, name: str) -> int | None:
        """The index of a link by name, or None when there is none."""
        for reply in self._get_link(f"cannot look up {name}", ifinfomsg() + ifname_attr(name)):
            if reply.type == RTM_NEWLINK:
                return int(IFINFOMSG.unpack_from(reply.payload)[2])
        return None

    def link_mtu(self, index: int) -> int | None:
        for reply in self._get_link(f"cannot look up link {index}", ifinfomsg(index)):
            mtu = parse_attrs(reply.payload, IFINFOMSG.size).get(IFLA_MTU)
            if mtu:
                return u32(mtu)
        return None

    def _get_link(self, what: str, selector: bytes) -> list[Message]:
        """RTM_GETLINK's replies for one link (no statistics), [] when it is gone."""
        payload = selector + attr_u32(IFLA_EXT_MASK, RTEXT_FILTER_SKIP_STATS)
        try:
            return self.request(what, RTM_GETLINK, 0, payload)
        except NetlinkError as e:
            if e.errno in (errno.ENODEV, errno.ENOENT):
                return []
            raise

    def add_veth(self, veth: VethRequest) -> None:
        self.request(
            f"cannot create veth {veth.name}",
            RTM_NEWLINK,
            NLM_F_CREATE | NLM_F_EXCL,
            veth.payload(),
        )

    def set_link(
        self,
        name: str,
        *,
        up: bool | None = None,
        mtu: int | None = None,
        mac: str | None = None,
        master: int | None = None,
    ) -> None:
        """Change a link found by name (the kernel looks the name up)."""
        flags, change = up_flags(up)
        payload = ifinfomsg(0, flags, change) + ifname_attr(name) + link_attrs(mtu, mac, master)
        self.request(f"cannot configure {name}", RTM_NEWLINK, 0, payload)

    def delete_link(self, name: str) -> bool:
        """Delete a link by name (a veth takes its peer along); False if it is gone."""
        try:
            self.request(f"cannot delete {name}", RTM_DELLINK, 0, ifinfomsg() + ifname_attr(name))
        except NetlinkError as e:
            if e.errno in (errno.ENODEV, errno.ENOENT):
                return False
            raise
        return True

    # -------------------------------------------------------------- addresses, routes

    def add_address(self, index: int, address: str, prefixlen: int) -> None:
        self.request(
            f"cannot add {address}/{prefixlen}",
            RTM_NEWADDR,
            NLM_F_CREATE | NLM_F_EXCL,
            address_payload(index, address, prefixlen),
        )

    def add_default_route(self, gateway: str, index: int, mtu: int | None = None) -> None:
        self.request(
            f"cannot add a default route via {gateway}",
            RTM_NEWROUTE,
            NLM_F_CREATE | NLM_F_EXCL,
            default_route_payload(gateway, index, mtu),
        )

    def default_route_oif(self) -> int | None:
        """The output link of the IPv4 default route of the main table, if any."""
        query = RTMSG.pack(_socket.AF_INET, 0, 0, 0, 0, 0, 0, 0, 0)
        for reply in self.request("cannot read routes", RTM_GETROUTE, NLM_F_DUMP, query):
            family, dst_len, _, _, table, *_ = RTMSG.unpack_from(reply.payload)
            attrs = parse_attrs(reply.payload, RTMSG.size)
            if RTA_TABLE in attrs:
                table = u32(attrs[RTA_TABLE])
            default = family == _socket.AF_INET and dst_len == 0 and table == RT_TABLE_MAIN
            if default and RTA_OIF in attrs:
                return u32(attrs[RTA_OIF])
        return None


def in_netns(path: str) -> Rtnl:
    """A socket working on the network namespace bound at path."""
    from hull.net.netns import run_in_netns

    return run_in_netns(path, Rtnl)
