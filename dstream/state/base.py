"""The checkpoint store interface, and where the default (SQLite) store lives; the store a task
file asks for is picked in :mod:`dstream.state`."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from dstream.config.models import Document

DEFAULT_STATE_DIR = ".dstream"


@dataclass(frozen=True)
class StoredCheckpoint:
    task: str
    checkpoint: Any
    run_id: str
    updated_at: float
    sequence: int  # how many times this task's checkpoint has been written


class CheckpointStore(Protocol):
    """Where checkpoints persist. Writes are atomic: a reader sees the old or the new one."""

    location: str

    def load(self, task: str) -> StoredCheckpoint | None: ...

    def save(self, task: str, checkpoint: Any, run_id: str, fence: Any = None) -> StoredCheckpoint:
        """Write atomically. ``fence`` is the task lease's token (Azure: the lease id)."""

    def reset(self, task: str) -> bool:
        """Forget the task's checkpoint; True when there was one."""

    def tasks(self) -> list[StoredCheckpoint]: ...

    def close(self) -> None: ...


def default_state_path(document: Document) -> Path:
    """``state { path }``, else ``$DSTREAM_STATE_DIR/state.db`` (set by ``dstream deploy``),
    else ``.dstream/state.db`` beside the task file."""
    configured = document.state.path
    if configured:
        path = Path(configured).expanduser()
        return path if path.is_absolute() else document.base_dir / path
    override = os.environ.get("DSTREAM_STATE_DIR")
    if override:
        return Path(override) / "state.db"
    return document.base_dir / DEFAULT_STATE_DIR / "state.db"
