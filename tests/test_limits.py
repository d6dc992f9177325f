"""The daemon raises its own open-files limit: every client is an open file."""

from __future__ import annotations

import resource
from collections.abc import Iterator

import pytest

from partysense.process.limits import raise_open_files_limit

pytestmark = pytest.mark.logic


@pytest.fixture
def low_soft_limit() -> Iterator[int]:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and hard <= 256:
        pytest.skip("the hard open-files limit is too low to lower the soft one")
    resource.setrlimit(resource.RLIMIT_NOFILE, (256, hard))
    yield hard
    resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


def test_soft_limit_is_raised_to_the_hard_one(low_soft_limit: int) -> None:
    in_force = raise_open_files_limit()
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    assert soft == in_force > 256
    assert hard == low_soft_limit
    if hard != resource.RLIM_INFINITY:
        assert soft == hard


def test_raising_twice_changes_nothing(low_soft_limit: int) -> None:
    first = raise_open_files_limit()
    assert raise_open_files_limit() == first


def test_max_clients_is_lowered_below_the_open_files_limit() -> None:
    from partysense.process.limits import RESERVED_FILES, clients_that_fit, waiting_budget

    assert clients_that_fit(100_000, 20_000) == 20_000 - RESERVED_FILES - waiting_budget(20_000)
    assert clients_that_fit(500, 20_000) == 500
    assert clients_that_fit(100_000, resource.RLIM_INFINITY) == 100_000


@pytest.mark.parametrize("open_files", [256, 1024, 4096, 20_000, 131_072, 1_048_576])
def test_clients_and_connections_waiting_to_upgrade_fit_below_the_open_files_limit(
        open_files: int) -> None:
    """Every socket the daemon may hold, upgraded or not, has its file: accept()
    never meets EMFILE, which answered /healthz with an empty reply."""
    from partysense.process.limits import (
        MAX_WAITING,
        RESERVED_FILES,
        clients_that_fit,
        waiting_budget,
    )

    waiting = waiting_budget(open_files)
    assert 16 <= waiting <= MAX_WAITING
    assert clients_that_fit(10_000_000, open_files) + waiting + RESERVED_FILES <= open_files
    assert waiting_budget(resource.RLIM_INFINITY) == MAX_WAITING
