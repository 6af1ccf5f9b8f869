"""hull.net.rtnl and the container path of hull.net.links on the real kernel.

Each test makes its own bridge (no address: nothing is routed on the host), its own
network namespaces under tmp_path and veths with unique names, checks what the kernel
holds through pyroute2 (an independent client), and removes all of it.
"""

from __future__ import annotations

import errno
import os
import secrets
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from pyroute2 import IPRoute

from hull.errors import KernelError
from hull.net import links, rtnl
from hull.net.netns import create_netns, delete_netns, run_in_netns


def _tag() -> str:
    return secrets.token_hex(4)


@dataclass
class Lab:
    bridge: str
    tmp: Path
    netns: list[str] = field(default_factory=list)
    host_links: list[str] = field(default_factory=list)

    def ns(self) -> str:
        path = str(self.tmp / f"ns{_tag()}")
        create_netns(path)
        self.netns.append(path)
        return path

    def veth_name(self) -> str:
        name = f"vrt{_tag()}"
        self.host_links.append(name)
        return name

    def spec(self, netns: str, **changes: object) -> links.VethSpec:
        values: dict[str, object] = {
            "host_ifname": self.veth_name(),
            "bridge": self.bridge,
            "netns_path": netns,
            "ifname": "eth0",
            "mac": "02:42:0a:d6:07:02",
            "address": "10.214.7.2",
            "prefixlen": 24,
            "gateway": "10.214.7.1",
            "mtu": 1400,
        }
        values.update(changes)
        return links.VethSpec(**values)  # type: ignore[arg-type]


@pytest.fixture
def lab(tmp_path: Path) -> Iterator[Lab]:
    bridge = f"hrtb{_tag()}"
    with IPRoute() as ipr:
        ipr.link("add", ifname=bridge, kind="bridge")
    env = Lab(bridge, tmp_path)
    try:
        yield env
    finally:
        for name in env.host_links:
            links.delete_link(name)
        for path in env.netns:
            delete_netns(path)
        links.delete_link(bridge)
    assert not links.link_exists(bridge)


def inside(netns: str) -> dict[str, object]:
    """What the namespace holds, read with pyroute2: links, addresses, routes."""

    def read() -> dict[str, object]:
        with IPRoute() as ipr:
            found: dict[str, object] = {}
            for link in ipr.get_links():
                name = link.get_attr("IFLA_IFNAME")
                found[name] = {
                    "up": bool(link["flags"] & 1),
                    "mac": link.get_attr("IFLA_ADDRESS"),
                    "mtu": link.get_attr("IFLA_MTU"),
                    "index": link["index"],
                }
            found["addresses"] = sorted(
                (a.get_attr("IFA_LABEL"), a.get_attr("IFA_ADDRESS"), a["prefixlen"])
                for a in ipr.get_addr(family=2)
            )
            found["broadcast"] = sorted(
                a.get_attr("IFA_BROADCAST") for a in ipr.get_addr(family=2, label="eth0")
            )
            found["default"] = [
                (r.get_attr("RTA_GATEWAY"), r.get_attr("RTA_OIF"))
                for r in ipr.get_routes(family=2, table=254)
                if r["dst_len"] == 0
            ]
            return found

    return run_in_netns(netns, read)


def host_link(name: str) -> dict[str, object] | None:
    with IPRoute() as ipr:
        found = ipr.link_lookup(ifname=name)
        if not found:
            return None
        link = ipr.get_links(found[0])[0]
        return {
            "up": bool(link["flags"] & 1),
            "master": link.get_attr("IFLA_MASTER"),
            "mtu": link.get_attr("IFLA_MTU"),
        }


def index_of(name: str) -> int:
    with IPRoute() as ipr:
        return int(ipr.link_lookup(ifname=name)[0])


