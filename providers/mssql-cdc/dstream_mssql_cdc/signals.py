"""The task's side of incremental snapshots (mixed into MssqlCdcInputProvider): the
``dstream snapshot`` verb (an INSERT into the signal table) and a run's set-up (the signal
table streamed with the captured tables, the snapshots under way or to start). The
algorithm is incremental.py; reading chunks and feeding the watermarks is increments.py.
"""

from __future__ import annotations

import json
import uuid
from typing import TYPE_CHECKING, Any

from dstream_mssql_cdc.catalog import ServerState
from dstream_mssql_cdc.errors import CdcError
from dstream_mssql_cdc.incremental import EXECUTE, STOP, mark_id, mark_lsn, signal_data, signal_insert_sql
from dstream_mssql_cdc.increments import Incremental, keyless_error
from dstream_mssql_cdc.lsn import format_lsn, parse_lsn
from dstream_mssql_cdc.names import parse_table_name, table_key
from dstream_mssql_cdc.snapshot import resumable_by_key
from dstream_mssql_cdc.windows import TableCursor, initial_position

if TYPE_CHECKING:
    import logging
    from collections.abc import Iterable

    from dstream.sdk import Context, Resource
    from dstream.sdk.cdc import Position
    from dstream_mssql_cdc.catalog import CaptureInstance
    from dstream_mssql_cdc.changes import Values
    from dstream_mssql_cdc.config import MssqlCdcConfig, Target
    from dstream_mssql_cdc.db import Session
    from dstream_mssql_cdc.setup import Setup
    from dstream_mssql_cdc.stream import Shape, Stream


