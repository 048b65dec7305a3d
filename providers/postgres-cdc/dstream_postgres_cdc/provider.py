"""postgres-cdc-input-provider: every insert, update and delete of some tables, in commit order.

Reading: the server pushes each transaction over the replication protocol as it commits,
from a temporary copy of the task's slot (replication.py says why a copy). The provider
decodes what has arrived (decode.py), at most ``batch_size`` messages at a time, and writes
it at once; it never waits for more. Between batches it moves the task's slot to what the
orchestrator committed (at most every RELEASE_EVERY), reports lag and reads incremental
snapshot chunks. ``poll_interval`` and ``max_poll_interval`` are accepted and unused.

Positions (``dstream.sdk.cdc.Position``; checkpoint.py has the whole checkpoint):

- ``{"lsn": L}``: every transaction whose commit LSN is below L was emitted. After a
  transaction, L is the end of its commit record (wal2json's ``nextlsn``); once everything
  the server sent was read, L = the ``walEnd`` of its last message (a heartbeat: every
  transaction committed below it was sent; replication.py). L is exactly what
  ``pg_replication_slot_advance`` and ``START_REPLICATION`` take: a slot skips transactions
  whose commit LSN is below its confirmed position (or the start position).
- ``{"lsn": C, "index": k}``: inside the transaction that commits at C, after its k-th
  change. Resuming skips its first k changes. The slot is advanced to C, which keeps that
  transaction.
- ``"tables"``: each table's own start (and, inside its snapshot, how far it got).

The task's slot moves only in :meth:`on_committed` (what the orchestrator persisted after
the output acknowledged it) and at start to the checkpoint the run resumes from, so WAL is
kept until the output has the data. Heartbeats (transactions of other tables, or the
server's keepalives when idle) advance the checkpoint, and so the slot, while the captured
tables are quiet.

Snapshots (``snapshot = "initial"`` or ``"when_needed"``; snapshot.py): on a first run every
table's rows come first (``OperationType = "Read"``), as of the point where the stream then
starts; a table added to ``tables`` later is snapshotted alone, at its own point, before
the stream resumes. ``when_needed`` also starts over with a snapshot when the slot is past
the checkpoint (the changes in between are gone) instead of failing.

Incremental snapshots (``snapshot = "incremental"``, and ``dstream snapshot`` signals; see
incremental.py): the stream starts at once, and between batches a table's next key-ordered
chunk is read in a short transaction of its own; its rows go out when the stream reaches the
chunk's high watermark, minus those whose key changed meanwhile (DBLog).
"""

from __future__ import annotations

import json
import time
from datetime import UTC, datetime, timedelta, timezone
from typing import TYPE_CHECKING, Any, ClassVar
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from dstream.sdk import Checkpoint, InfrastructureProvider, InputProvider, Record, Resource
from dstream.sdk.cdc import (
    Backoff,
    LagReporter,
    Position,
    PositionError,
    TransactionAssembler,
    plan_snapshots,
)
from dstream_postgres_cdc.checkpoint import Stored, parse_checkpoint
from dstream_postgres_cdc.config import READER_SUFFIX, PostgresCdcConfig, Target, default_slot_name
from dstream_postgres_cdc.errors import CdcError, ConnectionLost, slot_missing_error
from dstream_postgres_cdc.incremental import SIGNAL, Incremental, signal_content, signal_sql
from dstream_postgres_cdc.infra import MESSAGES_SINCE, Infrastructure
from dstream_postgres_cdc.lsn import format_lsn, parse_lsn
from dstream_postgres_cdc.pgoutput import PgoutputDecoder
from dstream_postgres_cdc.replication import ReplicationReader
from dstream_postgres_cdc.snapshot import snapshot_pass
from dstream_postgres_cdc.source import ChunkSession, Session, SnapshotSession, session_settings
from dstream_postgres_cdc.wal2json import Wal2jsonDecoder

if TYPE_CHECKING:
    from collections.abc import Generator, Iterable, Iterator
    from datetime import tzinfo

    from dstream.sdk import Context
    from dstream.sdk.cdc import SnapshotPlan
    from dstream_postgres_cdc.decode import Decoder
    from dstream_postgres_cdc.source import Table

