"""The pgoutput parser (partysense/db/pgoutput.py) on bytes PostgreSQL sent.

tests/data/pgoutput_v1.txt holds, one hex payload a line, what a slot with
``proto_version 1`` and a publication of event_vote (REPLICA IDENTITY FULL)
and event_event (default identity, description stored EXTERNAL) gave for:

    INSERT INTO event_event (title, description) VALUES ('Fête "😀"', repeat('x', 5000));
    INSERT INTO event_event (title) VALUES ('Other');
    INSERT INTO event_vote (event_id, track_id, user_id) VALUES (1, 1, NULL);
    UPDATE event_vote SET is_positive = false WHERE id = 1;
    UPDATE event_event SET title = 'Renamed' WHERE id = 1;   -- description TOASTed, unchanged
    UPDATE event_event SET id = id + 1000 WHERE id = 2;     -- the key changes
    BEGIN; INSERT INTO event_vote ... user 7; DELETE FROM event_vote WHERE id = 1; COMMIT;
    TRUNCATE event_vote;

The same statements run on the test PostgreSQL, streamed live, in
tests/test_walstream.py.
"""

from __future__ import annotations

import struct
from pathlib import Path

import pytest

from partysense.db import pgoutput, waldecoder
from partysense.db.pgoutput import UNCHANGED, BadMessage
from partysense.db.waldecoder import Decoder

pytestmark = pytest.mark.logic

CAPTURE = Path(__file__).parent / "data" / "pgoutput_v1.txt"


def captured() -> list[bytes]:
    return [bytes.fromhex(line) for line in CAPTURE.read_text().splitlines()
            if line and not line.startswith("#")]


def transactions() -> list[waldecoder.Transaction]:
    decoder = Decoder()
    return [t for t in map(decoder.feed, captured()) if t is not None]


def test_every_captured_message_parses_to_its_type() -> None:
    kinds = "".join(type(pgoutput.parse(p)).__name__[0] for p in captured())
    # Begin, Relation, Insert, Commit ... as PostgreSQL sent them.
    assert kinds == "BRICBICBRICBUCBUCBUCBIDCBRTC"


def test_begin_and_commit_agree_and_carry_the_commit_lsn_and_time() -> None:
    messages = [pgoutput.parse(p) for p in captured()]
    begins = [m for m in messages if isinstance(m, pgoutput.Begin)]
    commits = [m for m in messages if isinstance(m, pgoutput.Commit)]
    assert len(begins) == len(commits) == 8
    for begin, commit in zip(begins, commits, strict=True):
        assert begin.final_lsn == commit.commit_lsn < commit.end_lsn
        assert begin.commit_time == commit.commit_time
        assert 1.7e9 < commit.commit_time < 2.1e9  # epoch seconds, not since 2000
    # Run one after the other: xids and commit LSNs both increase.
    assert [b.xid for b in begins] == sorted({b.xid for b in begins})
    assert [c.commit_lsn for c in commits] == sorted(c.commit_lsn for c in commits)


def test_relation_describes_columns_keys_and_identity() -> None:
    relations = [m for m in map(pgoutput.parse, captured()) if isinstance(m, pgoutput.Relation)]
    event, vote = relations[0], relations[1]
    assert (event.namespace, event.name, event.replica_identity) == ("public", "event_event", "d")
    assert [c.name for c in event.columns] == ["id", "title", "date", "description"]
    assert [c.key for c in event.columns] == [True, False, False, False]
    assert [c.type_oid for c in event.columns] == [23, 1043, 1082, 25]
    assert event.columns[1].typmod == 70 + 4  # varchar(70)
    assert (vote.name, vote.replica_identity) == ("event_vote", "f")
    assert [c.name for c in vote.columns] == ["id", "is_positive", "event_id", "track_id",
                                              "user_id"]
    assert all(c.key for c in vote.columns)  # FULL: every column identifies the row


def test_rows_come_as_text_with_nulls_utf8_and_toast_left_out() -> None:
    first, _, vote, flip, rename, rekey, pair, truncate = transactions()
    (event,) = first.changes
    assert event.op == "insert" and event.old is None
    assert event.new == {"id": "1", "title": 'Fête "😀"', "date": None,
                         "description": "x" * 5000}
    assert vote.changes[0].new == {"id": "1", "is_positive": "t", "event_id": "1",
                                   "track_id": "1", "user_id": None}
    (update,) = flip.changes
    assert update.old is not None and update.new is not None
    assert (update.old["is_positive"], update.new["is_positive"]) == ("t", "f")
    assert rename.changes[0].new == {"id": "1", "title": "Renamed", "date": None,
                                     "description": UNCHANGED}
    assert rename.changes[0].old is None  # default identity, key unchanged: no old row
    assert rekey.changes[0].old == {"id": "2", "title": None, "date": None,
                                    "description": None}  # the old key only
    assert rekey.changes[0].new is not None and rekey.changes[0].new["id"] == "1002"
    assert [c.op for c in pair.changes] == ["insert", "delete"]
    assert pair.changes[1].old == {"id": "1", "is_positive": "f", "event_id": "1",
                                   "track_id": "1", "user_id": None}
    assert [(c.op, c.relation.name) for c in truncate.changes] == [("truncate", "event_vote")]


