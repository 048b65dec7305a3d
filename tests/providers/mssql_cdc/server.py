"""A recorded SQL Server for the provider's unit tests: db.Session's methods answered from
recorded rows, the way the server answers them. No SQL is interpreted beyond what the
documented semantics need. Each Session method the provider calls is logged (``calls``) so
tests can check that ``run`` uses only what a least-privileged login may (test_provider.py).

Every behaviour a test relies on, and its evidence (Microsoft page, section; or a Debezium
integration test that asserts it against a real server, debezium/debezium at aad5519902):

- A change query returns the instance's changes with ``@from <= __$start_lsn <= @to``, both
  ends included (Microsoft, "Work with change data": "Both the upper and lower LSN values that
  bound the interval are considered to be included"); every change of a transaction shares its
  commit LSN (cdc.<capture_instance>_CT, ``__$start_lsn``).
- Order: direct mode's ORDER BY is the change table's clustered key (Debezium b5de0fd0,
  DBZ-8858); function mode's ``(start_lsn, seqval, operation)`` is the log order, which
  cdc.<capture_instance>_CT says "should not be used for ordering" (``__$seqval``); the query
  function returns no ``__$command_id`` (cdc.fn_cdc_get_all_changes_<capture_instance>, "Table
  returned": __$start_lsn, __$seqval, __$operation, __$update_mask, the captured columns), so it is
  NULL there. ``sorts`` records what each statement's sort holds (see ``stream``).
- An update is two rows, old values (3) and new (4) with one seqval and update mask
  (cdc.<capture_instance>_CT, ``__$operation``, ``__$update_mask``); ``bit_set`` stands for
  sys.fn_cdc_is_bit_set ("whether its ordinal position is set within a provided bitmask"); the
  byte layout it assumes is ours, which is why the provider asks the server's function instead.
- A query function range outside the validity interval is error 313 "An insufficient number of
  arguments were supplied" (sys.fn_cdc_decrement_lsn, "Note": "Error 313 is expected if LSN range
  supplied is not appropriate"); the change table without SELECT on it is error 229 (SQL Server's
  SELECT permission error; cdc.<capture_instance>_CT: "We recommend that you do not query the
  system tables directly"); a dropped instance's function is error 208 "Invalid object name"
  (Debezium SqlServerStreamingChangeEventSource.MISSING_CDC_FUNCTION_CHANGES_ERROR, handled by its
  processErrorFromChangeTableQuery).
- The help procedure shows an instance only to a login with SELECT on all its captured columns
  and in its gating role (sys.sp_cdc_help_change_data_capture, "Permissions", as read by review 3;
  sys.sp_cdc_get_captured_columns, "Permissions", read here, requires the same and returns error
  22981 "when the caller does not have permission to view the source data"); that a dropped
  instance gives 22981 too is our inference from its text ("Object does not exist or access is
  denied"); ``character_maximum_length`` is "Maximum character length of the character-based
  column; otherwise, NULL" (its "Result set").
- The start LSN (``min_lsn``) rises when the cleanup job runs (sys.fn_cdc_get_min_lsn: "the low
  endpoint of a capture instance changes when cleanup is performed"); ``cleanup_after_plan`` /
  ``cleanup_after_read`` run it between a poll's planning and its query / after a read.
- ALLOW_SNAPSHOT_ISOLATION is OFF in a new database, so a SNAPSHOT transaction fails with error
  3952 (Microsoft, "Enabling Row Versioning-Based Isolation Levels": OFF, "Snapshot isolation
  transactions are not allowed"; Debezium's util/TestHelper.createTestDatabase turns it ON for
  every IT, SnapshotIT.takeSnapshotInSnapshotMode relies on that). A snapshot transaction reads
  the rows as they were when it began (Microsoft, "Isolation Element (ASSL)", Snapshot: "the
  transactionally consistent version of the data that existed at the start of the transaction").
- A snapshot chunk's unqualified ORDER BY name binds to the select-list alias of that name, i.e.
  a converted column's text, while "qualified column names and aliases are resolved to columns
  listed in the FROM clause" (Microsoft, "ORDER BY Clause (Transact-SQL)", order_by_expression;
  review 3 also read "Column aliases in ORDER BY clause cannot be prefixed by table alias" and
  "SELECT Clause Aliases Affect ORDER BY clause"). ``hierarchyid`` compares in depth-first order,
  /1/2/ < /1/10/ (the hierarchyid type's comparison, as cnblogs "HierarchyID 数据类型用法"
  quotes Microsoft's page; not read at the source).
- Key updates (fixtures.py, scenarios.py): several rows through Split/Sort/Collapse (D, U, I);
  one row as a delete and an insert (KB3030352).
- An INSERT into a CDC-enabled table (the signal table) is a change row with ``__$operation``
  2 at its transaction's commit LSN, above every earlier commit (cdc.<capture_instance>_CT,
  ``__$operation``: "2 = insert", ``__$start_lsn``: "Log sequence number (LSN) associated with
  the commit transaction for the change"); Debezium's IncrementalSnapshotIT (before(): CREATE
  TABLE debezium_signal, TestHelper.enableTableCdc) runs its incremental snapshots on exactly
  that. ``execute`` harvests it at once: the capture job's lag is not modelled here
  (tests/providers/mssql_cdc/test_incremental_model.py lets the stream lag arbitrarily).
- ``row_estimate`` stands for ``SELECT SUM(rows) FROM sys.partitions WHERE object_id = ? AND
  index_id IN (0, 1)``: ``rows`` is the "Approximate number of rows in this partition", index_id
  "0 = heap, 1 = clustered index" (Microsoft, "sys.partitions (Transact-SQL)", column table), so
  one row per partition of the table's data; the view "Requires membership in the public role.
  For more information, see Metadata Visibility Configuration" (its "Permissions"), and that page
  says "The visibility of metadata is limited to securables that a user either owns or on which
  the user has been granted some permission" and "Queries on system views might only return a
  subset of rows, or sometimes an empty result set": a table the login has no permission on has
  no rows there, and SUM over no rows is NULL (None). The count it answers is
  ``Table.estimate`` (approximate: a test sets it apart from the real rows), else the rows now.
"""

