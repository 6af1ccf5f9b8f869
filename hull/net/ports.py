"""Published ports: Docker's -p forms parsed into PortSpecs, and free host ports.

Forms (Docker's): containerPort, hostPort:containerPort, ip:hostPort:containerPort,
ip::containerPort, each with an optional /tcp or /udp, and ranges (8000-8002:80-82).
A host port of 0 means "a free one, chosen at publish time".
"""

from __future__ import annotations

import errno
import ipaddress

from hull.errors import ConfigError, HullError
from hull.records import dataclass

PROTOCOLS = ("tcp", "udp")
ANY_IP = "0.0.0.0"


@dataclass(frozen=True)
class PortSpec:
    container_port: int
    proto: str = "tcp"
    host_ip: str = ANY_IP
    host_port: int = 0  # 0: pick a free one

    def __str__(self) -> str:
        """Docker's `port` output: 80/tcp -> 0.0.0.0:8080."""
        return f"{self.container_port}/{self.proto} -> {self.host_ip}:{self.host_port}"


def _port_range(text: str, what: str, spec: str) -> tuple[int, int]:
    first, sep, last = text.partition("-")
    try:
        low = int(first)
        high = int(last) if sep else low
    except ValueError:
        raise ConfigError(f"invalid {what} {text!r} in port spec {spec!r}") from None
    if not (1 <= low <= 65535 and 1 <= high <= 65535) or high < low:
        raise ConfigError(f"invalid {what} {text!r} in port spec {spec!r}: must be 1-65535")
    return low, high


def parse_port_spec(spec: str) -> list[PortSpec]:
    """One -p value -> one PortSpec per port (a range gives several)."""
    body, slash, proto = spec.strip().partition("/")
    proto = proto.lower() if slash else "tcp"
    if proto not in PROTOCOLS:
        raise ConfigError(f"invalid protocol {proto!r} in port spec {spec!r}: use tcp or udp")
    if body.startswith("["):
        raise ConfigError(f"port spec {spec!r}: IPv6 host addresses are not supported yet")
    parts = body.split(":")
    if len(parts) == 1:
        host_ip, host_part, container_part = ANY_IP, "", parts[0]
    elif len(parts) == 2:
        host_ip, host_part, container_part = ANY_IP, parts[0], parts[1]
    elif len(parts) == 3:
        host_ip, host_part, container_part = parts[0] or ANY_IP, parts[1], parts[2]
    else:
        raise ConfigError(f"invalid port spec {spec!r}: use [ip:][hostPort:]containerPort[/proto]")
    try:
        host_ip = str(ipaddress.IPv4Address(host_ip))
    except ValueError:
        raise ConfigError(f"invalid host address {host_ip!r} in port spec {spec!r}") from None
    if not container_part:
        raise ConfigError(f"port spec {spec!r} has no container port")
    c_low, c_high = _port_range(container_part, "container port", spec)
    count = c_high - c_low + 1
    if not host_part:
        return [PortSpec(p, proto, host_ip, 0) for p in range(c_low, c_high + 1)]
    h_low, h_high = _port_range(host_part, "host port", spec)
    if h_high - h_low + 1 != count:
        raise ConfigError(
            f"port spec {spec!r}: the host range and the container range differ in size"
        )
    return [PortSpec(c_low + i, proto, host_ip, h_low + i) for i in range(count)]


def parse_port_specs(specs: list[str]) -> list[PortSpec]:
    """Every -p flag, with duplicate host bindings refused up front."""
    result: list[PortSpec] = []
    for spec in specs:
        result.extend(parse_port_spec(spec))
    check_no_overlap(result)
    return result


def bindings_overlap(a: PortSpec, b: PortSpec) -> bool:
    """Same protocol and port, and one of them on every address or both on the same one."""
    if a.proto != b.proto or a.host_port != b.host_port or a.host_port == 0:
        return False
    return a.host_ip == b.host_ip or ANY_IP in (a.host_ip, b.host_ip)


def check_no_overlap(specs: list[PortSpec]) -> None:
    for i, a in enumerate(specs):
        for b in specs[i + 1 :]:
            if bindings_overlap(a, b):
                raise ConfigError(
                    f"host port {a.host_port}/{a.proto} is published twice "
                    f"({a.host_ip} and {b.host_ip})"
                )


def _socket_type(proto: str) -> int:
    import socket  # here, not at the top: its enums cost `hull run` ~1.5 ms

    return socket.SOCK_STREAM if proto == "tcp" else socket.SOCK_DGRAM


def check_host_port_free(host_ip: str, port: int, proto: str) -> None:
    """Raise a clear HullError when a host process already holds the port."""
    import socket

    with socket.socket(socket.AF_INET, _socket_type(proto)) as probe:
        if proto == "tcp":  # a TIME_WAIT leftover is no owner; a listener still conflicts
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host_ip, port))
        except OSError as e:
            if e.errno == errno.EADDRINUSE:
                raise HullError(
                    f"cannot publish {host_ip}:{port}/{proto}: the host port is already in use"
                ) from None
            if e.errno == errno.EADDRNOTAVAIL:
                raise HullError(
                    f"cannot publish {host_ip}:{port}/{proto}: {host_ip} is not an address "
                    "of this host"
                ) from None
            raise HullError(f"cannot publish {host_ip}:{port}/{proto}: {e.strerror}") from None


def free_host_port(host_ip: str, proto: str, avoid: set[int] | None = None) -> int:
    """A port the kernel considers free now (its ephemeral range), not in avoid."""
    import socket

    for _ in range(64):
        with socket.socket(socket.AF_INET, _socket_type(proto)) as probe:
            probe.bind((host_ip, 0))
            port = int(probe.getsockname()[1])
        if not avoid or port not in avoid:
            return port
    raise HullError(f"no free host port for {proto} on {host_ip}")
