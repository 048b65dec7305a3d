"""wal2json (format version 2) rows → :class:`~dstream_postgres_cdc.decode.Decoder` events.

wal2json prints one JSON object per row: ``B`` (begin: ``lsn`` is the commit LSN,
``nextlsn`` the end of the commit record), ``I``/``U``/``D``/``T`` (changes), ``C`` (commit),
``M`` (logical messages). Its values already follow the rules decode.py describes (it
prints numbers unquoted, bool as true/false, bytea as hex); only ``numeric_as_string``
re-reads numbers as their text.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from dstream_postgres_cdc.decode import Decoder, commit_time, loads, loads_exact
from dstream_postgres_cdc.lsn import parse_lsn

if TYPE_CHECKING:
    from collections.abc import Sequence

    from dstream.sdk import Record
    from dstream.sdk.cdc import TransactionAssembler
    from dstream_postgres_cdc.incremental import Incremental
    from dstream_postgres_cdc.source import Table

ACTION_AT = len('{"action":"')


class Wal2jsonDecoder(Decoder):
    """Feeds wal2json rows (``(text,)`` tuples, as the SQL interface returns them)."""

    def __init__(
        self,
        tables: list[Table],
        numeric_as_string: bool = False,
        starts: dict[str, int] | None = None,
        positions: dict[str, Any] | None = None,
        incremental: Incremental | None = None,
    ) -> None:
        super().__init__(tables, numeric_as_string, starts, positions, incremental)
        self._loads = loads_exact if numeric_as_string else loads

    def feed(self, rows: Sequence[str], asm: TransactionAssembler[Record], out: list[Record]) -> int:
        """Decode ``rows`` into ``out`` (records with their positions); return how many."""
        emitted = 0
        # Bound once per chunk: this loop runs once per change of a backlog.
        next_change, parse, build, emit = asm.next_change, self._loads, self._record, self.emit
        for text in rows:
            kind = text[ACTION_AT]
            if kind in "IUDT":
                if self.starts and self._commit < self._latest_start:  # self.filtering, inline
                    row = parse(text)  # the table first: it may be dropped before it is counted
                    if self.dropped(self._table(row)):
                        continue
                    seq = next_change()
                    if not seq:
                        continue
                else:
                    seq = next_change()
                    if not seq:
                        continue  # emitted before this restart or reconnect: not even decoded
                    row = parse(text)
                emitted += emit(build(kind, row, seq), asm, out)
            elif kind == "B":
                row = loads(text)
                commit, end, when = row["lsn"], row["nextlsn"], commit_time(row.get("timestamp"))
                self.begin(asm, parse_lsn(commit), commit, parse_lsn(end), end, row.get("xid"), when)
            elif kind == "C":
                emitted += self.commit(asm, out)
            elif kind == "M" and self.incremental is not None:
                message = loads(text)
                self.message(asm, message, parse_lsn(message["lsn"]))
        return emitted

    def _table(self, row: dict[str, Any]) -> str:
        schema, name = row["schema"], row["table"]
        return self.names.get((schema, name)) or f"{schema}.{name}"

    def _record(self, kind: str, row: dict[str, Any], seq: int) -> Record:
        schema, name = row["schema"], row["table"]
        table = self.names.get((schema, name)) or f"{schema}.{name}"
        data = {c["name"]: c["value"] for c in row["columns"]} if kind in "IU" else {}
        identity = row.get("identity")
        before = {c["name"]: c["value"] for c in identity} if identity is not None else None
        return self.make(kind, table, data, before, seq)