from __future__ import annotations

import re
import threading
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from typing import TYPE_CHECKING, Any, ClassVar

from dstream_mssql_cdc import MssqlCdcInputProvider
from dstream_mssql_cdc.catalog import CaptureInstance, Column, DatabaseInfo, Login, ServerState, SourceTable
from dstream_mssql_cdc.changes import ResultSet
from dstream_mssql_cdc.db import PagedRows, Pages
from dstream_mssql_cdc.errors import ConnectionLost, InstanceGone, translate
from dstream_mssql_cdc.lsn import from_bytes, to_bytes

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator, Sequence

    from dstream_mssql_cdc.config import MssqlCdcConfig

    from dstream.sdk import Context

OFFSET = timezone(timedelta(hours=2))
LOGIN = Login("dstream_reader", "dstream_reader")


def lsn(vlf: int, block: int, slot: int) -> int:
    """An LSN from its VLF:block:slot parts, as an integer (binary(10) read big-endian)."""
    return (vlf << 48) | (block << 16) | slot


@dataclass
class Change:
    """A change-table row: commit LSN, seqval, operation, update mask, command id, values by column."""

    start_lsn: int
    seqval: int
    operation: int
    mask: bytes
    command_id: int | None
    values: dict[str, Any]


@dataclass
class Table:
    schema: str
    name: str
    object_id: int
    rows: list[dict[str, Any]] = field(default_factory=list)  # the table now (what a snapshot reads)
    key: tuple[str, ...] = ()
    denied: list[str] = field(default_factory=list)  # columns this login may not SELECT
    dropped_columns: list[str] = field(default_factory=list)  # captured, then dropped from the table
    tracked: bool = True
    estimate: int | None = None  # sys.partitions' approximate row count (None: len(rows))
    permitted: bool = True  # the login holds some permission on the table (metadata visibility)

    @property
    def qualified(self) -> str:
        return f"{self.schema}.{self.name}"


