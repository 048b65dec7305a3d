"""Engine-agnostic pieces of change-data-capture (CDC) input providers.

A CDC source (PostgreSQL logical decoding, SQL Server CDC tables, ...) delivers changes
grouped in transactions, in commit order, and a provider usually starts with a snapshot of
the rows that already exist. Whatever the engine, a provider needs the same few things,
which live here so every CDC provider shares them (this module imports only the standard
library, pydantic and ``dstream.sdk``: it ships in provider images):

- :class:`Position`: where a stream is. ``lsn`` is an *exclusive* bound on commit
  positions (every transaction whose commit position is below it was emitted), and
  ``index`` counts the changes already emitted of the transaction whose commit position
  is exactly ``lsn``. So a checkpoint can sit inside a large transaction and a restart
  neither skips nor repeats a change. ``snapshot`` (a :class:`ChunkCursor`) marks a table
  inside its snapshot, whose stream starts at ``lsn`` once the snapshot is done. The
  engine supplies how a commit position looks in JSON (PostgreSQL: ``"0/16B3748"``);
  comparisons are always numeric. :func:`parse_tables` / :func:`tables_json` turn the
  per-table positions of a checkpoint (``{"tables": {name: position}}``) to and from JSON.
- Snapshots: :func:`plan_snapshots` decides which tables are snapshotted (``snapshot =
  "initial" | "when_needed" | "never"``, Debezium's modes; tables added to ``tables``
  later are snapshotted on their own), :func:`read_chunks` reads a table in key-ordered
  chunks and gives each row the cursor after it, so a run killed inside a snapshot
  resumes after the last acknowledged row, not from the start, and :func:`read_metadata`
  gives each snapshot row a position unique within its table (its ``Key``; for a table
  without a key, ``Seq`` = the pass and the row's number in it).
- :class:`TransactionAssembler`: fed ``begin``/change/``commit`` events, it drops what an
  earlier run (or the connection before a reconnect) already emitted and hands back
  each change with the position *after* it. It looks one change ahead, so the last change
  of a transaction carries the position past the whole transaction, and it turns
  transactions with no captured change (other tables) into heartbeats.
- :class:`IncrementalSnapshots` (``snapshot = "incremental"``, and on-demand re-snapshots):
  the DBLog watermark algorithm with no I/O; a table's rows come in chunks between its
  changes, its progress (:class:`IncrementalCursor`) rides in its checkpoint position.
- :class:`SnapshotProgress`: an incremental snapshot's progress gauges per table (rows,
  chunks, percent of the engine's row estimate, rows/s), the same for every engine.
- :class:`LagReporter`: per-table lag as provider gauges (``lag_seconds``, and
  ``lag_lsn_bytes`` where the engine's positions are byte offsets) and a periodic log line.
- :class:`CdcError` and :class:`ConnectionLost`: what a CDC provider raises (its message is
  what the user sees, in one line; a lost connection is retried).
- :class:`PollInterval` (adaptive polling), :class:`Backoff` (reconnect delays with a
  total time budget) and :class:`CdcConfig` (the settings every CDC provider shares).
"""

from dstream.sdk.cdc.assembler import TransactionAssembler
from dstream.sdk.cdc.config import CdcConfig, IncrementalCdcConfig
from dstream.sdk.cdc.errors import CdcError, ConnectionLost
from dstream.sdk.cdc.incremental import Closed, IncrementalSnapshots, Key, key_of
from dstream.sdk.cdc.lag import LagReporter
from dstream.sdk.cdc.polling import Backoff, PollInterval
from dstream.sdk.cdc.positions import (
    DELETE,
    INSERT,
    READ,
    SCHEMA_CHANGE,
    TRUNCATE,
    UPDATE,
    BlockingSnapshotMode,
    ChunkCursor,
    IncrementalCursor,
    Position,
    PositionError,
    SnapshotMode,
    parse_tables,
    tables_json,
)
from dstream.sdk.cdc.progress import SnapshotProgress
from dstream.sdk.cdc.snapshots import (
    SnapshotPlan,
    new_pass_id,
    plan_snapshots,
    read_chunks,
    read_metadata,
    restart_point,
    row_key,
)

__all__ = [
    "DELETE",
    "INSERT",
    "READ",
    "SCHEMA_CHANGE",
    "TRUNCATE",
    "UPDATE",
    "Backoff",
    "BlockingSnapshotMode",
    "CdcConfig",
    "CdcError",
    "ChunkCursor",
    "Closed",
    "ConnectionLost",
    "IncrementalCdcConfig",
    "IncrementalCursor",
    "IncrementalSnapshots",
    "Key",
    "LagReporter",
    "PollInterval",
    "Position",
    "PositionError",
    "SnapshotMode",
    "SnapshotPlan",
    "SnapshotProgress",
    "TransactionAssembler",
    "key_of",
    "new_pass_id",
    "parse_tables",
    "plan_snapshots",
    "read_chunks",
    "read_metadata",
    "restart_point",
    "row_key",
    "tables_json",
]
