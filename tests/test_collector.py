"""The garbage collector's settings for a daemon with thousands of connections."""

from __future__ import annotations

import gc
import weakref
from collections.abc import Iterator

import pytest

from partysense.process.collector import YOUNGEST_THRESHOLD, CollectorService

pytestmark = pytest.mark.logic


@pytest.fixture
def restored() -> Iterator[None]:
    thresholds = gc.get_threshold()
    yield
    gc.unfreeze()
    gc.set_threshold(*thresholds)


def test_started_daemon_freezes_what_startup_made(restored: None) -> None:
    gc.unfreeze()
    made_at_startup = [object(), {"a": []}]
    CollectorService().startService()
    assert gc.get_freeze_count() > 0
    assert gc.get_threshold()[0] == YOUNGEST_THRESHOLD
    # Frozen objects are out of the collector's sight: a full collection
    # does not even list them.
    tracked = {id(o) for o in gc.get_objects()}
    assert id(made_at_startup[1]) not in tracked


def test_cycles_made_later_are_still_collected(restored: None) -> None:
    CollectorService().startService()

    class Node:
        pass

    node = Node()
    node.self = node  # type: ignore[attr-defined]
    ref = weakref.ref(node)
    del node
    assert ref() is not None  # a cycle: only the collector frees it
    gc.collect()
    assert ref() is None
