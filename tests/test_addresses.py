"""An IPv6 client is its /64 for every bound kept per address (partysense/core/addresses.py):
taking a new address from its prefix for each connection renews nothing."""

from __future__ import annotations

import pytest
from twisted.internet.task import Clock

from partysense.core.addresses import network_of
from partysense.core.budgets import AddressBuckets
from partysense.wire.clients import ClientRegistry, Limits
from partysense.wire.frames import FloodedAddresses
from partysense.wire.waiting import Waiting

pytestmark = pytest.mark.logic

ONE = "2001:db8:1:2::10"
SAME_PREFIX = "2001:db8:1:2:aaaa:bbbb:cccc:dddd"
OTHER_PREFIX = "2001:db8:1:3::10"


@pytest.mark.parametrize(("address", "network"), [
    ("192.0.2.7", "192.0.2.7"),
    (ONE, "2001:db8:1:2::/64"),
    (SAME_PREFIX, "2001:db8:1:2::/64"),
    ("::ffff:192.0.2.7", "192.0.2.7"),
    ("fe80::1%eth0", "fe80::/64"),
    ("?", "?"),
    ("not:an:address", "not:an:address"),
])
def test_an_address_and_what_it_counts_as(address: str, network: str) -> None:
    assert network_of(address) == network


def test_a_budget_is_the_prefixes() -> None:
    buckets = AddressBuckets(rate=0.0, burst=2)
    assert buckets.take(ONE, 0.0) and buckets.take(SAME_PREFIX, 0.0)
    assert not buckets.take("2001:db8:1:2::99", 0.0), "a third address of the /64 is refused"
    assert buckets.take(OTHER_PREFIX, 0.0)
    assert buckets.take("192.0.2.7", 0.0) and buckets.take("192.0.2.8", 0.0)


def test_connections_per_ip_count_the_prefix() -> None:
    registry = ClientRegistry(Clock(), Limits(max_connections_per_ip=2))
    registry.enter(object(), ONE)  # type: ignore[arg-type]
    registry.enter(object(), SAME_PREFIX)  # type: ignore[arg-type]
    refusal = registry.admission("2001:db8:1:2::99")
    assert refusal is not None and refusal.kind == "too_many_connections"
    assert registry.admission(OTHER_PREFIX) is None
    waiting = Waiting(100, max_per_address=3, upgraded_from=registry.connected_from)
    assert not waiting.too_many_from("2001:db8:1:2::99")  # two upgraded, none waiting
    waiting.enter("c1", "2001:db8:1:2::77")
    assert waiting.too_many_from("2001:db8:1:2::78")
    assert not waiting.too_many_from(OTHER_PREFIX)


def test_a_flooder_s_prefix_waits_whatever_address_it_takes_next() -> None:
    flooded = FloodedAddresses(Clock())
    flooded.flooded(ONE)
    assert flooded.hold_for(SAME_PREFIX) > 0
    assert flooded.hold_for(OTHER_PREFIX) == 0
