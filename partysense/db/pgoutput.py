"""PostgreSQL's ``pgoutput`` logical replication messages, protocol version 1, parsed.

The WAL source (docs/exactness.md, "The WAL source") reads committed changes
from a logical replication slot with the built-in ``pgoutput`` plugin. Each
replication message's payload is one of the messages documented in
PostgreSQL's "Logical Replication Message Formats"; :func:`parse` turns one
payload into a frozen dataclass, and raises :class:`BadMessage` for anything
that is not exactly one of them (short, long, an unknown tag), so that a
payload is never half-read. partysense/db/waldecoder.py then groups the
messages into whole committed transactions.

Only what protocol version 1 sends without options: Begin, Commit, Origin,
Relation, Type, Insert, Update, Delete, Truncate. (Streamed, two-phase and
``messages`` output need options we never ask for; they are refused.)
Column values stay as PostgreSQL's text output (``str``), ``None`` for NULL,
and :data:`UNCHANGED` for a TOASTed value the update did not touch.
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from dataclasses import dataclass

# pgoutput's timestamps are microseconds since 2000-01-01 00:00 UTC.
POSTGRES_EPOCH = 946_684_800

_INT = {1: struct.Struct(">b"), 2: struct.Struct(">h"), 4: struct.Struct(">i"),
        8: struct.Struct(">q")}
_UNSIGNED = {4: struct.Struct(">I"), 8: struct.Struct(">Q")}


class BadMessage(ValueError):
    """A payload that is not one well-formed pgoutput message."""


class _Unchanged:
    """A TOASTed column an UPDATE did not change: pgoutput does not send it."""

    def __repr__(self) -> str:
        return "UNCHANGED"


UNCHANGED = _Unchanged()
Value = str | bytes | None | _Unchanged
Row = tuple[Value, ...]


@dataclass(frozen=True, slots=True)
class Begin:
    final_lsn: int      # the LSN of the transaction's commit record
    commit_time: float  # epoch seconds
    xid: int


@dataclass(frozen=True, slots=True)
class Commit:
    flags: int
    commit_lsn: int     # the commit record's LSN (Begin.final_lsn)
    end_lsn: int        # just past it: where a replay of the slot would resume
    commit_time: float


@dataclass(frozen=True, slots=True)
class Origin:
    lsn: int
    name: str


@dataclass(frozen=True, slots=True)
class Column:
    key: bool           # part of the replica identity
    name: str
    type_oid: int
    typmod: int


@dataclass(frozen=True, slots=True)
class Relation:
    oid: int
    namespace: str      # "" means pg_catalog
    name: str
    replica_identity: str  # d(efault), n(othing), f(ull), i(ndex)
    columns: tuple[Column, ...]


@dataclass(frozen=True, slots=True)
class Type:
    oid: int
    namespace: str
    name: str


@dataclass(frozen=True, slots=True)
class Insert:
    relation: int
    new: Row


@dataclass(frozen=True, slots=True)
class Update:
    relation: int
    old: Row | None     # the whole old row (REPLICA IDENTITY FULL) ...
    key: Row | None     # ... or its key columns, when the key changed
    new: Row


@dataclass(frozen=True, slots=True)
class Delete:
    relation: int
    old: Row | None
    key: Row | None


@dataclass(frozen=True, slots=True)
class Truncate:
    cascade: bool
    restart_identity: bool
    relations: tuple[int, ...]


Message = Begin | Commit | Origin | Relation | Type | Insert | Update | Delete | Truncate


class _Reader:
    """Reads a payload front to back; every read past its end is a BadMessage."""

    def __init__(self, data: bytes) -> None:
        self._data = data
        self._at = 0

    def take(self, size: int) -> bytes:
        if size < 0 or self._at + size > len(self._data):
            raise BadMessage(f"ends after {len(self._data)} bytes, {size} more expected "
                             f"at {self._at}")
        chunk = self._data[self._at:self._at + size]
        self._at += size
        return chunk

    def signed(self, size: int) -> int:
        return int(_INT[size].unpack(self.take(size))[0])

    def unsigned(self, size: int) -> int:
        return int(_UNSIGNED[size].unpack(self.take(size))[0])

    def byte(self) -> str:
        return self.take(1).decode("latin-1")

    def string(self) -> str:
        end = self._data.find(b"\0", self._at)
        if end < 0:
            raise BadMessage(f"a string at {self._at} has no terminating NUL")
        text = self.take(end - self._at)
        self._at += 1
        return _text(text)

    def timestamp(self) -> float:
        return POSTGRES_EPOCH + self.signed(8) / 1_000_000

    def done(self) -> None:
        if self._at != len(self._data):
            raise BadMessage(f"{len(self._data) - self._at} bytes left over")


def _text(raw: bytes) -> str:
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as error:
        raise BadMessage(f"not UTF-8 ({error.reason})") from None


def _tuple(reader: _Reader) -> Row:
    values: list[Value] = []
    for _ in range(reader.signed(2)):
        kind = reader.byte()
        if kind == "n":
            values.append(None)
        elif kind == "u":
            values.append(UNCHANGED)
        elif kind == "t":
            values.append(_text(reader.take(reader.signed(4))))
        elif kind == "b":
            values.append(reader.take(reader.signed(4)))
        else:
            raise BadMessage(f"unknown column kind {kind!r}")
    return tuple(values)


def _old_row(reader: _Reader, tag: str) -> tuple[Row | None, Row | None]:
    """The old row ('O', REPLICA IDENTITY FULL) or old key ('K') that ``tag`` announces."""
    if tag == "O":
        return _tuple(reader), None
    if tag == "K":
        return None, _tuple(reader)
    raise BadMessage(f"expected an old row or key, got {tag!r}")


def _relation(reader: _Reader) -> Relation:
    oid, namespace, name = reader.unsigned(4), reader.string(), reader.string()
    identity = reader.byte()
    columns = []
    for _ in range(reader.signed(2)):
        flags, column = reader.signed(1), reader.string()
        columns.append(Column(bool(flags & 1), column, reader.unsigned(4), reader.signed(4)))
    return Relation(oid, namespace, name, identity, tuple(columns))


def _update(reader: _Reader) -> Update:
    relation, tag = reader.unsigned(4), reader.byte()
    old = key = None
    if tag != "N":  # the old row or key comes first, when there is one
        old, key = _old_row(reader, tag)
        tag = reader.byte()
    if tag != "N":
        raise BadMessage(f"an Update without its new row ({tag!r})")
    return Update(relation, old, key, _tuple(reader))


def _delete(reader: _Reader) -> Delete:
    relation = reader.unsigned(4)
    old, key = _old_row(reader, reader.byte())
    return Delete(relation, old, key)


def _insert(reader: _Reader) -> Insert:
    relation = reader.unsigned(4)
    if reader.byte() != "N":
        raise BadMessage("an Insert without its new row")
    return Insert(relation, _tuple(reader))


def _truncate(reader: _Reader) -> Truncate:
    count, options = reader.signed(4), reader.signed(1)
    relations = tuple(reader.unsigned(4) for _ in range(count))
    return Truncate(bool(options & 1), bool(options & 2), relations)


_PARSERS: dict[str, Callable[[_Reader], Message]] = {
    "B": lambda r: Begin(r.unsigned(8), r.timestamp(), r.unsigned(4)),
    "C": lambda r: Commit(r.signed(1), r.unsigned(8), r.unsigned(8), r.timestamp()),
    "O": lambda r: Origin(r.unsigned(8), r.string()),
    "R": _relation,
    "Y": lambda r: Type(r.unsigned(4), r.string(), r.string()),
    "I": _insert,
    "U": _update,
    "D": _delete,
    "T": _truncate,
}


def parse(payload: bytes) -> Message:
    """The one pgoutput message in ``payload``; BadMessage says what is wrong with it."""
    if not payload:
        raise BadMessage("empty")
    parser = _PARSERS.get(chr(payload[0]))
    if parser is None:
        raise BadMessage(f"unknown message type {payload[:1]!r}")
    reader = _Reader(payload)
    reader.take(1)
    message = parser(reader)
    reader.done()
    return message
