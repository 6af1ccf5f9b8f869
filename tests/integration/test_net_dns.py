"""The embedded DNS server, end to end: names and aliases over DNS, forwarding to the
host's resolvers (a fake one of the test's own, on a loopback address), --dns, and the
server's life: one per Hull root, gone with the last container, back after a kill.

Every upstream here is a fake resolver on a random 127.x.y.z:53 (HULL_DNS_RESOLV_CONF
points the server at it), so no query leaves the host.
"""

from __future__ import annotations

import os
import random
import select
import signal
import socket
import struct
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from hull.net import dns, dns_control, dnsd
from tests.integration.engine_helpers import wait_for
from tests.integration.test_engine_net import NetHull, _tag, net  # noqa: F401  (fixture)


class FakeResolver:
    """A UDP resolver on 127.x.y.z:53 that knows one name; NXDOMAIN for the rest."""

    def __init__(self, name: str, address: str) -> None:
        self.name, self.address = name, address
        self.asked: list[str] = []
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        for _ in range(20):
            self.ip = (
                f"127.{random.randrange(1, 255)}.{random.randrange(256)}.{random.randrange(1, 255)}"
            )
            try:
                self.sock.bind((self.ip, 53))
                break
            except OSError:
                continue
        self._stop = False
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        while not self._stop:
            if not select.select([self.sock], [], [], 0.1)[0]:
                continue
            packet, client = self.sock.recvfrom(4096)
            question = dns.parse_question(packet)
            if question is None:
                continue
            self.asked.append(question.name)
            if question.name == self.name:  # an address for A, no record for AAAA
                address = self.address if question.qtype == dns.TYPE_A else None
                reply = dns.answer(packet, question, address)
            else:
                reply = dns.reply(packet, question, rcode=3)  # NXDOMAIN
            self.sock.sendto(reply, client)

    def close(self) -> None:
        self._stop = True
        self.thread.join()
        self.sock.close()


@pytest.fixture
def upstream(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeResolver]:
    resolver = FakeResolver(f"outside-{_tag()}.test", "192.0.2.77")
    conf = tmp_path / "upstream-resolv.conf"
    conf.write_text(f"nameserver {resolver.ip}\n")
    monkeypatch.setenv(dns_control.ENV_RESOLV_CONF, str(conf))
    try:
        yield resolver
    finally:
        resolver.close()


@pytest.fixture
def dnet(net: NetHull, upstream: FakeResolver) -> Iterator[NetHull]:  # noqa: F811
    """The `net` environment, plus: no DNS server of this root is left afterwards."""
    yield net
    ids = net("ps", "-aq", "--no-trunc").stdout.split()
    if ids:
        net("rm", "-f", *ids)
    left = server_pids(net.hull.paths.runroot)
    for pid in left:
        os.kill(pid, signal.SIGKILL)
    assert left == []


def server_pids(runroot: Path) -> list[int]:
    """Live DNS servers of this Hull root."""
    pids = []
    for name in os.listdir("/proc"):
        try:
            if not name.isdigit() or Path(f"/proc/{name}/comm").read_text().strip() != dnsd.COMM:
                continue
            if str(runroot).encode() in Path(f"/proc/{name}/cmdline").read_bytes():
                pids.append(int(name))
        except OSError:
            continue
    return pids


def ask(server: str, name: str, tcp: bool = False) -> tuple[int, list[str]]:
    """(rcode, A addresses) for name, asked of server:53 from the host."""
    packet = struct.pack("!HHHHHH", random.randrange(65536), 0x0100, 1, 0, 0, 0)
    packet += dns.encode_name(name) + struct.pack("!HH", dns.TYPE_A, dns.CLASS_IN)
    if tcp:
        with socket.create_connection((server, 53), timeout=5) as conn:
            conn.sendall(struct.pack("!H", len(packet)) + packet)
            reply = dns.read_tcp_message(conn) or b""
    else:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
            sock.settimeout(5)
            sock.sendto(packet, (server, 53))
            reply = sock.recv(4096)
    assert reply[:2] == packet[:2]
    count = struct.unpack("!H", reply[6:8])[0]
    found = []
    offset = len(packet)
    for _ in range(count):  # answers point at the question's name: 12 fixed bytes + rdata
        rtype, _, _, length = struct.unpack("!HHIH", reply[offset + 2 : offset + 12])
        if rtype == dns.TYPE_A:
            found.append(socket.inet_ntoa(reply[offset + 12 : offset + 12 + length]))
        offset += 12 + length
    return reply[3] & 0x0F, found


