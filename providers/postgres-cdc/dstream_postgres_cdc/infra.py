"""``dstream init|plan|status|destroy``: the replication slot and the tables' replica identity.

- init: checks wal_level and the tables, creates the logical replication slot (wal2json)
  if missing, and with ``replica_identity_full = true`` sets REPLICA IDENTITY FULL on
  tables that do not have it.
- plan: the same checks and rows, with the actions init would take, changing nothing.
- status: the slot (present/absent, whether a run is reading it, its lag in bytes:
  ``pg_current_wal_lsn() - confirmed_flush_lsn``, and the WAL it retains) and each table
  (replica identity, key, lag in bytes behind the current LSN, snapshot progress).
- destroy: drops the slot (refusing while a run reads it). Tables are left as they are.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

from dstream.sdk import Resource
from dstream_postgres_cdc.errors import CdcError, wal_level_error
from dstream_postgres_cdc.lsn import format_lsn

if TYPE_CHECKING:
    from collections.abc import Iterator

    from dstream_postgres_cdc.checkpoint import Stored
    from dstream_postgres_cdc.source import Session, Slot, Table

SLOT = "replication_slot"
IDENTITY = "replica_identity"


class Infrastructure:
    def __init__(
        self, db: Session, slot: str, reader: str, table_names: list[str], plugin: str, identity_full: bool
    ) -> None:
        self.db = db
        self.slot = slot
        self.reader = reader
        self.table_names = table_names
        self.plugin = plugin
        self.identity_full = identity_full

    # -- checks shared with the run ---------------------------------------------------------

    def check_wal_level(self) -> None:
        level = self.db.wal_level()
        if level != "logical":
            raise wal_level_error(self.db.target.server, level)

    def tables(self) -> list[Table]:
        found: list[Table] = []
        missing: list[str] = []
        for name in self.table_names:
            table = self.db.table(name)
            if table is None:
                missing.append(name)
                continue
            if table.kind not in ("r",):
                kind = {"p": "a partitioned table", "v": "a view", "m": "a materialized view", "f": "a foreign table"}
                raise CdcError(
                    f"{name} is {kind.get(table.kind, 'not a plain table')}: only plain tables can be captured"
                    + (" (list its partitions instead)" if table.kind == "p" else "")
                )
            twin = next((t for t in found if t.oid == table.oid), None)
            if twin is not None:
                raise CdcError(f"{name!r} is {twin.qualified}, which is already listed in tables")
            found.append(table)
        if missing:
            which = ", ".join(repr(m) for m in missing)
            raise CdcError(
                f"table {which} does not exist in {self.db.target.server} "
                f"(names are schema.table; without a schema the search_path applies)"
            )
        return found

    def check_identity(self, table: Table, becomes_full: bool = False) -> None:
        """wal2json skips the updates and deletes of a table without a replica identity."""
        if becomes_full or table.identity in ("full", "index") or (table.identity == "default" and table.key):
            return
        raise CdcError(
            f"{table.qualified} has no primary key and REPLICA IDENTITY {table.identity.upper()}: wal2json would "
            f"skip its updates and deletes. Add a primary key, or set replica_identity_full = true and run "
            f"`dstream init` (or ALTER TABLE {table.qualified} REPLICA IDENTITY FULL)"
        )

    def check_slot(self, slot: Slot) -> None:
        if slot.plugin != self.plugin:
            raise CdcError(
                f'replication slot "{slot.name}" uses the output plugin {slot.plugin!r}, not {self.plugin}: '
                f"pick another slot_name (or `dstream destroy` and `dstream init` to recreate it)"
            )
        database = self.db.database()
        if slot.database != database:
            raise CdcError(
                f'replication slot "{slot.name}" belongs to database {slot.database!r}, not {database!r}: '
                f"pick another slot_name"
            )

    # -- verbs ------------------------------------------------------------------------------

    def _checked(self) -> tuple[list[Table], Slot | None]:
        """init's and plan's checks, before either changes or reports anything: the tables and the slot."""
        self.check_wal_level()
        tables = self.tables()
        for table in tables:
            self.check_identity(table, self.identity_full)
        slot = self.db.slot(self.slot)
        if slot is not None:
            self.check_slot(slot)
        return tables, slot

    def init(self) -> Iterator[Resource]:
        tables, slot = self._checked()
        if slot is None:
            lsn = self.db.create_slot(self.slot, self.plugin)
            yield Resource(SLOT, self.slot, "create", "present", {"plugin": self.plugin, "lsn": format_lsn(lsn)})
        else:
            yield Resource(SLOT, self.slot, "none", "present", self._slot_details(slot))
        for table in tables:
            if self.identity_full and table.identity != "full":
                self.db.set_replica_identity_full(table)
                yield Resource(IDENTITY, table.qualified, "update", "full", {"was": table.identity})
            else:
                yield Resource(IDENTITY, table.qualified, "none", table.identity)

    def plan(self) -> Iterator[Resource]:
        tables, slot = self._checked()
        if slot is None:
            yield Resource(SLOT, self.slot, "create", "absent", {"plugin": self.plugin})
        else:
            yield Resource(SLOT, self.slot, "none", "present", self._slot_details(slot))
        for table in tables:
            if self.identity_full and table.identity != "full":
                yield Resource(IDENTITY, table.qualified, "update", table.identity, {"to": "full"})
            else:
                yield Resource(IDENTITY, table.qualified, "none", table.identity)

    def status(self, stored: Stored | None = None) -> Iterator[Resource]:
        """The slot and each table; with the task's checkpoint (``stored``), each table's lag in
        WAL bytes behind the server's current LSN and how far a snapshot under way got."""
        slot = self.db.slot(self.slot)
        if slot is None:
            level = self.db.wal_level()
            missing = {} if level == "logical" else {"wal_level": level}
            yield Resource(SLOT, self.slot, "none", "absent", missing)
        else:
            yield Resource(SLOT, self.slot, "none", "present", self._slot_details(slot))
        position = stored.stream.lsn if stored is not None and stored.stream is not None else None
        if position is None and slot is not None:
            position = slot.confirmed  # what the orchestrator last committed
        current = self.db.wal_lsn() if position is not None else None
        for name in self.table_names:
            table = self.db.table(name)
            if table is None:
                yield Resource("table", name, "none", "absent")
                continue
            details: dict[str, Any] = {"key": list(table.key)} if table.key else {"key": None}
            if current is not None and position is not None:
                details["lag_bytes"] = max(0, current - position)
            mine = stored.tables.get(table.qualified) if stored is not None else None
            if mine is not None and mine.snapshot is not None:
                details["snapshot_rows"] = mine.snapshot.rows  # emitted so far of a snapshot under way
            if mine is not None and mine.incremental is not None:  # an incremental snapshot under way
                details.update(mine.incremental.status(time.time()))
            yield Resource(IDENTITY, table.qualified, "none", table.identity, details)

    def destroy(self) -> Iterator[Resource]:
        slot = self.db.slot(self.slot)
        if slot is None:
            yield Resource(SLOT, self.slot, "none", "absent")
            return
        reader = self.db.slot(self.reader)
        if reader is not None and reader.active_pid:
            raise CdcError(
                f'replication slot "{self.slot}" is being read by a running task (backend pid {reader.active_pid}): '
                f"stop it before destroy"
            )
        self.db.drop_slot(self.slot)
        yield Resource(SLOT, self.slot, "delete", "absent", {"plugin": slot.plugin})

    def _slot_details(self, slot: Slot) -> dict[str, Any]:
        reader = self.db.slot(self.reader)
        reading = reader is not None and reader.active_pid is not None
        current = self.db.wal_lsn()
        details: dict[str, Any] = {
            "plugin": slot.plugin,
            "active": reading or slot.active_pid is not None,
            "lag_bytes": max(0, current - slot.confirmed) if slot.confirmed is not None else None,
            "retained_bytes": max(0, current - slot.restart) if slot.restart is not None else None,
            "confirmed_flush_lsn": format_lsn(slot.confirmed) if slot.confirmed is not None else None,
        }
        if reading and reader is not None:
            details["reader_pid"] = reader.active_pid
        if slot.wal_status and slot.wal_status != "reserved":
            details["wal_status"] = slot.wal_status
        return details
