"""pgoutput's messages grouped into committed transactions.

:class:`Decoder` keeps the relations the stream described and groups each
transaction's row changes, handing on a whole :class:`Transaction` at its
commit. The messages themselves are partysense/db/pgoutput.py's; a vote's
Begin, Insert and Commit are read here the short way (the same values as
:func:`~partysense.db.pgoutput.parse` gives), because they are nearly every
message the relay reads.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from partysense.db.pgoutput import (
    POSTGRES_EPOCH,
    BadMessage,
    Begin,
    Commit,
    Delete,
    Insert,
    Message,
    Relation,
    Row,
    Truncate,
    Update,
    Value,
    parse,
)

_BEGIN = struct.Struct(">QqI")      # final LSN, commit time, xid
_COMMIT = struct.Struct(">bQQq")    # flags, commit LSN, end LSN, commit time
_INSERT_HEAD = struct.Struct(">IBh")  # relation, 'N', number of columns
_INT32 = struct.Struct(">i")


@dataclass(frozen=True, slots=True)
class RowChange:
    """One row inserted, updated or deleted (``old``/``new`` by column name), or
    a relation truncated (op "truncate", neither row)."""

    op: str
    relation: Relation
    old: dict[str, Value] | None
    new: dict[str, Value] | None


@dataclass(frozen=True, slots=True)
class Transaction:
    """A committed transaction's row changes of the published tables, in WAL order."""

    xid: int
    commit_lsn: int
    end_lsn: int
    commit_time: float
    changes: tuple[RowChange, ...]


class Decoder:
    """Feeds on a slot's messages in order; hands on each transaction at its commit.

    Keeps the relations the stream described (pgoutput sends a Relation
    before a relation's first change on a connection, and again after it
    changed), so a new connection needs a new Decoder.
    """

    def __init__(self) -> None:
        self.relations: dict[int, Relation] = {}
        self._begin: Begin | None = None
        self._changes: list[RowChange] = []

    @property
    def inside(self) -> bool:
        """Between a Begin and its Commit."""
        return self._begin is not None

    def feed(self, payload: bytes) -> Transaction | None:
        """Take one message; the transaction it completes, if it is a Commit."""
        # A vote's transaction is a Begin, an Insert and a Commit: those are
        # read the short way when they are well formed (the same values as
        # parse() gives); anything else, or malformed, goes through parse().
        tag = payload[:1]
        message: Message | None = None
        if tag == b"I" and self._begin is not None:
            change = self._insert_fast(payload)
            if change is not None:
                self._changes.append(change)
                return None
        elif tag == b"B" and len(payload) == 1 + _BEGIN.size:
            final_lsn, when, xid = _BEGIN.unpack_from(payload, 1)
            message = Begin(final_lsn, POSTGRES_EPOCH + when / 1_000_000, xid)
        elif tag == b"C" and len(payload) == 1 + _COMMIT.size:
            flags, commit_lsn, end_lsn, when = _COMMIT.unpack_from(payload, 1)
            message = Commit(flags, commit_lsn, end_lsn, POSTGRES_EPOCH + when / 1_000_000)
        if message is None:
            message = parse(payload)
        if isinstance(message, Relation):
            self.relations[message.oid] = message
        elif isinstance(message, Begin):
            if self._begin is not None:
                raise BadMessage(f"Begin of {message.xid} inside {self._begin.xid}")
            self._begin, self._changes = message, []
        elif isinstance(message, Commit):
            return self._commit(message)
        elif isinstance(message, Insert | Update | Delete | Truncate):
            if self._begin is None:
                raise BadMessage(f"{type(message).__name__} outside a transaction")
            self._changes.extend(self._rows(message))
        return None  # Origin and Type say nothing we use

    def _commit(self, commit: Commit) -> Transaction:
        begin, self._begin = self._begin, None
        if begin is None or begin.final_lsn != commit.commit_lsn:
            raise BadMessage(f"a Commit at {commit.commit_lsn:X} that no Begin announced")
        return Transaction(begin.xid, commit.commit_lsn, commit.end_lsn, commit.commit_time,
                           tuple(self._changes))

    def _insert_fast(self, payload: bytes) -> RowChange | None:
        """An Insert whose values are all text or NULL (every vote's), read with
        less work than :func:`parse`; None for anything else, or anything not
        well formed, which :func:`parse` then reads (or refuses, saying why)."""
        size = len(payload)
        if size < 8:
            return None
        relation_oid, tag, count = _INSERT_HEAD.unpack_from(payload, 1)
        relation = self.relations.get(relation_oid)
        if tag != 78 or relation is None or count != len(relation.columns):  # 78: 'N'
            return None
        at = 8
        values: list[Value] = []
        try:
            for _ in range(count):
                kind = payload[at]
                if kind == 116:  # 't'
                    length = _INT32.unpack_from(payload, at + 1)[0]
                    at += 5
                    end = at + length
                    if length < 0 or end > size:
                        return None
                    values.append(payload[at:end].decode("utf-8"))
                    at = end
                elif kind == 110:  # 'n'
                    values.append(None)
                    at += 1
                else:
                    return None
        except (IndexError, struct.error, UnicodeDecodeError):
            return None
        if at != size:
            return None
        return RowChange("insert", relation, None,
                         dict(zip([column.name for column in relation.columns], values,
                                  strict=True)))

    def _relation(self, oid: int) -> Relation:
        relation = self.relations.get(oid)
        if relation is None:
            raise BadMessage(f"a change of relation {oid} that no Relation described")
        return relation

    def _rows(self, message: Insert | Update | Delete | Truncate) -> list[RowChange]:
        if isinstance(message, Truncate):
            return [RowChange("truncate", self._relation(oid), None, None)
                    for oid in message.relations]
        relation = self._relation(message.relation)
        new = None if isinstance(message, Delete) else _named(relation, message.new)
        old_row = None if isinstance(message, Insert) else (message.old or message.key)
        old = None if old_row is None else _named(relation, old_row)
        op = {Insert: "insert", Update: "update", Delete: "delete"}[type(message)]
        return [RowChange(op, relation, old, new)]


def _named(relation: Relation, row: Row) -> dict[str, Value]:
    if len(row) != len(relation.columns):
        raise BadMessage(f"{len(row)} values for the {len(relation.columns)} columns of "
                         f"{relation.name}")
    return {column.name: value for column, value in zip(relation.columns, row, strict=True)}