@dataclass
class Instance:
    name: str
    table: Table
    min_lsn: int
    columns: list[Column]
    changes: list[Change] = field(default_factory=list)
    role: str | None = None
    created: datetime = datetime(2024, 1, 1)
    readable: bool = True  # SELECT on its change table
    dropped: bool = False
    dropped_on_query: bool = False  # dropped between the next planning and its queries

    def info(self) -> CaptureInstance:
        return CaptureInstance(
            self.name,
            self.table.schema,
            self.table.name,
            self.table.object_id,
            self.min_lsn,
            self.created,
            hash(self.name) % 100000,
            self.role,
            self.table.key,
            tuple(c.name for c in self.columns),
        )


def bit_set(ordinal: int, mask: bytes) -> bool:
    """sys.fn_cdc_is_bit_set: the mask's last byte holds ordinals 1-8 (lowest bit first)."""
    index = len(mask) - 1 - (ordinal - 1) // 8
    return index >= 0 and bool(mask[index] & (1 << ((ordinal - 1) % 8)))


@dataclass
class Server:
    """What the recorded server holds, and what happens at each poll (``script``)."""

    instances: list[Instance]
    max_lsn: int | None
    times: dict[int, datetime] = field(default_factory=dict)
    login: Login = LOGIN
    cdc_enabled: bool = True
    # ALLOW_SNAPSHOT_ISOLATION is OFF in a new database (Microsoft, "ALTER DATABASE SET options",
    # <snapshot_option>: "OFF ... default"); a SNAPSHOT transaction then fails with error 3952.
    snapshot_isolation: bool = False
    roles: set[str] = field(default_factory=set)
    # state() call number → what changes then (call 1 is the run's set-up, 2 its first poll)
    script: dict[int, Callable[[Server], None]] = field(default_factory=dict)
    polls_after_last: int = 2  # polls after the last scripted one (and a poll with no query) before stopping
    stop_after: int | None = None
    # instance → its start LSN once the CDC cleanup job ran (sys.fn_cdc_get_min_lsn: "the low endpoint of a
    # capture instance changes when cleanup is performed"): after the poll's planning, or after a window was read
    cleanup_after_plan: dict[str, int] = field(default_factory=dict)
    cleanup_after_read: dict[str, int] = field(default_factory=dict)
    busy: set[int] = field(default_factory=set)  # polls that ran change queries
    fail_stream_at: set[int] = field(default_factory=set)  # polls whose change queries lose the connection
    polls: int = 0
    calls: list[str] = field(default_factory=list)
    statements: list[str] = field(default_factory=list)
    windows: list[tuple[str, int, int]] = field(default_factory=list)  # (instance, from, to) of change queries
    sorts: list[tuple[str, int]] = field(default_factory=list)  # (instance, rows its change query's sort held)
    connects: int = 0
    snapshot_at: int | None = None
    snapshots_done: int = 0  # snapshot transactions ended
    signature: dict[str, Any] = field(default_factory=dict)  # instance → what the driver describes its result as
    # run after each INSERT into a table (table, its values): a concurrent writer's turn
    on_insert: list[Callable[[Server, dict[str, Any]], None]] = field(default_factory=list)
    executed: list[str] = field(default_factory=list)  # statements run by execute()
    ctx: Context | None = None
    lock: threading.Lock = field(default_factory=threading.Lock)

    def table(self, schema: str | None, name: str) -> Table | None:
        for instance in self.instances:
            t = instance.table
            if t.name.lower() == name.lower() and (schema is None or t.schema.lower() == schema.lower()):
                return t
        return None

    def visible(self) -> list[Instance]:
        return [
            i for i in self.instances if not i.dropped and not i.table.denied and (not i.role or i.role in self.roles)
        ]

    def instance(self, name: str) -> Instance:
        return next(i for i in self.instances if i.name == name)

    def commit(self, instance: str, changes: Sequence[Change], when: datetime | None = None) -> None:
        """Record changes captured by the capture job (the max LSN follows them)."""
        target = self.instance(instance)
        target.changes.extend(changes)
        for change in changes:
            self.times.setdefault(change.start_lsn, when or datetime(2024, 5, 1, 10, tzinfo=OFFSET))
            self.max_lsn = max(self.max_lsn or 0, change.start_lsn)


