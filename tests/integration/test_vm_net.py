"""VM containers on Hull's networks, through the real `hull` CLI: a tap on the bridge, an
address from Hull's IPAM, names through the embedded DNS, published ports, and nothing
left behind (no tap, lease, endpoint or nft rule) after rm, a failed start or a crash.

One Hull root serves the module (guest assets and the warm-start template are made
once), with a default bridge, subnet and nft table of its own (HULL_BRIDGE,
HULL_BRIDGE_SUBNET, HULL_NFT_TABLE, as engine_helpers.isolated_engine_session);
user networks take random /24s of 10.213.0.0/16. Traffic goes only to 127.0.0.1 and
to addresses of the test's own networks. The VMs run under TCG here.
"""

from __future__ import annotations

import ipaddress
import json
import os
import random
import secrets
import signal
import socket
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from hull.net import links, nft
from hull.paths import HullPaths
from tests.integration.engine_helpers import (
    Hull,
    overlay_mounts_under,
    require_vm_tools,
    shim_pids,
    wait_for,
)
from tests.integration.test_engine_net import HTTPD, http_get, net_rows, port_elements, retry_client
from tests.integration.test_engine_vm import qemu_of, shim_dir, vm_processes

VM = "--isolation=vm"


@dataclass
class VmNet:
    hull: Hull
    table: str
    bridge: str
    networks: list[str] = field(default_factory=list)

    def ok(self, *args: str, **kw) -> str:
        return self.hull.ok(*args, **kw)

    def __call__(self, *args: str, **kw):
        return self.hull(*args, **kw)

    def network(self) -> str:
        """A user network on a free random /24 of 10.213.0.0/16; its name."""
        name = f"vnet{secrets.token_hex(3)}"
        for _ in range(50):
            subnet = f"10.213.{random.randrange(256)}.0/24"
            result = self.hull("network", "create", "--subnet", subnet, name)
            if result.returncode == 0:
                self.networks.append(name)
                return name
            assert "overlaps" in result.stderr, result.stderr
        raise AssertionError("no free test subnet")

    def bridges(self) -> list[str]:
        found = [self.bridge]
        for name in self.networks:
            result = self.hull("network", "inspect", name)
            if result.returncode == 0:
                doc = json.loads(result.stdout)[0]
                found.append(doc["Options"]["com.docker.network.bridge.name"])
        return found

    def taps(self) -> list[str]:
        """Taps on the module's bridges, and any host link named like a VM endpoint."""
        return [port for bridge in self.bridges() for port in links.bridge_ports(bridge)]

    def inspect(self, ref: str) -> dict:
        return json.loads(self.ok("inspect", ref))[0]


def assert_no_network_state(env: VmNet, taps: list[str] = ()) -> None:  # type: ignore[assignment]
    """No endpoint, lease or port row, no port in nft, no port on a bridge, and none of
    the named taps anywhere on the host."""
    assert net_rows(env.hull) == {"net_endpoints": 0, "net_leases": 0, "net_ports": 0}
    assert port_elements(env.table) == []
    # A container's veth goes with its namespace, in the background (tens of ms).
    wait_for(lambda: env.taps() == [], timeout=10)
    for tap in taps:
        assert not links.link_exists(tap), tap


@pytest.fixture(scope="module")
def vmnet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[VmNet]:
    require_vm_tools()
    if not os.path.exists(links.TUN_DEVICE):
        pytest.skip(f"{links.TUN_DEVICE} is missing: no taps for microVMs")
    tag = secrets.token_hex(3)
    env_vars = {
        "HULL_BRIDGE": f"hullvb{tag}",
        "HULL_NFT_TABLE": f"hullvt{tag}",
        "HULL_BRIDGE_SUBNET": f"10.212.{random.randrange(256)}.0/24",
        "HULL_CGROUP_PARENT": f"hull-test-vmnet-{tag}",  # never the host's /hull
    }
    saved = {key: os.environ.get(key) for key in env_vars}
    os.environ.update(env_vars)
    base = tmp_path_factory.mktemp("hull-vm-net")
    paths = HullPaths(base / "lib", base / "run")
    Path(paths.root).mkdir()
    Path(paths.runroot).mkdir()
    h = Hull(paths)
    env = VmNet(h, env_vars["HULL_NFT_TABLE"], env_vars["HULL_BRIDGE"])
    try:
        h.ok("image", "bootstrap", "busybox")
        probe = h("run", "--rm", VM, "--network", "none", "busybox", "true", timeout=300)
        if probe.returncode == 125 and "kernel" in probe.stderr:
            pytest.skip(f"no guest kernel for microVMs: {probe.stderr.strip()}")
        assert probe.returncode == 0, probe.stderr
        yield env
        ids = h("ps", "-aq", "--no-trunc").stdout.split()
        if ids:
            h("rm", "-f", *ids)
        assert_no_network_state(env)
    finally:
        bridges = env.bridges()
        for name in env.networks:
            h("network", "rm", name)
        for pid in shim_pids(paths.runroot) + vm_processes(paths.runroot):
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        for bridge in bridges:
            links.delete_link(bridge)
        nft.delete_table(env.table)
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
    assert overlay_mounts_under(paths.root) == []
    assert vm_processes(paths.runroot) == []
    for hierarchy in os.listdir("/sys/fs/cgroup"):
        parent = os.path.join("/sys/fs/cgroup", hierarchy, env_vars["HULL_CGROUP_PARENT"])
        if os.path.isdir(parent):
            os.rmdir(parent)  # fails (a leak) if a container's cgroup is still in it


