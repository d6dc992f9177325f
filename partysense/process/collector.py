"""Python's garbage collector, set for a daemon that holds thousands of connections.

The cyclic collector walks every container object of a generation each time
it collects it. Two things made it cost the daemon about half of its CPU
while thousands of clients connected (bench/storm.py, docs/performance.md):

- Everything alive once the daemon has started (Twisted, Autobahn, psycopg2,
  our modules: several hundred thousand objects) lives as long as the
  process, yet every full collection walked it again: ~0.2 s each.
  ``gc.freeze()`` once started moves them where the collector never looks.
- Each connection leaves a few dozen long-lived objects; at the default
  threshold (700 allocations) the youngest generation is collected every
  few connections. A higher one collects as much, less often.

Garbage cycles are still collected: only the moment changes.
"""

from __future__ import annotations

import gc

from twisted.application import service

# Allocations (net of deallocations) between collections of the youngest
# generation; Python's default is 700.
YOUNGEST_THRESHOLD = 10_000


class CollectorService(service.Service):
    """Freezes what startup made and raises the youngest generation's threshold."""

    def startService(self) -> None:
        super().startService()
        gc.collect()  # the garbage of startup is not kept for good
        gc.freeze()
        _, middle, oldest = gc.get_threshold()
        gc.set_threshold(YOUNGEST_THRESHOLD, middle, oldest)