class IncrementalRuns:
    """Incremental snapshots: the verb, and a run's set-up."""

    config: MssqlCdcConfig
    db: Session
    values: Values
    log: logging.Logger
    ctx: Context
    target: Target
    _last_state: ServerState | None
    _object_ids: dict[str, int]
    _signals_earliest: bool = False  # the signal table's capture starts after the task's mark: read all of it

    def shape(self, instance: CaptureInstance) -> Shape:
        raise NotImplementedError

    def snapshot(self) -> Iterable[Resource]:
        """``dstream snapshot``: INSERT an ``execute-snapshot`` (or ``stop-snapshot``) row into
        the signal table, which the running task reads in commit order with its tables (a
        stopped task when it next runs). Arguments: the command envelope's ``checkpoint`` slot,
        ``{"tables": [...], "where": {table: condition}, "stop": bool}``. A refusal is the
        lifecycle reply ``{"status": "Failed", "message": ...}``."""
        try:
            return self._send_signal()
        except CdcError as exc:
            failed = {"status": "Failed", "resources": [], "message": str(exc)}
            self.ctx.write_stdout(json.dumps(failed).encode() + b"\n")
            return []

    def _send_signal(self) -> list[Resource]:
        from dstream.sdk import Resource

        if self.config.snapshot != "incremental":
            raise CdcError(
                'dstream snapshot needs snapshot = "incremental" (its signal table carries the request): set it and '
                f"run `dstream init {self.target.task_hint}`"
            )
        args = self.ctx.checkpoint if isinstance(self.ctx.checkpoint, dict) else {}
        asked = [str(t) for t in args.get("tables") or []]
        where = {str(k): str(v) for k, v in (args.get("where") or {}).items()}
        stop = bool(args.get("stop"))
        if not asked:
            raise CdcError("name at least one table to snapshot (--table)")
        listed = {table_key(t): t for t in self.config.tables or []}
        chosen: list[str] = []
        for name in asked:
            found = listed.get(table_key(name)) or next(
                (t for k, t in listed.items() if k[1] == table_key(name)[1] and table_key(name)[0] is None), None
            )
            if found is None:
                raise CdcError(f"{name} is not one of the task's tables ({', '.join(listed.values())})")
            chosen.append(found)
        unknown = sorted(set(where) - set(asked) - set(chosen))
        if unknown:
            raise CdcError(f"--where names {', '.join(unknown)}, which is not one of the tables to snapshot")
        if not stop:
            state = ServerState(self.db.max_lsn(), self.db.instances(), None)
            keyless = []
            for name in chosen:
                schema, table = parse_table_name(name)
                source = self.db.table(schema, table)
                instances = state.of_table(source.object_id) if source is not None else []
                if instances and not instances[-1].key:
                    keyless.append(name)
            if keyless:
                raise keyless_error(keyless)
        conditions: dict[str, str] = {}
        for alias, table in zip(asked, chosen, strict=True):
            condition = where.get(table) or where.get(alias)
            if condition:
                conditions[table] = condition
        kind = STOP if stop else EXECUTE
        row_id = f"dstream-{uuid.uuid4().hex}"
        self._signal_name()  # the table exists
        self.db.execute(signal_insert_sql(self.config.signal_table), row_id, kind, signal_data(chosen, conditions))
        details: dict[str, Any] = {"signal": kind, "id": row_id, "signal_table": self.config.signal_table}
        return [
            Resource("snapshot_signal", name, "none", "stopped" if stop else "requested", details) for name in chosen
        ]

    def _signal_name(self) -> str:
        schema, table = parse_table_name(self.config.signal_table)
        found = self.db.table(schema, table)
        if found is None:
            raise CdcError(
                f'snapshot = "incremental" needs the signal table {self.config.signal_table}, which does not exist in '
                f"{self.target} (or this login may not see it): run `dstream init {self.target.task_hint}`"
            )
        return found.qualified

    def _instance_now(self, table: str) -> CaptureInstance:
        state = self._last_state
        if state is None:
            state = self._last_state = ServerState(self.db.max_lsn(), self.db.instances(), None)
        oid = self._object_ids[table]
        instances = [i for i in state.of_table(oid) if i.min_lsn > 0] or state.of_table(oid)
        if not instances:
            raise CdcError(f"{table} has no capture instance any more (CDC was disabled on it)")
        return instances[-1]

    def _signals_start(self, signal: str, instances: list[CaptureInstance]) -> Position | None:
        """Where a task's first reading of the signal table starts: at its mark, the first LSN a
        signal sent after `dstream init` ran for it can have (increments.SignalTable), so such a
        signal reaches it even before its first run; without a mark, at the latest change (what
        came before is not the task's)."""
        from dstream.sdk.cdc import Position

        task = self.ctx.task
        data = self.db.optional(lambda: self.db.signal_row(signal, mark_id(task))) if task else None
        marked = mark_lsn(data)
        if marked is None:
            self.log.info(
                "reading the signal table %s from its latest change: signals sent before this run are not seen, as "
                "no `dstream init %s` recorded where this task's signals start (or this login may not SELECT it)",
                signal,
                self.target.task_hint,
            )
            return initial_position(ServerState(self.db.max_lsn(), tuple(instances), None), instances, "latest")
        mark = parse_lsn(marked)
        established = [i.min_lsn for i in instances if i.min_lsn > 0]
        if not established:
            self._signals_earliest = True  # capture of the signal table starts after the mark: all of it
            return None
        start = max(mark, min(established))
        if mark and start > mark:
            self.log.warning(
                "signals sent to %s between `dstream init` (LSN %s) and LSN %s were purged by CDC retention before "
                "this task's first run: they are not seen",
                signal,
                marked,
                format_lsn(start),
            )
        self.log.info("reading the signals sent to %s since `dstream init` (LSN %s)", signal, marked)
        return Position(start)

    def _incremental(self, setup: Setup, stream: Stream, signal: str, signal_at: Position | None) -> Incremental:
        cfg = self.config
        schema, table = parse_table_name(signal)
        source = self.db.table(schema, table)
        assert source is not None
        self._object_ids = {**setup.object_ids, signal: source.object_id}
        instances = [i for i in self.db.instances() if i.object_id == source.object_id]
        if not instances:
            raise CdcError(
                f"the signal table {signal} has no CDC capture instance this login may read: run "
                f"`dstream init {self.target.task_hint}` (it enables CDC on it)"
            )
        # no key, or one without an exact text to page by (sql.RESUMABLE_KEY_TYPES)
        keyless = [n for n in setup.plan.incremental if not resumable_by_key(self.shape(self._instance_now(n)))]
        if keyless:
            raise keyless_error(keyless)
        if signal_at is None:  # no run read the signals yet: from the task's mark (dstream init)
            signal_at = self._signals_start(signal, instances)
        stream.add(TableCursor(signal, source.object_id, signal_at, self.target.task_hint))
        under_way = {n: p.incremental for n, p in setup.stored.items() if p.incremental is not None}
        incr = Incremental(
            self.db,
            signal,
            lambda name: self.shape(self._instance_now(name)),
            self.values,
            under_way,
            cfg.snapshot_chunk_size,
            cfg.snapshot_chunk_pause,
            self.log,
            self.ctx.gauge,
        )
        incr.tables = set(setup.object_ids)
        for name, cursor in under_way.items():
            self.log.info("resuming the incremental snapshot of %s after %d rows", name, cursor.rows)
        incr.begin_run(list(setup.plan.incremental))
        for name in setup.plan.incremental:
            where = cfg.snapshot_where.get(name) or cfg.snapshot_where.get(name.split(".", 1)[-1])
            incr.start(name, where)
        stream.incremental = incr.cursors_json()
        stream.report()
        return incr
