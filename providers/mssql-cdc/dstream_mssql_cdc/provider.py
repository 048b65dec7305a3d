"""mssql-cdc-input-provider: every insert, update and delete that SQL Server CDC captured.

A run, in short (stream.py has the positions and windows, changes.py the envelopes,
health.py the capture-job and retention checks, infra.py the lifecycle verbs, db.py the
SQL):

1. Connect (a clear error handshake when the server cannot be reached), check that CDC is
   on, resolve the tables (or, without ``tables``, take every table with a capture
   instance, and later ones as they appear), and check every stored position against
   the capture instances: a position older than ``sys.fn_cdc_get_min_lsn`` is a "purged,
   re-snapshot needed" error before anything is emitted.
2. Poll: take ``sys.fn_cdc_get_max_lsn()``, plan one window per table, run the windows'
   ``fn_cdc_get_all_changes`` queries (``parallelism`` at a time), and emit the changes,
   merged across tables in commit order, each record carrying every table's position.
   After the poll, a checkpoint carries heartbeats (tables whose position moved to the
   max LSN without a change). A run without a checkpoint emits the starting positions
   first, so ``start = "latest"`` means the first start, not every restart.
3. Polls follow each other at once while a window comes back full, every
   ``poll_interval`` while changes arrive, and back off (doubling) to
   ``max_poll_interval`` while idle. A lost connection is retried with backoff for
   ``reconnect_timeout`` seconds; nothing read but not emitted is kept.
4. Every poll watches the capture job (NULL or frozen max LSN while the log moves: a
   warning); every minute, each table's lag is compared with the cleanup retention.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any, ClassVar

from dstream.sdk import Checkpoint, InfrastructureProvider, InputProvider
from dstream.sdk.cdc import Backoff, PollInterval, PositionError
from dstream_mssql_cdc.changes import RecordBuilder
from dstream_mssql_cdc.config import MssqlCdcConfig, Target, parse_table_name
from dstream_mssql_cdc.errors import CdcError, ConnectionLost, Purged
from dstream_mssql_cdc.health import CaptureMonitor, lag_warning
from dstream_mssql_cdc.lsn import format_lsn
from dstream_mssql_cdc.stream import Stream, TableCursor, no_instance_message, parse_checkpoint

if TYPE_CHECKING:
    from collections.abc import Iterable, Iterator

    from dstream.sdk import Context, Record, Resource
    from dstream.sdk.cdc import Position
    from dstream_mssql_cdc.changes import ResultSet
    from dstream_mssql_cdc.db import Readers, Session
    from dstream_mssql_cdc.infra import Infrastructure
    from dstream_mssql_cdc.stream import ServerState, StartMode, Window

HEALTH_INTERVAL = 60.0  # seconds between lag checks against the cleanup retention


class MssqlCdcInputProvider(InputProvider[MssqlCdcConfig], InfrastructureProvider):
    name = "mssql-cdc-input-provider"
    version = "0.1.0"
    Config = MssqlCdcConfig
    checkpoint_every = 2000
    checkpoint_interval = 1.0
    health_interval: ClassVar[float] = HEALTH_INTERVAL

    def __init__(self, config: MssqlCdcConfig, ctx: Context) -> None:
        super().__init__(config, ctx)
        from dstream_mssql_cdc.db import Readers
        from dstream_mssql_cdc.infra import Infrastructure

        self.target = Target.from_config(config, ctx.task)
        self.db: Session = self._session()
        self.db.connect()  # a clear error handshake when the server cannot be reached
        self.readers: Readers = Readers(self.db, self._session, config.parallelism)
        self.infra: Infrastructure = Infrastructure(self.db, config.tables, config.enable_cdc, ctx.task)

    def _session(self) -> Session:
        """A new (unconnected) session. pyodbc, and the ODBC driver manager it loads, are
        imported only here: the catalogue and schema tools import this module without them."""
        from dstream_mssql_cdc.db import Session

        cfg = self.config
        return Session(cfg.connection_string.get_secret_value(), self.target, cfg.login_timeout, cfg.query_timeout)

    # -- lifecycle verbs --------------------------------------------------------------------

    def init(self) -> Iterable[Resource]:
        return self.infra.init()

    def plan(self) -> Iterable[Resource]:
        return self.infra.plan()

    def status(self) -> Iterable[Resource]:
        return self.infra.status()

    def destroy(self) -> Iterable[Resource]:
        return self.infra.destroy()

    # -- run --------------------------------------------------------------------------------

    def read(self, checkpoint: Any | None) -> Iterator[Record | Checkpoint]:
        try:
            stored = parse_checkpoint(checkpoint)
        except PositionError as exc:
            raise CdcError(f"{exc}: was the task's state written by another provider?") from None
        stream, state = self._prepare(stored)
        yield from self._poll(stream, state, first=checkpoint is None)

    def _prepare(self, stored: dict[str, Position]) -> tuple[Stream, ServerState]:
        """Check the source and every stored position before emitting anything."""
        cfg = self.config
        info = self.db.database()
        if not info.cdc_enabled:
            raise CdcError(
                f"CDC is not enabled on database {info.name} at {self.target.server}: set enable_cdc = true and run "
                f"`dstream init {self.target.task_hint}`, or EXEC sys.sp_cdc_enable_db"
            )
        state = self.db.state()
        tables: list[tuple[str, int]] = []
        if cfg.tables is None:
            tables = sorted(((name, oid) for oid, name in state.tables().items()), key=lambda t: t[0])
            if not tables:
                self.log.warning(
                    "no table of database %s has a CDC capture instance yet: waiting for tables to be enabled",
                    info.name,
                )
        else:
            missing: list[str] = []
            for name in cfg.tables:
                schema, table = parse_table_name(name)
                source = self.db.table(schema, table)
                if source is None:
                    missing.append(name)
                    continue
                if not state.of_table(source.object_id):
                    raise CdcError(no_instance_message(source.qualified, self.target.task_hint))
                tables.append((source.qualified, source.object_id))
            if missing:
                raise CdcError(
                    f"table {', '.join(repr(m) for m in missing)} does not exist in database {info.name} "
                    f"(names are schema.table; without a schema the login's default schema applies)"
                )
        names = {name for name, _ in tables}
        dropped = sorted(set(stored) - names)
        if dropped:
            self.log.info("no longer capturing %s: their positions leave the checkpoint", ", ".join(dropped))
        cursors = [self._cursor(name, oid, stored.get(name), cfg.start) for name, oid in tables]
        stream = Stream(cursors, cfg.batch_size)
        stream.check_start(state)
        for cursor in cursors:
            position = cursor.position
            where = f"LSN {format_lsn(position.lsn)}" if position is not None else f"the {cfg.start} change"
            if position is not None and position.index:
                where += f" (after change {position.index} of that transaction)"
            self.log.info("streaming %s from %s", cursor.table, where)
        return stream, state

    def _cursor(self, table: str, object_id: int, start: Position | None, mode: StartMode) -> TableCursor:
        builder = RecordBuilder(table, self.config.numeric_as_string)
        return TableCursor(table, object_id, builder, start, mode, self.target.task_hint)

    def _poll(self, stream: Stream, state: ServerState | None, first: bool) -> Iterator[Record | Checkpoint]:
        cfg = self.config
        polls = PollInterval(cfg.poll_interval, cfg.max_poll_interval)
        backoff = Backoff(cfg.reconnect_timeout)
        monitor = CaptureMonitor(cfg.capture_job_timeout)
        next_health = 0.0
        while True:
            try:
                if state is None:
                    state = self.db.state()
                self._watch(monitor, state)
                self._follow_tables(stream, state)
                windows = stream.windows(state)
                if first:
                    start = stream.heartbeat()  # the starting positions: a restart keeps them
                    if start is not None:
                        yield Checkpoint(start)
                        first = False
                results = self._fetch(stream, windows)
                if time.monotonic() >= next_health:
                    self._check_lag(stream)
                    next_health = time.monotonic() + self.health_interval
                backoff.reset()
            except ConnectionLost as exc:
                self.db.close()
                state = None
                if not backoff.wait(
                    exc, lambda lost: CdcError(f"{lost}; {backoff.summary()}"), self.log, self.ctx.sleep
                ):
                    return
                continue
            state = None
            changes = 0
            for record in stream.feed(results):
                changes += 1
                yield record
            position = stream.heartbeat()
            if position is not None:
                yield Checkpoint(position)
            wait = polls.after_poll(changes, Stream.full(results))
            if not self.ctx.sleep(wait):
                return

    def _fetch(self, stream: Stream, windows: list[Window]) -> list[tuple[Window, ResultSet]]:
        try:
            return self.readers.fetch(windows)
        except Purged:
            # CDC cleanup ran between planning and querying: say precisely which table lost what.
            stream.check_start(self.db.state())
            raise

    def _watch(self, monitor: CaptureMonitor, state: ServerState) -> None:
        log_end = self.db.log_end() if monitor.wants_log_end(state.max_lsn) else None  # a query: only when used
        report = monitor.observe(state.max_lsn, log_end)
        if report is not None:
            level, message = report
            (self.log.warning if level == "warning" else self.log.info)("%s", message)

    def _follow_tables(self, stream: Stream, state: ServerState) -> None:
        """Without ``tables``: capture tables as CDC is enabled on them, stop as it is disabled."""
        if self.config.tables is not None:
            return
        current = state.tables()
        known = {cursor.object_id for cursor in stream.cursors.values()}
        for object_id, name in sorted(current.items(), key=lambda item: item[1]):
            if object_id not in known:
                self.log.info("capturing %s (CDC is enabled on it), from its first change", name)
                stream.add(self._cursor(name, object_id, None, "earliest"))
        for name, cursor in list(stream.cursors.items()):
            if cursor.object_id not in current:
                self.log.warning("%s has no capture instance any more (CDC disabled on it): no longer captured", name)
                stream.remove(name)

    def _check_lag(self, stream: Stream) -> None:
        """Warn about tables whose unread changes get close to the cleanup retention."""
        try:
            retention = self.db.retention_minutes()
            if retention is None:
                return
            lags: dict[int, float | None] = {}  # tables at the same LSN share one query
            for cursor in stream.cursors.values():
                position = cursor.position
                if position is None:
                    continue
                if position.lsn not in lags:
                    lags[position.lsn] = self.db.lag_seconds(position.lsn)
                warning = lag_warning(cursor.table, lags[position.lsn], retention)
                if warning is not None:
                    self.log.warning("%s", warning)
        except ConnectionLost:
            raise
        except CdcError as exc:
            self.log.debug("lag check skipped: %s", exc)

    def close(self) -> None:
        self.readers.close()
        self.db.close()


main = MssqlCdcInputProvider.main
