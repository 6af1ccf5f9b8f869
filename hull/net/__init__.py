"""Container networking: named network namespaces, bridges and veth pairs (netlink through
pyroute2), IPAM leases in the engine's SQLite file, and NAT, isolation and published ports
in nftables tables of Hull's own. The engine's entry point is networks.NetworkService.
"""
