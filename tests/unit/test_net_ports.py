"""Docker's -p forms parsed into PortSpecs, and the nft batches they become."""

from __future__ import annotations

import pytest

from hull.errors import ConfigError
from hull.net import nft
from hull.net.ports import PortSpec, bindings_overlap, parse_port_spec, parse_port_specs


@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        ("80", [PortSpec(80, "tcp", "0.0.0.0", 0)]),
        ("8080:80", [PortSpec(80, "tcp", "0.0.0.0", 8080)]),
        ("8080:80/udp", [PortSpec(80, "udp", "0.0.0.0", 8080)]),
        ("127.0.0.1:8080:80", [PortSpec(80, "tcp", "127.0.0.1", 8080)]),
        ("127.0.0.1::80/TCP", [PortSpec(80, "tcp", "127.0.0.1", 0)]),
        ("53/udp", [PortSpec(53, "udp", "0.0.0.0", 0)]),
        (
            "8000-8001:80-81",
            [PortSpec(80, "tcp", "0.0.0.0", 8000), PortSpec(81, "tcp", "0.0.0.0", 8001)],
        ),
        ("90-91", [PortSpec(90, "tcp", "0.0.0.0", 0), PortSpec(91, "tcp", "0.0.0.0", 0)]),
    ],
)
def test_docker_port_forms(spec: str, expected: list[PortSpec]) -> None:
    assert parse_port_spec(spec) == expected


@pytest.mark.parametrize(
    ("spec", "match"),
    [
        ("", "no container port"),
        ("8080:", "no container port"),
        ("80/sctp", "invalid protocol"),
        ("0", "1-65535"),
        ("70000", "1-65535"),
        ("http", "invalid container port"),
        ("a:80", "invalid host port"),
        ("300.0.0.1:80:80", "invalid host address"),
        ("[::1]:80:80", "IPv6"),
        ("1:2:3:4", "invalid port spec"),
        ("8000-8002:80-81", "differ in size"),
        ("82-80", "1-65535"),
    ],
)
def test_bad_port_specs_are_refused(spec: str, match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        parse_port_spec(spec)


def test_the_same_host_port_twice_is_refused() -> None:
    with pytest.raises(ConfigError, match="published twice"):
        parse_port_specs(["8080:80", "127.0.0.1:8080:81"])
    # Different protocols or different specific addresses do not clash.
    assert len(parse_port_specs(["8080:80", "8080:80/udp"])) == 2
    assert len(parse_port_specs(["127.0.0.1:8080:80", "127.0.0.2:8080:80"])) == 2


def test_overlap_rules() -> None:
    any_ip = PortSpec(80, "tcp", "0.0.0.0", 8080)
    assert bindings_overlap(any_ip, PortSpec(81, "tcp", "127.0.0.1", 8080))
    assert not bindings_overlap(any_ip, PortSpec(81, "udp", "127.0.0.1", 8080))
    assert not bindings_overlap(PortSpec(80), PortSpec(80))  # both still unassigned


def test_port_spec_prints_like_docker_port() -> None:
    assert str(PortSpec(80, "tcp", "0.0.0.0", 8080)) == "80/tcp -> 0.0.0.0:8080"


def test_port_rules_become_map_elements() -> None:
    rules = [
        nft.PortRule("tcp", "0.0.0.0", 8080, "10.88.0.2", 80),
        nft.PortRule("udp", "127.0.0.1", 5353, "10.88.0.2", 53),
    ]
    assert nft.add_port_batch(rules, "hulltest") == [
        "add element ip hulltest ports_any { tcp . 8080 : 10.88.0.2 . 80 }",
        "add element ip hulltest ports_ip { 127.0.0.1 . udp . 5353 : 10.88.0.2 . 53 }",
    ]
    removal = nft.remove_port_batch(rules, "hulltest")
    assert "delete element ip hulltest ports_any { tcp . 8080 }" in removal
    assert "delete element ip hulltest ports_ip { 127.0.0.1 . udp . 5353 }" in removal


def test_network_rules_for_internal_networks_have_no_egress_or_nat() -> None:
    internal = nft.add_network_batch(nft.NetRules("hulltest1", "10.213.9.0/24", True), "t")
    assert "add rule ip t from-hulltest1 drop" in internal
    assert not any("nat_subnets" in line for line in internal)
    routed = nft.add_network_batch(nft.NetRules("hulltest1", "10.213.9.0/24", False), "t")
    assert "add rule ip t from-hulltest1 accept" in routed
    assert "add element ip t nat_subnets { 10.213.9.0/24 }" in routed


@pytest.mark.parametrize("name", ["", "1abc", "a b", 'x"; flush ruleset', "a" * 16])
def test_names_in_nft_source_are_plain(name: str) -> None:
    with pytest.raises(ConfigError):
        nft.base_batch(name)
