"""Snapshots: every row a table holds, consistent with where its changes start.

The engine-agnostic part (which tables, chunks that resume after the last acknowledged
key, snapshot row positions that never collide, the handoff) is ``dstream.sdk.cdc``;
this module adds SQL Server's, following Debezium's SqlServerSnapshotChangeEventSource
with ``snapshot.isolation.mode = snapshot``: one SNAPSHOT-isolation transaction whose first
read is ``sys.fn_cdc_get_max_lsn()`` M (db.Session.begin_snapshot). Every transaction at or
below M was harvested by the capture job, so it committed before M could be read, hence
before the snapshot's view: it is in the rows read later in the transaction, and the table's
changes start just above M (``sys.fn_cdc_increment_lsn(M)``, or the capture instance's start
if that is later). A transaction committed before the snapshot but not yet captured then is
both in the rows and, later, in the stream: it comes again as a change (capture latency, a
few seconds at most); nothing is missed.

Keyed tables (the capture instance's index columns, the primary key or the unique index it
was enabled with) are read in chunks of ``batch_size`` rows in key order, each chunk after
the last key of the previous one (the key's exact text: sql.key_text), so a run that stops
resumes after the last row the output acknowledged, with a new transaction at M2 ≥ M whose
rows include the changes between M and M2 that the stream then delivers again. A table
without such a key (or with a key of a type that has no exact text) is read in one
statement and restarts from its first row.
"""

from __future__ import annotations

from dataclasses import replace
from typing import TYPE_CHECKING, Any

from dstream.sdk import Checkpoint, Record
from dstream.sdk.cdc import (
    Backoff,
    ChunkCursor,
    PollInterval,
    Position,
    new_pass_id,
    plan_snapshots,
    read_chunks,
    read_metadata,
    restart_point,
)
from dstream_mssql_cdc.errors import CdcError, ConnectionLost
from dstream_mssql_cdc.lsn import format_lsn, increment_lsn
from dstream_mssql_cdc.names import quote_name
from dstream_mssql_cdc.sql import RESUMABLE_KEY_TYPES, keyset_params, snapshot_query

if TYPE_CHECKING:
    import logging
    from collections.abc import Callable, Generator, Iterator

    from dstream.sdk import Context
    from dstream.sdk.cdc import SnapshotPlan
    from dstream_mssql_cdc.catalog import CaptureInstance, Column, ServerState
    from dstream_mssql_cdc.changes import Values
    from dstream_mssql_cdc.config import MssqlCdcConfig, Target
    from dstream_mssql_cdc.db import Session
    from dstream_mssql_cdc.setup import Setup
    from dstream_mssql_cdc.stream import Shape, Stream


