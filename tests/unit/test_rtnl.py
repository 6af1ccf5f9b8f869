"""hull.net.rtnl's message encoding and decoding, byte for byte, without a kernel."""

from __future__ import annotations

import errno
import socket
import struct

import pytest

from hull.net import rtnl


def test_rtattr_is_padded_to_four_bytes() -> None:
    attr = rtnl.attr_str(rtnl.IFLA_IFNAME, "eth0")
    # len 4 + 5 ("eth0\0"), padded to 12; the length field excludes the padding
    assert attr == struct.pack("=HH", 9, rtnl.IFLA_IFNAME) + b"eth0\0" + b"\0\0\0"
    assert len(rtnl.attr_u32(rtnl.IFLA_MTU, 1500)) == 8


def test_nlmsg_header_counts_the_payload() -> None:
    msg = rtnl.nlmsg(rtnl.RTM_NEWLINK, rtnl.NLM_F_REQUEST, 7, b"x" * 16)
    length, kind, flags, seq, pid = rtnl.NLMSGHDR.unpack_from(msg)
    assert (length, kind, flags, seq, pid) == (32, rtnl.RTM_NEWLINK, rtnl.NLM_F_REQUEST, 7, 0)


def test_interface_names_are_checked() -> None:
    for bad in ("", "a" * 16, "a/b", " eth0"):
        with pytest.raises(ValueError):
            rtnl.ifname_attr(bad)
    assert rtnl.ifname_attr("a" * 15)


def test_mac_attribute_is_six_bytes() -> None:
    attr = rtnl.attr_mac(rtnl.IFLA_ADDRESS, "02:42:0a:58:00:02")
    assert attr[4:10] == bytes([2, 0x42, 10, 0x58, 0, 2])
    with pytest.raises(ValueError):
        rtnl.attr_mac(rtnl.IFLA_ADDRESS, "02:42:0a")


def test_veth_request_nests_the_peer_with_its_namespace() -> None:
    request = rtnl.VethRequest(
        name="vethabc",
        peer="eth0",
        peer_netns_fd=9,
        mtu=1400,
        master=5,
        up=True,
        peer_mac="02:42:0a:00:00:02",
    )
    payload = request.payload()
    family, kind, index, flags, change = rtnl.IFINFOMSG.unpack_from(payload)
    assert (index, flags, change) == (0, rtnl.IFF_UP, rtnl.IFF_UP)
    top = rtnl.parse_attrs(payload, rtnl.IFINFOMSG.size)
    assert top[rtnl.IFLA_IFNAME] == b"vethabc\0"
    assert rtnl.u32(top[rtnl.IFLA_MTU]) == 1400 and rtnl.u32(top[rtnl.IFLA_MASTER]) == 5
    info = rtnl.parse_attrs(top[rtnl.IFLA_LINKINFO])
    assert info[rtnl.IFLA_INFO_KIND] == b"veth"
    peer = rtnl.parse_attrs(info[rtnl.IFLA_INFO_DATA])[rtnl.VETH_INFO_PEER]
    # the peer is an ifinfomsg (down: a veth end cannot come up before its pair exists)
    assert rtnl.IFINFOMSG.unpack_from(peer)[3:] == (0, 0)
    peer_attrs = rtnl.parse_attrs(peer, rtnl.IFINFOMSG.size)
    assert peer_attrs[rtnl.IFLA_IFNAME] == b"eth0\0"
    assert rtnl.u32(peer_attrs[rtnl.IFLA_NET_NS_FD]) == 9
    assert rtnl.u32(peer_attrs[rtnl.IFLA_MTU]) == 1400
    assert peer_attrs[rtnl.IFLA_ADDRESS] == bytes.fromhex("02420a000002")
    assert rtnl.IFLA_MASTER not in peer_attrs


