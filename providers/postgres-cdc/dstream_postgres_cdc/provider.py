"""postgres-cdc-input-provider: every insert, update and delete of some tables, in commit order.

Reading: each poll asks for at most ``batch_size`` changes (whole transactions) committed
before the server's current flush LSN, through a temporary copy of the task's slot (see
source.py), and decodes them (decode.py). Polls follow each other at once while a batch
comes back full, every ``poll_interval`` while changes arrive, and back off (doubling) to
``max_poll_interval`` while idle.

Positions (``dstream.sdk.cdc.Position``), as checkpoints:

- ``{"lsn": L}``: every transaction whose commit LSN is below L was emitted. After a
  transaction, L is the end of its commit record (wal2json's ``nextlsn``); after a poll
  that read everything up to the flush LSN F, L = F (a heartbeat). L is exactly what
  ``pg_replication_slot_advance`` takes: a slot skips transactions whose commit LSN is
  below its confirmed position.
- ``{"lsn": C, "index": k}``: inside the transaction that commits at C, after its k-th
  change. Resuming skips its first k changes. The slot is advanced to C, which keeps that
  transaction.
- ``{"lsn": P, "snapshot": {"done": [...], "table": T, "after": [key]}}``: inside the
  initial snapshot whose rows are the state as of P.

The task's slot moves only in :meth:`on_committed` (what the orchestrator persisted after
the output acknowledged it) and at start to the checkpoint the run resumes from, so WAL is
kept until the output has the data. Heartbeats (transactions of other tables, or the
flush LSN when idle) advance the checkpoint, and so the slot, while the captured tables
are quiet.

Initial snapshot (``snapshot = "initial"``, first run): a temporary slot exports a snapshot
at its consistent point P; every row of each table is emitted (``OperationType = "Read"``,
in key order, in pages of ``batch_size``), then the stream starts at P: no change is lost
or doubled between the two. After a crash inside the snapshot the exported snapshot is
gone: the run exports a new one at P2 >= P, emits the remaining rows (tables not done, and
keys after the last emitted one) as of P2, then streams from P. Changes between P and P2
then come as changes after rows that already include them: replaying the stream by key
(upsert on Read/Insert/Update, delete on Delete) still ends in the table's state, and
nothing is missing. A table without a primary key or replica identity index restarts from
its first row after such a crash (duplicates, nothing missing).
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any, ClassVar

from dstream.sdk import Checkpoint, InfrastructureProvider, InputProvider, Record
from dstream.sdk.cdc import READ, Backoff, PollInterval, Position, PositionError, SnapshotCursor, TransactionAssembler
from dstream_postgres_cdc.config import READER_SUFFIX, PostgresCdcConfig, Target, default_slot_name
from dstream_postgres_cdc.decode import Decoder, converters
from dstream_postgres_cdc.errors import CdcError, ConnectionLost, slot_missing_error
from dstream_postgres_cdc.infra import Infrastructure
from dstream_postgres_cdc.lsn import format_lsn, parse_lsn
from dstream_postgres_cdc.source import Session, SnapshotSession

if TYPE_CHECKING:
    from collections.abc import Generator, Iterable, Iterator

    from dstream.sdk import Context, Resource
    from dstream_postgres_cdc.source import Table

Output = Record | Checkpoint
READER_WAIT = 30.0  # seconds to wait for a previous run's reader slot to go away


class PostgresCdcInputProvider(InputProvider[PostgresCdcConfig], InfrastructureProvider):
    name = "postgres-cdc-input-provider"
    version = "0.1.0"
    Config = PostgresCdcConfig
    plugin: ClassVar[str] = "wal2json"
    checkpoint_every = 2000
    checkpoint_interval = 1.0

    def __init__(self, config: PostgresCdcConfig, ctx: Context) -> None:
        super().__init__(config, ctx)
        self.slot = config.slot_name or default_slot_name(ctx.task)
        self.reader = self.slot + READER_SUFFIX
        self.target = Target.from_config(config, self.slot, ctx.task, self.plugin)
        self.application_name = f"dstream:{ctx.task or self.name}"[:63]
        self.db = Session(config.dsn.get_secret_value(), self.target, self.application_name, config.timezone)
        self.db.connect()  # a clear error handshake when the server cannot be reached
        self.infra = Infrastructure(
            self.db, self.slot, self.reader, config.tables, self.plugin, config.replica_identity_full
        )
        self._release_to: int | None = None  # highest committed position not yet applied to the slot
        self._slot_at = 0  # the slot's confirmed position as last seen or set
        self._snapshot: SnapshotSession | None = None
        self._options: list[str] = []
        self._reading = False
        self._snap_progress: tuple[int | None, SnapshotCursor] = (None, SnapshotCursor())

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
            start = Position.from_json(checkpoint, parse_lsn) if checkpoint is not None else None
        except PositionError as exc:
            raise CdcError(f"{exc}: was the task's state written by another provider?") from None
        tables = self._prepare(start)
        if (start is None and self.config.snapshot == "initial") or (start is not None and start.snapshot is not None):
            start = yield from self._snapshot_all(tables, start)
            if start is None:
                return  # stopped inside the snapshot
        yield from self._stream(tables, start)

    def _prepare(self, start: Position | None) -> list[Table]:
        """Check the source before emitting anything; move the slot to the resume position."""
        self.infra.check_wal_level()
        slot = self.db.slot(self.slot)
        if slot is None:
            raise slot_missing_error(self.target)
        self.infra.check_slot(slot)
        if slot.wal_status == "lost":
            raise CdcError(
                f'replication slot "{self.slot}" lost WAL it needed (max_slot_wal_keep_size): changes are missing; '
                f'destroy and init the task, then start over (snapshot = "initial")'
            )
        tables = self.infra.tables()
        self._check_identity(tables)
        self._slot_at = slot.confirmed or 0
        if start is not None:
            if self._slot_at > start.lsn:
                raise CdcError(
                    f'replication slot "{self.slot}" is at {format_lsn(self._slot_at)}, past the checkpoint '
                    f"{format_lsn(start.lsn)} this run resumes from: the changes between them are gone (was the "
                    f"slot recreated, or used by another task?). `dstream state reset {self.target.task_hint}` "
                    f"starts from the slot's position instead"
                )
            self._release(start.lsn)  # persisted by the orchestrator: safe to release
            self._apply_release()
        self._options = self._decoding_options(tables)
        return tables

    def _check_identity(self, tables: list[Table]) -> None:
        for table in tables:
            self.infra.check_identity(table)
            if self.config.replica_identity_full and table.identity != "full":
                self.log.warning(
                    "%s has REPLICA IDENTITY %s although replica_identity_full = true: run `dstream init %s`",
                    table.qualified,
                    table.identity.upper(),
                    self.target.task_hint,
                )

    def _decoding_options(self, tables: list[Table]) -> list[str]:
        options = ["format-version", "2", "include-lsn", "1", "include-timestamp", "1", "include-xids", "1"]
        options += ["include-types", "0", "add-tables", ",".join(_wal2json_name(t) for t in tables)]
        return options

    # -- streaming --------------------------------------------------------------------------

    def _stream(self, tables: list[Table], start: Position | None) -> Iterator[Record | Checkpoint]:
        cfg = self.config
        asm: TransactionAssembler[Record] = TransactionAssembler(start, format_lsn)
        decoder = Decoder(tables, cfg.numeric_as_string)
        polls = PollInterval(cfg.poll_interval, cfg.max_poll_interval)
        backoff = Backoff(cfg.reconnect_timeout)
        self.log.info(
            "streaming %s from %s through slot %s",
            ", ".join(t.qualified for t in tables),
            format_lsn(asm.done.lsn) if start is not None else f"the slot's position {format_lsn(self._slot_at)}",
            self.slot,
        )
        batch: list[Record] = []
        while True:
            try:
                if not self._reading and not self._open_reader():
                    return
                self._apply_release()
                upto = self.db.flush_lsn()
                rows = changes = 0
                for chunk in self.db.changes(self.reader, format_lsn(upto), cfg.batch_size, self._options):
                    rows += len(chunk)
                    changes += decoder.feed(chunk, asm, batch)
                    yield from batch
                    batch.clear()
                backoff.reset()
            except ConnectionLost as exc:
                batch.clear()
                asm.abandon()
                self._reading = False
                self.db.close()  # PostgreSQL drops the reader slot when the session ends
                if not backoff.wait(exc, lambda lost: self._gave_up(lost, backoff), self.log, self.ctx.sleep):
                    return
                continue
            full = rows >= cfg.batch_size
            if not full:
                asm.reached(upto)  # every transaction committed below the flush LSN was read
            position = asm.checkpoint()
            if position is not None:
                yield Checkpoint(position)
            wait = polls.after_poll(changes, full)
            if wait and not self.ctx.sleep(wait):
                return

    def _gave_up(self, exc: ConnectionLost, backoff: Backoff) -> CdcError:
        return CdcError(
            f"lost the connection to PostgreSQL at {self.target.server} and could not get it back: "
            f"{backoff.summary()}; last error: {exc}"
        )

    def _open_reader(self) -> bool:
        """(Re)connect and copy the task's slot into this session's temporary reader slot."""
        if not self.db.connected:
            self.db.connect()
        waited_since = time.monotonic()
        while True:
            holder = self.db.slot(self.reader)
            if holder is None:
                break
            if time.monotonic() - waited_since > READER_WAIT:
                raise CdcError(
                    f'replication slot "{self.slot}" is already being read (temporary slot "{self.reader}", '
                    f"backend pid {holder.active_pid}): is this task running twice?"
                )
            if not self.ctx.sleep(0.1):  # a killed run's session may take a moment to end
                return False
        slot = self.db.slot(self.slot)
        if slot is None:
            raise CdcError(
                f'replication slot "{self.slot}" no longer exists on {self.target.server} '
                f"(dropped by `dstream destroy`?): run `dstream init {self.target.task_hint}`"
            )
        self.db.copy_slot_temporary(self.slot, self.reader)
        self._slot_at = max(self._slot_at, slot.confirmed or 0)
        self._reading = True
        return True

    # -- releasing WAL ----------------------------------------------------------------------

    def on_committed(self, position: Any) -> None:
        """The orchestrator persisted ``position``: the slot may move there (at the next poll)."""
        try:
            lsn = parse_lsn(position["lsn"])
        except (TypeError, KeyError, ValueError):
            self.log.warning("ignoring a committed position that is not ours: %r", position)
            return
        self._release(lsn)

    def _release(self, lsn: int) -> None:
        if self._release_to is None or lsn > self._release_to:
            self._release_to = lsn

    def _apply_release(self) -> None:
        target = self._release_to
        if target is None or target <= self._slot_at:
            return
        self._slot_at = self.db.advance_slot(self.slot, format_lsn(target))

    # -- initial snapshot -------------------------------------------------------------------

    def _snapshot_all(self, tables: list[Table], start: Position | None) -> Generator[Output, None, Position | None]:
        """Emit every row of every table; return the position the stream starts from."""
        cursor = start.snapshot if start is not None and start.snapshot is not None else SnapshotCursor()
        lsn = start.lsn if start is not None else None
        backoff = Backoff(self.config.reconnect_timeout)
        self._snap_progress = (lsn, cursor)
        while True:
            try:
                result = yield from self._snapshot_pass(tables, lsn, cursor)
            except ConnectionLost as exc:
                self._close_snapshot()
                message = "%s during the snapshot; resuming it in %.1fs"
                if not backoff.wait(exc, lambda lost: self._gave_up(lost, backoff), self.log, self.ctx.sleep, message):
                    return None
                lsn, cursor = self._snap_progress
                continue
            finally:
                self._close_snapshot()
            return result

    def _snapshot_pass(
        self, tables: list[Table], lsn: int | None, cursor: SnapshotCursor
    ) -> Generator[Output, None, Position]:
        snap = self._snapshot = SnapshotSession(
            self.config.dsn.get_secret_value(), self.target, self.application_name, self.config.timezone
        )
        point = snap.open(self.slot + "_snap", self.plugin)
        if lsn is None:
            lsn = point
            self.log.info("initial snapshot of %s as of %s", ", ".join(t.qualified for t in tables), format_lsn(lsn))
        else:
            self.log.info(
                "resuming the initial snapshot (taken at %s) with a new snapshot at %s, from %s",
                format_lsn(lsn),
                format_lsn(point),
                cursor.table or "the next table",
            )
        self._snap_progress = (lsn, cursor)  # where a retry after a lost connection resumes
        text = format_lsn(lsn)
        done = list(cursor.done)
        for table in [t for t in tables if t.qualified not in done]:
            after = cursor.after if table.qualified == cursor.table and table.key else None
            finished = tuple(done)
            convert = converters(table, self.config.numeric_as_string)
            names = [c.name for c in table.columns]
            width = len(table.key) or 1
            meta = {"TableName": table.qualified, "OperationType": READ, "LSN": text}
            while True:
                rows = snap.rows(table, after, self.config.batch_size)
                for row in rows:
                    key = row[:width]
                    values = row[width:]
                    data = {
                        name: (value if conv is None or value is None else conv(value))
                        for name, conv, value in zip(names, convert, values, strict=True)
                    }
                    cursor_json = {"done": finished, "table": table.qualified, "after": key if table.key else None}
                    yield Record(data, meta, position={"lsn": text, "snapshot": cursor_json})
                if rows:
                    after = tuple(rows[-1][:width])
                    progress_after = after if table.key else None
                    self._snap_progress = (lsn, SnapshotCursor(finished, table.qualified, progress_after))
                if len(rows) < self.config.batch_size:
                    break
            done.append(table.qualified)
            self._snap_progress = (lsn, SnapshotCursor(tuple(done)))
        yield Checkpoint({"lsn": text})
        self.log.info("initial snapshot done; streaming changes from %s", text)
        return Position(lsn)

    def _close_snapshot(self) -> None:
        if self._snapshot is not None:
            self._snapshot.close()
            self._snapshot = None

    def close(self) -> None:
        self._close_snapshot()
        self.db.close()


def _wal2json_name(table: Table) -> str:
    """schema.table for wal2json's add-tables, special characters escaped with a backslash."""

    def escape(part: str) -> str:
        return "".join("\\" + ch if ch in "\\ ',.*" else ch for ch in part)

    return f"{escape(table.schema)}.{escape(table.name)}"


main = PostgresCdcInputProvider.main