def gateway_of(h: NetHull, network: str) -> str:
    return h.network_inspect(network)["IPAM"]["Config"][0]["Gateway"]


def address_of(h: NetHull, container: str, network: str) -> str:
    return h.inspect(container)["NetworkSettings"]["Networks"][network]["IPAddress"]


def test_names_aliases_and_forwarded_names_resolve_through_dns(
    dnet: NetHull, upstream: FakeResolver
) -> None:
    network = dnet.network()
    gateway = gateway_of(dnet, network)
    web = f"web{_tag()}"
    dnet.ok("run", "-d", "--name", web, "--network", network, "--network-alias", "db",
            "busybox", "sleep", "60")  # fmt: skip
    ip = address_of(dnet, web, network)
    script = (
        "cat /etc/resolv.conf; echo ---; "
        f"nslookup {web} {gateway}; nslookup db {gateway}; nslookup {upstream.name} {gateway}"
    )
    out = dnet.ok("run", "--rm", "--network", network, "busybox", "sh", "-c", script)
    resolv, _, answers = out.partition("---")
    nameservers = [line.split()[1] for line in resolv.splitlines() if line.startswith("nameserver")]
    assert nameservers == [gateway]
    assert answers.count(f"Address: {ip}") == 2, answers  # the name and the alias
    assert "Address: 192.0.2.77" in answers  # forwarded, answered by the fake upstream
    assert upstream.name in upstream.asked and web not in upstream.asked
    # It is DNS, not /etc/hosts: the server answers the host too, over UDP and TCP.
    assert ask(gateway, web) == (0, [ip])
    assert ask(gateway, "DB", tcp=True) == (0, [ip])
    assert ask(gateway, f"nothing-{_tag()}.test")[0] == 3  # NXDOMAIN from upstream


def test_names_stay_on_their_network_and_internal_has_no_forwarding(
    dnet: NetHull, upstream: FakeResolver
) -> None:
    front, back = dnet.network(), dnet.network("--internal")
    web = f"web{_tag()}"
    dnet.ok("run", "-d", "--name", web, "--network", front, "busybox", "sleep", "60")
    gateway = gateway_of(dnet, back)
    script = f"nslookup {web} {gateway}; echo ---; nslookup {upstream.name} {gateway}"
    out = dnet("run", "--rm", "--network", back, "busybox", "sh", "-c", script).stdout
    own, _, forwarded = out.partition("---")
    assert address_of(dnet, web, front) not in own
    assert "SERVFAIL" in forwarded and "192.0.2.77" not in forwarded
    assert upstream.asked == []  # nothing left an --internal network


def test_dns_flag_picks_the_upstream_of_that_container(
    dnet: NetHull, upstream: FakeResolver
) -> None:
    other = FakeResolver(upstream.name, "192.0.2.88")
    try:
        network = dnet.network()
        gateway = gateway_of(dnet, network)
        out = dnet.ok("run", "--rm", "--network", network, "--dns", other.ip, "busybox",
                      "sh", "-c", f"cat /etc/resolv.conf; nslookup {upstream.name}")  # fmt: skip
    finally:
        other.close()
    assert f"nameserver {gateway}" in out and f"nameserver {other.ip}" not in out
    assert "Address: 192.0.2.88" in out and upstream.asked == []


