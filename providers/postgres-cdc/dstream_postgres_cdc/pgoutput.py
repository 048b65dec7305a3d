"""pgoutput (protocol version 1) messages → :class:`~dstream_postgres_cdc.decode.Decoder` events.

The binary logical replication messages of PostgreSQL's docs ("Logical Replication Message
Formats", protocol version 1), one per payload, as both ``pg_logical_slot_get_binary_changes``
and a walsender (``XLogData``) deliver them: Begin (the commit LSN, commit time, xid), Commit
(the end of the commit record), Relation (a table's id, name, replica identity and columns,
sent before its first change and again after it changes), Insert, Update (with the old
row: ``K`` its replica identity's columns, ``O`` every column with REPLICA IDENTITY FULL),
Delete, Truncate, Type and Origin (skipped) and Message (``messages 'true'``, PostgreSQL ≥ 14).

Column values come as their type's output text (``t``), null (``n``) or "unchanged TOASTed
value" (``u``: left out, as wal2json does); they become values by the same rules as
wal2json's (decode.py :func:`~dstream_postgres_cdc.decode.converter`, by the Relation's type
OIDs). No maintained PyPI library parses pgoutput (pypgoutput 0.0.3, Feb 2022; pypg-cdc
0.0.1, Apr 2023; pgoutput-decoder 0.1.0, a first release bundled with its own connection),
so it is parsed here with ``struct.unpack_from``, which reads the payload in place.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta, tzinfo
from typing import TYPE_CHECKING, Any

from dstream_postgres_cdc.decode import Decoder, converter
from dstream_postgres_cdc.errors import CdcError
from dstream_postgres_cdc.lsn import format_lsn

if TYPE_CHECKING:
    from collections.abc import Callable, Sequence

    from dstream.sdk import Record
    from dstream.sdk.cdc import TransactionAssembler
    from dstream_postgres_cdc.incremental import Incremental
    from dstream_postgres_cdc.source import Table

PG_EPOCH = datetime(2000, 1, 1, tzinfo=UTC)  # timestamps are microseconds since
_BEGIN = struct.Struct(">QqI")  # final (commit) LSN, commit time, xid
_COMMIT = struct.Struct(">BQQq")  # flags, commit LSN, end LSN, commit time
_U32 = struct.Struct(">I")
_I32 = struct.Struct(">i")
_I16 = struct.Struct(">h")
_MESSAGE_HEAD = struct.Struct(">BQ")  # flags, LSN
_RELATION_COLUMN = struct.Struct(">Ii")  # type OID, type modifier
_CHANGE_KINDS = {0x49: "I", 0x55: "U", 0x44: "D"}


class MalformedMessage(CdcError):
    """A payload that is not a pgoutput protocol version 1 message this decoder understands."""


@dataclass(frozen=True)
class Relation:
    """A Relation message: where a table's changes go and how its columns are read."""

    table: str  # schema.table, as the task names it
    captured: bool  # one of the task's tables (a publication may hold others)
    names: tuple[str, ...]
    key_flags: tuple[bool, ...]  # part of the replica identity (every column with FULL)
    convert: tuple[Callable[[str], Any] | None, ...]
    key_names: tuple[str, ...]  # the flagged columns, in column order


