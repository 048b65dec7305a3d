"""The embedded default store: one SQLite file beside the task file (``.dstream/state.db``)."""

from __future__ import annotations

import sqlite3
import time
from typing import TYPE_CHECKING, Any

from dstream import private, protocol
from dstream.errors import StateError
from dstream.state.base import StoredCheckpoint

if TYPE_CHECKING:
    from pathlib import Path

_SCHEMA = """
CREATE TABLE IF NOT EXISTS checkpoints (
    task TEXT PRIMARY KEY,
    checkpoint BLOB NOT NULL,
    run_id TEXT NOT NULL,
    updated_at REAL NOT NULL,
    sequence INTEGER NOT NULL,
    fence INTEGER NOT NULL DEFAULT 0
)
"""


_UPSERT = (
    "INSERT INTO checkpoints (task, checkpoint, run_id, updated_at, sequence, fence) VALUES (?, ?, ?, ?, 1, ?) "
    "ON CONFLICT(task) DO UPDATE SET checkpoint = excluded.checkpoint, run_id = excluded.run_id, "
    "updated_at = excluded.updated_at, sequence = sequence + 1, "
)
_RETURNING = " RETURNING task, checkpoint, run_id, updated_at, sequence"
_SAVE = _UPSERT + "fence = checkpoints.fence" + _RETURNING
# A leased write: refused when an older generation than the last accepted one.
_SAVE_FENCED = _UPSERT + "fence = excluded.fence WHERE excluded.fence >= checkpoints.fence" + _RETURNING


class SqliteStore:
    def __init__(self, path: Path) -> None:
        self.path = path
        self.location = str(path)
        try:
            private.create(path)  # 0600, not through a symlink; -wal and -shm take its mode
            # check_same_thread off: the relay writes from a worker thread, one at a time.
            self._db = sqlite3.connect(str(path), timeout=30, isolation_level=None, check_same_thread=False)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=FULL")
            self._db.execute(_SCHEMA)
            columns = {row[1] for row in self._db.execute("PRAGMA table_info(checkpoints)")}
            if "fence" not in columns:  # a store written before leases existed
                self._db.execute("ALTER TABLE checkpoints ADD COLUMN fence INTEGER NOT NULL DEFAULT 0")
        except (sqlite3.Error, OSError) as exc:
            raise StateError(f"cannot open the checkpoint store {path}: {exc}") from None

    def load(self, task: str) -> StoredCheckpoint | None:
        try:
            row = self._db.execute(
                "SELECT task, checkpoint, run_id, updated_at, sequence FROM checkpoints WHERE task = ?",
                (task,),
            ).fetchone()
        except sqlite3.Error as exc:
            raise StateError(f"cannot read the checkpoint of task {task!r} from {self.path}: {exc}") from None
        return _row(row) if row else None

    def save(self, task: str, checkpoint: Any, run_id: str, fence: Any = None) -> StoredCheckpoint:
        """Write atomically. ``fence`` (a file lease's generation) must not be older than
        the last accepted one: a replica that lost its lease cannot overwrite its successor."""
        now = time.time()
        fenced = isinstance(fence, int)
        try:
            # One statement, one transaction: atomic, and durable with synchronous=FULL.
            row = self._db.execute(
                _SAVE_FENCED if fenced else _SAVE,
                (task, protocol.encode(checkpoint).rstrip(b"\n"), run_id, now, fence if fenced else 0),
            ).fetchone()
        except sqlite3.Error as exc:
            raise StateError(f"cannot write the checkpoint of task {task!r} to {self.path}: {exc}") from None
        if row is None:
            from dstream.errors import LeaseLost

            raise LeaseLost(f"checkpoint write refused: a newer lease holder of task {task} has written its checkpoint")
        return _row(row)

    def reset(self, task: str) -> bool:
        try:
            cursor = self._db.execute("DELETE FROM checkpoints WHERE task = ?", (task,))
        except sqlite3.Error as exc:
            raise StateError(f"cannot reset task {task!r} in {self.path}: {exc}") from None
        return cursor.rowcount > 0

    def tasks(self) -> list[StoredCheckpoint]:
        rows = self._db.execute(
            "SELECT task, checkpoint, run_id, updated_at, sequence FROM checkpoints ORDER BY task"
        ).fetchall()
        return [_row(r) for r in rows]

    def close(self) -> None:
        self._db.close()


def _row(row: tuple[Any, ...]) -> StoredCheckpoint:
    task, blob, run_id, updated_at, sequence = row
    return StoredCheckpoint(
        task=task, checkpoint=protocol.decode(blob), run_id=run_id, updated_at=updated_at, sequence=sequence
    )