class Snapshot:
    """One pass over the tables of a plan, in one snapshot transaction."""

    def __init__(
        self,
        session: Session,
        isolation: str,
        batch_size: int,
        values: Values,
        log: logging.Logger,
        checkpoint: Callable[[str, dict[str, Any]], dict[str, Any]],
    ) -> None:
        self.session = session
        self.isolation = isolation
        self.batch_size = batch_size
        self.values = values
        self.log = log
        self.checkpoint = checkpoint  # (table, its position JSON) → the whole checkpoint
        self.max_lsn: int | None = None

    def begin(self) -> int | None:
        self.max_lsn = self.session.begin_snapshot(self.isolation)
        return self.max_lsn

    def end(self) -> None:
        self.session.end_snapshot()

    def start_position(self, shape: Shape) -> Position:
        """Where a table snapshotted in this pass starts streaming (inside its snapshot for now)."""
        assert self.max_lsn is not None
        return Position(max(increment_lsn(self.max_lsn), shape.instance.min_lsn), snapshot=ChunkCursor())

    def table(self, name: str, shape: Shape, start: Position) -> Iterator[tuple[Record, ChunkCursor]]:
        """Every row of ``name`` after ``start``'s cursor, each with the checkpoint (and cursor) after it."""
        present = self.session.column_names(shape.instance.schema, shape.instance.table)
        gone = [c.name for c in shape.columns if c.name not in present]
        if gone:  # captured, then dropped from the table: CDC gives NULL for them, the snapshot leaves them out
            self.log.warning("%s: captured column(s) %s no longer exist in the table", name, ", ".join(gone))
            shape = replace(shape, columns=[c for c in shape.columns if c.name in present])
        keys = _key_columns(shape)
        source = f"{quote_name(shape.instance.schema)}.{quote_name(shape.instance.table)}"
        lsn_text = format_lsn(start.lsn)
        pass_id = new_pass_id()
        names = [c.name for c in shape.columns]
        cursor = start.snapshot or ChunkCursor()
        resumable = resumable_by_key(shape)
        self._log(name, start, cursor, resumable)
        for values, done in self._rows(source, shape, keys, cursor, resumable):
            data = self.values.row(names, values)
            key = {k: data.get(k) for k in shape.instance.key} if shape.instance.key else None
            meta = read_metadata(name, lsn_text, key, pass_id, done.rows)
            meta["CaptureInstance"] = shape.instance.name
            position = Position(start.lsn, snapshot=done).to_json(format_lsn)
            yield Record(data, meta, position=self.checkpoint(name, position)), done

    def _rows(
        self, source: str, shape: Shape, keys: list[Column], cursor: ChunkCursor, resumable: bool
    ) -> Iterator[tuple[tuple[Any, ...], ChunkCursor]]:
        if not resumable:
            rows = self.session.stream(snapshot_query(source, shape.columns, [], resume=False))
            for n, row in enumerate(rows, start=1):
                yield tuple(row), ChunkCursor(None, n)
            return
        width = len(keys)
        first = snapshot_query(source, shape.columns, keys, resume=False)
        after = snapshot_query(source, shape.columns, keys, resume=True)

        def chunk(bound: tuple[str, ...] | None, limit: int) -> list[Any]:
            if bound is None:
                return list(self.session.query(first, limit).rows)
            return list(self.session.query(after, limit, *keyset_params(bound)).rows)

        def key_text(row: Any) -> tuple[str, ...]:
            texts = tuple(row[:width])
            if any(v is None for v in texts):
                raise CdcError(
                    f"{shape.instance.qualified}: a row has NULL in a column of its key "
                    f"({', '.join(shape.instance.key)}: the unique index capture instance {shape.instance.name} was "
                    f"enabled with), so the snapshot "
                    f"cannot page by it; enable CDC with a primary key or a unique index over NOT NULL columns"
                )
            return tuple(str(v) for v in texts)

        for row, done in read_chunks(chunk, key_text, cursor, self.batch_size):
            yield tuple(row[width:]), done

    def _log(self, name: str, start: Position, cursor: ChunkCursor, resumable: bool) -> None:
        at = format_lsn(self.max_lsn or 0)
        if cursor.rows == 0:
            self.log.info("snapshot of %s as of LSN %s; its changes start at %s", name, at, format_lsn(start.lsn))
        elif resumable and cursor.after is not None:
            self.log.info("resuming the snapshot of %s after %d rows, as of LSN %s", name, cursor.rows, at)
        else:
            self.log.info(
                "restarting the snapshot of %s from its first row (no key to resume by), as of LSN %s", name, at
            )


def resumable_by_key(shape: Shape) -> bool:
    """Whether a table's snapshot pages (and resumes) by its key: it has one, of exact text."""
    keys = _key_columns(shape)
    return bool(keys) and all(k.type in RESUMABLE_KEY_TYPES for k in keys)


def _key_columns(shape: Shape) -> list[Column]:
    by_name = {c.name.lower(): c for c in shape.columns}
    keys = [by_name.get(k.lower()) for k in shape.instance.key]
    return [k for k in keys if k is not None] if all(k is not None for k in keys) else []


def run_pass(
    snapshot: Snapshot,
    plan: SnapshotPlan,
    shapes: dict[str, Shape],
    positions: dict[str, Position],
    schema_change: Callable[[str, Shape, int], Record],
) -> Iterator[Record | Checkpoint]:
    """The plan's tables, one after the other; ``positions`` follows each row (where a retry
    resumes) and ends with each table handed to the stream at its snapshot's point.
    ``snapshot.checkpoint`` must see ``positions`` of the tables not being read (the caller
    holds them in the stream)."""
    for name in plan.start:  # every table of the pass is in the checkpoint from its first row on
        positions[name] = snapshot.start_position(shapes[name])
    for name in plan.tables:
        shape = shapes[name]
        if name in plan.start:
            yield schema_change(name, shape, positions[name].lsn)
        # A table read again from its first row (no key to resume by, or nothing emitted yet) is
        # snapshotted as of this pass, so its changes start after this pass's max LSN; keeping the
        # old point would deliver every change in between twice (issue 22, defect 7).
        point = snapshot.start_position(shape).lsn
        start = positions[name] = restart_point(positions[name], point, resumable_by_key(shape))
        for record, done in snapshot.table(name, shape, start):
            positions[name] = Position(start.lsn, snapshot=done)
            yield record
        positions[name] = Position(start.lsn)
        yield Checkpoint(snapshot.checkpoint(name, positions[name].to_json(format_lsn)))