@pytest.mark.parametrize("index", range(28))
def test_a_message_cut_short_or_lengthened_is_refused(index: int) -> None:
    payload = captured()[index]
    for cut in range(len(payload)):
        with pytest.raises(BadMessage):
            pgoutput.parse(payload[:cut])
    with pytest.raises(BadMessage, match="left over"):
        pgoutput.parse(payload + b"\0")


@pytest.mark.parametrize("payload, why", [
    (b"Z\0\0\0\0", "unknown message type"),
    (b"M\0", "unknown message type"),  # 'messages' output: never asked for
    (b"I\0\0\0\1X\0\0", "without its new row"),
    (b"D\0\0\0\1N\0\0", "old row or key"),
    (b"U\0\0\0\1O\0\0X\0\0", "without its new row"),
    (b"I\0\0\0\1N\0\1q", "unknown column kind"),
    (b"I\0\0\0\1N\0\1t\0\0\0\2\xff\xfe", "not UTF-8"),
    (b"R\0\0\0\1public", "no terminating NUL"),
    (b"I\0\0\0\1N\0\1t\xff\xff\xff\xff", "more expected"),  # a negative length
])
def test_malformed_payloads_say_what_is_wrong(payload: bytes, why: str) -> None:
    with pytest.raises(BadMessage, match=why):
        pgoutput.parse(payload)


def test_the_decoder_refuses_changes_outside_a_transaction_or_of_unknown_relations() -> None:
    payloads = captured()
    decoder = Decoder()
    with pytest.raises(BadMessage, match="outside a transaction"):
        decoder.feed(payloads[2])  # an Insert before any Begin
    decoder = Decoder()
    decoder.feed(payloads[0])  # Begin, then the Insert without its Relation
    with pytest.raises(BadMessage, match="no Relation described"):
        decoder.feed(payloads[2])
    decoder = Decoder()
    with pytest.raises(BadMessage, match="no Begin announced"):
        decoder.feed(payloads[3])  # a Commit alone
    decoder.feed(payloads[0])
    with pytest.raises(BadMessage, match="inside"):
        decoder.feed(payloads[0])


def test_a_row_with_the_wrong_number_of_values_is_refused() -> None:
    payloads = captured()
    decoder = Decoder()
    decoder.feed(payloads[0])
    decoder.feed(payloads[1])  # event_event: 4 columns
    relation = struct.unpack(">I", payloads[2][1:5])[0]
    with pytest.raises(BadMessage, match="1 values for the 4 columns"):
        decoder.feed(b"I" + struct.pack(">I", relation) + b"N\0\1n")


class _SlowDecoder(Decoder):
    """The decoder with every message read by parse(): what the short way must equal."""

    def feed(self, payload: bytes) -> waldecoder.Transaction | None:
        message = pgoutput.parse(payload)
        if isinstance(message, pgoutput.Relation):
            self.relations[message.oid] = message
        elif isinstance(message, pgoutput.Begin):
            self._begin, self._changes = message, []
        elif isinstance(message, pgoutput.Commit):
            return self._commit(message)
        elif isinstance(message, pgoutput.Insert | pgoutput.Update | pgoutput.Delete
                        | pgoutput.Truncate):
            self._changes.extend(self._rows(message))
        return None


def test_the_short_way_for_begin_insert_and_commit_gives_what_parse_gives() -> None:
    fast, slow = Decoder(), _SlowDecoder()
    for payload in captured():
        assert fast.feed(payload) == slow.feed(payload)
    assert transactions() == [t for t in map(_SlowDecoder().feed, captured()) if t]


@pytest.mark.parametrize("cut", [1, 5, 8, 9, 12, -1])
def test_a_vote_insert_cut_or_lengthened_is_refused_by_the_short_way_too(cut: int) -> None:
    payloads = captured()
    decoder = Decoder()
    for payload in payloads[:2]:  # Begin, Relation
        decoder.feed(payload)
    insert = payloads[2]
    assert insert[:1] == b"I"
    with pytest.raises(BadMessage):
        decoder.feed(insert[:cut])
    with pytest.raises(BadMessage):
        decoder.feed(insert + b"\0")
