"""/metrics for --source wal: this daemon's relay candidate, and the database's slot.

Collected with the daemon's other families (web/metrics.py, ``LiveCollector``)
when the change source has a relay (partysense/db/walrelay.py).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

from partysense.core.interfaces import Relay


def relay_families(relay: Relay) -> Iterator[Any]:
    """--source wal: this daemon's relay candidate, and the database's slot."""
    yield GaugeMetricFamily(
        "partysense_wal_relay_active",
        "1 while this daemon's relay holds the slot and writes the change log from the "
        "WAL, 0 while it waits as a standby (or cannot connect).",
        value=1 if relay.state == "relaying" else 0)
    yield CounterMetricFamily(
        "partysense_wal_relayed", "Change log rows this daemon's relay wrote from the WAL.",
        value=relay.relayed)
    yield CounterMetricFamily(
        "partysense_wal_relay_takeovers", "Times this daemon's relay took the slot.",
        value=relay.takeovers)
    if relay.slot_lag_bytes is not None:
        yield GaugeMetricFamily(
            "partysense_wal_slot_lag_bytes",
            "WAL the relay's slot holds that no relay has logged yet "
            "(pg_current_wal_lsn() - confirmed_flush_lsn), polled every few seconds.",
            value=relay.slot_lag_bytes)
    if relay.slot_wal_status is not None:
        status = GaugeMetricFamily(
            "partysense_wal_slot_status",
            "The slot's pg_replication_slots.wal_status: reserved, extended, unreserved "
            "(past max_slot_wal_keep_size, about to be lost) or lost (invalidated).",
            labels=["wal_status"])
        status.add_metric([relay.slot_wal_status], 1)
        yield status