class SnapshotRuns:
    """The provider's snapshot runs (mixed into MssqlCdcInputProvider): wait for the capture
    instances, run a pass, retry it where it stopped after a lost connection, hand the
    tables to the stream."""

    config: MssqlCdcConfig
    db: Session
    values: Values
    log: logging.Logger
    ctx: Context
    target: Target
    _snapshot: Session | None

    def shape(self, instance: CaptureInstance) -> Shape:
        raise NotImplementedError

    def _session(self) -> Session:
        raise NotImplementedError

    def _snapshots(self, setup: Setup, stream: Stream, plan: SnapshotPlan) -> Generator[Any, None, bool]:
        """Snapshot the plan's tables (retrying where it stopped after a lost connection),
        then hand each to the stream; False when stopped."""
        from dstream_mssql_cdc.windows import TableCursor

        positions = {name: setup.stored[name] for name in plan.resume}
        every = plan.tables  # a retry re-plans only what is left; all of them stream afterwards
        for name in plan.tables:
            stream.hold(name, (positions.get(name) or Position(0)).to_json(format_lsn))
        backoff = Backoff(self.config.reconnect_timeout)
        while plan:
            try:
                state = self._established(setup, plan)
                if state is None:
                    return False
                shapes = {name: self.shape(setup.instance_of(name, state)) for name in plan.tables}
                yield from self._pass(stream, plan, shapes, positions)
                break
            except ConnectionLost as exc:
                self._close_snapshot()
                message = "%s during the snapshot; resuming it in %.1fs"
                give_up = lambda lost: CdcError(f"{lost}; {backoff.summary()}")  # noqa: E731
                if not backoff.wait(exc, give_up, self.log, self.ctx.sleep, message):
                    return False
                plan = plan_snapshots(self.config.snapshot, list(plan.tables), positions)
        for name in every:
            stream.add(TableCursor(name, setup.object_ids[name], positions[name], self.target.task_hint))
        return True

    def _pass(
        self, stream: Stream, plan: SnapshotPlan, shapes: dict[str, Shape], positions: dict[str, Position]
    ) -> Iterator[Record | Checkpoint]:
        session = self._snapshot = self._session()
        snapshot = Snapshot(
            session,
            self.config.snapshot_isolation,
            self.config.batch_size,
            self.values,
            self.log,
            lambda table, position: stream.checkpoint(**{table: position}),
        )
        try:
            if snapshot.begin() is None:
                raise CdcError("the CDC max LSN is NULL although the capture instances have started")
            for item in run_pass(snapshot, plan, shapes, positions, self._schema_record(stream)):
                for name, position in positions.items():  # the other tables' places in each checkpoint
                    stream.hold(name, position.to_json(format_lsn))
                yield item
            snapshot.end()
        finally:
            self._close_snapshot()
        self.log.info("snapshot of %s done", ", ".join(plan.tables))

    def _schema_record(self, stream: Stream) -> Any:
        def make(table: str, shape: Shape, lsn: int) -> Record:
            return stream.schema_change(table, shape, None, lsn, "snapshot started")

        return make

    def _established(self, setup: Setup, plan: SnapshotPlan) -> ServerState | None:
        """The server state once every table to snapshot has a started capture instance
        (its start LSN bounds where its changes can begin); None when stopped meanwhile."""
        polls = PollInterval(self.config.poll_interval, self.config.max_poll_interval)
        while True:
            state = self.db.state()
            waiting = [name for name in plan.tables if setup.instance_of(name, state).min_lsn == 0]
            if not waiting and state.max_lsn is not None:
                return state
            self.log.info(
                "waiting for the CDC capture job to start capturing %s before the snapshot (is SQL Server Agent "
                "running?)",
                ", ".join(waiting) or "anything",
            )
            if not self.ctx.sleep(polls.after_poll(0, False)):
                return None

    def _close_snapshot(self) -> None:
        if self._snapshot is not None:
            self._snapshot.end_snapshot()
            self._snapshot.close()
            self._snapshot = None
