"""A few seconds of bench/forged_flood.py, so that it cannot rot.

Speed is not asserted here (the bench measures it); what the issue asks of
a forged notification is: every one the flood sent on a listened channel is
counted as bad, none makes the daemon read the change log, and no real vote
is lost beside them.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bench import forged_flood

pytestmark = pytest.mark.daemon


def test_forged_notifications_are_counted_and_cost_no_read(admin_dsn: str,
                                                            tmp_path: Path) -> None:
    output = tmp_path / "flood.json"
    forged_flood.main(["--dsn", admin_dsn, "--duration", "2", "--rate", "1000", "--votes", "20",
                       "--clients", "2", "--batch", "100", "--grace", "10",
                       "--json", str(output)])
    rounds = {r["name"]: r for r in json.loads(output.read_text())}
    assert list(rounds) == list(forged_flood.ROUNDS)
    for name in ("flood", "votes + flood"):
        flood = rounds[name]
        assert flood["forged"]["errors"] == 0, flood["forged"]
        assert flood["forged"]["sent"] >= 1000, flood["forged"]
        # Every forged one reached the daemon (both channels are listened) and was counted.
        assert flood["bad"] == flood["forged"]["sent"], flood
    for r in rounds.values():
        assert r["reads"] == 0, r
        if r["statements"] is not None:  # a server loading pg_stat_statements
            assert r["statements"]["change-log reads"] == 0, r["statement_texts"]
        assert r["votes_received"] == r["votes_expected"], r
    for name in ("votes", "votes + flood"):
        # 2 clients on the event and 1 on the firehose each get every vote.
        assert rounds[name]["votes_sent"] >= 20
        assert rounds[name]["votes_expected"] == 3 * rounds[name]["votes_sent"]