Output = Record | Checkpoint
READER_WAIT = 30.0  # seconds to wait for a previous run's reader slot to go away
WAIT = 0.1  # seconds the reader blocks for the server before it looks for a stop, commits and chunks
# Seconds between moves of the task's slot to the committed position, while caught up and
# while catching up: each move decodes the WAL again from the slot's restart_lsn (on the
# server, but the reader waits for it), so a backlog is not slowed by one every second.
RELEASE_EVERY = 1.0
RELEASE_BUSY_EVERY = 15.0
LAG_EVERY = 1.0  # seconds between lag gauge reports
HEARTBEAT_EVERY = 0.2  # seconds between heartbeat checkpoints (and feedback) while idle


class Every:
    """``due()`` at most every ``interval`` seconds (the first call is due)."""

    def __init__(self, interval: float) -> None:
        self.interval = interval
        self._last: float | None = None
        self.ready = False  # what the last due() said

    def due(self) -> bool:
        now = time.monotonic()
        self.ready = self._last is None or now - self._last >= self.interval
        if self.ready:
            self._last = now
        return self.ready


class PostgresCdcInputProvider(InputProvider[PostgresCdcConfig], InfrastructureProvider):
    name = "postgres-cdc-input-provider"
    version = "0.1.0"
    Config = PostgresCdcConfig
    default_plugin: ClassVar[str] = "pgoutput"  # for a task without a slot yet (README: "Output plugin")
    checkpoint_every = 2000
    checkpoint_interval = 1.0

    def __init__(self, config: PostgresCdcConfig, ctx: Context) -> None:
        super().__init__(config, ctx)
        self.slot = config.slot_name or default_slot_name(ctx.task)
        self.reader = self.slot + READER_SUFFIX
        self.plugin = config.plugin or self.default_plugin
        self.target = Target.from_config(config, self.slot, ctx.task, self.plugin)
        self.application_name = f"dstream:{ctx.task or self.name}"[:63]
        self.db = Session(config.dsn.get_secret_value(), self.target, self.application_name, config.timezone)
        self.db.connect()  # a clear error handshake when the server cannot be reached
        if config.plugin is None:  # an existing task keeps the plugin its slot was created with
            slot = self.db.slot(self.slot)
            if slot is not None and slot.plugin in ("wal2json", "pgoutput") and slot.plugin != self.plugin:
                self.plugin = slot.plugin
                self.target = self.db.target = Target.from_config(config, self.slot, ctx.task, self.plugin)
        self.infra = Infrastructure(
            self.db, self.slot, self.reader, config.tables, self.plugin, config.replica_identity_full
        )
        self.lag = LagReporter(ctx.gauge, self.log)
        if ctx.command == "run" and config.snapshot == "incremental":
            self._refuse_keyless(self.infra.tables())  # an error handshake: one line, before anything runs
            self.infra.check_messages('snapshot = "incremental"')
        self._release_to: int | None = None  # highest committed position not yet applied to the slot
        self._slot_at = 0  # the slot's confirmed position as last seen or set
        self._snapshot: SnapshotSession | None = None
        self._options: list[tuple[str, str]] = []
        self._reader: ReplicationReader | None = None
        self._released_at = 0.0  # time.monotonic() of the last move of the task's slot
        self._chunks: ChunkSession | None = None
        self._incr: Incremental | None = None

    # -- lifecycle verbs --------------------------------------------------------------------

    def init(self) -> Iterable[Resource]:
        return self.infra.init()

    def plan(self) -> Iterable[Resource]:
        return self.infra.plan()

    def check(self) -> Iterable[Resource]:
        """``dstream check``: the server answers these credentials and its settings allow CDC;
        the slot and the tables as ``plan`` sees them (nothing is created or changed)."""
        return self.infra.plan()

    def status(self) -> Iterable[Resource]:
        stored = None
        if self.ctx.checkpoint is not None:
            try:
                stored = parse_checkpoint(self.ctx.checkpoint, self.config.tables)
            except PositionError as exc:
                self.log.warning("the task's checkpoint is not this provider's: %s", exc)
        return self.infra.status(stored)

    def destroy(self) -> Iterable[Resource]:
        return self.infra.destroy()

    def snapshot(self) -> Iterable[Resource]:
        """``dstream snapshot``: send an incremental snapshot signal into the source's stream.

        The verb's arguments (``{"tables": [...], "where": {table: condition}, "stop": bool}``)
        come in the command envelope's ``checkpoint`` slot, which no other verb but ``status``
        uses. The signal is a transactional logical decoding message (incremental.py): the
        running task (whatever runs it: a terminal, a detached run, a deployed replica) sees
        it in order in its stream; a stopped task when it next runs. A refusal is the
        lifecycle reply ``{"status": "Failed", "message": ...}``: one line for the user.
        """
        try:
            return self._send_signal()
        except CdcError as exc:
            failed = {"status": "Failed", "resources": [], "message": str(exc)}
            self.ctx.write_stdout(json.dumps(failed).encode() + b"\n")
            return []

    def _send_signal(self) -> list[Resource]:
        args = self.ctx.checkpoint if isinstance(self.ctx.checkpoint, dict) else {}
        asked = [str(t) for t in args.get("tables") or []]
        where = {str(k): str(v) for k, v in (args.get("where") or {}).items()}
        stop = bool(args.get("stop"))
        if not asked:
            raise CdcError("name at least one table to snapshot (--table)")
        by_name: dict[str, Table] = {}
        for table in self.infra.tables():
            by_name[table.qualified] = by_name[table.name] = table
        chosen: list[Table] = []
        for name in asked:
            found = by_name.get(name)
            if found is None:
                listed = ", ".join(self.config.tables)
                raise CdcError(f"{name} is not one of the task's tables ({listed}): add it to `tables` first")
            chosen.append(found)
        if not stop:
            self._refuse_keyless(chosen)
        self.infra.check_messages("`dstream snapshot`")
        qualified = [t.qualified for t in chosen]
        conditions = {by_name[name].qualified: cond for name, cond in where.items() if name in by_name}
        unknown = sorted(set(where) - set(by_name))
        if unknown:
            raise CdcError(f"--where names {', '.join(unknown)}, which is not one of the tables to snapshot")
        kind = "stop-snapshot" if stop else "execute-snapshot"
        content = signal_content(self.slot, kind, qualified, conditions)
        lsn = self.db.value(signal_sql(), (SIGNAL, content))
        sent = []
        for name in qualified:
            details: dict[str, Any] = {"signal": kind, "lsn": lsn, "slot": self.slot}
            if name in conditions:
                details["where"] = conditions[name]
            sent.append(Resource("snapshot_signal", name, "none", "stopped" if stop else "requested", details))
        return sent

    # -- run --------------------------------------------------------------------------------

    def read(self, checkpoint: Any | None) -> Iterator[Record | Checkpoint]:
        try:
            stored = parse_checkpoint(checkpoint, self.config.tables)
        except PositionError as exc:
            raise CdcError(f"{exc}: was the task's state written by another provider?") from None
        tables, stored = self._prepare(stored)
        names = [t.qualified for t in tables]
        gone = sorted(set(stored.tables) - set(names))
        if gone:
            self.log.info("no longer capturing %s: they leave the checkpoint", ", ".join(gone))
        positions = {name: stored.tables[name] for name in names if name in stored.tables}
        plan = plan_snapshots(self.config.snapshot, names, positions)
        stream = stored.stream
        if stream is not None and stream.index and gone:
            # The transaction the checkpoint sits inside was counted with those tables' changes:
            # read it again from its start (duplicates, never a skipped change).
            self.log.info("the checkpoint sits inside a transaction counted with %s: it comes again", ", ".join(gone))
            stream = Position(stream.lsn)
        self._refuse_keyless([t for t in tables if t.qualified in plan.incremental])
        if plan.start or plan.resume:
            stream = yield from self._snapshot_all(tables, plan, positions, stream)
            if stream is None:
                return  # stopped inside the snapshot
        for name in names:
            positions.setdefault(name, Position(0))  # snapshot = "never": every change of the stream
        yield from self._stream(tables, stream, positions, plan.incremental)

    def _refuse_keyless(self, tables: list[Table]) -> None:
        keyless = [t.qualified for t in tables if not t.key]
        if keyless:
            raise CdcError(
                f'snapshot = "incremental" reads each table in key order, and {", ".join(keyless)} has no primary '
                f"key (nor REPLICA IDENTITY USING INDEX): add one, or snapshot such tables with "
                f'snapshot = "initial" (a task of their own)'
            )

    def _prepare(self, stored: Stored) -> tuple[list[Table], Stored]:
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
        self.infra.check_publication(tables)
        self._slot_at = slot.confirmed or 0
        start = stored.stream
        if start is not None and self._slot_at > start.lsn:
            if self.config.snapshot != "when_needed":
                raise CdcError(
                    f'replication slot "{self.slot}" is at {format_lsn(self._slot_at)}, past the checkpoint '
                    f"{format_lsn(start.lsn)} this run resumes from: the changes between them are gone (was the "
                    f"slot recreated, or used by another task?). `dstream state reset {self.target.task_hint}` "
                    'starts from the slot\'s position instead; snapshot = "when_needed" snapshots the tables again'
                )
            self.log.warning(
                'replication slot "%s" is at %s, past the checkpoint %s: the changes between them are gone; '
                'snapshotting every table again (snapshot = "when_needed")',
                self.slot,
                format_lsn(self._slot_at),
                format_lsn(start.lsn),
            )
            stored = Stored()
        elif start is not None:
            self._release(start.lsn)  # persisted by the orchestrator: safe to release
            self._apply_release(force=True)
        self._options = self._decoding_options(tables)
        return tables, stored

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

    def _decoding_options(self, tables: list[Table]) -> list[tuple[str, str]]:
        """The output plugin's options, as START_REPLICATION takes them."""
        if self.infra.publication is not None:  # pgoutput: the publication picks the tables
            options = [("proto_version", "1"), ("publication_names", self.infra.publication)]
            if self.db.server_version() >= MESSAGES_SINCE:
                options.append(("messages", "true"))  # incremental snapshots' watermarks and signals
            return options
        options = [("format-version", "2"), ("include-lsn", "1"), ("include-timestamp", "1"), ("include-xids", "1")]
        options += [("include-types", "0"), ("add-tables", ",".join(_wal2json_name(t) for t in tables))]
        return options

    # -- streaming --------------------------------------------------------------------------

    def _stream(
        self,
        tables: list[Table],
        start: Position | None,
        positions: dict[str, Position],
        incremental: tuple[str, ...] = (),
    ) -> Iterator[Record | Checkpoint]:
        cfg = self.config
        asm: TransactionAssembler[Record] = TransactionAssembler(start, format_lsn)
        starts = {name: position.lsn for name, position in positions.items()}
        incr = self._incremental(tables, positions, incremental)
        decoder = self._decoder(tables, starts, incr)
        backoff = Backoff(cfg.reconnect_timeout)
        reader = self._reader = ReplicationReader(
            cfg.dsn.get_secret_value(),
            self.target,
            self.application_name,
            session_settings(cfg.timezone),
            self._options,
            binary=self.plugin == "pgoutput",
        )
        self.log.info(
            "streaming %s from %s through slot %s",
            ", ".join(t.qualified for t in tables),
            format_lsn(asm.done.lsn) if start is not None else f"the slot's position {format_lsn(self._slot_at)}",
            self.slot,
        )
        batch: list[Record] = []
        lag = Every(LAG_EVERY)
        heartbeat = Every(HEARTBEAT_EVERY)
        while True:
            try:
                if not reader.streaming and not self._open_reader(reader, asm.done.lsn):
                    return
                # What arrived already, at most batch_size messages (never waiting for more).
                rows = reader.read(cfg.batch_size)
                if rows:
                    decoder.feed(rows, asm, batch)
                    yield from batch
                    batch.clear()
                else:
                    asm.reached(reader.wal_end)  # caught up: a heartbeat (replication.py)
                # An incremental snapshot's next chunk, read with the stream caught up to here
                # (its low watermark); its rows go out when the stream reaches its high watermark.
                chunked = incr.due() and incr.read_chunk()
                # Drained for now, but more already waiting in the socket: read it first
                # (it is on its way out too), so a backlog is not cut into a flush and a
                # heartbeat every few messages.
                idle = not rows and not reader.wait(0)
                self._apply_release(idle=idle)
                if idle and heartbeat.due():
                    reader.confirm(self._slot_at)  # also asks the server for its next keepalive
                    if lag.due():
                        self._report_lag(tables, asm, decoder, None)
                elif rows and lag.due():
                    self._report_lag(tables, asm, decoder, self.db.flush_lsn())
                backoff.reset()
            except ConnectionLost as exc:
                batch.clear()
                asm.abandon()
                incr.abandon()
                reader.close()  # PostgreSQL drops the reader slot when the session ends
                self.db.close()
                if not backoff.wait(exc, lambda lost: self._gave_up(lost, backoff), self.log, self.ctx.sleep):
                    return
                continue
            if not idle:
                continue
            position = asm.checkpoint() if heartbeat.ready else None
            if position is not None:
                yield Checkpoint(decoder.position(position))
            if not self.ctx.sleep(0):  # flushes what was emitted, delivers commits
                return
            if not chunked:
                try:
                    reader.wait(WAIT)
                except ConnectionLost:
                    continue  # the next read reports it

    def _decoder(self, tables: list[Table], starts: dict[str, int], incr: Incremental) -> Any:
        """The plugin's decoder (wal2json.py or pgoutput.py; their ``feed`` takes the payloads
        the replication reader hands out: ``str`` for wal2json, ``bytes`` for pgoutput)."""
        cfg = self.config
        if self.plugin == "pgoutput":
            return PgoutputDecoder(
                tables, cfg.numeric_as_string, starts, incr.positions_json(), incr, self._session_timezone()
            )
        return Wal2jsonDecoder(tables, cfg.numeric_as_string, starts, incr.positions_json(), incr)

    def _session_timezone(self) -> tzinfo:
        """The session's TimeZone, in which wal2json prints commit times (pgoutput sends UTC)."""
        name = str(self.db.value("SELECT current_setting('TimeZone')"))
        try:
            return ZoneInfo(name)
        except (ZoneInfoNotFoundError, ValueError):  # a POSIX-style zone ("<+03>-03"): its offset now
            return timezone(timedelta(seconds=self.db.timezone_offset()))

    def _incremental(self, tables: list[Table], positions: dict[str, Position], new: tuple[str, ...]) -> Incremental:
        """Incremental snapshots: those under way (in the checkpoint), ``new`` ones, and signals."""
        cfg = self.config
        self._chunks = ChunkSession(cfg.dsn.get_secret_value(), self.target, self.application_name, cfg.timezone)
        under_way = {name: p.incremental for name, p in positions.items() if p.incremental is not None}
        incr = Incremental(
            tables,
            under_way,
            positions,
            self.slot,
            self.db,
            self._chunks,
            cfg.snapshot_chunk_size,
            cfg.snapshot_chunk_pause,
            cfg.numeric_as_string,
            self.log,
            self.ctx.gauge,
            self.ctx.sleep,
        )
        if self.ctx.receives_commits:
            incr.pacer.expect_commits()  # chunks wait for the output to acknowledge earlier ones
        self._incr = incr
        for name, cursor in under_way.items():
            self.log.info("resuming the incremental snapshot of %s after %d rows", name, cursor.rows)
        for name in new:
            incr.start(name, cfg.snapshot_where.get(name))
        incr.changed_positions = True  # the decoder starts from every table's position
        return incr

    def _report_lag(
        self, tables: list[Table], asm: TransactionAssembler[Record], decoder: Decoder, upto: int | None
    ) -> None:
        """Every table shares the slot: its lag is the stream's (WAL bytes and seconds behind the
        server's flush LSN ``upto``; None: caught up)."""
        behind = max(0, upto - asm.done.lsn) if upto is not None else 0
        seconds: float | None = 0.0
        if upto is not None:
            seconds = None
            if decoder.last_commit_time:
                try:
                    committed = datetime.fromisoformat(decoder.last_commit_time)
                    seconds = max(0.0, (datetime.now(UTC) - committed).total_seconds())
                except ValueError:
                    seconds = None
        for table in tables:
            self.lag.observe(table.qualified, seconds, behind)
        self.lag.log_due()

    def _gave_up(self, exc: ConnectionLost, backoff: Backoff) -> CdcError:
        return CdcError(
            f"lost the connection to PostgreSQL at {self.target.server} and could not get it back: "
            f"{backoff.summary()}; last error: {exc}"
        )

    def _open_reader(self, reader: ReplicationReader, start: int) -> bool:
        """(Re)connect; copy the task's slot into the temporary reader slot on a replication
        connection and stream it from ``start`` (what was handed out; 0: the slot's position)."""
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
        self._slot_at = max(self._slot_at, slot.confirmed or 0)
        self._apply_release(force=True)
        reader.start(self.reader, start, copy_of=self.slot)
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
        if self._incr is not None:
            self._incr.committed(position)

    def _release(self, lsn: int) -> None:
        if self._release_to is None or lsn > self._release_to:
            self._release_to = lsn

    def _apply_release(self, force: bool = False, idle: bool = True) -> None:
        """Move the task's slot to the highest committed position (at most every RELEASE_EVERY,
        RELEASE_BUSY_EVERY while catching up)."""
        target = self._release_to
        if target is None or target <= self._slot_at:
            return
        now = time.monotonic()
        if not force and now - self._released_at < (RELEASE_EVERY if idle else RELEASE_BUSY_EVERY):
            return
        self._released_at = now
        self._slot_at = self.db.advance_slot(self.slot, format_lsn(target))

    # -- snapshots --------------------------------------------------------------------------

    def _snapshot_all(
        self, tables: list[Table], plan: SnapshotPlan, positions: dict[str, Position], stream: Position | None
    ) -> Generator[Output, None, Position | None]:
        """Snapshot the plan's tables (retrying after a lost connection where it stopped);
        return the position the stream starts from, or None when stopped."""
        backoff = Backoff(self.config.reconnect_timeout)
        names = [t.qualified for t in tables]
        while True:
            try:
                snap = self._snapshot = SnapshotSession(
                    self.config.dsn.get_secret_value(), self.target, self.application_name, self.config.timezone
                )
                point = snap.open(self.slot + "_snap", self.plugin)
                if stream is None:
                    stream = Position(point)  # a first run: the stream starts where the snapshot was taken
                yield from snapshot_pass(
                    snap,
                    point,
                    tables,
                    plan,
                    positions,
                    stream,
                    self.config.batch_size,
                    self.config.numeric_as_string,
                    self.log,
                )
            except ConnectionLost as exc:
                self._close_snapshot()
                message = "%s during the snapshot; resuming it in %.1fs"
                if not backoff.wait(exc, lambda lost: self._gave_up(lost, backoff), self.log, self.ctx.sleep, message):
                    return None
                plan = plan_snapshots(self.config.snapshot, names, positions)  # what is left of it
                continue
            finally:
                self._close_snapshot()
            self.log.info("snapshot done; streaming changes from %s", format_lsn(stream.lsn))
            return stream

    def _close_snapshot(self) -> None:
        if self._snapshot is not None:
            self._snapshot.close()
            self._snapshot = None

    def close(self) -> None:
        self._close_snapshot()
        if self._reader is not None:
            self._reader.close()
        if self._chunks is not None:
            self._chunks.close()
        self.db.close()


def _wal2json_name(table: Table) -> str:
    """schema.table for wal2json's add-tables, special characters escaped with a backslash."""

    def escape(part: str) -> str:
        return "".join("\\" + ch if ch in "\\ ',.*" else ch for ch in part)

    return f"{escape(table.schema)}.{escape(table.name)}"


main = PostgresCdcInputProvider.main
