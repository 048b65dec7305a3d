"""``dstream init|plan|status|destroy``: the replication slot, the publication (pgoutput)
and the tables' replica identity.

- init: checks wal_level and the tables; with pgoutput creates the publication (named like
  the slot) for the tables, or sets its tables when ``tables`` changed, *before* the slot:
  pgoutput looks the publication up in the catalog as of each change it decodes, so a
  slot created first fails on changes written before the publication existed (pgjdbc
  issue 1147; Debezium DBZ-1684 creates the publication first for this reason). Then it
  creates the logical replication slot if missing, and with ``replica_identity_full = true``
  sets REPLICA IDENTITY FULL on tables that do not have it.
- plan: the same checks and rows, with the actions init would take, changing nothing.
- status: the slot (present/absent, whether a run is reading it, its lag in bytes:
  ``pg_current_wal_lsn() - confirmed_flush_lsn``, and the WAL it retains) and each table
  (replica identity, key, lag in bytes behind the current LSN, snapshot progress).
- destroy: drops the slot (refusing while a run reads it) and the publication. Tables are
  left as they are.
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
    from dstream_postgres_cdc.source import Publication, Session, Slot, Table

SLOT = "replication_slot"
PUBLICATION = "publication"
IDENTITY = "replica_identity"
MESSAGES_SINCE = 140000  # pgoutput's `messages` option: PostgreSQL 14


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
        self.publication = slot if plugin == "pgoutput" else None  # the publication pgoutput reads

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
        """wal2json skips the updates and deletes of a table without a replica identity; once
        such a table is in a publication, PostgreSQL refuses them (pgoutput)."""
        if becomes_full or table.identity in ("full", "index") or (table.identity == "default" and table.key):
            return
        effect = (
            "PostgreSQL would refuse its updates and deletes once it is in the publication"
            if self.plugin == "pgoutput"
            else "wal2json would skip its updates and deletes"
        )
        raise CdcError(
            f"{table.qualified} has no primary key and REPLICA IDENTITY {table.identity.upper()}: {effect}. "
            f"Add a primary key, or set replica_identity_full = true and run "
            f"`dstream init` (or ALTER TABLE {table.qualified} REPLICA IDENTITY FULL)"
        )

    def check_slot(self, slot: Slot) -> None:
        if slot.plugin != self.plugin:
            keep = f'set plugin = "{slot.plugin}", ' if slot.plugin in ("wal2json", "pgoutput") else ""
            raise CdcError(
                f'replication slot "{slot.name}" uses the output plugin {slot.plugin!r}, not {self.plugin}: '
                f"{keep}pick another slot_name, or `dstream destroy` and `dstream init` to recreate it"
            )
        database = self.db.database()
        if slot.database != database:
            raise CdcError(
                f'replication slot "{slot.name}" belongs to database {slot.database!r}, not {database!r}: '
                f"pick another slot_name"
            )

    def check_publication(self, tables: list[Table]) -> None:
        """A run's check (pgoutput): the publication exists and publishes every change of the tables."""
        if self.publication is None:
            return
        found = self.db.publication(self.publication)
        hint = f"run `dstream init {self.db.target.task_hint}`"
        if found is None:
            raise CdcError(f'publication "{self.publication}" does not exist on {self.db.target.server}: {hint}')
        lacks = found.lacks(tables)
        if lacks:
            raise CdcError(
                f'publication "{self.publication}" does not publish {", ".join(lacks)} (were tables added since '
                f"`dstream init`?): {hint}, which adds them"
            )
        if not found.all_actions:
            raise CdcError(
                f'publication "{self.publication}" does not publish every insert, update, delete and truncate: {hint}'
            )

    def check_messages(self, why: str) -> None:
        """pgoutput sends logical decoding messages (incremental snapshots' watermarks and
        signals) only from PostgreSQL 14 on (its `messages` option)."""
        if self.plugin == "pgoutput" and self.db.server_version() < MESSAGES_SINCE:
            raise CdcError(
                f"{why} needs logical decoding messages, which pgoutput sends from PostgreSQL 14 on "
                f'({self.db.target.server} runs an older one): set plugin = "wal2json", or snapshot = "initial"'
            )

    # -- verbs ------------------------------------------------------------------------------

    def _checked(self) -> tuple[list[Table], Slot | None, Publication | None]:
        """init's and plan's checks, before either changes or reports anything: the tables, the
        slot and the publication."""
        self.check_wal_level()
        tables = self.tables()
        for table in tables:
            self.check_identity(table, self.identity_full)
        slot = self.db.slot(self.slot)
        if slot is not None:
            self.check_slot(slot)
        publication = self.db.publication(self.publication) if self.publication is not None else None
        return tables, slot, publication

    def _publication_action(self, tables: list[Table], found: Publication | None) -> str:
        if self.publication is None:
            return "none"
        if found is None:
            return "create"
        wanted = {t.qualified for t in tables}
        if found.all_tables or found.tables != wanted or not found.all_actions:
            return "update"
        return "none"

    def _publication_resources(self, tables: list[Table], found: Publication | None, apply: bool) -> Iterator[Resource]:
        if self.publication is None:
            return
        action = self._publication_action(tables, found)
        names = [t.qualified for t in tables]
        if apply and action == "create":
            self.db.create_publication(self.publication, tables)
        elif apply and action == "update":
            self.db.alter_publication(self.publication, tables)
        details: dict[str, Any] = {"tables": names}
        if action == "update" and found is not None:
            details["was"] = "ALL TABLES" if found.all_tables else sorted(found.tables)
        state = "present" if apply or found is not None else "absent"
        yield Resource(PUBLICATION, self.publication, action, state, details)

    def init(self) -> Iterator[Resource]:
        tables, slot, publication = self._checked()
        # Done in this order, shown slot first: the replica identity before the publication
        # (PostgreSQL refuses updates of a published table without one), the publication
        # before the slot (see above).
        identities: list[Resource] = []
        for table in tables:
            if self.identity_full and table.identity != "full":
                self.db.set_replica_identity_full(table)
                identities.append(Resource(IDENTITY, table.qualified, "update", "full", {"was": table.identity}))
            else:
                identities.append(Resource(IDENTITY, table.qualified, "none", table.identity))
        published = list(self._publication_resources(tables, publication, apply=True))
        if slot is None:
            lsn = self.db.create_slot(self.slot, self.plugin)
            yield Resource(SLOT, self.slot, "create", "present", {"plugin": self.plugin, "lsn": format_lsn(lsn)})
        else:
            yield Resource(SLOT, self.slot, "none", "present", self._slot_details(slot))
        yield from published
        yield from identities

    def plan(self) -> Iterator[Resource]:
        tables, slot, publication = self._checked()
        if slot is None:
            yield Resource(SLOT, self.slot, "create", "absent", {"plugin": self.plugin})
        else:
            yield Resource(SLOT, self.slot, "none", "present", self._slot_details(slot))
        yield from self._publication_resources(tables, publication, apply=False)
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
        if self.publication is not None:
            found = self.db.publication(self.publication)
            if found is None:
                yield Resource(PUBLICATION, self.publication, "none", "absent")
            else:
                published = ["ALL TABLES"] if found.all_tables else sorted(found.tables)
                shown: dict[str, Any] = {"tables": published}
                if not found.all_actions:
                    shown["all_actions"] = False
                yield Resource(PUBLICATION, self.publication, "none", "present", shown)
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
            yield from self._drop_publication()
            return
        reader = self.db.slot(self.reader)
        if reader is not None and reader.active_pid:
            raise CdcError(
                f'replication slot "{self.slot}" is being read by a running task (backend pid {reader.active_pid}): '
                f"stop it before destroy"
            )
        self.db.drop_slot(self.slot)
        yield Resource(SLOT, self.slot, "delete", "absent", {"plugin": slot.plugin})
        yield from self._drop_publication()

    def _drop_publication(self) -> Iterator[Resource]:
        if self.publication is None:
            return
        if self.db.publication(self.publication) is None:
            yield Resource(PUBLICATION, self.publication, "none", "absent")
            return
        self.db.drop_publication(self.publication)
        yield Resource(PUBLICATION, self.publication, "delete", "absent")

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