class RecordedSession:
    """db.Session's interface, answered by a :class:`Server`."""

    def __init__(self, server: Server) -> None:
        self.server = server
        self.connected = False
        self.isolation: str | None = None
        self._frozen: dict[str, list[dict[str, Any]]] | None = None

    def _call(self, name: str) -> None:
        with self.server.lock:
            self.server.calls.append(name)

    # -- connection ---------------------------------------------------------------------

    def connect(self) -> None:
        self.server.connects += 1
        self.connected = True

    def close(self) -> None:
        self.connected = False

    def optional(self, read: Callable[[], Any]) -> Any:
        return read()

    def execute(self, sql: str, *params: Any) -> None:
        """INSERT INTO [schema].[table] (...) VALUES (?, ...): a row, and its change at a new commit LSN."""
        self._call("execute")
        server = self.server
        server.executed.append(sql)
        found = _INSERT.match(sql)
        assert found is not None, f"the recorded server executes single-row INSERTs only: {sql}"
        table = server.table(found.group(1), found.group(2))
        assert table is not None
        columns = [c.strip() for c in found.group(3).split(",")]
        values = dict(zip(columns, params, strict=True))
        table.rows.append(values)
        instance = next(i for i in server.instances if i.table is table)
        at = (server.max_lsn or 0) + (1 << 16)  # the next log block: after every earlier commit
        server.commit(instance.name, [Change(at, at, 2, b"\xff", 1, values)])
        for hook in list(server.on_insert):
            hook(server, values)

    # -- catalog --------------------------------------------------------------------------

    def database(self) -> DatabaseInfo:
        self._call("database")
        return DatabaseInfo("shop", self.server.cdc_enabled, "16.0", self.server.snapshot_isolation)

    def login(self) -> Login:
        self._call("login")
        return self.server.login

    def max_lsn(self) -> int | None:
        self._call("max_lsn")
        return self.server.max_lsn

    def instances(self) -> tuple[CaptureInstance, ...]:
        self._call("instances")
        return tuple(i.info() for i in self.server.visible())

    def state(self) -> ServerState:
        self._call("state")
        server = self.server
        server.polls += 1
        step = server.script.get(server.polls)
        if step is not None:
            step(server)
        last = max(server.script, default=0)
        if server.stop_after is not None:
            done = server.polls > server.stop_after
        else:  # caught up: past the script, and the previous poll found nothing to read
            done = server.polls > last + server.polls_after_last and (server.polls - 1) not in server.busy
        if (done or server.polls > 10_000) and server.ctx is not None:
            server.ctx.stopping.set()
        max_time = server.times.get(server.max_lsn) if server.max_lsn is not None else None
        return ServerState(server.max_lsn, self.instances(), max_time)

    def captured_columns(self, instance: CaptureInstance) -> list[Column]:
        self._call("captured_columns")
        found = self.server.instance(instance.name)
        if found.dropped:  # sys.sp_cdc_get_captured_columns, "Remarks": error 22981; db.Session: InstanceGone
            raise InstanceGone(f"capture instance {instance.name} is gone (error 22981)", instance.name)
        return list(found.columns)

    def table(self, schema: str | None, name: str) -> SourceTable | None:
        self._call("table")
        found = self.server.table(schema, name)
        return SourceTable(found.object_id, found.schema, found.name, found.tracked) if found else None

    def tags(self) -> list[Any]:
        return []

    def column_names(self, schema: str, table: str) -> set[str]:
        self._call("column_names")
        found = self.server.table(schema, table)
        assert found is not None
        names = {c.name for i in self.server.instances if i.table is found for c in i.columns}
        return names - set(found.dropped_columns)

    def tracked_tables(self) -> list[SourceTable]:
        self._call("tracked_tables")
        tables = {i.table.object_id: i.table for i in self.server.instances if not i.dropped}
        return [SourceTable(t.object_id, t.schema, t.name, True) for t in tables.values() if t.tracked]

    def denied_columns(self, table: SourceTable) -> list[str]:
        self._call("denied_columns")
        found = self.server.table(table.schema, table.name)
        return list(found.denied) if found else []

    def is_role_member(self, role: str) -> bool:
        self._call("is_role_member")
        return role in self.server.roles

    def can_select(self, securable: str) -> bool:
        self._call("can_select")
        return any(i.info().change_table == securable and i.readable for i in self.server.instances)

    def signal_row(self, table: str, row_id: str) -> str | None:
        """SELECT data FROM <signal table> WHERE id = ?: the row an earlier INSERT put there."""
        self._call("signal_row")
        schema, _, name = table.rpartition(".")
        found = self.server.table(schema or None, name)
        if found is None:  # error 208, Invalid object name; db.Session.optional makes it None
            return None
        row = next((r for r in found.rows if r.get("id") == row_id), None)
        return None if row is None else row.get("data")

    def row_estimate(self, object_id: int) -> int | None:
        self._call("row_estimate")
        found = next((i.table for i in self.server.instances if i.table.object_id == object_id), None)
        if found is None or not found.permitted:
            return None  # no visible partition: SUM over no rows (module docstring)
        return found.estimate if found.estimate is not None else len(found.rows)

    def min_lsn(self, instance: str) -> int:
        self._call("min_lsn")
        return self.server.instance(instance).min_lsn

    # -- changes --------------------------------------------------------------------------

    def window_end(
        self, instance: CaptureInstance, direct: bool, n: int, start: int, end: int
    ) -> tuple[int, int | None]:
        self._call("window_end")
        found = self._source(instance.name, direct, start, end)
        if instance.name in self.server.cleanup_after_plan:  # the probe is part of the poll's planning
            self.server.instance(instance.name).min_lsn = self.server.cleanup_after_plan.pop(instance.name)
        changes = sorted((c for c in found if c.operation != 3), key=lambda c: c.start_lsn)[:n]
        return len(changes), (changes[-1].start_lsn if changes else None)

    def commit_times(self, lsns: Sequence[int]) -> dict[int, datetime | None]:
        self._call("commit_times")
        return {value: self.server.times.get(value) for value in lsns}

    def _source(self, name: str, direct: bool, start: int, end: int) -> list[Change]:
        server = self.server
        instance = server.instance(name)
        if instance.dropped_on_query:
            instance.dropped, instance.dropped_on_query = True, False
        if instance.dropped:
            what = f"cdc.{name}_CT" if direct else f"cdc.fn_cdc_get_all_changes_{name}"
            raise translate("42S02", f"[42S02] [FreeTDS][SQL Server]Invalid object name '{what}'. (208)", _TARGET)
        if direct and not instance.readable:
            raise translate(
                "42000",
                f"[42000] [FreeTDS][SQL Server]The SELECT permission was denied on the object '{name}_CT', "
                "database 'shop', schema 'cdc'. (229)",
                _TARGET,
            )
        if not direct and (start < instance.min_lsn or server.max_lsn is None or end > server.max_lsn):
            raise translate(
                "42000",
                "[42000] [FreeTDS][SQL Server]An insufficient number of arguments were supplied for the procedure or "
                f"function cdc.fn_cdc_get_all_changes_{name}. (313)",
                _TARGET,
            )
        return [c for c in instance.changes if start <= c.start_lsn <= end and c.start_lsn >= instance.min_lsn]

    def stream(self, sql: str, *params: Any) -> RecordedRows:
        self._call("stream")
        server = self.server
        with server.lock:
            server.statements.append(sql)
            failing = server.polls in server.fail_stream_at
            if failing:
                server.fail_stream_at.discard(server.polls)
        if failing:
            raise ConnectionLost("lost the connection to SQL Server at db,1433/shop: Communication link failure")
        snapshot = _SNAPSHOT_FROM.search(sql)
        if snapshot is not None:
            server.busy.add(server.polls)
            return RecordedRows(self._snapshot_rows(sql, snapshot, None, None))
        name, direct = _instance_of(sql)
        top = sql.startswith("SELECT TOP (?)")  # a page of a function-mode window (sql.function_pages)
        limit = int(params[0]) if top else None
        start, end = from_bytes(params[int(top)]), from_bytes(params[int(top) + 1])
        with server.lock:
            server.windows.append((name, start, end))
            server.busy.add(server.polls)
        changes = self._source(name, direct, start, end)
        if direct:
            changes.sort(
                key=lambda c: (c.start_lsn, -1 if c.command_id is None else c.command_id, c.seqval, c.operation)
            )
        else:
            changes.sort(key=lambda c: (c.start_lsn, c.seqval, c.operation))
        if top and "WHERE __$start_lsn >" in sql:  # the page after a row: (start_lsn, seqval, operation) > its
            after = (from_bytes(params[3]), from_bytes(params[5]), int(params[7]))
            changes = [c for c in changes if (c.start_lsn, c.seqval, c.operation) > after]
        # What the statement's sort holds before its first row: direct mode's ORDER BY is the change
        # table's clustered key (Debezium b5de0fd0, DBZ-8858: with __$command_id it "allows for the usage
        # of the clustered index"), so nothing; function mode's order is not, so every row of the window,
        # or, for a TOP (n) page, n of them (a Top N Sort: an assumption only a real server can confirm).
        held = 0 if direct else len(changes) if limit is None else min(limit, len(changes))
        with server.lock:
            server.sorts.append((name, held))
        if limit is not None:
            changes = changes[:limit]
        instance = server.instance(name)
        data, flags = _selected(sql)
        ordinals = {c.name: c.ordinal for c in instance.columns}
        rows = []
        for c in changes:
            head = [to_bytes(c.start_lsn), to_bytes(c.seqval), c.operation, c.mask, c.command_id if direct else None]
            head += [bit_set(ordinals[f], c.mask) for f in flags]
            rows.append(tuple(head + [c.values.get(column) for column in data]))
        if name in server.cleanup_after_read:  # the cleanup job runs once this window was read
            instance.min_lsn = server.cleanup_after_read.pop(name)
        return RecordedRows(rows, server.signature.get(name, ("recorded",)))

    def paged(self, pages: Pages) -> PagedRows:
        return PagedRows(self, pages)  # type: ignore[arg-type]  # db.PagedRows over this session's stream()

    # -- snapshots ------------------------------------------------------------------------

    def begin_snapshot(self, isolation: str) -> int | None:
        self._call("begin_snapshot")
        if isolation == "snapshot" and not self.server.snapshot_isolation:
            raise translate(*SNAPSHOT_OFF, _TARGET)
        self.isolation = isolation
        self.server.snapshot_at = self.server.max_lsn
        tables = {i.table.qualified: i.table for i in self.server.instances}
        self._frozen = {name: [dict(r) for r in t.rows] for name, t in tables.items()}  # SNAPSHOT: one view
        return self.server.max_lsn

    def end_snapshot(self) -> None:
        if self._frozen is not None:
            self.server.snapshots_done += 1
        self._frozen = None

    def query(self, sql: str, *params: Any) -> ResultSet:
        self._call("query")
        with self.server.lock:
            self.server.statements.append(sql)
            self.server.busy.add(self.server.polls)
        found = _SNAPSHOT_FROM.search(sql)
        assert found is not None, f"the recorded server answers snapshot chunks only: {sql}"
        keys = len(re.findall(r"__\$dstream_key_\d+", sql))
        limit = params[0]
        # a keyset bound has parameters after the limit; an incremental chunk's own condition
        # (snapshot_where) is SQL the recorded server does not evaluate: every row passes it
        bound = tuple(params[len(params) - keys :]) if len(params) > 1 else None
        return ResultSet((), self._snapshot_rows(sql, found, bound, limit))

    def _snapshot_rows(
        self, sql: str, found: re.Match[str], bound: tuple[Any, ...] | None, limit: int | None
    ) -> list[Any]:
        schema, name = found.group(1), found.group(2)
        table = self.server.table(schema, name)
        assert table is not None
        rows = (self._frozen or {}).get(table.qualified, table.rows)
        data, _ = _selected(sql)
        keyed = "__$dstream_key_0" in sql
        if keyed:
            types = {c.name: c.type for i in self.server.instances if i.table is table for c in i.columns}
            # ORDER BY: an unqualified name binds to the select-list alias first (Microsoft, "SELECT -
            # ORDER BY Clause": order_by_expression "can be specified as a name or column alias"; review
            # row 2's sources), i.e. to a converted column's text; a qualified one to the column.
            qualified = "ORDER BY [__$dstream_source]." in sql
            order = [k if qualified or types.get(k) != "hierarchyid" else f"text:{k}" for k in table.key]
            rows = sorted(rows, key=lambda r: tuple(_ordered(r, k, types) for k in order))
            if bound is not None:  # the keyset compares values of the column's type (hierarchyid::Parse)
                after = tuple(_parse(types.get(k), v) for k, v in zip(table.key, bound, strict=True))
                rows = [r for r in rows if tuple(_parse(types.get(k), r[k]) for k in table.key) > after]
            rows = rows[:limit]
            return [tuple([str(r[k]) for k in table.key] + [r.get(c) for c in data]) for r in rows]
        return [tuple(r.get(c) for c in data) for r in rows]

    # -- health -----------------------------------------------------------------------------

    def log_end(self) -> int | None:
        return None

    def retention_minutes(self) -> int | None:
        return 4320

    def capture_job(self) -> str | None:
        return "running"

    def capture_latency(self) -> float | None:
        return 0.0

    def commit_time(self, value: int) -> datetime | None:
        return self.server.times.get(value)


