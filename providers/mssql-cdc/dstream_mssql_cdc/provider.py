"""mssql-cdc-input-provider: the rows of SQL Server tables, then every insert, update and
delete that CDC captured.

A run, in short (setup.py checks the source, snapshot.py takes snapshots, stream.py and
windows.py plan and merge the windows, changes.py builds the envelopes, health.py watches
the capture job, infra.py has the lifecycle verbs, db.py and sql.py the SQL; incremental
snapshots: incremental.py, increments.py and signals.py):

1. Connect (a clear error handshake when the server cannot be reached), check that CDC is
   on, resolve the tables and what this login may read of them (a table CDC captures but
   whose capture instance the login cannot see is an error naming the missing right and
   the GRANT), choose the query mode, and check every stored position against the capture
   instances: a purged position is an error before anything is emitted, or with
   ``snapshot = "when_needed"`` the table is snapshotted again.
2. Snapshot the tables that need it (``snapshot``: a first run, tables added later), then
   stream them with the others.
3. Poll: take ``sys.fn_cdc_get_max_lsn()``, plan bounded windows, run them (``parallelism``
   at a time, rows streamed), and emit the changes merged across tables in commit order,
   each record carrying every table's position. A capture instance dropped between planning
   and querying (error 208) is logged and the instances are read again.
4. Polls follow each other at once while more is waiting, every ``poll_interval`` while
   changes arrive, and back off (doubling) to ``max_poll_interval`` while idle. A lost
   connection is retried with backoff for ``reconnect_timeout``; nothing read but not
   emitted is kept. Each table's lag goes out as a gauge and, every minute, to the log.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any, ClassVar

from dstream.sdk import Checkpoint, InfrastructureProvider, InputProvider
from dstream.sdk.cdc import Backoff, LagReporter, PollInterval, Position, PositionError
from dstream_mssql_cdc.changes import Layout, RecordBuilder, Values
from dstream_mssql_cdc.config import MssqlCdcConfig, Target
from dstream_mssql_cdc.errors import CdcError, ConnectionLost, InstanceGone, Purged
from dstream_mssql_cdc.health import CaptureMonitor, lag_warning
from dstream_mssql_cdc.increments import Incremental, SignalTable
from dstream_mssql_cdc.lsn import format_lsn, to_bytes
from dstream_mssql_cdc.setup import ORDER_COMMAND, ORDER_SEQVAL, Setup, prepare
from dstream_mssql_cdc.signals import IncrementalRuns
from dstream_mssql_cdc.snapshot import SnapshotRuns
from dstream_mssql_cdc.sql import changes_query, function_pages
from dstream_mssql_cdc.stream import Shape, Stream
from dstream_mssql_cdc.windows import TableCursor, checkpoint_order, initial_position, parse_checkpoint, reorder

if TYPE_CHECKING:
    from collections.abc import Iterable, Iterator, Sequence
    from datetime import datetime

    from dstream.sdk import Context, Record, Resource
    from dstream_mssql_cdc.catalog import CaptureInstance, ServerState
    from dstream_mssql_cdc.db import Pages, Rows, Session
    from dstream_mssql_cdc.infra import Infrastructure
    from dstream_mssql_cdc.readers import Readers
    from dstream_mssql_cdc.stream import Poll
    from dstream_mssql_cdc.windows import Window

HEALTH_INTERVAL = 60.0  # seconds between lag checks against the cleanup retention


class MssqlCdcInputProvider(SnapshotRuns, IncrementalRuns, InputProvider[MssqlCdcConfig], InfrastructureProvider):
    name = "mssql-cdc-input-provider"
    version = "0.1.0"
    Config = MssqlCdcConfig
    checkpoint_every = 2000
    checkpoint_interval = 1.0
    health_interval: ClassVar[float] = HEALTH_INTERVAL

    def __init__(self, config: MssqlCdcConfig, ctx: Context) -> None:
        super().__init__(config, ctx)
        from dstream_mssql_cdc.infra import Infrastructure
        from dstream_mssql_cdc.readers import Readers

        self.target = Target.from_config(config, ctx.task)
        self.db: Session = self._session()
        self.db.connect()  # a clear error handshake when the server cannot be reached
        self.readers: Readers = Readers(self._session, config.parallelism)
        snapshots = config.snapshot != "never" and config.snapshot_isolation == "snapshot"
        self.infra: Infrastructure = Infrastructure(self.db, config.tables, config.enable_cdc, ctx.task, snapshots)
        self.values = Values(config.numeric_as_string)
        self.lag = LagReporter(ctx.gauge, self.log, log_every=self.health_interval)
        self.direct = False
        self._shapes: dict[str, Shape] = {}
        self._signatures: dict[str, Any] = {}
        self._times: dict[int, datetime | None] = {}
        self._snapshot: Session | None = None
        self.slowest_query = 0.0  # seconds: the longest a poll's change queries took to start streaming
        self.changes = 0
        self._started = time.monotonic()
        self.incr: Incremental | None = None
        self._last_state: ServerState | None = None
        self._object_ids: dict[str, int] = {}

    def _session(self) -> Session:
        """A new (unconnected) session. pyodbc, and the ODBC driver manager it loads, are
        imported only here: the catalogue and schema tools import this module without them."""
        from dstream_mssql_cdc.db import Session

        cfg = self.config
        return Session(cfg.connection_string.get_secret_value(), self.target, cfg.login_timeout, cfg.query_timeout)

    # -- lifecycle verbs --------------------------------------------------------------------

    def init(self) -> Iterable[Resource]:
        out = list(self.infra.init())
        if self.config.snapshot == "incremental":
            out.append(SignalTable(self.db, self.config.signal_table).init(self.ctx.task))
        return out

    def plan(self) -> Iterable[Resource]:
        out = list(self.infra.plan())
        if self.config.snapshot == "incremental":
            out.append(SignalTable(self.db, self.config.signal_table).state("create"))
        return out

    def check(self) -> Iterable[Resource]:
        """``dstream check``: the server answers this login, and CDC, the capture instances and
        the login's rights as ``plan`` sees them (nothing is created or changed)."""
        return self.plan()

    def status(self) -> Iterable[Resource]:
        positions = None
        if self.ctx.checkpoint is not None:
            try:
                positions = parse_checkpoint(self.ctx.checkpoint)
            except PositionError as exc:
                self.log.warning("the task's checkpoint is not this provider's: %s", exc)
        out = list(self.infra.status(positions))
        if self.config.snapshot == "incremental":
            table = SignalTable(self.db, self.config.signal_table).state("none")
            table.details["snapshots"] = {
                name: p.incremental.to_json() for name, p in (positions or {}).items() if p.incremental is not None
            }
            out.append(table)
        return out

    def destroy(self) -> Iterable[Resource]:
        out = list(self.infra.destroy())
        if self.config.snapshot == "incremental":
            out.append(SignalTable(self.db, self.config.signal_table).destroy())
        return out

    # -- shapes: how each capture instance is read ------------------------------------------

    def shape(self, instance: CaptureInstance) -> Shape:
        found = self._shapes.get(instance.name)
        if found is None:
            found = self._shapes[instance.name] = self._load_shape(instance)
        return found

    def _load_shape(self, instance: CaptureInstance) -> Shape:
        from dstream_mssql_cdc.catalog import select_columns

        captured = self.db.captured_columns(instance)
        wanted = self.config.column_filter(instance.schema, instance.table)
        columns = select_columns(instance.qualified, instance, captured, wanted)
        layout = Layout(columns)
        builder = RecordBuilder(
            instance.qualified,
            instance.name,
            layout,
            instance.key,
            self.values,
            self.config.unavailable_value,
            self._commit_time,
        )
        return Shape(instance, columns, layout, builder)

    def _commit_time(self, lsn: int) -> str | None:
        value = self._times.get(lsn)
        return value.isoformat(timespec="milliseconds") if value is not None else None

    # -- run --------------------------------------------------------------------------------

    def read(self, checkpoint: Any | None) -> Iterator[Record | Checkpoint]:
        try:
            stored = parse_checkpoint(checkpoint)
        except PositionError as exc:
            raise CdcError(f"{exc}: was the task's state written by another provider?") from None
        signal = self._signal_name() if self.config.snapshot == "incremental" else None
        signal_at = stored.pop(signal, None) if signal is not None else None
        setup = prepare(self.db, self.config, self.target, stored, self.log)
        self.direct = setup.direct
        order = ORDER_COMMAND if setup.direct else ORDER_SEQVAL
        if checkpoint is not None:
            self._reorder(setup, checkpoint_order(checkpoint), order)
        stream = Stream(self.config.batch_size, self.shape, order)
        for name, (object_id, stored_at) in setup.streaming.items():
            position = stored_at
            if position is not None and position.incremental is not None:  # the cursor lives in self.incr
                position = Position(position.lsn, position.index)
            stream.add(TableCursor(name, object_id, position, self.target.task_hint), announced=position is not None)
        if signal is not None:
            self.incr = self._incremental(setup, stream, signal, signal_at)
            if self.ctx.receives_commits:
                self.incr.pacer.expect_commits()  # chunks wait for the output to acknowledge earlier ones
        if setup.plan:
            done = yield from self._snapshots(setup, stream, setup.plan)
            if not done:
                return
        yield from self._poll(stream, setup, first=checkpoint is None)

    def _reorder(self, setup: Setup, stored: str, order: str) -> None:
        positions = {name: p for name, (_, p) in setup.streaming.items() if p is not None}
        fixed, moved = reorder(positions, stored, order)
        for name in moved:
            oid, _ = setup.streaming[name]
            setup.streaming[name] = (oid, fixed[name])
            self.log.info(
                "%s: the checkpoint sits inside a transaction whose changes were counted by __$%s, this run orders "
                "them by __$%s: that transaction comes again from its start",
                name,
                stored,
                order,
            )

    # -- streaming --------------------------------------------------------------------------

    def _poll(self, stream: Stream, setup: Setup, first: bool) -> Iterator[Record | Checkpoint]:
        cfg = self.config
        polls = PollInterval(cfg.poll_interval, cfg.max_poll_interval)
        backoff = Backoff(cfg.reconnect_timeout)
        monitor = CaptureMonitor(cfg.capture_job_timeout)
        next_health = time.monotonic() + self.health_interval
        incr = self.incr
        while True:
            opened: list[Rows] = []
            changes = 0
            chunked = False
            try:
                state = self._last_state = self.db.state()
                self._watch(monitor, state)
                yield from self._follow_tables(stream, setup, state)
                self._start_positions(stream, state)
                poll = stream.plan(state, self._probe)
                if first:
                    start = stream.heartbeat()  # the starting positions: a restart keeps them
                    if start is not None:
                        yield Checkpoint(start)
                        first = False
                yield from (r for r in poll.schema if incr is None or r.metadata.get("TableName") != incr.signal_table)
                self._check_direct(poll)
                began = time.monotonic()
                opened = self.readers.open(poll.windows, self._query)
                self._timed(time.monotonic() - began, poll)
                merged = [(w, self._changes(w, rows)) for w, rows in zip(poll.windows, opened, strict=True)]
                yield from self._retyped(stream, poll, opened)
                for record in stream.merge(merged):
                    if incr is not None:
                        if record.metadata.get("TableName") == incr.signal_table:
                            released = incr.signal_row(record)  # a watermark or a signal: not emitted
                            stream.incremental = incr.cursors_json()
                            stream.report()
                            changes += len(released) + 1
                            yield from released
                            continue
                        incr.change(record)
                    changes += 1
                    self.changes += 1
                    self._passed(stream, record)
                    yield record
                # The next chunk of an incremental snapshot, read between polls (increments.py).
                chunked = incr is not None and incr.read_chunk()
                backoff.reset()
            except InstanceGone as exc:
                self._abandon(stream, opened, incr)
                self.log.warning(
                    "%s: it was dropped between planning and querying (error 208); reading the capture instances "
                    "again and going on",
                    exc,
                )
                self._shapes.pop(exc.instance, None)
                if not self.ctx.sleep(cfg.poll_interval):
                    return
                continue
            except ConnectionLost as exc:
                self._abandon(stream, opened, incr)
                self.db.close()
                if not backoff.wait(
                    exc, lambda lost: CdcError(f"{lost}; {backoff.summary()}"), self.log, self.ctx.sleep
                ):
                    return
                continue
            except Purged:
                self._abandon(stream, opened, incr)
                stream_check(stream, self.db.state())  # CDC cleanup ran meanwhile: say which table lost what
                raise
            heartbeat = stream.finish(poll)
            if heartbeat is not None:
                yield Checkpoint(heartbeat)
            self._report_lag(stream, state)
            if time.monotonic() >= next_health:
                self._check_retention(stream, state)
                next_health = time.monotonic() + self.health_interval
            self._times.clear()
            if not self.ctx.sleep(polls.after_poll(changes, poll.full or chunked)):
                return

    def _timed(self, seconds: float, poll: Poll) -> None:
        """How long the poll's change queries took to start streaming (what query_timeout bounds)."""
        self.slowest_query = max(self.slowest_query, seconds)
        limit = self.config.query_timeout
        if limit and seconds > limit / 2:
            self.log.warning(
                "change queries of %s took %.1fs, more than half of query_timeout (%gs): a smaller batch_size "
                "bounds the windows tighter",
                ", ".join(w.table for w in poll.windows),
                seconds,
                limit,
            )

    def _probe(self, instance: CaptureInstance, n: int, start: int, end: int) -> tuple[int, int | None]:
        return self.db.window_end(instance, self.direct, n, start, end)

    def _query(self, window: Window) -> tuple[str, list[Any]] | Pages:
        """Direct mode: the window in one statement, streamed in the clustered index's order (no
        sort). Function mode: in pages of ``batch_size`` rows, as its order needs a sort
        (sql.function_pages; review row 6: a transaction larger than batch_size sorted whole)."""
        from dstream_mssql_cdc.db import Pages

        shape = self.shape(window.instance)
        bounds = [to_bytes(window.start), to_bytes(window.end)]
        if self.direct:
            return changes_query(window.instance, shape.columns, True), bounds
        first, after = function_pages(window.instance, shape.columns)
        return Pages(first, after, tuple(bounds), self.config.batch_size)

    def _changes(self, window: Window, rows: Rows) -> Iterator[Any]:
        layout = self.shape(window.instance).layout
        rows.on_chunk = self._fill_times
        return layout.parse(rows)

    def _fill_times(self, chunk: Sequence[Any]) -> None:
        """Commit times of the transactions in a fetched chunk, in one query (not one per row)."""
        from dstream_mssql_cdc.lsn import from_bytes

        new = sorted({from_bytes(row[0]) for row in chunk} - self._times.keys())
        if new:
            self._times.update(self.db.commit_times(new))

    def _retyped(self, stream: Stream, poll: Poll, opened: Sequence[Rows]) -> Iterator[Record]:
        """A column type altered in place shows in the query's result description: reload the
        instance's columns and announce them before its rows."""
        for window, rows in zip(poll.windows, opened, strict=True):
            name = window.instance.name
            before = self._signatures.get(name)
            self._signatures[name] = rows.signature
            if before is None or before == rows.signature:
                continue
            old = self.shape(window.instance)
            new = self._shapes[name] = self._load_shape(window.instance)
            if new.describe() != old.describe():
                yield stream.retyped(window, old, new)

    def _passed(self, stream: Stream, record: Record) -> None:
        cursor = stream.cursors.get(record.metadata["TableName"])
        lsn = record.metadata.get("LSN")
        if cursor is not None and lsn:
            from dstream_mssql_cdc.lsn import parse_lsn

            cursor.commit_time = self._times.get(parse_lsn(lsn), cursor.commit_time)

    def _abandon(self, stream: Stream, opened: Sequence[Rows], incr: Incremental | None = None) -> None:
        if incr is not None:
            incr.abandon()  # the chunk in flight is read again
        for rows in opened:
            rows.close()
        for cursor in stream.cursors.values():
            if cursor.asm is not None:
                cursor.asm.abandon()
        self._times.clear()

    def _check_direct(self, poll: Poll) -> None:
        """Direct mode reads the change table, which the query function's range check
        (error 313) does not guard: a window that starts below the instance's start LSN
        (sys.fn_cdc_get_min_lsn: "the low endpoint of a capture instance changes when cleanup
        is performed") lost rows to CDC cleanup. Checked before the window's rows and
        positions go out, so a restart meets the same error instead of resuming past the
        gap, and a cleanup after a complete read is no error. (Cleanup running during the
        read itself stays undetected, as in Debezium's direct mode, which checks nothing.)"""
        if not self.direct:
            return
        for window in poll.windows:
            low = self.db.min_lsn(window.instance.name)
            if low > window.start:
                raise Purged(
                    f"{window.table}: CDC cleanup moved capture instance {window.instance.name}'s start to LSN "
                    f"{format_lsn(low)}, past LSN {format_lsn(window.start)} where the stream is: changes were purged "
                    f'by CDC retention; re-snapshot needed (snapshot = "when_needed" does it by itself)'
                )

    def _start_positions(self, stream: Stream, state: ServerState) -> None:
        for cursor in stream.cursors.values():
            if cursor.asm is None:
                mode = self.config.start
                if self._signals_earliest and self.incr is not None and cursor.table == self.incr.signal_table:
                    mode = "earliest"  # every signal since the task's mark (signals.py)
                position = initial_position(state, state.of_table(cursor.object_id), mode)
                if position is not None:
                    cursor.start_at(position)

    def _follow_tables(self, stream: Stream, setup: Setup, state: ServerState) -> Iterator[Record | Checkpoint]:
        """Without ``tables``: capture tables as CDC is enabled on them (snapshotted first,
        unless snapshot = "never"), stop as it is disabled."""
        if self.config.tables is not None:
            self._gone(stream, state)
            return
        current = state.tables()
        known = {cursor.object_id for cursor in stream.cursors.values()}
        for object_id, name in sorted(current.items(), key=lambda item: item[1]):
            if object_id in known:
                continue
            setup.object_ids[name] = object_id
            if self.config.snapshot == "never":
                self.log.info("capturing %s (CDC is enabled on it), from its first change", name)
                stream.add(TableCursor(name, object_id, None, self.target.task_hint), announced=False)
                continue
            from dstream.sdk.cdc import SnapshotPlan

            self.log.info("capturing %s (CDC is enabled on it): snapshot first", name)
            yield from self._snapshots(setup, stream, SnapshotPlan((name,)))
        for name, cursor in list(stream.cursors.items()):
            if cursor.object_id not in current:
                self.log.warning("%s has no capture instance any more (CDC disabled on it): no longer captured", name)
                stream.remove(name)
                self.lag.forget(name)

    def _gone(self, stream: Stream, state: ServerState) -> None:
        """A listed table whose capture instances all went away (disabled, or dropped between
        planning and querying) leaves the stream, its position kept in the checkpoint, as
        Debezium drops such a table and goes on; one this login can no longer see is an error."""
        from dstream_mssql_cdc.catalog import access_message
        from dstream_mssql_cdc.errors import Denied

        for name, cursor in list(stream.cursors.items()):
            if state.of_table(cursor.object_id):
                continue
            schema, _, table = name.partition(".")
            source = self.db.table(schema, table)
            if source is not None and source.tracked:
                login = self.db.login()
                raise Denied(access_message(login, source, self.db.denied_columns(source), self.target.task_hint))
            self.log.warning(
                "%s has no capture instance any more (CDC disabled on it): no longer captured; its position stays "
                "in the checkpoint",
                name,
            )
            stream.hold(name, cursor.position_json() or Position(0).to_json(format_lsn))
            self.lag.forget(name)

    # -- health -----------------------------------------------------------------------------

    def _watch(self, monitor: CaptureMonitor, state: ServerState) -> None:
        log_end = self.db.log_end() if monitor.wants_log_end(state.max_lsn) else None  # a query: only when used
        report = monitor.observe(state.max_lsn, log_end)
        if report is not None:
            level, message = report
            (self.log.warning if level == "warning" else self.log.info)("%s", message)

    def _table_lag(self, cursor: TableCursor, state: ServerState) -> float | None:
        position = cursor.position
        if position is None:
            return None
        if state.max_lsn is None or position.lsn > state.max_lsn:
            return 0.0
        if state.max_time is None or cursor.commit_time is None:
            return None
        return (state.max_time - cursor.commit_time).total_seconds()

    def _report_lag(self, stream: Stream, state: ServerState) -> None:
        for cursor in stream.cursors.values():
            self.lag.observe(cursor.table, self._table_lag(cursor, state))
        self.lag.log_due()

    def _check_retention(self, stream: Stream, state: ServerState) -> None:
        """Warn about tables whose unread changes get close to the cleanup retention."""
        try:
            retention = self.db.retention_minutes()
        except ConnectionLost:
            raise
        except CdcError as exc:
            self.log.debug("lag check skipped: %s", exc)
            return
        for cursor in stream.cursors.values():
            warning = lag_warning(cursor.table, self._table_lag(cursor, state), retention)
            if warning is not None:
                self.log.warning("%s", warning)

    def on_committed(self, position: Any) -> None:
        """The orchestrator persisted ``position``: it paces incremental snapshot chunks (SQL
        Server keeps its CDC rows for the retention period whatever is acknowledged)."""
        if self.incr is not None:
            self.incr.committed(position)

    def close(self) -> None:
        if self.changes:
            took = time.monotonic() - self._started
            self.log.info(
                "%d changes in %.1fs (%.0f changes/s); the slowest poll's change queries took %.2fs to start",
                self.changes,
                took,
                self.changes / took if took else 0.0,
                self.slowest_query,
            )
        self._close_snapshot()
        self.readers.close()
        self.db.close()


def stream_check(stream: Stream, state: ServerState) -> None:
    from dstream_mssql_cdc.setup import check_positions

    positions = {name: c.position for name, c in stream.cursors.items() if c.position is not None}
    ids = {name: c.object_id for name, c in stream.cursors.items()}
    expired = check_positions(positions, ids, state, stream_task(stream))
    if expired:
        raise Purged("\n".join(expired.values()))


def stream_task(stream: Stream) -> str:
    return next((c.task for c in stream.cursors.values()), "TASK")


main = MssqlCdcInputProvider.main
