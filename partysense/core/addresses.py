"""What counts as one client address, for every bound kept per address.

An IPv4 client has one address, or shares one behind a NAT. An IPv6 client is
usually given a whole /64 (SLAAC, privacy addresses), and may take a new
address from it for each connection: bounded per address, it would be
unbounded. So an IPv6 address counts as its /64, as rate limiters commonly
do; IPv4-mapped IPv6 addresses count as the IPv4 address. The logs still
show each full address.
"""

from __future__ import annotations

import ipaddress
from functools import lru_cache


@lru_cache(maxsize=8192)  # bounded: the addresses of a busy moment, not all ever seen
def network_of(address: str) -> str:
    """The key of ``address``'s budget: itself for IPv4 (or what is not an
    address), its /64 for IPv6 (``2001:db8:1:2::/64``)."""
    if ":" not in address:
        return address  # IPv4, or not an address at all: as it is
    try:
        ip = ipaddress.IPv6Address(address.split("%", 1)[0])  # no zone index
    except ValueError:
        return address
    if ip.ipv4_mapped is not None:
        return str(ip.ipv4_mapped)
    return str(ipaddress.IPv6Network((int(ip) >> 64 << 64, 64)))