def _parse(kind: str | None, value: Any) -> Any:
    """A key value in its type's order: hierarchyid by its path's numbers (/1/2/ < /1/10/), int as int."""
    if kind == "hierarchyid":
        return tuple(int(part) for part in str(value).strip("/").split("/") if part)
    if kind in ("int", "bigint", "smallint", "tinyint"):
        return int(value)
    return value


def _ordered(row: dict[str, Any], key: str, types: dict[str, str]) -> Any:
    if key.startswith("text:"):
        return str(row[key[5:]])
    return _parse(types.get(key), row[key])


class RecordedRows:
    """db.Rows' interface over recorded rows (the signature is what the driver would describe)."""

    def __init__(self, rows: list[Any], signature: Any = ("recorded",)) -> None:
        self._rows = rows
        self.signature = signature
        self.complete = True
        self.on_chunk: Callable[[Sequence[Any]], None] | None = None
        self.on_done: Callable[[Any], None] | None = None

    def __iter__(self) -> Iterator[Any]:
        if self._rows and self.on_chunk is not None:
            self.on_chunk(self._rows)
        yield from self._rows

    def close(self) -> None:
        return None


SNAPSHOT_OFF = (
    "HY000",
    "[HY000] [FreeTDS][SQL Server]Snapshot isolation transaction failed accessing database 'shop' because "
    "snapshot isolation is not allowed in this database. Use ALTER DATABASE to allow snapshot isolation. "
    "(3952) (SQLExecDirectW)",
)
_TARGET: Any = type("T", (), {"__str__": lambda self: "db,1433/shop", "task_hint": "orders", "database": "shop"})()
_INSERT = re.compile(r"INSERT INTO \[([^\]]+)\]\.\[([^\]]+)\] \(([^)]*)\) VALUES")
_SNAPSHOT_FROM = re.compile(r"FROM \[([^\]]+)\]\.\[([^\]]+)\]")
_FUNCTION = re.compile(r"cdc\.\[fn_cdc_get_all_changes_([^\]]+)\]")
_TABLE = re.compile(r"cdc\.\[([^\]]+)_CT\]")