def test_one_server_gone_with_the_last_container_and_back_after_a_kill(dnet: NetHull) -> None:
    paths = dnet.hull.paths
    first, second = dnet.network(), dnet.network()
    assert server_pids(paths.runroot) == []  # networks alone need no server
    one, two = f"one{_tag()}", f"two{_tag()}"
    dnet.ok("run", "-d", "--name", one, "--network", first, "busybox", "sleep", "60")
    dnet.ok("run", "-d", "--name", two, "--network", second, "busybox", "sleep", "60")
    pids = server_pids(paths.runroot)
    assert len(pids) == 1 and dns_control.server_pid(paths) == pids[0]
    assert ask(gateway_of(dnet, second), two) == (0, [address_of(dnet, two, second)])

    os.kill(pids[0], signal.SIGKILL)
    wait_for(lambda: not server_pids(paths.runroot))
    dnet.ok("ps")  # any hull command sweeps: the server comes back
    again = server_pids(paths.runroot)
    assert len(again) == 1 and again != pids
    assert ask(gateway_of(dnet, first), one) == (0, [address_of(dnet, one, first)])

    dnet.ok("rm", "-f", one)
    with pytest.raises(OSError):  # first's gateway is no longer served
        ask(gateway_of(dnet, first), one)
    assert server_pids(paths.runroot) == again
    dnet.ok("rm", "-f", two)
    assert server_pids(paths.runroot) == []
    assert not (dns_control.state_dir(paths) / dns_control.CONTROL).exists()
    dnet.ok("network", "rm", first, second)
    dnet.ok("ps")
    assert server_pids(paths.runroot) == []


def test_the_server_stays_small(dnet: NetHull) -> None:
    network = dnet.network()
    dnet.ok("run", "-d", "--network", network, "busybox", "sleep", "60")
    (pid,) = server_pids(dnet.hull.paths.runroot)
    status = Path(f"/proc/{pid}/status").read_text()
    rss_kib = int(status.split("VmRSS:")[1].split()[0])
    assert rss_kib < 16 * 1024, status  # a bare python -IS is ~9 MiB
    modules = Path(f"/proc/{pid}/maps").read_text()
    assert "_sqlite3" not in modules and "_ctypes" not in modules


def test_a_run_after_a_kill_brings_the_server_back_with_every_name(dnet: NetHull) -> None:
    network = dnet.network()
    one = f"one{_tag()}"
    dnet.ok("run", "-d", "--name", one, "--network", network, "busybox", "sleep", "60")
    (pid,) = server_pids(dnet.hull.paths.runroot)
    os.kill(pid, signal.SIGKILL)
    wait_for(lambda: not server_pids(dnet.hull.paths.runroot))
    two = f"two{_tag()}"
    # This run's sweep respawns the server, its network setup reloads it with `two`.
    dnet.ok("run", "-d", "--name", two, "--network", network, "busybox", "sleep", "60")
    gateway = gateway_of(dnet, network)
    assert ask(gateway, two) == (0, [address_of(dnet, two, network)])
    assert ask(gateway, one) == (0, [address_of(dnet, one, network)])


def test_network_connect_and_disconnect_update_the_names(dnet: NetHull) -> None:
    front, back = dnet.network(), dnet.network()
    name = f"box{_tag()}"
    dnet.ok("run", "-d", "--name", name, "--network", front, "busybox", "sleep", "60")
    gateway = gateway_of(dnet, back)
    dnet.ok("network", "connect", "--alias", "cache", back, name)
    address = address_of(dnet, name, back)
    assert ask(gateway, "cache") == (0, [address])
    assert ask(gateway, name) == (0, [address])  # its own name, with its address there
    dnet.ok("network", "disconnect", back, name)
    with pytest.raises(OSError):  # back has no container left: its gateway is not served
        ask(gateway, "cache")
    assert ask(gateway_of(dnet, front), "cache")[0] == 3  # not front's: NXDOMAIN upstream