def test_a_vm_gets_an_address_on_the_bridge_and_reaches_its_gateway(vmnet: VmNet) -> None:
    name = f"vaddr{secrets.token_hex(2)}"
    vmnet.ok("run", "-d", VM, "--network", "bridge", "--name", name, "busybox", "sleep", "300")
    settings = vmnet.inspect(name)["NetworkSettings"]
    ip, mac, gateway = settings["IPAddress"], settings["MacAddress"], settings["Gateway"]
    assert ipaddress.ip_address(ip) in ipaddress.ip_network(os.environ["HULL_BRIDGE_SUBNET"])
    tap = settings["Networks"]["bridge"]["EndpointID"]
    assert tap.startswith("tap") and vmnet.taps() == [tap]
    # The guest's eth0 has the lease and the endpoint's MAC (not its template's).
    assert f"inet {ip}/24" in vmnet.ok("exec", name, "ip", "-4", "addr", "show", "eth0")
    assert vmnet.ok("exec", name, "cat", "/sys/class/net/eth0/address").strip() == mac
    assert f"default via {gateway} dev eth0" in vmnet.ok("exec", name, "ip", "route")
    assert vmnet.ok("exec", name, "ping", "-c", "1", "-W", "5", gateway)
    hosts = vmnet.ok("exec", name, "cat", "/etc/hosts")
    assert f"{ip}\t" in hosts
    assert vmnet.ok("exec", name, "cat", "/etc/resolv.conf").startswith(("nameserver", "search"))
    vmnet.ok("rm", "-f", name)
    assert_no_network_state(vmnet, [tap])


def test_a_container_and_a_vm_talk_by_name_on_a_user_network(vmnet: VmNet) -> None:
    network = vmnet.network()
    server, client_server = f"vsrv{secrets.token_hex(2)}", f"csrv{secrets.token_hex(2)}"
    # A container to a VM, by the VM's name (the embedded DNS answers for it).
    vmnet.ok("run", "-d", VM, "--network", network, "--name", server,
             "busybox", "nc", "-l", "-p", "7000")  # fmt: skip
    sent = vmnet("run", "--rm", "--network", network, "busybox",
                 "sh", "-c", retry_client(f"echo hi | nc {server} 7000"))  # fmt: skip
    assert sent.returncode == 0, sent.stderr
    assert vmnet.ok("wait", server).strip() == "0"
    assert vmnet.ok("logs", server) == "hi\n"
    # A VM to a container: the VM asks the DNS server on its gateway too.
    vmnet.ok("run", "-d", "--network", network, "--name", client_server,
             "busybox", "nc", "-l", "-p", "7001")  # fmt: skip
    sent = vmnet("run", "--rm", VM, "--network", network, "busybox",
                 "sh", "-c", retry_client(f"echo yo | nc {client_server} 7001"))  # fmt: skip
    assert sent.returncode == 0, sent.stderr
    assert vmnet.ok("wait", client_server).strip() == "0"
    assert vmnet.ok("logs", client_server) == "yo\n"
    vmnet.ok("rm", "-f", server, client_server)
    assert_no_network_state(vmnet)


def test_a_published_port_of_a_vm_answers_on_loopback(vmnet: VmNet) -> None:
    name = f"vweb{secrets.token_hex(2)}"
    vmnet.ok("run", "-d", VM, "--network", "bridge", "-p", "127.0.0.1::80", "--name", name,
             "busybox", "sh", "-c", HTTPD)  # fmt: skip
    binding = vmnet.ok("port", name, "80").strip()
    host, _, port = binding.rpartition(":")
    assert host == "127.0.0.1"
    assert "hello-from-hull" in http_get(int(port), timeout=30)
    assert port_elements(vmnet.table) != []
    tap = vmnet.inspect(name)["NetworkSettings"]["Networks"]["bridge"]["EndpointID"]
    vmnet.ok("rm", "-f", name)
    assert_no_network_state(vmnet, [tap])


def test_a_failed_start_and_a_crash_leave_no_tap_lease_or_rule(vmnet: VmNet) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        failed = vmnet("run", "-d", VM, "--network", "bridge", "-p", f"127.0.0.1:{port}:80",
                       "busybox", "sleep", "9")  # fmt: skip
    assert failed.returncode != 0 and str(port) in failed.stderr
    assert_no_network_state(vmnet)
    # The shim and the supervisor killed: QEMU dies with them, the tap stays until the
    # next command's sweep finds the container dead and undoes its network.
    name = f"vcrash{secrets.token_hex(2)}"
    cid = vmnet.ok("run", "-d", VM, "--network", "bridge", "-p", "127.0.0.1::80",
                   "--name", name, "busybox", "sleep", "300").strip()  # fmt: skip
    tap = vmnet.inspect(name)["NetworkSettings"]["Networks"]["bridge"]["EndpointID"]
    for pid_file in ("shim.pid", "container.pid"):
        os.kill(int((shim_dir(vmnet.hull, cid) / pid_file).read_text()), signal.SIGKILL)
    wait_for(lambda: qemu_of(vmnet.hull, cid) == [], timeout=10)
    assert links.link_exists(tap)
    assert name in vmnet.ok("ps", "-a")  # the sweep
    assert vmnet.inspect(name)["State"]["Status"] == "exited"
    assert_no_network_state(vmnet, [tap])
    vmnet.ok("rm", name)
    assert not Path(shim_dir(vmnet.hull, cid)).exists()