def _instance_of(sql: str) -> tuple[str, bool]:
    found = _FUNCTION.search(sql)
    if found is not None:
        return found.group(1), False
    found = _TABLE.search(sql)
    assert found is not None, f"not a change query: {sql}"
    return found.group(1), True


def _selected(sql: str) -> tuple[list[str], list[str]]:
    """The data columns a query selects (its ``AS [name]`` aliases) and its changed flags."""
    names = re.findall(r" AS \[([^\]]+)\]", sql)
    flags = [n[len("__$dstream_changed_") :] for n in names if n.startswith("__$dstream_changed_")]
    data = [n for n in names if not n.startswith("__$")]
    return data, flags


class RecordedProvider(MssqlCdcInputProvider):
    """The provider with its sessions answered by a :class:`Server` (set ``server`` first)."""

    server: ClassVar[Server]
    health_interval: ClassVar[float] = 3600.0

    def __init__(self, config: MssqlCdcConfig, ctx: Context) -> None:
        self.server.ctx = ctx
        self.server.polls = 0  # each run counts its own polls (a server may serve several runs)
        self.server.busy.clear()
        super().__init__(config, ctx)

    def _session(self) -> Any:
        return RecordedSession(self.server)


def provider_for(server: Server) -> type[RecordedProvider]:
    return type("Recorded", (RecordedProvider,), {"server": server})