class PgoutputDecoder(Decoder):
    """Feeds pgoutput messages (one payload ``bytes`` each: a SQL row's ``data`` or an
    ``XLogData``'s payload). ``timezone`` renders the commit time as wal2json does (in the
    session's TimeZone)."""

    def __init__(
        self,
        tables: list[Table],
        numeric_as_string: bool = False,
        starts: dict[str, int] | None = None,
        positions: dict[str, Any] | None = None,
        incremental: Incremental | None = None,
        timezone: tzinfo = UTC,
    ) -> None:
        super().__init__(tables, numeric_as_string, starts, positions, incremental)
        self.timezone = timezone
        self.relations: dict[int, Relation] = {}

    def feed(self, payloads: Sequence[bytes], asm: TransactionAssembler[Record], out: list[Record]) -> int:
        """Decode ``payloads`` into ``out`` (records with their positions); return how many.

        A payload that is cut short, garbled or of an unknown kind raises
        :class:`MalformedMessage` (one line: which message, where, why).
        """
        emitted = 0
        for payload in payloads:
            try:
                emitted += self._one(payload, asm, out)
            except (struct.error, IndexError, UnicodeDecodeError, ValueError, OverflowError) as exc:
                if isinstance(exc, MalformedMessage):
                    raise
                raise MalformedMessage(_describe(payload, str(exc) or type(exc).__name__)) from None
        return emitted

    def _one(self, buf: bytes, asm: TransactionAssembler[Record], out: list[Record]) -> int:
        kind = buf[0]
        change = _CHANGE_KINDS.get(kind)
        if change is not None:
            (relid,) = _U32.unpack_from(buf, 1)
            rel = self.relations.get(relid) or self._relation(relid, buf)
            if not rel.captured or (self.starts and self._commit < self._latest_start and self.dropped(rel.table)):
                return 0
            seq = asm.next_change()
            if not seq:
                return 0  # emitted before this restart or reconnect: not even decoded
            if change == "I" and buf[5] == 0x4E:  # an insert, the most common change: its new row
                data, end = self._tuple(rel, buf, 6, False)
                if end != len(buf):
                    _expect_end(buf, end)
                return self.emit(self.make("I", rel.table, data, None, seq), asm, out)
            return self.emit(self._change(change, rel, buf, seq), asm, out)
        if kind == 0x42:  # B
            commit, when, xid = _BEGIN.unpack_from(buf, 1)
            _expect_end(buf, 1 + _BEGIN.size)
            self.begin(asm, commit, format_lsn(commit), None, None, xid, self._time(when))
            return 0
        if kind == 0x43:  # C
            _flags, _commit, end, _when = _COMMIT.unpack_from(buf, 1)
            _expect_end(buf, 1 + _COMMIT.size)
            return self.commit(asm, out, end, format_lsn(end))
        if kind == 0x52:  # R
            self._read_relation(buf)
            return 0
        if kind == 0x54:  # T
            return self._truncate(buf, asm, out)
        if kind == 0x4D:  # M
            flags, lsn = _MESSAGE_HEAD.unpack_from(buf, 1)
            prefix, pos = _string(buf, 1 + _MESSAGE_HEAD.size)
            (length,) = _I32.unpack_from(buf, pos)
            pos += 4
            content = _take(buf, pos, length)
            _expect_end(buf, pos + length)
            message = {
                "transactional": bool(flags & 1),
                "lsn": format_lsn(lsn),
                "prefix": prefix,
                "content": content.decode("utf-8", "replace"),
            }
            self.message(asm, message, lsn)
            return 0
        if kind == 0x59:  # Y: a type's name (values are read by the Relation's type OIDs)
            _schema, pos = _string(buf, 5)
            _expect_end(buf, _string(buf, pos)[1])
            return 0
        if kind == 0x4F:  # O: the origin of a replicated transaction
            _expect_end(buf, _string(buf, 9)[1])
            return 0
        raise MalformedMessage(_describe(buf, "unknown message kind"))

    # -- messages -------------------------------------------------------------------------

    def _relation(self, relid: int, buf: bytes) -> Relation:
        rel = self.relations.get(relid)
        if rel is None:
            raise MalformedMessage(_describe(buf, f"relation {relid} was not described by a Relation message"))
        return rel

    def _read_relation(self, buf: bytes) -> None:
        (relid,) = _U32.unpack_from(buf, 1)
        schema, pos = _string(buf, 5)
        name, pos = _string(buf, pos)
        identity = buf[pos]
        (count,) = _I16.unpack_from(buf, pos + 1)
        pos += 3
        names: list[str] = []
        flags: list[bool] = []
        convert: list[Callable[[str], Any] | None] = []
        for _ in range(count):
            flag = buf[pos]
            column, pos = _string(buf, pos + 1)
            type_oid, _typmod = _RELATION_COLUMN.unpack_from(buf, pos)
            pos += _RELATION_COLUMN.size
            names.append(column)
            flags.append(bool(flag & 1) or identity == 0x66)  # 'f': FULL, the whole old row
            convert.append(converter(type_oid, self.numeric_as_string))
        _expect_end(buf, pos)
        qualified = self.names.get((schema, name))
        keys = tuple(column for column, flag in zip(names, flags, strict=True) if flag)
        self.relations[relid] = Relation(
            qualified or f"{schema}.{name}", qualified is not None, tuple(names), tuple(flags), tuple(convert), keys
        )

    def _change(self, kind: str, rel: Relation, buf: bytes, seq: int) -> Record:
        pos = 5
        before: dict[str, Any] | None = None
        data: dict[str, Any] = {}
        marker = buf[pos]
        if marker in (0x4B, 0x4F):  # K: the old key, O: the old row (REPLICA IDENTITY FULL)
            before, pos = self._tuple(rel, buf, pos + 1, marker == 0x4B)
            if kind != "D":
                marker = buf[pos]
        elif kind == "D":
            raise MalformedMessage(_describe(buf, f"a Delete without an old key or row (found {chr(marker)!r})"))
        if kind != "D":
            if marker != 0x4E:  # N: the new row
                raise MalformedMessage(_describe(buf, f"expected the new row ('N'), found {chr(marker)!r}"))
            data, pos = self._tuple(rel, buf, pos + 1, False)
            if before is None and kind == "U":
                # The key did not change, so PostgreSQL logged no old key; wal2json then prints
                # the new row's replica identity columns as the old ones (wal2json.c, v2 update:
                # "identity can be obtained from new tuple (because it doesn't change)").
                keys = rel.key_names
                if keys:
                    before = {name: data[name] for name in keys if name in data}
        _expect_end(buf, pos)
        return self.make(kind, rel.table, data, before, seq)

    def _tuple(self, rel: Relation, buf: bytes, pos: int, key_only: bool) -> tuple[dict[str, Any], int]:
        """TupleData at ``pos``: the row (``key_only``: the replica identity's columns) and the end."""
        # The hot path of a backlog: once per change, its loop once per column.
        (count,) = _I16.unpack_from(buf, pos)
        pos += 2
        names, convert, flags = rel.names, rel.convert, rel.key_flags
        if count != len(names):
            raise MalformedMessage(_describe(buf, f"{count} columns where the Relation has {len(names)}"))
        size, unpack_length = len(buf), _I32.unpack_from
        row: dict[str, Any] = {}
        for i in range(count):
            kind = buf[pos]
            if kind == 0x74:  # t: text
                start = pos + 5
                pos = start + unpack_length(buf, pos + 1)[0]
                if pos > size or pos < start:
                    raise MalformedMessage(_describe(buf, f"column {names[i]!r} runs past the end"))
                if key_only and not flags[i]:
                    continue
                fn = convert[i]
                text = buf[start:pos].decode()
                row[names[i]] = text if fn is None else fn(text)
            elif kind == 0x6E:  # n: null
                pos += 1
                if not key_only or flags[i]:
                    row[names[i]] = None
            elif kind == 0x75:  # u: an unchanged TOASTed value, not sent: left out, as wal2json does
                pos += 1
            else:  # b (binary) is only sent when asked for (`binary 'true'`): not requested here
                raise MalformedMessage(_describe(buf, f"column {names[i]!r} has an unknown kind {chr(kind)!r}"))
        return row, pos

    def _truncate(self, buf: bytes, asm: TransactionAssembler[Record], out: list[Record]) -> int:
        (count,) = _I32.unpack_from(buf, 1)
        pos = 6  # count, then one byte of options (CASCADE, RESTART IDENTITY)
        _expect_end(buf, pos + 4 * max(count, 0))
        emitted = 0
        for i in range(count):  # one change per table, as wal2json prints them
            (relid,) = _U32.unpack_from(buf, pos + 4 * i)
            rel = self._relation(relid, buf)
            if not rel.captured or (self.starts and self._commit < self._latest_start and self.dropped(rel.table)):
                continue
            seq = asm.next_change()
            if seq:
                emitted += self.emit(self.make("T", rel.table, {}, None, seq), asm, out)
        return emitted

    def _time(self, micros: int) -> str:
        return (PG_EPOCH + timedelta(microseconds=micros)).astimezone(self.timezone).isoformat()


def _string(buf: bytes, pos: int) -> tuple[str, int]:
    """A NUL-terminated string at ``pos`` and the position after it."""
    end = buf.index(0, pos)
    return buf[pos:end].decode(), end + 1


def _take(buf: bytes, pos: int, length: int) -> bytes:
    if length < 0 or pos + length > len(buf):
        raise MalformedMessage(_describe(buf, f"{length} bytes of content run past the end"))
    return buf[pos : pos + length]


def _expect_end(buf: bytes, pos: int) -> None:
    if pos != len(buf):
        raise MalformedMessage(_describe(buf, f"{len(buf) - pos} bytes left over"))


def _describe(buf: bytes, why: str) -> str:
    kind = chr(buf[0]) if buf else "(empty)"
    return (
        f"malformed pgoutput message (kind {kind!r}, {len(buf)} bytes): {why}; "
        f"is the slot's plugin pgoutput with proto_version 1?"
    )