def test_address_payload_has_local_address_and_broadcast() -> None:
    payload = rtnl.address_payload(4, "10.88.0.2", 16)
    family, prefixlen, _, scope, index = rtnl.IFADDRMSG.unpack_from(payload)
    assert (family, prefixlen, scope, index) == (socket.AF_INET, 16, 0, 4)
    attrs = rtnl.parse_attrs(payload, rtnl.IFADDRMSG.size)
    assert attrs[rtnl.IFA_LOCAL] == attrs[rtnl.IFA_ADDRESS] == bytes([10, 88, 0, 2])
    assert attrs[rtnl.IFA_BROADCAST] == bytes([10, 88, 255, 255])
    point_to_point = rtnl.parse_attrs(rtnl.address_payload(4, "10.0.0.1", 31), 8)
    assert rtnl.IFA_BROADCAST not in point_to_point


def test_bad_addresses_are_refused_before_the_kernel_sees_them() -> None:
    for bad in ("10.0.0", "10.0.0.256", "::1", "10.0.0.1/24"):
        with pytest.raises(ValueError):
            rtnl.attr_ipv4(rtnl.IFA_LOCAL, bad)
    with pytest.raises(ValueError):
        rtnl.address_payload(1, "10.0.0.1", 33)


def test_default_route_payload() -> None:
    payload = rtnl.default_route_payload("10.88.0.1", 3)
    fields = rtnl.RTMSG.unpack_from(payload)
    family, dst_len, _, _, table, protocol, scope, kind, _ = fields
    assert (family, dst_len, table) == (socket.AF_INET, 0, rtnl.RT_TABLE_MAIN)
    assert (protocol, scope, kind) == (rtnl.RTPROT_BOOT, rtnl.RT_SCOPE_UNIVERSE, rtnl.RTN_UNICAST)
    attrs = rtnl.parse_attrs(payload, rtnl.RTMSG.size)
    assert attrs[rtnl.RTA_GATEWAY] == bytes([10, 88, 0, 1])
    assert rtnl.u32(attrs[rtnl.RTA_OIF]) == 3
    assert rtnl.RTA_DST not in attrs


def test_up_flags() -> None:
    assert rtnl.up_flags(None) == (0, 0)
    assert rtnl.up_flags(True) == (rtnl.IFF_UP, rtnl.IFF_UP)
    assert rtnl.up_flags(False) == (0, rtnl.IFF_UP)


def _error_message(code: int, flags: int = 0, tlvs: bytes = b"") -> bytes:
    echoed = rtnl.NLMSGHDR.pack(16, rtnl.RTM_NEWLINK, 5, 3, 0)
    return rtnl.nlmsg(rtnl.NLMSG_ERROR, flags, 3, struct.pack("=i", code) + echoed + tlvs)


def test_parse_several_messages_of_one_datagram() -> None:
    first = rtnl.nlmsg(rtnl.RTM_NEWLINK, rtnl.NLM_F_MULTI, 3, b"abcde")  # padded to 24
    data = first + b"\0" * 3 + _error_message(0)
    messages = list(rtnl.parse_messages(data))
    assert [m.type for m in messages] == [rtnl.RTM_NEWLINK, rtnl.NLMSG_ERROR]
    assert messages[0].payload == b"abcde"
    assert rtnl.parse_error(messages[1]) == (0, "")


def test_parse_error_reads_errno_and_the_extended_ack_text() -> None:
    flags = rtnl.NLM_F_CAPPED | rtnl.NLM_F_ACK_TLVS
    tlvs = rtnl.attr_str(rtnl.NLMSGERR_ATTR_MSG, "Unknown device type")
    (message,) = rtnl.parse_messages(_error_message(-errno.EOPNOTSUPP, flags, tlvs))
    assert rtnl.parse_error(message) == (errno.EOPNOTSUPP, "Unknown device type")


def test_truncated_message_is_refused() -> None:
    data = rtnl.nlmsg(rtnl.RTM_NEWLINK, 0, 1, b"x" * 8)[:-4]
    with pytest.raises(rtnl.KernelError):
        list(rtnl.parse_messages(data))


def test_netlink_error_message_names_the_operation_and_the_reason() -> None:
    err = rtnl.NetlinkError("cannot create veth vethabc", errno.EEXIST, "already there")
    assert err.errno == errno.EEXIST
    assert err.message == "cannot create veth vethabc: File exists (already there)"
    assert err.exit_code == 125
