"""The embedded default store: one SQLite file beside the task file (``.dstream/state.db``)."""

from __future__ import annotations

import sqlite3
import time
from typing import TYPE_CHECKING, Any

from dstream import protocol
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
    sequence INTEGER NOT NULL
)
"""


class SqliteStore:
    def __init__(self, path: Path) -> None:
        self.path = path
        self.location = str(path)
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            # check_same_thread off: the relay writes from a worker thread, one at a time.
            self._db = sqlite3.connect(str(path), timeout=30, isolation_level=None, check_same_thread=False)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=FULL")
            self._db.execute(_SCHEMA)
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
        now = time.time()
        try:
            # One statement, one transaction: atomic, and durable with synchronous=FULL.
            row = self._db.execute(
                "INSERT INTO checkpoints (task, checkpoint, run_id, updated_at, sequence) "
                "VALUES (?, ?, ?, ?, 1) "
                "ON CONFLICT(task) DO UPDATE SET checkpoint = excluded.checkpoint, "
                "run_id = excluded.run_id, updated_at = excluded.updated_at, sequence = sequence + 1 "
                "RETURNING task, checkpoint, run_id, updated_at, sequence",
                (task, protocol.encode(checkpoint).rstrip(b"\n"), run_id, now),
            ).fetchone()
        except sqlite3.Error as exc:
            raise StateError(f"cannot write the checkpoint of task {task!r} to {self.path}: {exc}") from None
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


# The fence of a SQLite write is the file lease's lock, held around save() by the caller.


def _row(row: tuple[Any, ...]) -> StoredCheckpoint:
    task, blob, run_id, updated_at, sequence = row
    return StoredCheckpoint(
        task=task, checkpoint=protocol.decode(blob), run_id=run_id, updated_at=updated_at, sequence=sequence
    )