def wait_gone(name: str, timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not links.link_exists(name):
            return True
        time.sleep(0.02)
    return False


# ---------------------------------------------------------------------------- tests


def test_lookups_on_the_host_and_inside_a_namespace(lab: Lab) -> None:
    with rtnl.Rtnl() as nl:
        assert nl.link_index(lab.bridge) == index_of(lab.bridge)
        assert nl.link_index(f"nope{_tag()}") is None
        assert nl.link_mtu(index_of(lab.bridge)) == host_link(lab.bridge)["mtu"]  # type: ignore[index]
    assert links.link_exists(lab.bridge) and not links.link_exists(f"nope{_tag()}")
    assert links.host_mtu() >= 576
    netns = lab.ns()
    with rtnl.in_netns(netns) as nl:
        assert nl.link_index("lo") == 1
        assert nl.link_index(lab.bridge) is None  # the socket works in the namespace
        assert nl.default_route_oif() is None


def test_add_veth_configures_both_ends(lab: Lab) -> None:
    netns = lab.ns()
    spec = lab.spec(netns)
    links.add_veth(spec)
    host = host_link(spec.host_ifname)
    assert host == {"up": True, "master": index_of(lab.bridge), "mtu": 1400}
    seen = inside(netns)
    eth0 = seen["eth0"]
    assert isinstance(eth0, dict)
    assert eth0["up"] and eth0["mac"] == spec.mac and eth0["mtu"] == 1400
    assert seen["lo"]["up"]  # type: ignore[index]
    assert ("eth0", "10.214.7.2", 24) in seen["addresses"]  # type: ignore[operator]
    assert seen["broadcast"] == ["10.214.7.255"]
    assert seen["default"] == [("10.214.7.1", eth0["index"])]
    links.delete_link(spec.host_ifname)
    assert host_link(spec.host_ifname) is None
    assert "eth0" not in inside(netns)  # the peer went with it
    links.delete_link(spec.host_ifname)  # a missing link is fine


def test_second_network_gets_no_default_route(lab: Lab) -> None:
    netns = lab.ns()
    links.add_veth(lab.spec(netns))
    links.add_veth(lab.spec(netns, ifname="eth1", address="10.214.8.2", gateway=None,
                             mac="02:42:0a:d6:08:02"))  # fmt: skip
    seen = inside(netns)
    assert len(seen["default"]) == 1  # type: ignore[arg-type]
    assert ("eth1", "10.214.8.2", 24) in seen["addresses"]  # type: ignore[operator]


def test_kernel_refusals_carry_errno_and_a_clear_message(lab: Lab) -> None:
    netns = lab.ns()
    spec = lab.spec(netns)
    links.add_veth(spec)
    fd = os.open(netns, os.O_RDONLY | os.O_CLOEXEC)
    try:
        with rtnl.Rtnl() as nl, pytest.raises(rtnl.NetlinkError) as caught:
            nl.add_veth(rtnl.VethRequest(spec.host_ifname, "eth9", fd, 1400))
    finally:
        os.close(fd)
    assert caught.value.errno == errno.EEXIST
    assert caught.value.message.startswith(f"cannot create veth {spec.host_ifname}: File exists")
    with rtnl.in_netns(netns) as nl, pytest.raises(rtnl.NetlinkError) as again:
        nl.add_address(nl.link_index("eth0") or 0, "10.214.7.2", 24)
    assert again.value.errno == errno.EEXIST and "10.214.7.2/24" in again.value.message
    with rtnl.Rtnl() as nl:
        assert nl.delete_link(f"nope{_tag()}") is False
        with pytest.raises(rtnl.NetlinkError) as bad:
            nl.set_link(f"nope{_tag()}", up=True)
    assert bad.value.errno == errno.ENODEV


def test_missing_bridge_is_a_clear_error_and_leaves_nothing(lab: Lab) -> None:
    netns = lab.ns()
    spec = lab.spec(netns, bridge=f"nobr{_tag()}")
    with pytest.raises(KernelError, match=f"bridge {spec.bridge} does not exist"):
        links.add_veth(spec)
    assert host_link(spec.host_ifname) is None


def test_failure_inside_the_namespace_removes_the_pair(lab: Lab) -> None:
    netns = lab.ns()
    spec = lab.spec(netns, gateway="10.99.0.1")  # not on eth0's subnet: unreachable
    with pytest.raises(KernelError, match="cannot add a default route via 10.99.0.1"):
        links.add_veth(spec)
    assert host_link(spec.host_ifname) is None
    assert "eth0" not in inside(netns)


def test_retired_veth_goes_with_its_namespace(lab: Lab) -> None:
    netns = lab.ns()
    spec = lab.spec(netns)
    links.add_veth(spec)
    links.retire_link(spec.host_ifname)
    assert host_link(spec.host_ifname)["up"] is False  # type: ignore[index]
    delete_netns(netns)
    assert wait_gone(spec.host_ifname)
    links.retire_link(spec.host_ifname)  # a missing link is fine


def test_a_leftover_host_end_of_the_same_name_is_replaced(lab: Lab) -> None:
    """A container started again while the kernel still reclaims its last namespace."""
    old_ns, new_ns = lab.ns(), lab.ns()
    spec = lab.spec(old_ns)
    links.add_veth(spec)
    links.add_veth(lab.spec(new_ns, host_ifname=spec.host_ifname))
    assert "eth0" not in inside(old_ns)
    assert "eth0" in inside(new_ns)
    assert host_link(spec.host_ifname)["master"] == index_of(lab.bridge)  # type: ignore[index]
